"""``optuna`` and ``optuna_in_run``: Optuna studies driven by live runs.

Optuna is imported lazily, inside the methods, so ``import policies`` stays light and
config loading does not need a database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ._options import Options
from ._policy import Policy, RunOutcome
from ._types import Decision, FireTrigger, MetricPoint, ParamSpec, RunView, SetParams

if TYPE_CHECKING:
    import optuna

__all__ = ["OptunaInRunPolicy", "OptunaPolicy"]

_SAMPLERS = ("tpe", "random")
_PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "none")
_PRUNER_KEYS = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "percentile": ("percentile", "n_startup_trials", "n_warmup_steps", "interval_steps"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
    "successive_halving": ("min_resource", "reduction_factor"),
    "none": (),
}


def _check_common(
    check: Options,
    *,
    metric: str,
    storage: str | None,
    sampler: str,
    seed: int | None,
    params: Sequence[str] | None,
) -> tuple[str, str | None, str, int | None, tuple[str, ...] | None]:
    metric = check.string("metric", metric)
    if storage is not None and (not isinstance(storage, str) or not storage):
        raise check.fail("storage", "an Optuna storage URL such as 'sqlite:///study.db'", storage)
    sampler = check.string("sampler", sampler, choices=_SAMPLERS)
    if seed is not None:
        seed = check.integer("seed", seed, ge=0)
    names: tuple[str, ...] | None = None
    if params is not None:
        if (
            not isinstance(params, (list, tuple))
            or not params
            or not all(isinstance(p, str) and p for p in params)
            or len(set(params)) != len(params)
        ):
            raise check.fail("params", "a non-empty list of distinct param names", params)
        names = tuple(params)
    return metric, storage, sampler, seed, names


def _make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _distributions(
    policy: str, run: RunView, names: tuple[str, ...] | None
) -> dict[str, optuna.distributions.BaseDistribution]:
    """Search space from the run's specs: ``names``, or every bounded numeric param."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if names is None:
        names = tuple(
            sorted(
                name
                for name, spec in run.specs.items()
                if spec.numeric and spec.min is not None and spec.max is not None
            )
        )
        if not names:
            raise ValueError(
                f"{policy}: run {run.run!r} has no numeric param with min and max to search; "
                "declare bounds or set `params`"
            )
    result: dict[str, optuna.distributions.BaseDistribution] = {}
    for name in names:
        spec: ParamSpec | None = run.specs.get(name)
        if spec is None:
            raise ValueError(f"{policy}: run {run.run!r} has no param {name!r}")
        if spec.kind == "bool":
            result[name] = CategoricalDistribution([False, True])
        elif spec.kind == "choice":
            result[name] = CategoricalDistribution(list(spec.choices))
        elif spec.numeric and spec.min is not None and spec.max is not None:
            if spec.kind == "int":
                result[name] = IntDistribution(math.ceil(spec.min), math.floor(spec.max), log=spec.log)
            else:
                result[name] = FloatDistribution(spec.min, spec.max, log=spec.log)
        else:
            raise ValueError(
                f"{policy}: param {name!r} of run {run.run!r} cannot be searched: it needs "
                f"min and max (float, int), or to be a bool or choice param (kind {spec.kind!r})"
            )
    return result


def _trial(study: optuna.Study, number: int) -> optuna.trial.Trial:
    """The live ``Trial`` object for trial ``number`` (e.g. after a restart)."""
    import optuna

    # Optuna has no public "trial by number" for running trials; these two attributes are
    # stable across Optuna 3-5 (pinned in pyproject).
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


