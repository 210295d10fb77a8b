"""The ``supervisor`` command: serve, and talk to a running supervisor.

Client commands are started by people and scripts for one call each, so this
module imports only what they need (asyncio, pathlib and the server load
lazily): process start-up is most of a command's latency.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from trainer_sdk import _wire
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb

_KIND = {
    pb.CHANGE_KIND_SET: "set",
    pb.CHANGE_KIND_TRIGGER: "trigger",
    pb.CHANGE_KIND_ADOPT: "adopt",
    pb.CHANGE_KIND_PROPOSAL: "proposal",
    pb.CHANGE_KIND_REFUSED: "refused",
    pb.CHANGE_KIND_POLICY_ERROR: "policy-error",
    pb.CHANGE_KIND_RELEASE: "release",
}
_OUTCOME = {pb.RUN_OUTCOME_COMPLETED: "completed", pb.RUN_OUTCOME_FAILED: "failed"}


class UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.UNAVAILABLE:
            print(
                f"error: no supervisor answers at {args.address} ({exc.details()}); start one with "
                "`supervisor serve` or pass --address / $SUPERVISOR_ADDR",
                file=sys.stderr,
            )
        else:
            print(f"error: {exc.details() if hasattr(exc, 'details') else exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    from supervisor.client import default_address

    parser = argparse.ArgumentParser(prog="supervisor", description="Closed-loop supervision of training runs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--address",
            default=default_address(),
            help="supervisor address (default: $SUPERVISOR_ADDR, then 127.0.0.1:50051)",
        )
        p.add_argument("--token", default=None, help="auth token (default: $SUPERVISOR_TOKEN)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = sub.add_parser("serve", help="run the supervisor", description="Run the supervisor.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--db", default="supervisor.db", help="SQLite file (created if missing)")
    p.add_argument("--config", default=None, help="policies file (TOML)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics here (0: a free port)")
    p.add_argument("--metrics-host", default=None, help="address for /metrics (default: --host)")
    p.add_argument("--token", default=None, help="require this token from every client (default: $SUPERVISOR_TOKEN)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_serve)

    p = client_command("runs", "list runs: connection, step, latest metrics, parameters, version")
    p.add_argument("--glob", default="", help="only runs whose name matches this shell pattern")
    p.set_defaults(func=_runs)

    p = client_command("set", "change parameters of a run in one atomic, versioned step")
    p.add_argument("run")
    p.add_argument("assignments", nargs="+", metavar="NAME=VALUE")
    p.add_argument("--reason", default="", help="why; recorded in the history")
    p.add_argument("--at-step", type=int, default=None, help="make it visible at this training step")
    p.add_argument("--wait", action="store_true", help="return once the trainer has applied it")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds --wait waits (default 30)")
    p.set_defaults(func=_set)

    p = client_command("trigger", "fire a named trigger (checkpoint, stop, rollback, ...)")
    p.add_argument("run")
    p.add_argument("name")
    p.add_argument("--reason", default="")
    p.set_defaults(func=_trigger)

    p = client_command("release", "let policies change parameters an operator pinned with `set`")
    p.add_argument("run")
    p.add_argument("params", nargs="*", metavar="PARAM", help="default: every pinned parameter")
    p.set_defaults(func=_release)

    p = client_command("history", "every change of a run, with acknowledgements")
    p.add_argument("run")
    p.set_defaults(func=_history)

    p = client_command("metrics", "the recorded metric stream of a run")
    p.add_argument("run")
    p.add_argument("--name", default="", help="only this metric")
    p.set_defaults(func=_metrics)

    p = client_command("export", "write a run's metric stream as JSON lines (the replay input format)")
    p.add_argument("run")
    p.set_defaults(func=_export)

    p = client_command("top", "live view of the runs")
    p.add_argument("--refresh", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--glob", default="")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(func=_top)

    p = sub.add_parser(
        "replay",
        help="run policies over recorded metrics, offline and deterministic",
        description="Run policies over recorded metrics (JSON lines) and print their decisions.",
    )
    p.add_argument("metrics_file", metavar="METRICS.jsonl")
    p.add_argument("--config", required=True, help="policies file (TOML)")
    p.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a parameter's starting value (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per decision")
    p.set_defaults(func=_replay)
    return parser


# -- serve --------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import os
    from pathlib import Path

    from supervisor.server import ServerConfig, serve

    config = ServerConfig(
        host=args.host,
        port=args.port,
        db=Path(args.db),
        token=args.token or os.environ.get("SUPERVISOR_TOKEN"),
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        policy_config=None if args.config is None else Path(args.config),
    )
    try:
        asyncio.run(serve(config))
    except Exception as exc:  # a bad config or an unusable port: say so, no traceback
        from policies import PolicyConfigError

        if isinstance(exc, PolicyConfigError | OSError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


# -- client commands ------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    from supervisor.client import OperatorClient

    return OperatorClient(args.address, token=args.token)


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


def _value(v: pb.ParamValue) -> Any:
    return _wire.value_from_wire(v)


def _fmt_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if t else "-"


def _runs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        runs = client.runs(args.glob)
    rows = [
        {
            "run": r.run,
            "connected": r.connected,
            "connected_ranks": r.connected_ranks,
            "world_size": r.world_size,
            "last_step": r.last_step,
            "step_rate": round(r.step_rate, 3),
            "latest_metrics": dict(r.latest_metrics),
            "params": {k: _value(v) for k, v in r.values.items()},
            "version": r.version,
            "acked_version": r.acked_version,
            "pinned": list(r.pinned),
            "points_received": r.points_received,
            "points_dropped": r.points_dropped,
            "outcome": _OUTCOME.get(r.outcome),
            "last_seen": r.last_seen,
        }
        for r in runs
    ]
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
    with _client(args) as client:
        response = client.set(
            args.run, changes, reason=args.reason, apply_at_step=args.at_step, wait=args.wait, timeout=args.timeout
        )
    if args.json:
        print(
            json.dumps(
                {
                    "run": args.run,
                    "version": response.version,
                    "acknowledged": response.acknowledged,
                    "old": {k: _value(v) for k, v in response.old_values.items()},
                }
            )
        )
    else:
        ack = " (applied by the trainer)" if response.acknowledged else ""
        print(f"version {response.version}{ack}")
    return 0


def _trigger(args: argparse.Namespace) -> int:
    with _client(args) as client:
        version = client.trigger(args.run, args.name, reason=args.reason)
    print(
        json.dumps({"run": args.run, "trigger": args.name, "version": version}) if args.json else f"version {version}"
    )
    return 0


def _release(args: argparse.Namespace) -> int:
    with _client(args) as client:
        released = client.release(args.run, args.params)
    if args.json:
        print(json.dumps({"run": args.run, "released": released}))
    else:
        print("released " + ", ".join(released) if released else "nothing was pinned")
    return 0


def history_rows(entries: Sequence[pb.HistoryEntry]) -> list[dict[str, Any]]:
    return [
        {
            "version": e.version or None,
            "time": e.time,
            "kind": _KIND.get(e.kind, "?"),
            "source": e.source,
            "reason": e.reason,
            "step": e.step,
            "changes": {c.name: {"old": _value(c.old_value), "new": _value(c.new_value)} for c in e.changes},
            "trigger": e.trigger or None,
            "apply_at_step": e.apply_at_step if e.HasField("apply_at_step") else None,
            "acks": [{"rank": a.rank, "step": a.step, "time": a.time} for a in e.acks],
        }
        for e in entries
    ]


def _history(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows = history_rows(client.history(args.run))
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


def _metrics(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for p in client.metrics(args.run, args.name):
            if args.json:
                print(
                    json.dumps(
                        {"rank": p.rank, "seq": p.seq, "step": p.step, "time": p.time, "name": p.name, "value": p.value}
                    )
                )
            else:
                print(f"{p.step:>8}  rank {p.rank}  {p.name:<24} {p.value:.6g}")
    return 0


def _export(args: argparse.Namespace) -> int:
    current: tuple[int, int] | None = None
    line: dict[str, Any] = {}

    def flush() -> None:
        if line:
            print(json.dumps(line, allow_nan=True))

    with _client(args) as client:
        for p in client.metrics(args.run):
            key = (p.rank, p.seq)
            if key != current:
                flush()
                current = key
                line = {"run": args.run, "step": p.step, "time": p.time, "rank": p.rank, "metrics": {}}
            line["metrics"][p.name] = p.value
    flush()
    return 0


def _top(args: argparse.Namespace) -> int:
    from supervisor.top import run_top

    return run_top(args.address, token=args.token, refresh=args.refresh, run_glob=args.glob, once=args.once)


def _replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from supervisor.replay import replay_command

    return replay_command(Path(args.config), Path(args.metrics_file), _parse_assignments(args.param), as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
