"""``Outcome``: what became of one decision (or one failed call), as the host records it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from ._types import ParamValue

__all__ = ["Outcome", "OutcomeKind"]

OutcomeKind: TypeAlias = Literal["apply", "trigger", "proposal", "refused", "error"]
_KINDS = ("apply", "trigger", "proposal", "refused", "error")


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The typed result of evaluating a policy, ready for the host's history.

    ``kind``:

    * ``"apply"``: change ``changes`` (``old`` holds the values before); the host applies it.
    * ``"trigger"``: fire trigger ``trigger``.
    * ``"proposal"``: a shadow-mode decision; ``changes`` or ``trigger`` is set, nothing happens.
    * ``"refused"``: a decision that will not be carried out; ``reason`` says why (unknown
      param, out of bounds, pinned, conflict) and ends with the policy's own reason.
    * ``"error"``: the policy raised (or timed out); ``reason`` holds the error text.

    ``step`` is the point's step (or the run's step for start / end hooks).
    """

    kind: OutcomeKind
    policy_id: str
    run: str
    step: int
    changes: Mapping[str, ParamValue] | None = None
    trigger: str | None = None
    reason: str = ""
    old: Mapping[str, ParamValue] | None = None
    apply_at_step: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Outcome: kind must be one of {', '.join(_KINDS)} but got {self.kind!r}")
        if self.changes is not None:
            object.__setattr__(self, "changes", dict(self.changes))
        if self.old is not None:
            object.__setattr__(self, "old", dict(self.old))

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain, JSON-ready dict."""
        return {
            "kind": self.kind,
            "policy": self.policy_id,
            "run": self.run,
            "step": self.step,
            "changes": None if self.changes is None else dict(self.changes),
            "trigger": self.trigger,
            "reason": self.reason,
            "old": None if self.old is None else dict(self.old),
            "apply_at_step": self.apply_at_step,
        }

    def records(self) -> list[dict[str, Any]]:
        """Flat rows, one per changed parameter (this is what ``replay`` emits).

        Parameter changes: ``run, step, policy, kind, param, old, new, reason`` (+
        ``apply_at_step`` when set). Triggers: ``run, step, policy, kind, trigger, reason``.
        Errors: ``run, step, policy, kind, reason``.
        """
        base = {"run": self.run, "step": self.step, "policy": self.policy_id, "kind": self.kind}
        if self.changes:
            rows = []
            old = self.old or {}
            for name, new in self.changes.items():
                row: dict[str, Any] = {
                    **base,
                    "param": name,
                    "old": old.get(name),
                    "new": new,
                    "reason": self.reason,
                }
                if self.apply_at_step is not None:
                    row["apply_at_step"] = self.apply_at_step
                rows.append(row)
            return rows
        if self.trigger is not None:
            return [{**base, "trigger": self.trigger, "reason": self.reason}]
        return [{**base, "reason": self.reason}]
