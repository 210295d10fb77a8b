"""The supervisor's behaviour, independent of gRPC: sessions, changes, acknowledgements, ingestion.

Every method runs on the server's event loop. The servicers translate wire
messages to these calls and SupervisorError subclasses to status codes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from supervisor.batches import from_wire
from supervisor.connections import IngestItem, IngestWriter, Receipts, TrainerStream
from supervisor.runs import RefusedChange, RunState, SupervisorError, UnknownRun, param_from_dict, param_to_dict
from supervisor.storage import AckRecord, ChangeRow, Database, Store
from trainer_sdk import _wire
from trainer_sdk._params import Param
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb

log = logging.getLogger("supervisor")

SET = pb.CHANGE_KIND_SET
TRIGGER = pb.CHANGE_KIND_TRIGGER
ADOPT = pb.CHANGE_KIND_ADOPT
OPERATOR = "operator"
"""The source of an operator's change (API, CLI, HTTP gateway): not a policy's, not a trainer's."""


class BadSession(SupervisorError):
    """A trainer's Hello that cannot be accepted (maps to INVALID_ARGUMENT)."""


_M = TypeVar("_M", bound=Callable[..., Awaitable[Any]])


def _to_the_end(cleanup: Callable[[Supervisor, Any], None] | None = None) -> Callable[[_M], _M]:
    """Run the method in a task of its own, which goes on when its caller is cancelled.

    Why: grpc.aio cancels a handler when its client goes away or its deadline
    passes. Cancelled between a durable write and the memory that mirrors it,
    a change was in the database but not in the run's state: its trainers never
    heard of it, and the run's next change took the same version again and
    failed on the database's uniqueness check until a restart. So a call the
    server received is carried out, as with any RPC whose deadline passed
    after it arrived. ``cleanup`` gets what the method returned when nobody was
    left to take it (a session opened for a trainer that had gone: nobody else
    would close it). ``Supervisor.drain`` waits for these tasks at shutdown.
    """

    def decorate(method: _M) -> _M:
        @functools.wraps(method)
        async def run(self: Supervisor, *args: Any, **kwargs: Any) -> Any:
            task = asyncio.ensure_future(method(self, *args, **kwargs))
            task.set_name(method.__name__)
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(functools.partial(_abandoned, self, cleanup))
                raise

        return run  # type: ignore[return-value]

    return decorate


def _abandoned(core: Supervisor, cleanup: Callable[[Supervisor, Any], None] | None, task: asyncio.Task[Any]) -> None:
    """The end of a ``_to_the_end`` task whose caller left: its result or failure has nobody else to go to."""
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        if cleanup is not None:
            cleanup(core, task.result())
    elif not isinstance(error, SupervisorError):  # a refusal was the caller's to hear, and it left
        log.error("%s failed after its caller went away", task.get_name(), exc_info=error)


