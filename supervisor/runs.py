"""In-memory state of each run, and validation of requested changes.

The asyncio thread owns these objects: nothing else mutates them, so they need
no locks (a per-run asyncio.Lock orders changes so versions never race).
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainer_sdk import Bool, Choice, Float, Int, InvalidValue, Param, Text

if TYPE_CHECKING:
    from supervisor.connections import TrainerStream


class SupervisorError(Exception):
    """Base of errors a request can get; each maps to one gRPC status code."""


class UnknownRun(SupervisorError):
    def __init__(self, run: str) -> None:
        super().__init__(f"unknown run {run!r}: `supervisor runs` lists the runs this supervisor knows")


class RefusedChange(SupervisorError):
    """A change that fails validation; nothing is recorded or sent."""


def param_to_dict(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": param.kind, "default": param.default}
    if isinstance(param, Float | Int):
        out["min"], out["max"] = param.min, param.max
    if isinstance(param, Float):
        out["log"] = param.log
    if isinstance(param, Choice):
        out["choices"] = list(param.choices)
    return out


def param_from_dict(spec: dict[str, Any]) -> Param:
    kind = spec["kind"]
    if kind == "float":
        return Float(spec["default"], min=spec.get("min"), max=spec.get("max"), log=spec.get("log", False))
    if kind == "int":
        return Int(spec["default"], min=spec.get("min"), max=spec.get("max"))
    if kind == "bool":
        return Bool(spec["default"])
    if kind == "choice":
        return Choice(spec["default"], choices=spec["choices"])
    return Text(spec["default"])


@dataclass(eq=False)
class RunState:
    id: int
    name: str
    created: float
    world_size: int
    version: int
    params: dict[str, Param]
    values: dict[str, Any]
    pinned: set[str] = field(default_factory=set)
    outcome: int = 0
    last_step: int = -1
    last_seen: float = 0.0
    points: int = 0
    dropped_by_session: dict[int, int] = field(default_factory=dict)
    latest: dict[str, float] = field(default_factory=dict)  # see note_latest
    latest_rank: dict[str, int] = field(default_factory=dict)  # the rank each latest value came from
    streams: dict[int, set[TrainerStream]] = field(default_factory=dict)
    acked: dict[int, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)
    step_times: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    disconnected_at: float | None = None

    # -- connection view --------------------------------------------------------------

    @property
    def connected_ranks(self) -> int:
        return sum(1 for streams in self.streams.values() if streams)

    @property
    def connected(self) -> bool:
        return self.connected_ranks > 0

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_session.values())

    def note_latest(self, rank: int, values: Mapping[str, float]) -> None:
        """Keep each metric's latest value from the lowest rank that reports it (rank 0, as a rule).

        Ranks report different values under one name (each its own shard's loss, its own
        host's ``gpu0_util``): taking whichever arrived last made the run's latest values, its
        Prometheus gauges and ``top`` flip from rank to rank.
        """
        if self.world_size == 1:
            self.latest.update(values)
            return
        owner = self.latest_rank
        latest = self.latest
        for name, value in values.items():
            if owner.get(name, rank) >= rank:
                owner[name] = rank
                latest[name] = value

    def release_latest(self, rank: int) -> None:
        """``rank`` has no stream left: whichever rank reports its metrics next may take them over."""
        for name in [name for name, owner in self.latest_rank.items() if owner == rank]:
            del self.latest_rank[name]

    def acked_version(self) -> int:
        """Highest version every connected rank has applied (of all ranks, when none is connected)."""
        ranks = [rank for rank, streams in self.streams.items() if streams]
        if ranks:
            return min(self.acked.get(rank, 0) for rank in ranks)
        return max(self.acked.values(), default=0)

    def step_rate(self, now: float | None = None) -> float:
        if len(self.step_times) < 2:
            return 0.0
        (t0, s0), (t1, s1) = self.step_times[0], self.step_times[-1]
        now = time.time() if now is None else now
        if now - t1 > 10 or t1 <= t0:
            return 0.0
        return (s1 - s0) / (t1 - t0)

    def matches(self, glob: str) -> bool:
        return not glob or fnmatch.fnmatchcase(self.name, glob)

    # -- validation ---------------------------------------------------------------------

    def validate(self, requested: dict[str, Any]) -> dict[str, Any]:
        """Coerce every requested value with its parameter, or refuse the whole change."""
        if not requested:
            raise RefusedChange(f"run {self.name!r}: a change needs at least one NAME=VALUE")
        changes: dict[str, Any] = {}
        for name, value in requested.items():
            param = self.params.get(name)
            if param is None:
                known = ", ".join(sorted(self.params)) or "none"
                raise RefusedChange(f"{name}: run {self.name!r} has no parameter {name!r} (it declares: {known})")
            if value is None:
                raise RefusedChange(f"{name}: no value given")
            try:
                changes[name] = param.check(value, name=name)
            except InvalidValue as exc:
                raise RefusedChange(str(exc)) from None
        return changes
