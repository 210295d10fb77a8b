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

Every process routes by the front door's rules, handed to the children on their
command line, so a policies file edited while a child restarts cannot make two
processes disagree about who owns a run. Children never forward: a call that
reaches one for another shard's run is refused with the front door's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from policies import PolicyBinding
from supervisor.runs import SupervisorError
from supervisor.services import OperatorService, run_info
from trainer_sdk._transport import redirect_target
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from supervisor.server import ServerConfig

log = logging.getLogger("supervisor")

START_TIMEOUT = 60.0
"""Seconds a child shard may take to start serving before the front door gives up on it."""
EXIT_GRACE = 5.0
"""Seconds a child shard that closed its output before serving is given to exit before it is killed."""
FIRST_RESTART_PAUSE = 1.0
MAX_RESTART_PAUSE = 30.0
"""Seconds before a dead child shard is restarted: the first pause, doubled while it keeps dying within 30 s
of starting, up to the second."""
FORWARD_TIMEOUT = 30.0
"""Seconds a forwarded call may take when its caller set no deadline (an HTTP call), beyond its own wait."""


class ShardUnavailable(SupervisorError):
    """The shard that owns a run is not serving right now (restarting); the caller should retry.

    Its message says "of this supervisor", which tells the CLI that a supervisor did answer.
    """


@dataclass(frozen=True)
class PopulationRule:
    """A population policy's runs, which stay together in the shard its id hashes to."""

    id: str
    globs: tuple[str, ...]

    def matches(self, run: str) -> bool:
        return any(fnmatch.fnmatchcase(run, glob) for glob in self.globs)

    @classmethod
    def of(cls, binding: PolicyBinding) -> PopulationRule:
        return cls(binding.id, (binding.runs,) if isinstance(binding.runs, str) else tuple(binding.runs))


def rules_to_text(rules: Sequence[PopulationRule]) -> str:
    return json.dumps([[rule.id, list(rule.globs)] for rule in rules])


def rules_from_text(text: str) -> list[PopulationRule]:
    return [PopulationRule(id, tuple(globs)) for id, globs in json.loads(text)]


def owner(run: str, shards: int, population: Iterable[PopulationRule | PolicyBinding] = ()) -> int:
    """The shard (0..shards-1) that owns ``run``: by the first population rule it matches, else by name.

    CRC-32 rather than ``hash()``: every process, and every restart, must agree.
    """
    key = run
    for rule in population:
        if rule.matches(run):
            key = "\0policy:" + rule.id  # a population's runs stay together
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
    population: Sequence[PopulationRule] = ()
    ports: dict[int, int] = field(default_factory=dict)
    """Shard -> gRPC port on this host; a child knows only the front door's (shard 0)."""
    host: str = "127.0.0.1"
    token: str | None = None
    sockets: dict[int, str] = field(default_factory=dict)
    """The front door's, with TLS: shard -> the Unix socket where it also takes the front door's forwarded calls
    (in plaintext, in a folder only this user can open), since the certificate need not name ``host``."""
    _stubs: dict[int, tuple[int, Any, pb_grpc.OperatorServiceStub]] = field(default_factory=dict, repr=False)

    def owner(self, run: str) -> int:
        return owner(run, self.count, self.population)

    def redirect(self, run: str) -> pb.Redirect | None:
        """Where a trainer of ``run`` should connect instead; None when this shard owns it.

        A child sends trainers of other shards' runs to the front door, which knows every shard's port.
        Raises ShardUnavailable when the owner is restarting.
        """
        shard = self.owner(run)
        if shard == self.index:
            return None
        port = self.ports.get(shard if self.index == 0 else 0)
        if port is None:
            raise ShardUnavailable(
                f"shard {shard} of this supervisor, which serves run {run!r}, is restarting; try again shortly"
            )
        return pb.Redirect(port=port)

    def stub(self, shard: int) -> pb_grpc.OperatorServiceStub:
        """The front door's operator stub for ``shard`` (a channel kept per shard and port)."""
        port = self.ports.get(shard)
        if port is None:
            raise ShardUnavailable(f"shard {shard} of this supervisor is restarting; try again shortly")
        cached = self._stubs.get(shard)
        if cached is not None and cached[0] == port:
            return cached[2]
        if cached is not None:  # the shard restarted on another port
            asyncio.ensure_future(cached[1].close())
        if shard in self.sockets:
            target = f"unix:{self.sockets[shard]}"
        else:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
            target = redirect_target("", host, port)
        channel = grpc.aio.insecure_channel(target)
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


