"""The values policies see and return: parameter specs, metric points, run views, decisions.

Everything here is a small frozen, keyword-only dataclass that validates itself on
construction and echoes the bad value in its error message. None of these objects does I/O;
time only enters through ``MetricPoint.time`` so that a replay is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "Decision",
    "FireTrigger",
    "MetricPoint",
    "ParamKind",
    "ParamSpec",
    "ParamValue",
    "RunView",
    "SetParams",
]

ParamValue: TypeAlias = float | int | bool | str
"""A live parameter's value. ``bool`` is checked before ``int`` everywhere (it is a subclass)."""

ParamKind: TypeAlias = Literal["float", "int", "bool", "choice", "string"]

_KINDS = ("float", "int", "bool", "choice", "string")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    return type(value).__name__


def _same_value(a: object, b: object) -> bool:
    """Equality that does not confuse ``True`` with ``1`` (used for choices)."""
    return type(a) is type(b) and a == b


@dataclass(frozen=True, kw_only=True)
class ParamSpec:
    """A declared live parameter, as policies see it.

    ``min`` / ``max`` / ``log`` apply to the numeric kinds (``float``, ``int``); ``choices``
    to ``choice``. ``default`` must be a valid value of the spec.
    """

    name: str
    kind: ParamKind
    default: ParamValue
    min: float | None = None
    max: float | None = None
    log: bool = False
    choices: tuple[ParamValue, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ParamSpec: name must be a non-empty string but got {self.name!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"ParamSpec {self.name!r}: kind must be one of {', '.join(_KINDS)} but got {self.kind!r}")
        numeric = self.kind in ("float", "int")
        for bound in ("min", "max"):
            value = getattr(self, bound)
            if value is None:
                continue
            if not numeric:
                raise ValueError(
                    f"ParamSpec {self.name!r}: {bound} only applies to float and int params "
                    f"but got {bound}={value!r} for kind {self.kind!r}"
                )
            if not _is_number(value) or math.isnan(value):
                raise ValueError(f"ParamSpec {self.name!r}: {bound} must be a number but got {value!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"ParamSpec {self.name!r}: min must be <= max but got min={self.min!r}, max={self.max!r}")
        if self.log:
            if not numeric:
                raise ValueError(
                    f"ParamSpec {self.name!r}: log only applies to float and int params but got kind {self.kind!r}"
                )
            if self.min is None or self.min <= 0:
                raise ValueError(f"ParamSpec {self.name!r}: log=True needs min > 0 but got min={self.min!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.kind == "choice":
            if not self.choices:
                raise ValueError(f"ParamSpec {self.name!r}: a choice param needs choices")
            for choice in self.choices:
                if not isinstance(choice, (int, float, str)):  # bool is an int
                    raise ValueError(
                        f"ParamSpec {self.name!r}: choices must be float, int, bool or str "
                        f"but got {choice!r} ({_type_name(choice)})"
                    )
        elif self.choices:
            raise ValueError(
                f"ParamSpec {self.name!r}: choices only apply to kind 'choice' "
                f"but got {self.choices!r} for kind {self.kind!r}"
            )
        try:
            object.__setattr__(self, "default", self.validate(self.default))
        except ValueError as exc:
            raise ValueError(f"ParamSpec {self.name!r}: invalid default: {exc}") from None

    @classmethod
    def infer(cls, name: str, value: ParamValue) -> ParamSpec:
        """An unbounded spec whose kind follows ``value``'s type (used by ``replay``)."""
        if isinstance(value, bool):
            kind: ParamKind = "bool"
        elif isinstance(value, int):
            kind = "int"
        elif isinstance(value, float):
            kind = "float"
        elif isinstance(value, str):
            kind = "string"
        else:
            raise ValueError(f"ParamSpec {name!r}: cannot infer a kind from {value!r} ({_type_name(value)})")
        return cls(name=name, kind=kind, default=value)

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    def clip(self, value: float) -> float | int:
        """Clamp a numeric value into ``[min, max]``; ``int`` params are rounded first."""
        if not self.numeric:
            raise TypeError(f"ParamSpec {self.name!r}: clip() needs a numeric param, not {self.kind!r}")
        if not _is_number(value) or math.isnan(value):
            raise ValueError(f"ParamSpec {self.name!r}: cannot clip {value!r}")
        result: float | int = round(value) if self.kind == "int" and math.isfinite(value) else value
        if self.min is not None and result < self.min:
            result = math.ceil(self.min) if self.kind == "int" else self.min
        if self.max is not None and result > self.max:
            result = math.floor(self.max) if self.kind == "int" else self.max
        return result if self.kind == "int" else float(result)

    def validate(self, value: object) -> ParamValue:
        """Return ``value`` normalised for this spec, or raise ``ValueError`` saying why not.

        ``float`` accepts ints (returned as float); ``int`` accepts integral floats.
        Non-finite numbers are always rejected.
        """
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be a bool but got {value!r}")
            return value
        if self.kind == "string":
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be a str but got {value!r}")
            return value
        if self.kind == "choice":
            for choice in self.choices:
                if _same_value(choice, value) or (_is_number(choice) and _is_number(value) and choice == value):
                    return choice
            raise ValueError(f"{self.name} must be one of {list(self.choices)!r} but got {value!r}")
        if not _is_number(value):
            raise ValueError(f"{self.name} must be a number but got {value!r}")
        assert isinstance(value, (int, float))
        if not math.isfinite(value):
            raise ValueError(f"{self.name} must be finite but got {value!r}")
        number: float | int
        if self.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{self.name} must be an integer but got {value!r}")
            number = int(value)
        else:
            number = float(value)
        if self.min is not None and number < self.min:
            raise ValueError(f"{self.name} must be >= {self.min!r} but got {value!r}")
        if self.max is not None and number > self.max:
            raise ValueError(f"{self.name} must be <= {self.max!r} but got {value!r}")
        return number


@dataclass(frozen=True, kw_only=True)
class MetricPoint:
    """One report from a trainer: the metrics of ``run`` at ``step``.

    ``time`` is seconds since the epoch as the trainer stamped it; policies must take time from
    here (or from ``now`` arguments), never from the clock. ``metrics`` may hold NaN / inf.
    """

    run: str
    step: int
    time: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    rank: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.run, str) or not self.run:
            raise ValueError(f"MetricPoint: run must be a non-empty string but got {self.run!r}")
        if not isinstance(self.step, int) or isinstance(self.step, bool) or self.step < 0:
            raise ValueError(f"MetricPoint: step must be an int >= 0 but got {self.step!r}")
        if not _is_number(self.time) or not math.isfinite(self.time):
            raise ValueError(f"MetricPoint: time must be a finite number but got {self.time!r}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise ValueError(f"MetricPoint: rank must be an int >= 0 but got {self.rank!r}")
        if not isinstance(self.metrics, Mapping):
            raise ValueError(f"MetricPoint: metrics must be a mapping but got {self.metrics!r}")
        metrics: dict[str, float] = {}
        for name, value in self.metrics.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"MetricPoint: metric names must be non-empty strings, got {name!r}")
            if not _is_number(value):
                raise ValueError(f"MetricPoint: metric {name!r} must be a number but got {value!r}")
            metrics[name] = float(value)
        object.__setattr__(self, "time", float(self.time))
        object.__setattr__(self, "metrics", MappingProxyType(metrics))

    @classmethod
    def from_host(cls, run: str, step: int, time: float, metrics: dict[str, float], rank: int = 0) -> MetricPoint:
        """Build without validation, for a host whose values are already checked (ints, finite time, floats).

        The live supervisor makes one per metric point received, so the checks in
        ``__post_init__`` (several µs for ten metrics) would be a large share of
        its cost per point. ``metrics`` must be a fresh dict the caller no longer
        changes: it is wrapped read-only, not copied.
        """
        point = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(point, "run", run)
        setattr_(point, "step", step)
        setattr_(point, "time", time)
        setattr_(point, "metrics", MappingProxyType(metrics))
        setattr_(point, "rank", rank)
        return point


@runtime_checkable
class RunView(Protocol):
    """Read-only view of one run, given to policies.

    Contract for hosts (the live supervisor, ``InMemoryRun``):

    * ``params`` holds the current values *including* changes the host has accepted but the
      trainer has not acknowledged yet, so a policy never sees its own change as "not applied".
    * ``history(metric)`` includes the point currently being observed, returns ``(step, value)``
      pairs oldest first, and is bounded (the host keeps e.g. the last 1,000 values per metric).
    * ``pinned`` names params an operator pinned: changes to them are refused by ``arbitrate``.
    """

    @property
    def run(self) -> str: ...

    @property
    def step(self) -> int: ...

    @property
    def params(self) -> Mapping[str, ParamValue]: ...

    @property
    def specs(self) -> Mapping[str, ParamSpec]: ...

    @property
    def pinned(self) -> frozenset[str]: ...

    def history(self, metric: str, last: int | None = None) -> Sequence[tuple[int, float]]: ...


def _check_reason(owner: str, reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"{owner}: reason must be a non-empty string but got {reason!r}")
    return reason


@dataclass(frozen=True, kw_only=True)
class SetParams:
    """Decision: change one or more parameters of the run, atomically.

    ``apply_at_step`` asks the trainer to apply the change at that step (``None``: as soon as
    possible).
    """

    changes: Mapping[str, ParamValue]
    reason: str
    apply_at_step: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.changes, Mapping) or not self.changes:
            raise ValueError(f"SetParams: changes must be a non-empty mapping but got {self.changes!r}")
        changes: dict[str, ParamValue] = {}
        for name, value in self.changes.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"SetParams: param names must be non-empty strings, got {name!r}")
            if not isinstance(value, (int, float, str)):  # bool is an int
                raise ValueError(
                    f"SetParams: {name} must be a float, int, bool or str but got {value!r} ({_type_name(value)})"
                )
            changes[name] = value
        object.__setattr__(self, "changes", MappingProxyType(changes))
        _check_reason("SetParams", self.reason)
        step = self.apply_at_step
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
            raise ValueError(f"SetParams: apply_at_step must be None or an int >= 0 but got {step!r}")


@dataclass(frozen=True, kw_only=True)
class FireTrigger:
    """Decision: fire a named trigger (``"stop"``, ``"checkpoint"``, ``"rollback"`` or any name)."""

    name: str
    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"FireTrigger: name must be a non-empty string but got {self.name!r}")
        _check_reason("FireTrigger", self.reason)


Decision: TypeAlias = SetParams | FireTrigger
