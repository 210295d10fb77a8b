"""``PolicyEngine``: all bindings × all attached runs, evaluated synchronously, in config order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._arbitrate import arbitrate
from ._config import PolicyBinding
from ._errors import PolicyConfigError, PolicyError
from ._outcome import Outcome
from ._policy import RunOutcome
from ._runner import PolicyRunner
from ._types import MetricPoint, RunView

__all__ = ["PolicyEngine"]

_STATE_FORMAT = 1


class PolicyEngine:
    """Runs every binding on the runs it matches. Pure and synchronous; not thread-safe.

    ``replay`` uses it as is. The live host may too, or it may use the per-runner pieces
    (:meth:`runners_for` + :func:`arbitrate`) to time each policy call in its own worker; both
    paths run the same code.

    Lifecycle of a run: :meth:`attach` (creates a runner per matching binding, or joins the
    binding's shared population runner, and calls ``on_run_start``), :meth:`observe` for every
    point, :meth:`finish` at the end (calls ``on_run_end`` and detaches).
    """

    def __init__(self, bindings: Iterable[PolicyBinding]) -> None:
        self._bindings = tuple(bindings)
        seen: set[str] = set()
        for binding in self._bindings:
            if not isinstance(binding, PolicyBinding):
                raise TypeError(f"PolicyEngine: expected PolicyBinding objects but got {binding!r}")
            if binding.id in seen:
                raise PolicyConfigError(f"PolicyEngine: duplicate policy id {binding.id!r}")
            seen.add(binding.id)
        self._by_id = {binding.id: binding for binding in self._bindings}
        self._run_runners: dict[tuple[str, str], PolicyRunner] = {}
        self._population_runners: dict[str, PolicyRunner] = {}
        self._attached: dict[str, list[str]] = {}

    @property
    def bindings(self) -> tuple[PolicyBinding, ...]:
        return self._bindings

    @property
    def runs(self) -> tuple[str, ...]:
        """Names of the attached runs, in attach order."""
        return tuple(self._attached)

    def is_attached(self, run: str) -> bool:
        return run in self._attached

    def runners_for(self, run: str) -> list[PolicyRunner]:
        """The runners attached to ``run``, in config order (``[]`` if not attached)."""
        runners = []
        for binding_id in self._attached.get(run, ()):
            if self._by_id[binding_id].scope == "population":
                runners.append(self._population_runners[binding_id])
            else:
                runners.append(self._run_runners[(binding_id, run)])
        return runners

    def attach(self, run: RunView) -> list[Outcome]:
        """Attach every matching binding not attached to ``run`` yet; return arbitrated outcomes.

        Calls ``on_run_start`` for the newly attached bindings only, so attaching a run again
        after :meth:`load_state_dict` (or after adding bindings) does not restart its policies.
        A binding whose policy cannot be created gives an ``"error"`` outcome and stays off.
        """
        name = run.run
        attached = self._attached.setdefault(name, [])
        outcomes: list[Outcome] = []
        new_ids = []
        for binding in self._bindings:
            if binding.id in attached or not binding.matches(name):
                continue
            try:
                runner = self._runner(binding, name)
            except Exception as exc:
                outcomes.append(
                    Outcome(
                        kind="error",
                        policy_id=binding.id,
                        run=name,
                        step=run.step,
                        reason=f"cannot create policy: {type(exc).__name__}: {exc}",
                    )
                )
                continue
            new_ids.append(binding.id)
            attached.append(binding.id)
            outcomes.extend(runner.on_run_start(run))
        order = {binding.id: i for i, binding in enumerate(self._bindings)}
        attached.sort(key=order.__getitem__)
        return arbitrate(outcomes, run)

    def observe(self, point: MetricPoint, run: RunView) -> list[Outcome]:
        """Feed ``point`` to every runner of its run in config order, then arbitrate.

        ``run`` must already include the point (``run.history`` / ``run.step``).
        """
        if point.run != run.run:
            raise ValueError(f"observe: point of run {point.run!r} given with the view of {run.run!r}")
        if point.run not in self._attached:
            raise PolicyError(f"run {point.run!r} is not attached: call attach() first")
        outcomes: list[Outcome] = []
        for runner in self.runners_for(point.run):
            outcomes.extend(runner.observe(point, run))
        return arbitrate(outcomes, run)

    def finish(self, run: RunView, outcome: RunOutcome, now: float) -> list[Outcome]:
        """Call ``on_run_end`` on the run's runners, arbitrate, and detach the run."""
        outcomes: list[Outcome] = []
        for runner in self.runners_for(run.run):
            outcomes.extend(runner.on_run_end(run, outcome=outcome, now=now))
        self.detach(run.run)
        return arbitrate(outcomes, run)

    def detach(self, run: str) -> None:
        """Forget ``run`` without calling any hook (its run-scope runners are dropped)."""
        for binding_id in self._attached.pop(run, ()):
            self._run_runners.pop((binding_id, run), None)

    # -- persistence --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Strict-JSON state of every runner (policy state and failure counters) and the
        run → binding attachments. Save it after each round; restore with
        :meth:`load_state_dict` on an engine built from the (possibly edited) config."""
        runners = []
        for (binding_id, run), runner in self._run_runners.items():
            runners.append({"policy": binding_id, "run": run, "state": runner.state_dict()})
        for binding_id, runner in self._population_runners.items():
            runners.append({"policy": binding_id, "run": None, "state": runner.state_dict()})
        return {
            "format": _STATE_FORMAT,
            "attached": {run: list(ids) for run, ids in self._attached.items()},
            "runners": runners,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace all runners by the saved ones. Bindings no longer in the config are dropped;
        bindings added since attach to a run on its next :meth:`attach` (with ``on_run_start``).
        """
        if state.get("format") != _STATE_FORMAT:
            raise PolicyError(f"unsupported engine state format {state.get('format')!r}")
        self._run_runners.clear()
        self._population_runners.clear()
        self._attached = {
            run: [binding_id for binding_id in ids if binding_id in self._by_id]
            for run, ids in state.get("attached", {}).items()
        }
        for entry in state.get("runners", []):
            binding = self._by_id.get(entry["policy"])
            if binding is None:
                continue
            run = entry.get("run")
            if (binding.scope == "population") != (run is None):
                continue  # the binding's type changed scope: start it afresh
            runner = self._runner(binding, run)
            runner.load_state_dict(entry.get("state", {}))
        for run, ids in self._attached.items():
            for binding_id in list(ids):
                binding = self._by_id[binding_id]
                key_missing = (
                    binding_id not in self._population_runners
                    if binding.scope == "population"
                    else (binding_id, run) not in self._run_runners
                )
                if key_missing:
                    ids.remove(binding_id)

    def _runner(self, binding: PolicyBinding, run: str | None) -> PolicyRunner:
        if binding.scope == "population":
            runner = self._population_runners.get(binding.id)
            if runner is None:
                runner = self._population_runners[binding.id] = binding.create_runner()
            return runner
        assert run is not None
        runner = binding.create_runner()
        self._run_runners[(binding.id, run)] = runner
        return runner
