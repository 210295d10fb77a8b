"""A supervisor split over processes (`serve --shards N`): trainers and operators see one supervisor."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from policies import parse_config
from supervisor.sharding import PopulationRule, owner, shard_db
from tests.conftest import SUPERVISOR, free_port, wait_until
from trainer_sdk._transport import redirect_target


def run_owned_by(shard: int, shards: int, prefix: str) -> str:
    return next(name for i in range(1000) if owner(name := f"{prefix}-{i}", shards) == shard)


def shard_pid(front_port: int, index: int) -> int | None:
    """The pid of the running child shard ``index`` that the front door on ``front_port`` started."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--front-port" in argv and argv[argv.index(b"--front-port") + 1] == str(front_port).encode():
                if argv[argv.index(b"--shard") + 1].startswith(f"{index}/".encode()):
                    if not gone(int(entry.name)):
                        return int(entry.name)
    return None


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def stored_runs(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM runs")}


@pytest.fixture(params=["thread", "process"])
def transport(request) -> str:
    return request.param


def test_owner_is_stable_and_keeps_a_population_together():
    assert [owner(f"run-{i}", 4) for i in range(8)] == [owner(f"run-{i}", 4) for i in range(8)]
    assert {owner(f"run-{i}", 4) for i in range(100)} == {0, 1, 2, 3}, "names spread over every shard"
    assert owner("anything", 1) == 0
    bindings = parse_config({"policy": [{"type": "optuna", "id": "search", "runs": "trial-*", "metric": "val_loss"}]})
    population = [b for b in bindings if b.scope == "population"]
    assert len({owner(f"trial-{i}", 4, population) for i in range(50)}) == 1, "one study, one process"
    assert shard_db(Path("/x/sup.db"), 0) == Path("/x/sup.db")
    assert shard_db(Path("/x/sup.db"), 2) == Path("/x/sup.shard2.db")


def test_redirect_keeps_the_host_the_trainer_used():
    assert redirect_target("sup.example:50051", "", 50061) == "sup.example:50061"
    assert redirect_target("[::1]:50051", "", 7) == "[::1]:7"
    assert redirect_target("dns:///sup:1", "", 7) == "dns:///sup:7"
    assert redirect_target("a:1", "other", 7) == "other:7"
    assert redirect_target("unix:/tmp/sock", "", 7) is None
    assert redirect_target("a:1", "", 0) is None


def test_runs_of_every_shard_are_served_through_the_front_door(tmp_path, supervisor_factory, trainers, transport):
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2"))
    home, away = run_owned_by(0, 2, "home"), run_owned_by(1, 2, "away")
    started = {
        name: trainers("--run", name, "--address", front.address, "--steps", "300", "--transport", transport)
        for name in (home, away)
    }
    for trainer in started.values():
        trainer.wait_for("connected")
    for name, lr in ((home, "0.02"), (away, "0.03")):
        out = front.json("set", name, f"lr={lr}", "--reason", "sharded", "--wait")
        assert out["version"] == 1 and out["acknowledged"] is True, out
    out = front.json("set", away, "momentum=0.5", "--wait", address=front.http_address)  # the HTTP gateway too
    assert out["version"] == 2 and out["acknowledged"] is True, out
    refused = front.cli("set", away, "lr=2", check=False)
    assert refused.returncode != 0 and "lr: 2.0 is above the maximum 1.0" in refused.stderr  # the owner's error
    unknown = front.cli("set", "nobody-runs-this", "lr=0.1", check=False)
    assert unknown.returncode != 0 and "unknown run 'nobody-runs-this'" in unknown.stderr

    done = {name: trainer.events()[-1] for name, trainer in started.items()}
    assert done[home]["values"]["lr"] == 0.02 and done[home]["version"] == 1
    assert done[away]["values"] == {"lr": 0.03, "momentum": 0.5, "weight_decay": 0.0} and done[away]["version"] == 2
    assert all(d["flushed"] for d in done.values())

    listed = {r["run"]: r for r in front.json("runs")}
    assert sorted(listed) == sorted([home, away]) and listed[away]["version"] == 2
    assert [e["version"] for e in front.json("history", away) if e["version"]] == [1, 2]
    steps = Counter(
        json.loads(line)["step"] for line in front.cli("metrics", away, "--name", "loss", "--json").stdout.splitlines()
    )
    assert sorted(steps) == list(range(300)) and max(steps.values()) == 1
    # Each process keeps its own runs in its own file.
    assert stored_runs(tmp_path / "sup.db") == {home}
    assert stored_runs(tmp_path / "sup.shard1.db") == {away}


def test_a_killed_shard_is_restarted_and_its_trainers_come_back(tmp_path, supervisor_factory, trainers):
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2"))
    away = run_owned_by(1, 2, "away")
    trainer = trainers("--run", away, "--address", front.address, "--steps", "1500", "--sleep", "0.005")
    trainer.wait_for("connected")
    front.cli("set", away, "lr=0.05", "--wait")
    first = shard_pid(front.port, 1)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: shard_pid(front.port, 1) not in (first, None), message="shard 1 restarted")
    wait_until(lambda: (r := front.cli("runs", "--json", check=False)).returncode == 0
               and any(run["run"] == away and run["connected"] for run in json.loads(r.stdout)),
               message="the trainer reconnected through the front door")
    front.cli("set", away, "lr=0.02", "--wait")
    done = trainer.events()[-1]
    assert done["values"]["lr"] == 0.02 and done["version"] == 2 and done["flushed"] is True
    steps = Counter(
        json.loads(line)["step"] for line in front.cli("metrics", away, "--name", "loss", "--json").stdout.splitlines()
    )
    assert sorted(steps) == list(range(1500)), "gaps in the stored metric stream"

    child = shard_pid(front.port, 1)
    assert child is not None
    front.kill()  # SIGKILL: the front door cannot stop its children; they notice and stop themselves
    wait_until(lambda: gone(child), timeout=15, message="the orphaned shard stopped")


