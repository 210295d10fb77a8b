"""A call whose client gives up (a deadline, a dropped connection) still finishes what it started.

grpc.aio cancels a handler when its client goes away. To make that happen in
the middle of a durable write every time, the test holds SQLite's write lock
on the supervisor's real database file from a connection of its own, so the
supervisor's write waits until the client's deadline has passed.
"""

from __future__ import annotations

import queue
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from supervisor.client import OperatorClient
from tests.conftest import wait_until
from tests.core.test_bad_input import hello
from trainer_sdk import Float, connect
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc


@contextmanager
def database_locked(db: Path) -> Iterator[None]:
    """Hold the write lock of ``db``: the supervisor's next write waits (its busy timeout is 30 s)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_a_change_whose_caller_gave_up_is_recorded_and_sent_and_the_run_takes_the_next(supervisor):
    hp = connect("patient", {"lr": Float(0.1, min=0.0, max=1.0)}, address=supervisor.address, telemetry=False)
    client = OperatorClient(supervisor.address)
    impatient = OperatorClient(supervisor.address, timeout=0.5)
    try:
        assert hp.wait_connected(10)
        with database_locked(supervisor.db):
            with pytest.raises(grpc.RpcError) as info:
                impatient.set("patient", {"lr": 0.2})
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The abandoned change was recorded once the lock was released, and reached the trainer.
        wait_until(lambda: hp.lr == 0.2, timeout=10, message="the abandoned change never reached the trainer")
        assert hp.version == 1
        # Before the fix the run's memory stayed at version 0: this change took version 1 again and failed.
        assert client.set("patient", {"lr": 0.3}).version == 2
        wait_until(lambda: hp.lr == 0.3, timeout=10)
        assert [entry.version for entry in client.history("patient") if entry.version] == [1, 2]
    finally:
        hp.close()
        client.close()
        impatient.close()


def test_a_session_whose_trainer_left_during_its_hello_is_closed_and_its_run_stays_usable(supervisor):
    channel = grpc.insecure_channel(supervisor.address)
    try:
        with database_locked(supervisor.db):
            call = pb_grpc.TrainerServiceStub(channel).Connect(iter([hello(run="left")]), timeout=0.5)
            with pytest.raises(grpc.RpcError) as info:
                list(call)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        channel.close()
    # Before the fix the run was in the database and not in memory: every later Hello failed to create it again.
    hp = connect("left", {"lr": Float(0.1, min=0.0, max=1.0)}, address=supervisor.address, telemetry=False)
    try:
        assert hp.wait_connected(10)
        wait_until(lambda: supervisor.run("left").get("connected") is True, timeout=10)
    finally:
        hp.close()
    # The session opened for the Hello nobody waited for was closed too: nothing holds the run connected.
    wait_until(lambda: not supervisor.run("left")["connected"], timeout=10, message="the abandoned session stayed open")


def test_a_goodbye_whose_stream_was_cancelled_while_it_was_stored_still_ends_the_run_for_its_policies(
    tmp_path, supervisor_factory
):
    # The SDK's close() cancels its call once its Goodbye is sent; the supervisor may still be storing it.
    config = tmp_path / "policies.toml"
    config.write_text('[[policy]]\nid = "end"\ntype = "tests.core.policies_for_tests:EndProbe"\nruns = "bye"\n')
    supervisor = supervisor_factory(args=("--config", str(config)))
    channel = grpc.insecure_channel(supervisor.address)
    requests: queue.SimpleQueue = queue.SimpleQueue()
    try:
        call = pb_grpc.TrainerServiceStub(channel).Connect(iter(requests.get, None), timeout=30)
        requests.put(hello(run="bye"))
        assert next(call).WhichOneof("message") == "welcome"
        with database_locked(supervisor.db):
            requests.put(pb.ConnectRequest(goodbye=pb.Goodbye(outcome=pb.RUN_OUTCOME_COMPLETED)))
            # The supervisor has read it (the outcome is in memory) and waits for the database.
            wait_until(lambda: supervisor.run("bye")["outcome"] == "completed", timeout=10)
            call.cancel()
            time.sleep(0.2)
    finally:
        requests.put(None)
        channel.close()
    # Before the fix the cancellation skipped telling the policies: 60 s later the run "vanished" instead.
    wait_until(
        lambda: any(e["reason"] == "ended completed" for e in supervisor.json("history", "bye")),
        timeout=10,
        message="the policy never heard that the run completed",
    )


def test_calls_whose_callers_left_are_finished_before_a_graceful_stop(supervisor_factory):
    supervisor = supervisor_factory()
    hp = connect("two", {"lr": Float(0.1, min=0.0, max=1.0)}, address=supervisor.address, telemetry=False)
    assert hp.wait_connected(10)
    hp.close()  # no stream left open: the gRPC server's stop does not wait out its grace for one
    impatient = OperatorClient(supervisor.address, timeout=0.5)
    try:
        with database_locked(supervisor.db):
            for lr in (0.2, 0.3):  # the second waits for the run's lock, behind the first's write
                with pytest.raises(grpc.RpcError):
                    impatient.set("two", {"lr": lr})
            supervisor.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        assert supervisor.proc.wait(30) == 0
    finally:
        impatient.close()
    # Before the stop waited for them, the second change met a closed database and was lost.
    again = supervisor_factory(supervisor.db)
    changes = [(e["version"], e["changes"]["lr"]["new"]) for e in again.json("history", "two") if e["version"]]
    assert changes == [(1, 0.2), (2, 0.3)]
