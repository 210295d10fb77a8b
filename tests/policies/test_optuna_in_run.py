"""``optuna_in_run``: explore in segments against reference segments, then keep the best.

The runs here are synthetic and deterministic: ``ln(loss)`` changes every step by
``rate(lr) * slowdown(step)``, where ``rate`` is best (most negative) at ``BEST_LR`` and
``slowdown`` makes later segments flatter, as real loss curves are; optional noise is a fixed
sequence, so a restarted run sees exactly the values an uninterrupted one saw.
"""

from __future__ import annotations

import json
import math
import random

import optuna
import pytest

from policies import OptunaInRunPolicy, ParamSpec, PolicyConfigError

from .helpers import Driver

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPECS = {"lr": ParamSpec(name="lr", kind="float", default=0.05, min=1e-4, max=1.0, log=True)}
BEST_LR = 0.02
SEGMENT = 20
NOISE = [random.Random(7).gauss(0.0, 0.05) for _ in range(2000)]


def rate(lr: float) -> float:
    """Per-step change of ln(loss) at ``lr`` (before the slowdown): best at BEST_LR."""
    distance = math.log10(lr / BEST_LR)
    return -0.02 * (1.0 - distance**2)


class Sim:
    """One synthetic run driven through a policy (``Driver``: real arbitration, changes applied)."""

    def __init__(self, policy, lr=0.05, *, noise=False, explode_above=None, nan_above=None, tau=50.0):
        self.driver = Driver(policy, {"lr": lr}, specs=SPECS)
        self.tau = tau
        self.policy = policy
        self.log_loss = math.log(2.3)
        self.noise = noise
        self.explode_above = explode_above
        self.nan_above = nan_above
        self.step = 0
        self.lrs: list[float] = []  # the lr each step trained with

    def start(self):
        return self.driver.start()

    def train(self, steps):
        for _ in range(steps):
            lr = self.driver.run.params["lr"]
            self.lrs.append(lr)
            self.log_loss += rate(lr) / (1.0 + self.step / self.tau)
            if self.explode_above is not None and lr > self.explode_above:
                self.log_loss += 0.5
            value = math.exp(self.log_loss + (NOISE[self.step] if self.noise else 0.0))
            if self.nan_above is not None and lr > self.nan_above:
                value = math.nan
            self.driver.feed({"loss": value}, step=self.step)
            self.step += 1
        return self

    @property
    def changes(self):
        return [(o.step, dict(o.changes), o.reason) for o in self.driver.outcomes if o.kind == "apply"]


def candidate_start(j):
    """The step where candidate j (1, 2, ...) starts: after two baseline segments, every other segment."""
    return 2 * j * SEGMENT


def explore_end(n_trials):
    return (2 * n_trials + 2) * SEGMENT


def make(**options):
    defaults = {"metric": "loss", "segment_steps": SEGMENT, "seed": 3}
    return OptunaInRunPolicy(**{**defaults, **options})


def values_by_lr(policy):
    return {h["params"]["lr"]: h["value"] for h in policy.history}


def test_explores_against_references_then_keeps_the_best_measured_params():
    policy = make(n_trials=4, search_radius=1.0, sampler="random")
    sim = Sim(policy, lr=0.3)
    assert sim.start() == []  # segment 0 measures the current params (trial 0, the baseline)
    sim.train(400)
    assert policy.phase == "exploit"
    # Two segments at the baseline, then candidates every other segment, each followed by a
    # reference segment back at the incumbent.
    starts = [step for step, _, reason in sim.changes if "trying trial" in reason]
    assert starts == [candidate_start(j) for j in (1, 2, 3, 4)]
    assert [step for step, _, reason in sim.changes if "measured; back to" in reason] == [s + SEGMENT for s in starts]
    history = policy.history
    assert [h["status"] for h in history] == ["baseline"] + ["scored"] * 4
    assert history[0] == {"number": 0, "params": {"lr": 0.3}, "value": 0.0, "status": "baseline"}
    # The run ends on the best measured params (the incumbent), never on the last suggestion ...
    best = min(history, key=lambda h: h["value"])
    assert policy.incumbent["params"] == best["params"]
    assert set(sim.lrs[explore_end(4) + 1 :]) == {best["params"]["lr"]}
    assert best["params"] != history[-1]["params"]
    # ... and every comparison with the incumbent of the time got the true answer, although the
    # candidates ran later (on flatter stretches of the curve) than the segments before them.
    incumbent = history[0]
    for h in history[1:]:
        measured_better = h["value"] < incumbent["value"]
        assert measured_better == (rate(h["params"]["lr"]) < rate(incumbent["params"]["lr"]))
        incumbent = h if measured_better else incumbent
    assert best["params"]["lr"] == min((h["params"]["lr"] for h in history), key=rate)


