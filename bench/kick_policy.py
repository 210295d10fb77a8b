"""A policy that reacts to a single point, for measuring report -> decision -> visible latency.

When a point carries metric ``kick``, it sets ``lr`` to that value. Used by
bench/control_latency.py as ``type = "bench.kick_policy:KickPolicy"``.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies import Decision, MetricPoint, Policy, RunView, SetParams


class KickPolicy(Policy):
    def __init__(self, *, param: str = "lr", metric: str = "kick") -> None:
        super().__init__()
        self.param = param
        self.metric = metric

    def observe(self, point: MetricPoint, run: RunView) -> Sequence[Decision]:
        value = point.metrics.get(self.metric)
        if value is None:
            return ()
        return (SetParams(changes={self.param: float(value)}, reason=f"{self.metric}={value} at step {point.step}"),)
