"""``plateau``: ``torch.optim.lr_scheduler.ReduceLROnPlateau``, as a policy."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ._errors import PolicyError
from ._options import Options, decode_float, encode_float
from ._policy import Policy
from ._types import Decision, MetricPoint, RunView, SetParams

__all__ = ["PlateauPolicy"]


class PlateauPolicy(Policy):
    """Reduce a parameter when a metric has stopped improving.

    Exactly the semantics of ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (torch 2.x), where
    each reported point of the selected rank that contains ``metric`` is one ``step(metric)``:

    * ``best`` starts at ``inf`` (``mode="min"``) or ``-inf`` (``"max"``); a point is better if
      ``a < best * (1 - threshold)`` (min, rel), ``a < best - threshold`` (min, abs),
      ``a > best * (1 + threshold)`` (max, rel) or ``a > best + threshold`` (max, abs) --
      the rel formulas are kept as is, also for negative metrics.
    * otherwise ``num_bad_epochs += 1``; while in cooldown, the cooldown counter goes down and
      bad epochs are reset to 0; when ``num_bad_epochs > patience`` (strictly), the param
      becomes ``max(old * factor, min_lr)``, but only if ``old - new > eps``; then the cooldown
      starts and bad epochs reset. NaN metrics count as bad epochs (as in torch).

    Which value is reduced: the run's current value of ``param``. Hosts include pending
    (not yet acknowledged) changes in ``run.params``, so after a change this is the value the
    policy last set; if an operator or another policy changed the param since, the policy
    reduces from that new value, as torch does when someone edits ``param_group["lr"]``. The
    new value is also clipped into the param's spec bounds (torch has none).

    Options: ``metric`` (required), ``param`` ("lr"), ``mode`` ("min" | "max"), ``factor``
    (0.1), ``patience`` (10), ``threshold`` (1e-4), ``threshold_mode`` ("rel" | "abs"),
    ``cooldown`` (0), ``min_lr`` (0), ``eps`` (1e-8), ``rank`` (0, or "any").
    """

    def __init__(
        self,
        *,
        metric: str,
        param: str = "lr",
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
        rank: int | str = 0,
    ) -> None:
        check = Options("plateau")
        self.metric = check.string("metric", metric)
        self.param = check.string("param", param)
        self.mode = check.string("mode", mode, choices=("min", "max"))
        self.factor = check.number("factor", factor, lt=1.0)
        check.number("factor", factor, ge=0.0)
        self.patience = check.integer("patience", patience, ge=0)
        self.threshold = check.number("threshold", threshold, ge=0.0)
        self.threshold_mode = check.string("threshold_mode", threshold_mode, choices=("rel", "abs"))
        self.cooldown = check.integer("cooldown", cooldown, ge=0)
        self.min_lr = check.number("min_lr", min_lr, ge=0.0)
        self.eps = check.number("eps", eps, ge=0.0)
        self.rank = check.rank(rank)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self.last_set: float | None = None

    def observe(self, point: MetricPoint, run: RunView) -> Sequence[Decision]:
        if self.rank is not None and point.rank != self.rank:
            return ()
        current = point.metrics.get(self.metric)
        if current is None:
            return ()
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        decisions: Sequence[Decision] = ()
        if self.num_bad_epochs > self.patience:
            bad = self.num_bad_epochs
            decisions = self._reduce(run, bad)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return decisions

    def _reduce(self, run: RunView, bad: int) -> Sequence[Decision]:
        value = run.params.get(self.param)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise PolicyError(f"plateau: run {run.run!r} has no numeric param {self.param!r}")
        # The view includes pending changes, so this is the value we last set unless someone
        # (an operator, another policy) changed it since -- then we reduce from theirs.
        old = float(value)
        new = max(old * self.factor, self.min_lr)
        spec = run.specs.get(self.param)
        if spec is not None and spec.kind == "float":
            new = float(spec.clip(new))
        if not old - new > self.eps:
            return ()
        self.last_set = new
        reason = (
            f"{self.metric} did not improve for {bad} reports (best {self.best!r}, "
            f"patience {self.patience}): {self.param} {old!r} -> {new!r}"
        )
        return (SetParams(changes={self.param: new}, reason=reason),)

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        if self.mode == "max" and self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": encode_float(self.best),
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
            "last_epoch": self.last_epoch,
            "last_set": self.last_set,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = decode_float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_epoch = int(state["last_epoch"])
        last_set = state.get("last_set")
        self.last_set = None if last_set is None else float(last_set)
