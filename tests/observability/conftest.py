"""Fixtures for the observability tests: the real promtool and prometheus binaries."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.observability.helpers import INSTALL_MESSAGE, ROOT

SCRIPT = ROOT / "tests" / "observability" / "trainer_script.py"


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(f"promtool is not on PATH; {INSTALL_MESSAGE}")
    return path


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip(f"prometheus is not on PATH; {INSTALL_MESSAGE}")
    return path


class TrainerScript:
    """tests/observability/trainer_script.py in a subprocess; its output goes to ``log``."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        self._out = open(log, "w")  # closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args], stdout=self._out, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )

    def wait_connected(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "connected\n" in self.log.read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"trainer did not connect: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._out.close()


@pytest.fixture
def trainer_script(tmp_path: Path) -> Iterator[Callable[..., TrainerScript]]:
    started: list[TrainerScript] = []

    def start(*args: str) -> TrainerScript:
        trainer = TrainerScript(tmp_path / f"trainer{len(started)}.log", *args)
        started.append(trainer)
        return trainer

    yield start
    for trainer in started:
        trainer.kill()
