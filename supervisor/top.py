"""``supervisor top``: a live terminal view of the runs a supervisor knows.

Polls ``OperatorService.ListRuns`` every ``refresh`` seconds (and ``GetHistory``
of a run when its version moved, for each parameter's last change) and shows,
per run: connection (ranks / world size), step and step rate, key metrics with a
short sparkline kept client-side, parameters with the source and age of their
last change, and changes not yet acknowledged by every connected rank.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import grpc
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from trainer_sdk._tls import secure_or_insecure_channel, tls_trust
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc

__all__ = ["TopView", "run_top", "sparkline"]

SPARK_CHARS = "▁▂▃▄▅▆▇█"
SPARK_LENGTH = 24
"""Samples kept per metric (one per refresh) for the trend column."""

KEY_METRICS = ("loss", "val_loss", "eval_loss", "train_loss", "accuracy", "acc", "val_acc", "grad_norm", "lr")
"""Shown first, in this order; then the others alphabetically, up to MAX_METRICS."""

MAX_METRICS = 6
HISTORY_MAX_AGE = 30.0
"""Seconds after which a run's history is fetched again even if its version did not move."""

_CHANGE_KINDS = (pb.CHANGE_KIND_SET, pb.CHANGE_KIND_ADOPT)
_OUTCOME = {pb.RUN_OUTCOME_COMPLETED: "completed", pb.RUN_OUTCOME_FAILED: "failed"}


def sparkline(values: Iterable[float], length: int = SPARK_LENGTH) -> str:
    """The last ``length`` values as block characters scaled between their min and max; NaN/inf as ``!``."""
    window = list(values)[-length:]
    finite = [v for v in window if math.isfinite(v)]
    if not finite:
        return "!" * len(window)
    low, high = min(finite), max(finite)
    span = high - low
    out = []
    for v in window:
        if not math.isfinite(v):
            out.append("!")
        elif span <= 0:
            out.append(SPARK_CHARS[0])
        else:
            out.append(SPARK_CHARS[min(len(SPARK_CHARS) - 1, int((v - low) / span * len(SPARK_CHARS)))])
    return "".join(out)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _param_value(value: pb.ParamValue) -> str:
    kind = value.WhichOneof("kind")
    if kind == "float_value":
        return _number(value.float_value)
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "string_value":
        return value.string_value
    return "-"


@dataclass
class _RunCache:
    trends: dict[str, deque[float]] = field(default_factory=dict)
    history_version: int | None = None
    history_time: float = 0.0
    last_change: dict[str, tuple[str, float]] = field(default_factory=dict)  # param -> (source, time)


