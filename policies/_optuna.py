"""``optuna`` and ``optuna_in_run``: Optuna studies driven by live runs.

Optuna is imported lazily, inside the methods, so ``import policies`` stays light and
config loading does not need a database.
"""

from __future__ import annotations

import copy
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
    """In-run search: try params segment by segment inside one run, then keep the best.

    One run has one trajectory, so params can only be compared one stretch of training (a
    *segment* of ``segment_steps`` steps) at a time. The policy has three phases:

    1. **Baseline.** The first two segments train with the run's current params, trial 0 of
       the study (value 0 by definition) and the first *incumbent* (the best params so far).
    2. **Explore** (``n_trials`` candidates). Each candidate segment trains with the sampler's
       next suggestion and is followed by a *reference* segment back at the incumbent:
       baseline, baseline, candidate 1, reference, candidate 2, reference, ... --
       ``2 * n_trials + 2`` segments (one more after each abandoned candidate). A candidate
       that measures better than the incumbent by more than ``min_improvement`` becomes the
       incumbent: the following references run with it.
    3. **Exploit.** After the last reference the run gets the incumbent's params and keeps
       them for the rest of the run. The final stretch of training never runs on an untested
       suggestion, and it runs on the starting params unless a candidate measured better.

    **Candidates stay near the incumbent.** Suggestions for a numeric param are drawn within
    ``search_radius`` of its range (of its log range for a log param) on either side of the
    incumbent's value: 0.1 of lr in [1e-5, 1] is half a decade either way. On the digits
    example (5 seeds x 8 sampler seeds) the whole range (``search_radius = 1``) ended 15 of 40
    runs with over twice the final val loss of the starting lr (a few steps at lr 0.3-1
    wreck the model, and tiny lrs win short comparisons); 0.1 ended none worse than 1.25x.
    Choice and bool params are drawn from all their values.

    **Score.** A segment's *level* is the mean of ``ln(metric)`` over its reports after its
    first ``settle_steps`` (default: its second half; at least ``min_points`` reports); its
    *progress* is its level minus the previous segment's (negative = the metric fell). A
    candidate's score is its progress minus the mean progress of the reference segments on
    either side of it (the one before it, when it measured the current incumbent, and the one
    after it). Its value in the study is the incumbent's value plus that score: an ln-metric
    difference per segment relative to the incumbent of the time, chained back to the
    baseline (values told at different stages are only roughly comparable; each promotion is
    a direct comparison).

    *Why compare with neighbouring references.* Segments of one run are not independent
    trials: how much the metric falls in a segment depends on when it runs as much as on its
    params. On the digits example (lr, 3-epoch segments, per-step training loss) the first
    segments' ln-loss falls 3-4x as much as later ones' whatever the lr, so raw improvement
    would always favour the baseline; dividing by the segment's log-time span (the log-log
    slope, this policy's earlier objective) over-corrects and, on minibatch loss, ranged from
    -10 to +11 between segments of one fixed lr. Neighbouring segments' progress differs
    little, so subtracting the mean of the one before and the one after cancels the stage of
    training (to first order), and the reference after a candidate also carries its
    after-effects: one that damaged the model shows up again as a worse reference. Measured
    there against lr 0.05 mid-run: a candidate equal to the incumbent scores 0.0 +- 0.3,
    lr 0.1 (kept, 1.3-2.4x the final val loss) +2.0, lr 0.3 +4.0.

    *Limits.* A short segment favours params that lower the metric at once: a smaller lr
    removes gradient noise, so lr / 5 scored about -0.8 there although keeping it early in
    training ends worse (the short-horizon bias of greedy in-run search); the neighbourhood
    bounds how far the run can drift per promotion. Scores are noisy (+-0.3 and more late in
    training on minibatch loss): raise ``min_improvement`` to move only on clear wins. A
    segment's level averages over its tail, so a quarter of the previous segment's progress
    leaks into the next one's. The policy sees changes take effect only through the metric,
    so the transport's lag must be small against ``segment_steps`` (the example's trainer
    flushes at every epoch end, where segments of whole epochs end: 1-7 steps).

    **Divergence.** A candidate segment is abandoned on the report that shows it, and scored
    worst (``inf`` in the study, ``"diverged"`` in ``history``), when ``metric`` is NaN / inf
    or when the mean of ``ln(metric)`` over its last ``spike_window`` reports exceeds the
    previous segment's level by ``ln(spike_factor)``; the run goes straight back to the
    incumbent. Only candidates are abandoned: a baseline, reference or exploit segment that
    diverges is left to ``guard``.

    **Interference.** A segment whose params were not what the policy set (a change refused
    because an operator pinned the param, or another policy changed a searched param) does
    not count: a candidate is told ``FAIL`` and cannot become the incumbent.

    The saved state holds the phase, the current segment's sums, the incumbent and
    ``history``: the finished trials' ``number``, ``params``, ``value`` (None unless scored),
    ``status`` (``"baseline"``, ``"scored"``, ``"diverged"``, ``"failed"``) and a ``note``
    saying why for the last two. With ``seed`` set the sampler is re-seeded for each
    suggestion, so a restored policy continues exactly as the saved one would have. A run
    that ends during exploration ends where it was (possibly on a candidate): choose
    ``n_trials`` so that ``(2 * n_trials + 2) * segment_steps`` leaves the run a good part
    of its steps. The metric must be positive and minimised (a loss; values <= 0 are
    skipped). Not a default anywhere: opt in.

    Options: ``metric`` (required), ``segment_steps`` (required), ``n_trials`` (3),
    ``search_radius`` (0.1; 1 = the whole range), ``settle_steps`` (``segment_steps // 2``),
    ``min_points`` (5), ``min_improvement`` (0.0), ``spike_factor`` (3.0; 0 = only NaN /
    inf), ``spike_window`` (10), ``study_name`` (None: an in-memory study per run, rebuilt
    from the state after a restart; with ``storage``, study ``"<study_name>/<run>"``),
    ``storage``, ``sampler`` ("tpe" | "random"), ``seed``, ``params``, ``rank`` (0, or
    "any"). With a metric reported once per epoch (``val_loss``), lower ``min_points`` and
    ``spike_window`` to what one segment holds after ``settle_steps``.
    """

    def __init__(
        self,
        *,
        metric: str,
        segment_steps: int,
        n_trials: int = 3,
        search_radius: float = 0.1,
        settle_steps: int | None = None,
        min_points: int = 5,
        min_improvement: float = 0.0,
        spike_factor: float = 3.0,
        spike_window: int = 10,
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
        self.n_trials = check.integer("n_trials", n_trials, ge=1)
        self.search_radius = check.number("search_radius", search_radius, gt=0.0)
        check.number("search_radius", search_radius, le=1.0)
        if settle_steps is None:
            settle_steps = self.segment_steps // 2
        self.settle_steps = check.integer("settle_steps", settle_steps, ge=0)
        if self.settle_steps >= self.segment_steps:
            raise check.fail("settle_steps", f"< segment_steps ({self.segment_steps})", settle_steps)
        self.min_points = check.integer("min_points", min_points, ge=1)
        self.min_improvement = check.number("min_improvement", min_improvement, ge=0.0)
        if not math.isfinite(self.min_improvement):
            raise check.fail("min_improvement", "a finite number >= 0", min_improvement)
        self.spike_factor = check.number("spike_factor", spike_factor, ge=0.0)
        if not math.isfinite(self.spike_factor) or 0.0 < self.spike_factor <= 1.0:
            raise check.fail("spike_factor", "> 1 and finite (or 0 to turn spike detection off)", spike_factor)
        self.spike_window = check.integer("spike_window", spike_window, ge=1)
        if study_name is not None:
            study_name = check.string("study_name", study_name)
        if storage is not None and study_name is None:
            raise check.fail("study_name", "set when storage is set", study_name)
        self.study_name = study_name
        self.rank = check.rank(rank)
        self._study: optuna.Study | None = None
        self._trial: optuna.trial.Trial | None = None
        self._reset()

    def _reset(self) -> None:
        self.phase = "start"  # "start" | "explore" | "exploit" | "done"
        self.role = ""  # of the current segment: "reference" | "candidate" | "exploit"
        self.prev_role = ""  # of the segment before it
        self.segment = -1
        self.segment_start = 0
        self.segment_params: dict[str, Any] = {}
        self.log_sum = 0.0
        self.log_count = 0
        self.recent: list[float] = []  # ln(metric) of the candidate's last spike_window reports
        self.spoiled = ""  # why the current segment's level does not count ("" = it does)
        self.prev_level: float | None = None
        self.ref_progress: float | None = None  # last reference segment's, if at the current incumbent
        self.started = 0  # candidates started
        self.incumbent: dict[str, Any] = {}  # number, params, value
        self.candidate: dict[str, Any] | None = None  # number, params, progress, note
        self.history: list[dict[str, Any]] = []  # finished trials

    # -- Optuna ---------------------------------------------------------------------------

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
        if self.storage is None and self.history:  # an in-memory study: rebuild it
            distributions = _distributions("optuna_in_run", run, self.params)
            for finished in self.history:
                study.add_trial(self._frozen(finished["params"], finished["status"], finished["value"], distributions))
        self._study = study
        return study

    @staticmethod
    def _frozen(
        params: Mapping[str, Any],
        status: str,
        value: float | None,
        distributions: Mapping[str, optuna.distributions.BaseDistribution],
    ) -> optuna.trial.FrozenTrial:
        import optuna

        if status == "failed":
            state, told = optuna.trial.TrialState.FAIL, None
        else:
            state, told = optuna.trial.TrialState.COMPLETE, (math.inf if status == "diverged" else value)
        return optuna.trial.create_trial(
            state=state, value=told, params=dict(params), distributions={k: distributions[k] for k in params}
        )

    def _tell(
        self, run: RunView, number: int, params: Mapping[str, Any], status: str, value: float | None, note: str = ""
    ) -> None:
        """Finish trial ``number`` and record it in ``history``."""
        import optuna

        study = self._ensure_study(run)
        trial = self._trial if self._trial is not None and self._trial.number == number else None
        self._trial = None
        if trial is None and self.storage is not None:
            try:
                trial = _trial(study, number)
            except KeyError:
                trial = None
        if trial is None:
            # Restored with an in-memory study (or one that lost the trial): add it finished.
            distributions = _distributions("optuna_in_run", run, self.params)
            study.add_trial(self._frozen(params, status, value, distributions))
        elif status == "failed":
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(trial, math.inf if status == "diverged" else value, skip_if_finished=True)
        entry = {"number": number, "params": dict(params), "value": value, "status": status}
        if note:
            entry["note"] = note
        self.history.append(entry)

    # -- segments -------------------------------------------------------------------------

    def _new_segment(self, role: str, step: int, params: Mapping[str, Any]) -> None:
        self.prev_role, self.role = self.role, role
        self.segment += 1
        self.segment_start = step
        self.segment_params = dict(params)
        self.log_sum, self.log_count = 0.0, 0
        self.recent = []
        self.spoiled = ""

    @staticmethod
    def _changes(run: RunView, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if run.params.get(k) != v}

    def _begin(self, run: RunView, step: int) -> None:
        study = self._ensure_study(run)
        distributions = _distributions("optuna_in_run", run, self.params)
        baseline = {name: run.params[name] for name in distributions}
        study.enqueue_trial(baseline, skip_if_exists=False)
        self._trial = study.ask(distributions)
        number = self._trial.number
        self._tell(run, number, baseline, "baseline", 0.0)
        self.incumbent = {"number": number, "params": baseline, "value": 0.0}
        self.phase = "explore"
        self._new_segment("reference", step, baseline)

    def _level(self) -> float | None:
        if self.spoiled or self.log_count < self.min_points:
            return None
        return self.log_sum / self.log_count

    def _neighbourhood(self, run: RunView) -> dict[str, optuna.distributions.BaseDistribution]:
        """The search space narrowed to ``search_radius`` of each numeric range around the incumbent."""
        from optuna.distributions import FloatDistribution, IntDistribution

        space = _distributions("optuna_in_run", run, self.params)
        if self.search_radius >= 1.0:
            return space
        result: dict[str, optuna.distributions.BaseDistribution] = {}
        for name, dist in space.items():
            centre = self.incumbent["params"].get(name)
            if not isinstance(dist, (FloatDistribution, IntDistribution)) or not isinstance(centre, (int, float)):
                result[name] = dist
                continue
            scale = (math.log, math.exp) if dist.log else (float, float)
            low, high, mid = scale[0](dist.low), scale[0](dist.high), scale[0](centre)
            reach = self.search_radius * (high - low)
            lo, hi = scale[1](max(low, mid - reach)), scale[1](min(high, mid + reach))
            if isinstance(dist, IntDistribution):
                lo_i = min(max(dist.low, math.ceil(lo)), int(centre))
                hi_i = max(min(dist.high, math.floor(hi)), int(centre))
                result[name] = IntDistribution(lo_i, hi_i, log=dist.log)
            else:
                lo = min(max(dist.low, lo), centre)
                hi = max(min(dist.high, hi), centre)
                result[name] = FloatDistribution(lo, hi, log=dist.log)
        return result

    def _start_candidate(self, run: RunView, step: int) -> Sequence[Decision]:
        study = self._ensure_study(run)
        if self.seed is not None:
            # A sampler seeded per ask: a restored policy suggests what the saved one would have.
            study.sampler = _make_sampler(self.sampler, self.seed + self.started)
        self._trial = study.ask(self._neighbourhood(run))
        self.started += 1
        params = dict(self._trial.params)
        self.candidate = {"number": self._trial.number, "params": params, "progress": None, "note": ""}
        self._new_segment("candidate", step, params)
        changes = self._changes(run, params)
        if not changes:
            return ()
        reason = (
            f"optuna in-run: trying trial {self._trial.number} ({self.started}/{self.n_trials}) for "
            f"{self.segment_steps} steps"
        )
        return (SetParams(changes=changes, reason=reason),)

    def _start_reference(self, run: RunView, step: int, why: str) -> Sequence[Decision]:
        params = self.incumbent["params"]
        self._new_segment("reference", step, params)
        changes = self._changes(run, params)
        if not changes:
            return ()
        return (SetParams(changes=changes, reason=f"optuna in-run: {why}; back to trial {self.incumbent['number']}"),)

    def _exploit(self, run: RunView) -> Sequence[Decision]:
        self.phase, self.role = "exploit", "exploit"
        self.candidate = None
        params = self.incumbent["params"]
        changes = self._changes(run, params)
        if not changes:
            return ()
        scored = sum(1 for h in self.history if h["status"] == "scored")
        reason = (
            f"optuna in-run: keeping trial {self.incumbent['number']} for the rest of the run "
            f"(best of {scored} scored trials, value {self.incumbent['value']:.3g})"
        )
        return (SetParams(changes=changes, reason=reason),)

    def _abandon(self, run: RunView, step: int, why: str) -> Sequence[Decision]:
        assert self.candidate is not None
        number = self.candidate["number"]
        self._tell(run, number, self.candidate["params"], "diverged", None, why)
        self.candidate = None
        self.prev_level = None  # the next segment's progress would only measure the recovery
        return self._start_reference(run, step, f"trial {number} abandoned at step {step}: {why}")

    def _conclude(self, run: RunView, progress: float | None) -> None:
        """After a candidate's reference segment: score the candidate, maybe promote it."""
        assert self.candidate is not None
        candidate, self.candidate = self.candidate, None
        refs = [p for p in (self.ref_progress, progress) if p is not None]
        self.ref_progress = progress
        if candidate["progress"] is None or not refs:
            note = candidate["note"] or "no reference segment to compare with"
            self._tell(run, candidate["number"], candidate["params"], "failed", None, note)
            return
        score = candidate["progress"] - sum(refs) / len(refs)
        value = self.incumbent["value"] + score
        self._tell(run, candidate["number"], candidate["params"], "scored", value)
        if score < -self.min_improvement:
            self.incumbent = {"number": candidate["number"], "params": dict(candidate["params"]), "value": value}
            if progress is not None:  # measured at the previous incumbent: what the new one would show
                self.ref_progress = progress + score

    def _end_segment(self, run: RunView, step: int) -> Sequence[Decision]:
        level = self._level()
        progress = None if level is None or self.prev_level is None else level - self.prev_level
        self.prev_level = level
        if self.role == "candidate":
            assert self.candidate is not None
            self.candidate["progress"] = progress
            if progress is None:
                self.candidate["note"] = self.spoiled or (
                    f"fewer than {self.min_points} usable {self.metric} reports"
                    if level is None
                    else "no level for the segment before it"
                )
            return self._start_reference(run, step, f"trial {self.candidate['number']} measured")
        if self.candidate is not None:
            self._conclude(run, progress)
        else:
            self.ref_progress = progress
        if self.started >= self.n_trials:
            return self._exploit(run)
        if self.ref_progress is None and self.prev_role != "reference":
            # The next candidate needs a reference before it: after the baseline's first
            # segment (no progress yet) or an abandoned candidate, measure the incumbent again.
            return self._start_reference(run, step, f"measuring trial {self.incumbent['number']} again first")
        return self._start_candidate(run, step)

    # -- hooks ----------------------------------------------------------------------------

    def on_run_start(self, run: RunView) -> Sequence[Decision]:
        if self.phase == "start":
            self._begin(run, run.step)
        return ()

    def observe(self, point: MetricPoint, run: RunView) -> Sequence[Decision]:
        if self.rank is not None and point.rank != self.rank:
            return ()
        if self.phase == "start":
            self._begin(run, point.step)
        if self.phase != "explore":
            return ()
        if not self.spoiled:
            for name, value in self.segment_params.items():
                if run.params.get(name) != value:
                    self.spoiled = (
                        f"{name} was {run.params.get(name)!r}, not {value!r} (a change refused or made elsewhere)"
                    )
                    break
        value = point.metrics.get(self.metric)
        if value is not None:
            why = self._record(value, point.step)
            if why:
                return self._abandon(run, point.step, why)
        if point.step < self.segment_start + self.segment_steps:
            return ()
        return self._end_segment(run, point.step)

    def _record(self, value: float, step: int) -> str:
        """Add one report to the current segment; a reason if a candidate must be abandoned."""
        candidate = self.role == "candidate"
        if not math.isfinite(value):
            self.spoiled = self.spoiled or f"{self.metric} = {value!r}"
            return f"{self.metric} = {value!r}" if candidate else ""
        if value <= 0.0:
            return ""
        log_value = math.log(value)
        if step >= self.segment_start + self.settle_steps:
            self.log_sum += log_value
            self.log_count += 1
        if not candidate or not self.spike_factor:
            return ""
        self.recent.append(log_value)
        del self.recent[: -self.spike_window]
        if len(self.recent) < self.spike_window or self.prev_level is None:
            return ""
        ratio = math.exp(sum(self.recent) / len(self.recent) - self.prev_level)
        if ratio <= self.spike_factor:
            return ""
        return (
            f"{self.metric} over the last {self.spike_window} reports is {ratio:.3g}x the previous "
            f"segment's level (spike_factor {self.spike_factor:g})"
        )

    def on_run_end(self, run: RunView, *, outcome: RunOutcome, now: float) -> Sequence[Decision]:
        if self.candidate is not None:
            note = f"the run ended ({outcome}) before the trial was compared"
            self._tell(run, self.candidate["number"], self.candidate["params"], "failed", None, note)
            self.candidate = None
        if self.phase in ("explore", "exploit"):
            self.phase = "done"
        return ()

    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "role": self.role,
            "prev_role": self.prev_role,
            "segment": self.segment,
            "segment_start": self.segment_start,
            "segment_params": dict(self.segment_params),
            "log_sum": self.log_sum,
            "log_count": self.log_count,
            "recent": list(self.recent),
            "spoiled": self.spoiled,
            "prev_level": self.prev_level,
            "ref_progress": self.ref_progress,
            "started": self.started,
            "incumbent": copy.deepcopy(self.incumbent),
            "candidate": copy.deepcopy(self.candidate),
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._reset()
        self._study = None
        self._trial = None
        if "phase" not in state:
            return  # a state saved before explore / exploit (no incumbent): start afresh
        self.phase = str(state["phase"])
        self.role = str(state["role"])
        self.prev_role = str(state["prev_role"])
        self.segment = int(state["segment"])
        self.segment_start = int(state["segment_start"])
        self.segment_params = dict(state["segment_params"])
        self.log_sum = float(state["log_sum"])
        self.log_count = int(state["log_count"])
        self.recent = [float(v) for v in state["recent"]]
        self.spoiled = str(state["spoiled"])
        self.prev_level = None if state["prev_level"] is None else float(state["prev_level"])
        self.ref_progress = None if state["ref_progress"] is None else float(state["ref_progress"])
        self.started = int(state["started"])
        self.incumbent = copy.deepcopy(dict(state["incumbent"]))
        self.candidate = None if state["candidate"] is None else copy.deepcopy(dict(state["candidate"]))
        self.history = [copy.deepcopy(dict(h)) for h in state["history"]]
