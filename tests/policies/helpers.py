"""Small drivers shared by the policy tests: one policy, one in-memory run, real arbitration."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from policies import (
    InMemoryRun,
    MetricPoint,
    Outcome,
    ParamSpec,
    ParamValue,
    Policy,
    PolicyRunner,
    arbitrate,
)


def point(run: str, step: int, **metrics: float) -> MetricPoint:
    return MetricPoint(run=run, step=step, time=1000.0 + step, metrics=metrics)


class Driver:
    """Feeds points to one policy through a ``PolicyRunner`` and applies what it decides."""

    def __init__(
        self,
        policy: Policy,
        params: Mapping[str, ParamValue],
        *,
        specs: Mapping[str, ParamSpec] | None = None,
        run: str = "r1",
        mode: str = "act",
    ) -> None:
        self.run = InMemoryRun(run, params=params, specs=specs)
        self.runner = PolicyRunner(policy, policy_id="p", mode=mode)  # type: ignore[arg-type]
        self.outcomes: list[Outcome] = []
        self.step = 0

    def start(self) -> list[Outcome]:
        return self._settle(self.runner.on_run_start(self.run))

    def feed(self, metrics: Mapping[str, float], *, step: int | None = None, rank: int = 0) -> list[Outcome]:
        self.step = self.step + 1 if step is None else step
        p = MetricPoint(run=self.run.run, step=self.step, time=float(self.step), metrics=metrics, rank=rank)
        self.run.record(p)
        return self._settle(self.runner.observe(p, self.run))

    def feed_all(self, metric: str, values: Iterable[float]) -> list[ParamValue]:
        """Feed ``values`` of ``metric``; return the first param's value after each point."""
        name = next(iter(self.run.params))
        trace = []
        for value in values:
            self.feed({metric: value})
            trace.append(self.run.params[name])
        return trace

    def _settle(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        settled = arbitrate(outcomes, self.run)
        for outcome in settled:
            if outcome.kind == "apply":
                assert outcome.changes is not None
                self.run.apply(outcome.changes)
        self.outcomes.extend(settled)
        return settled


def kinds(outcomes: Iterable[Outcome]) -> list[str]:
    return [o.kind for o in outcomes]


def rows(outcomes: Iterable[Outcome]) -> list[dict[str, Any]]:
    return [row for o in outcomes for row in o.records()]
