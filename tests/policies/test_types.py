from __future__ import annotations

import math

import pytest

from policies import FireTrigger, InMemoryRun, MetricPoint, ParamSpec, RunView, SetParams


def test_param_spec_clip_and_validate():
    lr = ParamSpec(name="lr", kind="float", default=0.1, min=1e-4, max=1.0, log=True)
    assert lr.clip(5.0) == 1.0 and lr.clip(0.0) == 1e-4 and lr.clip(0.3) == 0.3
    assert lr.validate(1) == 1.0 and isinstance(lr.validate(1), float)
    layers = ParamSpec(name="layers", kind="int", default=2, min=1, max=8)
    assert layers.clip(3.6) == 4 and isinstance(layers.clip(3.6), int)
    assert layers.clip(100.0) == 8 and layers.validate(3.0) == 3
    with pytest.raises(ValueError, match="layers must be an integer but got 2.5"):
        layers.validate(2.5)
    with pytest.raises(ValueError, match="lr must be finite but got nan"):
        lr.validate(math.nan)
    with pytest.raises(ValueError, match="lr must be a number but got True"):
        lr.validate(True)
    opt = ParamSpec(name="opt", kind="choice", default="sgd", choices=["sgd", "adam", 1])
    assert opt.choices == ("sgd", "adam", 1) and opt.validate(1.0) == 1
    with pytest.raises(ValueError, match=r"opt must be one of \['sgd', 'adam', 1\] but got True"):
        opt.validate(True)
    with pytest.raises(TypeError, match="clip\\(\\) needs a numeric param"):
        opt.clip(1.0)
    assert ParamSpec.infer("x", True).kind == "bool" and ParamSpec.infer("x", 3).kind == "int"
    assert ParamSpec.infer("x", 0.5).kind == "float" and ParamSpec.infer("x", "a").kind == "string"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "double", "default": 1.0}, "kind must be one of float, int, bool, choice, string but got 'double'"),
        ({"kind": "float", "default": 1.0, "min": 2.0, "max": 1.0}, "min must be <= max but got min=2.0, max=1.0"),
        ({"kind": "float", "default": 1.0, "log": True}, "log=True needs min > 0 but got min=None"),
        ({"kind": "bool", "default": True, "min": 0}, "min only applies to float and int params"),
        ({"kind": "choice", "default": "a"}, "a choice param needs choices"),
        ({"kind": "float", "default": 5.0, "max": 1.0}, "invalid default: x must be <= 1.0 but got 5.0"),
        ({"kind": "string", "default": 3}, "invalid default: x must be a str but got 3"),
    ],
)
def test_param_spec_validation(fields, message):
    with pytest.raises(ValueError) as info:
        ParamSpec(name="x", **fields)
    assert message in str(info.value)


def test_metric_point_and_decisions_validate():
    p = MetricPoint(run="r", step=3, time=5, metrics={"loss": 1, "acc": math.nan})
    assert p.time == 5.0 and p.metrics["loss"] == 1.0 and math.isnan(p.metrics["acc"])
    with pytest.raises(TypeError):
        p.metrics["loss"] = 2.0  # read-only
    for bad, message in [
        ({"step": -1}, "step must be an int >= 0 but got -1"),
        ({"step": True}, "step must be an int >= 0 but got True"),
        ({"time": math.inf}, "time must be a finite number but got inf"),
        ({"metrics": {"loss": "x"}}, "metric 'loss' must be a number but got 'x'"),
        ({"run": ""}, "run must be a non-empty string"),
    ]:
        with pytest.raises(ValueError, match=message):
            MetricPoint(**{"run": "r", "step": 1, "time": 0.0, **bad})
    with pytest.raises(ValueError, match="SetParams: changes must be a non-empty mapping but got {}"):
        SetParams(changes={}, reason="x")
    with pytest.raises(ValueError, match="SetParams: reason must be a non-empty string but got ' '"):
        SetParams(changes={"lr": 0.1}, reason=" ")
    with pytest.raises(ValueError, match=r"SetParams: lr must be a float, int, bool or str but got \[1\]"):
        SetParams(changes={"lr": [1]}, reason="x")
    with pytest.raises(ValueError, match="apply_at_step must be None or an int >= 0 but got -3"):
        SetParams(changes={"lr": 0.1}, reason="x", apply_at_step=-3)
    with pytest.raises(ValueError, match="FireTrigger: name must be a non-empty string but got ''"):
        FireTrigger(name="", reason="x")
    with pytest.raises(ValueError, match="FireTrigger: reason must be a non-empty string"):
        FireTrigger(name="stop", reason="")
    with pytest.raises(TypeError):
        SetParams({"lr": 0.1}, "positional")  # keyword-only


def test_in_memory_run_is_a_run_view():
    specs = {"lr": ParamSpec(name="lr", kind="float", default=0.1, min=0.0, max=1.0)}
    run = InMemoryRun("r1", params={"wd": 0.01}, specs=specs, history_limit=3)
    assert isinstance(run, RunView)
    assert dict(run.params) == {"wd": 0.01, "lr": 0.1}
    assert run.specs["wd"].kind == "float" and run.specs["wd"].min is None
    for step in range(1, 6):
        run.record(MetricPoint(run="r1", step=step, time=0.0, metrics={"loss": step / 10}))
    assert run.step == 5
    assert run.history("loss") == [(3, 0.3), (4, 0.4), (5, 0.5)]
    assert run.history("loss", last=2) == [(4, 0.4), (5, 0.5)] and run.history("loss", last=0) == []
    assert run.history("nothing") == []
    assert run.apply({"lr": 0.5}) == {"lr": 0.1} and run.params["lr"] == 0.5
    with pytest.raises(ValueError, match="lr must be <= 1.0 but got 2.0"):
        run.apply({"wd": 0.0, "lr": 2.0})
    assert run.params["wd"] == 0.01  # all or nothing
    with pytest.raises(KeyError, match="unknown param 'momentum'"):
        run.apply({"momentum": 0.9})
    run.pin("lr")
    assert run.pinned == frozenset({"lr"})
    run.release("lr")
    assert run.pinned == frozenset()
    with pytest.raises(ValueError, match="got a point of run 'r2'"):
        run.record(MetricPoint(run="r2", step=1, time=0.0))
    with pytest.raises(TypeError):
        run.params["lr"] = 1.0  # read-only view
