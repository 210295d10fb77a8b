"""``transport="process"``: the connection in a sidecar process; real trainer, sidecar and supervisor processes.

What the thread transport promises is checked for both transports in
test_end_to_end.py; here is what is particular to the sidecar: the training
process runs no SDK thread, and the sidecar's life is tied to the trainer's
without losing points either way.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.conftest import free_port, wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its killed parent) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _stored_steps(supervisor, run: str) -> list[int]:
    lines = supervisor.cli("metrics", run, "--name", "loss", "--json").stdout.splitlines()
    return sorted(json.loads(line)["step"] for line in lines)


@pytest.mark.parametrize("transport", ["thread", "process"])
def test_only_the_thread_transport_runs_sdk_threads_in_the_training_process(supervisor, trainers, transport):
    run = f"threads-{transport}"
    trainer = trainers("--run", run, "--address", supervisor.address, "--steps", "100", "--transport", transport,
                       "--telemetry", "0.2")
    connected = trainer.wait_for("connected")
    sdk_threads = {name for name in connected["threads"] if name.startswith("trainer")}
    if transport == "process":
        # Only the on_change callbacks' thread, which the test trainer asked for: no connection, no pump,
        # and telemetry is sampled by the sidecar.
        assert sdk_threads == {"trainer-sdk-callbacks"}, connected["threads"]
        assert connected["sidecar_pid"] and _alive(connected["sidecar_pid"])
    else:
        assert {"trainer-sdk-connection", "trainer-sdk-pump", "trainer_sdk-telemetry"} <= sdk_threads, sdk_threads
        assert connected["sidecar_pid"] is None
    assert trainer.events()[-1]["flushed"] is True
    lines = supervisor.cli("metrics", run, "--name", "host_cpu_utilization_ratio", "--json").stdout.splitlines()
    assert lines, "no telemetry stored"
    assert all(0.0 <= json.loads(line)["value"] <= 1.0 for line in lines)


def test_a_killed_trainer_loses_no_point_it_shipped_and_its_sidecar_exits(tmp_path, supervisor_factory, trainers):
    """The trainer dies while the supervisor is down: its sidecar stores what it was sent once one is back."""
    port = free_port()
    trainer = trainers("--run", "killed", "--address", f"127.0.0.1:{port}", "--steps", "300", "--sleep", "0.001",
                       "--transport", "process", "--hang", "--no-wait")
    hanging = trainer.wait_for("hanging")
    assert hanging["steps"] == 300
    trainer.proc.send_signal(signal.SIGKILL)  # no close(), no atexit: only the sidecar can still store them
    trainer.proc.wait(10)
    supervisor = supervisor_factory(tmp_path / "late.db", port=port)
    wait_until(lambda: not _alive(hanging["sidecar_pid"]), timeout=20, message="the sidecar exiting after its trainer")
    assert _stored_steps(supervisor, "killed") == list(range(300))
    run = supervisor.run("killed")
    assert run["connected"] is False and run["outcome"] is None  # lost, not a goodbye


def test_a_killed_sidecar_leaves_the_training_running_offline(supervisor, trainers):
    trainer = trainers("--run", "orphan", "--address", supervisor.address, "--steps", "300", "--sleep", "0.005",
                       "--transport", "process")
    sidecar = trainer.wait_for("connected")["sidecar_pid"]
    os.kill(sidecar, signal.SIGKILL)
    started = time.monotonic()
    events = trainer.events()  # the trainer exits 0: report() never raised
    done = events[-1]
    assert done["steps"] == 300 and done["flushed"] is False and done["max_step_seconds"] < 1.0
    assert time.monotonic() - started < 30
    assert "sidecar process is gone" in trainer.stderr, trainer.stderr[-2000:]


def test_ctrl_c_reaches_the_trainer_not_its_sidecar(supervisor, trainers):
    """A terminal's Ctrl-C signals the whole process group; the trainer's atexit close needs its sidecar alive."""
    trainer = trainers("--run", "interrupted", "--address", supervisor.address, "--steps", "100000",
                       "--transport", "process", start_new_session=True)
    trainer.wait_for("connected")
    time.sleep(1.0)
    os.killpg(trainer.proc.pid, signal.SIGINT)
    trainer.proc.wait(30)
    assert trainer.proc.returncode != 0  # KeyboardInterrupt
    run = wait_until(
        lambda: next((r for r in supervisor.json("runs") if r["run"] == "interrupted" and r["outcome"]), None),
        timeout=15,
        message="the session's goodbye",
    )
    assert run["outcome"] == "completed"  # atexit closed the session: the sidecar was there to say goodbye
    steps = _stored_steps(supervisor, "interrupted")
    assert steps and steps == list(range(len(steps)))  # every reported step, no gap


def test_close_waits_for_the_sidecars_goodbye_not_for_its_timeout(supervisor, caplog):
    from trainer_sdk import connect

    hp = connect("closing", {"lr": 0.1}, address=supervisor.address, telemetry=False, transport="process")
    assert hp.wait_connected(30)
    for step in range(200):
        hp.report(step, loss=1.0 / (step + 1))
    assert hp.flush(30) is True and hp.dropped == 0
    started = time.monotonic()
    hp.close(timeout=10.0)
    assert time.monotonic() - started < 5.0  # the sidecar's "closed" answer ends the wait, not the 10 s
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    run = supervisor.run("closing")
    assert run["outcome"] == "completed" and run["points_received"] == 200


def test_the_sidecar_runs_this_trainer_sdk_not_one_in_the_working_directory(supervisor, tmp_path, monkeypatch):
    """A training script started from a checkout of another SDK version must not start that version's sidecar."""
    from trainer_sdk import connect

    decoy = tmp_path / "trainer_sdk"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the trainer_sdk of the working directory')\n")
    monkeypatch.chdir(tmp_path)
    hp = connect("elsewhere", {"lr": 0.1}, address=supervisor.address, telemetry=False, transport="process")
    try:
        assert hp.wait_connected(30), "the sidecar did not connect: it imported the working directory's trainer_sdk"
        hp.report(0, loss=1.0)
        assert hp.flush(30) is True
    finally:
        hp.close(timeout=10)


