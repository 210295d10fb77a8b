"""Policy bindings and the ``policies.toml`` format.

::

    [[policy]]
    id = "lr-plateau"     # optional, default "<type>-<index>" (index from 1); unique
    type = "plateau"      # built-in name, "module:Class", or entry point in "supervisor.policies"
    runs = "digits-*"     # fnmatch glob (or a list of globs) on run names, default "*"
    mode = "act"          # "act" or "shadow"
    max_failures = 3      # consecutive failures before the policy is disabled
    # every other key is an option of the policy, passed to its constructor
    metric = "val_loss"
    factor = 0.5
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._errors import PolicyConfigError
from ._policy import Policy, Scope
from ._registry import resolve_policy_class
from ._runner import Mode, PolicyRunner

__all__ = ["PolicyBinding", "load_config", "parse_config"]

_BINDING_KEYS = ("id", "type", "runs", "mode", "max_failures")
_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]*")


@dataclass(frozen=True, kw_only=True)
class PolicyBinding:
    """One ``[[policy]]`` entry: which policy, with which options, on which runs, how.

    ``options`` are passed as keyword arguments to ``policy_class`` by :meth:`create`.
    ``parse_config`` validates them by constructing the policy once; constructing a binding
    directly checks its own fields only.
    """

    id: str
    policy_class: type[Policy]
    type: str = ""
    runs: str | tuple[str, ...] = "*"
    mode: Mode = "act"
    options: Mapping[str, Any] = field(default_factory=dict)
    max_failures: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID_PATTERN.fullmatch(self.id):
            raise PolicyConfigError(f"id must be a non-empty name of letters, digits and _ . : @ - but got {self.id!r}")
        if not (isinstance(self.policy_class, type) and issubclass(self.policy_class, Policy)):
            raise PolicyConfigError(
                f"policy {self.id!r}: policy_class must be a Policy subclass but got {self.policy_class!r}"
            )
        if not self.type:
            cls = self.policy_class
            object.__setattr__(self, "type", f"{cls.__module__}:{cls.__qualname__}")
        runs = self.runs
        if isinstance(runs, list):
            runs = tuple(runs)
            object.__setattr__(self, "runs", runs)
        globs = (runs,) if isinstance(runs, str) else runs
        if not isinstance(globs, tuple) or not globs or not all(isinstance(g, str) and g for g in globs):
            raise PolicyConfigError(
                f"policy {self.id!r}: runs must be a glob or a non-empty list of globs but got {self.runs!r}"
            )
        if self.mode not in ("act", "shadow"):
            raise PolicyConfigError(f"policy {self.id!r}: mode must be 'act' or 'shadow' but got {self.mode!r}")
        failures = self.max_failures
        if not isinstance(failures, int) or isinstance(failures, bool) or failures < 1:
            raise PolicyConfigError(f"policy {self.id!r}: max_failures must be an int >= 1 but got {failures!r}")
        if not isinstance(self.options, Mapping):
            raise PolicyConfigError(f"policy {self.id!r}: options must be a mapping but got {self.options!r}")
        object.__setattr__(self, "options", MappingProxyType(copy.deepcopy(dict(self.options))))

    @property
    def scope(self) -> Scope:
        return self.policy_class.scope

    def matches(self, run: str) -> bool:
        """Whether this binding applies to the run named ``run`` (case-sensitive fnmatch)."""
        globs = (self.runs,) if isinstance(self.runs, str) else self.runs
        return any(fnmatch.fnmatchcase(run, glob) for glob in globs)

    def create(self) -> Policy:
        """A new policy instance with this binding's options."""
        return self.policy_class(**copy.deepcopy(dict(self.options)))

    def create_runner(self) -> PolicyRunner:
        """A new policy instance wrapped in a runner with this binding's id, mode and limit."""
        return PolicyRunner(self.create(), policy_id=self.id, mode=self.mode, max_failures=self.max_failures)


