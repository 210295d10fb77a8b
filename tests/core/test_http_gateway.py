"""The operator HTTP/JSON gateway and the CLI's stdlib-only path to it: real processes on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, SUPERVISOR, SupervisorProcess, free_port, wait_until
from trainer_sdk import connect

FORBIDDEN_ON_THE_HTTP_PATH = ("grpc", "google", "asyncio", "logging", "trainer_sdk", "http.client", "email", "ssl")
"""Modules whose import the HTTP path exists to avoid (plus the server's own modules, checked below)."""


def http(address: str, raw: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes to the gateway, read one answer: (status, JSON body, raw head)."""
    host, port = address.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), head


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0


def post(address: str, method: str, body: bytes, *, headers: str = "") -> tuple[int, dict]:
    request = (
        f"POST /v1/{method} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n"
    ).encode() + body
    status, payload, _ = http(address, request)
    return status, payload


def assert_both_paths_agree(supervisor: SupervisorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    over_grpc = supervisor.cli(*args, check=False)
    over_http = supervisor.cli(*args, check=False, address=supervisor.http_address)
    assert (over_http.returncode, over_http.stderr) == (over_grpc.returncode, over_grpc.stderr), args
    return over_http


def test_serve_prints_the_gateway_before_the_listening_line(supervisor):
    assert supervisor.http_address.startswith("http://127.0.0.1:"), supervisor.lines
    http_line = next(i for i, line in enumerate(supervisor.lines) if line.startswith("http gateway on "))
    assert http_line < next(i for i, line in enumerate(supervisor.lines) if line.startswith("listening on "))


def test_set_over_http_reaches_the_trainer_and_shows_in_history(supervisor, trainers):
    trainer = trainers("--run", "web", "--address", supervisor.address, "--steps", "400")
    trainer.wait_for("connected")
    out = supervisor.json(
        "set", "web", "lr=0.01", "momentum=0.5", "--reason", "via http", "--wait", address=supervisor.http_address
    )
    assert out == {"run": "web", "version": 1, "acknowledged": True, "old": {"lr": 0.1, "momentum": 0.9}}
    supervisor.cli("set", "web", "lr=0.02", "--at-step", "300", address=supervisor.http_address)
    events = trainer.events()
    change = next(e for e in events if e["event"] == "change")
    assert change["new"] == {"lr": 0.01, "momentum": 0.5} and change["source"] == "operator"
    assert change["reason"] == "via http" and change["version"] == 1
    assert events[-1]["values"]["lr"] == 0.02 and events[-1]["version"] == 2

    history = supervisor.json("history", "web", address=supervisor.http_address)
    entry = next(e for e in history if e["version"] == 1)
    assert entry["kind"] == "set" and entry["reason"] == "via http"
    assert entry["changes"]["lr"] == {"old": 0.1, "new": 0.01}
    assert len(entry["acks"]) == 1 and entry["acks"][0]["rank"] == 0
    assert next(e for e in history if e["version"] == 2)["apply_at_step"] == 300
    # the same bytes over either transport, once the run stands still
    for args in (("history", "web"), ("history", "web", "--json"), ("runs", "--json")):
        over_grpc = supervisor.cli(*args).stdout
        over_http = supervisor.cli(*args, address=supervisor.http_address).stdout
        assert (json.loads(over_http) if "--json" in args else over_http) == (
            json.loads(over_grpc) if "--json" in args else over_grpc
        )
    assert supervisor.cli("metrics", "web", "--name", "loss", address=supervisor.http_address).stdout == (
        supervisor.cli("metrics", "web", "--name", "loss").stdout
    )


def test_trigger_and_release_over_http(supervisor, trainers):
    trainer = trainers("--run", "tr", "--address", supervisor.address, "--until-trigger", "stop", "--steps", "0")
    trainer.wait_for("connected")
    supervisor.cli("set", "tr", "lr=0.05", address=supervisor.http_address)
    assert supervisor.json("release", "tr", address=supervisor.http_address) == {"run": "tr", "released": ["lr"]}
    released = supervisor.cli("release", "tr", address=supervisor.http_address).stdout
    assert released == "nothing was pinned\n"
    assert supervisor.json("trigger", "tr", "stop", address=supervisor.http_address)["version"] == 2
    events = trainer.events()
    assert [e["name"] for e in events if e["event"] == "trigger"] == ["stop"]


def test_errors_over_http_read_as_over_grpc(supervisor, trainers):
    trainer = trainers("--run", "err", "--address", supervisor.address, "--steps", "200")
    trainer.wait_for("connected")
    cases = {
        ("set", "err", "momentum=fast"): "momentum: expected a number, got 'fast'",
        ("set", "err", "lr=2"): "lr: 2.0 is above the maximum 1.0",
        ("set", "err", "nope=1"): "nope: run 'err' has no parameter 'nope'",
        ("set", "missing-run", "lr=0.1"): "unknown run 'missing-run'",
        ("history", "missing-run"): "unknown run 'missing-run'",
        ("trigger", "missing-run", "stop"): "unknown run 'missing-run'",
    }
    for args, message in cases.items():
        result = assert_both_paths_agree(supervisor, *args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
    usage = assert_both_paths_agree(supervisor, "set", "err", "lr")
    assert usage.returncode == 2 and "'lr' is not NAME=VALUE" in usage.stderr
    events = trainer.events()
    assert not [e for e in events if e["event"] == "change"]  # nothing reached the trainer


def test_wait_timeout_over_http_says_the_change_is_recorded(supervisor):
    hp = connect(run="gone", params={"lr": 0.1}, address=supervisor.address, telemetry=False)
    assert hp.wait_connected(10)
    hp.close()
    wait_until(lambda: not supervisor.json("runs")[0]["connected"], message="trainer gone")
    result = supervisor.cli(
        "set", "gone", "lr=0.2", "--wait", "--timeout", "1", check=False, address=supervisor.http_address
    )
    assert result.returncode == 1
    assert "version 1 is recorded" in result.stderr and "within 1s" in result.stderr
    assert supervisor.json("runs", address=supervisor.http_address)[0]["params"]["lr"] == 0.2


def test_malformed_requests_get_a_clear_4xx_and_the_gateway_keeps_serving(supervisor):
    address = supervisor.http_address
    status, body = post(address, "ListRuns", b'{"runGlob": ')
    assert status == 400 and body["code"] == "INVALID_ARGUMENT" and "not valid JSON" in body["error"]
    status, body = post(address, "ListRuns", b"[1, 2]")
    assert status == 400 and "must be a JSON object" in body["error"]
    status, body = post(address, "SetParams", b'{"run": "x", "changez": {}}')
    assert status == 400 and "changez" in body["error"] and "SetParamsRequest" in body["error"]
    status, body = post(address, "SetParams", b'{"run": "x", "changes": {"lr": {"floatValue": "fast"}}}')
    assert status == 400 and "fast" in body["error"]
    status, body = post(address, "Nope", b"{}")
    assert status == 404 and body["code"] == "UNIMPLEMENTED" and "/v1/SetParams" in body["error"]
    status, body = post(address, "SetParams", b'{"run": "nobody", "changes": {"lr": {"stringValue": "1"}}}')
    assert status == 404 and body == {"error": body["error"], "code": "NOT_FOUND"} and "nobody" in body["error"]

    status, body, head = http(address, b"GET /v1/ListRuns HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405 and b"Allow: POST" in head and "takes POST" in body["error"]
    status, body, _ = http(address, b"POST /v1/ListRuns HTTP/1.1\r\nContent-Length: two\r\n\r\n{}")
    assert status == 400 and "Content-Length 'two'" in body["error"]
    status, body, _ = http(address, b"POST /v1/ListRuns HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411 and "Content-Length" in body["error"]
    status, body, _ = http(address, b"POST /v1/ListRuns HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n")
    assert status == 413 and "999999999 bytes" in body["error"]
    status, body, _ = http(
        address, b"POST /v1/ListRuns HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    assert status == 501 and "Content-Length" in body["error"]
    status, body, _ = http(address, b"HELLO\r\n\r\n")
    assert status == 400 and "request line" in body["error"]
    status, body, _ = http(address, b"POST /v1/ListRuns HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n")
    assert status == 431

    # A client that stalls mid-body holds only its own connection.
    host, port = address.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as stalled:
        stalled.sendall(b"POST /v1/ListRuns HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}")
        assert post(address, "ListRuns", b"{}") == (200, {"runs": []})
    # Two requests on one kept-alive connection both get answers.
    two = b"POST /v1/ListRuns HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}" * 2
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(two)
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 2:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert supervisor.proc.poll() is None
    assert supervisor.json("runs", address=address) == []


def test_token_guards_the_gateway(supervisor_factory, tmp_path):
    secured = supervisor_factory(tmp_path / "auth.db", args=("--token", "s3cret"))
    for token in (None, "wrong"):
        args = ("runs",) if token is None else ("runs", "--token", token)
        result = secured.cli(*args, check=False, address=secured.http_address)
        assert result.returncode == 1 and "missing or wrong token" in result.stderr, result.stderr
    status, body = post(secured.http_address, "ListRuns", b"{}", headers="Authorization: Bearer wrong\r\n")
    assert status == 401 and body["code"] == "UNAUTHENTICATED"
    ok = secured.cli("runs", "--token", "s3cret", address=secured.http_address)
    assert ok.stdout == "no runs yet\n"
    assert post(secured.http_address, "ListRuns", b"{}", headers="Authorization: Bearer s3cret\r\n") == (
        200,
        {"runs": []},
    )


def _imported(args: list[str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the console script's code under -X importtime; return the result and every module it imported."""
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            "import sys; from supervisor.cli import main; sys.exit(main())",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, modules


def test_http_path_imports_neither_grpc_nor_protobuf(supervisor, trainers):
    trainer = trainers("--run", "imp", "--address", supervisor.address, "--steps", "100")
    trainer.wait_for("connected")
    address = supervisor.http_address
    for args, rc in (
        (["set", "imp", "lr=0.02", "--wait"], 0),
        (["set", "imp", "lr=7"], 1),
        (["runs", "--json"], 0),
        (["history", "imp"], 0),
        (["trigger", "imp", "checkpoint"], 0),
        (["release", "imp"], 0),
        (["metrics", "imp"], 0),
    ):
        result, modules = _imported([*args, "--address", address])
        assert result.returncode == rc, (args, result.stderr[-2000:])
        assert "supervisor.http_client" in modules  # the measurement works
        loaded = sorted(
            m for m in modules if m.split(".")[0] in FORBIDDEN_ON_THE_HTTP_PATH or m in FORBIDDEN_ON_THE_HTTP_PATH
        )
        server_side = sorted(
            m
            for m in modules
            if m.startswith("supervisor.")
            and m not in ("supervisor.cli", "supervisor._address", "supervisor.http_client")
        )
        assert not loaded and not server_side, (args, loaded, server_side)
    trainer.kill()
    result, modules = _imported(["runs", "--address", f"http://127.0.0.1:{free_port()}"])
    assert result.returncode == 1 and "no supervisor answers at http://127.0.0.1:" in result.stderr
    assert not {m for m in modules if m.split(".")[0] in ("grpc", "google", "asyncio")}


def test_a_wrong_http_address_is_explained(supervisor):
    result = supervisor.cli("runs", check=False, address=f"http://{supervisor.address}")  # the gRPC port
    assert result.returncode == 1 and "HTTP gateway" in result.stderr and "gRPC port" in result.stderr
    result = supervisor.cli("runs", check=False, address="http://127.0.0.1")
    assert result.returncode == 2 and "http://HOST:PORT" in result.stderr
    result = supervisor.cli("runs", check=False, address=supervisor.http_address.replace("http:", "https:"))
    assert result.returncode == 1 and "answers in plain HTTP" in result.stderr and "use http://" in result.stderr
    result = supervisor.cli("top", "--once", check=False, address=supervisor.http_address)
    assert result.returncode == 2 and "gRPC address" in result.stderr


def test_a_trainer_given_the_http_address_is_told_so(supervisor):
    with pytest.raises(ValueError, match="HTTP gateway for operators"):
        connect(run="t", params={"lr": 0.1}, address=supervisor.http_address, telemetry=False)


def test_http_port_choices(supervisor_factory, tmp_path):
    assert not supervisor_factory(tmp_path / "none.db", args=("--no-http",)).http_address
    chosen = free_port()
    assert supervisor_factory(tmp_path / "chosen.db", args=("--http-port", str(chosen))).http_address.endswith(
        f":{chosen}"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # asked for: a taken port is an error
        proc = subprocess.run(
            [
                *SUPERVISOR,
                "serve",
                "--port",
                "0",
                "--http-port",
                str(busy),
                "--db",
                str(tmp_path / "busy.db"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert proc.returncode == 2 and f"cannot serve HTTP on 127.0.0.1:{busy}" in proc.stderr
        # the default (--port + 1) taken: serve without the gateway, and say why
        if busy - 1 > 1024:
            try:
                derived = supervisor_factory(tmp_path / "derived.db", port=busy - 1)
            except RuntimeError:
                pytest.skip(f"port {busy - 1} is taken too")
            assert not derived.http_address and derived.address.endswith(f":{busy - 1}")
            wait_until(lambda: "no HTTP gateway" in derived.log.read_text(), timeout=10)


def test_sigterm_stops_the_server_with_an_http_connection_open(supervisor):
    host, port = supervisor.http_address.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as idle:
        idle.sendall(b"POST /v1/ListRuns HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        assert b"200 OK" in idle.recv(65536)  # kept alive, now idle
        started = time.monotonic()
        assert supervisor.terminate() == 0
        assert time.monotonic() - started < 10
