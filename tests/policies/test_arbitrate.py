from __future__ import annotations

from policies import InMemoryRun, Outcome, arbitrate

from .helpers import kinds


def apply(policy, **changes):
    return Outcome(kind="apply", policy_id=policy, run="r1", step=7, changes=changes, reason=f"{policy} says")


def make_run(pinned=()):
    return InMemoryRun("r1", params={"lr": 0.1, "wd": 0.01, "dropout": 0.2}, pinned=pinned)


def test_first_policy_in_config_order_wins_the_param():
    result = arbitrate([apply("a", lr=0.05), apply("b", lr=0.2)], make_run())
    assert kinds(result) == ["apply", "refused"]
    assert result[0].changes == {"lr": 0.05} and result[0].old == {"lr": 0.1}
    assert result[1].policy_id == "b"
    assert result[1].reason == "conflicts with policy a in the same step (policy's reason: b says)"


def test_partial_conflict_keeps_the_other_params():
    result = arbitrate([apply("a", lr=0.05), apply("b", lr=0.2, wd=0.0)], make_run())
    assert kinds(result) == ["apply", "apply", "refused"]
    assert result[1].policy_id == "b" and result[1].changes == {"wd": 0.0}
    assert result[1].old == {"wd": 0.01}
    assert result[2].changes == {"lr": 0.2}


def test_pinned_params_are_refused_with_the_release_command():
    result = arbitrate([apply("a", lr=0.05, dropout=0.3)], make_run(pinned=["lr"]))
    assert kinds(result) == ["apply", "refused"]
    assert result[0].changes == {"dropout": 0.3}
    assert result[1].changes == {"lr": 0.05}
    assert result[1].reason == (
        "pinned by an operator; `supervisor release r1 lr` to let policies act (policy's reason: a says)"
    )


def test_a_refused_pinned_change_does_not_claim_the_param():
    # a's lr change is refused (pinned) ... the pin refuses b's too, not a conflict.
    result = arbitrate([apply("a", lr=0.05), apply("b", lr=0.2)], make_run(pinned=["lr"]))
    assert [o.reason.split(";")[0] for o in result] == ["pinned by an operator"] * 2


def test_same_policy_twice_in_a_round_and_non_apply_outcomes_pass_through():
    trigger = Outcome(kind="trigger", policy_id="a", run="r1", step=7, trigger="stop", reason="s")
    proposal = Outcome(kind="proposal", policy_id="c", run="r1", step=7, changes={"lr": 1.0}, reason="p")
    error = Outcome(kind="error", policy_id="d", run="r1", step=7, reason="boom")
    result = arbitrate([apply("a", lr=0.05), trigger, apply("a", lr=0.01), proposal, error], make_run())
    assert kinds(result) == ["apply", "trigger", "refused", "proposal", "error"]
    assert result[2].reason.startswith("conflicts with policy a in the same step")
    assert result[3] is proposal and result[4] is error
