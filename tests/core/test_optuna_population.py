"""Optuna population mode live: runs are trials of one study, the pruner stops the bad ones."""

from __future__ import annotations

import optuna

CONFIG = """
[[policy]]
id = "search"
type = "optuna"
runs = "trial-*"
study_name = "lr-search"
metric = "val_loss"
direction = "minimize"
sampler = "random"
seed = 3
pruner = "median"
n_startup_trials = 2
n_warmup_steps = 3
"""


def test_population_search_prunes_bad_trials(tmp_path, supervisor_factory, trainers):
    config = tmp_path / "policies.toml"
    config.write_text(CONFIG)
    db = tmp_path / "optuna-live.db"
    supervisor = supervisor_factory(db, args=("--config", str(config)))
    outcomes = []
    for i in range(8):
        trainer = trainers(
            "--run",
            f"trial-{i}",
            "--address",
            supervisor.address,
            "--steps",
            "25",
            "--sleep",
            "0.02",
            "--lr-objective",
            "--wait-version",
            "1",
            "--until-trigger",
            "stop",
        )
        events = trainer.events()
        outcomes.append(events[-1])
    # The study lives in Optuna's own storage, beside the supervisor's database.
    study = optuna.load_study(study_name="lr-search", storage=f"sqlite:///{tmp_path / 'optuna-live-optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(study.trials) == 8
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1, states
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 2, states
    # Each run trained with the values its trial suggested, and pruned runs stopped early.
    for i, trial in enumerate(study.trials):
        done = outcomes[i]
        assert abs(done["values"]["lr"] - trial.params["lr"]) < 1e-12
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert done["steps"] < 25
            history = supervisor.json("history", f"trial-{i}")
            stop = [e for e in history if e["trigger"] == "stop"]
            assert stop and stop[0]["source"] == "policy:search" and "pruned" in stop[0]["reason"]
    best = study.best_trial
    assert best.state == optuna.trial.TrialState.COMPLETE
