"""Building and running the supervisor's gRPC server."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from supervisor import gc_tuning
from supervisor.core import Supervisor
from supervisor.http_gateway import HttpGateway
from supervisor.services import UNAUTHENTICATED_DETAILS, OperatorService, TrainerService
from supervisor.sharding import (
    PopulationRule,
    RoutedOperatorService,
    Router,
    ShardProcesses,
    child_argv,
    child_env,
)
from supervisor.storage import Database
from supervisor.tls import RotatingCertificate, TlsError
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc

log = logging.getLogger("supervisor")

CERTIFICATE_CHECK_SECONDS = 5.0
"""How often the HTTP gateway's TLS certificate files are checked for a renewed pair."""

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest message accepted; a trainer batches at most 512 points per message, far below it."""

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),
]


@dataclass(kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    db: Path = Path("supervisor.db")
    db_writer: str = "thread"
    """Where the database's writes run: "thread" (in this process) or "process" (a child of it); see ``Database``."""
    token: str | None = None
    metrics_host: str | None = None
    metrics_port: int | None = None
    policy_config: Path | None = None
    max_metric_messages: float = 1000.0
    """Metric batches per second over all trainers; the supervisor paces trainers to stay under it."""
    ack_delay: float = 2.0
    """How late a trainer that does not wait for it may hear that its points are stored (0: at once)."""
    http_port: int | None = None
    """The operator HTTP/JSON gateway's port on ``host`` (0: a free one); None: no gateway."""
    http_optional: bool = False
    """If the HTTP port is taken, log it and serve without the gateway (for a default nobody asked for)."""
    shards: int = 1
    """Processes sharing the runs (see ``supervisor.sharding``); this one is ``shard`` of them."""
    shard: int = 0
    """0: the front door, which starts the others; above 0: a child started by the front door."""
    front_port: int | None = None
    """A child's: the front door's gRPC port, where it sends trainers of runs it does not own."""
    front_pid: int | None = None
    """A child's: the front door's pid; the child stops when it is no longer its parent."""
    routing: list[PopulationRule] | None = None
    """A child's: the front door's population rules, so that every process agrees who owns a run."""
    shard_ports: int | None = None
    """The front door's: shard k (1..N-1) listens on ``shard_ports + k - 1``; None: free ports."""
    log_level: str = "INFO"
    tls_cert: Path | None = None
    """PEM certificate (chain): gRPC and the HTTP gateway speak TLS only. Needs ``tls_key``."""
    tls_key: Path | None = None
    internal_socket: str | None = None
    """A child's, with TLS: a Unix socket where it also serves the front door's forwarded calls."""