def break_shard(tmp_path: Path, index: int) -> Path:
    """Make shard ``index``'s database file unopenable (a folder in its place): its restarts fail before serving."""
    db = tmp_path / f"sup.shard{index}.db"
    db.rename(tmp_path / f"kept{index}.db")
    db.mkdir()
    return db


def repair_shard(tmp_path: Path, index: int) -> None:
    db = tmp_path / f"sup.shard{index}.db"
    db.rmdir()
    (tmp_path / f"kept{index}.db").rename(db)


def test_a_shard_that_keeps_failing_to_start_does_not_hold_back_another_shards_restart(tmp_path, supervisor_factory):
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "3"))
    broken, healthy = shard_pid(front.port, 1), shard_pid(front.port, 2)
    assert broken is not None and healthy is not None
    break_shard(tmp_path, 1)
    os.kill(broken, signal.SIGKILL)
    wait_until(lambda: "shard 1 exited with code" in (log := front.log.read_text()) and "retrying in" in log,
               message="shard 1 failing to restart")
    os.kill(healthy, signal.SIGKILL)
    wait_until(lambda: shard_pid(front.port, 2) not in (healthy, None), timeout=20,
               message="shard 2 restarted while shard 1 keeps failing")
    assert shard_pid(front.port, 1) is None

    # With two shards down, `runs` gets one refusal that names both.
    break_shard(tmp_path, 2)
    os.kill(shard_pid(front.port, 2), signal.SIGKILL)
    runs = wait_until(lambda: (r := front.cli("runs", check=False)).returncode != 0 and "shard 2" in r.stderr and r,
                      timeout=20, message="runs refused while shards 1 and 2 restart")
    assert "shard 1 of this supervisor is restarting" in runs.stderr
    assert "shard 2 of this supervisor is restarting" in runs.stderr
    log = front.log.read_text()
    assert "Abort already called" not in log
    assert "shard 1 exited with code 2 before serving" in log and "Unknown child process" not in log  # its real code

    repair_shard(tmp_path, 1)
    repair_shard(tmp_path, 2)
    wait_until(lambda: front.cli("runs", check=False).returncode == 0, timeout=90, message="shards 1 and 2 back")


def test_shards_are_stopped_with_the_front_door(tmp_path, supervisor_factory):
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "3"))
    children = [shard_pid(front.port, k) for k in (1, 2)]
    assert None not in children
    assert front.terminate() == 0
    wait_until(lambda: all(gone(pid) for pid in children), timeout=15, message="every shard stopped")


