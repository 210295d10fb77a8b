"""``arbitrate``: the one rule for several policies acting on the same run in the same round."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ._outcome import Outcome
from ._types import ParamValue, RunView

__all__ = ["arbitrate"]

PINNED_REASON = "pinned by an operator; `supervisor release {run} {param}` to let policies act"


def arbitrate(outcomes: Iterable[Outcome], run: RunView) -> list[Outcome]:
    """Resolve one evaluation round of ``run`` (the outcomes of one point, or of one hook).

    ``outcomes`` must be in config order (the order the host evaluated the policies in).
    Only ``"apply"`` outcomes are touched; everything else passes through unchanged:

    1. A change to a param in ``run.pinned`` is refused ("pinned by an operator ...").
    2. The first change to a param in the round wins; a later change to the same param is
       refused ("conflicts with policy X in the same step"), even from the same policy.
    3. A ``SetParams`` that is refused only in part keeps its other params: the surviving
       params stay one ``"apply"`` outcome, followed by one ``"refused"`` outcome per pinned
       param, then one per conflicting policy.

    ``old`` of each surviving change is the run's current value. Shadow proposals are not
    arbitrated (they never act); the host applies the returned ``"apply"`` outcomes in order.
    """
    result: list[Outcome] = []
    claimed: dict[str, str] = {}
    for outcome in outcomes:
        if outcome.kind != "apply" or not outcome.changes:
            result.append(outcome)
            continue
        keep: dict[str, ParamValue] = {}
        pinned: dict[str, ParamValue] = {}
        conflicts: dict[str, dict[str, ParamValue]] = {}
        for name, value in outcome.changes.items():
            if name in run.pinned:
                pinned[name] = value
            elif name in claimed:
                conflicts.setdefault(claimed[name], {})[name] = value
            else:
                keep[name] = value
        for name in keep:
            claimed[name] = outcome.policy_id
        current = run.params
        if keep:
            result.append(dataclasses.replace(outcome, changes=keep, old={name: current.get(name) for name in keep}))
        for name, value in pinned.items():
            result.append(
                dataclasses.replace(
                    outcome,
                    kind="refused",
                    changes={name: value},
                    old={name: current.get(name)},
                    reason=PINNED_REASON.format(run=run.run, param=name) + f" (policy's reason: {outcome.reason})",
                )
            )
        for winner, changes in conflicts.items():
            result.append(
                dataclasses.replace(
                    outcome,
                    kind="refused",
                    changes=changes,
                    old={name: current.get(name) for name in changes},
                    reason=f"conflicts with policy {winner} in the same step (policy's reason: {outcome.reason})",
                )
            )
    return result