class TokenAuth(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every call but health checks."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(deny)

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(details)
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                supplied = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(supplied, self._expected):
                    return await continuation(details)
        return self._deny_stream if details.method.endswith("/Connect") else self._deny_unary


def _certificate(config: ServerConfig) -> RotatingCertificate | None:
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise TlsError("--tls-cert and --tls-key go together: give the certificate and its private key")
    return RotatingCertificate(config.tls_cert, config.tls_key)


class SupervisorServer:
    """The process's parts, started and stopped together."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.certificate = _certificate(config)  # before the database: a mistake here leaves no file behind
        self.db = Database(config.db, writer=config.db_writer)
        self.metrics: Any = None
        self.metrics_address: tuple[str, int] | None = None
        self.http_port: int | None = None
        if config.metrics_port is not None:
            from supervisor.observability import SupervisorMetrics

            self.metrics = SupervisorMetrics()
        self.core = Supervisor(
            self.db,
            metrics=self.metrics,
            max_metric_messages=config.max_metric_messages,
            ack_delay=config.ack_delay,
        )
        self.policy_host: Any = None
        if config.policy_config is not None:
            from supervisor.policy_host import PolicyHost

            self.policy_host = PolicyHost.from_file(config.policy_config, self.core)
        self.router: Router | None = None
        if config.shards > 1:
            bindings = self.policy_host.engine.bindings if self.policy_host is not None else []
            rules = config.routing
            if rules is None:
                rules = [PopulationRule.of(b) for b in bindings if b.scope == "population"]
            self.router = Router(
                index=config.shard, count=config.shards, population=rules, host=config.host, token=config.token
            )
        interceptors = [TokenAuth(config.token)] if config.token else []
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        pb_grpc.add_TrainerServiceServicer_to_server(TrainerService(self.core, self.router), self.server)
        operator = OperatorService(self.core) if self.router is None else RoutedOperatorService(self.core, self.router)
        pb_grpc.add_OperatorServiceServicer_to_server(operator, self.server)
        tls_context = self.certificate.context if self.certificate is not None else None
        self.http = HttpGateway(operator, token=config.token, tls=tls_context) if config.http_port is not None else None
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if self.certificate is None:
            self.port = self.server.add_insecure_port(f"{config.host}:{config.port}")
        else:
            self.port = self.server.add_secure_port(f"{config.host}:{config.port}", self.certificate.grpc_credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {config.host}:{config.port}")
        if config.internal_socket is not None:  # a child with TLS: the front door's calls come this way
            if self.server.add_insecure_port(f"unix:{config.internal_socket}") == 0:
                raise OSError(f"cannot listen on the Unix socket {config.internal_socket}")
        self._socket_dir: str | None = None
        self._certificate_watch: asyncio.Task[None] | None = None
        if self.router is not None and config.shard == 0 and self.certificate is not None:
            _remove_stale_socket_dirs()
            self._socket_dir = tempfile.mkdtemp(prefix=f"{_SOCKET_DIR_PREFIX}{os.getpid()}-")  # 0700: this user's only
            self.router.sockets = {k: f"{self._socket_dir}/shard{k}.sock" for k in range(1, config.shards)}
            longest = max(self.router.sockets.values(), key=len)
            if len(longest.encode()) > _MAX_UNIX_SOCKET_PATH:
                self._remove_socket_dir()
                raise OSError(
                    f"the shards' socket path {longest} is longer than the {_MAX_UNIX_SOCKET_PATH} bytes a Unix "
                    "socket allows: point TMPDIR at a folder with a shorter path"
                )
        self.shards: ShardProcesses | None = None
        if self.router is not None:
            self.router.ports[0] = self.port if config.shard == 0 else (config.front_port or 0)
            if config.shard == 0:
                self.shards = ShardProcesses(self.router, self._child_argv, child_env(config.token))

    def _child_argv(self, index: int) -> list[str]:
        assert self.router is not None
        socket = self.router.sockets.get(index)
        return child_argv(self.config, index, front_port=self.port, rules=self.router.population, socket=socket)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:  # e.g. the HTTP port is taken: leave no child shard and no socket folder behind
            if self.shards is not None:
                await self.shards.stop()
            self._remove_socket_dir()
            raise

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    async def _start(self) -> None:
        if self.shards is not None:  # before this one serves: it redirects trainers to them
            await self.shards.start()
        await self.core.start()
        if self.router is not None:
            self._warn_of_foreign_runs(self.router)
        if self.policy_host is not None:
            await self.policy_host.start()
        if self.metrics is not None:
            self.metrics_address = self.metrics.serve(
                self.config.metrics_host or self.config.host, self.config.metrics_port or 0
            )
        if self.http is not None:
            await self._start_http(self.http)
            if self.certificate is not None:
                self._certificate_watch = asyncio.create_task(self._watch_certificate(self.certificate), name="tls")
        await self.server.start()
        await _set_health(self.health, health_pb2.HealthCheckResponse.SERVING)

    def warn_of_new_routing(self) -> None:
        """After a reload at the front door: say which population policies' runs would now be placed elsewhere."""
        assert self.router is not None and self.policy_host is not None
        now = [PopulationRule.of(b) for b in self.policy_host.engine.bindings if b.scope == "population"]
        if now != list(self.router.population):
            changed = sorted({rule.id for rule in set(now) ^ set(self.router.population)}) or [r.id for r in now]
            log.warning(
                "the reloaded policies file changes which runs are kept together (population policies: %s), but runs "
                "stay on the shards they have until the front door restarts; until then such a policy sees only the "
                "runs of its own shard",
                ", ".join(changed),
            )

    def _warn_of_foreign_runs(self, router: Router) -> None:
        foreign = sorted(name for name in self.core.runs if router.owner(name) != router.index)
        if foreign:
            log.warning(
                "%s holds %d run(s) that shard %d of %d does not own (the number of shards changed?): %s; they "
                "are not listed or served here, and their history stays in this file",
                self.config.db, len(foreign), router.index, router.count, ", ".join(foreign[:5]),
            )

    async def _start_http(self, http: HttpGateway) -> None:
        port = self.config.http_port or 0
        try:
            self.http_port = await http.start(self.config.host, port)
        except OSError as exc:
            if not self.config.http_optional:
                raise OSError(f"cannot serve HTTP on {self.config.host}:{port}: {exc.strerror or exc}") from None
            log.warning(
                "no HTTP gateway: port %d on %s is taken (%s); pass --http-port PORT to choose another",
                port,
                self.config.host,
                exc.strerror or exc,
            )
            self.http = None

    @property
    def http_url(self) -> str | None:
        """``http(s)://HOST:PORT`` of the operator gateway, for ``--address`` / $SUPERVISOR_ADDR; None without one."""
        if self.http is None or self.http_port is None:
            return None
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{'https' if self.certificate is not None else 'http'}://{host}:{self.http_port}"

    async def _watch_certificate(self, certificate: RotatingCertificate) -> None:
        """The HTTP gateway's certificate follows its files (gRPC checks them before each new connection)."""
        while True:
            await asyncio.sleep(CERTIFICATE_CHECK_SECONDS)
            certificate.refresh()

    async def stop(self, grace: float = 2.0) -> None:
        if self._certificate_watch is not None:
            self._certificate_watch.cancel()
        await _set_health(self.health, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.http is not None:
            await asyncio.gather(self.server.stop(grace), self.http.stop(grace))
        else:
            await self.server.stop(grace)
        await self.core.drain()  # calls whose clients left mid-way, before what they use stops
        if self.shards is not None:
            await self.shards.stop()
        elif self.router is not None:
            await self.router.close()
        if self.policy_host is not None:
            await self.policy_host.stop()
        await self.core.stop()
        if self.metrics is not None:
            self.metrics.close()
        self.db.close()
        self._remove_socket_dir()


_SOCKET_DIR_PREFIX = "supervisor-shards-"
_MAX_UNIX_SOCKET_PATH = 107  # sockaddr_un.sun_path on Linux, its final NUL aside


def _remove_stale_socket_dirs() -> None:
    """Remove this user's shard socket folders whose front door is gone (killed with SIGKILL: no cleanup ran).

    A folder is named after its front door's pid; one whose process no longer
    exists has no reader. A reused pid keeps its folder: harmless, it is empty.
    """
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{_SOCKET_DIR_PREFIX}*-*"):
        pid = folder.name[len(_SOCKET_DIR_PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # gone meanwhile, or a process of another user: not ours to judge
            continue


async def _set_health(servicer: Any, status: int) -> None:
    for service in ("", "trainer_sdk.protocol.v1.TrainerService", "trainer_sdk.protocol.v1.OperatorService"):
        result = servicer.set(service, status)
        if asyncio.iscoroutine(result):
            await result


async def _stop_when_orphaned(stop: asyncio.Event, front_pid: int | None, interval: float = 1.0) -> None:
    """A child shard stops when the front door that started it is gone, however it went (even before the
    child was serving: the front door's pid comes on its command line)."""
    parent = front_pid or os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(interval)
    log.error("the front door (pid %d) is gone; stopping", parent)
    stop.set()


async def serve(config: ServerConfig, *, ready: Callable[[SupervisorServer], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # before anyone can know our address
        loop.add_signal_handler(signum, stop.set)
    server = SupervisorServer(config)

    async def hangup() -> None:  # reload the policies file, in every shard
        if server.shards is not None:
            server.shards.hangup()
        if server.policy_host is not None:
            if await server.policy_host.reload() and server.shards is not None:
                server.warn_of_new_routing()
            gc_tuning.unfreeze()

    if server.policy_host is not None or config.shards > 1:  # a child without policies must not die of it
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(hangup()))
    await server.start()
    gc_tuning.tune_collector()
    collector = asyncio.create_task(gc_tuning.collect_periodically(), name="gc")
    orphan_watch = None
    if config.shard > 0:
        orphan_watch = asyncio.create_task(_stop_when_orphaned(stop, config.front_pid), name="parent")
    if server.http_url is not None:  # before the listening line: whoever waits for that one finds it
        print(f"http gateway on {server.http_url}", flush=True)
    print(f"listening on {config.host}:{server.port}", flush=True)
    if server.metrics_address is not None:
        metrics_host, metrics_port = server.metrics_address
        print(f"metrics on http://{metrics_host}:{metrics_port}/metrics", flush=True)
    if ready is not None:
        ready(server)
    await stop.wait()
    log.info("shutting down")
    collector.cancel()
    if orphan_watch is not None:
        orphan_watch.cancel()
    await server.stop()
    print("stopped", file=sys.stderr, flush=True)
