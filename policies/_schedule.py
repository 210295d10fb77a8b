"""``schedule``: a parameter schedule computed from the step (warmup, step decay, cosine)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ._errors import PolicyError
from ._options import Options
from ._policy import Policy
from ._types import Decision, MetricPoint, RunView, SetParams

__all__ = ["SchedulePolicy"]

_KINDS = ("warmup", "step", "cosine", "warmup_cosine")


class SchedulePolicy(Policy):
    """Drive ``param`` along a schedule of the training step, delivered as ``SetParams``.

    With ``s`` the step of the point and ``w = warmup_steps``:

    * warmup (every kind, when ``w > 0``), for ``s < w``:
      ``min_value + (base - min_value) * s / w`` (so it starts at ``min_value``);
    * then, with ``t = s - w``:

      - ``"warmup"``: ``base``;
      - ``"step"``: ``max(min_value, base * gamma ** (t // step_size))`` (``StepLR``);
      - ``"cosine"`` / ``"warmup_cosine"``: ``min_value + (base - min_value) *
        (1 + cos(pi * min(t, T) / T)) / 2`` with ``T = total_steps - w``
        (``CosineAnnealingLR``, held at ``min_value`` after ``total_steps``).

    The value is clipped into the param's spec. It is sent (at run start, and on any point of
    the selected rank) only when it differs from the run's current value, at most once every
    ``every`` steps, and only if it moved by more than ``min_change`` (ratio of the current
    value) -- except that ``base`` and ``min_value`` are always sent, so the schedule lands on
    them exactly. A change an operator made is overwritten at the next send: pin the param to
    keep it.

    The schedule is a function of the step, so the only state is the last step a change was
    sent at. Changing the options mid-run (the host rebuilds the policy with new options and
    loads this state) continues the new schedule from the current step.

    Options: ``kind`` (required: "warmup", "step", "cosine", "warmup_cosine"), ``base``
    (required), ``param`` ("lr"), ``warmup_steps`` (0; required > 0 for "warmup" and
    "warmup_cosine"), ``step_size`` and ``gamma`` (0.1) for "step", ``total_steps`` for the
    cosine kinds, ``min_value`` (0), ``every`` (1), ``min_change`` (0), ``rank`` (0, or "any").
    """

    def __init__(
        self,
        *,
        kind: Literal["warmup", "step", "cosine", "warmup_cosine"],
        base: float,
        param: str = "lr",
        warmup_steps: int = 0,
        step_size: int | None = None,
        gamma: float | None = None,
        total_steps: int | None = None,
        min_value: float = 0.0,
        every: int = 1,
        min_change: float = 0.0,
        rank: int | str = 0,
    ) -> None:
        check = Options("schedule")
        self.kind = check.string("kind", kind, choices=_KINDS)
        self.base = check.number("base", base)
        self.param = check.string("param", param)
        self.warmup_steps = check.integer("warmup_steps", warmup_steps, ge=0)
        if self.kind in ("warmup", "warmup_cosine") and self.warmup_steps == 0:
            raise check.fail("warmup_steps", f"> 0 for kind {self.kind!r}", warmup_steps)
        self.min_value = check.number("min_value", min_value)
        if self.kind == "step":
            if step_size is None:
                raise check.fail("step_size", "set for kind 'step'", step_size)
            self.step_size = check.integer("step_size", step_size, ge=1)
            self.gamma = check.number("gamma", 0.1 if gamma is None else gamma, gt=0.0)
        else:
            for key, value in (("step_size", step_size), ("gamma", gamma)):
                if value is not None:
                    raise check.fail(key, f"unset for kind {self.kind!r} (only 'step' uses it)", value)
            self.step_size, self.gamma = 1, 1.0
        if self.kind in ("cosine", "warmup_cosine"):
            if total_steps is None:
                raise check.fail("total_steps", f"set for kind {self.kind!r}", total_steps)
            self.total_steps = check.integer("total_steps", total_steps, ge=1)
            if self.total_steps <= self.warmup_steps:
                raise check.fail("total_steps", f"> warmup_steps ({self.warmup_steps})", total_steps)
        else:
            if total_steps is not None:
                raise check.fail(
                    "total_steps",
                    f"unset for kind {self.kind!r} (only the cosine kinds use it)",
                    total_steps,
                )
            self.total_steps = 0
        self.every = check.integer("every", every, ge=1)
        self.min_change = check.number("min_change", min_change, ge=0.0)
        self.rank = check.rank(rank)
        self.last_sent_step: int | None = None

    def value_at(self, step: int) -> float:
        """The schedule's value at ``step`` (before clipping into the param's spec); steps before 0 count as 0."""
        step = max(step, 0)
        w = self.warmup_steps
        if step < w:
            return self.min_value + (self.base - self.min_value) * step / w
        t = step - w
        if self.kind == "warmup":
            return self.base
        if self.kind == "step":
            return max(self.min_value, self.base * self.gamma ** (t // self.step_size))
        span = self.total_steps - w
        progress = min(t, span) / span
        return self.min_value + (self.base - self.min_value) * (1 + math.cos(math.pi * progress)) / 2

    def on_run_start(self, run: RunView) -> Sequence[Decision]:
        return self._decide(run.step, run, force=True)

    def observe(self, point: MetricPoint, run: RunView) -> Sequence[Decision]:
        if self.rank is not None and point.rank != self.rank:
            return ()
        return self._decide(point.step, run, force=False)

    def _decide(self, step: int, run: RunView, *, force: bool) -> Sequence[Decision]:
        current = run.params.get(self.param)
        if not isinstance(current, (int, float)) or isinstance(current, bool):
            raise PolicyError(f"schedule: run {run.run!r} has no numeric param {self.param!r}")
        value: float | int = self.value_at(step)
        spec = run.specs.get(self.param)
        if spec is not None and spec.numeric:
            value = spec.clip(value)
        if value == current:
            return ()
        if not force:
            last = self.last_sent_step
            if last is not None and 0 <= step - last < self.every:
                return ()
            landing = value in (self.base, self.min_value)
            small = abs(value - current) <= self.min_change * abs(current)
            if self.min_change and not landing and current != 0 and small:
                return ()
        self.last_sent_step = step
        reason = f"{self.kind} schedule: {self.param} = {value!r} at step {step}"
        return (SetParams(changes={self.param: value}, reason=reason),)

    def state_dict(self) -> dict[str, Any]:
        return {"last_sent_step": self.last_sent_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        last = state.get("last_sent_step")
        self.last_sent_step = None if last is None else int(last)
