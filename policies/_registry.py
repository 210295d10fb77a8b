"""Where a binding's ``type`` string leads: a built-in, ``module:Class``, or an entry point."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

from ._errors import PolicyConfigError
from ._policy import Policy

__all__ = ["ENTRY_POINT_GROUP", "builtin_policy_types", "resolve_policy_class"]

ENTRY_POINT_GROUP = "supervisor.policies"

# Imported lazily, so that ``import policies`` does not import Optuna.
_BUILTINS = {
    "plateau": "policies._plateau:PlateauPolicy",
    "autoclip": "policies._autoclip:AutoClipPolicy",
    "guard": "policies._guard:GuardPolicy",
    "schedule": "policies._schedule:SchedulePolicy",
    "optuna": "policies._optuna:OptunaPolicy",
    "optuna_in_run": "policies._optuna:OptunaInRunPolicy",
}


def builtin_policy_types() -> tuple[str, ...]:
    """The names of the built-in policy types."""
    return tuple(_BUILTINS)


def resolve_policy_class(type_name: str) -> type[Policy]:
    """Resolve a binding ``type`` to a ``Policy`` subclass.

    Looked up in this order: a built-in name (``"plateau"``), a ``"module:Class"`` path
    (``Class`` may be dotted for nested classes), an entry point named ``type_name`` in the
    group ``"supervisor.policies"``. Raises :class:`PolicyConfigError` saying why not.
    """
    if not isinstance(type_name, str) or not type_name:
        raise PolicyConfigError(f"type must be a non-empty string but got {type_name!r}")
    if type_name in _BUILTINS:
        return _check(_import_path(_BUILTINS[type_name]), type_name)
    if ":" in type_name:
        return _check(_import_path(type_name), type_name)
    matches = {ep.value: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == type_name}
    if not matches:
        raise PolicyConfigError(
            f"unknown policy type {type_name!r}: expected a built-in "
            f"({', '.join(_BUILTINS)}), a 'module:Class' path, or the name of an entry point "
            f"in group {ENTRY_POINT_GROUP!r}"
        )
    if len(matches) > 1:
        raise PolicyConfigError(
            f"policy type {type_name!r} is ambiguous: entry points in group "
            f"{ENTRY_POINT_GROUP!r} point to {', '.join(sorted(matches))}"
        )
    (entry_point,) = matches.values()
    try:
        loaded = entry_point.load()
    except Exception as exc:
        raise PolicyConfigError(
            f"cannot load entry point {type_name!r} ({entry_point.value}): {type(exc).__name__}: {exc}"
        ) from exc
    return _check(loaded, type_name)


def _import_path(path: str) -> object:
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise PolicyConfigError(f"policy type {path!r} must look like 'module:Class'")
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:
        raise PolicyConfigError(
            f"cannot import module {module_name!r} for policy type {path!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise PolicyConfigError(
                f"policy type {path!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    return obj


def _check(obj: object, type_name: str) -> type[Policy]:
    if not (isinstance(obj, type) and issubclass(obj, Policy)):
        raise PolicyConfigError(f"policy type {type_name!r} is {obj!r}, which is not a subclass of policies.Policy")
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise PolicyConfigError(f"policy type {type_name!r} does not implement {missing}")
    if obj.scope not in ("run", "population"):
        raise PolicyConfigError(f"policy type {type_name!r}: scope must be 'run' or 'population' but got {obj.scope!r}")
    return obj
