"""``plateau`` against ``torch.optim.lr_scheduler.ReduceLROnPlateau`` itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from policies import InMemoryRun, ParamSpec, PlateauPolicy, PolicyConfigError

from .helpers import Driver


def torch_trace(values, lr, **options):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **options)
    trace = []
    for value in values:
        scheduler.step(value)
        trace.append(optimizer.param_groups[0]["lr"])
    return trace, scheduler


def policy_trace(values, lr, **options):
    driver = Driver(PlateauPolicy(metric="val_loss", **options), {"lr": lr})
    return driver.feed_all("val_loss", values), driver


def random_options(rng):
    return {
        "mode": str(rng.choice(["min", "max"])),
        "factor": float(rng.choice([0.0, 0.1, 0.5, 0.9])),
        "patience": int(rng.integers(0, 5)),
        "threshold": float(rng.choice([0.0, 1e-4, 0.05, 0.3])),
        "threshold_mode": str(rng.choice(["rel", "abs"])),
        "cooldown": int(rng.integers(0, 4)),
        "min_lr": float(rng.choice([0.0, 1e-3, 0.02])),
        "eps": float(rng.choice([0.0, 1e-8, 1e-3, 0.05])),
    }


def random_sequence(rng, n):
    shape = rng.integers(0, 4)
    if shape == 0:  # random walk, either sign
        values = np.cumsum(rng.normal(0, 1, n)) * rng.choice([1, -1])
    elif shape == 1:  # decaying loss with plateaus and noise
        values = np.exp(-np.arange(n) / rng.uniform(5, 50)) + rng.normal(0, 0.02, n)
    elif shape == 2:  # heavily quantised: many exact ties
        values = np.round(rng.normal(0, 1, n), 0)
    else:  # negative metrics only (rel mode formula applies to them too)
        values = -np.abs(rng.normal(1, 0.3, n)) - np.arange(n) * rng.uniform(-0.05, 0.05)
    return [float(v) for v in values]


def test_matches_torch_on_many_random_sequences():
    rng = np.random.default_rng(20240611)
    changed = 0
    for case in range(400):
        options = random_options(rng)
        values = random_sequence(rng, int(rng.integers(1, 80)))
        lr = float(rng.choice([1.0, 0.1, 3e-4]))
        expected, _ = torch_trace(values, lr, **options)
        got, _ = policy_trace(values, lr, **options)
        assert got == expected, f"case {case}: options={options} values={values}"
        changed += expected[-1] != lr
    assert changed > 100  # the comparison exercised reductions, not just flat lines


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
def test_negative_metrics_follow_torchs_rel_formula(mode, threshold_mode):
    # With best < 0, best * (1 - threshold) is *above* best in min mode: torch counts a
    # slightly worse value as an improvement. Keep that.
    values = [-1.0, -0.99995, -0.9999, -0.9998, -0.9996, -0.999, -0.99, -0.9, -0.5, -0.5, -0.5]
    options = {"mode": mode, "threshold_mode": threshold_mode, "patience": 1, "factor": 0.5}
    expected, _ = torch_trace(values, 0.1, **options)
    got, _ = policy_trace(values, 0.1, **options)
    assert got == expected


def test_patience_is_strict_and_first_step_sets_best():
    # patience=2: the third bad report in a row reduces, not the second.
    got, driver = policy_trace([1.0, 1.0, 1.0, 1.0], 0.1, patience=2, factor=0.5)
    assert got == [0.1, 0.1, 0.1, 0.05]
    assert driver.runner.policy.best == 1.0  # the first report became best (inf * (1 - t) = inf)


def test_cooldown_resets_bad_epochs():
    values = [1.0] + [2.0] * 12
    options = {"patience": 1, "cooldown": 3, "factor": 0.5}
    expected, _ = torch_trace(values, 1.0, **options)
    got, _ = policy_trace(values, 1.0, **options)
    assert got == expected == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.125]


def test_eps_rule_skips_tiny_reductions():
    # old - new == eps exactly is not > eps: no change (2.0 * 0.5 = 1.0, eps 1.0).
    got, driver = policy_trace([1.0, 2.0, 2.0], 2.0, patience=0, factor=0.5, eps=1.0)
    assert got == torch_trace([1.0, 2.0, 2.0], 2.0, patience=0, factor=0.5, eps=1.0)[0]
    assert got == [2.0, 2.0, 2.0]
    assert driver.outcomes == []
    # Just above eps: reduced.
    got, _ = policy_trace([1.0, 2.0], 2.0, patience=0, factor=0.5, eps=0.999)
    assert got == [2.0, 1.0]
    # min_lr reached: no more decisions.
    got, driver = policy_trace([1.0] + [2.0] * 6, 1.0, patience=0, factor=0.5, min_lr=0.2)
    assert got == [1.0, 0.5, 0.25, 0.2, 0.2, 0.2, 0.2]
    assert len(driver.outcomes) == 3


def test_nan_and_inf_reports_behave_as_in_torch():
    values = [1.0, math.nan, 0.5, math.inf, -math.inf, 0.0, math.nan, 1.0, 1.0]
    for mode in ("min", "max"):
        options = {"mode": mode, "patience": 1, "factor": 0.5}
        assert policy_trace(values, 1.0, **options)[0] == torch_trace(values, 1.0, **options)[0]


def test_state_dict_captures_torch_counters_and_is_strict_json():
    values = [3.0, 2.0, 2.5, 2.6, 2.7]
    _, scheduler = torch_trace(values, 0.1, patience=5, cooldown=2)
    _, driver = policy_trace(values, 0.1, patience=5, cooldown=2)
    state = driver.runner.policy.state_dict()
    assert state["best"] == scheduler.best
    assert state["num_bad_epochs"] == scheduler.num_bad_epochs == 3
    assert state["cooldown_counter"] == scheduler.cooldown_counter
    assert state["last_epoch"] == scheduler.last_epoch == 5
    fresh = PlateauPolicy(metric="val_loss").state_dict()
    assert fresh["best"] == "inf"
    json.dumps(fresh, allow_nan=False)


def test_restore_mid_episode_continues_exactly_like_an_uninterrupted_run():
    rng = np.random.default_rng(7)
    restored_with_bad_epochs = 0
    for case in range(150):
        options = random_options(rng)
        options["patience"] = int(rng.integers(1, 6))
        values = random_sequence(rng, 60)
        split = int(rng.integers(1, 59))
        expected, _ = torch_trace(values, 0.5, **options)

        first = Driver(PlateauPolicy(metric="val_loss", **options), {"lr": 0.5})
        trace = first.feed_all("val_loss", values[:split])
        saved = json.loads(json.dumps(first.runner.policy.state_dict(), allow_nan=False))
        restored_with_bad_epochs += saved["num_bad_epochs"] > 0

        # A new process: a fresh policy, the run's current lr, the saved state.
        second = Driver(PlateauPolicy(metric="val_loss", **options), {"lr": first.run.params["lr"]})
        second.runner.policy.load_state_dict(saved)
        trace += second.feed_all("val_loss", values[split:])
        assert trace == expected, f"case {case}: split={split} options={options}"
    assert restored_with_bad_epochs > 30  # restores really happened mid-episode


def test_operator_change_is_respected():
    policy = PlateauPolicy(metric="val_loss", patience=0, factor=0.5)
    driver = Driver(policy, {"lr": 1.0})
    driver.feed({"val_loss": 1.0})
    driver.feed({"val_loss": 2.0})
    assert driver.run.params["lr"] == 0.5
    driver.run.apply({"lr": 0.08})  # an operator's change
    driver.feed({"val_loss": 2.0})
    assert driver.run.params["lr"] == 0.04


def test_spec_bounds_clip_the_new_value():
    spec = {"lr": ParamSpec(name="lr", kind="float", default=1.0, min=0.3, max=2.0)}
    driver = Driver(PlateauPolicy(metric="m", patience=0, factor=0.1), {"lr": 1.0}, specs=spec)
    driver.feed_all("m", [1.0, 2.0, 2.0])
    assert driver.run.params["lr"] == 0.3
    assert [o.kind for o in driver.outcomes] == ["apply"]


def test_ignores_other_metrics_and_other_ranks():
    driver = Driver(PlateauPolicy(metric="val_loss", patience=0), {"lr": 1.0})
    driver.feed({"val_loss": 1.0})
    driver.feed({"loss": 5.0})
    driver.feed({"val_loss": 9.0}, rank=1)
    assert driver.runner.policy.last_epoch == 1
    any_rank = Driver(PlateauPolicy(metric="val_loss", patience=0, rank="any"), {"lr": 1.0})
    any_rank.feed({"val_loss": 1.0})
    any_rank.feed({"val_loss": 9.0}, rank=1)
    assert any_rank.run.params["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"factor": 1.5}, "plateau: factor must be < 1.0 but got 1.5"),
        ({"factor": -0.1}, "plateau: factor must be >= 0.0 but got -0.1"),
        ({"patience": -1}, "plateau: patience must be >= 0 but got -1"),
        ({"patience": 1.5}, "plateau: patience must be an integer but got 1.5"),
        ({"mode": "lowest"}, "plateau: mode must be one of 'min', 'max' but got 'lowest'"),
        ({"threshold_mode": "pct"}, "plateau: threshold_mode must be one of 'rel', 'abs'"),
        ({"metric": ""}, "plateau: metric must be a non-empty string but got ''"),
        ({"cooldown": True}, "plateau: cooldown must be an integer but got True"),
        ({"rank": -2}, "plateau: rank must be an integer >= 0 or 'any' but got -2"),
    ],
)
def test_options_are_validated(options, message):
    with pytest.raises(PolicyConfigError) as info:
        PlateauPolicy(**{"metric": "val_loss", **options})
    assert message in str(info.value)


def test_missing_param_is_an_error_of_the_policy():
    driver = Driver(PlateauPolicy(metric="m", patience=0, param="momentum"), {"lr": 1.0})
    driver.feed({"m": 1.0})
    outcome = driver.feed({"m": 2.0})
    assert [o.kind for o in outcome] == ["error"]
    assert "has no numeric param 'momentum'" in outcome[0].reason
    assert isinstance(driver.run, InMemoryRun)
