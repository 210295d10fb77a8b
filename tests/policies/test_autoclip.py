from __future__ import annotations

import math

import numpy as np
import pytest

from policies import AutoClipPolicy, ParamSpec, PolicyConfigError

from .helpers import Driver


def test_threshold_is_the_percentile_of_finite_norms():
    rng = np.random.default_rng(3)
    norms = rng.lognormal(0.0, 1.0, 200)
    policy = AutoClipPolicy(percentile=10, min_history=20, min_change=0.0)
    driver = Driver(policy, {"clip_norm": 1.0})
    for i, norm in enumerate(norms):
        driver.feed({"grad_norm": float(norm)})
        if i == 10:
            driver.feed({"grad_norm": math.nan})
            driver.feed({"grad_norm": math.inf})
        if i + 1 >= 20:
            assert driver.run.params["clip_norm"] == pytest.approx(np.percentile(norms[: i + 1], 10), rel=1e-12)
    assert len(policy.norms) == 200  # non-finite norms were not kept


def test_no_decision_before_min_history_and_min_change_limits_spam():
    rng = np.random.default_rng(4)
    driver = Driver(AutoClipPolicy(min_history=20, min_change=0.05), {"clip_norm": 1.0})
    for _ in range(19):
        driver.feed({"grad_norm": float(rng.uniform(2, 3))})
    assert driver.outcomes == []
    for _ in range(500):
        driver.feed({"grad_norm": float(rng.uniform(2, 3))})
    changes = [o for o in driver.outcomes if o.kind == "apply"]
    assert 1 <= len(changes) < 10  # a stationary distribution settles quickly
    for before, after in zip(changes, changes[1:], strict=False):
        ratio = after.changes["clip_norm"] / before.changes["clip_norm"]
        assert abs(ratio - 1) > 0.05
    assert 2.0 < driver.run.params["clip_norm"] < 2.3


def test_history_window_and_spec_bounds():
    spec = {"clip_norm": ParamSpec(name="clip_norm", kind="float", default=5.0, min=0.5, max=10.0)}
    driver = Driver(
        AutoClipPolicy(min_history=3, history=3, percentile=50, min_change=0.0),
        {"clip_norm": 5.0},
        specs=spec,
    )
    for norm in [100.0, 100.0, 100.0]:
        driver.feed({"grad_norm": norm})
    assert driver.run.params["clip_norm"] == 10.0  # clipped into the spec
    for norm in [0.1, 0.1, 0.1]:
        driver.feed({"grad_norm": norm})
    assert driver.run.params["clip_norm"] == 0.5  # the window forgot the 100s


def test_state_round_trip():
    policy = AutoClipPolicy(min_history=2, history=4)
    driver = Driver(policy, {"clip_norm": 1.0})
    for norm in [1.0, 2.0, 3.0, 4.0, 5.0]:
        driver.feed({"grad_norm": norm})
    restored = AutoClipPolicy(min_history=2, history=4)
    restored.load_state_dict(policy.state_dict())
    assert list(restored.norms) == [2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"percentile": 101}, "autoclip: percentile must be <= 100.0 but got 101"),
        ({"min_history": 0}, "autoclip: min_history must be >= 1 but got 0"),
        ({"history": 5, "min_history": 20}, "autoclip: history must be >= min_history (20) but got 5"),
        ({"min_change": -1}, "autoclip: min_change must be >= 0.0 but got -1"),
    ],
)
def test_options_are_validated(options, message):
    with pytest.raises(PolicyConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AutoClipPolicy(**options)
