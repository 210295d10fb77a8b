"""docs/writing-a-policy.md: its example policy, config and tests run as written."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from policies import load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-policy.md"


def blocks() -> dict[str, str]:
    """Fenced code blocks whose first line is ``# <file name>``, by file name."""
    found = {}
    for body in re.findall(r"```(?:python|toml)\n(.*?)```", DOC.read_text(), flags=re.S):
        first = body.splitlines()[0]
        if first.startswith("# ") and first.endswith((".py", ".toml")):
            found[first[2:]] = body
    return found


@pytest.fixture
def doc_files(tmp_path, monkeypatch):
    files = blocks()
    assert {"mypolicies.py", "policies.toml", "test_mypolicies.py"} <= set(files)
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("mypolicies", "test_mypolicies"):
        sys.modules.pop(module, None)


def test_the_example_policy_is_about_thirty_lines():
    body = blocks()["mypolicies.py"]
    class_lines = body[body.index("class HalveOnExplosion") :].strip().splitlines()
    assert len(class_lines) <= 32


def test_the_docs_example_config_loads_and_its_tests_pass(doc_files):
    (binding,) = load_config(doc_files / "policies.toml")
    assert binding.id == "halve-on-explosion" and binding.policy_class.__name__ == "HalveOnExplosion"
    assert binding.create().ratio == 8.0
    tests = importlib.import_module("test_mypolicies")
    names = [name for name in dir(tests) if name.startswith("test_")]
    assert len(names) == 2
    for name in names:
        getattr(tests, name)()
