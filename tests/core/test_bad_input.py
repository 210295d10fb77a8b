"""Bad input gets a clear error, and the server keeps serving every other run."""

from __future__ import annotations

import json
import socket
import subprocess

import grpc
import pytest

from tests.conftest import ROOT, SUPERVISOR
from trainer_sdk import _wire
from trainer_sdk._params import Float
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb
from trainer_sdk.protocol.v1 import supervisor_pb2_grpc as pb_grpc


def hello(run: str = "raw", **overrides) -> pb.ConnectRequest:
    fields = dict(
        run=run,
        rank=0,
        world_size=1,
        session_id="s1",
        params=[_wire.spec_to_wire("lr", Float(0.1, min=0.0, max=1.0))],
        version=0,
    )
    fields.update(overrides)
    return pb.ConnectRequest(hello=pb.Hello(**fields))


def open_stream(address: str, messages: list[pb.ConnectRequest], **channel_options):
    channel = grpc.insecure_channel(address, options=list(channel_options.items()))
    stub = pb_grpc.TrainerServiceStub(channel)
    return channel, stub.Connect(iter(messages), timeout=10)


def assert_still_serving(supervisor) -> None:
    assert supervisor.proc.poll() is None
    supervisor.json("runs")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (hello(rank=3, world_size=2), "rank 3 is not in [0, world_size=2)"),
        (hello(run=""), "hello.run must be a non-empty"),
        (hello(session_id=""), "hello.session_id is empty"),
        (hello(params=[_wire.spec_to_wire("lr", Float(0.1, min=0.0, max=1.0))] * 2), "repeated parameter name 'lr'"),
        (hello(values={"lr": pb.ParamValue(float_value=5.0)}), "lr: 5.0 is above the maximum 1.0"),
        (pb.ConnectRequest(metrics=pb.MetricBatch()), "first message of a Connect stream must be a hello"),
    ],
)
def test_invalid_session_is_refused_with_a_reason(supervisor, message, expected):
    channel, call = open_stream(supervisor.address, [message])
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in info.value.details()
    channel.close()
    assert_still_serving(supervisor)


def test_oversized_message_is_refused_and_nothing_else_suffers(supervisor):
    huge = pb.MetricBatch(
        points=[pb.MetricPoint(seq=i + 1, step=i, values={f"m{j}": 1.0 for j in range(40)}) for i in range(8_000)]
    )
    assert huge.ByteSize() > 4 * 1024 * 1024
    channel, call = open_stream(
        supervisor.address,
        [hello("big"), pb.ConnectRequest(metrics=huge)],
        **{"grpc.max_send_message_length": 64 * 1024 * 1024},
    )
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    channel.close()
    assert_still_serving(supervisor)


def test_unexpected_message_after_hello_closes_only_that_stream(supervisor):
    channel, call = open_stream(supervisor.address, [hello("twice"), hello("twice")])
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert "unexpected hello message after hello" in info.value.details()
    channel.close()
    assert_still_serving(supervisor)


def test_non_monotonic_sequence_is_refused(supervisor):
    batch = pb.MetricBatch(
        points=[pb.MetricPoint(seq=5, step=1, values={"x": 1.0}), pb.MetricPoint(seq=4, step=2, values={"x": 1.0})]
    )
    channel, call = open_stream(supervisor.address, [hello("seq"), pb.ConnectRequest(metrics=batch)])
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert "metric seq must increase" in info.value.details()
    channel.close()
    assert_still_serving(supervisor)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (pb.MetricBatch(first_seq=1, steps=[1, 2], times=[0.0], value_counts=[1, 1], names=["x"],
                        name_indexes=[0, 0], values=[1.0, 2.0]), "metric columns disagree: 2 steps, 1 times"),
        (pb.MetricBatch(first_seq=1, steps=[1], times=[0.0], value_counts=[2], names=["x"], name_indexes=[0],
                        values=[1.0]), "value counts add up to 2"),
        (pb.MetricBatch(first_seq=1, steps=[1], times=[0.0], value_counts=[1], names=["x"], name_indexes=[4],
                        values=[1.0]), "name index is outside the batch's 1 names"),
        (pb.MetricBatch(first_seq=0, steps=[1], times=[0.0], value_counts=[0]), "first_seq is 0"),
        (pb.MetricBatch(points=[pb.MetricPoint(seq=1)], steps=[1], times=[0.0], value_counts=[0], values=[1.0],
                        name_indexes=[0], names=["x"]), "either points or columns"),
    ],
)
def test_inconsistent_metric_columns_are_refused(supervisor, batch, expected):
    channel, call = open_stream(supervisor.address, [hello("cols"), pb.ConnectRequest(metrics=batch)])
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in info.value.details()
    channel.close()
    assert_still_serving(supervisor)


def test_points_form_is_accepted_and_deduplicated(supervisor):
    batch = pb.MetricBatch(points=[pb.MetricPoint(seq=s, step=s, values={"x": float(s)}) for s in (1, 2, 3)])
    resend = pb.MetricBatch(points=[pb.MetricPoint(seq=s, step=s, values={"x": float(s)}) for s in (2, 3, 4)])
    channel, call = open_stream(supervisor.address, [hello("pts"), pb.ConnectRequest(metrics=batch),
                                                     pb.ConnectRequest(metrics=resend)])
    acks = [r.metrics_ack.seq for r in call if r.WhichOneof("message") == "metrics_ack"]
    assert acks[-1] == 4
    channel.close()
    steps = [json.loads(line)["step"] for line in supervisor.cli("metrics", "pts", "--json").stdout.splitlines()]
    assert steps == [1, 2, 3, 4]


def test_garbage_on_the_port_does_not_hurt_the_server(supervisor):
    host, port = supervisor.address.rsplit(":", 1)
    for payload in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)) * 64,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 1000,
    ):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(payload)
            try:
                sock.recv(1024)
            except (TimeoutError, ConnectionResetError):
                pass
    assert_still_serving(supervisor)


def test_token_is_required_when_configured(supervisor_factory, tmp_path):
    secured = supervisor_factory(tmp_path / "auth.db", args=("--token", "s3cret"))
    result = secured.cli("runs", check=False)
    assert result.returncode != 0 and "missing or wrong token" in result.stderr
    ok = subprocess.run(
        [*SUPERVISOR, "runs", "--address", secured.address, "--token", "s3cret"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr


def test_bad_cli_usage_is_explained(supervisor):
    result = supervisor.cli("set", "run", "lr", check=False)
    assert result.returncode == 2 and "'lr' is not NAME=VALUE" in result.stderr


def test_unreachable_supervisor_is_explained():
    result = subprocess.run(
        [*SUPERVISOR, "runs", "--address", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1 and "no supervisor answers at 127.0.0.1:1" in result.stderr


@pytest.mark.parametrize("case", ["a folder", "missing folder", "not sqlite"])
def test_an_unusable_database_is_refused_by_name_and_left_as_it_was(tmp_path, case):
    paths = {"a folder": tmp_path, "missing folder": tmp_path / "nowhere" / "s.db", "not sqlite": tmp_path / "notes.db"}
    db = paths[case]
    if case == "not sqlite":
        db.write_text("my notes\n" * 100)
    result = subprocess.run([*SUPERVISOR, "serve", "--port", "0", "--db", str(db)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"error: cannot use the database {db}:" in result.stderr and "Traceback" not in result.stderr
    if case == "not sqlite":
        assert db.read_text() == "my notes\n" * 100
    assert not (tmp_path / "nowhere").exists()
