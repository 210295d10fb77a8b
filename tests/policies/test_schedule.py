from __future__ import annotations

import math

import pytest
import torch

from policies import ParamSpec, PolicyConfigError, SchedulePolicy

from .helpers import Driver, kinds


def run_schedule(policy, steps, lr=1.0, specs=None):
    driver = Driver(policy, {"lr": lr}, specs=specs)
    driver.start()
    trace = []
    for step in steps:
        driver.feed({"loss": 1.0}, step=step)
        trace.append(driver.run.params["lr"])
    return trace, driver


def test_step_kind_matches_torch_steplr():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.3)
    expected = []
    for _ in range(40):
        optimizer.step()
        scheduler.step()
        expected.append(optimizer.param_groups[0]["lr"])
    policy = SchedulePolicy(kind="step", base=0.5, step_size=7, gamma=0.3)
    trace, _ = run_schedule(policy, range(1, 41))
    assert trace == pytest.approx(expected, rel=1e-12)


def test_cosine_kind_matches_torch_closed_form():
    policy = SchedulePolicy(kind="cosine", base=0.1, total_steps=50, min_value=0.001)
    trace, _ = run_schedule(policy, range(1, 60))
    for step, value in zip(range(1, 60), trace, strict=True):
        t = min(step, 50)
        expected = 0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * t / 50)) / 2
        assert value == pytest.approx(expected, rel=1e-12)
    assert trace[-1] == 0.001


def test_warmup_cosine_starts_at_min_value_peaks_at_base_lands_at_min_value():
    policy = SchedulePolicy(kind="warmup_cosine", base=0.2, warmup_steps=10, total_steps=110)
    driver = Driver(policy, {"lr": 0.05})
    start = driver.start()
    assert kinds(start) == ["apply"] and start[0].changes == {"lr": 0.0}
    values = {}
    for step in range(1, 130):
        driver.feed({"loss": 1.0}, step=step)
        values[step] = driver.run.params["lr"]
    assert values[5] == pytest.approx(0.1)
    assert values[10] == 0.2
    assert values[60] == pytest.approx(0.1)
    assert values[110] == values[129] == 0.0


def test_every_and_min_change_limit_the_number_of_changes_but_land_exactly():
    dense = SchedulePolicy(kind="warmup", base=1.0, warmup_steps=100)
    _, driver = run_schedule(dense, range(0, 150))
    assert len(driver.outcomes) == 101  # run start (1.0 -> 0.0), then steps 1..100
    sparse = SchedulePolicy(kind="warmup", base=1.0, warmup_steps=100, every=10)
    _, driver = run_schedule(sparse, range(0, 150))
    steps = [o.step for o in driver.outcomes]
    assert all(b - a >= 10 for a, b in zip(steps[1:], steps[2:], strict=False))
    assert driver.run.params["lr"] == 1.0
    coarse = SchedulePolicy(kind="warmup", base=1.0, warmup_steps=100, min_change=0.2)
    _, driver = run_schedule(coarse, range(0, 150), lr=0.0)
    assert 5 <= len(driver.outcomes) <= 30
    assert driver.run.params["lr"] == 1.0  # the landing value is always sent


def test_spec_clip_and_int_params():
    spec = {"lr": ParamSpec(name="lr", kind="float", default=0.5, min=0.01, max=1.0)}
    trace, _ = run_schedule(SchedulePolicy(kind="warmup", base=0.5, warmup_steps=10), range(0, 3), specs=spec)
    assert trace[0] == 0.01  # 0.0 clipped into the spec
    batch = SchedulePolicy(kind="step", param="bs", base=32, step_size=10, gamma=2.0)
    driver = Driver(batch, {"bs": 32})
    for step in range(0, 31):
        driver.feed({"loss": 1.0}, step=step)
    assert driver.run.params["bs"] == 256


def test_restart_with_new_options_continues_from_the_current_step():
    first = SchedulePolicy(kind="step", base=1.0, step_size=10, gamma=0.5, every=5)
    trace, driver = run_schedule(first, range(0, 25))
    assert trace[-1] == 0.25
    second = SchedulePolicy(kind="step", base=1.0, step_size=100, gamma=0.5, every=5)
    second.load_state_dict(first.state_dict())
    assert second.last_sent_step == 20
    later = Driver(second, {"lr": 0.25})
    later.feed({"loss": 1.0}, step=24)
    assert later.run.params["lr"] == 0.25  # within `every` of the last change
    later.feed({"loss": 1.0}, step=25)
    assert later.run.params["lr"] == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "linear", "base": 1.0}, "schedule: kind must be one of 'warmup', 'step', 'cosine', 'warmup_cosine'"),
        ({"kind": "step", "base": 1.0}, "schedule: step_size must be set for kind 'step' but got None"),
        ({"kind": "cosine", "base": 1.0}, "schedule: total_steps must be set for kind 'cosine'"),
        ({"kind": "warmup", "base": 1.0}, "schedule: warmup_steps must be > 0 for kind 'warmup' but got 0"),
        (
            {"kind": "cosine", "base": 1.0, "total_steps": 10, "warmup_steps": 10},
            "schedule: total_steps must be > warmup_steps (10) but got 10",
        ),
        (
            {"kind": "cosine", "base": 1.0, "total_steps": 10, "gamma": 0.5},
            "schedule: gamma must be unset for kind 'cosine' (only 'step' uses it) but got 0.5",
        ),
        ({"kind": "step", "base": 1.0, "step_size": 5, "every": 0}, "schedule: every must be >= 1 but got 0"),
    ],
)
def test_options_are_validated(options, message):
    with pytest.raises(PolicyConfigError) as info:
        SchedulePolicy(**options)
    assert message in str(info.value)


def test_steps_before_zero_count_as_zero():
    from policies import InMemoryRun, SchedulePolicy

    policy = SchedulePolicy(kind="step", base=0.1, step_size=10)
    assert policy.value_at(-1) == policy.value_at(0) == 0.1
    decisions = policy.on_run_start(InMemoryRun("r", params={"lr": 0.05}, step=-1))
    assert [d.changes["lr"] for d in decisions] == [0.1]