def _deadline(request: Any, context: Any) -> float:
    """Seconds a forwarded call may take: the caller's deadline, or for HTTP callers (none) a default that
    leaves room for a ``set --wait``."""
    remaining = getattr(context, "time_remaining", lambda: None)()
    if remaining is not None:
        return remaining
    return FORWARD_TIMEOUT + (getattr(request, "timeout_seconds", 0.0) if getattr(request, "wait", False) else 0.0)


@dataclass(frozen=True)
class _ShardFailed:
    """Why a forwarded call got no answer from its shard: the status to abort the caller's call with."""

    code: grpc.StatusCode
    details: str


class RoutedOperatorService(OperatorService):
    """The operator API of one shard: its own runs served here; at the front door, the others' forwarded."""

    def __init__(self, core: Any, router: Router) -> None:
        super().__init__(core)
        self.router = router

    async def _ask_shard(self, shard: int, method: str, request: Any, context: Any) -> Any:
        """The shard's answer, or a _ShardFailed saying why there is none (restarting, not answering, refused)."""
        try:
            call = getattr(self.router.stub(shard), method)
            return await call(request, metadata=self.router.metadata, timeout=_deadline(request, context))
        except ShardUnavailable as exc:
            return _ShardFailed(grpc.StatusCode.UNAVAILABLE, str(exc))
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = f"shard {shard} of this supervisor did not answer: {details}"
            return _ShardFailed(exc.code(), details)

    async def _call_shard(self, shard: int, method: str, request: Any, context: Any) -> Any:
        answer = await self._ask_shard(shard, method, request, context)
        if isinstance(answer, _ShardFailed):
            await context.abort(answer.code, answer.details)
        return answer

    async def _route(self, method: str, request: Any, context: Any) -> Any:
        shard = self.router.owner(request.run)
        if shard == self.router.index:
            return await getattr(super(), method)(request, context)
        if self.router.index != 0:  # a child never forwards: no call can go round in a loop
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"run {request.run!r} belongs to shard {shard} of this supervisor; send operator calls to its front "
                f"door (port {self.router.ports.get(0)})",
            )
        return await self._call_shard(shard, method, request, context)

    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        here = self.router.index
        runs = [run_info(run) for run in self.core.list_runs(request.run_glob) if self.router.owner(run.name) == here]
        if here == 0:  # the front door asks every child; a child answers for itself
            answers = await asyncio.gather(
                *(self._ask_shard(shard, "ListRuns", request, context) for shard in range(1, self.router.count))
            )
            failed = [answer for answer in answers if isinstance(answer, _ShardFailed)]
            if failed:  # one status for the call, naming every shard that did not answer
                await context.abort(failed[0].code, "; ".join(answer.details for answer in failed))
            for answer in answers:
                runs.extend(answer.runs)
            runs.sort(key=lambda info: info.run)
        return pb.ListRunsResponse(runs=runs)

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
    started: float = 0.0
    output: asyncio.Task[None] | None = None
    pause: float = FIRST_RESTART_PAUSE
    """Seconds to wait before its next restart: doubles while it keeps dying young, its own (a child that
    crashes in a loop must not hold back another's restart)."""


