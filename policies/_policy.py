"""The ``Policy`` interface: one required method, every other hook a no-op."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeAlias

from ._errors import PolicyConfigError
from ._types import Decision, MetricPoint, RunView

__all__ = ["Policy", "RunOutcome", "Scope"]

Scope: TypeAlias = Literal["run", "population"]
RunOutcome: TypeAlias = Literal["completed", "failed", "vanished"]


class Policy(abc.ABC):
    """A policy watches metric points and returns decisions.

    Contract (what every host guarantees and every policy must keep):

    * **Scope.** ``scope = "run"`` (default): the host makes one instance per attached run.
      ``scope = "population"``: one instance sees every run matching its binding (hooks are
      called with each run's view).
    * **Options.** Subclasses take their own *keyword-only* options in ``__init__`` and
      validate them, raising :class:`PolicyConfigError` with a message naming the key, e.g.
      ``"plateau: factor must be < 1.0 but got 1.5"``. Constructors must be cheap and free of
      side effects: config loading builds every policy once just to validate its options.
    * **Determinism.** Time comes only from ``point.time`` / ``now``; no clocks, threads, I/O
      of the policy's own (the Optuna policy talks to its storage, nothing else).
    * **Calls** are never concurrent on one instance. A hook may raise: the host records an
      error and disables the policy after ``max_failures`` consecutive failures.
    * **State.** ``state_dict()`` returns JSON-serialisable data (no NaN/inf floats, no
      tuples that must stay tuples); ``load_state_dict()`` on a freshly constructed instance
      with the same (or edited) options continues exactly where the saved one stopped.
    """

    scope: ClassVar[Scope] = "run"

    def __init__(self, **options: Any) -> None:
        if options:
            names = ", ".join(sorted(options))
            raise PolicyConfigError(f"{type(self).__name__}: unknown option(s) {names}")

    @abc.abstractmethod
    def observe(self, point: MetricPoint, run: RunView) -> Sequence[Decision]:
        """React to one metric point of ``run`` (``run.history`` already includes it)."""

    def on_run_start(self, run: RunView) -> Sequence[Decision]:
        """Called once when the policy is attached to ``run``, before its first point."""
        return ()

    def on_run_end(self, run: RunView, *, outcome: RunOutcome, now: float) -> Sequence[Decision]:
        """Called once when ``run`` ends (``now``: the host's time of the end, seconds)."""
        return ()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state the host persists; ``{}`` for stateless policies."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 -- optional hook
        """Restore what ``state_dict`` returned (on a freshly constructed instance)."""
