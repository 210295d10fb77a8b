"""What every benchmark shares: a supervisor subprocess, statistics, process accounting, the machine.

Every figure a benchmark reports is measured in the run that reports it, next
to a reference measured in the same run (the machine is shared and noisy, so
only ratios and distributions mean anything; one absolute time does not).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- statistics ------------------------------------------------------------------------------------

def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and percentiles of a sample (same unit as the input)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


@dataclass
class Row:
    """One line of the results table."""

    bench: str
    metric: str
    value: float | str
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("bench", "metric", "value", "unit", "target", "met", "note")}


@dataclass
class Result:
    """What one benchmark module returns."""

    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    def row(self, metric: str, value: float | str, unit: str = "", *, target: str = "", met: bool | None = None,
            note: str = "") -> None:
        self.rows.append(Row(self.name, metric, value, unit, target, met, note))


# -- the machine -------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }
    for module in ("torch", "grpc", "google.protobuf", "numpy", "sklearn", "optuna"):
        try:
            mod = __import__(module, fromlist=["__version__"])
            info[module] = getattr(mod, "__version__", "?")
        except ImportError:
            info[module] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!bench", ":!BENCHMARKS.md"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split("\n")
        info["git_uncommitted_outside_bench"] = [line for line in dirty if line.strip()]
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


# -- process accounting (/proc; psutil is not a dependency) ---------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime per thread id of a process."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def cpu_wait_seconds(pid: int, tid: int) -> float:
    """How long thread ``tid`` of ``pid`` has been runnable but waiting for a CPU (the kernel's schedstat).

    Not the GIL: a thread waiting for the GIL sleeps. NaN where the kernel does not keep the statistics.
    """
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return math.nan


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def python_loop_ms(repeats: int = 7) -> float:
    """Median milliseconds of a fixed pure-Python loop: how fast this shared machine runs right now.

    The same code measured at different times of day ran at different speeds
    here (a load generator's CPU for the same work moved by a quarter), so each
    section records this beside its figures, and the scale benchmark before
    each size.
    """
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def cpu_counters() -> tuple[int, int, int]:
    """(total, idle+iowait, steal) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), idle, steal


def machine_usage(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, float]:
    """Busy and steal fractions of the whole machine between two cpu_counters() readings."""
    total = max(after[0] - before[0], 1)
    return {"busy": 1 - (after[1] - before[1]) / total, "steal": (after[2] - before[2]) / total}


# -- a supervisor subprocess --------------------------------------------------------------------------

def descendant_pids(pid: int) -> list[int]:
    """Every process started under ``pid``: its database writer, and a sharded supervisor's shards and theirs."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def is_db_writer(pid: int) -> bool:
    """Whether ``pid`` is a supervisor's database writer process (``supervisor.write_process``)."""
    try:
        return b"supervisor.write_process" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class SupervisorProcess:
    """``python -m supervisor serve --port 0`` on a fresh database; ``address`` once it listens, and
    ``http_address``, its operator HTTP gateway (``http://HOST:PORT``)."""

    def __init__(self, *, config: Path | None = None, workdir: Path | None = None, log_level: str = "WARNING",
                 extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="bench-sup-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db = self.workdir / "supervisor.db"
        cmd = [PYTHON, "-m", "supervisor", "serve", "--host", "127.0.0.1", "--port", "0", "--db", str(self.db),
               "--log-level", log_level]
        if config is not None:
            cmd += ["--config", str(config)]
        cmd += args
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
        env.pop("SUPERVISOR_ADDR", None)
        self.log_path = self.workdir / "supervisor.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.http_address = ""
        self.address = self._wait_listening()
        # keep draining stdout so the server never blocks on a full pipe
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_listening(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"supervisor exited: {self.log_path.read_text()[-2000:]}")
                continue
            if line.startswith("http gateway on "):  # printed just before the listening line
                self.http_address = line.split()[-1]
            if line.startswith("listening on "):
                return line.split("listening on ", 1)[1].strip()
        raise RuntimeError("supervisor did not print 'listening on' in time")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> SupervisorProcess:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


def rel(path: Path) -> str:
    """A path relative to the repository root when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def fmt(value: float, digits: int = 3) -> str:
    if isinstance(value, str):
        return value
    if value != value:  # nan
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"