def test_a_backlog_larger_than_the_socket_buffer_is_stored_before_close_says_goodbye(supervisor):
    """Messages are bounded (4,096 points) and every one is written before "close", which ends the sidecar's reading."""
    import threading

    from trainer_sdk import connect

    hp = connect("backlog", {"lr": 0.1}, address=supervisor.address, telemetry=False, transport="process")
    assert hp.wait_connected(30)
    sidecar = hp._transport._proc.pid
    os.kill(sidecar, signal.SIGSTOP)  # a sidecar that does not read: writes stop at the socket buffer
    try:
        for step in range(30_000):  # the rest waits in the bounded queue, report() never blocks
            hp.report(step, loss=0.5, acc=0.25, grad_norm=1.5)
    finally:
        threading.Timer(1.0, os.kill, (sidecar, signal.SIGCONT)).start()
    hp.close(timeout=30.0)  # starts while the socket is still full
    run = supervisor.run("backlog")
    assert run["outcome"] == "completed" and run["points_received"] == 30_000 and run["points_dropped"] == 0


def test_bad_values_and_steps_are_dropped_with_a_warning_never_raised_into_the_loop(supervisor, caplog):
    from trainer_sdk import connect

    hp = connect("bad-values", {"lr": 0.1}, address=supervisor.address, telemetry=False, transport="process")
    assert hp.wait_connected(30)
    hp.report(0, loss=1.0, huge=10**400, word="text")
    hp.report(float("nan"), loss=2.0)  # a step that is not an integer: the point is dropped
    hp.report(1, loss=3.0)
    assert hp.flush(30) is True  # the shipment ran on this thread and raised nothing
    hp.close()
    steps = [(json.loads(line)["step"], json.loads(line)["value"])
             for line in supervisor.cli("metrics", "bad-values", "--name", "loss", "--json").stdout.splitlines()]
    assert steps == [(0, 1.0), (1, 3.0)]
    for warning in ("metric 'huge'", "metric 'word'", "a step must be an integer"):
        assert warning in caplog.text, caplog.text


def test_a_loop_waiting_on_a_trigger_sees_it_without_reporting(supervisor):
    from trainer_sdk import connect

    hp = connect("waits", {"lr": 0.1}, address=supervisor.address, telemetry=False, transport="process")
    assert hp.wait_connected(30)
    hp.report(0, loss=1.0)
    assert hp.flush(30)
    supervisor.cli("trigger", "waits", "stop")
    deadline = time.monotonic() + 15
    while not hp.triggered("stop"):  # no report() in this loop: triggered() reads what the sidecar sent
        assert time.monotonic() < deadline, "the trigger never reached the loop"
        time.sleep(0.01)
    hp.close()
