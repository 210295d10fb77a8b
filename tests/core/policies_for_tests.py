"""Misbehaving policies, loaded by the supervisor as ``tests.core.policies_for_tests:Name``."""

from __future__ import annotations

import time

from policies import Policy


class Crash(Policy):
    def observe(self, point, run):
        raise RuntimeError(f"boom at step {point.step}")


class Sleepy(Policy):
    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds

    def observe(self, point, run):
        time.sleep(self.seconds)
        return ()