def load_config(
    path: str | os.PathLike[str],
    *,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[PolicyBinding]:
    """Read a ``policies.toml`` file; see :func:`parse_config`."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyConfigError(f"{source}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise PolicyConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return parse_config(data, source=source, defaults=defaults)


def parse_config(
    data: Mapping[str, Any],
    source: str = "<config>",
    *,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[PolicyBinding]:
    """Turn parsed TOML (``{"policy": [{...}, ...]}``) into validated bindings, in file order.

    ``defaults`` maps a policy type to options used when the file does not set them; the live
    host passes e.g. ``{"optuna": {"storage": "sqlite:///supervisor.db"}}``.

    Raises :class:`PolicyConfigError` naming ``source``, the ``[[policy]]`` index (from 1) or
    id, the key and the reason, for: a non-table entry, an unknown top-level key, a missing
    or unknown type, an unknown, missing or ill-typed option, a value the policy rejects, a bad
    ``runs`` / ``mode`` / ``max_failures`` / ``id``, and duplicate ids.
    """
    if not isinstance(data, Mapping):
        raise PolicyConfigError(f"{source}: expected a table at the top level but got {data!r}")
    unknown = [key for key in data if key != "policy"]
    if unknown:
        raise PolicyConfigError(f"{source}: unknown top-level key {unknown[0]!r} (policies are [[policy]] tables)")
    entries = data.get("policy", [])
    if not isinstance(entries, list):
        raise PolicyConfigError(f"{source}: 'policy' must be an array of tables ([[policy]])")
    bindings: list[PolicyBinding] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries, start=1):
        where = f"{source}: [[policy]] #{index}"
        if not isinstance(entry, Mapping):
            raise PolicyConfigError(f"{where}: expected a table but got {entry!r}")
        binding = _parse_entry(entry, index, where, defaults or {})
        if binding.id in seen:
            raise PolicyConfigError(
                f"{where} (id {binding.id!r}): duplicate id {binding.id!r} "
                f"(already used by [[policy]] #{seen[binding.id]})"
            )
        seen[binding.id] = index
        bindings.append(binding)
    return bindings


def _parse_entry(
    entry: Mapping[str, Any],
    index: int,
    where: str,
    defaults: Mapping[str, Mapping[str, Any]],
) -> PolicyBinding:
    if "id" in entry:
        where = f"{where} (id {entry['id']!r})"
    type_name = entry.get("type")
    if type_name is None:
        raise PolicyConfigError(f"{where}: missing required key 'type'")
    if not isinstance(type_name, str) or not type_name:
        raise PolicyConfigError(f"{where}: key 'type' must be a non-empty string but got {type_name!r}")
    try:
        policy_class = resolve_policy_class(type_name)
    except PolicyConfigError as exc:
        raise PolicyConfigError(f"{where}: key 'type': {exc}") from None

    policy_id = entry.get("id", f"{type_name}-{index}")
    if not isinstance(policy_id, str) or not _ID_PATTERN.fullmatch(policy_id):
        raise PolicyConfigError(
            f"{where}: key 'id' must be a name of letters, digits and _ . : @ - but got {policy_id!r}"
        )
    runs = entry.get("runs", "*")
    if isinstance(runs, list):
        if not runs or not all(isinstance(glob, str) and glob for glob in runs):
            raise PolicyConfigError(f"{where}: key 'runs' must be a glob or a non-empty list of globs but got {runs!r}")
        runs = tuple(runs)
    elif not isinstance(runs, str) or not runs:
        raise PolicyConfigError(f"{where}: key 'runs' must be a glob string but got {runs!r}")
    mode = entry.get("mode", "act")
    if mode not in ("act", "shadow"):
        raise PolicyConfigError(f"{where}: key 'mode' must be 'act' or 'shadow' but got {mode!r}")
    max_failures = entry.get("max_failures", 3)
    if not isinstance(max_failures, int) or isinstance(max_failures, bool) or max_failures < 1:
        raise PolicyConfigError(f"{where}: key 'max_failures' must be an int >= 1 but got {max_failures!r}")

    options = {key: value for key, value in entry.items() if key not in _BINDING_KEYS}
    for key, value in defaults.get(type_name, {}).items():
        options.setdefault(key, value)
    _check_options(policy_class, type_name, options, where)
    return PolicyBinding(
        id=policy_id,
        type=type_name,
        policy_class=policy_class,
        runs=runs,
        mode=mode,
        options=options,
        max_failures=max_failures,
    )


def _check_options(policy_class: type[Policy], type_name: str, options: dict[str, Any], where: str) -> None:
    try:
        signature = inspect.signature(policy_class)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        parameters = signature.parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            accepted = [
                p.name
                for p in parameters
                if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            ]
            for key in options:
                if key not in accepted:
                    known = ", ".join(list(_BINDING_KEYS) + accepted)
                    raise PolicyConfigError(
                        f"{where}: unknown key {key!r} for type {type_name!r} (known keys: {known})"
                    )
            for p in parameters:
                if (
                    p.default is inspect.Parameter.empty
                    and p.kind
                    in (
                        inspect.Parameter.KEYWORD_ONLY,
                        inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    )
                    and p.name not in options
                ):
                    raise PolicyConfigError(f"{where}: missing required key {p.name!r} for type {type_name!r}")
    try:
        policy_class(**copy.deepcopy(options))
    except PolicyConfigError as exc:
        raise PolicyConfigError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise PolicyConfigError(f"{where}: invalid keys for type {type_name!r}: {exc}") from None
    except Exception as exc:
        raise PolicyConfigError(
            f"{where}: type {type_name!r} rejected its options: {type(exc).__name__}: {exc}"
        ) from None
