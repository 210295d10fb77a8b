"""One supervisor as several processes (``supervisor serve --shards N``), each owning some runs.

Why: a supervisor process is one GIL, and at a thousand trainers its event loop,
SQLite writer and policy workers queue behind one another for it, so control
latency follows its utilisation (BENCHMARKS.md, benchmark 5). Runs are independent,
so they can be split between processes that share nothing.

How:

* every run belongs to one shard, chosen from its name (:func:`owner`), or from
  the id of the population policy it matches, so that one population (an Optuna
  study) stays in one process;
* shard 0 is the front door: trainers and operators use its address. It starts
  shards 1..N-1 as child processes (each with its own port, SQLite file and
  /metrics), answers a trainer of another shard's run with a Redirect to that
  shard's port, and forwards an operator call about such a run to its owner;
  ``ListRuns`` asks every shard;
* a trainer that loses a redirected connection goes back to the front door,
  which redirects it again (to a restarted shard's new port, for one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from policies import PolicyBinding
from supervisor.services import OperatorService, run_info
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from supervisor.server import ServerConfig

log = logging.getLogger("supervisor")

START_TIMEOUT = 60.0
"""Seconds a child shard may take to start serving before the front door gives up."""


def owner(run: str, shards: int, population: Iterable[PolicyBinding] = ()) -> int:
    """The shard (0..shards-1) that owns ``run``: by the first population binding it matches, else by name.

    CRC-32 rather than ``hash()``: every process, and every restart, must agree.
    """
    key = run
    for binding in population:
        if binding.matches(run):
            key = "\0policy:" + binding.id  # a population's runs stay together
            break
    return zlib.crc32(key.encode()) % shards


def shard_db(db: Path, index: int) -> Path:
    """Shard ``index``'s SQLite file: ``supervisor.db`` for shard 0, ``supervisor.shard1.db`` for shard 1."""
    return db if index == 0 else db.with_name(f"{db.stem}.shard{index}{db.suffix}")


@dataclass
class Router:
    """What one shard knows of the others: who owns a run, and where that shard listens."""

    index: int
    count: int
    population: Sequence[PolicyBinding] = ()
    ports: dict[int, int] = field(default_factory=dict)
    """Shard -> gRPC port on this host; a child knows only the front door's (shard 0)."""
    host: str = "127.0.0.1"
    token: str | None = None
    _stubs: dict[int, tuple[int, Any, pb_grpc.OperatorServiceStub]] = field(default_factory=dict, repr=False)

    def owner(self, run: str) -> int:
        return owner(run, self.count, self.population)

    def redirect(self, run: str) -> pb.Redirect | None:
        """Where a trainer of ``run`` should connect instead; None when this shard owns it."""
        shard = self.owner(run)
        if shard == self.index:
            return None
        return pb.Redirect(port=self.ports.get(shard, self.ports[0]))

    def stub(self, shard: int) -> pb_grpc.OperatorServiceStub | None:
        """An operator stub for ``shard`` (a channel kept per shard and port); None if its port is unknown."""
        port = self.ports.get(shard)
        if port is None:
            return None
        cached = self._stubs.get(shard)
        if cached is not None and cached[0] == port:
            return cached[2]
        if cached is not None:
            asyncio.ensure_future(cached[1].close())
        host = f"[{self.host}]" if ":" in self.host else self.host
        channel = grpc.aio.insecure_channel(f"{host}:{port}")
        stub = pb_grpc.OperatorServiceStub(channel)
        self._stubs[shard] = (port, channel, stub)
        return stub

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    async def close(self) -> None:
        for _port, channel, _stub in self._stubs.values():
            await channel.close()
        self._stubs.clear()


class RoutedOperatorService(OperatorService):
    """The operator API of one shard: its own runs served here, the others' forwarded to their owner."""

    def __init__(self, core: Any, router: Router) -> None:
        super().__init__(core)
        self.router = router

    async def _forward(self, method: str, request: Any, context: Any) -> Any:
        shard = self.router.owner(request.run)
        stub = self.router.stub(shard)
        if stub is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"run {request.run!r} belongs to shard {shard} of this supervisor; send operator calls to its "
                f"front door (port {self.router.ports.get(0)})",
            )
        remaining = getattr(context, "time_remaining", lambda: None)()
        try:
            return await getattr(stub, method)(request, metadata=self.router.metadata, timeout=remaining)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"shard {shard}, which owns run {request.run!r}, is unavailable: {details}"
            await context.abort(code, details)

    def _local(self, request: Any) -> bool:
        return self.router.owner(request.run) == self.router.index

    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        here = self.router.index
        runs = [run_info(run) for run in self.core.list_runs(request.run_glob) if self.router.owner(run.name) == here]
        if self.router.index != 0:
            return pb.ListRunsResponse(runs=runs)  # a child answers for itself; the front door merges
        others = [self.router.stub(shard) for shard in range(1, self.router.count)]
        remaining = getattr(context, "time_remaining", lambda: None)()
        calls = [s.ListRuns(request, metadata=self.router.metadata, timeout=remaining) for s in others if s]
        try:
            for answer in await asyncio.gather(*calls):
                runs.extend(answer.runs)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"a shard of this supervisor did not answer: {exc.details()}")
        runs.sort(key=lambda info: info.run)
        return pb.ListRunsResponse(runs=runs)

    async def _route(self, method: str, request: Any, context: Any) -> Any:
        if self._local(request):
            return await getattr(super(), method)(request, context)
        return await self._forward(method, request, context)

    async def SetParams(self, request: pb.SetParamsRequest, context: Any) -> pb.SetParamsResponse:
        return await self._route("SetParams", request, context)

    async def FireTrigger(self, request: pb.FireTriggerRequest, context: Any) -> pb.FireTriggerResponse:
        return await self._route("FireTrigger", request, context)

    async def ReleaseParams(self, request: pb.ReleaseParamsRequest, context: Any) -> pb.ReleaseParamsResponse:
        return await self._route("ReleaseParams", request, context)

    async def GetHistory(self, request: pb.GetHistoryRequest, context: Any) -> pb.GetHistoryResponse:
        return await self._route("GetHistory", request, context)

    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Any) -> pb.GetMetricsResponse:
        return await self._route("GetMetrics", request, context)


