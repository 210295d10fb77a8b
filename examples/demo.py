"""The README demo: a supervisor on SQLite, the digits trainer, an operator's change and a policy's.

    make demo

Starts ``supervisor serve`` with examples/policies.toml, trains an MLP on
scikit-learn's digits with live lr / weight_decay / dropout, changes
weight_decay and dropout mid-run as an operator would, lets the plateau policy
decay the learning rate on its own, and prints the run's history.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = ROOT / "demo-run"
RUN = "digits-demo"


def supervisor_cli(address: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", *args, "--address", address], capture_output=True, text=True, cwd=ROOT
    )
    if result.returncode != 0:
        raise SystemExit(f"supervisor {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main() -> int:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir()
    banner("starting the supervisor (SQLite at demo-run/supervisor.db, policies from examples/policies.toml)")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor",
            "serve",
            "--port",
            "0",
            "--db",
            str(WORKDIR / "supervisor.db"),
            "--config",
            str(ROOT / "examples" / "policies.toml"),
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=open(WORKDIR / "supervisor.log", "w"),
        text=True,
        cwd=ROOT,
    )
    assert server.stdout is not None
    address = ""
    while not address:
        line = server.stdout.readline()
        if not line:
            raise SystemExit(f"the supervisor did not start; see {WORKDIR / 'supervisor.log'}")
        print("   supervisor:", line.strip())
        if line.startswith("listening on "):
            address = line.split()[-1]
    print("   supervisor:", server.stdout.readline().strip())  # the metrics line

    banner(f"training {RUN} (examples/train_digits.py) against {address}")
    trainer = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "train_digits.py"),
            "--run",
            RUN,
            "--address",
            address,
            "--epochs",
            "14",
            "--sleep",
            "0.004",
            "--checkpoint-dir",
            str(WORKDIR / "checkpoints"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        time.sleep(6)
        banner("operator: supervisor set digits-demo weight_decay=0.0005 dropout=0.05 --wait")
        print(
            supervisor_cli(
                address,
                "set",
                RUN,
                "weight_decay=0.0005",
                "dropout=0.05",
                "--reason",
                "demo: less regularisation",
                "--wait",
            ).strip(),
            flush=True,
        )
        trainer.wait(timeout=600)
        banner("supervisor runs")
        print(supervisor_cli(address, "runs", "--glob", RUN))
        banner(f"supervisor history {RUN}  (operator's change, the plateau policy's decays, acknowledgements)")
        print(supervisor_cli(address, "history", RUN))
    finally:
        if trainer.poll() is None:
            trainer.kill()
        server.terminate()
        server.wait(15)
    print(f"Everything is in {WORKDIR / 'supervisor.db'}; `make test` runs the tests.")
    return trainer.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
