"""Runs the configured policies live, next to ingestion but never in its way.

Each run has its own lane: an asyncio task that takes the run's stored points
in order and evaluates each policy runner attached to it in a worker thread,
with a time limit. A slow policy only holds up its own lane (and, for a
population policy, the runs sharing it); ingestion, acknowledgements and every
other run go on. A call that runs past the limit counts as a failure, and a
runner with ``max_failures`` failures in a row is disabled for that run; both
show in the history. Outcomes pass through the same ``arbitrate`` as in
``supervisor replay`` and are then applied through the core like an
operator's change (durable first, then sent), with source ``policy:<id>``.

Policy state is saved after every round in which a runner ran, in the same
SQLite file, so a restarted supervisor resumes each policy where it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from policies import (
    MetricPoint,
    Outcome,
    ParamSpec,
    PolicyConfigError,
    PolicyEngine,
    PolicyRunner,
    arbitrate,
    load_config,
)
from supervisor.batches import MetricColumns
from supervisor.runs import RefusedChange, RunState
from supervisor.storage import Store
from supervisor.workers import Workers
from trainer_sdk import Choice, Float, Int, Param
from trainer_sdk.protocol.v1 import supervisor_pb2 as pb

log = logging.getLogger("supervisor.policies")

POLICY_TIMEOUT_SECONDS = 2.0
"""A policy call that takes longer counts as a failure (it keeps its worker thread until it returns)."""

VANISHED_AFTER_SECONDS = 60.0
"""A run disconnected this long without a goodbye is ended as "vanished" for its policies."""

HISTORY_PER_METRIC = 1_000
"""Recent (step, value) pairs a run's view keeps per metric for its policies."""

MAX_QUEUED_POINTS = 1_000
"""Points waiting for one run's lane; past it the oldest are skipped (counted as errors)."""

_ATTACHED = "__attached__"
_OUTCOMES = {"completed": pb.RUN_OUTCOME_COMPLETED, "failed": pb.RUN_OUTCOME_FAILED}
_DECISION_KIND = {
    "apply": "applied",
    "proposal": "shadow",
    "refused": "refused",
    "error": "error",
    "trigger": "trigger",
}


def spec_for_policies(name: str, param: Param) -> ParamSpec:
    extra: dict[str, Any] = {}
    if isinstance(param, Float | Int):
        extra = {"min": param.min, "max": param.max, "log": getattr(param, "log", False)}
    if isinstance(param, Choice):
        extra = {"choices": tuple(param.choices)}
    return ParamSpec(name=name, kind=param.kind, default=param.default, **extra)  # type: ignore[arg-type]