def test_with_db_writer_process_each_shard_writes_through_its_own_and_stops_it(tmp_path, supervisor_factory,
                                                                              trainers):
    from supervisor.storage import Store
    from tests.core.test_end_to_end import _running, _writer_processes

    db = tmp_path / "sup.db"
    front = supervisor_factory(db, args=("--shards", "2", "--db-writer", "process"))
    writers = [_writer_processes(shard_db(db, k)) for k in (0, 1)]
    assert [len(found) for found in writers] == [1, 1], writers
    run = run_owned_by(1, 2, "written")
    trainer = trainers("--run", run, "--address", front.address, "--steps", "400", "--sleep", "0.005")
    trainer.wait_for("connected")
    front.cli("set", run, "lr=0.04", "--wait")
    assert front.terminate() == 0
    wait_until(lambda: not any(_running(pid) for found in writers for pid in found), timeout=15,
               message="every writer process stopped")
    shard = Store(shard_db(db, 1))
    [row] = shard.load_runs()
    assert (row.name, row.version, row.values["lr"]) == (run, 1, 0.04)  # stored by shard 1's writer process
    shard.close()


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_bad_shard_count_is_refused_by_name(tmp_path, value):
    result = subprocess.run([*SUPERVISOR, "serve", "--shards", value, "--db", str(tmp_path / "x.db")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"--shards: must be a whole number of processes from 1 to 64, not {value!r}" in (
        result.stderr
    )
    assert not (tmp_path / "x.db").exists()


def test_shards_listen_on_the_ports_given(tmp_path, supervisor_factory):
    start = free_port()
    log = tmp_path / "sup.log"
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2", "--shard-ports", str(start)), log=log)
    assert f"shard 1 of 2 serves on port {start} " in log.read_text()
    assert front.cli("runs", address=f"127.0.0.1:{start}").returncode == 0
    refused = subprocess.run([*SUPERVISOR, "serve", "--shard-ports", "7000", "--db", str(tmp_path / "x.db")],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--shard-ports needs --shards 2 or more" in refused.stderr


def test_a_restart_with_more_shards_says_which_runs_moved_away(tmp_path, supervisor_factory, trainers):
    db = tmp_path / "sup.db"
    front = supervisor_factory(db, args=("--shards", "1"))
    moved = run_owned_by(1, 2, "moved")
    trainers("--run", moved, "--address", front.address, "--steps", "5").events()
    front.terminate()
    log = tmp_path / "second.log"
    second = supervisor_factory(db, args=("--shards", "2"), log=log)
    assert second.json("runs") == []  # shard 1 owns it now, and its file is empty: nothing listed twice
    time.sleep(0.2)
    assert f"holds 1 run(s) that shard 0 of 2 does not own (the number of shards changed?): {moved}" in log.read_text()


def test_every_shard_requires_the_token_and_the_front_door_passes_it_on(tmp_path, supervisor_factory, trainers):
    log = tmp_path / "sup.log"
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2", "--token", "s3cret"), log=log)
    away = run_owned_by(1, 2, "away")
    trainer = trainers("--run", away, "--address", front.address, "--steps", "200", env={"SUPERVISOR_TOKEN": "s3cret"})
    trainer.wait_for("connected")
    out = front.json("set", away, "lr=0.02", "--wait", "--token", "s3cret")
    assert out["acknowledged"] is True
    assert trainer.events()[-1]["values"]["lr"] == 0.02
    child_port = int(log.read_text().split("shard 1 of 2 serves on port ")[1].split()[0])
    direct = front.cli("runs", "--token", "wrong", check=False, address=f"127.0.0.1:{child_port}")
    assert direct.returncode != 0 and "missing or wrong token" in direct.stderr


def relayed_line(front, prefix: str, timeout: float = 30.0) -> str:
    """The first line of the front door's stdout starting with ``prefix`` (it passes on its shards' lines)."""
    import threading

    found: list[str] = [line for line in front.lines if line.startswith(prefix)]

    def read() -> None:
        while not found and (line := front.proc.stdout.readline()):
            front.lines.append(line.strip())
            if line.startswith(prefix):
                found.append(line.strip())

    if not found:
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
    assert found, f"no line starting with {prefix!r}: {front.lines}"
    return found[0]


def test_every_shard_serves_its_runs_metrics(tmp_path, supervisor_factory, trainers):
    import urllib.request

    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2", "--metrics-port", "0"))
    child_metrics = relayed_line(front, "shard 1: metrics on ").split()[-1]
    front_metrics = next(line for line in front.lines if line.startswith("metrics on ")).split()[-1]
    home, away = run_owned_by(0, 2, "home"), run_owned_by(1, 2, "away")
    for name in (home, away):
        trainers("--run", name, "--address", front.address, "--steps", "20").events()

    def scrape(url: str) -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    front_text, child_text = scrape(front_metrics), scrape(child_metrics)
    assert f'run="{home}"' in front_text and f'run="{away}"' not in front_text
    assert f'run="{away}"' in child_text and f'run="{home}"' not in child_text


def test_a_hangup_reloads_and_kills_no_shard(tmp_path, supervisor_factory):
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2"))  # no --config: nothing to reload
    child = shard_pid(front.port, 1)
    front.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert front.proc.poll() is None and shard_pid(front.port, 1) == child
    assert front.json("runs") == []


def test_a_reload_that_would_move_a_population_says_it_moves_nothing_until_a_restart(tmp_path, supervisor_factory):
    config = tmp_path / "policies.toml"
    config.write_text('[[policy]]\nid = "decay"\ntype = "plateau"\nruns = "*"\nmetric = "val_loss"\n')
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2", "--config", str(config)))
    front.proc.send_signal(signal.SIGHUP)  # the same file: nothing to say
    wait_until(lambda: "supervisor.policies: reloaded" in front.log.read_text(), message="the front door reloaded")
    config.write_text(config.read_text() + '[[policy]]\nid = "search"\ntype = "optuna"\nruns = "trial-*"\n'
                      'metric = "val_loss"\n')
    front.proc.send_signal(signal.SIGHUP)
    warning = "changes which runs are kept together (population policies: search), but runs stay on the shards"
    wait_until(lambda: warning in front.log.read_text(), message="the front door's warning")
    assert front.log.read_text().count("changes which runs are kept together") == 1


def test_an_older_trainer_is_told_to_upgrade_instead_of_redirected_forever(tmp_path, supervisor_factory):
    import grpc

    from tests.core.test_bad_input import hello, open_stream

    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2"))
    channel, call = open_stream(front.address, [hello(run_owned_by(1, 2, "old"))])  # no follows_redirects
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot follow it there: upgrade it" in info.value.details()
    channel.close()


def test_a_child_answers_for_its_own_runs_only(tmp_path, supervisor_factory, trainers):
    log = tmp_path / "sup.log"
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2"), log=log)
    home = run_owned_by(0, 2, "home")
    trainers("--run", home, "--address", front.address, "--steps", "5").events()
    child = f"127.0.0.1:{int(log.read_text().split('shard 1 of 2 serves on port ')[1].split()[0])}"
    refused = front.cli("history", home, check=False, address=child)
    assert refused.returncode != 0
    assert f"belongs to shard 0 of this supervisor; send operator calls to its front door (port {front.port})" in (
        refused.stderr
    )
    assert front.json("runs", address=child) == []


def test_while_a_shard_restarts_its_runs_are_unavailable_not_missing(tmp_path, supervisor_factory):
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2"))
    child = shard_pid(front.port, 1)
    os.kill(child, signal.SIGKILL)
    runs = wait_until(lambda: (r := front.cli("runs", check=False)).returncode != 0 and r, timeout=10,
                      message="runs refused while shard 1 restarts")
    assert "shard 1 of this supervisor is restarting" in runs.stderr
    wait_until(lambda: front.cli("runs", check=False).returncode == 0, message="shard 1 back")


def test_children_route_by_the_front_doors_rules_even_after_the_file_changed(tmp_path, supervisor_factory, trainers):
    config = tmp_path / "policies.toml"
    config.write_text('[[policy]]\nid = "search"\ntype = "optuna"\nruns = "trial-*"\nmetric = "val_loss"\n')
    population = [PopulationRule("search", ("trial-*",))]
    assert owner("trial-0", 2, population) == 1  # the population lives in the child
    trial = next(n for i in range(1000) if owner(n := f"trial-{i}", 2) == 0)  # its name alone says the front door
    front = supervisor_factory(tmp_path / "sup.db", args=("--shards", "2", "--config", str(config)))
    config.write_text("")  # edited while running: the child restarts on an empty file
    os.kill(shard_pid(front.port, 1), signal.SIGKILL)
    wait_until(lambda: front.cli("runs", check=False).returncode == 0, message="shard 1 back")
    trainer = trainers("--run", trial, "--address", front.address, "--steps", "200")
    trainer.wait_for("connected")
    assert front.json("set", trial, "lr=0.02", "--wait")["acknowledged"] is True
    assert trainer.events()[-1]["values"]["lr"] == 0.02
