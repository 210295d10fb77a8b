"""supervisor top: one frame against a real supervisor and a real trainer; live mode and Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from rich.console import Console

from supervisor.top import TopView, _last_changes, run_top, sparkline
from tests.conftest import free_port, wait_until
from tests.observability.helpers import ROOT
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb


def frame(address: str, **kwargs: object) -> tuple[int, str]:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False, color_system=None)
    rc = run_top(address, once=True, console=console, **kwargs)
    return rc, out.getvalue()


def test_sparkline() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3, 3, 3]) == "▁▁▁"
    assert sparkline([1, float("nan"), 2]) == "▁!█"
    assert sparkline([]) == ""
    assert len(sparkline(range(100), length=10)) == 10


def test_last_change_per_param_from_history() -> None:
    entries = [
        pb.HistoryEntry(
            version=0,
            time=10.0,
            kind=pb.CHANGE_KIND_ADOPT,
            source="trainer",
            changes=[pb.ParamChange(name="lr"), pb.ParamChange(name="wd")],
        ),
        pb.HistoryEntry(
            version=1, time=20.0, kind=pb.CHANGE_KIND_SET, source="operator", changes=[pb.ParamChange(name="lr")]
        ),
        pb.HistoryEntry(
            version=0, time=30.0, kind=pb.CHANGE_KIND_PROPOSAL, source="policy:p", changes=[pb.ParamChange(name="lr")]
        ),  # never sent: not a change
    ]
    assert _last_changes(entries) == {"lr": ("operator", 20.0), "wd": ("trainer", 10.0)}


def test_render_shows_pending_and_disconnected() -> None:
    view = TopView("127.0.0.1:1")
    try:
        info = pb.RunInfo(
            run="r1",
            connected=False,
            world_size=2,
            last_step=40,
            version=5,
            acked_version=2,
            outcome=pb.RUN_OUTCOME_FAILED,
            last_seen=time.time() - 90,
            latest_metrics={"loss": float("nan"), "gpu0_utilization_ratio": 0.5},
            values={"lr": pb.ParamValue(float_value=0.5), "amp": pb.ParamValue(bool_value=True)},
        )
        out = io.StringIO()
        Console(file=out, width=200, color_system=None).print(view.render([info]))
    finally:
        view.close()
    text = out.getvalue()
    assert "3 pending" in text and "acked v2" in text
    assert "failed" in text and "ago" in text
    assert "lr=0.5" in text and "amp=true" in text
    assert "nan" in text and "gpu0 50%" in text


def test_once_against_a_real_supervisor(supervisor_factory: Callable, trainer_script: Callable, tmp_path) -> None:
    sup = supervisor_factory(tmp_path / "top.db")
    trainer = trainer_script("--run", "top-run", "--address", sup.address, "--telemetry", "0.3")
    trainer.wait_connected()
    sup.cli("set", "top-run", "lr=0.02", "--wait")

    def has_metrics() -> bool:
        runs = sup.json("runs")
        return bool(runs and {"loss", "grad_norm", "host_cpu_utilization_ratio"} <= set(runs[0]["latest_metrics"]))

    wait_until(has_metrics, timeout=30, message="metrics and telemetry from the trainer")
    rc, text = frame(sup.address)
    assert rc == 0, text
    assert "top-run" in text and "1/1" in text  # connected ranks / world size
    assert "lr=0.02" in text and "operator" in text and "ago" in text  # last change: source and age
    assert "loss" in text and "grad_norm" in text and "/s" in text
    assert "host cpu" in text
    assert "v1 ✓" in text  # nothing pending: the trainer acknowledged version 1
    rc, text = frame(sup.address, run_glob="nothing-*")
    assert rc == 0 and "no runs yet matching 'nothing-*'" in text


def test_once_unreachable_says_so() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    rc, text = frame(address, refresh=0.5)
    assert rc == 1
    assert f"cannot reach a supervisor at {address}" in " ".join(text.split())
    assert time.monotonic() - started < 15


def test_token(supervisor_factory: Callable, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)
    sup = supervisor_factory(tmp_path / "auth.db", args=("--token", "s3cret"))
    rc, text = frame(sup.address)
    assert rc == 1 and "refused the token" in text
    rc, text = frame(sup.address, token="s3cret")
    assert rc == 0 and "no runs yet" in text
    monkeypatch.setenv("SUPERVISOR_TOKEN", "s3cret")
    assert frame(sup.address)[0] == 0


def live_top(address: str) -> subprocess.Popen[str]:
    code = (
        "import sys\n"
        "from rich.console import Console\n"
        "from supervisor.top import run_top\n"
        f"sys.exit(run_top({address!r}, refresh=0.2, console=Console(force_terminal=True, width=160)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SUPERVISOR_TOKEN"}
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )


def stop_with_ctrl_c(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        return proc.returncode, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_live_keeps_retrying_an_unreachable_supervisor_and_ctrl_c_exits_0() -> None:
    proc = live_top(f"127.0.0.1:{free_port()}")
    time.sleep(2.5)
    assert proc.poll() is None, "top gave up instead of retrying"
    rc, out, err = stop_with_ctrl_c(proc)
    assert rc == 0, err
    assert "cannot reach a supervisor" in out and "retrying every 0.2s" in out
    assert "Traceback" not in err


def test_live_against_a_real_supervisor(supervisor_factory: Callable, trainer_script: Callable, tmp_path) -> None:
    sup = supervisor_factory(tmp_path / "live.db")
    trainer_script("--run", "live-run", "--address", sup.address).wait_connected()
    proc = live_top(sup.address)
    time.sleep(2.0)
    assert proc.poll() is None
    rc, out, err = stop_with_ctrl_c(proc)
    assert rc == 0, err
    assert "live-run" in out and "loss" in out
