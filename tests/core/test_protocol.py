"""The .proto stays lint-clean and the committed generated code matches it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROTO = "trainer_sdk/protocol/v1/supervisor.proto"


def test_generated_code_matches_the_proto(tmp_path: Path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(ROOT / "protos"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(ROOT / "protos" / PROTO),
        ],
        check=True,
    )
    generated = sorted((tmp_path / "trainer_sdk/protocol/v1").glob("*.py*"))
    assert [p.name for p in generated] == ["supervisor_pb2.py", "supervisor_pb2.pyi", "supervisor_pb2_grpc.py"]
    for path in generated:
        committed = ROOT / "trainer_sdk/protocol/v1" / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale or hand-edited: run `make proto`"


def test_generated_code_imports_inside_the_package():
    # grpc#29390: the _grpc module must import its sibling by the package path.
    text = (ROOT / "trainer_sdk/protocol/v1/supervisor_pb2_grpc.py").read_text()
    assert "from trainer_sdk.protocol.v1 import supervisor_pb2" in text


def test_buf_standard_lint_is_clean():
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("npx not found: install Node.js (buf comes from npm's @bufbuild/buf)")
    result = subprocess.run(
        [npx, "--yes", "@bufbuild/buf@1.75.0", "lint"], cwd=ROOT / "protos", capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
