"""Replay runs the same code as the live supervisor: an exported live run replays to the same decisions."""

from __future__ import annotations

import json
import math
import random
import subprocess
import time

from tests.conftest import ROOT, SUPERVISOR, wait_until
from trainer_sdk import Float, connect

CONFIG = """
[[policy]]
id = "plateau"
type = "plateau"
metric = "val_loss"
factor = 0.5
patience = 2
threshold = 0.05
"""


def test_exported_run_replays_to_the_live_decisions(tmp_path, supervisor_factory):
    config = tmp_path / "policies.toml"
    config.write_text(CONFIG)
    supervisor = supervisor_factory(tmp_path / "r.db", args=("--config", str(config)))
    hp = connect(
        run="replayed", params={"lr": Float(0.1, min=1e-6, max=1.0)}, address=supervisor.address, telemetry=False
    )
    assert hp.wait_connected(10)
    rng = random.Random(7)
    value = 1.0
    for step in range(40):
        value *= rng.choice([0.8, 1.0, 1.02, 0.99])
        hp.report(step, val_loss=value, loss=value * 1.1)
        if step == 17:
            hp.report(step, val_loss=math.nan)  # non-finite data travels too
        assert hp.flush(10)
        time.sleep(0.05)
    hp.close()
    wait_until(lambda: supervisor.json("runs")[0]["outcome"] == "completed", message="run completed")
    live = [
        (e["step"], e["changes"]["lr"]["new"])
        for e in supervisor.json("history", "replayed")
        if e["source"] == "policy:plateau"
    ]
    assert live, "the sequence should make the plateau policy act"

    exported = supervisor.cli("export", "replayed").stdout
    (tmp_path / "run.jsonl").write_text(exported)
    lines = [json.loads(line) for line in exported.splitlines()]
    assert [line["step"] for line in lines if "val_loss" in line["metrics"]][:3] == [0, 1, 2]

    def replay() -> str:
        result = subprocess.run(
            [
                *SUPERVISOR,
                "replay",
                "--config",
                str(config),
                str(tmp_path / "run.jsonl"),
                "--param",
                "lr=0.1",
                "--json",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    first, second = replay(), replay()
    assert first == second  # deterministic, byte for byte
    decisions = [json.loads(line) for line in first.splitlines()]
    assert [(d["step"], d["new"]) for d in decisions if d.get("param") == "lr"] == live
    assert all({"run", "step", "policy", "param", "old", "new", "reason"} <= d.keys() for d in decisions)


def test_wait_fails_at_the_timeout_but_the_change_stays_recorded(supervisor):
    hp = connect(run="gone", params={"lr": 0.1}, address=supervisor.address, telemetry=False)
    assert hp.wait_connected(10)
    hp.close()
    wait_until(lambda: not supervisor.json("runs")[0]["connected"], message="trainer gone")
    result = supervisor.cli("set", "gone", "lr=0.2", "--wait", "--timeout", "1", check=False)
    assert result.returncode != 0
    assert "version 1 is recorded" in result.stderr and "within 1s" in result.stderr
    assert supervisor.json("runs")[0]["params"]["lr"] == 0.2
