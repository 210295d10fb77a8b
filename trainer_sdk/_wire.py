"""Conversions between Python values and the v1 wire messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer_sdk._params import Bool, Choice, Float, Int, Param, ParamValue, Text
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb

_TYPE_TO_WIRE = {
    "float": pb.PARAM_TYPE_FLOAT,
    "int": pb.PARAM_TYPE_INT,
    "bool": pb.PARAM_TYPE_BOOL,
    "choice": pb.PARAM_TYPE_CHOICE,
    "string": pb.PARAM_TYPE_STRING,
}


def value_to_wire(value: ParamValue) -> pb.ParamValue:
    if isinstance(value, bool):
        return pb.ParamValue(bool_value=value)
    if isinstance(value, int):
        return pb.ParamValue(int_value=value)
    if isinstance(value, float):
        return pb.ParamValue(float_value=value)
    if isinstance(value, str):
        return pb.ParamValue(string_value=value)
    raise TypeError(f"cannot send a {type(value).__name__} as a parameter value: {value!r}")


def value_from_wire(message: pb.ParamValue) -> ParamValue | None:
    kind = message.WhichOneof("kind")
    return None if kind is None else getattr(message, kind)


def values_to_wire(values: Mapping[str, ParamValue]) -> dict[str, pb.ParamValue]:
    return {name: value_to_wire(value) for name, value in values.items()}


def values_from_wire(values: Mapping[str, pb.ParamValue]) -> dict[str, Any]:
    return {name: value_from_wire(value) for name, value in values.items()}


def spec_to_wire(name: str, param: Param) -> pb.ParamSpec:
    spec = pb.ParamSpec(
        name=name,
        type=_TYPE_TO_WIRE[param.kind],
        default_value=value_to_wire(param.default),
        log=bool(getattr(param, "log", False)),
    )
    if isinstance(param, Float | Int):
        if param.min is not None:
            spec.min = param.min
        if param.max is not None:
            spec.max = param.max
    if isinstance(param, Choice):
        spec.choices.extend(value_to_wire(choice) for choice in param.choices)
    return spec


def spec_from_wire(spec: pb.ParamSpec) -> Param:
    """Rebuild a Param; raises ValueError naming the parameter when the spec is inconsistent."""
    default = value_from_wire(spec.default_value)
    low = spec.min if spec.HasField("min") else None
    high = spec.max if spec.HasField("max") else None
    try:
        if spec.type == pb.PARAM_TYPE_FLOAT:
            param: Param = Float(default, min=low, max=high, log=spec.log)  # type: ignore[arg-type]
        elif spec.type == pb.PARAM_TYPE_INT:
            param = Int(default, min=None if low is None else int(low), max=None if high is None else int(high))  # type: ignore[arg-type]
        elif spec.type == pb.PARAM_TYPE_BOOL:
            param = Bool(default)  # type: ignore[arg-type]
        elif spec.type == pb.PARAM_TYPE_CHOICE:
            param = Choice(default, choices=[value_from_wire(c) for c in spec.choices])  # type: ignore[arg-type, misc]
        elif spec.type == pb.PARAM_TYPE_STRING:
            param = Text(default)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown parameter type {spec.type}")
        param._check_default(spec.name)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"parameter {spec.name!r}: {exc}") from None
    return param
