"""Metric batches as the supervisor handles them: columns, whichever form the trainer sent.

Columns keep ingestion cheap at scale: names stay a small table plus an index
per value (as on the wire), de-duplication is a slice, a batch is stored as one
row of packed arrays, and per-point dicts are only built for policies.
"""

from __future__ import annotations

import itertools
import json
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

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
    # Set on first use: the metric names of every point when all points carry the same
    # names in the same order (as the SDK sends them), else an empty tuple.
    _keys: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

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

    def uniform_keys(self) -> tuple[str, ...]:
        """The names every point carries, in order, if all points carry the same; else ``()``.

        A training loop reports the same metrics at every step, so this is the
        common case, and it lets points and histories be cut out of the value
        column by slicing instead of walking it value by value.
        """
        if self._keys is None:
            keys: tuple[str, ...] = ()
            counts, indexes = self.counts, self.name_indexes
            if counts and (k := counts[0]) and counts.count(k) == len(counts):
                first = indexes[:k]
                if len(set(first)) == k and indexes == first * len(counts):
                    keys = tuple(self.names[i] for i in first)
            self._keys = keys
        return self._keys

    def latest(self) -> dict[str, float]:
        """Each metric's last value in the batch."""
        if keys := self.uniform_keys():
            return dict(zip(keys, self.values[-len(keys) :], strict=True))
        return dict(zip(map(self.names.__getitem__, self.name_indexes), self.values, strict=True))

    def points(self, start: int = 0) -> Iterator[tuple[int, int, float, dict[str, float]]]:
        """(index, step, time, {name: value}) for each point from ``start``, for policies."""
        steps, times, values = self.steps, self.times, self.values
        if keys := self.uniform_keys():
            k = len(keys)
            for i in range(start, len(steps)):
                yield i, steps[i], times[i], dict(zip(keys, values[i * k : i * k + k], strict=True))
            return
        names = map(self.names.__getitem__, self.name_indexes)
        offset = sum(self.counts[:start])
        names = itertools.islice(names, offset, None)
        value_iter = iter(values[offset:])
        for i in range(start, len(steps)):
            count = self.counts[i]
            point = zip(itertools.islice(names, count), itertools.islice(value_iter, count), strict=True)
            yield i, steps[i], times[i], dict(point)

    def series(self, start: int, stop: int) -> Iterator[tuple[str, Sequence[int], Sequence[float]]]:
        """(name, steps, values) per metric over points ``start`` to ``stop``: a policy's history, in bulk."""
        if keys := self.uniform_keys():
            k = len(keys)
            steps = array("q", self.steps[start:stop])
            values = array("d", self.values[start * k : stop * k])
            for j, name in enumerate(keys):
                yield name, steps, values[j::k]
            return
        by_name: dict[str, tuple[list[int], list[float]]] = {}
        for _, step, _, values in itertools.islice(self.points(start), stop - start):
            for name, value in values.items():
                pair = by_name.get(name)
                if pair is None:
                    pair = by_name[name] = ([], [])
                pair[0].append(step)
                pair[1].append(value)
        for name, (steps_of, values_of) in by_name.items():
            yield name, steps_of, values_of

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
