"""Policies for tests (misbehaving ones, probes), loaded by the supervisor as ``tests.core.policies_for_tests:Name``."""

from __future__ import annotations

import time

from policies import Policy, SetParams


class Crash(Policy):
    def observe(self, point, run):
        raise RuntimeError(f"boom at step {point.step}")


class Sleepy(Policy):
    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds

    def observe(self, point, run):
        time.sleep(self.seconds)
        return ()


class HistoryProbe(Policy):
    """At the first point it sees in this process, tells what ``run.history`` holds, in a decision's reason."""

    def __init__(self) -> None:
        self.told = False

    def observe(self, point, run):
        if self.told:
            return ()
        self.told = True
        steps = [step for step, _ in run.history("val_loss")]
        return [SetParams(changes={"lr": 0.001 * len(steps)}, reason=f"history steps {steps}")]


class EndProbe(Policy):
    """When a run ends, tells how in a decision's reason (so a test sees that ``on_run_end`` was called)."""

    def observe(self, point, run):
        return ()

    def on_run_end(self, run, *, outcome, now):
        return [SetParams(changes={"lr": 0.5}, reason=f"ended {outcome}")]
