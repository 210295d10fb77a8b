"""Metric batches as the supervisor handles them: columns, whichever form the trainer sent.

Columns keep ingestion cheap at scale: names stay a small table plus an index
per value (as on the wire), de-duplication is a slice, a batch is stored as one
row of packed arrays, and per-point dicts are only built for policies.
"""

from __future__ import annotations

import itertools
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from trainer_sdk.protocol.v1 import supervisor_pb2 as pb


@dataclass
class MetricColumns:
    seqs: list[int]
    steps: list[int]
    times: list[float]
    counts: list[int]  # values per point
    names: list[str]  # the batch's distinct metric names
    name_indexes: list[int]  # per value, into ``names``
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
            self.names,
            self.name_indexes[offset:],
            self.values[offset:],
        )

    def latest(self) -> dict[str, float]:
        """Each metric's last value in the batch."""
        return dict(zip(map(self.names.__getitem__, self.name_indexes), self.values, strict=True))

    def points(self) -> Iterator[tuple[int, int, float, dict[str, float]]]:
        """(seq, step, time, {name: value}) per point, for policies."""
        names = map(self.names.__getitem__, self.name_indexes)
        values = iter(self.values)
        for seq, step, when, count in zip(self.seqs, self.steps, self.times, self.counts, strict=True):
            point = zip(itertools.islice(names, count), itertools.islice(values, count), strict=True)
            yield seq, step, when, dict(point)

    # -- storage: one row of packed arrays per batch ------------------------------------------

    def encode(self) -> tuple[bytes | None, bytes, bytes, bytes, str, bytes, bytes]:
        """(seqs or None when consecutive, steps, times, counts, names JSON, name indexes, values)."""
        consecutive = self.seqs[-1] - self.seqs[0] + 1 == len(self.seqs) if self.seqs else True
        return (
            None if consecutive else array("q", self.seqs).tobytes(),
            array("q", self.steps).tobytes(),
            array("d", self.times).tobytes(),
            array("I", self.counts).tobytes(),
            json.dumps(self.names),
            array("I", self.name_indexes).tobytes(),
            array("d", self.values).tobytes(),
        )

    @classmethod
    def decode(
        cls,
        first_seq: int,
        seqs: bytes | None,
        steps: bytes,
        times: bytes,
        counts: bytes,
        names: str,
        name_indexes: bytes,
        values: bytes,
    ) -> MetricColumns:
        step_list = _unpack("q", steps)
        return cls(
            _unpack("q", seqs) if seqs is not None else list(range(first_seq, first_seq + len(step_list))),
            step_list,
            _unpack("d", times),
            _unpack("I", counts),
            json.loads(names),
            _unpack("I", name_indexes),
            _unpack("d", values),
        )


def _unpack(typecode: str, blob: bytes) -> list:  # type: ignore[type-arg]
    packed = array(typecode)
    packed.frombytes(blob)
    return packed.tolist()


def from_wire(batch: pb.MetricBatch) -> MetricColumns:
    """Normalise either wire form; raises ValueError saying what is inconsistent."""
    if batch.points:
        return _from_points(batch)
    n = len(batch.steps)
    if len(batch.times) != n or len(batch.value_counts) != n:
        raise ValueError(
            f"metric columns disagree: {n} steps, {len(batch.times)} times, {len(batch.value_counts)} value counts"
        )
    counts = list(batch.value_counts)
    values = list(batch.values)
    indexes = list(batch.name_indexes)
    if sum(counts) != len(values) or len(indexes) != len(values):
        raise ValueError(
            f"metric columns disagree: value counts add up to {sum(counts)}, but there are "
            f"{len(values)} values and {len(indexes)} name indexes"
        )
    names = list(batch.names)
    if indexes and max(indexes) >= len(names):
        raise ValueError(f"a name index is outside the batch's {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError("a metric batch's names must be distinct")
    if n and batch.first_seq == 0:
        raise ValueError("metric seq numbers start at 1: first_seq is 0")
    first = batch.first_seq
    return MetricColumns(
        list(range(first, first + n)), list(batch.steps), list(batch.times), counts, names, indexes, values
    )


def _from_points(batch: pb.MetricBatch) -> MetricColumns:
    if batch.steps or batch.values:
        raise ValueError("a metric batch must use either points or columns, not both")
    seqs, steps, times, counts, indexes, values = [], [], [], [], [], []
    table: dict[str, int] = {}
    for point in batch.points:
        seqs.append(point.seq)
        steps.append(point.step)
        times.append(point.time)
        counts.append(len(point.values))
        for name, value in point.values.items():
            indexes.append(table.setdefault(name, len(table)))
            values.append(value)
    for previous, current in itertools.pairwise(seqs):
        if current <= previous:
            raise ValueError(f"metric seq must increase within a batch: {previous} then {current}")
    return MetricColumns(seqs, steps, times, counts, list(table), indexes, values)
