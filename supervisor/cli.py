"""The ``supervisor`` command: serve, and talk to a running supervisor.

Client commands are started by people and scripts for one call each, so
process start-up is most of their latency. Given an ``http://`` address (the
supervisor's HTTP gateway) a client command runs on the standard library
alone: this module imports grpc, protobuf, asyncio, logging and the server
only on the paths that need them (tests/core/test_http_gateway.py checks it).
Both paths see replies in proto3 JSON form and share the formatting below.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from supervisor._address import DEFAULT_ADDRESS, default_address, is_http

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which a one-shot command would pay for
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from typing import Any

_KIND = {
    "CHANGE_KIND_SET": "set",
    "CHANGE_KIND_TRIGGER": "trigger",
    "CHANGE_KIND_ADOPT": "adopt",
    "CHANGE_KIND_PROPOSAL": "proposal",
    "CHANGE_KIND_REFUSED": "refused",
    "CHANGE_KIND_POLICY_ERROR": "policy-error",
    "CHANGE_KIND_RELEASE": "release",
}
_OUTCOME = {"RUN_OUTCOME_COMPLETED": "completed", "RUN_OUTCOME_FAILED": "failed"}


class UsageError(Exception):
    pass


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _seconds(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if not is_http(getattr(args, "address", "")):  # the HTTP path logs nothing: spare it logging's import
        import logging

        shard = getattr(args, "shard", None)  # a child shard's lines say which one it is
        logging.basicConfig(
            level=getattr(args, "log_level", "WARNING").upper(),
            format="%(asctime)s %(levelname)s %(name)s" + (f"[shard {shard[0]}]" if shard else "") + ": %(message)s",
        )
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        failure = _call_failure(exc)
        if failure is None:
            raise
        code, details = failure
        address = getattr(args, "address", "")
        tls = getattr(args, "tls_ca", None) or os.environ.get("SUPERVISOR_TLS_CA") or address.startswith("https")
        tls_failed = plaintext_refused = False
        if tls or not is_http(address):  # plain http:// stays on the standard library, its refusals too
            from trainer_sdk._tls import closed_at_hello, handshake_failed

            tls_failed = bool(tls) and handshake_failed(details)
            plaintext_refused = not getattr(args, "tls_ca", None) and closed_at_hello(details)
        if code in ("UNAVAILABLE", "UNKNOWN") and tls_failed:
            print(
                f"error: the TLS handshake with {args.address} failed ({details}); pass the certificate authority "
                "that signed the supervisor's certificate (or that certificate) with --tls-ca / $SUPERVISOR_TLS_CA, "
                "and check that the supervisor serves TLS (--tls-cert) with a certificate for the host you dial",
                file=sys.stderr,
            )
        elif (
            code == "DEADLINE_EXCEEDED"
            and args.command in ("set", "trigger", "release")
            and "is recorded" not in details  # the client gave up; not the server's answer to --wait
        ):
            print(
                f"error: no answer in time ({details}); the supervisor carries out a change it received even when "
                f"its caller gives up, so check `supervisor history` before sending it again",
                file=sys.stderr,
            )
        elif code == "UNAVAILABLE" and "of this supervisor" not in details:  # nobody answered (not a shard's state)
            hint = ""
            if plaintext_refused:
                hint = "; if the supervisor serves TLS (--tls-cert), pass --tls-ca / $SUPERVISOR_TLS_CA"
            print(
                f"error: no supervisor answers at {args.address} ({details}); start one with "
                f"`supervisor serve` or pass --address / $SUPERVISOR_ADDR{hint}",
                file=sys.stderr,
            )
        else:
            print(f"error: {details}", file=sys.stderr)
        return 1


def _call_failure(exc: BaseException) -> tuple[str, str] | None:
    """(status name, details) of a failed call over either transport; None for any other exception."""
    from supervisor.http_client import OperatorError

    if isinstance(exc, OperatorError):
        return exc.code, exc.details
    grpc = sys.modules.get("grpc")  # loaded if and only if the gRPC path ran
    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        return (code.name if code is not None else "UNKNOWN"), (exc.details() if hasattr(exc, "details") else str(exc))
    return None


COMMANDS = ("serve", "runs", "set", "trigger", "release", "history", "metrics", "export", "top", "replay")


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``only``, just that command's part (building all of it costs a one-shot
    command several milliseconds, and its usage, help and errors read the same either way)."""
    parser = argparse.ArgumentParser(
        prog="supervisor", description="Closed-loop supervision of training runs.", formatter_class=_Formatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def want(name: str) -> bool:
        return only is None or only == name

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        p.add_argument(
            "--address",
            default=default_address(),
            help=f"supervisor address: gRPC's HOST:PORT, or http://HOST:PORT of its HTTP gateway, which answers "
            f"a one-shot command several times faster (default: $SUPERVISOR_ADDR, then {DEFAULT_ADDRESS})",
        )
        p.add_argument("--token", default=None, help="auth token (default: $SUPERVISOR_TOKEN)")
        p.add_argument(
            "--tls-ca",
            default=None,
            metavar="PEM",
            help="connect over TLS, trusting this certificate authority's (or the supervisor's self-signed) "
            "certificate, or 'system' for the system's roots (default: $SUPERVISOR_TLS_CA; an https:// address "
            "without it uses the system's roots)",
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    if want("serve"):
        p = sub.add_parser(
            "serve",
            formatter_class=_Formatter,
            help="run the supervisor",
            description="Run the supervisor: gRPC for trainers and operators on --host:--port, and the operator API "
            "as HTTP/JSON (POST /v1/<Method>) on --host:--http-port, which `supervisor` commands given "
            "--address http://HOST:PORT use to answer without importing gRPC. It prints `http gateway on URL`, then "
            "`listening on HOST:PORT` once it serves.",
        )
        p.add_argument(
            "--host", default="127.0.0.1", help="address to listen on, for gRPC and HTTP (default 127.0.0.1)"
        )
        p.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 picks a free port)")
        p.add_argument(
            "--http-port",
            type=int,
            default=None,
            help="operator HTTP/JSON gateway port (default: --port + 1, so 50052, and if that one is taken the "
            "server runs without the gateway and says so; with --port 0, a free port; 0 picks a free port)",
        )
        p.add_argument("--no-http", action="store_true", help="serve no HTTP gateway")
        p.add_argument("--db", default="supervisor.db", help="SQLite file (created if missing)")
        p.add_argument("--config", default=None, help="policies file (TOML)")
        p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics here (0: a free port)")
        p.add_argument("--metrics-host", default=None, help="address for /metrics (default: --host)")
        p.add_argument(
            "--max-metric-messages",
            type=_positive_float,
            default=1000.0,
            help="metric batches per second over all trainers (default 1000): each trainer is asked to send at "
            "most every (trainers / this) seconds, so the load stays bounded as trainers are added",
        )
        p.add_argument(
            "--ack-delay",
            type=_seconds,
            default=2.0,
            metavar="SECONDS",
            help="how late a trainer may hear that its points are stored, unless it waits for that (a flush with "
            "a timeout, its close): receipts of a second's batches go together (default 2; 0: after every commit)",
        )
        p.add_argument(
            "--db-writer",
            choices=("thread", "process"),
            default="thread",
            help="where the database's writes run: thread (default) or process, a child process whose SQLite "
            "statements never wait for this one's busy interpreter; for a host with a core to spare (BENCHMARKS.md, "
            "benchmark 5: on 2 shared cores it was no faster under load, and 0.15 ms slower per write when idle)",
        )
        p.add_argument(
            "--token", default=None, help="require this token from every client (default: $SUPERVISOR_TOKEN)"
        )
        p.add_argument(
            "--tls-cert",
            default=None,
            metavar="PEM",
            help="serve gRPC and the HTTP gateway (https://) over TLS only, with this certificate (chain); needs "
            "--tls-key. Clients pass tls_ca= / --tls-ca / $SUPERVISOR_TLS_CA. /metrics stays plain HTTP",
        )
        p.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
        p.add_argument(
            "--shards",
            type=_shard_count,
            default=1,
            help="processes sharing the runs (default 1): this one, the front door, starts the others on free "
            "ports, each with its own SQLite file (supervisor.shard1.db, ...) and /metrics (--metrics-port + i); "
            "trainers and operators use only this one's address (see docs/deployment.md)",
        )
        p.add_argument(
            "--shard-ports",
            type=int,
            default=None,
            metavar="START",
            help="with --shards N: shard i listens on START + i - 1 (fixed ports a firewall or a Kubernetes "
            "Service can name; default: free ports)",
        )
        p.add_argument("--shard", type=_shard_of, default=None, help=argparse.SUPPRESS)  # a child: "K/N"
        p.add_argument("--front-port", type=int, default=None, help=argparse.SUPPRESS)  # a child: shard 0's port
        p.add_argument("--front-pid", type=int, default=None, help=argparse.SUPPRESS)  # a child: shard 0's pid
        p.add_argument("--routing", default=None, help=argparse.SUPPRESS)  # a child: shard 0's population rules
        p.add_argument("--internal-socket", default=None, help=argparse.SUPPRESS)  # a child with TLS: shard 0's way in
        p.add_argument("--log-level", default="INFO")
        p.set_defaults(func=_serve)

    if want("runs"):
        p = client_command("runs", "list runs: connection, step, latest metrics, parameters, version")
        p.add_argument("--glob", default="", help="only runs whose name matches this shell pattern")
        p.set_defaults(func=_runs)

    if want("set"):
        p = client_command("set", "change parameters of a run in one atomic, versioned step")
        p.add_argument("run")
        p.add_argument("assignments", nargs="+", metavar="NAME=VALUE")
        p.add_argument("--reason", default="", help="why; recorded in the history")
        p.add_argument("--at-step", type=int, default=None, help="make it visible at this training step")
        p.add_argument("--wait", action="store_true", help="return once the trainer has applied it")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds --wait waits (default 30)")
        p.set_defaults(func=_set)

    if want("trigger"):
        p = client_command("trigger", "fire a named trigger (checkpoint, stop, rollback, ...)")
        p.add_argument("run")
        p.add_argument("name")
        p.add_argument("--reason", default="")
        p.set_defaults(func=_trigger)

    if want("release"):
        p = client_command("release", "let policies change parameters an operator pinned with `set`")
        p.add_argument("run")
        p.add_argument("params", nargs="*", metavar="PARAM", help="default: every pinned parameter")
        p.set_defaults(func=_release)

    if want("history"):
        p = client_command("history", "every change of a run, with acknowledgements")
        p.add_argument("run")
        p.set_defaults(func=_history)

    if want("metrics"):
        p = client_command("metrics", "the recorded metric stream of a run")
        p.add_argument("run")
        p.add_argument("--name", default="", help="only this metric")
        p.set_defaults(func=_metrics)

    if want("export"):
        p = client_command("export", "write a run's metric stream as JSON lines (the replay input format)")
        p.add_argument("run")
        p.set_defaults(func=_export)

    if want("top"):
        p = client_command("top", "live view of the runs")
        p.add_argument("--refresh", type=float, default=1.0, help="seconds between refreshes")
        p.add_argument("--glob", default="")
        p.add_argument("--once", action="store_true", help="print one frame and exit")
        p.set_defaults(func=_top)

    if want("replay"):
        p = sub.add_parser(
            "replay",
            formatter_class=_Formatter,
            help="run policies over recorded metrics, offline and deterministic",
            description="Run policies over recorded metrics (JSON lines) and print their decisions.",
        )
        p.add_argument("metrics_file", metavar="METRICS.jsonl")
        p.add_argument("--config", required=True, help="policies file (TOML)")
        p.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a parameter's starting value (repeatable)",
        )
        p.add_argument("--json", action="store_true", help="one JSON object per decision")
        p.set_defaults(func=_replay)
    return parser


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, told the terminal's width so that it does not import shutil (and with it
    bz2, lzma and zlib) for every argument of a one-shot command."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, width if width is not None else _columns())


