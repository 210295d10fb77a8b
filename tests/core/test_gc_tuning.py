"""A serving supervisor tunes its garbage collector for latency (full collections paused every RPC)."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# serve() in a process of its own: the collector's settings are process-wide, and the
# test process must keep CPython's defaults.
SCRIPT = """
import asyncio, gc, json, os, signal, sys
from pathlib import Path
from supervisor.server import ServerConfig, serve

before = gc.get_threshold()

def ready(server):
    print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

asyncio.run(serve(ServerConfig(port=0, db=Path(sys.argv[1])), ready=ready))
"""


def test_serve_freezes_start_up_objects_and_raises_the_collector_thresholds(tmp_path: Path) -> None:
    from supervisor.gc_tuning import THRESHOLDS

    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "gc.db")], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert tuple(report["before"]) == (700, 10, 10)  # CPython's defaults until the server is up
    assert tuple(report["after"]) == THRESHOLDS
    assert report["frozen"] > 10_000  # modules, classes and compiled protos moved out of the collector's sight


def test_full_collections_still_run_on_a_schedule() -> None:
    from supervisor.gc_tuning import collect_periodically

    def full_collections() -> int:
        return gc.get_stats()[2]["collections"]

    async def until_three_more() -> int:
        before = full_collections()
        task = asyncio.create_task(collect_periodically(interval=0.01))
        deadline = asyncio.get_running_loop().time() + 30  # each one walks this test process's whole heap
        while full_collections() - before < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return full_collections() - before

    assert asyncio.run(until_three_more()) >= 3  # with raised thresholds, only these find old cycles
