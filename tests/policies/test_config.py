from __future__ import annotations

import textwrap

import pytest

from policies import (
    OptunaPolicy,
    PlateauPolicy,
    Policy,
    PolicyBinding,
    PolicyConfigError,
    load_config,
    parse_config,
    resolve_policy_class,
)


class HalveOnSpike(Policy):
    """A policy defined in a test module, loaded as ``module:Class``."""

    def __init__(self, *, metric: str = "grad_norm", limit: float = 10.0) -> None:
        if limit <= 0:
            raise PolicyConfigError(f"halve: limit must be > 0 but got {limit!r}")
        self.metric = metric
        self.limit = limit

    def observe(self, point, run):
        return ()

    class Nested(Policy):
        def observe(self, point, run):
            return ()


class NoOptions(Policy):
    def observe(self, point, run):
        return ()


class Abstract(Policy):
    pass


NOT_A_POLICY = object()


def write(tmp_path, text, name="policies.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_full_file(tmp_path):
    path = write(
        tmp_path,
        """
        [[policy]]
        id = "lr-plateau"
        type = "plateau"
        runs = "digits-*"
        metric = "val_loss"
        factor = 0.5

        [[policy]]
        type = "guard"
        runs = ["a-*", "b-?"]
        mode = "shadow"
        max_failures = 5

        [[policy]]
        type = "tests.policies.test_config:HalveOnSpike"
        limit = 3
        """,
    )
    plateau, guard, custom = load_config(path)
    assert (plateau.id, plateau.type, plateau.policy_class) == ("lr-plateau", "plateau", PlateauPolicy)
    assert dict(plateau.options) == {"metric": "val_loss", "factor": 0.5}
    assert plateau.mode == "act" and plateau.max_failures == 3
    assert plateau.matches("digits-3") and not plateau.matches("Digits-3")
    assert guard.id == "guard-2" and guard.mode == "shadow" and guard.max_failures == 5
    assert guard.matches("a-1") and guard.matches("b-x") and not guard.matches("b-xx")
    assert custom.id == "tests.policies.test_config:HalveOnSpike-3"
    assert custom.policy_class is HalveOnSpike and custom.create().limit == 3
    policy = plateau.create()
    assert isinstance(policy, PlateauPolicy) and policy.factor == 0.5
    assert plateau.create() is not policy
    runner = plateau.create_runner()
    assert runner.policy_id == "lr-plateau" and runner.mode == "act"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"metric": "m"}, "test.toml: [[policy]] #1: missing required key 'type'"),
        ({"type": "platoe"}, "test.toml: [[policy]] #1: key 'type': unknown policy type 'platoe'"),
        (
            {"id": "p", "type": "plateau", "metric": "m", "factr": 0.5},
            "test.toml: [[policy]] #1 (id 'p'): unknown key 'factr' for type 'plateau' (known keys: id,",
        ),
        (
            {"id": "p", "type": "plateau"},
            "test.toml: [[policy]] #1 (id 'p'): missing required key 'metric' for type 'plateau'",
        ),
        (
            {"id": "p", "type": "plateau", "metric": "m", "factor": 1.5},
            "test.toml: [[policy]] #1 (id 'p'): plateau: factor must be < 1.0 but got 1.5",
        ),
        (
            {"id": "p", "type": "plateau", "metric": "m", "factor": "0.5"},
            "test.toml: [[policy]] #1 (id 'p'): plateau: factor must be a number but got '0.5'",
        ),
        (
            {"id": "p", "type": "plateau", "metric": "m", "patience": 2.5},
            "plateau: patience must be an integer but got 2.5",
        ),
        ({"type": "plateau", "metric": "m", "mode": "dry"}, "key 'mode' must be 'act' or 'shadow' but got 'dry'"),
        ({"type": "plateau", "metric": "m", "runs": ""}, "key 'runs' must be a glob string but got ''"),
        ({"type": "plateau", "metric": "m", "runs": []}, "key 'runs' must be a glob or a non-empty list"),
        ({"type": "plateau", "metric": "m", "max_failures": 0}, "key 'max_failures' must be an int >= 1 but got 0"),
        ({"id": "has space", "type": "plateau", "metric": "m"}, "key 'id' must be a name of letters"),
        (
            {"id": 3, "type": "plateau", "metric": "m"},
            "key 'id' must be a name of letters, digits and _ . : @ - but got 3",
        ),
        ({"type": 3}, "key 'type' must be a non-empty string but got 3"),
        (
            {"type": "tests.policies.test_config:HalveOnSpike", "limit": -1},
            "[[policy]] #1: halve: limit must be > 0 but got -1",
        ),
        (
            {"type": "tests.policies.test_config:NoOptions", "limit": 1},
            "NoOptions: unknown option(s) limit",
        ),
        (
            {"type": "tests.policies.test_config:Nope"},
            "module 'tests.policies.test_config' has no attribute 'Nope'",
        ),
        ({"type": "no_such_module_x:P"}, "cannot import module 'no_such_module_x' for policy type"),
        ({"type": "tests.policies.test_config:NOT_A_POLICY"}, "which is not a subclass of policies.Policy"),
        ({"type": "tests.policies.test_config:Abstract"}, "does not implement observe"),
        (
            {"type": "optuna", "metric": "m", "pruner": "hyperband", "n_warmup_steps": 3},
            "optuna: n_warmup_steps must be unset with pruner 'hyperband' (it has no effect) but got 3",
        ),
    ],
)
def test_invalid_entries_name_the_place_the_key_and_the_reason(entry, message):
    with pytest.raises(PolicyConfigError) as info:
        parse_config({"policy": [entry]}, source="test.toml")
    assert message in str(info.value)


