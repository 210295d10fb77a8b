"""Metric batches as policies see them: points, histories and latest values cut out of the columns.

The fast paths (every point carrying the same names in the same order) must
give exactly what walking the columns value by value gives, and so must a
policy's history ring filled in bulk.
"""

from __future__ import annotations

import random

import pytest

from supervisor.batches import MetricColumns
from supervisor.policy_host import _Series


def _columns(points: list[tuple[int, dict[str, float]]], first_seq: int = 1) -> MetricColumns:
    names: dict[str, int] = {}
    indexes, values = [], []
    for _, metrics in points:
        for name, value in metrics.items():
            indexes.append(names.setdefault(name, len(names)))
            values.append(value)
    return MetricColumns(
        seqs=list(range(first_seq, first_seq + len(points))),
        steps=[step for step, _ in points],
        times=[1000.0 + step for step, _ in points],
        counts=[len(metrics) for _, metrics in points],
        names=list(names),
        name_indexes=indexes,
        values=values,
    )


UNIFORM = [(s, {"loss": 1.0 / (s + 1), "acc": s / 10, "lr": 0.1}) for s in range(7)]
MIXED = [
    (0, {"loss": 1.0, "acc": 0.1}),
    (1, {"loss": 0.9}),
    (2, {"acc": 0.3, "loss": 0.8}),  # same names, other order
    (3, {}),
    (4, {"val_loss": 0.7, "loss": 0.6}),
]


@pytest.mark.parametrize("points", [UNIFORM, MIXED], ids=["uniform", "mixed"])
def test_points_latest_and_series_match_the_values_as_reported(points: list[tuple[int, dict[str, float]]]) -> None:
    columns = _columns(points)
    assert bool(columns.uniform_keys()) == (points is UNIFORM)
    for start in range(len(points) + 1):
        got = [(i, step, values) for i, step, _, values in columns.points(start)]
        assert got == [(i, step, metrics) for i, (step, metrics) in enumerate(points) if i >= start]
    latest: dict[str, float] = {}
    for _, metrics in points:
        latest.update(metrics)
    assert columns.latest() == latest
    for start in range(len(points)):
        for stop in range(start, len(points) + 1):
            expected: dict[str, list[tuple[int, float]]] = {}
            for step, metrics in points[start:stop]:
                for name, value in metrics.items():
                    expected.setdefault(name, []).append((step, value))
            got_series = {name: list(zip(steps, values, strict=True)) for name, steps, values in
                          columns.series(start, stop) if len(steps)}
            assert got_series == expected, (start, stop)


def test_a_batch_whose_first_point_repeats_a_name_is_not_taken_as_uniform() -> None:
    columns = MetricColumns([1, 2], [0, 1], [0.0, 1.0], [2, 2], ["a", "b"], [0, 0, 1, 1], [1.0, 2.0, 3.0, 4.0])
    assert columns.uniform_keys() == ()
    assert [values for *_, values in columns.points()] == [{"a": 2.0}, {"b": 4.0}]


@pytest.mark.parametrize("capacity", [1, 5, 64])
def test_history_ring_filled_in_bulk_equals_one_pair_at_a_time(capacity: int) -> None:
    rng = random.Random(capacity)
    bulk, single = _Series(capacity), _Series(capacity)
    step = 0
    for _ in range(200):
        n = rng.choice([0, 1, 2, 3, capacity - 1, capacity, capacity + 3])
        steps = list(range(step, step + max(n, 0)))
        values = [rng.random() for _ in steps]
        step += len(steps)
        bulk.extend(steps, values)
        for s, v in zip(steps, values, strict=True):
            single.append(s, v)
        assert bulk.last(None) == single.last(None)
        assert bulk.last(3) == single.last(3)
