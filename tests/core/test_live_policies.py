"""Policies acting on live runs: real supervisor process, real SDK sessions over gRPC."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import SUPERVISOR, free_port, wait_until
from trainer_sdk import Float, connect

PLATEAU = """
[[policy]]
id = "plateau"
type = "plateau"
runs = "{runs}"
mode = "{mode}"
metric = "val_loss"
factor = 0.5
patience = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(text)
    return path


def session(address: str, run: str):
    hp = connect(
        run=run, params={"lr": Float(0.1, min=1e-6, max=1.0)}, address=address, telemetry=False, backoff_max=0.2
    )
    assert hp.wait_connected(10)
    return hp


def report(hp, steps, value=1.0):
    for step in steps:
        hp.report(step, val_loss=value)
        assert hp.flush(10)
        time.sleep(0.15)  # let the policy's round finish before the next point


def policy_entries(supervisor, run: str, source: str = "policy:plateau") -> list[dict]:
    return [e for e in supervisor.json("history", run) if e["source"] == source]


def test_restart_mid_plateau_resumes_exactly(tmp_path, supervisor_factory):
    # torch's ReduceLROnPlateau with patience=2 on a flat metric reduces at steps 3 and 6.
    config = write(tmp_path, PLATEAU.format(runs="*", mode="act"))
    port = free_port()
    first = supervisor_factory(tmp_path / "p.db", port=port, args=("--config", str(config)))
    hp = session(first.address, "plateau-restart")
    report(hp, [0, 1])
    first.kill()  # mid-episode: best=1.0, one bad epoch so far
    second = supervisor_factory(tmp_path / "p.db", port=port, args=("--config", str(config)))
    wait_until(hp.wait_connected, message="reconnected")
    report(hp, [2, 3, 4, 5, 6])
    wait_until(lambda: len(policy_entries(second, "plateau-restart")) >= 2, message="two decays")
    decays = policy_entries(second, "plateau-restart")
    assert [e["step"] for e in decays] == [3, 6]
    assert [e["changes"]["lr"]["new"] for e in decays] == [0.05, 0.025]
    wait_until(lambda: hp.lr == 0.025, message="trainer saw the second decay")
    hp.close()


def test_history_after_a_restart_picks_up_the_stored_points(tmp_path, supervisor_factory):
    config = write(tmp_path, """
[[policy]]
id = "probe"
type = "tests.core.policies_for_tests:HistoryProbe"
runs = "*"
""")
    port = free_port()
    first = supervisor_factory(tmp_path / "h.db", port=port, args=("--config", str(config)))
    hp = session(first.address, "history-restart")
    report(hp, [0, 1, 2, 3, 4])
    wait_until(lambda: policy_entries(first, "history-restart", "policy:probe"), message="the first probe")
    assert policy_entries(first, "history-restart", "policy:probe")[0]["reason"] == "history steps [0]"
    first.kill()
    second = supervisor_factory(tmp_path / "h.db", port=port, args=("--config", str(config)))
    wait_until(lambda: hp.connected, timeout=30, message="the reconnect")
    report(hp, [5])
    wait_until(lambda: len(policy_entries(second, "history-restart", "policy:probe")) == 2, message="the second probe")
    # the new process's first point sees the window the old one had, then its own point
    assert policy_entries(second, "history-restart", "policy:probe")[1]["reason"] == "history steps [0, 1, 2, 3, 4, 5]"
    hp.close()


def test_crashing_and_sleeping_policies_do_not_disturb_other_runs(tmp_path, supervisor_factory):
    config = write(
        tmp_path,
        PLATEAU.format(runs="*", mode="act")
        + """
[[policy]]
id = "crashy"
type = "tests.core.policies_for_tests:Crash"
runs = "crash-*"

[[policy]]
id = "sleepy"
type = "tests.core.policies_for_tests:Sleepy"
runs = "slow-*"
seconds = 5.0
""",
    )
    supervisor = supervisor_factory(tmp_path / "c.db", args=("--config", str(config)))
    sessions = {name: session(supervisor.address, name) for name in ("crash-1", "slow-1", "ok-1")}
    for step in range(7):
        for hp in sessions.values():
            hp.report(step, val_loss=1.0)
        time.sleep(0.1)
    for name in ("ok-1", "crash-1"):  # plateau still acts on both, on time
        wait_until(lambda n=name: len(policy_entries(supervisor, n)) >= 2, timeout=15, message=f"{name} decays")
        assert [e["step"] for e in policy_entries(supervisor, name)][:2] == [3, 6]
    errors = [e for e in supervisor.json("history", "crash-1") if e["kind"] == "policy-error"]
    assert len(errors) == 3 and "boom at step" in errors[0]["reason"]  # disabled after max_failures
    wait_until(
        lambda: any(
            e["kind"] == "policy-error" and "too slow" in e["reason"] for e in supervisor.json("history", "slow-1")
        ),
        timeout=15,
        message="timeout recorded",
    )
    runs = {r["run"]: r for r in supervisor.json("runs")}
    assert all(runs[n]["points_received"] == 7 for n in sessions)  # ingestion never stalled
    for hp in sessions.values():
        hp.close()


def test_shadow_mode_records_proposals_and_changes_nothing(tmp_path, supervisor_factory):
    config = write(tmp_path, PLATEAU.format(runs="*", mode="shadow"))
    supervisor = supervisor_factory(tmp_path / "s.db", args=("--config", str(config)))
    hp = session(supervisor.address, "shadow-1")
    report(hp, range(5))
    wait_until(lambda: policy_entries(supervisor, "shadow-1"), message="a proposal")
    entry = policy_entries(supervisor, "shadow-1")[0]
    assert entry["kind"] == "proposal" and entry["version"] is None
    assert entry["changes"]["lr"] == {"old": 0.1, "new": 0.05}
    assert hp.lr == 0.1 and hp.version == 0
    hp.close()


