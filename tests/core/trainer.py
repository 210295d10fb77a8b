"""A minimal trainer for the end-to-end tests: no torch, real SDK, real process.

Prints one JSON line per event: "connected", "change", "trigger", "done" (with
per-step timings and the values seen at each step where they changed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time

from trainer_sdk import Float, connect

_EMIT_LOCK = threading.Lock()


def emit(**event: object) -> None:
    """One JSON line per event; on_change callbacks run on another thread, so lines must not interleave."""
    line = json.dumps(event) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--address", default=None)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.01)
    parser.add_argument("--buffer-size", type=int, default=65_536)
    parser.add_argument("--until-trigger", default=None, help="run until this trigger fires")
    parser.add_argument("--nan-at", type=int, default=-1)
    parser.add_argument("--transport", default="thread", choices=("thread", "process"))
    parser.add_argument("--telemetry", type=float, default=0.0, help="seconds between telemetry samples; 0: off")
    parser.add_argument(
        "--hang", action="store_true", help="after the loop, ship the points (flush(0)) and sleep instead of closing"
    )
    parser.add_argument("--no-wait", action="store_true", help="start training without waiting to connect")
    parser.add_argument("--wait-version", type=int, default=0, help="wait until the supervisor set this version")
    parser.add_argument(
        "--lr-objective", action="store_true", help="val_loss depends on lr (best at 1e-2), for search policies"
    )
    args = parser.parse_args()

    hp = connect(
        run=args.run,
        address=args.address,
        telemetry=args.telemetry or False,
        buffer_size=args.buffer_size,
        transport=args.transport,
        params={
            "lr": Float(0.1, min=1e-5, max=1.0, log=True),
            "momentum": Float(0.9, min=0.0, max=1.0),
            "weight_decay": 0.0,
        },
    )
    hp.on_change(
        lambda e: emit(
            event="change",
            version=e.version,
            new=dict(e.new),
            old=dict(e.old),
            trigger=e.trigger,
            source=e.source,
            reason=e.reason,
            step=e.step,
        )
    )
    if not args.no_wait and hp.wait_connected(10):
        sidecar = getattr(hp._transport, "_proc", None)
        emit(
            event="connected",
            version=hp.version,
            threads=sorted(t.name for t in threading.enumerate()),
            sidecar_pid=sidecar.pid if sidecar is not None else None,
        )
    deadline = time.monotonic() + 10
    while hp.version < args.wait_version and time.monotonic() < deadline:
        time.sleep(0.01)
    seen: list[tuple[int, dict]] = []
    last: dict = {}
    durations: list[float] = []
    step_times: list[float] = []
    step = 0
    while step < args.steps or (args.until_trigger and args.steps == 0):
        t0 = time.perf_counter()
        values = dict(vars(hp))  # one C-level copy: a consistent snapshot
        if values != last:
            seen.append((step, values))
            last = values
        loss = float("nan") if step == args.nan_at else 1.0 / (step + 1)
        if args.lr_objective:
            loss = (math.log10(values["lr"]) + 2) ** 2 + 1.0 / (step + 1)
            hp.report(step, val_loss=loss)
        else:
            hp.report(step, loss=loss, lr_seen=values["lr"])
        if args.until_trigger and hp.triggered(args.until_trigger):
            emit(event="trigger", name=args.until_trigger, step=step)
            break
        time.sleep(args.sleep)
        durations.append(time.perf_counter() - t0)
        step_times.append(time.time())
        step += 1
    if args.hang:
        hp.flush(0)
        sidecar = getattr(hp._transport, "_proc", None)
        emit(event="hanging", steps=step, sidecar_pid=sidecar.pid if sidecar is not None else None)
        time.sleep(3600)
    flushed = hp.flush(30)
    emit(
        event="done",
        steps=step,
        seen=seen,
        version=hp.version,
        values=hp.as_dict(),
        dropped=hp.dropped,
        flushed=flushed,
        max_step_seconds=max(durations or [0.0]),
        step_times=step_times,
    )
    hp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
