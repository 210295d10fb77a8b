"""The core loop with real processes: supervisor ⇄ trainer over gRPC on loopback, SQLite on disk."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until


@pytest.fixture(params=["thread", "process"])
def trainers(request, trainers):
    """Every trainer of these tests, once with each transport: both must keep every promise here."""

    def make(*args: str, **kwargs: object):
        return trainers(*args, "--transport", request.param, **kwargs)

    return make


def runs_by_name(supervisor) -> dict:
    return {r["run"]: r for r in supervisor.json("runs")}


def test_operator_change_reaches_trainer_and_is_acknowledged(supervisor, trainers):
    trainer = trainers("--run", "ack", "--address", supervisor.address, "--steps", "400")
    trainer.wait_for("connected")
    out = supervisor.json("set", "ack", "lr=0.01", "momentum=0.5", "--reason", "too hot", "--wait")
    assert out["version"] == 1 and out["acknowledged"] is True
    assert out["old"] == {"lr": 0.1, "momentum": 0.9}
    events = trainer.events()
    change = next(e for e in events if e["event"] == "change")
    assert change["new"] == {"lr": 0.01, "momentum": 0.5} and change["old"] == {"lr": 0.1, "momentum": 0.9}
    assert change["source"] == "operator" and change["reason"] == "too hot" and change["version"] == 1
    done = events[-1]
    assert done["values"]["lr"] == 0.01 and done["version"] == 1
    # Atomic: every snapshot the loop took holds both new values or neither.
    for _, values in done["seen"]:
        assert (values["lr"], values["momentum"]) in {(0.1, 0.9), (0.01, 0.5)}, values

    history = supervisor.json("history", "ack")
    entry = next(e for e in history if e["version"] == 1)
    assert entry["kind"] == "set" and entry["source"] == "operator" and entry["reason"] == "too hot"
    assert entry["changes"]["lr"] == {"old": 0.1, "new": 0.01}
    assert len(entry["acks"]) == 1 and entry["acks"][0]["rank"] == 0 and entry["acks"][0]["step"] >= 0


def test_refused_changes_name_the_parameter_and_reach_nobody(supervisor, trainers):
    trainer = trainers("--run", "refuse", "--address", supervisor.address, "--steps", "150")
    trainer.wait_for("connected")
    cases = {
        ("lr=2",): "lr: 2.0 is above the maximum 1.0",
        ("lr=0",): "lr: 0.0 is below the minimum 1e-05",
        ("nope=1",): "nope: run 'refuse' has no parameter 'nope'",
        ("momentum=fast",): "momentum: expected a number, got 'fast'",
        ("lr=nan",): "lr: nan is not a finite number",
        ("lr=0.01", "momentum=7"): "momentum: 7.0 is above the maximum 1.0",
    }
    for assignments, message in cases.items():
        result = supervisor.cli("set", "refuse", *assignments, check=False)
        assert result.returncode != 0, assignments
        assert message in result.stderr, (assignments, result.stderr)
    result = supervisor.cli("set", "missing-run", "lr=0.1", check=False)
    assert result.returncode != 0 and "unknown run 'missing-run'" in result.stderr
    events = trainer.events()
    assert not [e for e in events if e["event"] == "change"]  # nothing reached the trainer
    assert events[-1]["values"]["lr"] == 0.1
    assert [e for e in supervisor.json("history", "refuse") if e["version"]] == []


def test_step_gated_delta_becomes_visible_at_that_step(supervisor, trainers):
    trainer = trainers("--run", "gate", "--address", supervisor.address, "--steps", "300")
    trainer.wait_for("connected")
    supervisor.cli("set", "gate", "lr=0.02", "--at-step", "250")
    events = trainer.events()
    seen = events[-1]["seen"]
    switch = [step for step, values in seen if values["lr"] == 0.02]
    # report(step) runs after the loop read its values: the first read that sees it is step + 1.
    assert switch and switch[0] == 251, seen
    entry = next(e for e in supervisor.json("history", "gate") if e["version"] == 1)
    assert entry["apply_at_step"] == 250 and entry["acks"][0]["step"] == 250


def test_trigger_fires_once(supervisor, trainers):
    trainer = trainers("--run", "trig", "--address", supervisor.address, "--until-trigger", "stop", "--steps", "0")
    trainer.wait_for("connected")
    assert supervisor.json("trigger", "trig", "stop")["version"] == 1
    events = trainer.events()
    assert [e["name"] for e in events if e["event"] == "trigger"] == ["stop"]
    entry = supervisor.json("history", "trig")[-1]
    assert entry["kind"] == "trigger" and entry["trigger"] == "stop" and entry["acks"]


def test_metric_stream_is_complete_and_keeps_non_finite_values(supervisor, trainers):
    trainer = trainers(
        "--run", "stream", "--address", supervisor.address, "--steps", "300", "--sleep", "0.002", "--nan-at", "7"
    )
    done = trainer.events()[-1]
    assert done["flushed"] is True
    points = [
        json.loads(line) for line in supervisor.cli("metrics", "stream", "--name", "loss", "--json").stdout.splitlines()
    ]
    assert sorted(p["step"] for p in points) == list(range(300))
    assert math.isnan(next(p["value"] for p in points if p["step"] == 7))
    run = runs_by_name(supervisor)["stream"]
    assert run["points_received"] == 300 and run["outcome"] == "completed"


def _writer_processes(db: Path) -> list[int]:
    """The pids of database writer processes (``--db-writer process``) writing ``db``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if b"supervisor.write_process" in cmdline and str(db).encode() in cmdline:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited orphan may linger as a zombie until init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_kill_9_and_restart_loses_nothing(tmp_path, supervisor_factory, trainers, writer):
    port = free_port()
    db = tmp_path / "durable.db"
    first = supervisor_factory(db, port=port, args=("--db-writer", writer))
    orphans = _writer_processes(db)
    assert len(orphans) == (writer == "process")
    # Long enough to outlive the outage and a slow restart: a trainer that finished and said goodbye
    # before the second supervisor's first `runs` would never show as reconnected.
    trainer = trainers("--run", "crash", "--address", first.address, "--steps", "1500", "--sleep", "0.005")
    trainer.wait_for("connected")
    first.cli("set", "crash", "lr=0.05", "--wait")
    down_since = time.time()
    first.kill()  # SIGKILL mid-run: nothing graceful
    time.sleep(1.0)  # the trainer keeps training meanwhile
    # its writer process, if any, went with it: nothing lands in the file behind the next supervisor
    wait_until(lambda: not any(map(_running, orphans)), message="the writer process exited")
    second = supervisor_factory(db, port=port, args=("--db-writer", writer))
    back_at = time.time()
    wait_until(lambda: runs_by_name(second).get("crash", {}).get("connected"), message="trainer reconnected")
    second.cli("set", "crash", "lr=0.02", "--wait")
    events = trainer.events()
    done = events[-1]
    assert done["values"]["lr"] == 0.02 and done["version"] == 2 and done["flushed"] is True
    # Training never waited on the supervisor: it kept stepping through the outage
    # (a loop blocked on the connection would take no step at all in that window).
    during_outage = [t for t in done["step_times"] if down_since < t < back_at]
    assert len(during_outage) >= 50, (len(during_outage), back_at - down_since)
    assert done["max_step_seconds"] < 2.0, done["max_step_seconds"]

    history = [e for e in second.json("history", "crash") if e["version"]]
    assert [e["version"] for e in history] == [1, 2]
    assert all(e["acks"] for e in history)
    steps = Counter(
        json.loads(line)["step"]
        for line in second.cli("metrics", "crash", "--name", "loss", "--json").stdout.splitlines()
    )
    assert sorted(steps) == list(range(1500)), "gaps in the stored metric stream"
    assert max(steps.values()) == 1, "duplicates in the stored metric stream"