def _columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else the terminal's width, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


# -- serve --------------------------------------------------------------------------------------


def _shard_ports_problem(args: argparse.Namespace) -> str | None:
    """Why ``--shard-ports`` cannot be used with the other ports, or None."""
    if args.shards < 2:
        return "--shard-ports needs --shards 2 or more"
    first, last = args.shard_ports, args.shard_ports + args.shards - 2  # shards 1..N-1
    if not 0 < first <= last < 65536:
        return f"--shard-ports {first} with --shards {args.shards} needs ports {first} to {last}, between 1 and 65535"
    taken = {args.port: "--port"}
    if not args.no_http:
        http = args.http_port if args.http_port is not None else args.port + 1
        taken[http] = "--http-port (default: --port + 1)"
    if args.metrics_port:
        for i in range(args.shards):
            taken[args.metrics_port + i] = "--metrics-port + i (each shard's /metrics)"
    clash = next((port for port in range(first, last + 1) if port in taken), None)
    if clash is not None:
        return f"--shard-ports {first} to {last} include port {clash}, which is {taken[clash]}: choose other ports"
    return None


def _shard_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"must be a whole number of processes from 1 to 64, not {text!r}")
    return count


def _shard_of(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        pair = int(index), int(count)
    except ValueError:
        pair = (0, 0)
    if not 0 < pair[0] < pair[1]:
        raise argparse.ArgumentTypeError(f"must be K/N with 0 < K < N, not {text!r}")
    return pair


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from supervisor.server import ServerConfig, serve
    from supervisor.sharding import rules_from_text

    if args.shard_ports is not None and (problem := _shard_ports_problem(args)):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.no_http:
        http_port, http_optional = None, False
    elif args.http_port is not None:
        if not 0 <= args.http_port < 65536:
            print(f"error: --http-port must be a port number (0 for a free one), not {args.http_port}", file=sys.stderr)
            return 2
        http_port, http_optional = args.http_port, False
    else:
        http_port, http_optional = (args.port + 1 if 0 < args.port < 65535 else 0), True
    config = ServerConfig(
        host=args.host,
        port=args.port,
        http_port=http_port,
        http_optional=http_optional,
        db=Path(args.db),
        db_writer=args.db_writer,
        token=args.token or os.environ.get("SUPERVISOR_TOKEN"),
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        max_metric_messages=args.max_metric_messages / args.shards,  # a child is given its share already
        ack_delay=args.ack_delay,
        policy_config=None if args.config is None else Path(args.config),
        shards=args.shard[1] if args.shard else args.shards,
        shard=args.shard[0] if args.shard else 0,
        front_port=args.front_port,
        front_pid=args.front_pid,
        routing=None if args.routing is None else rules_from_text(args.routing),
        shard_ports=args.shard_ports,
        log_level=args.log_level,
        tls_cert=None if args.tls_cert is None else Path(args.tls_cert),
        tls_key=None if args.tls_key is None else Path(args.tls_key),
        internal_socket=args.internal_socket,
    )
    try:
        asyncio.run(serve(config))
    except Exception as exc:  # a bad config, database, certificate or port: say so, no traceback
        from policies import PolicyConfigError
        from supervisor.storage import StoreError
        from supervisor.tls import TlsError

        if isinstance(exc, PolicyConfigError | StoreError | TlsError | OSError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


# -- client commands ------------------------------------------------------------------------------
#
# Replies arrive in proto3 JSON form over either transport (int64 as strings, doubles' NaN and
# infinities as "NaN" / "Infinity", enums by name, unset message fields absent): the helpers below
# turn them into plain values, so both paths print the same bytes.


def _client(args: argparse.Namespace) -> Any:
    """An object with ``call(method, request, timeout=) -> dict``: the HTTP client for ``http://`` addresses."""
    if is_http(args.address):
        from supervisor.http_client import HttpOperatorClient

        try:
            return HttpOperatorClient(args.address, token=args.token, tls_ca=args.tls_ca)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    from supervisor.client import OperatorClient

    try:
        return OperatorClient(args.address, token=args.token, tls_ca=args.tls_ca)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _parse_assignments(items: Sequence[str]) -> dict[str, str]:
    changes: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{item!r} is not NAME=VALUE")
        if name in changes:
            raise UsageError(f"{name} is given twice")
        changes[name] = value
    return changes


def _int(v: Any) -> int:
    return int(v) if v is not None else 0


def _float(v: Any) -> float:
    return float(v) if v is not None else 0.0


def _value(v: Mapping[str, Any] | None) -> Any:
    """A ParamValue's Python value; None when unset."""
    if v:
        if "floatValue" in v:
            return float(v["floatValue"])
        if "intValue" in v:
            return int(v["intValue"])
        if "boolValue" in v:
            return bool(v["boolValue"])
        if "stringValue" in v:
            return str(v["stringValue"])
    return None


def _fmt_time(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if t else "-"


def _run_row(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "run": r.get("run", ""),
        "connected": bool(r.get("connected")),
        "connected_ranks": _int(r.get("connectedRanks")),
        "world_size": _int(r.get("worldSize")),
        "last_step": _int(r.get("lastStep")),
        "step_rate": round(_float(r.get("stepRate")), 3),
        "latest_metrics": {k: _float(v) for k, v in r.get("latestMetrics", {}).items()},
        "params": {k: _value(v) for k, v in r.get("values", {}).items()},
        "version": _int(r.get("version")),
        "acked_version": _int(r.get("ackedVersion")),
        "pinned": list(r.get("pinned", [])),
        "points_received": _int(r.get("pointsReceived")),
        "points_dropped": _int(r.get("pointsDropped")),
        "outcome": _OUTCOME.get(r.get("outcome")),
        "last_seen": _float(r.get("lastSeen")),
    }


def _runs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows = [_run_row(r) for r in client.call("ListRuns", {"runGlob": args.glob}).get("runs", [])]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs yet")
    for row in rows:
        state = (
            f"connected {row['connected_ranks']}/{row['world_size']}"
            if row["connected"]
            else (row["outcome"] or "disconnected")
        )
        print(f"{row['run']}  [{state}]  step {row['last_step']}  v{row['version']} (acked v{row['acked_version']})")
        print(
            "  params:  " + "  ".join(f"{k}={v}{'*' if k in row['pinned'] else ''}" for k, v in row["params"].items())
        )
        if row["latest_metrics"]:
            print("  metrics: " + "  ".join(f"{k}={v:.6g}" for k, v in sorted(row["latest_metrics"].items())))
    return 0


def _set(args: argparse.Namespace) -> int:
    changes = _parse_assignments(args.assignments)
    request: dict[str, Any] = {
        "run": args.run,
        "changes": {name: {"stringValue": text} for name, text in changes.items()},  # the server parses by type
        "reason": args.reason,
        "wait": args.wait,
        "timeoutSeconds": args.timeout,
    }
    if args.at_step is not None:
        request["applyAtStep"] = str(args.at_step)
    with _client(args) as client:
        response = client.call("SetParams", request, timeout=(args.timeout + client.timeout) if args.wait else None)
    version, acknowledged = _int(response.get("version")), bool(response.get("acknowledged"))
    if args.json:
        old = {k: _value(v) for k, v in response.get("oldValues", {}).items()}
        print(json.dumps({"run": args.run, "version": version, "acknowledged": acknowledged, "old": old}))
    else:
        ack = " (applied by the trainer)" if acknowledged else ""
        print(f"version {version}{ack}")
    return 0


def _trigger(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.call("FireTrigger", {"run": args.run, "name": args.name, "reason": args.reason})
    version = _int(response.get("version"))
    print(
        json.dumps({"run": args.run, "trigger": args.name, "version": version}) if args.json else f"version {version}"
    )
    return 0


def _release(args: argparse.Namespace) -> int:
    with _client(args) as client:
        released = list(client.call("ReleaseParams", {"run": args.run, "names": args.params}).get("released", []))
    if args.json:
        print(json.dumps({"run": args.run, "released": released}))
    else:
        print("released " + ", ".join(released) if released else "nothing was pinned")
    return 0


def history_rows(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``GetHistoryResponse.entries`` in proto3 JSON form -> the rows ``supervisor history --json`` prints."""
    return [
        {
            "version": _int(e.get("version")) or None,
            "time": _float(e.get("time")),
            "kind": _KIND.get(e.get("kind"), "?"),
            "source": e.get("source", ""),
            "reason": e.get("reason", ""),
            "step": _int(e.get("step")),
            "changes": {
                c.get("name", ""): {"old": _value(c.get("oldValue")), "new": _value(c.get("newValue"))}
                for c in e.get("changes", [])
            },
            "trigger": e.get("trigger") or None,
            "apply_at_step": _int(e["applyAtStep"]) if "applyAtStep" in e else None,
            "acks": [
                {"rank": _int(a.get("rank")), "step": _int(a.get("step")), "time": _float(a.get("time"))}
                for a in e.get("acks", [])
            ],
        }
        for e in entries
    ]


def _history(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows = history_rows(client.call("GetHistory", {"run": args.run}).get("entries", []))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        version = f"v{row['version']}" if row["version"] else "--"
        what = ", ".join(f"{n} {c['old']} -> {c['new']}" for n, c in row["changes"].items())
        if row["trigger"]:
            what = (what + ", " if what else "") + f"trigger {row['trigger']}"
        gate = f" at step {row['apply_at_step']}" if row["apply_at_step"] is not None else ""
        print(f"{version:>5}  {_fmt_time(row['time'])}  {row['kind']:<12} {row['source']:<20} {what}{gate}")
        if row["reason"]:
            print(f"       reason: {row['reason']}")
        for ack in row["acks"]:
            print(f"       applied by rank {ack['rank']} at step {ack['step']}, {_fmt_time(ack['time'])}")
    return 0


def _points(client: Any, run: str, name: str = "") -> Iterator[tuple[int, int, int, float, str, float]]:
    """(rank, seq, step, time, name, value) of every stored point, page after page.

    Over gRPC the pages stay protobuf messages: converting millions of points to
    JSON form first would make ``export`` several times slower.
    """
    if hasattr(client, "metrics"):
        for p in client.metrics(run, name):
            yield p.rank, p.seq, p.step, p.time, p.name, p.value
        return
    token = ""
    while True:
        page = client.call("GetMetrics", {"run": run, "name": name, "pageToken": token, "pageSize": 10_000})
        for p in page.get("points", []):
            yield (
                _int(p.get("rank")),
                _int(p.get("seq")),
                _int(p.get("step")),
                _float(p.get("time")),
                p.get("name", ""),
                _float(p.get("value")),
            )
        token = page.get("nextPageToken", "")
        if not token:
            return


def _metrics(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for rank, seq, step, time, name, value in _points(client, args.run, args.name):
            if args.json:
                print(json.dumps({"rank": rank, "seq": seq, "step": step, "time": time, "name": name, "value": value}))
            else:
                print(f"{step:>8}  rank {rank}  {name:<24} {value:.6g}")
    return 0


def _export(args: argparse.Namespace) -> int:
    current: tuple[int, int] | None = None
    line: dict[str, Any] = {}

    def flush() -> None:
        if line:
            print(json.dumps(line, allow_nan=True))

    with _client(args) as client:
        for rank, seq, step, time, name, value in _points(client, args.run):
            key = (rank, seq)
            if key != current:
                flush()
                current = key
                line = {"run": args.run, "step": step, "time": time, "rank": rank, "metrics": {}}
            line["metrics"][name] = value
    flush()
    return 0


def _top(args: argparse.Namespace) -> int:
    if is_http(args.address):
        raise UsageError(
            f"top speaks gRPC: pass the supervisor's gRPC address (HOST:PORT, `listening on` line), not {args.address}"
        )
    from supervisor.top import run_top
    from trainer_sdk._tls import TlsConfigError

    try:
        return run_top(
            args.address, token=args.token, tls_ca=args.tls_ca, refresh=args.refresh, run_glob=args.glob, once=args.once
        )
    except TlsConfigError as exc:  # a wrong file is a usage error, named (raised before the view starts)
        raise UsageError(str(exc)) from None


def _replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from supervisor.replay import replay_command

    return replay_command(Path(args.config), Path(args.metrics_file), _parse_assignments(args.param), as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
