"""A small trainer for the observability end-to-end tests: real SDK, real process, no torch.

    python tests/observability/trainer_script.py --run prom-e2e --address HOST:PORT [--seconds 60]

Declares ``lr``, reports ``loss``, ``val_loss`` (every 10 steps) and ``grad_norm`` every
``--sleep`` seconds, with telemetry every ``--telemetry`` seconds, and prints one line
``connected`` once the supervisor answered.
"""

from __future__ import annotations

import argparse
import math
import time

from trainer_sdk import Float, connect


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--telemetry", type=float, default=0.5)
    args = parser.parse_args()

    hp = connect(
        run=args.run,
        params={"lr": Float(0.1, min=1e-5, max=1.0)},
        address=args.address,
        telemetry=args.telemetry,
    )
    if hp.wait_connected(30):
        print("connected", flush=True)
    deadline = time.monotonic() + args.seconds
    step = 0
    loss = 2.5
    while time.monotonic() < deadline:
        loss = max(0.05, loss * (1 - hp.lr * 0.02)) + 0.01 * math.sin(step / 7)
        metrics = {"loss": loss, "grad_norm": 1.0 + 0.5 * math.cos(step / 11) + hp.lr}
        if step % 10 == 0:
            metrics["val_loss"] = loss * 1.1
        hp.report(step, **metrics)
        step += 1
        time.sleep(args.sleep)
    hp.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
