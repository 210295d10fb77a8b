"""gRPC servicers: wire messages in, core calls, status codes out."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from supervisor.core import BadSession, Supervisor
from supervisor.runs import RefusedChange, RunState, SupervisorError, UnknownRun
from supervisor.storage import ChangeRow, WriterUnavailable
from trainer_sdk import _wire
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from supervisor.sharding import Router

log = logging.getLogger("supervisor")

T = TypeVar("T")

_STATUS = {
    UnknownRun: grpc.StatusCode.NOT_FOUND,
    RefusedChange: grpc.StatusCode.INVALID_ARGUMENT,
    BadSession: grpc.StatusCode.INVALID_ARGUMENT,
}
_ERROR_KIND = {UnknownRun: "unknown_run", RefusedChange: "invalid_change", BadSession: "bad_message"}

UNAUTHENTICATED_DETAILS = "missing or wrong token: set SUPERVISOR_TOKEN (or --token) to the server's token"
"""What a client without the server's token is told, over gRPC and over HTTP alike."""


async def _call(context: grpc.aio.ServicerContext, metrics: Any, work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except SupervisorError as exc:
        metrics.record_error(_ERROR_KIND.get(type(exc), "request_error"))
        await context.abort(_STATUS.get(type(exc), grpc.StatusCode.FAILED_PRECONDITION), str(exc))
        raise  # unreachable: abort raises
    except WriterUnavailable as exc:
        metrics.record_error("storage")
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"{exc}; the supervisor can store nothing more: restart it (its log says why its database writer stopped)",
        )
        raise  # unreachable: abort raises
    except sqlite3.Error as exc:  # nothing was changed: the write's transaction rolled back, memory follows it
        metrics.record_error("storage")
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"the supervisor cannot write its database ({exc}); nothing was changed: free space on the volume that "
            "holds its --db file, or check that file's permissions, then try again",
        )
        raise  # unreachable: abort raises


