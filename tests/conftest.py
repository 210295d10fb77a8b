"""Shared fixtures: real supervisor processes on loopback, real trainer processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUPERVISOR = [sys.executable, "-m", "supervisor"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SupervisorProcess:
    """``supervisor serve`` in a subprocess; ``address`` once it printed its listening line, and
    ``http_address`` (``http://HOST:PORT`` of its operator HTTP gateway, printed just before)."""

    def __init__(self, db: Path, *, port: int = 0, args: tuple[str, ...] = (), log: Path | None = None) -> None:
        self.db = db
        self.port = port
        self.args = args
        self.log = log or db.with_suffix(".log")
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        self.http_address = ""
        self.lines: list[str] = []

    def start(self, timeout: float = 30.0) -> SupervisorProcess:
        cmd = [*SUPERVISOR, "serve", "--port", str(self.port), "--db", str(self.db), *self.args]
        self._err = open(self.log, "a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True, cwd=ROOT)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"supervisor exited ({self.proc.wait()}): {self.log.read_text()[-2000:]}")
            self.lines.append(line.strip())
            if line.startswith("http gateway on "):
                self.http_address = line.split()[-1]
            if line.startswith("listening on "):
                self.address = line.split()[-1]
                self.port = int(self.address.rsplit(":", 1)[1])
                if not any(a == "--metrics-port" for a in self.args):
                    return self
            if line.startswith("metrics on "):
                return self
        raise RuntimeError("supervisor did not start in time")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60.0, address: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``supervisor ARGS --address ADDRESS`` (default: the gRPC address; ``self.http_address`` for HTTP)."""
        result = subprocess.run(
            [*SUPERVISOR, *args, "--address", address or self.address],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"supervisor {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def json(self, *args: str, address: str | None = None) -> object:
        return json.loads(self.cli(*args, "--json", address=address).stdout)

    def run(self, name: str) -> dict:
        """The run as ``supervisor runs --json`` shows it; empty until a trainer of it connected."""
        return next((r for r in self.json("runs") if r["run"] == name), {})


@pytest.fixture
def supervisor_factory(tmp_path: Path) -> Iterator[callable]:
    started: list[SupervisorProcess] = []

    def make(db: Path | None = None, **kwargs: object) -> SupervisorProcess:
        proc = SupervisorProcess(db or tmp_path / "supervisor.db", **kwargs)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.kill()


@pytest.fixture
def supervisor(supervisor_factory: callable) -> SupervisorProcess:
    return supervisor_factory()


class TrainerProcess:
    """tests/core/trainer.py in a subprocess; it prints one JSON object per event."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, start_new_session: bool = False) -> None:
        self.stderr = ""
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "core" / "trainer.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=start_new_session,
        )

    def events(self, timeout: float = 120.0) -> list[dict]:
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr = err
        assert self.proc.returncode == 0, f"trainer failed ({self.proc.returncode}): {err[-3000:]}"
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def wait_for(self, kind: str, timeout: float = 30.0) -> dict:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == kind:
                    return event
        raise AssertionError(f"trainer never printed a {kind!r} event")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def trainers() -> Iterator[callable]:
    started: list[TrainerProcess] = []

    def make(*args: str, **kwargs: object) -> TrainerProcess:
        proc = TrainerProcess(*args, **kwargs)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.kill()


def wait_until(predicate: callable, timeout: float = 30.0, interval: float = 0.05, message: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message or predicate}")
