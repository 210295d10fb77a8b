from __future__ import annotations

import math

import pytest

from policies import GuardPolicy, ParamSpec, PolicyConfigError

from .helpers import Driver, kinds


def steady(driver, n, value=2.0):
    for _ in range(n):
        driver.feed({"loss": value})


def test_non_finite_loss_halves_lr_and_rolls_back():
    driver = Driver(GuardPolicy(), {"lr": 0.1})
    steady(driver, 3)
    outcomes = driver.feed({"loss": math.nan})
    assert kinds(outcomes) == ["apply", "trigger"]
    assert outcomes[0].changes == {"lr": 0.05}
    assert outcomes[0].old == {"lr": 0.1}
    assert outcomes[1].trigger == "rollback"
    assert "loss is nan at step 4" in outcomes[1].reason
    assert driver.run.params["lr"] == 0.05


def test_spike_over_median_reacts_once_then_cools_down():
    driver = Driver(GuardPolicy(spike_factor=3.0, window=20, min_history=10, cooldown=5), {"lr": 1.0})
    steady(driver, 9)
    assert kinds(driver.feed({"loss": 100.0})) == []  # only 9 values: too early to judge
    steady(driver, 1)
    assert kinds(driver.feed({"loss": 6.5})) == ["apply", "trigger"]  # 6.5 > 3 * 2.0
    assert driver.run.params["lr"] == 0.5
    for _ in range(5):  # cooldown: the trainer is rolling back
        assert driver.feed({"loss": 50.0}) == []
    assert kinds(driver.feed({"loss": 50.0})) == ["apply", "trigger"]
    assert driver.run.params["lr"] == 0.25
    window = list(driver.runner.policy.values)
    assert 6.5 not in window and 50.0 not in window  # detected spikes never enter the window
    assert 100.0 in window  # (before min_history nothing is judged, so that one did)
    assert kinds(driver.feed({"loss": 5.9})) == []  # under 3x


def test_floor_min_value_and_spec_then_only_the_trigger():
    spec = {"lr": ParamSpec(name="lr", kind="float", default=0.1, min=0.04, max=1.0)}
    driver = Driver(GuardPolicy(cooldown=0, min_value=0.01), {"lr": 0.1}, specs=spec)
    assert driver.feed({"loss": math.inf})[0].changes == {"lr": 0.05}
    assert driver.feed({"loss": math.inf})[0].changes == {"lr": 0.04}  # spec min wins
    assert kinds(driver.feed({"loss": math.inf})) == ["trigger"]


def test_spike_detection_off_and_custom_trigger():
    driver = Driver(GuardPolicy(spike_factor=0, trigger="checkpoint"), {"lr": 0.1})
    steady(driver, 20)
    assert driver.feed({"loss": 1e9}) == []
    assert [o.trigger for o in driver.feed({"loss": -math.inf}) if o.kind == "trigger"] == ["checkpoint"]
    no_trigger = Driver(GuardPolicy(trigger=""), {"lr": 0.1})
    assert kinds(no_trigger.feed({"loss": math.nan})) == ["apply"]


def test_early_stopping_fires_stop_once():
    driver = Driver(GuardPolicy(stop_metric="val_loss", stop_patience=3, stop_min_delta=0.01), {"lr": 0.1})
    for value in [1.0, 0.9, 0.8]:
        assert driver.feed({"val_loss": value}) == []
    assert driver.feed({"val_loss": 0.795}) == []  # not better by more than 0.01
    assert driver.feed({"val_loss": math.nan}) == []  # non-finite never improves
    outcomes = driver.feed({"val_loss": 0.8})
    assert kinds(outcomes) == ["trigger"] and outcomes[0].trigger == "stop"
    assert "val_loss did not improve by more than 0.01 for 3 reports (best 0.8)" in outcomes[0].reason
    for _ in range(10):
        assert driver.feed({"val_loss": 5.0}) == []


def test_early_stopping_max_mode_improvement_resets():
    driver = Driver(GuardPolicy(stop_metric="acc", stop_mode="max", stop_patience=2), {"lr": 0.1})
    for value in [0.5, 0.5, 0.6, 0.6]:
        assert driver.feed({"acc": value}) == []
    assert kinds(driver.feed({"acc": 0.59})) == ["trigger"]


def test_state_round_trip_keeps_window_cooldown_and_stop():
    policy = GuardPolicy(stop_metric="val_loss", stop_patience=2, cooldown=3)
    driver = Driver(policy, {"lr": 0.1})
    steady(driver, 12)
    driver.feed({"loss": math.nan, "val_loss": 1.0})
    driver.feed({"val_loss": 1.0})
    state = policy.state_dict()
    restored = GuardPolicy(stop_metric="val_loss", stop_patience=2, cooldown=3)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    second = Driver(restored, {"lr": driver.run.params["lr"]})
    second.feed({"loss": math.nan})  # still in cooldown (2 left)
    assert second.outcomes == []
    assert kinds(second.feed({"val_loss": 1.0})) == ["trigger"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"factor": 1.0}, "guard: factor must be < 1.0 but got 1.0"),
        ({"spike_factor": 0.5}, "guard: spike_factor must be > 1 (or 0 to turn spike detection off)"),
        ({"window": 5, "min_history": 10}, "guard: min_history must be <= window (5) but got 10"),
        ({"stop_mode": "down"}, "guard: stop_mode must be one of 'min', 'max' but got 'down'"),
        ({"stop_patience": 0}, "guard: stop_patience must be >= 1 but got 0"),
    ],
)
def test_options_are_validated(options, message):
    with pytest.raises(PolicyConfigError) as info:
        GuardPolicy(**options)
    assert message in str(info.value)
