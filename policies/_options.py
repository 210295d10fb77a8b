"""Option checks shared by the built-in policies' constructors.

Each returns the (normalised) value or raises ``PolicyConfigError`` as
``"<policy>: <key> must be ... but got <value>"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._errors import PolicyConfigError

__all__ = ["Options"]


class Options:
    """Validators bound to one policy's name, for messages like ``plateau: factor ...``."""

    def __init__(self, policy: str) -> None:
        self.policy = policy

    def fail(self, key: str, requirement: str, value: Any) -> PolicyConfigError:
        return PolicyConfigError(f"{self.policy}: {key} must be {requirement} but got {value!r}")

    def string(self, key: str, value: Any, *, choices: Sequence[str] | None = None) -> str:
        if choices is not None:
            if value not in choices:
                raise self.fail(key, "one of " + ", ".join(repr(c) for c in choices), value)
            return str(value)
        if not isinstance(value, str) or not value:
            raise self.fail(key, "a non-empty string", value)
        return value

    def number(
        self,
        key: str,
        value: Any,
        *,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        lt: float | None = None,
    ) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise self.fail(key, "a number", value)
        self._bounds(key, value, ge=ge, gt=gt, le=le, lt=lt)
        return float(value)

    def integer(self, key: str, value: Any, *, ge: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(key, "an integer", value)
        self._bounds(key, value, ge=ge)
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def rank(self, value: Any) -> int | None:
        """``rank`` option of the built-ins: an int >= 0, or ``"any"`` (returned as None)."""
        if value == "any":
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail("rank", "an integer >= 0 or 'any'", value)
        return value

    def _bounds(
        self,
        key: str,
        value: float,
        *,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        lt: float | None = None,
    ) -> None:
        if ge is not None and not value >= ge:
            raise self.fail(key, f">= {ge}", value)
        if gt is not None and not value > gt:
            raise self.fail(key, f"> {gt}", value)
        if le is not None and not value <= le:
            raise self.fail(key, f"<= {le}", value)
        if lt is not None and not value < lt:
            raise self.fail(key, f"< {lt}", value)


def encode_float(value: float) -> float | str:
    """A float for strict JSON: non-finite values become ``"inf"`` / ``"-inf"`` / ``"nan"``."""
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def decode_float(value: float | str) -> float:
    return float(value)