class TopView:
    """Fetches from a supervisor and renders frames; keeps the client-side trends and history cache."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls_ca: str | None = None,
        run_glob: str = "",
        timeout: float = 5.0,
    ) -> None:
        self.address = address
        self.run_glob = run_glob
        self.timeout = timeout
        self._channel = secure_or_insecure_channel(address, tls_trust(tls_ca))
        self._stub = pb_grpc.OperatorServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._runs: dict[str, _RunCache] = {}

    def close(self) -> None:
        self._channel.close()

    def fetch(self) -> list[pb.RunInfo]:
        """One poll: ListRuns, then GetHistory for runs whose version moved. Raises grpc.RpcError."""
        runs = list(
            self._stub.ListRuns(
                pb.ListRunsRequest(run_glob=self.run_glob), metadata=self._metadata, timeout=self.timeout
            ).runs
        )
        now = time.time()
        for info in runs:
            cache = self._runs.setdefault(info.run, _RunCache())
            for name, value in info.latest_metrics.items():
                trend = cache.trends.get(name)
                if trend is None:
                    trend = cache.trends[name] = deque(maxlen=SPARK_LENGTH)
                trend.append(value)
            if cache.history_version != info.version or now - cache.history_time > HISTORY_MAX_AGE:
                try:
                    entries = self._stub.GetHistory(
                        pb.GetHistoryRequest(run=info.run), metadata=self._metadata, timeout=self.timeout
                    ).entries
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    entries = []
                cache.last_change = _last_changes(entries)
                cache.history_version = info.version
                cache.history_time = now
        known = {info.run for info in runs}
        for name in list(self._runs):
            if name not in known:
                del self._runs[name]
        return runs

    # -- rendering --------------------------------------------------------------------------------------

    def render(self, runs: Sequence[pb.RunInfo], *, now: float | None = None) -> RenderableType:
        now = time.time() if now is None else now
        table = Table(expand=True, show_lines=True, header_style="bold")
        table.add_column("run", style="bold cyan", no_wrap=True)
        table.add_column("trainers", no_wrap=True)
        table.add_column("step", justify="right", no_wrap=True)
        table.add_column("metrics (latest, trend)")
        table.add_column("parameters (last change)")
        table.add_column("pending", no_wrap=True)
        for info in runs:
            cache = self._runs.get(info.run, _RunCache())
            table.add_row(
                info.run,
                self._connection(info, now),
                f"{info.last_step if info.last_step >= 0 else '-'}\n{info.step_rate:.1f}/s",
                self._metrics(info, cache),
                self._params(info, cache, now),
                self._pending(info),
            )
        title = Text.assemble(
            ("supervisor top", "bold"),
            f"  {self.address}  ",
            f"{len(runs)} run{'s' if len(runs) != 1 else ''}",
            f"  {datetime.fromtimestamp(now):%H:%M:%S}",
        )
        if not runs:
            body: RenderableType = Text("no runs yet" + (f" matching {self.run_glob!r}" if self.run_glob else ""))
            return Panel(body, title=title, title_align="left")
        return Group(title, table)

    @staticmethod
    def _connection(info: pb.RunInfo, now: float) -> Text:
        if info.connected:
            return Text(f"{info.connected_ranks}/{info.world_size}", style="green")
        state = _OUTCOME.get(info.outcome, "disconnected")
        seen = f"\n{_age(now - info.last_seen)} ago" if info.last_seen else ""
        return Text(f"{state}{seen}", style="yellow" if state == "completed" else "red")

    @staticmethod
    def _metrics(info: pb.RunInfo, cache: _RunCache) -> Text:
        names = _key_metrics(info.latest_metrics)
        text = Text()
        width = max((len(n) for n in names), default=0)
        for i, name in enumerate(names):
            value = info.latest_metrics[name]
            if i:
                text.append("\n")
            text.append(f"{name:<{width}} ")
            text.append(f"{_number(value):>9} ", style="red" if not math.isfinite(value) else "")
            text.append(sparkline(cache.trends.get(name, ())), style="magenta")
        hidden = len([n for n in info.latest_metrics if not _is_telemetry(n)]) - len(names)
        gpu = _gpu_summary(info.latest_metrics)
        if gpu:
            text.append(("\n" if names else "") + gpu, style="dim")
        if hidden > 0:
            text.append(f"\n(+{hidden} more)", style="dim")
        return text

    @staticmethod
    def _params(info: pb.RunInfo, cache: _RunCache, now: float) -> Text:
        text = Text()
        pinned = set(info.pinned)
        for i, name in enumerate(sorted(info.values)):
            if i:
                text.append("\n")
            text.append(f"{name}=", style="bold")
            text.append(_param_value(info.values[name]))
            if name in pinned:
                text.append("*", style="yellow")
            change = cache.last_change.get(name)
            if change is not None:
                source, when = change
                text.append(f"  {source} {_age(now - when)} ago", style="dim")
        return text

    @staticmethod
    def _pending(info: pb.RunInfo) -> Text:
        pending = info.version - info.acked_version
        if pending <= 0:
            return Text(f"v{info.version} ✓", style="green")
        return Text(f"{pending} pending\nv{info.version}, acked v{info.acked_version}", style="yellow")


def _is_telemetry(name: str) -> bool:
    return name.startswith(("gpu", "host_"))


def _key_metrics(latest: Mapping[str, float]) -> list[str]:
    names = [n for n in KEY_METRICS if n in latest]
    names += sorted(n for n in latest if n not in names and not _is_telemetry(n))
    return names[:MAX_METRICS]


def _gpu_summary(latest: Mapping[str, float]) -> str:
    """``gpu0 87% 245W 61°C`` per device, or the host's CPU and memory."""
    parts = []
    index = 0
    while f"gpu{index}_utilization_ratio" in latest or f"gpu{index}_memory_used_bytes" in latest:
        util = latest.get(f"gpu{index}_utilization_ratio")
        memory = latest.get(f"gpu{index}_memory_used_bytes")
        power = latest.get(f"gpu{index}_power_watts")
        items = [f"gpu{index}"]
        if util is not None:
            items.append(f"{util * 100:.0f}%")
        if memory is not None:
            items.append(f"{memory / 2**30:.1f}GiB")
        if power is not None:
            items.append(f"{power:.0f}W")
        parts.append(" ".join(items))
        index += 1
    if not parts and "host_cpu_utilization_ratio" in latest:
        parts.append(f"host cpu {latest['host_cpu_utilization_ratio'] * 100:.0f}%")
    return "  ".join(parts)


