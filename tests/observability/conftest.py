"""Fixtures for the observability tests: the real promtool and prometheus binaries."""

from __future__ import annotations

import shutil

import pytest

from tests.observability.helpers import INSTALL_MESSAGE


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
