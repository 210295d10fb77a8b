"""Metric batches as the supervisor handles them: columns, whichever form the trainer sent.

Columns keep ingestion cheap at scale: de-duplication is a slice, storage rows
are built in the writer thread, and per-point dicts are only made for policies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from trainer_sdk.protocol.v1 import supervisor_pb2 as pb


@dataclass
class MetricColumns:
    seqs: list[int]
    steps: list[int]
    times: list[float]
    counts: list[int]
    names: list[str]  # one per value
    values: list[float]

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def last_seq(self) -> int:
        return self.seqs[-1]

    def after(self, seq: int) -> MetricColumns:
        """The points with a seq above ``seq`` (a resend after a reconnect overlaps what is stored)."""
        keep = next((i for i, s in enumerate(self.seqs) if s > seq), len(self.seqs))
        if keep == 0:
            return self
        offset = sum(self.counts[:keep])
        return MetricColumns(
            self.seqs[keep:],
            self.steps[keep:],
            self.times[keep:],
            self.counts[keep:],
            self.names[offset:],
            self.values[offset:],
        )

    def points(self) -> Iterator[tuple[int, int, float, dict[str, float]]]:
        """(seq, step, time, {name: value}) per point, for policies."""
        names, values = iter(self.names), iter(self.values)
        for seq, step, when, count in zip(self.seqs, self.steps, self.times, self.counts, strict=True):
            yield (
                seq,
                step,
                when,
                dict(zip(itertools.islice(names, count), itertools.islice(values, count), strict=True)),
            )

    def rows(self, run_id: int, rank: int) -> Iterator[tuple[Any, ...]]:
        """Storage rows (run_id, rank, seq, step, time, name, value); NaN becomes NULL (SQLite's only NaN)."""
        names, values = iter(self.names), iter(self.values)
        for seq, step, when, count in zip(self.seqs, self.steps, self.times, self.counts, strict=True):
            for _ in range(count):
                value = next(values)
                yield run_id, rank, seq, step, when, next(names), None if value != value else value


def from_wire(batch: pb.MetricBatch) -> MetricColumns:
    """Normalise either wire form; raises ValueError saying what is inconsistent."""
    if batch.points:
        if batch.steps or batch.values:
            raise ValueError("a metric batch must use either points or columns, not both")
        seqs, steps, times, counts, names, values = [], [], [], [], [], []
        for point in batch.points:
            seqs.append(point.seq)
            steps.append(point.step)
            times.append(point.time)
            counts.append(len(point.values))
            for name, value in point.values.items():
                names.append(name)
                values.append(value)
        columns = MetricColumns(seqs, steps, times, counts, names, values)
    else:
        n = len(batch.steps)
        if len(batch.times) != n or len(batch.value_counts) != n:
            raise ValueError(
                f"metric columns disagree: {n} steps, {len(batch.times)} times, {len(batch.value_counts)} value counts"
            )
        counts = list(batch.value_counts)
        if sum(counts) != len(batch.values) or len(batch.name_indexes) != len(batch.values):
            raise ValueError(
                f"metric columns disagree: value counts add up to {sum(counts)}, but there are "
                f"{len(batch.values)} values and {len(batch.name_indexes)} name indexes"
            )
        table = list(batch.names)
        try:
            names = [table[i] for i in batch.name_indexes]
        except IndexError:
            raise ValueError(f"a name index is outside the batch's {len(table)} names") from None
        if n and batch.first_seq == 0:
            raise ValueError("metric seq numbers start at 1: first_seq is 0")
        columns = MetricColumns(
            list(range(batch.first_seq, batch.first_seq + n)),
            list(batch.steps),
            list(batch.times),
            counts,
            names,
            list(batch.values),
        )
    for previous, current in itertools.pairwise(columns.seqs):
        if current <= previous:
            raise ValueError(f"metric seq must increase within a batch: {previous} then {current}")
    return columns
