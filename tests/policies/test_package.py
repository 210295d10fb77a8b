"""The public surface, and the rules ``policies/`` lives by (pure logic, lazy heavy imports)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import policies

PACKAGE = Path(policies.__file__).parent
ROOT = PACKAGE.parent

PUBLIC = {
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
}

FORBIDDEN = {"grpc", "sqlite3", "threading", "asyncio", "supervisor", "trainer_sdk", "torch", "time"}


def test_all_is_exactly_the_public_surface():
    assert set(policies.__all__) == PUBLIC
    assert len(policies.__all__) == len(PUBLIC)
    for name in policies.__all__:
        assert getattr(policies, name) is not None
    public_modules = [p.name for p in PACKAGE.glob("*.py") if not p.name.startswith("_")]
    assert public_modules == []  # everything lives in private modules


def test_every_builtin_type_resolves():
    assert set(policies.builtin_policy_types()) == {
        "plateau",
        "autoclip",
        "guard",
        "schedule",
        "optuna",
        "optuna_in_run",
    }
    for name in policies.builtin_policy_types():
        assert issubclass(policies.resolve_policy_class(name), policies.Policy)


def test_no_forbidden_imports_and_no_clock():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
        assert "time.time" not in path.read_text() and "datetime.now" not in path.read_text()


def test_import_is_light():
    code = (
        "import sys, policies; policies.load_config; "
        "print(sorted(m for m in ('optuna', 'torch', 'numpy', 'grpc', 'supervisor', 'trainer_sdk') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_optuna_is_only_imported_when_used():
    code = (
        "import sys, policies; "
        "policies.parse_config({'policy': [{'type': 'optuna', 'metric': 'm'}]}); "
        "print('optuna' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