@dataclass
class ChildShard:
    index: int
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    port: int | None = None
    relay: asyncio.Task[None] | None = None


class ShardProcesses:
    """Shards 1..N-1 as child processes of the front door: started before it serves, restarted if they die,
    stopped with it. Each child prints ``listening on HOST:PORT``; its other output is passed on, prefixed."""

    def __init__(self, router: Router, argv_for: Any, env: dict[str, str]) -> None:
        self.router = router
        self._env = env
        self.children = [ChildShard(index=k, argv=argv_for(k)) for k in range(1, router.count)]
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await asyncio.gather(*(self._spawn(child) for child in self.children))
        except BaseException:
            await self.stop()
            raise
        self._watch = asyncio.create_task(self._watch_children(), name="shards")

    async def _spawn(self, child: ChildShard) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env=self._env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the front door, which stops them in order
        )
        assert child.process.stdout is not None
        try:
            port = await asyncio.wait_for(_listening_port(child.process.stdout, child.index), START_TIMEOUT)
        except TimeoutError:
            raise OSError(f"shard {child.index} did not start serving within {START_TIMEOUT:g}s") from None
        if port is None:
            code = await child.process.wait()
            raise OSError(f"shard {child.index} exited with code {code} before serving (its error is above)")
        child.port = port
        self.router.ports[child.index] = port
        child.relay = asyncio.create_task(_relay(child.process.stdout, child.index), name=f"shard-{child.index}")
        log.info("shard %d of %d serves on port %d (pid %d)", child.index, self.router.count, port, child.process.pid)

    async def _watch_children(self) -> None:
        while not self._stopping:
            waits = {asyncio.ensure_future(c.process.wait()): c for c in self.children if c.process is not None}
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for future in pending:
                future.cancel()
            for future in done:
                child = waits[future]
                if self._stopping:
                    return
                self.router.ports.pop(child.index, None)
                log.error("shard %d exited with code %s; restarting it", child.index, future.result())
                delay = 1.0
                while not self._stopping:
                    try:
                        await self._spawn(child)
                        break
                    except OSError as exc:
                        log.error("%s; retrying in %.0fs", exc, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 30.0)

    def hangup(self) -> None:
        """Pass SIGHUP (reload the policies file) on to every child."""
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signal.SIGHUP)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        running = [c.process for c in self.children if c.process is not None and c.process.returncode is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                log.error("shard pid %d did not stop within %gs; killing it", process.pid, timeout)
                process.kill()
                await process.wait()
        for child in self.children:
            if child.relay is not None:
                await asyncio.gather(child.relay, return_exceptions=True)
        await self.router.close()


async def _listening_port(stdout: asyncio.StreamReader, index: int) -> int | None:
    """Pass the child's lines on until it says ``listening on HOST:PORT``; its port, or None if it exited first."""
    while line := await stdout.readline():
        text = line.decode(errors="replace").rstrip()
        if text.startswith("listening on "):
            return int(text.rpartition(":")[2])
        print(f"shard {index}: {text}", flush=True)
    return None


async def _relay(stdout: asyncio.StreamReader, index: int) -> None:
    while line := await stdout.readline():
        print(f"shard {index}: {line.decode(errors='replace').rstrip()}", flush=True)


def child_env(token: str | None) -> dict[str, str]:
    """The children's environment: this one's, with the token passed there rather than on a command line."""
    env = dict(os.environ)
    if token:
        env["SUPERVISOR_TOKEN"] = token
    return env


def child_argv(config: ServerConfig, index: int, front_port: int) -> list[str]:
    """The command line of shard ``index``: a ``serve`` of its own (on ``--shard-ports``' port for it, or a free
    one), without an HTTP gateway, given the front door's settings."""
    port = config.shard_ports + index - 1 if config.shard_ports else 0
    argv = [sys.executable, "-m", "supervisor", "serve", "--host", config.host, "--port", str(port), "--no-http",
            "--db", str(shard_db(config.db, index)), "--shard", f"{index}/{config.shards}",
            "--front-port", str(front_port), "--max-metric-messages", repr(config.max_metric_messages),
            "--ack-delay", repr(config.ack_delay), "--log-level", config.log_level]
    if config.policy_config is not None:
        argv += ["--config", str(config.policy_config)]
    if config.metrics_port is not None:
        argv += ["--metrics-port", str(config.metrics_port + index if config.metrics_port else 0)]
        if config.metrics_host:
            argv += ["--metrics-host", config.metrics_host]
    return argv
