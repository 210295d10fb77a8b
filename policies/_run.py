"""``InMemoryRun``: a complete ``RunView`` without a server, for replay and policy tests."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from ._types import MetricPoint, ParamSpec, ParamValue

__all__ = ["InMemoryRun"]


class InMemoryRun:
    """A run held in memory: params, specs, pins and a bounded metric history.

    ``replay`` drives one per run, and policy authors use it in unit tests::

        run = InMemoryRun("r1", params={"lr": 0.1})
        point = MetricPoint(run="r1", step=1, time=1.0, metrics={"loss": 2.3})
        run.record(point)
        decisions = policy.observe(point, run)

    Specs missing for a param are inferred (unbounded, kind from the value's type); a spec
    without an initial value starts at its default.
    """

    def __init__(
        self,
        run: str,
        *,
        params: Mapping[str, ParamValue] | None = None,
        specs: Mapping[str, ParamSpec] | None = None,
        pinned: Iterable[str] = (),
        step: int = 0,
        history_limit: int = 1000,
    ) -> None:
        if not isinstance(run, str) or not run:
            raise ValueError(f"InMemoryRun: run must be a non-empty string but got {run!r}")
        if not isinstance(history_limit, int) or history_limit < 1:
            raise ValueError(f"InMemoryRun: history_limit must be >= 1 but got {history_limit!r}")
        self._run = run
        self._step = step
        self._history_limit = history_limit
        specs = dict(specs or {})
        values: dict[str, ParamValue] = {}
        for name, value in (params or {}).items():
            spec = specs.get(name)
            if spec is None:
                spec = specs[name] = ParamSpec.infer(name, value)
            values[name] = spec.validate(value)
        for name, spec in specs.items():
            if spec.name != name:
                raise ValueError(f"InMemoryRun: spec for {name!r} is named {spec.name!r}")
            values.setdefault(name, spec.default)
        self._specs = MappingProxyType(specs)
        self._params = values
        self._pinned = frozenset(pinned)
        self._history: dict[str, deque[tuple[int, float]]] = {}

    def __repr__(self) -> str:
        return f"InMemoryRun({self._run!r}, step={self._step}, params={self._params!r})"

    @property
    def run(self) -> str:
        return self._run

    @property
    def step(self) -> int:
        return self._step

    @property
    def params(self) -> Mapping[str, ParamValue]:
        return MappingProxyType(self._params)

    @property
    def specs(self) -> Mapping[str, ParamSpec]:
        return self._specs

    @property
    def pinned(self) -> frozenset[str]:
        return self._pinned

    def history(self, metric: str, last: int | None = None) -> Sequence[tuple[int, float]]:
        values = self._history.get(metric, ())
        items = list(values)
        if last is not None:
            if last < 0:
                raise ValueError(f"history: last must be >= 0 but got {last!r}")
            items = items[len(items) - last :] if last else []
        return items

    def record(self, point: MetricPoint) -> None:
        """Add a point's metrics to the history; ``step`` becomes the highest step seen."""
        if point.run != self._run:
            raise ValueError(f"InMemoryRun {self._run!r}: got a point of run {point.run!r}")
        self._step = max(self._step, point.step)
        for name, value in point.metrics.items():
            series = self._history.get(name)
            if series is None:
                series = self._history[name] = deque(maxlen=self._history_limit)
            series.append((point.step, value))

    def apply(self, changes: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
        """Set params (validated by their specs) and return their previous values.

        Applies everything or nothing. Unknown params raise ``KeyError``, invalid values
        ``ValueError``. Pins are not checked here (``arbitrate`` does that): an operator's
        own change goes through ``apply`` too.
        """
        validated: dict[str, ParamValue] = {}
        for name, value in changes.items():
            spec = self._specs.get(name)
            if spec is None:
                raise KeyError(f"InMemoryRun {self._run!r}: unknown param {name!r}")
            validated[name] = spec.validate(value)
        old = {name: self._params[name] for name in validated}
        self._params.update(validated)
        return old

    def pin(self, *names: str) -> None:
        """Pin params as an operator would (``arbitrate`` then refuses policy changes to them)."""
        self._pinned = self._pinned | frozenset(names)

    def release(self, *names: str) -> None:
        """Release pinned params."""
        self._pinned = self._pinned - frozenset(names)