class _NoMetrics:
    """Stands in for the Prometheus export when it is off."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class Supervisor:
    def __init__(
        self, db: Database, *, metrics: Any = None, max_metric_messages: float = 1000.0, ack_delay: float = 2.0
    ) -> None:
        """``max_metric_messages``: metric batches per second over all trainers (see ``pacing``);
        ``ack_delay``: how late a receipt of stored points may come when the trainer does not wait for it."""
        if not max_metric_messages > 0:
            raise ValueError(f"max_metric_messages must be positive, got {max_metric_messages}")
        self.db = db
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self.runs: dict[str, RunState] = {}
        self.max_metric_messages = max_metric_messages
        self._open_streams = 0
        self._paced = 0.0  # the interval every open stream has been told
        self.policies: Any = None  # a PolicyHost, attached by the server when configured
        self._create_lock = asyncio.Lock()
        self.writer = IngestWriter(db, self._stored)
        self.receipts = Receipts(ack_delay)
        self._receipts_task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()  # calls that run to the end (_to_the_end)

    async def start(self) -> None:
        for row in await self.db.read(Store.load_runs):
            run = RunState(
                id=row.id,
                name=row.name,
                created=row.created,
                world_size=row.world_size,
                version=row.version,
                params={name: param_from_dict(spec) for name, spec in row.specs.items()},
                values=row.values,
                pinned=set(row.pinned),
                outcome=row.outcome,
                last_step=row.last_step,
                last_seen=row.last_seen,
                points=row.points,
            )
            run.dropped_by_session[0] = row.dropped
            self.runs[run.name] = run
            self.metrics.set_param_values(run.name, run.values)
            self.metrics.run_finished(run.name)  # not connected: retired after the retention unless it returns
        self.writer.start()
        if self.receipts.delay > 0:
            self._receipts_task = asyncio.create_task(self.receipts.run(), name="receipts")

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for calls whose callers left to finish (the servers are stopped: no new ones come)."""
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=timeout)
            if late:
                log.warning(
                    "stopping with %d call(s) unfinished after %gs: %s",
                    len(late),
                    timeout,
                    ", ".join(sorted(t.get_name() for t in late)),
                )

    async def stop(self) -> None:
        await self.writer.stop()
        if self._receipts_task is not None:
            self._receipts_task.cancel()

    def get(self, name: str) -> RunState:
        run = self.runs.get(name)
        if run is None:
            raise UnknownRun(name)
        return run

    # -- trainer sessions ------------------------------------------------------------------

    @_to_the_end(cleanup=lambda core, opened: core.close_session(opened[0]))
    async def open_session(
        self, hello: pb.Hello, peer: str
    ) -> tuple[TrainerStream, RunState, list[pb.ConnectResponse]]:
        """Register a trainer; return its stream, its run, and what to send it first (Welcome, deltas)."""
        name = hello.run
        if not name or len(name) > 200 or not name.isprintable():
            raise BadSession(f"hello.run must be a non-empty printable name of at most 200 characters, got {name!r}")
        if hello.world_size < 1 or not 0 <= hello.rank < hello.world_size:
            raise BadSession(f"hello: rank {hello.rank} is not in [0, world_size={hello.world_size})")
        if not hello.session_id:
            raise BadSession("hello.session_id is empty")
        params: dict[str, Param] = {}
        for spec in hello.params:
            if not spec.name or spec.name in params:
                raise BadSession(f"hello.params: empty or repeated parameter name {spec.name!r}")
            try:
                params[spec.name] = _wire.spec_from_wire(spec)
            except ValueError as exc:
                raise BadSession(f"hello.params: {exc}") from None
        values: dict[str, Any] = {}
        for pname, param in params.items():
            raw = _wire.value_from_wire(hello.values[pname]) if pname in hello.values else param.default
            try:
                values[pname] = param.check(raw, name=pname)
            except ValueError as exc:
                raise BadSession(f"hello.values: {exc}") from None
        now = time.time()
        adopted = False
        send: list[pb.ConnectResponse] = []
        async with self._create_lock:
            run = self.runs.get(name)
            if run is None:
                run_id = await self.db.write(
                    Store.create_run,
                    name,
                    world_size=hello.world_size,
                    specs={n: param_to_dict(p) for n, p in params.items()},
                    values=values,
                    version=hello.version,
                    now=now,
                )
                run = RunState(
                    id=run_id,
                    name=name,
                    created=now,
                    world_size=hello.world_size,
                    version=hello.version,
                    params=params,
                    values=values,
                )
                self.runs[name] = run
                adopted = True
                await self._record(
                    run,
                    version=hello.version or None,
                    kind=ADOPT,
                    source="trainer",
                    reason="run registered with the values its trainer is using",
                    changes={n: (None, v) for n, v in values.items()},
                    now=now,
                )
        await self.writer.settled(hello.session_id)  # a reconnect's last_seq counts its previous stream's batches
        async with run.lock:
            if run is not None and not adopted:
                adopted = await self._reconcile(run, hello, params, values, now)
            session_key, last_seq, known = await self.db.write(Store.open_session, run.id, hello.rank, hello.session_id)
            if hello.rank not in run.acked:
                run.acked[hello.rank] = await self.db.read(Store.acked_version, run.id, hello.rank)
            if hello.version <= run.version:
                run.acked[hello.rank] = max(run.acked[hello.rank], hello.version)
            stream = TrainerStream(
                run=name,
                rank=hello.rank,
                session_id=hello.session_id,
                session_key=session_key,
                last_seq=last_seq,
                peer=peer,
                stored_seq=last_seq,
                acked_seq=last_seq,  # the Welcome says it
                lazy_acks=hello.lazy_acks and self.receipts.delay > 0,
            )
            send.append(pb.ConnectResponse(welcome=pb.Welcome(version=run.version, last_seq=last_seq, adopted=adopted)))
            if hello.version < run.version:
                send.extend(await self._catch_up(run, hello.version, known))
            self._open_streams += 1
            send.append(self._pace())
            run.streams.setdefault(hello.rank, set()).add(stream)
            run.world_size = hello.world_size
            run.outcome = 0
            run.disconnected_at = None
            run.last_seen = now
        self.metrics.set_connected(name, run.connected_ranks)
        self.metrics.set_param_values(name, run.values)
        if self.policies is not None:
            self.policies.run_connected(run)
        log.info(
            "trainer connected: run=%s rank=%d/%d version=%d peer=%s",
            name,
            hello.rank,
            hello.world_size,
            hello.version,
            peer,
        )
        return stream, run, send

    async def _reconcile(
        self, run: RunState, hello: pb.Hello, params: dict[str, Param], values: dict[str, Any], now: float
    ) -> bool:
        """Bring a known run and a (re)connecting trainer into agreement; True if we adopted its values."""
        # The trainer's declaration wins: it is what the code reads. Values the
        # supervisor holds stay when the new declaration still accepts them.
        if params != run.params:
            merged: dict[str, Any] = {}
            for pname, param in params.items():
                try:
                    merged[pname] = param.check(run.values[pname], name=pname) if pname in run.values else values[pname]
                except ValueError:
                    merged[pname] = values[pname]
            run.params, run.values = params, merged
            run.pinned &= set(params)
            await self.db.write(
                Store.update_declaration,
                run.id,
                world_size=hello.world_size,
                specs={n: param_to_dict(p) for n, p in params.items()},
                values=merged,
            )
        if hello.version > run.version or (hello.version == run.version and values != run.values):
            # The trainer is ahead (the supervisor lost state, or started on an empty
            # database), or at the same version with other values (it applied a change
            # this supervisor never recorded, then this one's change of the same number):
            # keep what it is actually using instead of resetting it.
            old = dict(run.values)
            run.values = dict(values)
            version = max(hello.version, run.version) if hello.version > run.version else None
            await self._record(
                run,
                version=version,
                kind=ADOPT,
                source="trainer",
                reason=f"adopted the values trainer rank {hello.rank} is using (its version {hello.version})",
                changes={n: (old.get(n), v) for n, v in values.items() if old.get(n) != v},
                values=run.values,
                now=now,
            )
            return True
        return False

    async def _catch_up(self, run: RunState, version: int, known_session: bool) -> list[pb.ConnectResponse]:
        if known_session:
            # The same process reconnecting: replay what it missed, in order, with
            # each delta's own step gate.
            rows = await self.db.read(Store.history, run.id, after_version=version)
            return [self._delta_message(row) for row in rows if row.version is not None]
        # A new process for a known run: send the run's current values in one delta.
        return [
            pb.ConnectResponse(
                delta=pb.Delta(
                    version=run.version,
                    changes=_wire.values_to_wire(run.values),
                    source="resync",
                    reason=f"restored run {run.name!r} at version {run.version}",
                    time=time.time(),
                )
            )
        ]

    @staticmethod
    def _delta_message(row: ChangeRow) -> pb.ConnectResponse:
        delta = pb.Delta(
            version=row.version or 0,
            changes=_wire.values_to_wire({n: new for n, (_, new) in row.changes.items()}),
            trigger=row.trigger or "",
            source=row.source,
            reason=row.reason,
            time=row.time,
        )
        if row.apply_at_step is not None:
            delta.apply_at_step = row.apply_at_step
        return pb.ConnectResponse(delta=delta)

    def close_session(self, stream: TrainerStream) -> None:
        self.receipts.forget(stream)
        self._open_streams -= 1
        self._pace()
        run = self.runs.get(stream.run)
        if run is None:
            return
        streams = run.streams.get(stream.rank)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                run.release_latest(stream.rank)
        if not run.connected:
            run.disconnected_at = time.time()
            if self.policies is not None:
                self.policies.run_disconnected(run)
            self.metrics.run_finished(run.name)
        self.metrics.set_connected(run.name, run.connected_ranks)
        log.info("trainer disconnected: run=%s rank=%d", stream.run, stream.rank)

    @property
    def pacing(self) -> float:
        """Seconds each trainer should leave between metric batches: open streams / max_metric_messages.

        The supervisor's cost is per message far more than per value (each gRPC
        message costs a read, a decode, a wake-up and an acknowledgement on both
        sides), so as trainers are added each one batches more and the total
        message rate stays bounded; the values per second do not change.
        """
        return self._open_streams / self.max_metric_messages

    def _pace(self) -> pb.ConnectResponse:
        """The Pacing message for a new stream; tells every stream when the interval moved by over 20 %."""
        target = self.pacing
        message = pb.ConnectResponse(pacing=pb.Pacing(min_flush_interval_seconds=target))
        if not self._paced / 1.2 <= target <= self._paced * 1.2:
            self._paced = target
            for run in self.runs.values():
                for streams in run.streams.values():
                    for stream in streams:
                        stream.send(message)
            self.metrics.set_pacing(target)
        return message

    @_to_the_end()
    async def goodbye(self, stream: TrainerStream, outcome: int) -> None:
        run = self.get(stream.run)
        run.outcome = outcome
        await self.db.write(Store.set_outcome, run.id, outcome)
        if stream.ended and run.streams.get(stream.rank):
            return  # stored after its trainer had already come back on a new stream: the run goes on
        if self.policies is not None:
            self.policies.run_finished(run, outcome)

    # -- metrics ---------------------------------------------------------------------------

    async def ingest(self, stream: TrainerStream, batch: pb.MetricBatch) -> None:
        run = self.runs[stream.run]
        try:
            columns = from_wire(batch)
        except ValueError as exc:
            raise BadSession(str(exc)) from None
        now = time.time()
        run.last_seen = now
        if columns.seqs and columns.seqs[0] <= stream.last_seq:
            columns = columns.after(stream.last_seq)  # a resend after reconnecting
        if batch.ack_now:  # the trainer waits for the receipt of everything it sent
            stream.wanted_seq = max(stream.last_seq, columns.last_seq if columns.seqs else 0)
            if not columns.seqs and stream.stored_seq >= stream.wanted_seq:
                self.receipts.now(stream)  # stored already; only its receipt was waiting
        if not columns.seqs:
            return
        stream.last_seq = columns.last_seq
        run.dropped_by_session[stream.session_key] = batch.dropped_total
        run.note_latest(stream.rank, columns.latest())
        non_finite = 0
        if not math.isfinite(sum(columns.values)):  # one C loop; count only when something is off
            non_finite = sum(1 for value in columns.values if not math.isfinite(value))
        last = max(columns.steps)
        if last > run.last_step:
            run.last_step = last
            run.step_times.append((now, last))
        run.points += len(columns)
        if non_finite:
            self.metrics.record_error("non_finite_metric")
        self.metrics.add_points(run.name, len(columns))
        self.metrics.set_dropped(run.name, run.dropped)
        self.metrics.set_latest_metrics(run.name, run.latest)
        await self.writer.submit(IngestItem(run.id, run.name, stream, batch.dropped_total, columns))

    async def settle(self, stream: TrainerStream, timeout: float = 5.0) -> None:
        """Wait until every point the stream sent is stored (and acknowledged), or timeout."""
        deadline = time.monotonic() + timeout
        while stream.stored_seq < stream.last_seq and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.receipts.now(stream)  # a receipt held back for later goes now

    async def _stored(self, items: list[IngestItem]) -> None:
        stored: dict[TrainerStream, int] = {}
        for item in items:
            stored[item.stream] = max(stored.get(item.stream, 0), item.columns.last_seq)
        now = time.monotonic()
        for stream, seq in stored.items():  # at most one receipt per stream per commit
            if seq > stream.stored_seq:
                stream.stored_seq = seq
                self.receipts.stored(stream, now)
        if self.policies is not None:
            for item in items:
                run = self.runs.get(item.run)
                if run is not None:
                    self.policies.observe(run, item.columns, item.stream.rank)

    # -- changes ---------------------------------------------------------------------------

    @_to_the_end()
    async def set_params(
        self,
        name: str,
        requested: dict[str, Any],
        *,
        reason: str,
        source: str = OPERATOR,
        apply_at_step: int | None = None,
        pin: bool = True,
        respect_pins: bool = False,
        step: int | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Validate, record durably, then send one atomic change. Returns (version, old values).

        An operator's change (``pin``) pins its parameters against policies; a
        policy's change (``respect_pins``) is refused for pinned parameters,
        checked under the run's lock so a pin and a policy cannot race.
        ``step`` is the step the change answers (a policy's point); default:
        the run's latest step.
        """
        run = self.get(name)
        if apply_at_step is not None and apply_at_step < 0:
            raise RefusedChange(f"apply_at_step must be >= 0, got {apply_at_step}")
        async with run.lock:
            changes = run.validate(requested)
            if respect_pins and (pinned_now := sorted(run.pinned & set(changes))):
                raise RefusedChange(
                    f"{', '.join(pinned_now)}: pinned by an operator; "
                    f"`supervisor release {name} {' '.join(pinned_now)}` to let policies act"
                )
            old = {n: run.values.get(n) for n in changes}
            version = run.version + 1
            pinned = run.pinned | set(changes) if pin else None
            await self._record(
                run,
                version=version,
                kind=SET,
                source=source,
                reason=reason,
                changes={n: (old[n], v) for n, v in changes.items()},
                apply_at_step=apply_at_step,
                values={**run.values, **changes},
                pinned=pinned,
                step=step,
            )
        return version, old

    @_to_the_end()
    async def fire_trigger(
        self,
        name: str,
        trigger: str,
        *,
        reason: str,
        source: str = OPERATOR,
        apply_at_step: int | None = None,
        step: int | None = None,
    ) -> int:
        run = self.get(name)
        if not trigger or not trigger.isprintable() or len(trigger) > 100:
            raise RefusedChange(
                f"trigger name must be non-empty printable text of at most 100 characters, got {trigger!r}"
            )
        async with run.lock:
            version = run.version + 1
            await self._record(
                run,
                version=version,
                kind=TRIGGER,
                source=source,
                reason=reason,
                changes={},
                trigger=trigger,
                apply_at_step=apply_at_step,
                step=step,
            )
        return version

    @_to_the_end()
    async def release(self, name: str, params: Iterable[str]) -> list[str]:
        run = self.get(name)
        names = list(params)
        for pname in names:
            if pname not in run.params:
                raise RefusedChange(f"{pname}: run {name!r} has no parameter {pname!r}")
        async with run.lock:
            released = sorted(run.pinned & set(names)) if names else sorted(run.pinned)
            if released:
                run.pinned -= set(released)
                await self._record(
                    run,
                    version=None,
                    kind=pb.CHANGE_KIND_RELEASE,
                    source=OPERATOR,
                    reason="released " + ", ".join(released) + " to policies",
                    changes={},
                    pinned=run.pinned,
                )
        return released

    async def record_unsent(
        self,
        run: RunState,
        *,
        kind: int,
        source: str,
        reason: str,
        changes: dict[str, tuple[Any, Any]],
        trigger: str | None = None,
        step: int | None = None,
    ) -> None:
        """A history entry that changes nothing: a proposal, a refusal, a policy error."""
        await self._record(
            run, version=None, kind=kind, source=source, reason=reason, changes=changes, trigger=trigger, step=step
        )

    async def _record(
        self,
        run: RunState,
        *,
        version: int | None,
        kind: int,
        source: str,
        reason: str,
        changes: dict[str, tuple[Any, Any]],
        trigger: str | None = None,
        apply_at_step: int | None = None,
        values: dict[str, Any] | None = None,
        pinned: set[str] | None = None,
        now: float | None = None,
        step: int | None = None,
    ) -> None:
        """Persist first; only then update memory and tell the trainers.

        An operator's entry goes ahead of queued writes (``Database.write_first``):
        the operator is waiting, a policy's decision is not.
        """
        now = time.time() if now is None else now
        operator_waits = source == OPERATOR  # for the commit, then for the trainers' acknowledgement
        write = self.db.write_first if operator_waits else self.db.write
        await write(
            Store.record_change,
            run.id,
            version=version,
            kind=kind,
            source=source,
            reason=reason,
            changes=changes,
            trigger=trigger,
            apply_at_step=apply_at_step,
            step=run.last_step if step is None else step,
            now=now,
            values=values,
            pinned=pinned,
        )
        if pinned is not None:
            run.pinned = set(pinned)
        if version is None:
            return
        run.version = version
        if values is not None:
            run.values = values
        if kind in (SET, TRIGGER):
            delta = pb.Delta(
                version=version,
                changes=_wire.values_to_wire({n: new for n, (_, new) in changes.items()}),
                trigger=trigger or "",
                source=source,
                reason=reason,
                time=now,
                ack_with_metrics=not operator_waits,
            )
            if apply_at_step is not None:
                delta.apply_at_step = apply_at_step
            message = pb.ConnectResponse(delta=delta)
            # The streams' writers send it before the operator hears back: set_params runs in a task of
            # its own (_to_the_end), and its caller resumes at least one event-loop turn after it ends.
            for streams in run.streams.values():
                for stream in streams:
                    stream.send(message)
            if changes:
                self.metrics.record_change(run.name, list(changes), source, now)
                self.metrics.set_param_values(run.name, run.values)

    # -- acknowledgements ---------------------------------------------------------------------

    async def applied(self, stream: TrainerStream, message: pb.Applied) -> None:
        run = self.runs[stream.run]
        previous = run.acked.get(stream.rank, 0)
        if message.version <= previous or message.version > run.version:
            return
        run.acked[stream.rank] = message.version
        now = time.time()
        newly = await self.writer.record_acks(
            AckRecord(
                run.id, stream.rank, after=previous, up_to=message.version, step=message.step, when=message.time or now
            )
        )
        for _, recorded in newly:
            self.metrics.record_ack(run.name, max(0.0, now - recorded))
        self._wake_waiters(run)

    def _wake_waiters(self, run: RunState) -> None:
        acked = run.acked_version() if run.connected else 0
        remaining = []
        for version, future in run.waiters:
            if future.done():
                continue
            if run.connected and acked >= version:
                future.set_result(None)
            else:
                remaining.append((version, future))
        run.waiters = remaining

    async def wait_acknowledged(self, name: str, version: int, timeout: float) -> bool:
        """Wait until every connected rank of the run applied ``version``."""
        run = self.get(name)
        if run.connected and run.acked_version() >= version:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        run.waiters.append((version, future))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False

    # -- queries -------------------------------------------------------------------------------

    def list_runs(self, glob: str = "") -> list[RunState]:
        return [run for name, run in sorted(self.runs.items()) if run.matches(glob)]

    async def history(self, name: str) -> list[ChangeRow]:
        run = self.get(name)
        return await self.db.read(Store.history, run.id)

    async def metric_page(self, name: str, metric: str, after: int, limit: int) -> tuple[list[Any], int]:
        run = self.get(name)
        return await self.db.read(Store.metrics, run.id, name=metric, after=after, limit=limit)
