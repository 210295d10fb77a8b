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

    async def run_briefly() -> None:
        task = asyncio.create_task(collect_periodically(interval=0.01))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = gc.get_stats()[2]["collections"]
    asyncio.run(run_briefly())
    assert gc.get_stats()[2]["collections"] - before >= 5  # with raised thresholds, only this finds old cycles
