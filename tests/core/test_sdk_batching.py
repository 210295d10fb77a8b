"""The SDK's sender takes metrics as fast as gRPC can carry them, never faster: its queue cannot grow."""

from __future__ import annotations

import queue
import socket
import time

import pytest

from trainer_sdk import Float
from trainer_sdk._link import BELL_SIZE, SHIP_IN_TIME, BlockingLink
from trainer_sdk._sidecar import RelayState, SidecarTransport
from trainer_sdk._state import Ack, ConnectOptions, Delta, SessionState
from trainer_sdk._transport import _METRICS, Transport
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb


def _options(flush_interval: float) -> ConnectOptions:
    return ConnectOptions(
        address="127.0.0.1:1", session_id="s", token=None, flush_interval=flush_interval, backoff_max=1.0
    )


def _transport(buffer_size: int = 5000, flush_interval: float = 0.0) -> Transport:
    state = SessionState(
        run="r", rank=0, world_size=1, params={"lr": Float(0.1)}, values={"lr": 0.1}, buffer_size=buffer_size
    )
    transport = Transport(state, _options(flush_interval))
    transport._outbox = queue.SimpleQueue()
    return transport


def test_points_reported_while_a_batch_waits_for_grpc_join_the_next_batch() -> None:
    transport = _transport()
    outbox = transport._outbox
    for step in range(1, 6):  # five pump rounds while gRPC is busy: one token, not five messages
        transport.state.queue.append((step, time.time(), {"loss": float(step)}))
        transport._drain()
        transport._send()
    assert outbox.qsize() == 1 and outbox.get() is _METRICS
    (batch,) = transport._unsent_batches(outbox)  # gRPC is ready: everything unsent goes at once
    assert batch.metrics.first_seq == 1 and list(batch.metrics.steps) == [1, 2, 3, 4, 5]
    assert transport._unsent_batches(outbox) == []  # nothing is sent twice

    transport.state.queue.append((6, time.time(), {"loss": 6.0}))
    transport._drain()
    transport._send()
    assert outbox.get() is _METRICS
    (batch,) = transport._unsent_batches(outbox)
    assert batch.metrics.first_seq == 6 and list(batch.metrics.values) == [6.0]


def test_a_long_backlog_goes_in_messages_of_at_most_512_points() -> None:
    transport = _transport()
    for step in range(1, 1201):
        transport.state.queue.append((step, time.time(), {"loss": 1.0}))
    transport._drain()
    transport._send()
    batches = transport._unsent_batches(transport._outbox)
    assert [len(b.metrics.steps) for b in batches] == [512, 512, 176]
    assert [b.metrics.first_seq for b in batches] == [1, 513, 1025]


def test_tensors_are_converted_together_whatever_their_dtype_and_shape() -> None:
    import math

    import torch

    transport = _transport()
    transport.state.queue.append((1, time.time(), {
        "loss": torch.tensor(0.5), "acc": torch.tensor(0.25, dtype=torch.float64), "count": torch.tensor(3),
        "one": torch.tensor([2.0]), "many": torch.tensor([1.0, 2.0]), "bad": torch.tensor(float("nan")),
        "plain": 1.5,
    }))
    transport.state.queue.append((2, time.time(), {"loss": torch.tensor(0.25)}))
    transport._drain()
    (_, _, _, first), (_, _, _, second) = transport._unacked
    assert {k: v for k, v in first.items() if k != "bad"} == {
        "loss": 0.5, "acc": 0.25, "count": 3.0, "one": 2.0, "plain": 1.5,
    }
    assert math.isnan(first["bad"]) and "many" not in first  # several elements: not a number, dropped
    assert second == {"loss": 0.25} and all(type(v) is float for v in (*first.values(), *second.values()))


def _report(transport: Transport, *steps: int) -> None:
    for step in steps:
        transport.state.queue.append((step, time.time(), {"loss": float(step)}))
    transport._drain()
    transport._send()


def test_points_trimmed_in_flight_count_as_dropped_only_if_the_supervisor_did_not_store_them() -> None:
    transport = _transport(buffer_size=3)
    _report(transport, 1, 2, 3)
    transport._unsent_batches(transport._outbox)  # seqs 1-3 are on the wire
    _report(transport, 4, 5)  # the buffer keeps 3: seqs 1 and 2 leave it before their ack
    assert [p[0] for p in transport._unacked] == [3, 4, 5] and transport.dropped == 0
    assert transport.unstored() == 5  # the two in flight count as not stored until their ack says
    transport._on_metrics_ack(3)  # stored after all: nothing was dropped
    assert transport.dropped == 0 and [p[0] for p in transport._unacked] == [4, 5]

    _report(transport, 6, 7, 8)  # seqs 4 and 5 were never sent: dropped at once
    assert transport.dropped == 2 and [p[0] for p in transport._unacked] == [6, 7, 8]

    transport._unsent_batches(transport._outbox)  # 6-8 in flight, then the connection breaks
    _report(transport, 9, 10)  # 6 and 7 trimmed in flight
    transport._on_welcome(pb.Welcome(version=0, last_seq=6), queue.SimpleQueue())
    assert transport.dropped == 3  # the new connection says 6 was stored and 7 was not
    assert [p[0] for p in transport._unacked] == [8, 9, 10]