def test_duplicate_ids_and_file_level_errors(tmp_path):
    with pytest.raises(PolicyConfigError) as info:
        parse_config({"policy": [{"id": "x", "type": "guard"}, {"id": "x", "type": "guard"}]}, source="f.toml")
    assert str(info.value) == "f.toml: [[policy]] #2 (id 'x'): duplicate id 'x' (already used by [[policy]] #1)"
    with pytest.raises(PolicyConfigError, match="f.toml: unknown top-level key 'polcy'"):
        parse_config({"polcy": []}, source="f.toml")
    with pytest.raises(PolicyConfigError, match="f.toml: 'policy' must be an array of tables"):
        parse_config({"policy": {"type": "guard"}}, source="f.toml")
    with pytest.raises(PolicyConfigError, match=r"f.toml: \[\[policy\]\] #1: expected a table"):
        parse_config({"policy": ["guard"]}, source="f.toml")

    bad = write(tmp_path, '[[policy]]\ntype = "guard"\nfactor = \n')
    with pytest.raises(PolicyConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: invalid TOML: ")
    assert "line 3" in str(info.value)
    with pytest.raises(PolicyConfigError, match="missing.toml: cannot read"):
        load_config(tmp_path / "missing.toml")
    assert load_config(write(tmp_path, "# nothing yet\n", "empty.toml")) == []


def test_defaults_fill_options_the_file_leaves_out():
    entries = {
        "policy": [
            {"type": "optuna", "metric": "val_loss"},
            {"type": "optuna", "metric": "m", "storage": "sqlite:///x.db"},
        ]
    }
    defaults = {"optuna": {"storage": "postgresql://user@db/studies"}}
    first, second = parse_config(entries, defaults=defaults)
    assert first.options["storage"] == "postgresql://user@db/studies"
    assert second.options["storage"] == "sqlite:///x.db"
    assert first.create().storage == "postgresql://user@db/studies"


def test_nested_class_and_builtin_resolution():
    assert resolve_policy_class("tests.policies.test_config:HalveOnSpike.Nested") is HalveOnSpike.Nested
    assert resolve_policy_class("optuna") is OptunaPolicy


def test_entry_point_loading(tmp_path, monkeypatch):
    dist = tmp_path / "my_policies-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-policies\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[supervisor.policies]\n"
        "halve = tests.policies.test_config:HalveOnSpike\n"
        "broken = tests.policies.test_config:Missing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (binding,) = parse_config({"policy": [{"type": "halve", "limit": 2.0}]})
    assert binding.policy_class is HalveOnSpike and binding.id == "halve-1"
    with pytest.raises(PolicyConfigError, match="cannot load entry point 'broken'"):
        parse_config({"policy": [{"type": "broken"}]})
    with pytest.raises(PolicyConfigError, match="unknown policy type 'halve2': expected a built-in"):
        parse_config({"policy": [{"type": "halve2"}]})


def test_bindings_built_in_code():
    binding = PolicyBinding(id="h", policy_class=HalveOnSpike, runs=["x*"], options={"limit": 1.0})
    assert binding.type == "tests.policies.test_config:HalveOnSpike"
    assert binding.runs == ("x*",) and binding.matches("x1") and binding.scope == "run"
    with pytest.raises(PolicyConfigError, match="policy 'h': mode must be 'act' or 'shadow' but got 'on'"):
        PolicyBinding(id="h", policy_class=HalveOnSpike, mode="on")
    with pytest.raises(PolicyConfigError, match="policy_class must be a Policy subclass"):
        PolicyBinding(id="h", policy_class=dict)
