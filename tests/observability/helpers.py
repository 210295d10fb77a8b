"""Helpers shared by the observability tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

INSTALL_MESSAGE = "install Debian's prometheus package: apt-get install prometheus"
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "supervisor.json"


def check_metrics(promtool: str, text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on exposition text (stdin)."""
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False)