def _sent(outbox: queue.SimpleQueue) -> list:
    out = []
    while not outbox.empty():
        out.append(outbox.get())
    return out


def _holding(flush_interval: float = 10.0) -> Transport:
    """A transport with a point on its way and a policy's change applied: its acknowledgement is held."""
    transport = _transport(flush_interval=flush_interval)
    transport.state.queue.append((1, time.time(), {"loss": 1.0}))  # queued, not yet due
    transport.state.receive(Delta(version=1, changes={"lr": 0.2}, source="policy:plateau", ack_with_metrics=True))
    transport._send()
    assert _sent(transport._outbox) == [] and transport.state.values["lr"] == 0.2  # applied, not acknowledged
    return transport


def _applied_alone(outbox: queue.SimpleQueue) -> int:
    """The version of the one message sent, an Applied of its own."""
    (message,) = _sent(outbox)
    assert message.WhichOneof("message") == "applied"
    return message.applied.version


def test_a_policys_acknowledgement_rides_the_next_batch_and_an_operators_goes_at_once() -> None:
    transport = _holding()
    state, outbox = transport.state, transport._outbox
    transport._drain()
    transport._send()
    assert _sent(outbox) == [_METRICS]
    (batch,) = transport._unsent_batches(outbox)
    assert list(batch.metrics.steps) == [1] and batch.metrics.applied.version == 1

    state.receive(Delta(version=2, changes={"lr": 0.3}, source="operator"))  # someone waits for this one
    transport._send()
    assert _applied_alone(outbox) == 2


def test_a_held_acknowledgement_goes_alone_when_no_batch_would_carry_it() -> None:
    transport = _transport(flush_interval=10.0)
    transport.state.receive(Delta(version=1, changes={"lr": 0.2}, ack_with_metrics=True))
    transport._send()  # an idle trainer: nothing to send, so no batch will come
    assert _applied_alone(transport._outbox) == 1 and transport._held_ack is None


def test_an_acknowledgement_sent_at_once_covers_the_held_one_before_it() -> None:
    transport = _holding()
    outbox = transport._outbox
    transport.state.receive(Delta(version=2, changes={"lr": 0.3}))
    transport._send()
    assert _applied_alone(outbox) == 2  # versions are cumulative: 2 acknowledges 1 too
    transport._drain()
    transport._send()
    assert _sent(outbox) == [_METRICS]
    (batch,) = transport._unsent_batches(outbox)
    assert not batch.metrics.HasField("applied")


def test_a_held_acknowledgement_waits_for_a_batch_no_longer_than_the_flush_interval() -> None:
    transport = _holding(flush_interval=0.05)  # points queued, but no flush comes in time
    time.sleep(0.06)
    transport._send()
    assert _applied_alone(transport._outbox) == 1


def test_a_closing_session_does_not_keep_an_acknowledgement_for_a_batch_that_may_not_come() -> None:
    transport = _holding()
    transport.stopping.set()  # close(): the last batches may never be sent
    transport._send()
    assert _applied_alone(transport._outbox) == 1


@pytest.fixture
def sidecar():
    """The process transport's sidecar side, its link to the trainer a socket pair; gRPC never started."""
    ours, trainers = socket.socketpair()
    state = RelayState(run="r", rank=0, world_size=1, params={"lr": Float(0.1)}, values={"lr": 0.1}, buffer_size=5000)
    state.link = BlockingLink(ours, bytearray(BELL_SIZE))
    transport = SidecarTransport(state, state.link, _options(flush_interval=10.0))
    transport._outbox = queue.SimpleQueue()
    yield transport
    ours.close()
    trainers.close()


def _policy_change_applied(transport: Transport) -> None:
    """The trainer applied a policy's change and acknowledged it (``ack_with_metrics``), as its "acks" message says."""
    transport.state.acks.append(Ack(version=1, step=5, time=time.time(), with_metrics=True))
    transport._send()


def test_the_sidecar_holds_an_acknowledgement_for_a_trainer_that_ships_points(sidecar) -> None:
    sidecar.take_points(0, [(5, time.time(), {"loss": 1.0})], SHIP_IN_TIME)
    sidecar._drain()
    sidecar._send()
    assert _sent(sidecar._outbox) == [_METRICS]
    sidecar._unsent_batches(sidecar._outbox)  # gRPC took the batch: nothing is queued or unsent now
    _policy_change_applied(sidecar)
    assert _sent(sidecar._outbox) == [] and sidecar._held_ack is not None  # its next shipment will carry it


def test_the_sidecar_does_not_hold_an_acknowledgement_for_a_shipment_without_points(sidecar) -> None:
    sidecar.take_points(0, [], SHIP_IN_TIME)  # the trainer's timer came due in a loop that reports nothing
    _policy_change_applied(sidecar)
    assert _applied_alone(sidecar._outbox) == 1
