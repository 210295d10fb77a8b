from __future__ import annotations

import json

import pytest

from policies import (
    FireTrigger,
    InMemoryRun,
    MetricPoint,
    Policy,
    PolicyBinding,
    PolicyEngine,
    PolicyError,
    SetParams,
    arbitrate,
    parse_config,
)

from .helpers import kinds


class Crashing(Policy):
    def observe(self, point, run):
        raise RuntimeError(f"crash at {point.step}")


class Recorder(Policy):
    """Population scope: one instance sees every run; remembers what it saw."""

    scope = "population"

    def __init__(self):
        self.seen = []
        self.ended = []

    def on_run_start(self, run):
        self.seen.append(("start", run.run))
        return [SetParams(changes={"wd": 0.0}, reason=f"hello {run.run}")]

    def observe(self, point, run):
        self.seen.append((point.run, point.step))
        return ()

    def on_run_end(self, run, *, outcome, now):
        self.ended.append((run.run, outcome, now))
        return [FireTrigger(name="checkpoint", reason="bye")]

    def state_dict(self):
        return {"seen": [list(s) for s in self.seen]}

    def load_state_dict(self, state):
        self.seen = [tuple(s) for s in state["seen"]]


def config(*entries):
    return parse_config({"policy": list(entries)}, source="test.toml")


def feed(engine, run, step, **metrics):
    p = MetricPoint(run=run.run, step=step, time=float(step), metrics=metrics)
    run.record(p)
    outcomes = engine.observe(p, run)
    for outcome in outcomes:
        if outcome.kind == "apply":
            run.apply(outcome.changes)
    return outcomes


def test_a_crashing_policy_is_disabled_while_another_keeps_acting():
    engine = PolicyEngine(
        config(
            {"id": "crash", "type": "tests.policies.test_engine:Crashing", "max_failures": 2},
            {"id": "plateau", "type": "plateau", "metric": "loss", "patience": 0, "factor": 0.5},
        )
    )
    run = InMemoryRun("r1", params={"lr": 1.0})
    engine.attach(run)
    assert [(o.policy_id, o.kind) for o in feed(engine, run, 1, loss=1.0)] == [("crash", "error")]
    second = feed(engine, run, 2, loss=2.0)
    assert [(o.policy_id, o.kind) for o in second] == [("crash", "error"), ("plateau", "apply")]
    assert "policy disabled" in second[0].reason
    third = feed(engine, run, 3, loss=2.0)
    assert [(o.policy_id, o.kind) for o in third] == [("plateau", "apply")]
    assert run.params["lr"] == 0.25
    crash, plateau = engine.runners_for("r1")
    assert crash.disabled and not plateau.disabled


def test_conflicts_between_policies_follow_config_order():
    engine = PolicyEngine(
        config(
            {"id": "sched", "type": "schedule", "kind": "step", "base": 1.0, "step_size": 1, "gamma": 0.9},
            {"id": "plateau", "type": "plateau", "metric": "loss", "patience": 0, "factor": 0.5},
        )
    )
    run = InMemoryRun("r1", params={"lr": 1.0})
    engine.attach(run)
    feed(engine, run, 1, loss=1.0)
    outcomes = feed(engine, run, 2, loss=2.0)
    assert [(o.policy_id, o.kind) for o in outcomes] == [("sched", "apply"), ("plateau", "refused")]
    assert outcomes[1].reason.startswith("conflicts with policy sched in the same step")
    assert run.params["lr"] == pytest.approx(0.81)


def test_population_scope_shares_one_instance_and_sees_run_ends():
    engine = PolicyEngine(config({"id": "rec", "type": "tests.policies.test_engine:Recorder", "runs": "a*"}))
    a1 = InMemoryRun("a1", params={"wd": 0.1})
    a2 = InMemoryRun("a2", params={"wd": 0.1})
    b1 = InMemoryRun("b1", params={"wd": 0.1})
    assert kinds(engine.attach(a1)) == ["apply"]
    engine.attach(a2)
    assert engine.attach(b1) == []
    feed(engine, a1, 1, loss=1.0)
    feed(engine, a2, 1, loss=1.0)
    feed(engine, b1, 1, loss=1.0)
    (runner,) = engine.runners_for("a1")
    assert runner is engine.runners_for("a2")[0]
    assert runner.policy.seen == [("start", "a1"), ("start", "a2"), ("a1", 1), ("a2", 1)]
    end = engine.finish(a1, "failed", now=123.0)
    assert kinds(end) == ["trigger"]
    assert runner.policy.ended == [("a1", "failed", 123.0)]
    assert not engine.is_attached("a1") and engine.runners_for("a2") == [runner]


def test_observe_needs_attach_and_the_matching_run():
    engine = PolicyEngine(config({"type": "plateau", "metric": "loss"}))
    run = InMemoryRun("r1", params={"lr": 1.0})
    with pytest.raises(PolicyError, match="run 'r1' is not attached: call attach\\(\\) first"):
        engine.observe(MetricPoint(run="r1", step=1, time=1.0), run)
    with pytest.raises(ValueError, match="point of run 'r2'"):
        engine.observe(MetricPoint(run="r2", step=1, time=1.0), run)


