from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from policies import (
    ParamSpec,
    Policy,
    ReplayInputError,
    SetParams,
    parse_config,
    point_from_dict,
    read_jsonl,
    replay,
)

CONFIG = {
    "policy": [
        {"id": "warm", "type": "schedule", "kind": "warmup", "base": 0.1, "warmup_steps": 5, "runs": "b*"},
        {"id": "plateau", "type": "plateau", "metric": "val_loss", "patience": 2, "factor": 0.5},
        {"id": "guard", "type": "guard", "metric": "loss", "stop_metric": "val_loss", "stop_patience": 8},
        {"id": "clip", "type": "autoclip", "min_history": 5},
    ]
}


def metric_lines(seed=0, n=60):
    rng = np.random.default_rng(seed)
    lines = []
    for step in range(n):
        for run in ("a1", "b1"):
            metrics = {"loss": float(2.0 * math.exp(-step / 20) + rng.normal(0, 0.01))}
            metrics["grad_norm"] = float(rng.lognormal(0, 0.5))
            if step % 3 == 0:
                metrics["val_loss"] = float(1.0 + 0.2 * rng.random())
            if step == 31 and run == "a1":
                metrics["loss"] = math.nan
            lines.append({"run": run, "step": step, "metrics": metrics})
    return lines


def run_replay(lines, **kwargs):
    bindings = parse_config(CONFIG)
    return [json.dumps(row) for row in replay(bindings, lines, {"lr": 0.1, "clip_norm": 1.0}, **kwargs)]


def test_two_replays_are_byte_identical_and_do_something():
    first = run_replay(metric_lines())
    second = run_replay(metric_lines())
    assert first == second
    rows = [json.loads(line) for line in first]
    policies = {row["policy"] for row in rows}
    assert policies == {"warm", "plateau", "guard", "clip"}
    assert any(row.get("trigger") == "rollback" and row["run"] == "a1" for row in rows)
    assert any(row.get("trigger") == "stop" for row in rows)


def test_rows_have_the_documented_fields():
    rows = [json.loads(line) for line in run_replay(metric_lines())]
    change = next(row for row in rows if row["policy"] == "plateau")
    assert list(change) == ["run", "step", "policy", "kind", "param", "old", "new", "reason"]
    assert change["kind"] == "apply" and change["param"] == "lr" and change["new"] == change["old"] * 0.5
    trigger = next(row for row in rows if "trigger" in row)
    assert list(trigger) == ["run", "step", "policy", "kind", "trigger", "reason"]


def test_applied_changes_are_seen_by_later_decisions():
    bindings = parse_config({"policy": [{"type": "plateau", "metric": "m", "patience": 0, "factor": 0.5}]})
    lines = [{"run": "r", "step": i, "metrics": {"m": 1.0}} for i in range(4)]
    rows = list(replay(bindings, lines, {"lr": 1.0}))
    assert [(r["step"], r["old"], r["new"]) for r in rows] == [(1, 1.0, 0.5), (2, 0.5, 0.25), (3, 0.25, 0.125)]


class Multi(Policy):
    """Sets two params at once, and says what time it saw."""

    def observe(self, point, run):
        if point.step == 2:
            return [SetParams(changes={"lr": 0.5, "wd": 0.1}, reason=f"time {point.time!r}")]
        return ()


def test_one_row_per_changed_param_and_time_defaults_to_step():
    bindings = parse_config({"policy": [{"id": "m", "type": "tests.policies.test_replay:Multi"}]})
    lines = [{"run": "r", "step": 1, "metrics": {}}, {"run": "r", "step": 2, "metrics": {}}]
    rows = list(replay(bindings, lines, {"lr": 1.0, "wd": 0.0}))
    assert rows == [
        {
            "run": "r",
            "step": 2,
            "policy": "m",
            "kind": "apply",
            "param": "lr",
            "old": 1.0,
            "new": 0.5,
            "reason": "time 2.0",
        },
        {
            "run": "r",
            "step": 2,
            "policy": "m",
            "kind": "apply",
            "param": "wd",
            "old": 0.0,
            "new": 0.1,
            "reason": "time 2.0",
        },
    ]
    with_time = [{"run": "r", "step": 2, "time": 1700000000.5, "metrics": {}}]
    assert next(iter(replay(bindings, with_time, {"lr": 1.0, "wd": 0.0})))["reason"] == "time 1700000000.5"