class TrainerService(pb_grpc.TrainerServiceServicer):
    def __init__(self, core: Supervisor, router: Router | None = None) -> None:
        self.core = core
        self.router = router
        """A sharded supervisor's ``sharding.Router``: trainers of other shards' runs are redirected there."""

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if first.WhichOneof("message") != "hello":
            self.core.metrics.record_error("bad_message")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message of a Connect stream must be a hello"
            )
        if self.router is not None and await self._redirected(first.hello, context):
            return
        stream, _run, initial = await _call(
            context, self.core.metrics, lambda: self.core.open_session(first.hello, context.peer())
        )
        reader = asyncio.create_task(self._read(stream, context), name=f"read-{stream.run}-{stream.rank}")
        try:
            for message in initial:
                await context.write(message)
            while (message := await stream.outbox.get()) is not None:
                await context.write(message)
            if reader.done() and reader.exception() is not None:
                error = reader.exception()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        finally:
            reader.cancel()
            self.core.close_session(stream)

    async def _redirected(self, hello: pb.Hello, context: grpc.aio.ServicerContext) -> bool:
        """Send a trainer of another shard's run there; True if it was (or was refused)."""
        try:
            redirect = self.router.redirect(hello.run)
        except SupervisorError as exc:  # its shard is restarting: the trainer retries, as after an outage
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if redirect is None:
            return False
        if not hello.follows_redirects:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"run {hello.run!r} is served by another process of this sharded supervisor (port {redirect.port}), "
                f"and this trainer_sdk ({hello.sdk_version or 'unknown version'}) cannot follow it there: upgrade it",
            )
        await context.write(pb.ConnectResponse(redirect=redirect))
        return True

    async def _read(self, stream: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    await self.core.settle(stream)  # acknowledge what is still being committed
                    break
                kind = message.WhichOneof("message")
                if kind == "metrics":
                    await self.core.ingest(stream, message.metrics)
                    if message.metrics.HasField("applied"):  # a policy's change, acknowledged with the points
                        await self.core.applied(stream, message.metrics.applied)
                elif kind == "applied":
                    await self.core.applied(stream, message.applied)
                elif kind == "goodbye":
                    await self.core.goodbye(stream, message.goodbye.outcome)
                else:
                    raise BadSession(f"unexpected {kind or 'empty'} message after hello")
        except BadSession as exc:
            self.core.metrics.record_error("bad_message")
            log.warning("closing stream of run %s rank %d: %s", stream.run, stream.rank, exc)
            stream.close()
            raise
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception:
            log.exception("stream of run %s rank %d failed", stream.run, stream.rank)
        stream.close()


class OperatorService(pb_grpc.OperatorServiceServicer):
    def __init__(self, core: Supervisor) -> None:
        self.core = core

    async def ListRuns(self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext) -> pb.ListRunsResponse:
        return pb.ListRunsResponse(runs=[run_info(run) for run in self.core.list_runs(request.run_glob)])

    async def SetParams(self, request: pb.SetParamsRequest, context: grpc.aio.ServicerContext) -> pb.SetParamsResponse:
        async def work() -> pb.SetParamsResponse:
            at = request.apply_at_step if request.HasField("apply_at_step") else None
            version, old = await self.core.set_params(
                request.run,
                _wire.values_from_wire(request.changes),
                reason=request.reason or "set by an operator",
                apply_at_step=at,
            )
            acknowledged = False
            if request.wait:
                timeout = request.timeout_seconds if request.timeout_seconds > 0 else 30.0
                acknowledged = await self.core.wait_acknowledged(request.run, version, timeout)
                if not acknowledged:
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"version {version} is recorded and will reach run {request.run!r}, but no "
                        f"acknowledgement from every connected rank came within {timeout:g}s",
                    )
            return pb.SetParamsResponse(
                version=version,
                old_values=_wire.values_to_wire({k: v for k, v in old.items() if v is not None}),
                acknowledged=acknowledged,
            )

        return await _call(context, self.core.metrics, work)

    async def FireTrigger(
        self, request: pb.FireTriggerRequest, context: grpc.aio.ServicerContext
    ) -> pb.FireTriggerResponse:
        async def work() -> pb.FireTriggerResponse:
            version = await self.core.fire_trigger(
                request.run, request.name, reason=request.reason or "fired by an operator"
            )
            return pb.FireTriggerResponse(version=version)

        return await _call(context, self.core.metrics, work)

    async def ReleaseParams(
        self, request: pb.ReleaseParamsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseParamsResponse:
        async def work() -> pb.ReleaseParamsResponse:
            return pb.ReleaseParamsResponse(released=await self.core.release(request.run, request.names))

        return await _call(context, self.core.metrics, work)

    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetHistoryResponse:
        async def work() -> pb.GetHistoryResponse:
            return pb.GetHistoryResponse(entries=[history_entry(row) for row in await self.core.history(request.run)])

        return await _call(context, self.core.metrics, work)

    async def GetMetrics(
        self, request: pb.GetMetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMetricsResponse:
        async def work() -> pb.GetMetricsResponse:
            try:
                after = int(request.page_token or 0)
            except ValueError:
                raise RefusedChange(f"page_token {request.page_token!r} is not one this server issued") from None
            size = request.page_size if request.page_size > 0 else 10_000
            rows, cursor = await self.core.metric_page(request.run, request.name, after, min(size, 50_000))
            return pb.GetMetricsResponse(
                points=[pb.StoredMetric(rank=r, seq=q, step=s, time=t, name=n, value=v) for r, q, s, t, n, v in rows],
                next_page_token=str(cursor) if cursor else "",
            )

        return await _call(context, self.core.metrics, work)


def run_info(run: RunState) -> pb.RunInfo:
    return pb.RunInfo(
        run=run.name,
        connected=run.connected,
        connected_ranks=run.connected_ranks,
        world_size=run.world_size,
        last_step=run.last_step,
        latest_metrics=run.latest,
        values=_wire.values_to_wire(run.values),
        params=[_wire.spec_to_wire(n, p) for n, p in run.params.items()],
        version=run.version,
        acked_version=run.acked_version(),
        pinned=sorted(run.pinned),
        last_seen=run.last_seen,
        points_received=run.points,
        points_dropped=run.dropped,
        outcome=run.outcome,
        step_rate=run.step_rate(),
    )


def history_entry(row: ChangeRow) -> pb.HistoryEntry:
    entry = pb.HistoryEntry(
        version=row.version or 0,
        time=row.time,
        kind=row.kind,
        source=row.source,
        reason=row.reason,
        trigger=row.trigger or "",
        step=row.step,
        acks=[pb.RankAck(rank=r, step=s, time=t) for r, s, t in row.acks],
    )
    for name, (old, new) in row.changes.items():
        change = entry.changes.add(name=name)
        if old is not None:
            change.old_value.CopyFrom(_wire.value_to_wire(old))
        if new is not None:
            change.new_value.CopyFrom(_wire.value_to_wire(new))
    if row.apply_at_step is not None:
        entry.apply_at_step = row.apply_at_step
    return entry