class OptunaPolicy(Policy):
    """Population search: every run matching the binding is one trial of an Optuna study.

    * ``on_run_start``: ``study.ask()`` with distributions built from the run's specs
      (``FloatDistribution(min, max, log)``, ``IntDistribution``, ``CategoricalDistribution`` for
      choice and bool params) and ``SetParams`` with the suggestion ("optuna trial N ...").
    * each report of ``metric``: ``trial.report(value, step)``, then ``should_prune()``; if so
      the trial is told ``PRUNED`` and the run gets ``FireTrigger("stop")`` ("pruned by
      <pruner> at step S"). Non-finite values are not reported (use ``guard`` for those).
    * ``on_run_end``: ``completed`` tells the last reported value; ``failed`` / ``vanished``
      (or a run that never reported) tell ``FAIL``.

    The study lives in Optuna's storage: ``storage`` is an Optuna RDB URL passed unchanged
    (``"sqlite:///path.db"``, ``"postgresql://..."``); ``None`` means in memory (replay, tests;
    lost on restart). The live host supplies a default through
    ``load_config(..., defaults={"optuna": {"storage": URL}})``. The policy's own state is
    only run -> trial number and the last value.

    Options: ``metric`` (required), ``study_name`` ("supervisor"), ``direction``
    ("minimize" | "maximize"), ``storage`` (None), ``sampler`` ("tpe" | "random"), ``seed``,
    ``pruner`` ("median", "percentile", "hyperband", "successive_halving", "none"; default
    "median") with ``n_startup_trials``, ``n_warmup_steps``, ``interval_steps`` (median,
    percentile), ``percentile`` (percentile, default 25), ``min_resource``, ``reduction_factor``
    (hyperband, successive_halving), ``max_resource`` (hyperband); ``params`` (names to search,
    default every numeric param with min and max), ``rank`` (0, or "any").
    """

    scope = "population"

    def __init__(
        self,
        *,
        metric: str,
        study_name: str = "supervisor",
        direction: Literal["minimize", "maximize"] = "minimize",
        storage: str | None = None,
        sampler: Literal["tpe", "random"] = "tpe",
        seed: int | None = None,
        pruner: str = "median",
        n_startup_trials: int | None = None,
        n_warmup_steps: int | None = None,
        interval_steps: int | None = None,
        percentile: float | None = None,
        min_resource: int | None = None,
        max_resource: int | None = None,
        reduction_factor: int | None = None,
        params: Sequence[str] | None = None,
        rank: int | str = 0,
    ) -> None:
        check = Options("optuna")
        self.metric, self.storage, self.sampler, self.seed, self.params = _check_common(
            check, metric=metric, storage=storage, sampler=sampler, seed=seed, params=params
        )
        self.study_name = check.string("study_name", study_name)
        self.direction = check.string("direction", direction, choices=("minimize", "maximize"))
        self.pruner = check.string("pruner", pruner, choices=_PRUNERS)
        given = {
            "n_startup_trials": n_startup_trials,
            "n_warmup_steps": n_warmup_steps,
            "interval_steps": interval_steps,
            "percentile": percentile,
            "min_resource": min_resource,
            "max_resource": max_resource,
            "reduction_factor": reduction_factor,
        }
        self.pruner_options: dict[str, float | int] = {}
        for key, value in given.items():
            if value is None:
                continue
            if key not in _PRUNER_KEYS[self.pruner]:
                raise check.fail(key, f"unset with pruner {self.pruner!r} (it has no effect)", value)
            if key == "percentile":
                self.pruner_options[key] = check.number(key, value, ge=0.0)
                check.number(key, value, le=100.0)
            elif key == "reduction_factor":
                self.pruner_options[key] = check.integer(key, value, ge=2)
            elif key in ("interval_steps", "min_resource", "max_resource"):
                self.pruner_options[key] = check.integer(key, value, ge=1)
            else:
                self.pruner_options[key] = check.integer(key, value, ge=0)
        self.rank = check.rank(rank)
        self._study: optuna.Study | None = None
        self._live: dict[str, optuna.trial.Trial] = {}
        self.trials: dict[str, dict[str, Any]] = {}

    # -- Optuna objects -----------------------------------------------------------------

    def _make_pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        o = dict(self.pruner_options)
        if self.pruner == "median":
            return optuna.pruners.MedianPruner(**o)
        if self.pruner == "percentile":
            return optuna.pruners.PercentilePruner(o.pop("percentile", 25.0), **o)
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(**o)
        if self.pruner == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**o)
        return optuna.pruners.NopPruner()

    @property
    def study(self) -> optuna.Study:
        """The study (created, or loaded from ``storage``, on first use)."""
        if self._study is None:
            import optuna

            self._study = optuna.create_study(
                storage=self.storage,
                study_name=self.study_name,
                direction=self.direction,
                sampler=_make_sampler(self.sampler, self.seed),
                pruner=self._make_pruner(),
                load_if_exists=True,
            )
        return self._study

    def _trial_of(self, run: str) -> optuna.trial.Trial:
        trial = self._live.get(run)
        if trial is None:
            number = self.trials[run]["number"]
            try:
                trial = _trial(self.study, number)
            except KeyError:
                raise RuntimeError(
                    f"optuna: trial {number} of study {self.study_name!r} is not in the storage "
                    "(an in-memory study does not survive a restart: set `storage`)"
                ) from None
            self._live[run] = trial
        return trial

    # -- hooks --------------------------------------------------------------------------

    def on_run_start(self, run: RunView) -> Sequence[Decision]:
        if run.run in self.trials:
            return ()  # restored: the run already is a trial
        distributions = _distributions("optuna", run, self.params)
        trial = self.study.ask(distributions)
        self._live[run.run] = trial
        self.trials[run.run] = {"number": trial.number, "last": None}
        reason = f"optuna trial {trial.number} of study {self.study_name!r}"
        return (SetParams(changes=dict(trial.params), reason=reason),)

    def observe(self, point: MetricPoint, run: RunView) -> Sequence[Decision]:
        if self.rank is not None and point.rank != self.rank:
            return ()
        entry = self.trials.get(run.run)
        value = point.metrics.get(self.metric)
        if entry is None or value is None or not math.isfinite(value):
            return ()
        trial = self._trial_of(run.run)
        trial.report(value, point.step)
        entry["last"] = value
        if not trial.should_prune():
            return ()
        import optuna

        self.study.tell(entry["number"], state=optuna.trial.TrialState.PRUNED)
        del self.trials[run.run]
        self._live.pop(run.run, None)
        reason = (
            f"pruned by {self.pruner} at step {point.step} (optuna trial {entry['number']}, {self.metric}={value!r})"
        )
        return (FireTrigger(name="stop", reason=reason),)

    def on_run_end(self, run: RunView, *, outcome: RunOutcome, now: float) -> Sequence[Decision]:
        entry = self.trials.pop(run.run, None)
        self._live.pop(run.run, None)
        if entry is None:
            return ()  # not a trial, or already pruned
        import optuna

        if outcome == "completed" and entry["last"] is not None:
            self.study.tell(entry["number"], entry["last"], skip_if_finished=True)
        else:
            self.study.tell(entry["number"], state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        return ()

    def state_dict(self) -> dict[str, Any]:
        return {"trials": {run: dict(entry) for run, entry in self.trials.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.trials = {run: dict(entry) for run, entry in state.get("trials", {}).items()}
        self._live.clear()


class OptunaInRunPolicy(Policy):
    """In-run search: successive segments of one run are the trials of a per-run study.

    Every ``segment_steps`` steps the policy ends the current segment, tells its objective,
    asks the next suggestion and sends it as ``SetParams``. The first segment measures the
    run's current params (enqueued as trial 0), so the search has a baseline.

    **Objective.** Segments of one run are not independent trials: the loss falls fast early
    and slowly later, so "improvement per step" makes early segments look best and "metric at
    the segment's end" makes late segments look best, whatever the params. The objective is
    instead the least-squares slope of ``ln(metric)`` against ``ln(step + 1)`` over the
    segment (dropping its first ``settle_steps``, where the previous params still show):
    for a power-law curve ``L(t) = a * t**-b`` this local log-log slope is ``-b`` at every
    ``t``, so it measures how fast the params make progress independently of *when* the
    segment ran, and segments compare fairly. It is minimised (more negative = faster).
    Limits: it needs a positive metric to minimise (a loss; values <= 0 are skipped); an
    irreducible loss floor flattens late slopes (late segments look a little worse: the
    search errs towards params it already tried); a segment with fewer than ``min_points``
    usable values, or a non-finite value, is told ``FAIL``. Not a default anywhere: opt in.

    Options: ``metric`` (required), ``segment_steps`` (required), ``settle_steps`` (default
    ``segment_steps // 5``), ``min_points`` (5), ``study_name`` (None: an in-memory study per
    run, rebuilt from the state after a restart; with ``storage``, study
    ``"<study_name>/<run>"``), ``storage``, ``sampler`` ("tpe" | "random"), ``seed``,
    ``params``, ``rank`` (0, or "any").
    """

    def __init__(
        self,
        *,
        metric: str,
        segment_steps: int,
        settle_steps: int | None = None,
        min_points: int = 5,
        study_name: str | None = None,
        storage: str | None = None,
        sampler: Literal["tpe", "random"] = "tpe",
        seed: int | None = None,
        params: Sequence[str] | None = None,
        rank: int | str = 0,
    ) -> None:
        check = Options("optuna_in_run")
        self.metric, self.storage, self.sampler, self.seed, self.params = _check_common(
            check, metric=metric, storage=storage, sampler=sampler, seed=seed, params=params
        )
        self.segment_steps = check.integer("segment_steps", segment_steps, ge=2)
        if settle_steps is None:
            settle_steps = self.segment_steps // 5
        self.settle_steps = check.integer("settle_steps", settle_steps, ge=0)
        if self.settle_steps >= self.segment_steps:
            raise check.fail("settle_steps", f"< segment_steps ({self.segment_steps})", settle_steps)
        self.min_points = check.integer("min_points", min_points, ge=2)
        if study_name is not None:
            study_name = check.string("study_name", study_name)
        if storage is not None and study_name is None:
            raise check.fail("study_name", "set when storage is set", study_name)
        self.study_name = study_name
        self.rank = check.rank(rank)
        self._study: optuna.Study | None = None
        self._trial: optuna.trial.Trial | None = None
        self.segment = 0
        self.trial_number: int | None = None
        self.segment_start = 0
        self.points: list[list[float]] = []
        self.failed = False
        self.history: list[dict[str, Any]] = []  # finished segments: params, value / None

    @staticmethod
    def objective(points: Sequence[Sequence[float]]) -> float | None:
        """Least-squares slope of ``ln(value)`` on ``ln(step + 1)``; ``None`` if undefined."""
        xs = [math.log(step + 1.0) for step, value in points if value > 0]
        ys = [math.log(value) for step, value in points if value > 0]
        if len(xs) < 2:
            return None
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx == 0.0:
            return None
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx

    def _ensure_study(self, run: RunView) -> optuna.Study:
        if self._study is not None:
            return self._study
        import optuna

        name = f"{self.study_name}/{run.run}" if self.study_name else None
        study = optuna.create_study(
            storage=self.storage,
            study_name=name,
            direction="minimize",
            sampler=_make_sampler(self.sampler, self.seed),
            load_if_exists=True,
        )
        if self.storage is None and self.history:
            distributions = _distributions("optuna_in_run", run, self.params)
            for finished in self.history:
                if finished["value"] is None:
                    state, value = optuna.trial.TrialState.FAIL, None
                else:
                    state, value = optuna.trial.TrialState.COMPLETE, finished["value"]
                study.add_trial(
                    optuna.trial.create_trial(
                        state=state,
                        value=value,
                        params=finished["params"],
                        distributions={k: distributions[k] for k in finished["params"]},
                    )
                )
        self._study = study
        return study

    def _start_segment(self, run: RunView, step: int, *, baseline: bool) -> Sequence[Decision]:
        study = self._ensure_study(run)
        distributions = _distributions("optuna_in_run", run, self.params)
        if baseline:
            current = {name: run.params[name] for name in distributions}
            study.enqueue_trial(current, skip_if_exists=False)
        trial = study.ask(distributions)
        self._trial = trial
        self.trial_number = trial.number
        self.segment_start = step
        self.points = []
        self.failed = False
        changes = {k: v for k, v in trial.params.items() if run.params.get(k) != v}
        if not changes:
            return ()
        reason = f"optuna in-run segment {self.segment} (trial {trial.number})"
        return (SetParams(changes=changes, reason=reason),)

    def on_run_start(self, run: RunView) -> Sequence[Decision]:
        if self.trial_number is not None:
            return ()
        return self._start_segment(run, run.step, baseline=True)

    def observe(self, point: MetricPoint, run: RunView) -> Sequence[Decision]:
        if self.rank is not None and point.rank != self.rank:
            return ()
        if self.trial_number is None:
            return self._start_segment(run, point.step, baseline=True)
        value = point.metrics.get(self.metric)
        if value is not None:
            if not math.isfinite(value):
                self.failed = True
            elif value > 0 and point.step >= self.segment_start + self.settle_steps:
                self.points.append([float(point.step), value])
        if point.step < self.segment_start + self.segment_steps:
            return ()
        self._finish_segment(run)
        self.segment += 1
        return self._start_segment(run, point.step, baseline=False)

    def _finish_segment(self, run: RunView) -> None:
        import optuna

        study = self._ensure_study(run)
        value = None if self.failed or len(self.points) < self.min_points else self.objective(self.points)
        trial = self._trial
        if trial is None and self.storage is not None and self.trial_number is not None:
            trial = self._trial = _trial(study, self.trial_number)
        if trial is None or trial.number != self.trial_number:
            # Restored with an in-memory study: the running trial is gone; record the segment
            # with the params it ran with.
            distributions = _distributions("optuna_in_run", run, self.params)
            params = {name: run.params[name] for name in distributions}
            self.history.append({"params": params, "value": value})
            state = optuna.trial.TrialState.FAIL if value is None else optuna.trial.TrialState.COMPLETE
            study.add_trial(
                optuna.trial.create_trial(state=state, value=value, params=params, distributions=distributions)
            )
            return
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
        self.history.append({"params": dict(trial.params), "value": value})

    def on_run_end(self, run: RunView, *, outcome: RunOutcome, now: float) -> Sequence[Decision]:
        if self.trial_number is not None:
            self._finish_segment(run)
            self.trial_number = None
            self._trial = None
        return ()

    def state_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "trial_number": self.trial_number,
            "segment_start": self.segment_start,
            "points": [list(p) for p in self.points],
            "failed": self.failed,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.segment = int(state.get("segment", 0))
        number = state.get("trial_number")
        self.trial_number = None if number is None else int(number)
        self.segment_start = int(state.get("segment_start", 0))
        self.points = [list(p) for p in state.get("points", [])]
        self.failed = bool(state.get("failed", False))
        self.history = [dict(h) for h in state.get("history", [])]
        self._study = None
        self._trial = None