def test_operator_pin_blocks_policies_until_released(tmp_path, supervisor_factory):
    config = write(tmp_path, PLATEAU.format(runs="*", mode="act"))
    supervisor = supervisor_factory(tmp_path / "pin.db", args=("--config", str(config)))
    hp = session(supervisor.address, "pin-1")
    supervisor.cli("set", "pin-1", "lr=0.2", "--wait")
    report(hp, range(4))
    wait_until(lambda: any(e["kind"] == "refused" for e in policy_entries(supervisor, "pin-1")), message="refusal")
    refused = next(e for e in policy_entries(supervisor, "pin-1") if e["kind"] == "refused")
    assert "pinned by an operator" in refused["reason"]
    assert hp.lr == 0.2
    assert supervisor.json("release", "pin-1", "lr")["released"] == ["lr"]
    report(hp, range(4, 7))
    wait_until(lambda: any(e["kind"] == "set" for e in policy_entries(supervisor, "pin-1")), message="policy acts")
    wait_until(lambda: hp.lr == 0.1, message="trainer saw the policy's decay")
    hp.close()


def test_invalid_config_stops_the_server_with_a_named_key(tmp_path):
    import subprocess

    from tests.conftest import ROOT

    bad = write(tmp_path, '[[policy]]\ntype = "plateau"\nmetric = "val_loss"\nfactor = 1.5\n')
    result = subprocess.run(
        [
            *SUPERVISOR,
            "serve",
            "--port",
            "0",
            "--db",
            str(tmp_path / "x.db"),
            "--config",
            str(bad),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "factor" in result.stderr and "1.5" in result.stderr, result.stderr


SCHEDULE = """
[[policy]]
id = "sched"
type = "schedule"
kind = "step"
base = {base}
step_size = 100000
"""


@pytest.mark.parametrize("metrics", [False, True], ids=["plain", "with-metrics-port"])
def test_sighup_reloads_policies_and_a_schedule_changes_mid_run(tmp_path, supervisor_factory, metrics):
    import signal

    config = write(tmp_path, SCHEDULE.format(base=0.1))
    extra = ("--metrics-port", "0") if metrics else ()  # serve() once reloaded on a name the metrics line reused
    supervisor = supervisor_factory(tmp_path / "h.db", args=("--config", str(config), *extra))
    hp = connect(
        run="sched-1", params={"lr": Float(0.05, min=1e-6, max=1.0)}, address=supervisor.address, telemetry=False
    )
    assert hp.wait_connected(10)
    report(hp, range(3))
    wait_until(lambda: hp.lr == 0.1, message="the schedule's first value")

    config.write_text("[[policy]]\ntype = 'schedule'\nkind = 'nonsense'\n")  # invalid: nothing changes
    supervisor.proc.send_signal(signal.SIGHUP)
    report(hp, range(3, 6))
    assert supervisor.proc.poll() is None and hp.lr == 0.1

    config.write_text(SCHEDULE.format(base=0.02))
    supervisor.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    report(hp, range(6, 9))
    wait_until(lambda: hp.lr == 0.02, message="the edited schedule")
    entries = policy_entries(supervisor, "sched-1", "policy:sched")
    assert [e["kind"] for e in entries] == ["set", "set"], entries
    sets = [e["changes"]["lr"]["new"] for e in entries]
    assert sets == [0.1, 0.02]
    assert "policies not reloaded" in supervisor.log.read_text()
    hp.close()


@pytest.mark.parametrize("transport", ["thread", "process"])
def test_a_policys_change_is_acknowledged_with_the_trainers_next_batch(tmp_path, supervisor_factory, transport):
    # The trainer reports without pause, so a batch is always on its way: the policy's delta says
    # ack_with_metrics and the acknowledgement rides a batch (tests/core/test_sdk_batching.py shows
    # the SDK then sends none alone). Recorded only if the supervisor reads it there.
    config = write(tmp_path, PLATEAU.format(runs="*", mode="act"))
    sup = supervisor_factory(tmp_path / "ack.db", args=("--config", str(config)))
    hp = connect(
        run="acked",
        params={"lr": Float(0.1, min=1e-6, max=1.0)},
        address=sup.address,
        telemetry=False,
        flush_interval=0.3,
        transport=transport,
    )
    assert hp.wait_connected(10)
    step, value = 0, 1.0

    def report_for(seconds: float, improving: bool) -> None:
        nonlocal step, value
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            value *= 0.99 if improving else 1.0
            hp.report(step, val_loss=value)
            step += 1
            time.sleep(0.001)

    deadline = time.monotonic() + 30
    while hp.lr == 0.1 and time.monotonic() < deadline:
        report_for(0.1, improving=False)  # a flat metric: the plateau policy halves lr
    assert hp.lr < 0.1, "the plateau policy never acted"
    report_for(1.0, improving=True)  # no more decisions: the last one's acknowledgement is its own
    last: dict = {}
    while not last.get("acks") and time.monotonic() < deadline:
        report_for(0.3, improving=True)
        last = policy_entries(sup, "acked")[-1]
    assert last.get("acks"), f"the policy's last change was never acknowledged: {last}"
    assert last["version"] == hp.version and last["acks"][0]["step"] >= last["step"]
    hp.close()