def test_specs_bound_the_values_and_shadow_mode_changes_nothing():
    specs = {"lr": ParamSpec(name="lr", kind="float", default=1.0, min=0.4, max=1.0)}
    bindings = parse_config(
        {
            "policy": [
                {"type": "tests.policies.test_replay:Multi"},
                {"id": "s", "type": "plateau", "metric": "m", "patience": 0, "mode": "shadow"},
            ]
        }
    )
    lines = [{"run": "r", "step": i, "metrics": {"m": 1.0}} for i in range(1, 4)]
    rows = list(replay(bindings, lines, {"lr": 1.0, "wd": 0.0}, specs))
    assert [(r["policy"], r["kind"]) for r in rows] == [
        ("tests.policies.test_replay:Multi-1", "apply"),
        ("tests.policies.test_replay:Multi-1", "apply"),
        ("s", "proposal"),
        ("s", "proposal"),
    ]
    assert rows[0]["new"] == 0.5
    assert [(r["old"], r["new"]) for r in rows[2:]] == [(1.0, 0.4), (0.5, 0.4)]  # shadow never applied; clipped


def test_optuna_population_replay_is_deterministic_and_end_lines_finish_runs():
    config = {
        "policy": [
            {
                "type": "optuna",
                "metric": "val_loss",
                "seed": 1,
                "sampler": "random",
                "n_startup_trials": 2,
                "n_warmup_steps": 2,
            }
        ]
    }
    specs = {"lr": ParamSpec(name="lr", kind="float", default=0.1, min=1e-4, max=1.0, log=True)}
    lines = []
    for i, level in enumerate([1.0, 1.1, 0.9, 5.0]):
        run = f"trial-{i}"
        lines += [{"run": run, "step": s, "metrics": {"val_loss": level - 0.01 * s}} for s in range(6)]
        lines.append({"run": run, "step": 6, "end": "completed"})
    outputs = [[json.dumps(r) for r in replay(parse_config(config), lines, {"lr": 0.1}, specs)] for _ in range(2)]
    assert outputs[0] == outputs[1]
    rows = [json.loads(r) for r in outputs[0]]
    assert [r["reason"].split(" of ")[0] for r in rows if r["kind"] == "apply"] == [
        f"optuna trial {i}" for i in range(4)
    ]
    (stop,) = [r for r in rows if r["kind"] == "trigger"]
    assert stop["run"] == "trial-3" and stop["reason"].startswith("pruned by median at step 2")


def test_read_jsonl_names_the_line(tmp_path):
    good = tmp_path / "m.jsonl"
    good.write_text(
        '{"run": "r", "step": 1, "metrics": {"loss": 1.5, "x": NaN, "y": null}}\n'
        "\n"
        '{"run": "r", "step": 2, "metrics": {}}\n'
    )
    lines = list(read_jsonl(good))
    assert len(lines) == 2
    assert math.isnan(point_from_dict(lines[0]).metrics["y"])
    ok = '{"run": "r", "step": 1, "metrics": {}}\n'
    cases = {
        ok + '{"run": "r", "step": 2, "metrics": {}\n': ":2: invalid JSON: Expecting ',' delimiter",
        '{"run": "r", "metrics": {}}\n': ":1: missing required key 'step'",
        '\n\n{"run": "r", "step": -1, "metrics": {}}\n': ":3: 'step' must be an integer >= 0 but got -1",
        '{"run": "r", "step": 1, "metrics": {"loss": "high"}}\n': (
            ":1: metric 'loss' must be a number or null but got 'high'"
        ),
        '{"run": "", "step": 1, "metrics": {}}\n': ":1: 'run' must be a non-empty string",
        "[1, 2]\n": ":1: expected a JSON object",
        '{"run": "r", "step": 1, "end": "done"}\n': (
            ":1: 'end' must be 'completed', 'failed' or 'vanished' but got 'done'"
        ),
        '{"run": "r", "step": 1, "time": "now", "metrics": {}}\n': ":1: 'time' must be a finite number but got 'now'",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(text)
        with pytest.raises(ReplayInputError) as info:
            list(read_jsonl(path))
        assert str(info.value).startswith(str(path) + message)
    with pytest.raises(ReplayInputError, match="nope.jsonl: cannot read"):
        read_jsonl(tmp_path / "nope.jsonl")
    stream = io.StringIO('{"run": "r", "step": 1, "metrics": {}}\n')
    assert list(read_jsonl(stream)) == [{"run": "r", "step": 1, "metrics": {}}]


def test_replay_checks_its_arguments_before_reading():
    bindings = parse_config(CONFIG)
    with pytest.raises(ValueError, match="lr must be >= 0.5 but got 0.1"):
        replay(bindings, [], {"lr": 0.1}, {"lr": ParamSpec(name="lr", kind="float", default=1.0, min=0.5)})
    with pytest.raises(ReplayInputError, match="input line 2: missing required key 'metrics'"):
        list(
            replay(
                bindings,
                [{"run": "r", "step": 1, "metrics": {}}, {"run": "r", "step": 2}],
                {"lr": 0.1, "clip_norm": 1.0},
            )
        )
