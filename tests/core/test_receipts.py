"""Receipts of stored points (MetricsAck): late and together for a trainer that allows it, at once when it waits."""

from __future__ import annotations

import json
import queue
import time

import grpc
import pytest

from supervisor.connections import Receipts, TrainerStream
from tests.conftest import wait_until
from tests.core.test_bad_input import hello
from trainer_sdk import Float, connect
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc


class RawStream:
    """A Connect stream driven by hand: ``send`` a message, ``next_ack`` reads up to the next MetricsAck."""

    def __init__(self, address: str, first: pb.ConnectRequest) -> None:
        self._outgoing: queue.Queue[pb.ConnectRequest | None] = queue.Queue()
        self._outgoing.put(first)
        self.channel = grpc.insecure_channel(address)
        self.call = pb_grpc.TrainerServiceStub(self.channel).Connect(iter(self._outgoing.get, None), timeout=60)
        self.responses = iter(self.call)

    def send(self, **batch: object) -> None:
        self._outgoing.put(pb.ConnectRequest(metrics=pb.MetricBatch(**batch)))

    def points(self, first: int, count: int, **extra: object) -> None:
        self.send(first_seq=first, steps=list(range(first, first + count)), times=[0.0] * count,
                  value_counts=[1] * count, names=["loss"], name_indexes=[0] * count,
                  values=[1.0] * count, **extra)

    def next_ack(self) -> int:
        for response in self.responses:
            if response.WhichOneof("message") == "metrics_ack":
                return response.metrics_ack.seq
        raise AssertionError("the stream ended without a receipt")

    def close(self) -> None:
        self._outgoing.put(None)
        self.call.cancel()
        self.channel.close()


def stored_points(supervisor, run: str) -> int:
    return len(supervisor.cli("metrics", run, "--json").stdout.splitlines())


def test_a_lazy_trainer_hears_late_unless_it_asks(supervisor_factory):
    supervisor = supervisor_factory(args=("--ack-delay", "60"))
    stream = RawStream(supervisor.address, hello("lazy", lazy_acks=True))
    stream.points(1, 5)
    assert stream.next_ack() == 5  # the first receipt goes at once
    stream.points(6, 5)
    wait_until(lambda: stored_points(supervisor, "lazy") == 10, message="points 6-10 stored")
    stream.send(ack_now=True)  # no points: only the receipt of what was sent
    assert stream.next_ack() == 10
    stream.points(11, 5)
    wait_until(lambda: stored_points(supervisor, "lazy") == 15, message="points 11-15 stored")
    stream.points(16, 5, ack_now=True)
    assert stream.next_ack() == 20, "the receipt of 11-15 waited and went with 16-20's"
    stream.close()


def test_held_back_receipts_go_within_the_delay(supervisor_factory):
    supervisor = supervisor_factory(args=("--ack-delay", "0.5"))
    stream = RawStream(supervisor.address, hello("late", lazy_acks=True))
    stream.points(1, 3)
    assert stream.next_ack() == 3
    stream.points(4, 3)
    assert stream.next_ack() == 6  # nobody asked: it comes anyway, half a second later at most
    stream.close()


def test_a_trainer_without_lazy_acks_hears_after_every_commit(supervisor_factory):
    supervisor = supervisor_factory(args=("--ack-delay", "60"))
    stream = RawStream(supervisor.address, hello("eager"))
    for first in (1, 4, 7):
        stream.points(first, 3)
        assert stream.next_ack() == first + 2
    stream.close()


@pytest.mark.parametrize("transport", ["thread", "process"])
def test_a_waiting_flush_is_answered_at_once(supervisor_factory, transport):
    supervisor = supervisor_factory(args=("--ack-delay", "60"))  # a receipt nobody waits for: a minute late
    hp = connect("flushes", {"lr": Float(0.1)}, address=supervisor.address, telemetry=False, transport=transport)
    try:
        assert hp.wait_connected(30)
        for round_ in range(3):
            for step in range(round_ * 10, round_ * 10 + 10):
                hp.report(step, loss=1.0 / (step + 1))
            hp.flush(0)  # sent without waiting: its receipt may come a minute later
            time.sleep(0.2)
            hp.report(round_ * 10 + 10, val_loss=0.5)
            started = time.monotonic()
            assert hp.flush(20), f"round {round_}: flush(20) not answered in {time.monotonic() - started:.1f}s"
    finally:
        hp.close(timeout=20)
    metrics = [json.loads(line) for line in supervisor.cli("metrics", "flushes", "--json").stdout.splitlines()]
    assert len([m for m in metrics if m["name"] == "loss"]) == 30


@pytest.mark.parametrize("case", ["eager trainer", "lazy, receipt due", "lazy, receipt not due"])
def test_a_stream_that_ended_gets_no_receipt_from_a_commit_that_lands_later(case):
    receipts = Receipts(delay=2.0)
    stream = TrainerStream(run="r", rank=0, session_id="s", session_key=1, last_seq=10, peer="p",
                           lazy_acks=case != "eager trainer")
    stream.acked_at = time.monotonic() - (0.0 if case == "lazy, receipt not due" else 10.0)
    receipts.forget(stream)  # the call ended while its last batch was being committed
    stream.stored_seq = 10
    receipts.stored(stream, time.monotonic())
    assert stream.outbox.empty()
    assert stream not in receipts._late  # nor kept for the next sweep
