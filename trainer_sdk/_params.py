"""Declarations of live parameters and the one validation both sides run.

The trainer declares parameters with these classes; the supervisor rebuilds the
same objects from the wire and validates every requested change with them, so a
value is accepted or refused by the same code on both ends.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any, ClassVar

ParamValue = float | int | bool | str

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


class InvalidValue(ValueError):
    """A value that a parameter refuses; the message names the parameter and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class Param(abc.ABC):
    """A declared live parameter: its default and what values it accepts."""

    kind: ClassVar[str]
    default: Any

    @abc.abstractmethod
    def check(self, value: Any, *, name: str) -> ParamValue:
        """Return ``value`` in this parameter's type, or raise InvalidValue saying why not.

        Text is parsed according to the type (the CLI sends ``lr=0.01`` as text).
        """

    def _check_default(self, name: str) -> None:
        self.check(self.default, name=name)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items(), key=lambda kv: kv[0]))))


class _Number(Param):
    min: float | None
    max: float | None

    def _check_bounds(self, value: float, name: str) -> None:
        if self.min is not None and value < self.min:
            raise InvalidValue(name, f"{value!r} is below the minimum {self.min!r}")
        if self.max is not None and value > self.max:
            raise InvalidValue(name, f"{value!r} is above the maximum {self.max!r}")


class Float(_Number):
    """A real-valued parameter, optionally bounded (inclusive) and log-scaled.

    ``Float(0.05, min=1e-5, max=1.0, log=True)``: ``log`` tells search policies
    to explore the range on a log scale; it needs a positive minimum.
    """

    kind = "float"

    def __init__(
        self, default: float, *, min: float | None = None, max: float | None = None, log: bool = False
    ) -> None:
        self.default = default
        self.min = None if min is None else float(min)
        self.max = None if max is None else float(max)
        self.log = bool(log)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"Float: min ({self.min!r}) must not exceed max ({self.max!r})")
        if self.log and (self.min is None or self.min <= 0):
            raise ValueError(f"Float: log=True needs a positive min, but got min={self.min!r}")

    def check(self, value: Any, *, name: str) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InvalidValue(name, f"expected a number, got {value!r}") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValue(name, f"expected a number, got {type(value).__name__} {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidValue(name, f"{value!r} is not a finite number")
        self._check_bounds(value, name)
        return value

    def __repr__(self) -> str:
        return f"Float({self.default!r}, min={self.min!r}, max={self.max!r}, log={self.log!r})"


class Int(_Number):
    """A whole-number parameter, optionally bounded (inclusive)."""

    kind = "int"
    log = False

    def __init__(self, default: int, *, min: int | None = None, max: int | None = None) -> None:
        self.default = default
        self.min = None if min is None else int(min)
        self.max = None if max is None else int(max)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"Int: min ({self.min!r}) must not exceed max ({self.max!r})")

    def check(self, value: Any, *, name: str) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise InvalidValue(name, f"expected a whole number, got {value!r}") from None
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(name, f"expected a whole number, got {type(value).__name__} {value!r}")
        self._check_bounds(value, name)
        return value

    def __repr__(self) -> str:
        return f"Int({self.default!r}, min={self.min!r}, max={self.max!r})"


class Bool(Param):
    """A true/false parameter (text accepts true/false, yes/no, on/off, 1/0)."""

    kind = "bool"

    def __init__(self, default: bool) -> None:
        self.default = default

    def check(self, value: Any, *, name: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
        raise InvalidValue(name, f"expected true or false, got {value!r}")

    def __repr__(self) -> str:
        return f"Bool({self.default!r})"


class Choice(Param):
    """One of a fixed list of values: ``Choice("adam", choices=["adam", "sgd"])``."""

    kind = "choice"

    def __init__(self, default: ParamValue, *, choices: Sequence[ParamValue]) -> None:
        if isinstance(choices, str) or not choices:
            raise ValueError(f"Choice: choices must be a non-empty list, got {choices!r}")
        self.choices = tuple(choices)
        self.default = default

    def check(self, value: Any, *, name: str) -> ParamValue:
        for choice in self.choices:
            if value == choice and type(value) is type(choice):
                return choice
        if isinstance(value, str):
            for choice in self.choices:
                if str(choice) == value:
                    return choice
        raise InvalidValue(name, f"{value!r} is not one of {list(self.choices)!r}")

    def __repr__(self) -> str:
        return f"Choice({self.default!r}, choices={list(self.choices)!r})"


class Text(Param):
    """Free text."""

    kind = "string"

    def __init__(self, default: str) -> None:
        self.default = default

    def check(self, value: Any, *, name: str) -> str:
        if not isinstance(value, str):
            raise InvalidValue(name, f"expected text, got {type(value).__name__} {value!r}")
        return value

    def __repr__(self) -> str:
        return f"Text({self.default!r})"


def as_param(name: str, declared: Any) -> Param:
    """Turn a declaration (a Param, or a plain default) into a validated Param."""
    if isinstance(declared, Param):
        param = declared
    elif isinstance(declared, bool):
        param = Bool(declared)
    elif isinstance(declared, int):
        param = Int(declared)
    elif isinstance(declared, float):
        param = Float(declared)
    elif isinstance(declared, str):
        param = Text(declared)
    else:
        raise TypeError(
            f"parameter {name!r}: declare a number, bool, string, or Float/Int/Bool/Choice, "
            f"not {type(declared).__name__}"
        )
    param._check_default(name)
    return param