def _last_changes(entries: Iterable[pb.HistoryEntry]) -> dict[str, tuple[str, float]]:
    out: dict[str, tuple[str, float]] = {}
    for entry in entries:  # oldest first: later entries win
        if entry.kind in _CHANGE_KINDS:
            for change in entry.changes:
                out[change.name] = (entry.source, entry.time)
    return out


def _error_message(address: str, exc: grpc.RpcError, refresh: float | None) -> Text:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        what = f"the supervisor at {address} refused the token: {details}"
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        what = (
            f"cannot reach a supervisor at {address} ({details}); start one with `supervisor serve` "
            "or pass --address / $SUPERVISOR_ADDR"
        )
    else:
        what = f"the supervisor at {address} answered {code.name if code else 'an error'}: {details}"
    if refresh is not None:
        what += f"\nretrying every {refresh:g}s (Ctrl-C to quit)"
    return Text(what, style="bold red")


def run_top(
    address: str,
    *,
    token: str | None = None,
    tls_ca: str | None = None,
    refresh: float = 1.0,
    run_glob: str = "",
    once: bool = False,
    console: Console | None = None,
) -> int:
    """Show the live view until Ctrl-C (return 0); with ``once``, print one frame and return.

    ``token`` (default ``$SUPERVISOR_TOKEN``) is sent as ``authorization: Bearer <token>``; ``tls_ca`` (default
    ``$SUPERVISOR_TLS_CA``) connects over TLS (see ``OperatorClient``).

    ``once`` returns 0 after a frame, 1 if the supervisor could not be reached
    (the message is printed). In live mode an unreachable supervisor is shown as
    a message and polled again every ``refresh`` seconds; a refused token ends
    the view with 1.
    """
    if not refresh > 0:
        raise ValueError(f"refresh must be positive seconds but got {refresh}")
    console = console if console is not None else Console()
    token = token or os.environ.get("SUPERVISOR_TOKEN") or None
    view = TopView(address, token=token, tls_ca=tls_ca, run_glob=run_glob, timeout=max(2.0, min(10.0, 2 * refresh)))
    try:
        if once:
            try:
                runs = view.fetch()
            except grpc.RpcError as exc:
                console.print(_error_message(address, exc, None))
                return 1
            console.print(view.render(runs))
            return 0
        with Live(console=console, auto_refresh=False, transient=False, redirect_stdout=False) as live:
            while True:
                started = time.monotonic()
                try:
                    frame = view.render(view.fetch())
                except grpc.RpcError as exc:
                    frame = Panel(_error_message(address, exc, refresh), title="supervisor top", title_align="left")
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                        live.update(frame, refresh=True)
                        return 1
                live.update(frame, refresh=True)
                time.sleep(max(0.0, refresh - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
    finally:
        view.close()


def _main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - the CLI calls run_top directly
    import argparse

    parser = argparse.ArgumentParser(prog="python -m supervisor.top")
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--token", default=None)
    parser.add_argument("--refresh", type=float, default=1.0)
    parser.add_argument("--glob", default="")
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    return run_top(args.address, token=args.token, refresh=args.refresh, run_glob=args.glob, once=args.once)


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(_main())
