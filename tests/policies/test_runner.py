from __future__ import annotations

import json

import pytest

from policies import (
    FireTrigger,
    InMemoryRun,
    MetricPoint,
    ParamSpec,
    Policy,
    PolicyError,
    PolicyRunner,
    SetParams,
)

from .helpers import kinds, point


class Scripted(Policy):
    """Returns (or raises) whatever the test put in ``script`` for each call."""

    def __init__(self, *script):
        self.script = list(script)

    def observe(self, point, run):
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def make_run(**params):
    specs = {"lr": ParamSpec(name="lr", kind="float", default=0.1, min=1e-5, max=1.0)}
    return InMemoryRun("r1", params=params or {"lr": 0.1}, specs=specs)


def test_valid_decisions_become_apply_and_trigger():
    run = make_run()
    runner = PolicyRunner(
        Scripted([SetParams(changes={"lr": 0.05}, reason="r"), FireTrigger(name="checkpoint", reason="c")]),
        policy_id="p",
    )
    outcomes = runner.observe(point("r1", 3, loss=1.0), run)
    assert kinds(outcomes) == ["apply", "trigger"]
    assert outcomes[0].changes == {"lr": 0.05} and outcomes[0].old == {"lr": 0.1}
    assert outcomes[0].step == 3 and outcomes[0].policy_id == "p"
    assert outcomes[1].trigger == "checkpoint"


def test_invalid_decisions_are_refused_with_a_reason():
    run = make_run()
    runner = PolicyRunner(
        Scripted(
            [
                SetParams(changes={"lr": 5.0}, reason="too big"),
                SetParams(changes={"momentum": 0.9, "lr": 0.01}, reason="unknown"),
                SetParams(changes={"lr": "fast"}, reason="wrong type"),
                "not a decision",
            ]
        ),
        policy_id="p",
    )
    outcomes = runner.observe(point("r1", 1), run)
    assert kinds(outcomes) == ["refused"] * 4
    assert outcomes[0].reason == "lr must be <= 1.0 but got 5.0 (policy's reason: too big)"
    assert outcomes[1].reason.startswith("unknown param 'momentum'")
    assert outcomes[2].reason.startswith("lr must be a number but got 'fast'")
    assert outcomes[3].reason.startswith("not a decision: 'not a decision'")
    assert runner.failures == 0  # refusals are not failures


def test_none_and_bare_decisions_are_accepted():
    run = make_run()
    runner = PolicyRunner(Scripted(None, FireTrigger(name="stop", reason="done")), policy_id="p")
    assert runner.observe(point("r1", 1), run) == []
    assert kinds(runner.observe(point("r1", 2), run)) == ["trigger"]


def test_shadow_mode_turns_every_valid_decision_into_a_proposal():
    run = make_run()
    runner = PolicyRunner(
        Scripted(
            [
                SetParams(changes={"lr": 0.05}, reason="r"),
                FireTrigger(name="stop", reason="s"),
                SetParams(changes={"lr": 9.0}, reason="bad"),
            ]
        ),
        policy_id="p",
        mode="shadow",
    )
    outcomes = runner.observe(point("r1", 1), run)
    assert kinds(outcomes) == ["proposal", "proposal", "refused"]
    assert outcomes[0].changes == {"lr": 0.05}
    assert outcomes[1].trigger == "stop"


def test_failures_disable_after_max_failures_and_success_resets():
    run = make_run()
    policy = Scripted(ValueError("a"), [], ValueError("b"), ValueError("c"), KeyError("d"), [])
    runner = PolicyRunner(policy, policy_id="p", max_failures=3)
    first = runner.observe(point("r1", 1), run)
    assert kinds(first) == ["error"] and first[0].reason == "observe raised ValueError: a"
    assert runner.failures == 1
    runner.observe(point("r1", 2), run)
    assert runner.failures == 0
    runner.observe(point("r1", 3), run)
    runner.observe(point("r1", 4), run)
    last = runner.observe(point("r1", 5), run)
    assert runner.disabled
    assert last[0].reason == "observe raised KeyError: 'd' (3 consecutive failures: policy disabled)"
    assert runner.observe(point("r1", 6), run) == []
    assert policy.script == [[]]  # not called once disabled


def test_record_failure_discards_the_abandoned_calls_result():
    run = make_run()

    class Slow(Policy):
        def observe(self, point, run):
            # The host timed this call out while it ran.
            outcome = runner.record_failure("observe timed out after 2.0 s")
            assert (outcome.kind, outcome.run, outcome.step) == ("error", "r1", point.step)
            assert runner.busy
            return [SetParams(changes={"lr": 0.01}, reason="late")]

    runner = PolicyRunner(Slow(), policy_id="slow", max_failures=2)
    assert runner.observe(point("r1", 1), run) == []
    assert runner.failures == 1  # the late success did not reset the count
    assert not runner.busy
    runner.observe(point("r1", 2), run)
    assert runner.disabled
    assert runner.disabled_reason == "disabled after 2 consecutive failures: observe timed out after 2.0 s"


def test_state_dict_holds_failures_and_policy_state():
    class Counting(Policy):
        def __init__(self):
            self.n = 0

        def observe(self, point, run):
            self.n += 1
            raise RuntimeError("boom")

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    run = make_run()
    runner = PolicyRunner(Counting(), policy_id="c", max_failures=3)
    runner.observe(point("r1", 1), run)
    runner.observe(point("r1", 2), run)
    state = runner.state_dict()
    assert state == {"policy": {"n": 2}, "failures": 2, "disabled_reason": None}
    restored = PolicyRunner(Counting(), policy_id="c", max_failures=3)
    restored.load_state_dict(state)
    restored.observe(point("r1", 3), run)
    assert restored.disabled and restored.policy.n == 3


def test_state_json_is_the_state_dict_as_stored():
    class Stateful(Scripted):
        def state_dict(self):
            return {"seen": [1.5, "a"], "note": None}

    runner = PolicyRunner(Stateful(RuntimeError("boom")), policy_id="s", max_failures=3)
    runner.observe(point("r1", 1), make_run())
    assert json.loads(runner.state_json()) == runner.state_dict() == {
        "policy": {"seen": [1.5, "a"], "note": None}, "failures": 1, "disabled_reason": None}


def test_state_dict_must_be_strict_json():
    class Bad(Policy):
        def observe(self, point, run):
            return ()

        def state_dict(self):
            return {"best": float("inf")}

    with pytest.raises(PolicyError, match="policy 'b': state_dict\\(\\) did not return strict JSON"):
        PolicyRunner(Bad(), policy_id="b").state_dict()


def test_hook_errors_and_argument_checks():
    class StartFails(Policy):
        def observe(self, point, run):
            return ()

        def on_run_start(self, run):
            raise RuntimeError("no storage")

    run = make_run()
    runner = PolicyRunner(StartFails(), policy_id="s")
    assert runner.on_run_start(run)[0].reason == "on_run_start raised RuntimeError: no storage"
    with pytest.raises(ValueError, match="point of run 'r2'"):
        runner.observe(MetricPoint(run="r2", step=1, time=1.0), run)
    with pytest.raises(ValueError, match="max_failures must be an int >= 1 but got 0"):
        PolicyRunner(StartFails(), policy_id="s", max_failures=0)
    with pytest.raises(ValueError, match="mode must be 'act' or 'shadow' but got 'dry'"):
        PolicyRunner(StartFails(), policy_id="s", mode="dry")