def test_restart_resumes_counters_exactly():
    bindings = config(
        {"id": "crash", "type": "tests.policies.test_engine:Crashing", "max_failures": 4},
        {"id": "plateau", "type": "plateau", "metric": "loss", "patience": 3, "factor": 0.5},
        {"id": "rec", "type": "tests.policies.test_engine:Recorder"},
    )
    engine = PolicyEngine(bindings)
    run = InMemoryRun("r1", params={"lr": 1.0, "wd": 0.1})
    engine.attach(run)
    for step, loss in enumerate([1.0, 2.0, 2.0], start=1):
        feed(engine, run, step, loss=loss)
    state = json.loads(json.dumps(engine.state_dict(), allow_nan=False))

    restarted = PolicyEngine(bindings)
    restarted.load_state_dict(state)
    assert restarted.attach(run) == []  # already attached: on_run_start is not called again
    crash, plateau, rec = restarted.runners_for("r1")
    assert crash.failures == 3 and plateau.policy.num_bad_epochs == 2
    assert rec.policy.seen[0] == ("start", "r1")
    outcomes = feed(restarted, run, 4, loss=2.0)  # 3rd bad report, 4th failure
    assert [(o.policy_id, o.kind) for o in outcomes] == [("crash", "error")]
    assert crash.disabled
    outcomes = feed(restarted, run, 5, loss=2.0)  # 4th bad report > patience 3
    assert [(o.policy_id, o.kind) for o in outcomes] == [("plateau", "apply")]


def test_restart_with_an_edited_config():
    old = config(
        {"id": "gone", "type": "plateau", "metric": "loss"},
        {"id": "kept", "type": "plateau", "metric": "loss", "patience": 5},
    )
    engine = PolicyEngine(old)
    run = InMemoryRun("r1", params={"lr": 1.0})
    engine.attach(run)
    feed(engine, run, 1, loss=1.0)
    feed(engine, run, 2, loss=1.0)
    new = config(
        {"id": "kept", "type": "plateau", "metric": "loss", "patience": 1},  # options edited
        {"id": "added", "type": "schedule", "kind": "warmup", "base": 1.0, "warmup_steps": 10},
    )
    restarted = PolicyEngine(new)
    restarted.load_state_dict(engine.state_dict())
    assert [r.policy_id for r in restarted.runners_for("r1")] == ["kept"]
    outcomes = restarted.attach(run)  # only the new binding starts
    assert [(o.policy_id, o.kind) for o in outcomes] == [("added", "apply")]
    kept = restarted.runners_for("r1")[0]
    assert kept.policy.patience == 1 and kept.policy.num_bad_epochs == 1


def test_runners_for_plus_arbitrate_equals_observe():
    # The live host's path: evaluate each runner itself (in a worker, with a timeout), then
    # arbitrate. It must give what engine.observe gives.
    entries = (
        {"id": "a", "type": "plateau", "metric": "loss", "patience": 0, "factor": 0.5},
        {"id": "b", "type": "guard", "metric": "loss", "spike_factor": 0, "factor": 0.1},
    )
    results = []
    for manual in (False, True):
        engine = PolicyEngine(config(*entries))
        run = InMemoryRun("r1", params={"lr": 1.0})
        engine.attach(run)
        trace = []
        for step, loss in enumerate([1.0, 2.0, float("nan"), 3.0], start=1):
            p = MetricPoint(run="r1", step=step, time=float(step), metrics={"loss": loss})
            run.record(p)
            if manual:
                raw = [o for runner in engine.runners_for("r1") for o in runner.observe(p, run)]
                outcomes = arbitrate(raw, run)
            else:
                outcomes = engine.observe(p, run)
            for o in outcomes:
                if o.kind == "apply":
                    run.apply(o.changes)
            trace.append([o.to_dict() for o in outcomes])
        results.append(trace)
    assert results[0] == results[1]
    assert any(o["kind"] == "refused" for step in results[0] for o in step)


def test_duplicate_binding_ids_are_rejected():
    (binding,) = config({"id": "x", "type": "plateau", "metric": "loss"})
    with pytest.raises(PolicyError, match="duplicate policy id 'x'"):
        PolicyEngine([binding, binding])


def test_a_binding_that_cannot_be_created_gives_an_error_outcome():
    class Fragile(Policy):
        def __init__(self):
            raise RuntimeError("needs a GPU")

        def observe(self, point, run):
            return ()

    engine = PolicyEngine([PolicyBinding(id="fragile", policy_class=Fragile)])
    outcomes = engine.attach(InMemoryRun("r1"))
    assert kinds(outcomes) == ["error"]
    assert outcomes[0].reason == "cannot create policy: RuntimeError: needs a GPU"
    assert engine.runners_for("r1") == []
