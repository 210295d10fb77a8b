"""Where a client finds the supervisor: kept apart so that the CLI learns it without importing gRPC."""

from __future__ import annotations

import os

DEFAULT_ADDRESS = "127.0.0.1:50051"
"""The gRPC address clients use when given none."""


def default_address() -> str:
    """``$SUPERVISOR_ADDR``, else DEFAULT_ADDRESS."""
    return os.environ.get("SUPERVISOR_ADDR") or DEFAULT_ADDRESS


def is_http(address: str) -> bool:
    """Whether ``address`` names the operator HTTP gateway (``http://HOST:PORT``) rather than gRPC's ``HOST:PORT``."""
    return address.lower().startswith(("http://", "https://"))
