"""``guard``: react to non-finite or spiking loss, and stop a run that no longer improves."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ._errors import PolicyError
from ._options import Options, decode_float, encode_float
from ._policy import Policy
from ._stats import median
from ._types import Decision, FireTrigger, MetricPoint, RunView, SetParams

__all__ = ["GuardPolicy"]


class GuardPolicy(Policy):
    """Divergence guard and early stopping in one policy.

    **Anomalies.** When ``metric`` is NaN / inf, or (after ``min_history`` finite values)
    greater than ``spike_factor`` × the median of the last ``window`` finite values, the guard
    returns ``SetParams(param = max(current * factor, min_value))`` (clipped into the param's
    spec; omitted if that would not lower it) and ``FireTrigger(trigger)`` (``"rollback"`` by
    default; ``trigger = ""`` fires nothing). Then it ignores anomalies for the next
    ``cooldown`` reports of ``metric`` (the trainer needs time to roll back). Spikes and
    non-finite values never enter the window. Spike detection is multiplicative, so it is
    skipped while the median is <= 0; ``spike_factor = 0`` turns it off (non-finite only).

    **Early stopping** (off unless ``stop_metric`` is set). A report of ``stop_metric``
    improves if it beats the best so far by more than ``stop_min_delta`` (``stop_mode`` "min"
    or "max"); non-finite values never improve. After ``stop_patience`` reports in a row
    without improvement the guard fires ``FireTrigger("stop")``, once per run.

    Options: ``metric`` ("loss"), ``param`` ("lr"), ``factor`` (0.5), ``min_value`` (0),
    ``spike_factor`` (3.0), ``window`` (50), ``min_history`` (10), ``cooldown`` (10),
    ``trigger`` ("rollback"), ``stop_metric`` ("" = off), ``stop_mode`` ("min"),
    ``stop_patience`` (10), ``stop_min_delta`` (0), ``rank`` (0, or "any").
    """

    def __init__(
        self,
        *,
        metric: str = "loss",
        param: str = "lr",
        factor: float = 0.5,
        min_value: float = 0.0,
        spike_factor: float = 3.0,
        window: int = 50,
        min_history: int = 10,
        cooldown: int = 10,
        trigger: str = "rollback",
        stop_metric: str = "",
        stop_mode: Literal["min", "max"] = "min",
        stop_patience: int = 10,
        stop_min_delta: float = 0.0,
        rank: int | str = 0,
    ) -> None:
        check = Options("guard")
        self.metric = check.string("metric", metric)
        self.param = check.string("param", param)
        self.factor = check.number("factor", factor, gt=0.0)
        check.number("factor", factor, lt=1.0)
        self.min_value = check.number("min_value", min_value, ge=0.0)
        self.spike_factor = check.number("spike_factor", spike_factor, ge=0.0)
        if 0.0 < self.spike_factor <= 1.0:
            raise check.fail("spike_factor", "> 1 (or 0 to turn spike detection off)", spike_factor)
        self.window = check.integer("window", window, ge=1)
        self.min_history = check.integer("min_history", min_history, ge=1)
        if self.min_history > self.window:
            raise check.fail("min_history", f"<= window ({self.window})", min_history)
        self.cooldown = check.integer("cooldown", cooldown, ge=0)
        if not isinstance(trigger, str):
            raise check.fail("trigger", "a string", trigger)
        self.trigger = trigger
        if not isinstance(stop_metric, str):
            raise check.fail("stop_metric", "a string", stop_metric)
        self.stop_metric = stop_metric
        self.stop_mode = check.string("stop_mode", stop_mode, choices=("min", "max"))
        self.stop_patience = check.integer("stop_patience", stop_patience, ge=1)
        self.stop_min_delta = check.number("stop_min_delta", stop_min_delta, ge=0.0)
        self.rank = check.rank(rank)
        self.values: deque[float] = deque(maxlen=self.window)
        self.cooldown_left = 0
        self.stop_best: float | None = None
        self.stop_wait = 0
        self.stopped = False

    def observe(self, point: MetricPoint, run: RunView) -> Sequence[Decision]:
        if self.rank is not None and point.rank != self.rank:
            return ()
        decisions: list[Decision] = []
        value = point.metrics.get(self.metric)
        if value is not None:
            decisions.extend(self._check_anomaly(value, point, run))
        if self.stop_metric and not self.stopped:
            stop_value = point.metrics.get(self.stop_metric)
            if stop_value is not None:
                decisions.extend(self._check_stop(stop_value, point))
        return decisions

    def _check_anomaly(self, value: float, point: MetricPoint, run: RunView) -> list[Decision]:
        problem = None
        if not math.isfinite(value):
            problem = f"{self.metric} is {value!r} at step {point.step}"
        elif self.spike_factor and len(self.values) >= self.min_history:
            mid = median(self.values)
            if mid > 0 and value > self.spike_factor * mid:
                problem = (
                    f"{self.metric} {value!r} at step {point.step} is more than "
                    f"{self.spike_factor:g}x the median {mid!r} of the last {len(self.values)} values"
                )
        if problem is None:
            self.values.append(value)
            if self.cooldown_left > 0:
                self.cooldown_left -= 1
            return []
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return []
        self.cooldown_left = self.cooldown
        return self._react(problem, run)

    def _react(self, problem: str, run: RunView) -> list[Decision]:
        decisions: list[Decision] = []
        current = run.params.get(self.param)
        if not isinstance(current, (int, float)) or isinstance(current, bool):
            raise PolicyError(f"guard: run {run.run!r} has no numeric param {self.param!r}")
        new = max(current * self.factor, self.min_value)
        spec = run.specs.get(self.param)
        if spec is not None and spec.numeric:
            new = spec.clip(new)
        if new < current:
            decisions.append(SetParams(changes={self.param: new}, reason=f"{problem}: {self.param} -> {new!r}"))
        if self.trigger:
            decisions.append(FireTrigger(name=self.trigger, reason=problem))
        return decisions

    def _check_stop(self, value: float, point: MetricPoint) -> list[Decision]:
        best = self.stop_best
        if math.isfinite(value) and (
            best is None
            or (self.stop_mode == "min" and value < best - self.stop_min_delta)
            or (self.stop_mode == "max" and value > best + self.stop_min_delta)
        ):
            self.stop_best = value
            self.stop_wait = 0
            return []
        self.stop_wait += 1
        if self.stop_wait < self.stop_patience:
            return []
        self.stopped = True
        reason = (
            f"{self.stop_metric} did not improve by more than {self.stop_min_delta:g} for "
            f"{self.stop_wait} reports (best {self.stop_best!r}) at step {point.step}"
        )
        return [FireTrigger(name="stop", reason=reason)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "values": list(self.values),
            "cooldown_left": self.cooldown_left,
            "stop_best": None if self.stop_best is None else encode_float(self.stop_best),
            "stop_wait": self.stop_wait,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.values = deque((float(v) for v in state.get("values", [])), maxlen=self.window)
        self.cooldown_left = int(state.get("cooldown_left", 0))
        best = state.get("stop_best")
        self.stop_best = None if best is None else decode_float(best)
        self.stop_wait = int(state.get("stop_wait", 0))
        self.stopped = bool(state.get("stopped", False))
