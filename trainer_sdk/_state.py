"""The session's shared state: parameter cache, delta application, metric queue.

Threads that touch it: the training thread (reads, ``report``), the connection
thread (receives deltas), the pump thread (drains the queue) and, if callbacks
are registered, the callback thread. Reads take no lock: the values live in a
plain dict that a delta replaces in one ``dict.update`` call, which CPython runs
without releasing the GIL for str keys and number/str values, so a reader sees
either all of a delta or none of it. Only appliers take ``apply_lock``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from trainer_sdk._params import InvalidValue, Param, ParamValue
from trainer_sdk._tls import TlsTrust

log = logging.getLogger("trainer_sdk")


@dataclass(frozen=True)
class ChangeEvent:
    """What a callback registered with ``Session.on_change`` receives."""

    version: int
    old: Mapping[str, ParamValue]
    new: Mapping[str, ParamValue]
    trigger: str | None
    source: str
    reason: str
    step: int
    time: float

    @property
    def changed(self) -> tuple[str, ...]:
        return tuple(self.new)


@dataclass(frozen=True)
class Delta:
    """One versioned change as received from the supervisor."""

    version: int
    changes: Mapping[str, ParamValue]
    trigger: str = ""
    source: str = ""
    reason: str = ""
    apply_at_step: int | None = None
    time: float = 0.0
    ack_with_metrics: bool = False
    """Nobody waits for its acknowledgement: it may ride the next metric batch."""


@dataclass(frozen=True)
class ConnectOptions:
    """What ``connect()`` was told about the connection; either transport takes it whole (the sidecar by pickle)."""

    address: str
    session_id: str
    token: str | None
    flush_interval: float
    backoff_max: float
    tls: TlsTrust | None = None
    """What to trust for a TLS connection; None for plaintext."""


class Ack(NamedTuple):
    """A version applied here, to acknowledge; crosses to the sidecar as ``tuple(ack)``."""

    version: int
    step: int
    time: float
    with_metrics: bool = False
    """May wait for the next metric batch (its delta said ``ack_with_metrics``)."""


@dataclass
class SessionState:
    run: str
    rank: int
    world_size: int
    params: dict[str, Param]
    values: dict[str, ParamValue]
    buffer_size: int
    queue: deque[tuple[int, float, dict[str, Any]]] = field(init=False)
    overflow: int = 0
    last_step: int = -1
    # The training thread compares each reported step with ``gate`` and takes the
    # slow path only when a step-gated delta is due: inf means nothing is pending.
    gate: float = math.inf
    version: int = 0
    received_version: int = 0
    pending: list[Delta] = field(default_factory=list)
    fired: set[str] = field(default_factory=set)
    acks: deque[Ack] = field(default_factory=deque)
    callbacks: list[Callable[[ChangeEvent], Any]] = field(default_factory=list)
    apply_lock: threading.Lock = field(default_factory=threading.Lock)
    # Set by report() when the pump sleeps and there is new work for it.
    pump_idle: bool = False
    wake: threading.Event = field(default_factory=threading.Event)
    # False in a training process whose sidecar holds the connection: no pump to wake there.
    pumped: bool = True
    _events: queue.SimpleQueue[ChangeEvent | None] | None = None
    sampler: Any = None  # the telemetry sampler, if any

    def __post_init__(self) -> None:
        self.queue = deque(maxlen=self.buffer_size)

    # -- receiving deltas (connection thread) -------------------------------------

    def receive(self, delta: Delta) -> None:
        """Apply a delta now, or hold it until its step; duplicates are ignored."""
        with self.apply_lock:
            if delta.version <= self.received_version:
                return
            self.received_version = delta.version
            if delta.apply_at_step is None and not self.pending:
                self._apply(delta, self.last_step)
            else:
                # Deltas apply in version order: one that is not step-gated waits
                # behind an earlier gated one instead of overtaking it.
                self.pending.append(delta)
                self._refresh_gate()
        self.poke()

    def resync(self, version: int) -> bool:
        """A (re)connection's Welcome says the supervisor's run is at ``version``.

        Deltas received above it come from a supervisor state that is gone (it
        restarted on an empty or older database): those not applied yet are
        dropped, and that supervisor's next versions, which reuse their numbers,
        are taken instead of being ignored as duplicates. Returns True when this
        process already applied a version above it: the supervisor adopted older
        values than the ones in use, and a fresh Hello (a reconnect) corrects that.
        """
        with self.apply_lock:
            if self.received_version <= version:
                return False
            stale = [d.version for d in self.pending if d.version > version]
            if stale:
                self.pending = [d for d in self.pending if d.version <= version]
                self._refresh_gate()
                log.warning(
                    "the supervisor is at version %d, behind changes this process received but had not applied "
                    "(versions %s): it lost them (restarted on an empty or older database); dropping them",
                    version,
                    ", ".join(map(str, stale)),
                )
            self.received_version = version
            return self.version > version

    def apply_due(self, step: int) -> None:
        """Called from report() when ``step >= gate``: apply every delta now due."""
        with self.apply_lock:
            while self.pending:
                delta = self.pending[0]
                if delta.apply_at_step is not None and step < delta.apply_at_step:
                    break
                del self.pending[0]
                self._apply(delta, step)
            self._refresh_gate()
        self.poke()

    def _refresh_gate(self) -> None:
        if not self.pending:
            self.gate = math.inf
        else:
            first = self.pending[0].apply_at_step
            self.gate = -math.inf if first is None else first

    def _apply(self, delta: Delta, step: int) -> None:
        changes: dict[str, ParamValue] = {}
        for name, value in delta.changes.items():
            param = self.params.get(name)
            if param is None:
                log.warning("ignoring change of undeclared parameter %r in version %d", name, delta.version)
                continue
            try:
                changes[name] = param.check(value, name=name)
            except InvalidValue as exc:
                log.warning("ignoring invalid change in version %d: %s", delta.version, exc)
        old = {name: self.values[name] for name in changes}
        self.values.update(changes)  # one C call: readers see all of it or none
        self.version = delta.version
        if delta.trigger:
            self.fired.add(delta.trigger)
        now = time.time()
        self.acks.append(Ack(delta.version, step, now, delta.ack_with_metrics))
        if self.callbacks:
            self._emit(
                ChangeEvent(
                    version=delta.version,
                    old=old,
                    new=changes,
                    trigger=delta.trigger or None,
                    source=delta.source,
                    reason=delta.reason,
                    step=step,
                    time=now,
                )
            )

    # -- callbacks (their own thread, never the training thread) ------------------

    def add_callback(self, callback: Callable[[ChangeEvent], Any]) -> None:
        with self.apply_lock:
            self.callbacks.append(callback)
            if self._events is None:
                self._events = queue.SimpleQueue()
                threading.Thread(
                    target=self._dispatch, args=(self._events,), name="trainer-sdk-callbacks", daemon=True
                ).start()

    def _emit(self, event: ChangeEvent) -> None:
        if self._events is not None:
            self._events.put(event)

    def _dispatch(self, events: queue.SimpleQueue[ChangeEvent | None]) -> None:
        while (event := events.get()) is not None:
            for callback in list(self.callbacks):
                try:
                    callback(event)
                except Exception:
                    log.exception("on_change callback %r raised; the session goes on", callback)

    def stop_callbacks(self) -> None:
        if self._events is not None:
            self._events.put(None)

    # -- pump wake-up ---------------------------------------------------------------

    def poke(self) -> None:
        """Wake the pump (new acks or points to send)."""
        if self.pumped:
            self.pump_idle = False
            self.wake.set()

    def snapshot(self) -> tuple[int, dict[str, ParamValue]]:
        with self.apply_lock:
            return self.version, dict(self.values)
