"""The live-config tools the issue compares against, measured in the same run when they are installed.

LiveTune (a value read with ``var()``, changed by its ``tune`` command over local TCP) and
Kiponos (a cached config tree read with ``client.get("folder/key")`` under a lock, after a path
parse) are not dependencies of this project: ``make bench-refs`` (run by ``make bench``) puts
them in the virtual environment. Without them the benchmarks fall back to the issue's quoted
figures and say so in the row.

Kiponos's client reads from a tree its WebSocket listener fills from kiponos.io, which this
machine cannot reach; the benchmark fills the tree the way that listener does
(``_apply_value_at``) and times the same ``get`` a training loop would call.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

from bench._common import PYTHON

KIPONOS_PROFILE = "['bench']['1']['local']['train']"


def livetune_var(value: float, tag: str) -> tuple[Any, int] | None:
    """A LiveTune ``liveVar`` (its listener threads started) and its dictionary port; None if not installed."""
    try:
        from LiveTune import liveVar
    except ImportError:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its port in colour
        var = liveVar(value, tag)
    return var, var.get_dictionary_port()


def livetune_command() -> list[str] | None:
    """LiveTune's ``tune`` console script in this environment, as a user runs it; None if not installed."""
    script = shutil.which("tune", path=str(Path(PYTHON).parent))
    return [script] if script else None


def kiponos_client(values: dict[str, str]) -> Any | None:
    """A Kiponos client whose cached tree holds ``values`` ({"folder/key": "text"}); None if not installed."""
    try:
        from kiponos import Kiponos
    except ImportError:
        return None
    client = Kiponos(KIPONOS_PROFILE, kiponos_id="bench", kiponos_access="bench")  # never connected
    for path, text in values.items():
        *folders, key = path.split("/")
        client._apply_value_at(folders, key, text)
    return client


def version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(distribution)
    except PackageNotFoundError:
        return "not installed"
