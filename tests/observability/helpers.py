"""Helpers shared by the observability tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

INSTALL_MESSAGE = "install Debian's prometheus package: apt-get install prometheus"
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "supervisor.json"


def check_metrics(promtool: str, text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on exposition text (stdin)."""
    return subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )


def load_render_module():
    """deploy/grafana/render_dashboard.py, imported by path (deploy/ is not a package)."""
    import importlib.util
    import sys

    name = "supervisor_render_dashboard"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / "grafana" / "render_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
