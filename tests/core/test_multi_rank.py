"""Several ranks of one job: one run, every rank acknowledges, step gates line ranks up."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from tests.conftest import ROOT, wait_until
from trainer_sdk import Float, connect


def test_ranks_switch_at_the_same_step_and_all_acknowledge(supervisor):
    ranks = [
        connect(
            run="ddp",
            params={"lr": Float(0.1, min=0.0, max=1.0)},
            address=supervisor.address,
            rank=r,
            world_size=2,
            telemetry=False,
        )
        for r in range(2)
    ]
    assert all(hp.wait_connected(10) for hp in ranks)
    switched: dict[int, int] = {}
    started = threading.Barrier(2)

    def loop(hp) -> None:
        started.wait()
        for step in range(300):
            if hp.lr == 0.05 and hp.rank not in switched:
                switched[hp.rank] = step
            hp.report(step, loss=1.0)
            time.sleep(0.005 * (1 + hp.rank))  # rank 1 runs at half speed

    threads = [threading.Thread(target=loop, args=(hp,)) for hp in ranks]
    for t in threads:
        t.start()
    wait_until(lambda: supervisor.json("runs")[0]["connected_ranks"] == 2, message="both ranks")
    out = supervisor.json("set", "ddp", "lr=0.05", "--at-step", "120", "--wait", "--timeout", "20")
    assert out["acknowledged"] is True
    for t in threads:
        t.join()
    # Visible from the first read after the report of step 120, on both ranks, though they run at different speeds.
    assert switched == {0: 121, 1: 121}
    entry = next(e for e in supervisor.json("history", "ddp") if e["version"] == 1)
    assert sorted((a["rank"], a["step"]) for a in entry["acks"]) == [(0, 120), (1, 120)]
    run = supervisor.json("runs")[0]
    assert run["world_size"] == 2 and run["acked_version"] == 1
    for hp in ranks:
        hp.close()


FORKING_TRAINER = """
import sys, torch
from torch.utils.data import DataLoader, TensorDataset
from trainer_sdk import connect
hp = connect(run="fork", params={"lr": 0.1}, address=sys.argv[1], telemetry=False)
assert hp.wait_connected(10)
data = DataLoader(TensorDataset(torch.arange(64.0)), batch_size=8, num_workers=2,
                  multiprocessing_context="fork")
step = 0
for epoch in range(3):
    for (batch,) in data:
        hp.report(step, loss=float(batch.mean()))
        step += 1
assert hp.flush(20), "points not stored"
hp.close()
print("steps", step)
"""


def test_forked_dataloader_workers_neither_hang_nor_break_the_session(supervisor):
    result = subprocess.run(
        [sys.executable, "-c", FORKING_TRAINER, supervisor.address],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steps 24" in result.stdout
    assert supervisor.json("runs")[0]["points_received"] == 24


def test_policies_count_rank_zero_only_by_default(tmp_path, supervisor_factory):
    config = tmp_path / "policies.toml"
    config.write_text('[[policy]]\nid = "plateau"\ntype = "plateau"\nmetric = "val_loss"\nfactor = 0.5\npatience = 2\n')
    supervisor = supervisor_factory(tmp_path / "ranks.db", args=("--config", str(config)))
    ranks = [
        connect(
            run="ddp-policy",
            params={"lr": Float(0.1, min=0.0, max=1.0)},
            address=supervisor.address,
            rank=r,
            world_size=2,
            telemetry=False,
        )
        for r in range(2)
    ]
    assert all(hp.wait_connected(10) for hp in ranks)
    for step in range(4):
        for hp in ranks:  # both ranks report the same flat epoch
            hp.report(step, val_loss=1.0)
            assert hp.flush(10)
        time.sleep(0.1)
    wait_until(
        lambda: any(e["source"] == "policy:plateau" for e in supervisor.json("history", "ddp-policy")),
        message="a decay",
    )
    time.sleep(0.5)
    decays = [e for e in supervisor.json("history", "ddp-policy") if e["source"] == "policy:plateau"]
    # torch's ReduceLROnPlateau over rank 0's epochs: best at 0, bad at 1, 2, 3 -> one reduction, at step 3.
    assert [e["step"] for e in decays] == [3]
    for hp in ranks:
        hp.close()


def test_latest_metrics_come_from_the_lowest_rank_that_reports_them(supervisor):
    ranks = [
        connect(run="shards", params={"lr": 0.1}, address=supervisor.address, rank=r, world_size=2, telemetry=False)
        for r in range(2)
    ]
    assert all(hp.wait_connected(10) for hp in ranks)
    zero, one = ranks

    def latest() -> dict:
        return supervisor.run("shards")["latest_metrics"]

    zero.report(0, loss=1.0)
    assert zero.flush(10)
    one.report(0, loss=2.0, only_one=7.0)  # arrives last: before, the run's loss became rank 1's
    assert one.flush(10)
    assert latest() == {"loss": 1.0, "only_one": 7.0}

    zero.close()  # rank 0 has no connection left: rank 1's next report takes its metrics over
    wait_until(lambda: supervisor.run("shards")["connected_ranks"] == 1, message="rank 0 gone")
    one.report(1, loss=3.0)
    assert one.flush(10)
    assert latest() == {"loss": 3.0, "only_one": 7.0}
    one.close()
