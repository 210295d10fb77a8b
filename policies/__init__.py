"""Policies: pure decision logic for supervised training runs.

A policy watches metric points of a run and returns decisions (``SetParams``,
``FireTrigger``). The same engine pieces run live in the supervisor and offline in
``replay``. This package does no I/O of its own, starts no threads and reads no clock.

Public surface (everything else is private):

* values: ``ParamValue``, ``ParamSpec``, ``MetricPoint``, ``RunView``, ``SetParams``,
  ``FireTrigger``, ``Decision``, ``Outcome``
* writing policies: ``Policy``, ``InMemoryRun``
* config: ``PolicyBinding``, ``load_config``, ``parse_config``, ``resolve_policy_class``,
  ``builtin_policy_types``, ``ENTRY_POINT_GROUP``
* engine: ``PolicyRunner``, ``arbitrate``, ``PolicyEngine``, ``replay``, ``read_jsonl``,
  ``point_from_dict``
* built-ins: ``PlateauPolicy`` ("plateau"), ``AutoClipPolicy`` ("autoclip"), ``GuardPolicy``
  ("guard"), ``SchedulePolicy`` ("schedule"), ``OptunaPolicy`` ("optuna"),
  ``OptunaInRunPolicy`` ("optuna_in_run")
* errors: ``PolicyError``, ``PolicyConfigError``, ``ReplayInputError``
"""

from ._arbitrate import arbitrate
from ._autoclip import AutoClipPolicy
from ._config import PolicyBinding, load_config, parse_config
from ._engine import PolicyEngine
from ._errors import PolicyConfigError, PolicyError, ReplayInputError
from ._guard import GuardPolicy
from ._optuna import OptunaInRunPolicy, OptunaPolicy
from ._outcome import Outcome, OutcomeKind
from ._plateau import PlateauPolicy
from ._policy import Policy, RunOutcome, Scope
from ._registry import ENTRY_POINT_GROUP, builtin_policy_types, resolve_policy_class
from ._replay import point_from_dict, read_jsonl, replay
from ._run import InMemoryRun
from ._runner import Mode, PolicyRunner
from ._schedule import SchedulePolicy
from ._types import (
    Decision,
    FireTrigger,
    MetricPoint,
    ParamKind,
    ParamSpec,
    ParamValue,
    RunView,
    SetParams,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "AutoClipPolicy",
    "Decision",
    "FireTrigger",
    "GuardPolicy",
    "InMemoryRun",
    "MetricPoint",
    "Mode",
    "OptunaInRunPolicy",
    "OptunaPolicy",
    "Outcome",
    "OutcomeKind",
    "ParamKind",
    "ParamSpec",
    "ParamValue",
    "PlateauPolicy",
    "Policy",
    "PolicyBinding",
    "PolicyConfigError",
    "PolicyEngine",
    "PolicyError",
    "PolicyRunner",
    "ReplayInputError",
    "RunOutcome",
    "RunView",
    "SchedulePolicy",
    "Scope",
    "SetParams",
    "arbitrate",
    "builtin_policy_types",
    "load_config",
    "parse_config",
    "point_from_dict",
    "read_jsonl",
    "replay",
    "resolve_policy_class",
]
