"""One connected trainer stream, and the writer that stores metric points in groups."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.batches import MetricColumns
from supervisor.storage import AckRecord, Database, Store
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb

log = logging.getLogger("supervisor")

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
"""A commit of metric points that failed is tried again after 0.5 s, then twice as long each time up to this."""


@dataclass(eq=False)
class TrainerStream:
    """A trainer's open Connect call: what it has sent, and its outgoing queue."""

    run: str
    rank: int
    session_id: str
    session_key: int
    last_seq: int
    peer: str
    outbox: asyncio.Queue[pb.ConnectResponse | None] = field(default_factory=asyncio.Queue)
    stored_seq: int = 0
    lazy_acks: bool = False
    """The trainer's Hello said receipts may come late, together (see ``Receipts``)."""
    acked_seq: int = 0
    acked_at: float = 0.0
    wanted_seq: int = 0
    """The trainer waits for the receipt of every point up to this seq (its batch said ack_now)."""
    ended: bool = False
    """The call is over: a commit that lands later owes it no receipt."""

    def send(self, message: pb.ConnectResponse) -> None:
        self.outbox.put_nowait(message)

    def acknowledge(self, now: float) -> None:
        """Tell the trainer what is stored, if it has not heard it yet."""
        if self.stored_seq > self.acked_seq:
            self.acked_seq, self.acked_at = self.stored_seq, now
            self.send(pb.ConnectResponse(metrics_ack=pb.MetricsAck(seq=self.stored_seq)))

    def close(self) -> None:
        self.outbox.put_nowait(None)


