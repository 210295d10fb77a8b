"""The digits example runs as the README and the benchmarks run it: with the SDK, and without (--no-sdk)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "train_digits.py"


def _train(tmp_path: Path, *args: str) -> dict:
    summary = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--epochs", "2", "--quiet", "--json-summary", str(summary),
         "--checkpoint-dir", str(tmp_path / "ckpt"), *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(summary.read_text())


def test_the_example_trains_without_the_sdk(tmp_path: Path) -> None:
    summary = _train(tmp_path, "--no-sdk")
    assert math.isfinite(summary["final_val_loss"]) and summary["final_val_acc"] > 0.5


def test_the_example_reports_its_epoch_metrics_to_a_supervisor(tmp_path: Path, supervisor) -> None:
    summary = _train(tmp_path, "--address", supervisor.address, "--run", "example")
    assert math.isfinite(summary["final_val_loss"])
    (run,) = supervisor.json("runs", "--glob", "example")
    assert run["latest_metrics"]["val_loss"] == summary["final_val_loss"]
