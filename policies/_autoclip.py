"""``autoclip``: AutoClip gradient clipping thresholds (Seetharaman et al., 2020)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import PolicyError
from ._options import Options
from ._policy import Policy
from ._stats import percentile
from ._types import Decision, MetricPoint, RunView, SetParams

__all__ = ["AutoClipPolicy"]


class AutoClipPolicy(Policy):
    """Set the gradient-clipping threshold to a percentile of the observed gradient norms.

    AutoClip (Seetharaman et al., "AutoClip: Adaptive Gradient Clipping for Source Separation
    Networks", 2020) clips each step at the ``percentile``-th percentile of all gradient norms
    seen so far. The trainer must report the norm *before* clipping (what
    ``torch.nn.utils.clip_grad_norm_`` returns) as ``metric``; non-finite norms are ignored.

    The threshold (linear interpolation, like ``numpy.percentile``) is sent once
    ``min_history`` norms were seen, and then only when it differs from the run's current
    value by more than ``min_change`` (a ratio) so a live run is not flooded with changes.

    Options: ``metric`` ("grad_norm"), ``param`` ("clip_norm"), ``percentile`` (10),
    ``min_history`` (20), ``history`` (window of norms kept, 1000), ``min_change`` (0.05),
    ``rank`` (0, or "any").
    """

    def __init__(
        self,
        *,
        metric: str = "grad_norm",
        param: str = "clip_norm",
        percentile: float = 10.0,
        min_history: int = 20,
        history: int = 1000,
        min_change: float = 0.05,
        rank: int | str = 0,
    ) -> None:
        check = Options("autoclip")
        self.metric = check.string("metric", metric)
        self.param = check.string("param", param)
        self.percentile = check.number("percentile", percentile, ge=0.0)
        check.number("percentile", percentile, le=100.0)
        self.min_history = check.integer("min_history", min_history, ge=1)
        self.history = check.integer("history", history, ge=1)
        if self.history < self.min_history:
            raise check.fail("history", f">= min_history ({self.min_history})", history)
        self.min_change = check.number("min_change", min_change, ge=0.0)
        self.rank = check.rank(rank)
        self.norms: deque[float] = deque(maxlen=self.history)

    def observe(self, point: MetricPoint, run: RunView) -> Sequence[Decision]:
        if self.rank is not None and point.rank != self.rank:
            return ()
        norm = point.metrics.get(self.metric)
        if norm is None or not math.isfinite(norm):
            return ()
        self.norms.append(norm)
        if len(self.norms) < self.min_history:
            return ()
        threshold = percentile(self.norms, self.percentile)
        spec = run.specs.get(self.param)
        if spec is not None and spec.numeric:
            threshold = float(spec.clip(threshold))
        if threshold <= 0.0:
            return ()  # clipping at 0 would zero every gradient
        current = run.params.get(self.param)
        if not isinstance(current, (int, float)) or isinstance(current, bool):
            raise PolicyError(f"autoclip: run {run.run!r} has no numeric param {self.param!r}")
        if threshold == current or (current > 0 and abs(threshold - current) <= self.min_change * current):
            return ()
        reason = f"p{self.percentile:g} of the last {len(self.norms)} {self.metric} values is {threshold!r}"
        return (SetParams(changes={self.param: threshold}, reason=reason),)

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.norms = deque((float(v) for v in state.get("norms", [])), maxlen=self.history)