class Receipts:
    """When to tell a trainer that its points are stored.

    At once when it waits for it (a batch said ``ack_now``), and always for a
    trainer whose Hello did not say ``lazy_acks``; otherwise at most every
    ``delay`` seconds, one MetricsAck for every batch stored meanwhile. A
    trainer that sends a batch a second then gets a receipt every other second,
    and a supervisor with a thousand of them writes half the messages, while no
    point waits longer to be stored and the trainer's buffer holds them until
    the receipt (``delay`` is also how late a receipt may be).
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._late: set[TrainerStream] = set()

    def stored(self, stream: TrainerStream, now: float) -> None:
        """``stream.stored_seq`` moved: acknowledge now, or within ``delay``."""
        if stream.ended:
            return
        if not stream.lazy_acks or stream.wanted_seq > stream.acked_seq or now - stream.acked_at >= self.delay:
            stream.acknowledge(now)
            self._late.discard(stream)
        else:
            self._late.add(stream)

    def now(self, stream: TrainerStream) -> None:
        """Send whatever receipt ``stream`` has not had yet (its trainer waits, or the stream ends)."""
        stream.acknowledge(time.monotonic())
        self._late.discard(stream)

    def forget(self, stream: TrainerStream) -> None:
        """The stream ended: no receipt for it now or later (a commit in flight may still land)."""
        stream.ended = True
        self._late.discard(stream)

    async def run(self) -> None:
        """Send the receipts that waited ``delay``."""
        tick = min(max(self.delay / 4, 0.05), 0.5)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            due = [stream for stream in self._late if now - stream.acked_at >= self.delay]
            for stream in due:
                self._late.discard(stream)
                stream.acknowledge(now)


@dataclass
class IngestItem:
    run_id: int
    run: str
    stream: TrainerStream
    dropped_total: int
    columns: MetricColumns


class IngestWriter:
    """Group commit: batches that arrive while a commit runs go into the next one.

    One transaction per round keeps SQLite's cost per point low under load and
    adds no delay when idle. Policy state and trainers' acknowledgements ride
    the same commits: none of them needs a commit of its own (none is written
    ``synchronous=FULL``), and at a wave of policy decisions the writer's
    jobs were half acknowledgements. Each stream is acknowledged only after the commit
    that stored its points. When more than ``max_pending`` values wait, readers
    pause (``submit`` awaits), so gRPC flow control pushes back on trainers,
    whose bounded buffers then drop their oldest points instead of the
    supervisor's memory growing.
    """

    def __init__(
        self,
        db: Database,
        on_stored: Callable[[list[IngestItem]], Awaitable[None] | None],
        *,
        max_pending: int = 50_000,
    ) -> None:
        self._db = db
        self._on_stored = on_stored
        self._pending: list[IngestItem] = []
        self._pending_values = 0
        self._max_pending = max_pending
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._states: dict[tuple[str, str], str] = {}  # (policy, scope) -> state as JSON text
        self._acks: list[tuple[AckRecord, asyncio.Future[list[tuple[int, float]]]]] = []
        self._uncommitted: Counter[str] = Counter()  # per trainer session id: batches submitted, not committed
        self._committed = asyncio.Condition()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def submit(self, item: IngestItem) -> None:
        self._pending.append(item)
        self._uncommitted[item.stream.session_id] += 1
        self._pending_values += len(item.columns.values)
        self._wakeup.set()
        if self._pending_values > self._max_pending:
            self._room.clear()
            await self._room.wait()

    async def settled(self, session_id: str) -> None:
        """Return once no batch of trainer session ``session_id`` waits to be stored.

        A trainer that reconnects at once (after a cancelled call, say) can
        find its previous stream's last batches still queued here; its Welcome
        must count them as stored, or it would count points it trimmed in
        flight as dropped, and resend the rest.
        """
        if not self._uncommitted[session_id]:
            return
        async with self._committed:
            await self._committed.wait_for(lambda: not self._uncommitted[session_id])

    def save_states(self, items: list[tuple[str, str, str]]) -> None:
        """Persist (policy, scope, state as JSON text) with the next commit; a later save of a key replaces it."""
        for policy, scope, state in items:
            self._states[(policy, scope)] = state
        self._wakeup.set()

    def record_acks(self, ack: AckRecord) -> asyncio.Future[list[tuple[int, float]]]:
        """Store ``ack`` with the next commit; the future gets the (version, recorded time) it newly recorded."""
        future: asyncio.Future[list[tuple[int, float]]] = asyncio.get_running_loop().create_future()
        self._acks.append((ack, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        retry = RETRY_FIRST_SECONDS
        failures = 0
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            items, self._pending, self._pending_values = self._pending, [], 0
            states, self._states = self._states, {}
            acks, self._acks = self._acks, []
            self._room.set()
            if not items and not states and not acks:
                continue
            try:
                newly = await self._db.write(
                    Store.insert_metrics,
                    [(i.run_id, i.stream.rank, i.stream.session_key, i.dropped_total, i.columns) for i in items],
                    [(policy, scope, state) for (policy, scope), state in states.items()],
                    [ack for ack, _ in acks],
                )
            except asyncio.CancelledError:
                for _, future in acks:
                    future.cancel()
                raise
            except Exception as exc:  # the whole commit failed (disk full, I/O error): keep it all, try again
                self._put_back(items, states, acks)
                failures += 1
                if failures == 1:
                    log.error(
                        "cannot store metric points (%s); keeping them and trying again, up to every %gs; "
                        "trainers keep unstored points in their buffers meanwhile",
                        exc,
                        RETRY_MAX_SECONDS,
                    )
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)
                self._wakeup.set()
                continue
            if failures:
                log.warning("metric points are stored again, after %d failed attempt(s)", failures)
                failures, retry = 0, RETRY_FIRST_SECONDS
            for (_, future), versions in zip(acks, newly, strict=True):
                if not future.done():
                    future.set_result(versions)
            self._uncommitted.subtract(i.stream.session_id for i in items)
            self._uncommitted += Counter()  # drops the sessions at zero: the counter stays as small as the queue
            async with self._committed:
                self._committed.notify_all()
            if items:
                result: Any = self._on_stored(items)
                if asyncio.iscoroutine(result):
                    await result

    def _put_back(
        self,
        items: list[IngestItem],
        states: dict[tuple[str, str], str],
        acks: list[tuple[AckRecord, asyncio.Future[list[tuple[int, float]]]]],
    ) -> None:
        """A failed round's writes go back in front of what came meanwhile (a newer policy state wins)."""
        self._pending[:0] = items
        self._pending_values += sum(len(i.columns.values) for i in items)
        for key, state in states.items():
            self._states.setdefault(key, state)
        self._acks[:0] = acks
        if self._pending_values > self._max_pending:
            self._room.clear()  # readers wait, as when trainers send faster than the disk takes it

    async def stop(self, timeout: float = 10.0) -> None:
        """Store what is already queued (for at most ``timeout`` seconds if storing fails), then stop."""
        deadline = time.monotonic() + timeout
        while self._pending or self._states or self._acks:
            if time.monotonic() > deadline:
                log.error(
                    "stopping with %d batch(es) of metric points unstored: storing failed for %gs",
                    len(self._pending),
                    timeout,
                )
                break
            self._wakeup.set()
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
