"""Pacing: the supervisor bounds its metric message rate by asking trainers to batch more as they are added."""

from __future__ import annotations

import threading
import time

import pytest

from supervisor.client import OperatorClient
from tests.conftest import SUPERVISOR
from trainer_sdk import Float, connect


def _wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_trainers_are_paced_by_their_number_and_an_explicit_flush_still_goes_at_once(supervisor_factory) -> None:
    sup = supervisor_factory(args=("--max-metric-messages", "2"))  # 2 batches/s over all trainers
    spec = {"lr": Float(0.1, min=1e-4, max=1.0)}
    sessions = [connect(f"paced-{i}", spec, address=sup.address, telemetry=False) for i in range(3)]
    try:
        assert all(s.wait_connected(15) for s in sessions)
        # 3 streams / 2 per second: each sends at most every 1.5 s (the SDK's own 0.25 s is shorter)
        assert _wait(lambda: all(s.flush_interval == pytest.approx(1.5) for s in sessions)), [
            s.flush_interval for s in sessions
        ]

        # A steady stream now reaches the supervisor in few, large batches: count the jumps of
        # its received-points counter while one session reports every 5 ms for 4 s.
        hp, stop = sessions[0], threading.Event()

        def train() -> None:
            step = 0
            while not stop.is_set():
                hp.report(step, loss=1.0 / (step + 1))
                step += 1
                time.sleep(0.005)

        trainer = threading.Thread(target=train)
        with OperatorClient(sup.address) as client:
            received = lambda: client.runs("paced-0")[0].points_received  # noqa: E731
            trainer.start()
            time.sleep(0.5)  # past the first, immediate point
            seen, jumps, end = received(), 0, time.monotonic() + 4.0
            while time.monotonic() < end:
                now = received()
                jumps += now > seen
                seen = now
                time.sleep(0.02)
            stop.set()
            trainer.join()
            assert 1 <= jumps <= 5, f"{jumps} batches in 4 s; paced at 1.5 s there are about 3 (unpaced: 16)"

            # flush() is the training code asking for now: it does not wait for the pacing interval
            hp.report(10_000, val_loss=0.5)
            started = time.monotonic()
            assert hp.flush(timeout=10)
            assert time.monotonic() - started < 1.0  # paced, it would wait up to 1.5 s
            assert client.runs("paced-0")[0].latest_metrics["val_loss"] == 0.5

        # fewer trainers: the interval shrinks again, for those still connected
        for s in sessions[1:]:
            s.close()
        assert _wait(lambda: sessions[0].flush_interval == pytest.approx(0.5)), sessions[0].flush_interval
    finally:
        for s in sessions:
            s.close()


def test_a_bad_max_metric_messages_is_refused_naming_the_option(supervisor_factory, tmp_path) -> None:
    import subprocess

    result = subprocess.run(
        [*SUPERVISOR, "serve", "--db", str(tmp_path / "x.db"), "--max-metric-messages", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "--max-metric-messages" in result.stderr and "must be positive" in result.stderr
