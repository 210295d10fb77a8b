"""``PolicyRunner``: calls one policy instance's hooks and turns what they return into outcomes.

It is the piece the live host and ``replay`` share. It uses no threads and no timeouts: the
live host runs ``runner.observe(...)`` in a worker of its own, times it, and calls
``runner.record_failure(...)`` when the call ran too long.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeAlias

from ._errors import PolicyError
from ._outcome import Outcome
from ._policy import Policy, RunOutcome
from ._types import FireTrigger, MetricPoint, ParamValue, RunView, SetParams

__all__ = ["Mode", "PolicyRunner"]

Mode: TypeAlias = Literal["act", "shadow"]


class PolicyRunner:
    """Wraps one policy instance (binding × run for run scope, binding for population scope).

    * A hook that raises gives one ``"error"`` outcome holding the exception text. After
      ``max_failures`` *consecutive* failures (calls that raised, or that the host reported
      through :meth:`record_failure`) the runner is disabled: later calls return ``[]``. A
      successful call resets the count.
    * Every returned decision is validated against the run's specs: a non-decision, an unknown
      param or a value the spec rejects (wrong type, out of bounds, non-finite) makes the whole
      decision ``"refused"``.
    * In ``mode="shadow"`` valid decisions become ``"proposal"`` outcomes and nothing acts.
    * A hook returning ``None`` counts as no decisions; a bare decision as a one-item list.

    Not thread-safe: never call a runner while a previous call is still running (``busy``).
    If the host gave up on a call (timeout) and called :meth:`record_failure`, whatever that
    call eventually returns is discarded and does not reset the failure count.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        policy_id: str,
        mode: Mode = "act",
        max_failures: int = 3,
    ) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(f"PolicyRunner: policy must be a Policy but got {policy!r}")
        if not isinstance(policy_id, str) or not policy_id:
            raise ValueError(f"PolicyRunner: policy_id must be a non-empty string but got {policy_id!r}")
        if mode not in ("act", "shadow"):
            raise ValueError(f"PolicyRunner: mode must be 'act' or 'shadow' but got {mode!r}")
        if not isinstance(max_failures, int) or isinstance(max_failures, bool) or max_failures < 1:
            raise ValueError(f"PolicyRunner: max_failures must be an int >= 1 but got {max_failures!r}")
        self.policy = policy
        self.policy_id = policy_id
        self.mode: Mode = mode
        self.max_failures = max_failures
        self._failures = 0
        self._disabled_reason: str | None = None
        self._generation = 0
        self._busy = False
        self._last_run = ""
        self._last_step = 0

    def __repr__(self) -> str:
        state = "disabled" if self.disabled else f"failures={self._failures}"
        return f"PolicyRunner({self.policy_id!r}, {type(self.policy).__name__}, {self.mode}, {state})"

    @property
    def scope(self) -> str:
        return self.policy.scope

    @property
    def failures(self) -> int:
        """Consecutive failures so far."""
        return self._failures

    @property
    def disabled(self) -> bool:
        return self._disabled_reason is not None

    @property
    def disabled_reason(self) -> str | None:
        return self._disabled_reason

    @property
    def busy(self) -> bool:
        """True while a hook call is in progress (the host must not start another)."""
        return self._busy

    # -- hooks --------------------------------------------------------------------------

    def on_run_start(self, run: RunView) -> list[Outcome]:
        return self._call("on_run_start", lambda: self.policy.on_run_start(run), run, run.step)

    def observe(self, point: MetricPoint, run: RunView) -> list[Outcome]:
        if point.run != run.run:
            raise ValueError(f"observe: point of run {point.run!r} given with the view of {run.run!r}")
        return self._call("observe", lambda: self.policy.observe(point, run), run, point.step)

    def on_run_end(self, run: RunView, *, outcome: RunOutcome, now: float) -> list[Outcome]:
        if outcome not in ("completed", "failed", "vanished"):
            raise ValueError(f"on_run_end: outcome must be 'completed', 'failed' or 'vanished' but got {outcome!r}")
        return self._call(
            "on_run_end",
            lambda: self.policy.on_run_end(run, outcome=outcome, now=now),
            run,
            run.step,
        )

    def record_failure(self, message: str, *, run: str | None = None, step: int | None = None) -> Outcome:
        """Count a failure the host observed (e.g. a call that timed out) and return its outcome.

        The call in flight, if any, is abandoned: its result will be discarded. ``run`` and
        ``step`` default to those of the latest call.
        """
        self._generation += 1
        return self._fail(message, self._last_run if run is None else run, self._last_step if step is None else step)

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The policy's state plus the failure counter; strict JSON (no NaN / inf)."""
        policy_state, _ = self._policy_state()
        return {
            "policy": policy_state,
            "failures": self._failures,
            "disabled_reason": self._disabled_reason,
        }

    def state_json(self) -> str:
        """``state_dict()`` as the JSON text it is stored as: the policy's state is encoded once, by its check."""
        _, policy_json = self._policy_state()
        rest = json.dumps({"failures": self._failures, "disabled_reason": self._disabled_reason})
        return f'{{"policy": {policy_json}, {rest[1:]}'

    def _policy_state(self) -> tuple[Any, str]:
        """The policy's state and its JSON text, or a PolicyError if it is not strict JSON."""
        try:
            policy_state = self.policy.state_dict()
            return policy_state, json.dumps(policy_state, allow_nan=False)
        except Exception as exc:
            raise PolicyError(
                f"policy {self.policy_id!r}: state_dict() did not return strict JSON data: {type(exc).__name__}: {exc}"
            ) from exc

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            self.policy.load_state_dict(state.get("policy") or {})
        except Exception as exc:
            raise PolicyError(
                f"policy {self.policy_id!r}: load_state_dict() failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._failures = int(state.get("failures", 0))
        reason = state.get("disabled_reason")
        self._disabled_reason = None if reason is None else str(reason)

    # -- internals ----------------------------------------------------------------------

    def _call(self, hook: str, call: Callable[[], Any], run: RunView, step: int) -> list[Outcome]:
        if self.disabled:
            return []
        if self._busy:
            raise PolicyError(f"policy {self.policy_id!r}: a previous call is still running")
        generation = self._generation
        self._last_run, self._last_step = run.run, step
        self._busy = True
        try:
            decisions = _as_decisions(call())
        except Exception as exc:
            if generation != self._generation:
                return []
            return [self._fail(f"{hook} raised {type(exc).__name__}: {exc}", run.run, step)]
        finally:
            self._busy = False
        if generation != self._generation:
            return []
        self._failures = 0
        return [self._outcome(decision, run, step) for decision in decisions]

    def _fail(self, message: str, run: str, step: int) -> Outcome:
        self._failures += 1
        reason = message
        if self._failures >= self.max_failures and not self.disabled:
            self._disabled_reason = f"disabled after {self._failures} consecutive failures: {message}"
            reason = f"{message} ({self._failures} consecutive failures: policy disabled)"
        return Outcome(kind="error", policy_id=self.policy_id, run=run, step=step, reason=reason)

    def _outcome(self, decision: object, run: RunView, step: int) -> Outcome:
        common = {"policy_id": self.policy_id, "run": run.run, "step": step}
        if isinstance(decision, FireTrigger):
            kind = "proposal" if self.mode == "shadow" else "trigger"
            return Outcome(kind=kind, trigger=decision.name, reason=decision.reason, **common)
        if not isinstance(decision, SetParams):
            return Outcome(
                kind="refused",
                reason=f"not a decision: {decision!r} (return SetParams or FireTrigger)",
                **common,
            )
        changes: dict[str, ParamValue] = {}
        problems: list[str] = []
        for name, value in decision.changes.items():
            spec = run.specs.get(name)
            if spec is None:
                problems.append(f"unknown param {name!r}")
                continue
            try:
                changes[name] = spec.validate(value)
            except ValueError as exc:
                problems.append(str(exc))
        old = {name: run.params.get(name) for name in decision.changes}
        if problems:
            return Outcome(
                kind="refused",
                changes=dict(decision.changes),
                old=old,
                reason=f"{'; '.join(problems)} (policy's reason: {decision.reason})",
                apply_at_step=decision.apply_at_step,
                **common,
            )
        return Outcome(
            kind="proposal" if self.mode == "shadow" else "apply",
            changes=changes,
            old=old,
            reason=decision.reason,
            apply_at_step=decision.apply_at_step,
            **common,
        )


def _as_decisions(result: object) -> list[object]:
    if result is None:
        return []
    if isinstance(result, (SetParams, FireTrigger)):
        return [result]
    if isinstance(result, (str, bytes, Mapping)) or not isinstance(result, Iterable):
        raise TypeError(f"expected a sequence of decisions but got {result!r}")
    return list(result)
