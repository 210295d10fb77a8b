"""The SDK on its own: declarations, offline mode, read-only parameters, light imports."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from trainer_sdk import Bool, Choice, Float, Int, InvalidValue, connect


def test_plain_defaults_and_declarations(caplog):
    with caplog.at_level(logging.WARNING, logger="trainer_sdk"):
        hp = connect(
            run="local",
            params={
                "lr": Float(0.05, min=1e-5, max=1.0, log=True),
                "weight_decay": 0.0,
                "epochs": 3,
                "nesterov": True,
                "opt": Choice("adam", choices=["adam", "sgd"]),
                "name": "x",
            },
            address=None,
        )
    assert (hp.lr, hp["lr"], hp.weight_decay, hp.epochs, hp.nesterov, hp.opt, hp.name) == (
        0.05,
        0.05,
        0.0,
        3,
        True,
        "adam",
        "x",
    )
    assert not hp.connected and hp.version == 0 and hp.as_dict()["epochs"] == 3
    offline = [r for r in caplog.records if "offline" in r.getMessage()]
    assert len(offline) == 1  # one warning, no exception
    hp.report(1, loss=0.5)  # a no-op offline, never raises
    assert hp.triggered("stop") is False


def test_parameters_are_read_only():
    hp = connect(run="ro", params={"lr": 0.1}, address=None)
    with pytest.raises(AttributeError, match="changed by the supervisor"):
        hp.lr = 0.2
    with pytest.raises(AttributeError, match="changed by the supervisor"):
        hp["lr"] = 0.2
    assert hp.lr == 0.1


@pytest.mark.parametrize("name", ["report", "version", "close", "_secret", "not an identifier", "class"])
def test_reserved_or_invalid_names_are_refused(name):
    with pytest.raises(ValueError, match=repr(name)):
        connect(run="names", params={name: 1.0}, address=None)


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        (lambda: Float(0.1, min=1.0, max=0.0), "min (1.0) must not exceed max (0.0)"),
        (lambda: Float(0.1, log=True), "log=True needs a positive min"),
        (
            lambda: connect(run="d", params={"lr": Float(2.0, max=1.0)}, address=None),
            "lr: 2.0 is above the maximum 1.0",
        ),
        (lambda: connect(run="d", params={"lr": [1]}, address=None), "declare a number, bool, string"),
        (lambda: connect(run="", params={}, address=None), "run must be a non-empty"),
        (lambda: connect(run="d", params={}, address=None, rank=2, world_size=2), "rank must be in [0, world_size)"),
    ],
)
def test_bad_declarations_say_why(declaration, message):
    with pytest.raises((ValueError, TypeError)) as info:
        declaration()
    assert message in str(info.value)


def test_values_are_checked_by_type():
    assert Float(0.1).check("0.5", name="lr") == 0.5
    assert Int(1, min=0).check("3", name="n") == 3
    assert Bool(False).check("yes", name="b") is True
    assert Choice("a", choices=["a", "b"]).check("b", name="c") == "b"
    for param, value, message in [
        (Int(1), 0.5, "expected a whole number"),
        (Bool(True), "maybe", "expected true or false"),
        (Choice("a", choices=["a", "b"]), "z", "is not one of"),
        (Float(0.1), True, "expected a number"),
    ]:
        with pytest.raises(InvalidValue, match=message):
            param.check(value, name="p")


def test_rank_and_world_size_come_from_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    hp = connect(run="ranks", params={}, address=None)
    assert (hp.rank, hp.world_size) == (3, 8)


def test_sdk_imports_neither_torch_nor_supervisor_nor_policies():
    code = (
        "import sys, trainer_sdk; bad = [m for m in ('torch', 'optuna', 'supervisor', 'policies', 'numpy') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_report_reads_cpu_tensors_at_once_and_holds_the_others_for_the_batch():
    torch = pytest.importorskip("torch")
    from trainer_sdk._session import _make_report
    from trainer_sdk._state import SessionState

    state = SessionState(run="tensors", rank=0, world_size=1, params={}, values={}, buffer_size=10)
    report = _make_report(state)  # the thread transport's; the process transport's converts the same way
    on_device = torch.tensor(0.5, device="meta")  # as a CUDA tensor: reading it now would wait for the device
    several = torch.tensor([1.0, 2.0])
    report(0, loss=torch.tensor(0.25), steps=torch.tensor(3), on_device=on_device, several=several, plain=1.5)
    ((_, _, metrics),) = state.queue
    assert metrics["loss"] == 0.25 and type(metrics["loss"]) is float
    assert metrics["steps"] == 3 and metrics["plain"] == 1.5
    assert metrics["on_device"] is on_device and metrics["several"] is several  # the batch conversion's to judge
