"""One lane's evaluation of stored batches, as the live policy host runs it in a worker thread.

A policy must see, at each point, exactly the history replay would give it:
every point evaluated so far and none after, with invalid points skipped; and
when a point yields a decision, evaluation stops there and the rest is handed
back to be evaluated after the decision is applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from policies import MetricPoint, Policy, PolicyRunner, RunView, SetParams
from supervisor.batches import MetricColumns
from supervisor.policy_host import LiveRunView, PolicyHost, _Progress
from supervisor.runs import RunState
from trainer_sdk import Float


class Probe(Policy):
    """Sets lr at the given steps; notes the steps of the loss history it sees at each point."""

    def __init__(self, decide_at: Sequence[int]) -> None:
        super().__init__()
        self.decide_at = set(decide_at)
        self.seen: list[tuple[int, list[int]]] = []

    def observe(self, point: MetricPoint, run: RunView) -> list[SetParams]:
        self.seen.append((point.step, [step for step, _ in run.history("loss")]))
        if point.step in self.decide_at:
            return [SetParams(changes={"lr": 0.5}, reason=f"probe at {point.step}")]
        return []


def _batch(steps: list[int], *, bad_time_at: int | None = None) -> MetricColumns:
    times = [1000.0 + s if s != bad_time_at else math.nan for s in steps]
    return MetricColumns(
        seqs=[s + 1 for s in steps],
        steps=steps,
        times=times,
        counts=[2] * len(steps),
        names=["loss", "acc"],
        name_indexes=[0, 1] * len(steps),
        values=[v for s in steps for v in (1.0 / (s + 1), s / 10)],
    )


def _lane() -> tuple[Probe, list[PolicyRunner], LiveRunView]:
    run = RunState(id=1, name="r", created=0.0, world_size=1, version=0, params={"lr": Float(0.1, min=0.0, max=1.0)},
                   values={"lr": 0.1})
    probe = Probe(decide_at=[3])
    return probe, [PolicyRunner(probe, policy_id="probe")], LiveRunView(run).refresh(run)


def test_a_decision_stops_the_lane_and_the_rest_is_evaluated_after_it() -> None:
    probe, runners, view = _lane()
    first, second = _batch([0, 1, 2, 3, 4], bad_time_at=2), _batch([5, 6])
    batches: list[Any] = [(0, first, 0), (0, second, 0)]

    rest, outcomes = PolicyHost._evaluate(runners, view, batches, _Progress())
    assert [o.changes for o in outcomes] == [{"lr": 0.5}] and outcomes[0].step == 3
    assert rest == [(0, first, 4), (0, second, 0)]
    # step 2 has no valid time: skipped, and not in the history either
    assert probe.seen == [(0, [0]), (1, [0, 1]), (3, [0, 1, 3])]
    assert [s for s, _ in view.history("loss")] == [0, 1, 3] and view.step == 3

    rest, outcomes = PolicyHost._evaluate(runners, view, rest, _Progress())
    assert (rest, outcomes) == ([], [])
    assert probe.seen[3:] == [(4, [0, 1, 3, 4]), (5, [0, 1, 3, 4, 5]), (6, [0, 1, 3, 4, 5, 6])]
    assert view.history("acc", last=2) == [(5, 0.5), (6, 0.6)]


def test_a_decision_at_the_last_point_of_a_batch_leaves_only_the_next_batches() -> None:
    probe, runners, view = _lane()
    first, second = _batch([2, 3]), _batch([4])
    rest, outcomes = PolicyHost._evaluate(runners, view, [(0, first, 0), (0, second, 0)], _Progress())
    assert outcomes and rest == [(0, second, 0)]


def test_a_lane_past_its_backlog_skips_the_oldest_points_and_counts_each() -> None:
    from collections import deque
    from types import SimpleNamespace

    from policies import PolicyEngine
    from supervisor.observability import SupervisorMetrics
    from supervisor.policy_host import MAX_QUEUED_POINTS

    metrics = SupervisorMetrics()
    host = PolicyHost(PolicyEngine([]), SimpleNamespace(metrics=metrics))
    big = _batch(list(range(MAX_QUEUED_POINTS - 10)))
    small = _batch([0] * 30)
    lane: deque[tuple[str, Any]] = deque([("attach", None), ("batch", (0, big, 0)), ("batch", (0, small, 0))])
    host._trim(lane)
    assert lane[0] == ("attach", None)  # other events stay
    assert lane[1] == ("batch", (0, big, 20))  # the 20 oldest points over the limit are skipped
    assert sum(len(p[1]) - p[2] for k, p in lane if k == "batch") == MAX_QUEUED_POINTS
    assert metrics._errors["policy_backlog"] == 20