def test_raw_improvement_would_have_kept_the_baseline():
    """Why segments are compared with adjacent references: the first segment falls fastest."""
    policy = make(n_trials=4, search_radius=1.0, sampler="random")
    sim = Sim(policy, lr=0.1, tau=10.0)  # a fast-flattening curve
    sim.start()
    sim.train(400)
    log_loss = [math.log(v) for _, v in sim.driver.run.history("loss")]

    def drop(segment):
        return log_loss[(segment + 1) * SEGMENT] - log_loss[segment * SEGMENT]

    best = min(policy.history, key=lambda h: h["value"])
    best_segment = 2 * best["number"]
    assert rate(best["params"]["lr"]) < rate(0.1)  # found truly faster params ...
    assert drop(best_segment) > drop(0)  # ... although their segment fell less than the baseline's


def test_a_run_whose_params_are_best_keeps_them():
    policy = make(n_trials=3)
    sim = Sim(policy, lr=BEST_LR)
    sim.start()
    sim.train(300)
    assert policy.phase == "exploit"
    assert policy.incumbent["params"] == {"lr": BEST_LR}
    assert all(h["value"] > 0 for h in policy.history[1:])  # every candidate measured worse
    last_change = sim.changes[-1]
    assert last_change[0] == candidate_start(3) + SEGMENT and last_change[1] == {"lr": BEST_LR}
    assert set(sim.lrs[candidate_start(3) + SEGMENT + 1 :]) == {BEST_LR}  # exploiting changes nothing


def test_candidates_stay_near_the_incumbent_by_default():
    policy = make(n_trials=5)
    sim = Sim(policy, lr=0.05, noise=True)
    sim.start()
    sim.train(300)
    # search_radius 0.1 of a 4-decade log range: within 0.4 decades of the incumbent of the time
    incumbent = 0.05
    for h in policy.history[1:]:
        assert abs(math.log10(h["params"]["lr"] / incumbent)) <= 0.4 + 1e-9
        if h["value"] is not None and h["value"] < values_by_lr(policy).get(incumbent, 0.0):
            incumbent = h["params"]["lr"]
    assert policy.incumbent["params"]["lr"] == incumbent


def _enqueue(policy, sim, lr):
    """Make ``lr`` the next suggestion (white box: the policy's per-run study)."""
    policy._ensure_study(sim.driver.run).enqueue_trial({"lr": lr})


def test_a_diverging_candidate_is_abandoned_at_once_and_scored_worst():
    policy = make(n_trials=2, search_radius=1.0)
    sim = Sim(policy, lr=0.05, explode_above=0.5)
    sim.start()
    _enqueue(policy, sim, 0.8)
    sim.train(candidate_start(1) + 12)
    step, changes, reason = sim.changes[-1]
    assert changes == {"lr": 0.05} and step == candidate_start(1) + policy.spike_window
    assert reason.startswith(f"optuna in-run: trial 1 abandoned at step {step}: loss over the last 10 reports is ")
    assert reason.endswith("x the previous segment's level (spike_factor 3); back to trial 0")
    assert sim.lrs[step + 1 :] == [0.05] * (len(sim.lrs) - step - 1)  # back at once
    (diverged,) = [h for h in policy.history if h["status"] == "diverged"]
    assert diverged["params"] == {"lr": 0.8} and diverged["value"] is None
    trial = policy._ensure_study(sim.driver.run).trials[1]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == math.inf  # worst for the sampler
    sim.train(300)
    # The reference after an abandoned candidate measures only the recovery: the incumbent runs
    # one more segment, so that the next candidate has a reference before it.
    (next_start,) = [s for s, _, reason in sim.changes if "trying trial 2" in reason]
    assert next_start == step + 2 * SEGMENT
    assert policy.phase == "exploit" and policy.incumbent["params"]["lr"] != 0.8