def test_restart_on_empty_database_adopts_the_trainers_values(tmp_path, supervisor_factory, trainers):
    port = free_port()
    first = supervisor_factory(tmp_path / "a.db", port=port)
    trainer = trainers("--run", "adopt", "--address", first.address, "--steps", "600", "--sleep", "0.005")
    trainer.wait_for("connected")
    first.cli("set", "adopt", "lr=0.003", "weight_decay=0.01", "--wait")
    first.kill()
    second = supervisor_factory(tmp_path / "b.db", port=port)  # knows nothing about the run
    run = wait_until(lambda: runs_by_name(second).get("adopt"), message="run re-registered")
    assert run["params"] == {"lr": 0.003, "momentum": 0.9, "weight_decay": 0.01}
    assert run["version"] == 1
    done = trainer.events()[-1]
    assert done["values"]["lr"] == 0.003  # not reset to the default 0.1
    adopt = second.json("history", "adopt")[0]
    assert adopt["kind"] == "adopt" and adopt["source"] == "trainer"


def test_new_process_for_known_run_gets_current_values(supervisor, trainers):
    first = trainers("--run", "resume", "--address", supervisor.address, "--steps", "100")
    first.wait_for("connected")
    supervisor.cli("set", "resume", "lr=0.004", "--wait")
    first.events()
    second = trainers("--run", "resume", "--address", supervisor.address, "--steps", "100")
    done = second.events()[-1]
    assert done["values"]["lr"] == 0.004 and done["version"] == 1


def test_bounded_buffer_drops_oldest_and_reports_it(tmp_path, supervisor_factory, trainers):
    port = free_port()
    trainer = trainers(
        "--run",
        "drops",
        "--address",
        f"127.0.0.1:{port}",
        "--steps",
        "400",
        "--sleep",
        "0.01",
        "--buffer-size",
        "100",
        "--no-wait",
    )
    time.sleep(2.5)  # ~250 points reported with nobody listening; the buffer keeps 100
    supervisor = supervisor_factory(tmp_path / "late.db", port=port)
    done = trainer.events()[-1]
    assert done["dropped"] > 0 and done["flushed"] is True
    run = runs_by_name(supervisor)["drops"]
    assert run["points_dropped"] == done["dropped"]
    assert run["points_received"] + run["points_dropped"] == 400


def test_graceful_shutdown_on_sigterm(supervisor):
    assert supervisor.terminate() == 0


def test_health_service_reports_serving(supervisor):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(supervisor.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "trainer_sdk.protocol.v1.TrainerService", "trainer_sdk.protocol.v1.OperatorService"):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_idle_session_uses_no_cpu_after_flushes(supervisor):
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys, time\n"
        "from trainer_sdk import connect\n"
        "hp = connect(run='idle', params={'lr': 0.1}, address=sys.argv[1], telemetry=False)\n"
        "assert hp.wait_connected(10)\n"
        "hp.report(0, loss=1.0); assert hp.flush(10); assert hp.flush(10)  # the second finds nothing queued\n"
        "t0 = time.process_time(); time.sleep(1.5); print(time.process_time() - t0)\n"
        "hp.close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, supervisor.address], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 0.3, f"an idle session burned {result.stdout.strip()} s of CPU in 1.5 s"
