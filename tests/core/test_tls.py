"""TLS: ``serve --tls-cert/--tls-key``; trainers, the CLI (gRPC and https://) and ``top`` with ``--tls-ca``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench._certs import self_signed
from tests.conftest import ROOT, SUPERVISOR, wait_until
from tests.core.test_http_gateway import _imported
from tests.core.test_sharding import run_owned_by, shard_pid
from trainer_sdk import connect


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    cert, key = self_signed(tmp_path, "server")
    other, _ = self_signed(tmp_path, "other")
    return {"cert": cert, "key": key, "other": other}


@pytest.fixture
def tls_supervisor(tmp_path, supervisor_factory, certs):
    return supervisor_factory(
        tmp_path / "tls.db", args=("--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]), "--token", "s3")
    )


@pytest.mark.parametrize("transport", ["thread", "process"])
def test_trainers_and_operators_work_over_tls(tls_supervisor, trainers, certs, transport):
    sup = tls_supervisor
    assert sup.http_address.startswith("https://127.0.0.1:")
    env = {"SUPERVISOR_TLS_CA": str(certs["cert"]), "SUPERVISOR_TOKEN": "s3"}
    trainer = trainers("--run", "secure", "--address", sup.address, "--steps", "400", "--sleep", "0.005",
                       "--transport", transport, env=env)
    trainer.wait_for("connected")
    tls = ("--tls-ca", str(certs["cert"]), "--token", "s3")
    assert sup.json("set", "secure", "lr=0.05", "--wait", *tls)["acknowledged"] is True  # gRPC
    answer = json.loads(sup.cli("set", "secure", "lr=0.02", "--wait", *tls, "--json", address=sup.http_address).stdout)
    assert answer["acknowledged"] is True  # the HTTP gateway, over https://
    done = trainer.events()[-1]
    assert done["values"]["lr"] == 0.02 and done["version"] == 2 and done["flushed"] is True
    top = sup.cli("top", "--once", *tls)
    assert "secure" in top.stdout


def test_shards_serve_over_tls_and_the_front_door_forwards_to_them(tmp_path, supervisor_factory, trainers, certs):
    front = supervisor_factory(tmp_path / "sup.db", args=(
        "--shards", "2", "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]), "--token", "s3"))
    away, home = run_owned_by(1, 2, "away"), run_owned_by(0, 2, "home")
    env = {"SUPERVISOR_TLS_CA": str(certs["cert"]), "SUPERVISOR_TOKEN": "s3"}
    started = [trainers("--run", run, "--address", front.address, "--steps", "300", "--sleep", "0.005", env=env)
               for run in (away, home)]
    for trainer in started:
        trainer.wait_for("connected")  # the away run's trainer was redirected to shard 1's TLS port
    tls = ("--tls-ca", str(certs["cert"]), "--token", "s3")
    for run in (away, home):  # shard 1's through the front door, over its Unix socket
        assert front.json("set", run, "lr=0.03", "--wait", *tls)["acknowledged"] is True
    assert {r["run"] for r in front.json("runs", *tls)} == {away, home}
    for trainer in started:
        assert trainer.events()[-1]["values"]["lr"] == 0.03
    argv = Path(f"/proc/{shard_pid(front.port, 1)}/cmdline").read_bytes().decode().split("\0")
    socket = Path(argv[argv.index("--internal-socket") + 1])
    assert socket.is_socket() and oct(socket.parent.stat().st_mode & 0o777) == "0o700"
    assert front.terminate() == 0
    assert not socket.parent.exists()


def test_a_client_without_the_right_authority_is_told_what_to_pass(tls_supervisor, certs):
    sup = tls_supervisor
    plain = sup.cli("runs", "--token", "s3", check=False)
    assert plain.returncode == 1 and "if the supervisor serves TLS (--tls-cert), pass --tls-ca" in plain.stderr
    for address in (sup.address, sup.http_address):
        wrong = sup.cli("runs", "--token", "s3", "--tls-ca", str(certs["other"]), check=False, address=address)
        assert wrong.returncode == 1 and f"the TLS handshake with {address} failed" in wrong.stderr, wrong.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in wrong.stderr
    plain_http = sup.cli("runs", "--token", "s3", check=False, address=sup.http_address.replace("https:", "http:"))
    assert plain_http.returncode == 1 and "does it serve https://" in plain_http.stderr
    mixed = sup.cli("runs", "--tls-ca", str(certs["cert"]), check=False,
                    address=sup.http_address.replace("https:", "http:"))
    assert mixed.returncode == 2 and "use https://HOST:PORT" in mixed.stderr
    missing = sup.cli("runs", "--tls-ca", str(certs["cert"]) + ".nope", check=False)
    assert missing.returncode == 2 and "cannot read the TLS certificate authority file" in missing.stderr


def test_a_trainer_with_the_wrong_authority_trains_on_and_logs_why(tls_supervisor, certs, caplog):
    with caplog.at_level("WARNING", logger="trainer_sdk"):
        hp = connect("wrong-ca", {"lr": 0.1}, address=tls_supervisor.address, tls_ca=str(certs["other"]),
                     token="s3", telemetry=False)
        try:
            assert not hp.wait_connected(3)
            hp.report(0, loss=1.0)  # training goes on, on the defaults
            assert hp.lr == 0.1
        finally:
            hp.close(timeout=0.5)
    assert "that tls_ca / $SUPERVISOR_TLS_CA holds the authority that signed its certificate" in caplog.text


def test_connect_names_an_authority_file_it_cannot_use(tmp_path):
    with pytest.raises(ValueError, match="cannot read the TLS certificate authority file .*nope.pem"):
        connect("r", {"lr": 0.1}, address="127.0.0.1:1", tls_ca=str(tmp_path / "nope.pem"))
    (tmp_path / "notes.txt").write_text("not a certificate")
    with pytest.raises(ValueError, match="notes.txt.*holds no PEM certificate"):
        connect("r", {"lr": 0.1}, address="127.0.0.1:1", tls_ca=str(tmp_path / "notes.txt"))
    (tmp_path / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="broken.pem.*holds a certificate that cannot be read"):
        connect("r", {"lr": 0.1}, address="127.0.0.1:1", tls_ca=str(tmp_path / "broken.pem"))
    result = subprocess.run([*SUPERVISOR, "runs", "--address", "https://127.0.0.1:1", "--tls-ca",
                             str(tmp_path / "broken.pem")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "holds a certificate that cannot be read" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_certificate_for_another_name_is_refused(tmp_path, supervisor_factory):
    cert, key = self_signed(tmp_path, "elsewhere", dns="supervisor.example", ip=None)  # not 127.0.0.1
    sup = supervisor_factory(tmp_path / "n.db", args=("--tls-cert", str(cert), "--tls-key", str(key)))
    for address in (sup.address, sup.http_address):
        refused = sup.cli("runs", "--tls-ca", str(cert), check=False, address=address)
        assert refused.returncode == 1 and f"the TLS handshake with {address} failed" in refused.stderr, refused.stderr


def test_system_roots_are_the_systems_not_grpcios(tls_supervisor, certs):
    env = {**os.environ, "SSL_CERT_FILE": str(certs["cert"])}  # this system's trust, as OpenSSL reads it
    for address in (tls_supervisor.address, tls_supervisor.http_address):
        result = subprocess.run([*SUPERVISOR, "runs", "--address", address, "--tls-ca", "system", "--token", "s3"],
                                capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
        assert result.returncode == 0 and "no runs yet" in result.stdout, result.stderr


@pytest.mark.parametrize(
    "case, expected",
    [
        ("cert only", "--tls-cert and --tls-key go together"),
        ("missing key", "cannot read --tls-key"),
        ("not pem", "holds no PEM certificate"),
        ("wrong key", "do not go together"),
        ("encrypted key", "is encrypted: give the key without a passphrase"),
    ],
)
def test_serve_refuses_a_certificate_it_cannot_use_by_name(tmp_path, certs, case, expected):
    cert, key = str(certs["cert"]), str(certs["key"])
    _, other_key = self_signed(tmp_path, "third")
    locked_cert, locked_key = self_signed(tmp_path, "locked", passphrase=b"secret")
    (tmp_path / "notes.pem").write_text("not a certificate")
    args = {
        "cert only": ["--tls-cert", cert],
        "missing key": ["--tls-cert", cert, "--tls-key", str(tmp_path / "nope.key")],
        "not pem": ["--tls-cert", str(tmp_path / "notes.pem"), "--tls-key", key],
        "wrong key": ["--tls-cert", cert, "--tls-key", str(other_key)],
        "encrypted key": ["--tls-cert", str(locked_cert), "--tls-key", str(locked_key)],
    }[case]
    result = subprocess.run([*SUPERVISOR, "serve", "--port", "0", "--db", str(tmp_path / "s.db"), *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "s.db").exists()


def test_a_renewed_certificate_is_taken_without_a_restart_and_a_broken_one_is_not(tmp_path, supervisor_factory):
    cert, key = self_signed(tmp_path, "served")  # the files serve reads; renewed in place below
    first = tmp_path / "first.pem"
    first.write_bytes(cert.read_bytes())
    sup = supervisor_factory(tmp_path / "r.db", args=("--tls-cert", str(cert), "--tls-key", str(key)))

    def answers(ca: Path, address: str) -> bool:
        return sup.cli("runs", "--tls-ca", str(ca), check=False, address=address).returncode == 0

    assert answers(first, sup.address) and answers(first, sup.http_address)

    stranger, _ = self_signed(tmp_path, "stranger")
    cert.write_bytes(stranger.read_bytes())  # half-way through a renewal: a certificate without its key
    assert answers(first, sup.address)  # the connection's check found the pair broken and kept the old one
    assert "cannot be used, keeping the current pair" in sup.log.read_text()
    assert answers(first, sup.http_address)

    renewed, renewed_key = self_signed(tmp_path, "renewed")
    cert.write_bytes(renewed.read_bytes())
    key.write_bytes(renewed_key.read_bytes())
    assert answers(renewed, sup.address) and not answers(first, sup.address)  # gRPC: from the next connection
    wait_until(lambda: answers(renewed, sup.http_address), timeout=30, message="the gateway's renewed certificate")
    assert not answers(first, sup.http_address)
    assert sup.log.read_text().count("TLS certificate reloaded") == 1


def test_the_https_path_adds_only_ssl_to_the_http_paths_imports(tls_supervisor, certs):
    result, modules = _imported(["runs", "--address", tls_supervisor.http_address, "--tls-ca", str(certs["cert"]),
                                 "--token", "s3"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ssl" in modules  # the measurement works
    heavy = sorted(m for m in modules if m.split(".")[0] in ("grpc", "google", "asyncio", "trainer_sdk"))
    assert not heavy, heavy


def test_a_front_door_that_fails_to_start_leaves_no_shard_and_no_socket_folder(tmp_path, certs):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    folder = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short: a Unix socket's path has at most 107 bytes
    try:
        result = subprocess.run(
            [*SUPERVISOR, "serve", "--port", "0", "--db", str(tmp_path / "f.db"), "--shards", "2",
             "--http-port", str(busy.getsockname()[1]), "--tls-cert", str(certs["cert"]),
             "--tls-key", str(certs["key"])],
            capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, "TMPDIR": str(folder)})
        busy.close()
        assert result.returncode == 2 and "cannot serve HTTP" in result.stderr, result.stderr[-2000:]
        assert list(folder.iterdir()) == []  # the shards' socket folder went with it
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert "shard 1 of 2 serves" in result.stderr  # the child had started; stopped with it, it never says that it
    assert "the front door" not in result.stderr  # lost its front door (run() reads stderr until the child exits)


def test_the_socket_folder_of_a_killed_front_door_is_removed_by_the_next_one(certs, supervisor_factory, monkeypatch):
    folder = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short: a Unix socket's path has at most 107 bytes
    monkeypatch.setenv("TMPDIR", str(folder))  # the supervisors' temporary folder
    args = ("--shards", "2", "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]))
    try:
        first = supervisor_factory(folder / "first.db", args=args)
        [stale] = [p for p in folder.iterdir() if p.is_dir()]
        assert stale.name.startswith(f"supervisor-shards-{first.proc.pid}-")
        first.kill()  # SIGKILL: no cleanup of its own
        assert stale.exists()
        second = supervisor_factory(folder / "second.db", args=args)
        assert not stale.exists()
        [own] = [p for p in folder.iterdir() if p.is_dir()]
        assert own.name.startswith(f"supervisor-shards-{second.proc.pid}-")
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the supervisors are killed by their fixture


def test_a_temporary_folder_too_deep_for_the_shards_sockets_is_refused_by_name(tmp_path, certs):
    folder = tmp_path / ("x" * 80)
    folder.mkdir()
    result = subprocess.run(
        [*SUPERVISOR, "serve", "--port", "0", "--db", str(tmp_path / "f.db"), "--shards", "2",
         "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, "TMPDIR": str(folder)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is longer than the 107 bytes a Unix socket allows: point TMPDIR at a folder" in result.stderr
    assert list(folder.iterdir()) == []