class ShardProcesses:
    """Shards 1..N-1 as child processes of the front door: started before it serves, restarted if they die
    (each after a pause of its own that doubles while it keeps dying young), stopped with it. Each child prints
    ``listening on HOST:PORT``; its other output is passed on, prefixed."""

    def __init__(self, router: Router, argv_for: Callable[[int], list[str]], env: dict[str, str]) -> None:
        self.router = router
        self._env = env
        self.children = [ChildShard(index=k, argv=argv_for(k)) for k in range(1, router.count)]
        self._stopping = False
        self._keepers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        try:
            await asyncio.gather(*(self._spawn(child) for child in self.children))
        except BaseException:
            await self.stop()
            raise
        self._keepers = [asyncio.create_task(self._keep_alive(c), name=f"keep-shard-{c.index}") for c in self.children]

    async def _spawn(self, child: ChildShard) -> None:
        process = child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env=self._env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the front door, which stops them in order
        )
        child.started = time.monotonic()
        assert process.stdout is not None
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        output = _pass_on(process.stdout, child.index, listening)
        child.output = asyncio.create_task(output, name=f"shard-{child.index}")
        try:
            port = await asyncio.wait_for(asyncio.shield(listening), START_TIMEOUT)
        except BaseException as exc:
            if isinstance(exc, EOFError):  # it closed its output to exit: killing it now (Popen.send_signal polls)
                with contextlib.suppress(TimeoutError):  # could reap it under asyncio's watcher, losing its code
                    await asyncio.wait_for(process.wait(), EXIT_GRACE)
            if process.returncode is None:  # never two processes on one shard's file
                process.kill()
            code = await process.wait()
            if isinstance(exc, TimeoutError):
                raise OSError(f"shard {child.index} did not start serving within {START_TIMEOUT:g}s") from None
            if isinstance(exc, EOFError):
                message = f"shard {child.index} exited with code {code} before serving (its error is above)"
                raise OSError(message) from None
            raise
        self.router.ports[child.index] = port
        log.info("shard %d of %d serves on port %d (pid %d)", child.index, self.router.count, port, process.pid)

    async def _keep_alive(self, child: ChildShard) -> None:
        """Restart ``child`` whenever it exits, until the front door stops."""
        while not self._stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            self.router.ports.pop(child.index, None)
            young = time.monotonic() - child.started < 30
            child.pause = min(child.pause * 2, MAX_RESTART_PAUSE) if young else FIRST_RESTART_PAUSE
            log.error("shard %d exited with code %s; restarting it in %.0fs", child.index, code, child.pause)
            while not self._stopping:
                await asyncio.sleep(child.pause)
                try:
                    await self._spawn(child)
                    break
                except Exception as exc:  # never give up on a shard; only an OSError is expected here
                    child.pause = min(child.pause * 2, MAX_RESTART_PAUSE)
                    log.error("%s; retrying in %.0fs", exc, child.pause, exc_info=not isinstance(exc, OSError))

    def hangup(self) -> None:
        """Pass SIGHUP (reload the policies file) on to every child."""
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signal.SIGHUP)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for keeper in self._keepers:
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)  # none is left half-way through a spawn
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
        await asyncio.gather(*(c.output for c in self.children if c.output is not None), return_exceptions=True)
        await self.router.close()


async def _pass_on(stdout: asyncio.StreamReader, index: int, listening: asyncio.Future[int]) -> None:
    """Print a child's lines, prefixed; its ``listening on HOST:PORT`` line sets ``listening`` to the port
    (EOFError if it exits first)."""
    while line := await stdout.readline():
        text = line.decode(errors="replace").rstrip()
        if text.startswith("listening on ") and not listening.done():
            listening.set_result(int(text.rpartition(":")[2]))
        else:
            print(f"shard {index}: {text}", flush=True)
    if not listening.done():
        listening.set_exception(EOFError())


def child_env(token: str | None) -> dict[str, str]:
    """The children's environment: this one's, with the token passed there rather than on a command line."""
    env = dict(os.environ)
    if token:
        env["SUPERVISOR_TOKEN"] = token
    return env


def child_argv(
    config: ServerConfig, index: int, front_port: int, rules: Sequence[PopulationRule], socket: str | None = None
) -> list[str]:
    """The command line of shard ``index``: a ``serve`` of its own (on ``--shard-ports``' port for it, or a free
    one), without an HTTP gateway, given the front door's settings and routing rules (and with TLS, the Unix
    ``socket`` for the front door's forwarded calls)."""
    port = config.shard_ports + index - 1 if config.shard_ports else 0
    argv = [sys.executable, "-m", "supervisor", "serve", "--host", config.host, "--port", str(port), "--no-http",
            "--db", str(shard_db(config.db, index)), "--db-writer", config.db_writer,
            "--shard", f"{index}/{config.shards}",
            "--front-port", str(front_port), "--front-pid", str(os.getpid()), "--routing", rules_to_text(rules),
            "--max-metric-messages", repr(config.max_metric_messages), "--ack-delay", repr(config.ack_delay),
            "--log-level", config.log_level]
    if config.policy_config is not None:
        argv += ["--config", str(config.policy_config)]
    if config.tls_cert is not None and config.tls_key is not None:
        argv += ["--tls-cert", str(config.tls_cert), "--tls-key", str(config.tls_key)]
    if socket is not None:
        argv += ["--internal-socket", socket]
    if config.metrics_port is not None:
        argv += ["--metrics-port", str(config.metrics_port + index if config.metrics_port else 0)]
        if config.metrics_host:
            argv += ["--metrics-host", config.metrics_host]
    return argv