def test_a_non_finite_metric_abandons_a_candidate_on_that_report():
    policy = make(n_trials=1, search_radius=1.0, spike_factor=0)
    sim = Sim(policy, lr=0.05, nan_above=0.5)
    sim.start()
    _enqueue(policy, sim, 0.9)
    sim.train(candidate_start(1) + 3)
    step, changes, reason = sim.changes[-1]
    assert step == candidate_start(1) + 1 and changes == {"lr": 0.05}  # the candidate's first report
    assert f"abandoned at step {step}: loss = nan" in reason
    assert policy.history[-1]["status"] == "diverged" and policy.history[-1]["note"] == "loss = nan"
    sim.train(100)
    assert policy.phase == "exploit" and policy.incumbent["params"] == {"lr": 0.05}


def test_a_refused_change_does_not_count_as_a_measurement():
    policy = make(n_trials=1, search_radius=1.0)
    sim = Sim(policy, lr=0.3)
    sim.start()
    sim.driver.run.pin("lr")  # an operator holds lr: the candidate's change is refused
    sim.train(100)
    refused = [o for o in sim.driver.outcomes if o.kind == "refused"]
    assert refused and refused[0].step == candidate_start(1)
    (failed,) = policy.history[1:]
    assert failed["status"] == "failed" and failed["value"] is None
    assert failed["note"].startswith("lr was 0.3, not ")
    assert policy.phase == "exploit" and policy.incumbent["params"] == {"lr": 0.3}


def test_a_run_that_ends_mid_candidate_fails_the_trial():
    policy = make(n_trials=2)
    sim = Sim(policy)
    sim.start()
    sim.train(candidate_start(1) + 5)
    policy.on_run_end(sim.driver.run, outcome="completed", now=1.0)
    assert policy.history[-1]["status"] == "failed"
    assert policy.history[-1]["note"] == "the run ended (completed) before the trial was compared"
    assert policy._ensure_study(sim.driver.run).trials[-1].state == optuna.trial.TrialState.FAIL


def _run_with_restart(options, cut, total, storage_url=None):
    """An uninterrupted run and one restarted at step ``cut``: (changes, history) of each."""
    extra = {"study_name": "s", "storage": storage_url} if storage_url else {}
    whole = Sim(make(**options, **({"study_name": "w", "storage": storage_url} if storage_url else {})), noise=True)
    whole.start()
    whole.train(total)

    first = Sim(make(**options, **extra), noise=True)
    first.start()
    first.train(cut)
    state = json.loads(json.dumps(first.policy.state_dict(), allow_nan=False))
    restored = make(**options, **extra)
    restored.load_state_dict(state)
    second = Sim(restored, lr=first.driver.run.params["lr"], noise=True)  # restored runs are not started again
    second.log_loss, second.step, second.lrs = first.log_loss, first.step, list(first.lrs)
    second.train(total - cut)
    return whole, first, second