class LiveRunView:
    """A policy's read-only view of a live run, as replay's InMemoryRun sees a recorded one.

    ``step`` and ``history`` cover exactly the points evaluated so far (ingestion
    may be ahead of the policies), so live decisions equal replayed ones.
    ``params``, ``specs`` and ``pinned`` are refreshed from the run before each
    round; only the run's lane touches the view, one call at a time.

    Points evaluated from a stored batch go into the history in bulk: the view
    notes how far into the batch evaluation has come and copies that stretch
    when a policy asks for history or the batch is done, a slice per metric
    rather than a call per value. A lock keeps the history whole when a
    policy call given up on for its time limit still reads it from its thread
    while the lane goes on.
    """

    def __init__(self, run: RunState) -> None:
        self.run = run.name
        self.step = max(run.last_step, 0)  # as replay's InMemoryRun: 0 before any point
        self.params: Mapping[str, Any] = MappingProxyType({})
        self.specs: Mapping[str, ParamSpec] = MappingProxyType({})
        self.pinned: frozenset[str] = frozenset()
        self._declared: dict[str, Param] | None = None
        self._history: dict[str, _Series] = {}
        self._unrecorded: tuple[MetricColumns, int, int] | None = None  # evaluated, not yet in _history
        self._lock = threading.Lock()
        self.history_loaded = False  # what earlier supervisors stored, before this one's first point

    def refresh(self, run: RunState) -> LiveRunView:
        if self._declared is not run.params:
            self._declared = run.params
            self.specs = MappingProxyType({n: spec_for_policies(n, p) for n, p in run.params.items()})
        self.params = MappingProxyType(dict(run.values))
        self.pinned = frozenset(run.pinned)
        return self

    def prefill(self, stored: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> None:
        """History from storage, older than any point this view has seen (after a supervisor restart)."""
        with self._lock:
            for name, (steps, values) in stored.items():
                self._series(name).extend(steps, values)
            self.history_loaded = True

    def record(self, step: int, values: Mapping[str, float]) -> None:
        with self._lock:
            self._settle()
            if step > self.step:
                self.step = step
            for name, value in values.items():
                self._series(name).append(step, value)

    def record_from(self, columns: MetricColumns, index: int, step: int) -> None:
        """Point ``index`` of ``columns`` is being evaluated: history covers it from now on."""
        with self._lock:
            if step > self.step:
                self.step = step
            pending = self._unrecorded
            if pending is not None and pending[0] is columns and pending[2] == index:
                self._unrecorded = (columns, pending[1], index + 1)
            else:
                self._settle()
                self._unrecorded = (columns, index, index + 1)

    def settle(self) -> None:
        """Copy the points noted by ``record_from`` into the history."""
        with self._lock:
            self._settle()

    def _settle(self) -> None:
        pending = self._unrecorded
        if pending is not None:
            self._unrecorded = None
            columns, start, stop = pending
            for name, steps, values in columns.series(start, stop):
                self._series(name).extend(steps, values)

    def _series(self, name: str) -> _Series:
        series = self._history.get(name)
        if series is None:
            series = self._history[name] = _Series(HISTORY_PER_METRIC)
        return series

    def history(self, metric: str, last: int | None = None) -> Sequence[tuple[int, float]]:
        with self._lock:
            self._settle()
            series = self._history.get(metric)
            return [] if series is None else series.last(last)


class _Series:
    """The last ``capacity`` (step, value) pairs of one metric, packed: 16 bytes a pair, not ~100 as tuples.

    A thousand runs with ten metrics each keep ten million pairs: 160 MB here.
    """

    __slots__ = ("_steps", "_values", "_capacity", "_head")

    def __init__(self, capacity: int) -> None:
        self._steps = array("q")
        self._values = array("d")
        self._capacity = capacity
        self._head = 0  # once full: the index of the oldest pair, overwritten next

    def append(self, step: int, value: float) -> None:
        if len(self._steps) < self._capacity:
            self._steps.append(step)
            self._values.append(value)
        else:
            head = self._head
            self._steps[head] = step
            self._values[head] = value
            self._head = (head + 1) % self._capacity

    def extend(self, steps: Sequence[int], values: Sequence[float]) -> None:
        """Append many pairs: a few slice copies, whatever the count."""
        if not isinstance(steps, array):
            steps, values = array("q", steps), array("d", values)
        capacity = self._capacity
        if len(steps) > capacity:
            steps, values = steps[-capacity:], values[-capacity:]
        room = capacity - len(self._steps)
        if room > 0:
            self._steps.extend(steps[:room])
            self._values.extend(values[:room])
            steps, values = steps[room:], values[room:]
        n = len(steps)
        if not n:
            return
        head = self._head  # full: overwrite from the oldest, wrapping at the end
        first = min(n, capacity - head)
        self._steps[head : head + first] = steps[:first]
        self._values[head : head + first] = values[:first]
        if first < n:
            self._steps[: n - first] = steps[first:]
            self._values[: n - first] = values[first:]
        self._head = (head + n) % capacity

    def last(self, n: int | None) -> list[tuple[int, float]]:
        head = self._head
        steps = self._steps[head:] + self._steps[:head]
        values = self._values[head:] + self._values[:head]
        if n is not None:  # cut before pairing: only the pairs asked for become tuples
            steps, values = (steps[-n:], values[-n:]) if n > 0 else (steps[:0], values[:0])
        return list(zip(steps, values, strict=True))


def _for_policies(step: int, when: float) -> bool:
    """Whether a stored point is one policies see: what ``MetricPoint`` promises them."""
    return step >= 0 and math.isfinite(when)


def _after(batches: list[Any], b: int, index: int) -> list[Any]:
    """The batches left once point ``index`` of batch ``b`` is done."""
    rank, columns, _ = batches[b]
    rest = batches[b + 1 :]
    return [(rank, columns, index + 1), *rest] if index + 1 < len(columns) else rest


class _Progress:
    """What a worker evaluating batches of points is doing, for the lane's watchdog."""

    def __init__(self) -> None:
        # runner, started (monotonic), batch index, point index
        self.current: tuple[PolicyRunner, float, int, int] | None = None
        self.outcomes: list[Outcome] = []
        self.timings: list[tuple[str, float]] = []
        self.abandoned: tuple[PolicyRunner, float, int, int] | None = None  # ``current`` when given up on


class PolicyHost:
    def __init__(self, engine: PolicyEngine, core: Any, *, timeout: float = POLICY_TIMEOUT_SECONDS) -> None:
        self.engine = engine
        self.core = core
        self.timeout = timeout
        self._workers: Workers | None = None  # made on first use, in the event loop
        self._evaluating: dict[str, tuple[_Progress, asyncio.Future[Any]]] = {}  # run -> its worker call
        self._timekeeper: asyncio.Task[None] | None = None
        self._lanes: dict[str, deque[tuple[str, Any]]] = {}
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._runner_locks: dict[int, asyncio.Lock] = {}
        self._views: dict[str, LiveRunView] = {}
        self._attached_saved: dict[str, list[str]] = {}  # per run, the policy ids last saved as attached
        self._source: tuple[Path, dict[str, Any]] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # The engine's bookkeeping (attach, detach) is not thread-safe: one at a time.
        self._engine_lock = asyncio.Lock()

    @classmethod
    def from_file(cls, path: Path, core: Any) -> PolicyHost:
        """Load and check a policies file; a PolicyConfigError names the key and the reason."""
        db_path = Path(core.db.store.path)
        study_db = db_path.with_name(db_path.stem + "-optuna.db")
        defaults = {"optuna": {"storage": f"sqlite:///{study_db}"}}
        host = cls(PolicyEngine(load_config(path, defaults=defaults)), core)
        host._source = (path, defaults)
        core.policies = host
        return host

    async def reload(self) -> bool:
        """Re-read the policies file (``kill -HUP``): changed options apply from the next point.

        Each policy keeps its state (a schedule continues from the current step
        with its new options); policies added to the file attach to the runs
        they match; removed ones stop. An invalid file changes nothing: the
        error is logged and the running policies go on.
        """
        if self._source is None:
            return False
        path, defaults = self._source
        try:
            engine = PolicyEngine(load_config(path, defaults=defaults))
        except PolicyConfigError as exc:
            log.error("policies not reloaded, the running ones go on: %s", exc)
            self.core.metrics.record_error("config_reload")
            return False
        async with self._engine_lock:
            engine.load_state_dict(self.engine.state_dict())
            self.engine = engine
        for run in self.core.runs.values():
            if run.connected:
                self._enqueue(run, ("attach", None))
        log.info("reloaded policies from %s: %s", path, ", ".join(b.id for b in engine.bindings) or "none")
        return True

    async def start(self) -> None:
        saved = await self.core.db.read(Store.load_policy_state)
        if saved:
            attached = {scope: ids for (policy, scope), ids in saved.items() if policy == _ATTACHED}
            runners = [
                {"policy": policy, "run": None if scope == "*" else scope, "state": state}
                for (policy, scope), state in saved.items()
                if policy != _ATTACHED
            ]
            self.engine.load_state_dict({"format": 1, "attached": attached, "runners": runners})
            self._attached_saved = {scope: list(ids) for scope, ids in attached.items()}
            log.info("resumed policy state for %d runs", len(attached))
        self._watchdog = asyncio.create_task(self._watch_vanished(), name="policy-watchdog")

    async def stop(self) -> None:
        for task in [*self._lane_tasks.values(), self._watchdog, self._timekeeper]:
            if task is not None:
                task.cancel()
        if self._workers is not None:
            self._workers.shutdown()

    def _worker_pool(self) -> Workers:
        if self._workers is None:
            self._workers = Workers(asyncio.get_running_loop(), max_workers=32, name="policy")
            self._timekeeper = asyncio.create_task(self._watch_slow_calls(), name="policy-timekeeper")
        return self._workers

    async def _watch_slow_calls(self) -> None:
        """Give up on a worker call whose current policy call runs past the time limit.

        One task checks every lane's call, instead of a timer per call.
        """
        while True:
            await asyncio.sleep(min(0.25, self.timeout / 4))
            now = time.monotonic()
            for progress, future in list(self._evaluating.values()):
                current = progress.current
                if current is not None and not future.done() and now - current[1] > self.timeout:
                    progress.abandoned = current
                    future.set_result(None)  # the lane reads progress.abandoned

    # -- events from the core (event loop thread) ---------------------------------------------

    def run_connected(self, run: RunState) -> None:
        self._enqueue(run, ("attach", None))

    def observe(self, run: RunState, columns: MetricColumns, rank: int) -> None:
        """Queue a stored batch for the run's policies: one event per batch; points are built in the worker."""
        self._enqueue(run, ("batch", (rank, columns, 0)))

    def run_finished(self, run: RunState, outcome: int) -> None:
        name = "failed" if outcome == pb.RUN_OUTCOME_FAILED else "completed"
        self._enqueue(run, ("finish", name))

    def run_disconnected(self, run: RunState) -> None:
        pass  # the watchdog ends runs that stay away (see VANISHED_AFTER_SECONDS)

    def _enqueue(self, run: RunState, event: tuple[str, Any]) -> None:
        lane = self._lanes.get(run.name)
        if lane is None:
            lane = self._lanes[run.name] = deque()
            self._wakeups[run.name] = asyncio.Event()
            self._lane_tasks[run.name] = asyncio.create_task(self._lane(run.name), name=f"policies-{run.name}")
        lane.append(event)
        if event[0] == "batch":
            self._trim(lane)
        self._wakeups[run.name].set()

    def _trim(self, lane: deque[tuple[str, Any]]) -> None:
        """Past MAX_QUEUED_POINTS waiting points, skip the oldest (each counted as a policy_backlog error)."""
        waiting = sum(len(payload[1]) - payload[2] for kind, payload in lane if kind == "batch")
        while waiting > MAX_QUEUED_POINTS:
            at = next(i for i, (kind, _) in enumerate(lane) if kind == "batch")
            rank, columns, start = lane[at][1]
            skip = min(waiting - MAX_QUEUED_POINTS, len(columns) - start)
            if start + skip < len(columns):
                lane[at] = ("batch", (rank, columns, start + skip))
            else:
                del lane[at]
            waiting -= skip
            for _ in range(skip):
                self.core.metrics.record_error("policy_backlog")

    # -- one lane per run -----------------------------------------------------------------------

    async def _lane(self, name: str) -> None:
        lane, wakeup = self._lanes[name], self._wakeups[name]
        while True:
            await wakeup.wait()
            wakeup.clear()
            while lane:
                run = self.core.runs.get(name)
                if run is None:
                    lane.clear()
                    break
                try:
                    if lane[0][0] == "batch" and self._batchable(run):
                        batches = []
                        while lane and lane[0][0] == "batch":
                            batches.append(lane.popleft()[1])
                        await self._points(run, batches, lane)
                    elif lane[0][0] == "batch":  # a shared (population) runner: a point at a time, under its lock
                        rank, columns, start = lane[0][1]
                        if start + 1 < len(columns):
                            lane[0] = ("batch", (rank, columns, start + 1))
                        else:
                            lane.popleft()
                        _, step, when, values = next(columns.points(start))
                        if _for_policies(step, when):
                            await self._handle(run, "point", (rank, step, when, values))
                    else:
                        kind, payload = lane.popleft()
                        await self._handle(run, kind, payload)
                except Exception:
                    log.exception("policy round for run %s failed", name)
                    self.core.metrics.record_error("policy_host")

    async def _handle(self, run: RunState, kind: str, payload: Any) -> None:
        view = self._view(run)
        if kind == "attach":
            await self._apply(run, await self._attach(view))
            await self._save(run.name)
            return
        if not self.engine.is_attached(run.name):
            if kind == "finish":
                return
            await self._apply(run, await self._attach(view))
        if kind == "point":
            rank, step, when, values = payload
            await self._ensure_history(run, view, step)
            view.record(step, values)
            point = MetricPoint(run=run.name, step=step, time=when, metrics=values, rank=rank)
            outcomes: list[Outcome] = []
            for runner in self.engine.runners_for(run.name):
                outcomes.extend(await self._call_runner(runner, run, point, view))
            await self._apply(run, arbitrate(outcomes, view))
        elif kind == "finish":
            runners = self.engine.runners_for(run.name)
            outcomes = []
            for runner in runners:
                outcomes.extend(await self._call_runner(runner, run, None, view, end=(payload, time.time())))
            async with self._engine_lock:
                self.engine.detach(run.name)
            await self._apply(run, arbitrate(outcomes, view))
        await self._save(run.name)

    def _batchable(self, run: RunState) -> bool:
        """Run-scoped runners only: a population runner is shared with other lanes and needs its lock."""
        if not self.engine.is_attached(run.name):
            return False
        return all(runner.scope == "run" for runner in self.engine.runners_for(run.name))

    async def _points(self, run: RunState, batches: list[Any], lane: deque[tuple[str, Any]]) -> None:
        """Evaluate queued batches in one worker call, stopping at the first point that yields outcomes.

        One thread hop per batch instead of one per point and runner. Stopping at
        the first decision keeps replay's semantics: the next point is evaluated
        only after the decision was applied, with the new values in the view.
        """
        view = self._view(run)
        _, columns, start = batches[0]
        await self._ensure_history(run, view, columns.steps[start])
        runners = self.engine.runners_for(run.name)
        progress = _Progress()
        future = self._worker_pool().submit(self._evaluate, runners, view, batches, progress)
        self._evaluating[run.name] = (progress, future)
        try:
            result = await future
        finally:
            del self._evaluating[run.name]
        if progress.abandoned is not None:  # the timekeeper gave up on it
            runner, _, b, index = progress.abandoned
            rank, columns, _ = batches[b]
            failure = runner.record_failure(
                f"no decision within {self.timeout:g}s (policy too slow)", run=run.name, step=columns.steps[index]
            )
            outcomes = arbitrate([*progress.outcomes, failure], view)
            rest = _after(batches, b, index)
        else:
            rest, outcomes = result
        self.core.metrics.observe_policy_seconds_many(progress.timings)
        lane.extendleft(("batch", batch) for batch in reversed(rest))
        await self._apply(run, outcomes)
        await self._save(run.name)

    @staticmethod
    def _evaluate(
        runners: list[PolicyRunner], view: LiveRunView, batches: list[Any], progress: _Progress
    ) -> tuple[list[Any], list[Outcome]]:
        """Runs in a worker thread. Returns the batches not evaluated (to queue again) and the outcomes."""
        try:
            for b, (rank, columns, start) in enumerate(batches):
                for index, step, when, values in columns.points(start):
                    if not _for_policies(step, when):
                        continue
                    view.record_from(columns, index, step)
                    point = MetricPoint.from_host(view.run, step, when, values, rank)  # checked just above
                    progress.outcomes = []
                    for runner in runners:
                        if progress.abandoned is not None:
                            return [], []
                        if runner.disabled or runner.busy:
                            continue
                        started = time.monotonic()
                        progress.current = (runner, started, b, index)
                        result = runner.observe(point, view)
                        progress.timings.append((runner.policy_id, time.monotonic() - started))
                        if progress.abandoned is not None:
                            return [], []
                        if result:
                            progress.outcomes.extend(result)
                    progress.current = None
                    if progress.outcomes and (outcomes := arbitrate(progress.outcomes, view)):
                        return _after(batches, b, index), outcomes
            return [], []
        finally:
            if progress.abandoned is None:
                view.settle()

    async def _attach(self, view: LiveRunView) -> list[Outcome]:
        async with self._engine_lock:
            return await self._in_worker(None, lambda: self.engine.attach(view))

    async def _call_runner(
        self,
        runner: PolicyRunner,
        run: RunState,
        point: MetricPoint | None,
        view: LiveRunView,
        end: tuple[str, float] | None = None,
    ) -> list[Outcome]:
        if runner.disabled:
            return []
        lock = self._runner_locks.setdefault(id(runner), asyncio.Lock())
        async with lock:
            if runner.busy:  # still inside a call that timed out earlier
                self.core.metrics.record_error("policy_busy")
                return []
            started = time.perf_counter()
            if end is not None:
                outcome_name, now = end
                work = lambda: runner.on_run_end(view, outcome=outcome_name, now=now)  # noqa: E731
            else:
                assert point is not None
                work = lambda: runner.observe(point, view)  # noqa: E731
            try:
                outcomes = await self._in_worker(runner, work)
            except TimeoutError:
                return [
                    runner.record_failure(
                        f"no decision within {self.timeout:g}s (policy too slow)", run=run.name, step=view.step
                    )
                ]
            finally:
                self.core.metrics.observe_policy_seconds(runner.policy_id, time.perf_counter() - started)
            return outcomes

    async def _in_worker(self, runner: PolicyRunner | None, work: Any) -> Any:
        future = self._worker_pool().submit(work)
        if runner is None:
            return await future
        return await asyncio.wait_for(asyncio.shield(future), self.timeout)

    # -- applying outcomes ------------------------------------------------------------------------

    async def _apply(self, run: RunState, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            target = self.core.runs.get(outcome.run, run)
            source = f"policy:{outcome.policy_id}"
            kind = outcome.kind
            try:
                if kind == "apply" and outcome.changes:
                    await self.core.set_params(
                        target.name,
                        dict(outcome.changes),
                        reason=outcome.reason,
                        source=source,
                        apply_at_step=outcome.apply_at_step,
                        pin=False,
                        respect_pins=True,
                        step=outcome.step,
                    )
                elif kind == "trigger" and outcome.trigger:
                    await self.core.fire_trigger(
                        target.name,
                        outcome.trigger,
                        reason=outcome.reason,
                        source=source,
                        apply_at_step=outcome.apply_at_step,
                        step=outcome.step,
                    )
                else:
                    await self._record(target, outcome)
            except RefusedChange as exc:
                kind = "refused"
                await self._record(
                    target,
                    outcome,
                    kind_override=pb.CHANGE_KIND_REFUSED,
                    reason=f"{exc}; policy's reason: {outcome.reason}",
                )
            self.core.metrics.record_decision(outcome.policy_id, _DECISION_KIND.get(kind, kind))
            if kind == "error":
                self.core.metrics.record_error("policy_error")
                log.warning(
                    "policy %s failed on run %s at step %d: %s",
                    outcome.policy_id,
                    target.name,
                    outcome.step,
                    outcome.reason,
                )

    async def _record(
        self, run: RunState, outcome: Outcome, *, kind_override: int | None = None, reason: str | None = None
    ) -> None:
        kind = (
            kind_override
            or {
                "proposal": pb.CHANGE_KIND_PROPOSAL,
                "refused": pb.CHANGE_KIND_REFUSED,
                "error": pb.CHANGE_KIND_POLICY_ERROR,
                "apply": pb.CHANGE_KIND_REFUSED,
                "trigger": pb.CHANGE_KIND_REFUSED,
            }[outcome.kind]
        )
        old = outcome.old or {}
        changes = {n: (old.get(n, run.values.get(n)), v) for n, v in (outcome.changes or {}).items()}
        await self.core.record_unsent(
            run,
            kind=kind,
            source=f"policy:{outcome.policy_id}",
            reason=reason or outcome.reason,
            changes=changes,
            trigger=outcome.trigger,
            step=outcome.step,
        )

    # -- state ------------------------------------------------------------------------------------

    async def _save(self, name: str) -> None:
        runners = self.engine.runners_for(name)
        items = [  # as JSON text: a writer process takes pickles, and a state is only promised to be JSON
            (runner.policy_id, "*" if runner.scope == "population" else name, runner.state_json())
            for runner in runners
        ]
        attached = [runner.policy_id for runner in runners]
        if self._attached_saved.get(name) != attached:  # saved when it changes, not with every round
            self._attached_saved[name] = attached
            items.append((_ATTACHED, name, json.dumps(attached)))
        self.core.writer.save_states(items)  # committed with the next metrics round

    async def _ensure_history(self, run: RunState, view: LiveRunView, first_step: int) -> None:
        """Before a view's first point: the history the run's earlier points left in storage (once per view).

        Empty for a new run; after a supervisor restart, policies that look back
        (``run.history``) see the same window they would have without it. Points
        from ``first_step`` on are left out: they are on their way through the lane.
        """
        if view.history_loaded:
            return
        try:
            stored = await self.core.db.read(
                Store.recent_history, run.id, before_step=first_step, per_metric=HISTORY_PER_METRIC
            )
        except Exception:  # the history is a courtesy; the policies run without it
            log.exception("could not read the stored history of run %s for its policies", run.name)
            stored = {}
        view.prefill(stored)

    def _view(self, run: RunState) -> LiveRunView:
        view = self._views.get(run.name)
        if view is None:
            view = self._views[run.name] = LiveRunView(run)
        return view.refresh(run)

    async def _watch_vanished(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for run in list(self.core.runs.values()):
                gone = run.disconnected_at
                if (
                    gone is not None
                    and not run.connected
                    and not run.outcome
                    and now - gone > VANISHED_AFTER_SECONDS
                    and self.engine.is_attached(run.name)
                ):
                    run.disconnected_at = None
                    self._enqueue(run, ("finish", "vanished"))
