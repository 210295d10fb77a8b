from __future__ import annotations

import json

import optuna
import pytest

from policies import (
    InMemoryRun,
    MetricPoint,
    OptunaPolicy,
    ParamSpec,
    PolicyConfigError,
    PolicyEngine,
    parse_config,
)

from .helpers import kinds

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPECS = {
    "lr": ParamSpec(name="lr", kind="float", default=0.1, min=1e-4, max=1.0, log=True),
    "layers": ParamSpec(name="layers", kind="int", default=2, min=1, max=4),
    "opt": ParamSpec(name="opt", kind="choice", default="sgd", choices=("sgd", "adam")),
    "nesterov": ParamSpec(name="nesterov", kind="bool", default=False),
    "tag": ParamSpec(name="tag", kind="string", default="x"),
    "wd": ParamSpec(name="wd", kind="float", default=0.0),  # unbounded: not searched by default
}


def new_run(name):
    return InMemoryRun(name, specs=SPECS)


def feed(engine, run, step, value):
    p = MetricPoint(run=run.run, step=step, time=float(step), metrics={"val_loss": value})
    run.record(p)
    outcomes = engine.observe(p, run)
    for outcome in outcomes:
        if outcome.kind == "apply":
            run.apply(outcome.changes)
    return outcomes


def start(engine, run):
    outcomes = engine.attach(run)
    for outcome in outcomes:
        if outcome.kind == "apply":
            run.apply(outcome.changes)
    return outcomes


def population(storage=None, **extra):
    options = {"id": "hpo", "type": "optuna", "metric": "val_loss", "study_name": "s", "seed": 0}
    if extra.get("pruner", "median") == "median":
        options.update(n_startup_trials=3, n_warmup_steps=3)
    options.update(extra)
    if storage is not None:
        options["storage"] = storage
    return PolicyEngine(parse_config({"policy": [options]}))


def test_each_run_is_a_trial_and_a_clearly_bad_run_is_pruned():
    engine = population()
    for i in range(4):  # four decent runs complete
        run = new_run(f"good-{i}")
        (suggestion,) = start(engine, run)
        assert suggestion.reason == f"optuna trial {i} of study 's'"
        assert set(suggestion.changes) == {"lr", "layers"}  # bounded numeric params only
        assert 1e-4 <= run.params["lr"] <= 1.0 and run.params["layers"] in (1, 2, 3, 4)
        for step in range(10):
            assert feed(engine, run, step, 1.0 / (step + 1) - 0.01 * i) == []
        engine.finish(run, "completed", now=100.0)
    bad = new_run("bad")
    start(engine, bad)
    pruned_at = None
    for step in range(10):
        outcomes = feed(engine, bad, step, 5.0)
        if outcomes:
            assert kinds(outcomes) == ["trigger"] and outcomes[0].trigger == "stop"
            assert outcomes[0].reason.startswith(f"pruned by median at step {step} (optuna trial 4")
            pruned_at = step
            break
    assert pruned_at == 3  # the first step after n_warmup_steps
    assert feed(engine, bad, 4, 5.0) == []  # a pruned trial is done
    engine.finish(bad, "completed", now=200.0)
    (runner,) = [r for r in engine._population_runners.values()]
    study = runner.policy.study
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 4 + [optuna.trial.TrialState.PRUNED]
    assert study.trials[0].value == pytest.approx(0.1)  # the last reported value
    assert study.trials[0].intermediate_values[3] == pytest.approx(0.25)


def test_failed_and_vanished_runs_are_failed_trials_and_params_can_be_chosen():
    engine = population(params=["opt", "nesterov", "lr"], pruner="none")
    run_a, run_b, run_c = new_run("a"), new_run("b"), new_run("c")
    (suggestion,) = start(engine, run_a)
    assert set(suggestion.changes) == {"opt", "nesterov", "lr"}
    assert isinstance(run_a.params["nesterov"], bool) and run_a.params["opt"] in ("sgd", "adam")
    start(engine, run_b)
    start(engine, run_c)
    feed(engine, run_a, 0, 1.0)
    engine.finish(run_a, "failed", now=1.0)
    feed(engine, run_b, 0, 1.0)
    engine.finish(run_b, "vanished", now=1.0)
    engine.finish(run_c, "completed", now=1.0)  # never reported: nothing to tell but FAIL
    study = next(iter(engine._population_runners.values())).policy.study
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3


def test_searching_a_param_without_bounds_is_an_error_outcome():
    engine = population(params=["wd"])
    (error,) = engine.attach(new_run("a"))
    assert error.kind == "error"
    assert "param 'wd' of run 'a' cannot be searched: it needs min and max" in error.reason


def test_restart_with_sqlite_storage_continues_the_same_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    engine = population(storage=url)
    runs = [new_run(f"r{i}") for i in range(4)]
    for i, run in enumerate(runs[:3]):
        start(engine, run)
        for step in range(6):
            feed(engine, run, step, 1.0 + 0.1 * i)
        engine.finish(run, "completed", now=1.0)
    last = runs[3]
    start(engine, last)
    feed(engine, last, 0, 9.0)
    state = json.loads(json.dumps(engine.state_dict(), allow_nan=False))
    del engine  # the supervisor restarts

    restarted = population(storage=url)
    restarted.load_state_dict(state)
    assert restarted.attach(last) == []  # still trial 3: no new suggestion
    outcomes = []
    for step in range(1, 6):
        outcomes += feed(restarted, last, step, 9.0)
    assert [o.trigger for o in outcomes] == ["stop"]
    study = optuna.load_study(study_name="s", storage=url)
    assert len(study.trials) == 4
    assert study.trials[3].state == optuna.trial.TrialState.PRUNED
    assert study.trials[3].intermediate_values[0] == 9.0  # reported before the restart


def test_storage_urls_are_passed_unchanged():
    policy = OptunaPolicy(metric="m", storage="postgresql://user:pw@db:5432/optuna")
    assert policy.storage == "postgresql://user:pw@db:5432/optuna"
    assert OptunaPolicy(metric="m", storage="sqlite:///x.db").storage == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"direction": "down"}, "optuna: direction must be one of 'minimize', 'maximize' but got 'down'"),
        ({"pruner": "asha"}, "optuna: pruner must be one of 'median', 'percentile', 'hyperband'"),
        ({"sampler": "cmaes"}, "optuna: sampler must be one of 'tpe', 'random' but got 'cmaes'"),
        ({"percentile": 30.0}, "optuna: percentile must be unset with pruner 'median' (it has no effect)"),
        ({"pruner": "percentile", "percentile": 130.0}, "optuna: percentile must be <= 100.0 but got 130.0"),
        ({"params": []}, "optuna: params must be a non-empty list of distinct param names but got []"),
        ({"storage": ""}, "optuna: storage must be an Optuna storage URL"),
        ({"pruner": "hyperband", "reduction_factor": 1}, "optuna: reduction_factor must be >= 2 but got 1"),
    ],
)
def test_options_are_validated(options, message):
    with pytest.raises(PolicyConfigError) as info:
        OptunaPolicy(metric="val_loss", **options)
    assert message in str(info.value)


@pytest.mark.parametrize("pruner", ["percentile", "hyperband", "successive_halving", "none"])
def test_every_pruner_can_be_built(pruner):
    assert OptunaPolicy(metric="m", pruner=pruner)._make_pruner() is not None