@pytest.mark.parametrize(
    ("cut", "role", "pending"),
    [
        (7, "reference", False),  # the baseline's first segment
        (SEGMENT + 8, "reference", False),
        (candidate_start(1) + 8, "candidate", True),
        (candidate_start(1) + SEGMENT + 9, "reference", True),  # a candidate waiting for its reference
        (candidate_start(2) + 1, "candidate", True),  # right after a segment boundary
        (explore_end(3) + 5, "exploit", False),
    ],
)
def test_state_round_trips_through_json_and_continues_exactly(cut, role, pending):
    options = {"n_trials": 3, "search_radius": 0.3}
    whole, first, second = _run_with_restart(options, cut, 300)
    assert first.policy.role == role and (first.policy.candidate is not None) == pending
    assert first.changes + second.changes == whole.changes
    assert second.lrs == whole.lrs
    assert second.policy.history == whole.policy.history
    assert second.policy.incumbent == whole.policy.incumbent
    assert second.policy.state_dict() == whole.policy.state_dict()


def test_restored_in_exploit_it_stays_with_the_same_params():
    policy = make(n_trials=2, search_radius=1.0)
    sim = Sim(policy, lr=0.3)
    sim.start()
    sim.train(explore_end(2) + 1)
    assert policy.phase == "exploit"
    state = json.loads(json.dumps(policy.state_dict(), allow_nan=False))
    restored = make(n_trials=2, search_radius=1.0)
    restored.load_state_dict(state)
    assert restored.phase == "exploit" and restored.incumbent == policy.incumbent
    again = Sim(restored, lr=sim.driver.run.params["lr"])
    again.train(200)
    assert again.changes == [] and restored.state_dict() == state


def test_with_sqlite_storage_a_restart_continues_the_same_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'inrun.db'}"
    options = {"n_trials": 2, "search_radius": 0.3}
    whole, first, second = _run_with_restart(options, candidate_start(1) + 8, 200, storage_url=url)
    assert first.changes + second.changes == whole.changes
    assert second.policy.history == whole.policy.history
    study = optuna.load_study(study_name="s/r1", storage=url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert [t.value for t in study.trials] == [h["value"] for h in whole.policy.history]


def test_a_state_from_before_the_exploit_phase_starts_afresh():
    policy = make()
    policy.load_state_dict({"segment": 3, "trial_number": 3, "segment_start": 60, "points": [], "history": []})
    assert policy.phase == "start"
    sim = Sim(policy)
    sim.train(5)
    assert policy.phase == "explore" and policy.history[0]["status"] == "baseline"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"segment_steps": 1}, "optuna_in_run: segment_steps must be >= 2 but got 1"),
        ({"n_trials": 0}, "optuna_in_run: n_trials must be >= 1 but got 0"),
        ({"n_trials": 2.5}, "optuna_in_run: n_trials must be an integer but got 2.5"),
        ({"search_radius": 0}, "optuna_in_run: search_radius must be > 0.0 but got 0"),
        ({"search_radius": 1.5}, "optuna_in_run: search_radius must be <= 1.0 but got 1.5"),
        ({"settle_steps": 10}, "optuna_in_run: settle_steps must be < segment_steps (10)"),
        ({"min_points": 0}, "optuna_in_run: min_points must be >= 1 but got 0"),
        ({"min_improvement": -0.1}, "optuna_in_run: min_improvement must be >= 0.0 but got -0.1"),
        ({"min_improvement": math.inf}, "optuna_in_run: min_improvement must be a finite number >= 0 but got inf"),
        ({"spike_factor": 0.5}, "optuna_in_run: spike_factor must be > 1 and finite (or 0 to turn spike"),
        ({"spike_factor": math.inf}, "optuna_in_run: spike_factor must be > 1 and finite"),
        ({"spike_window": 0}, "optuna_in_run: spike_window must be >= 1 but got 0"),
        ({"sampler": "cmaes"}, "optuna_in_run: sampler must be one of 'tpe', 'random' but got 'cmaes'"),
        ({"storage": "sqlite:///x.db"}, "optuna_in_run: study_name must be set when storage is set"),
    ],
)
def test_options_are_validated(options, message):
    with pytest.raises(PolicyConfigError) as info:
        OptunaInRunPolicy(**{"metric": "loss", "segment_steps": 10, **options})
    assert message in str(info.value)
