"""Offline replay: run bindings over recorded metric lines, exactly as the live host would."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from ._config import PolicyBinding
from ._engine import PolicyEngine
from ._errors import ReplayInputError
from ._outcome import Outcome
from ._policy import RunOutcome
from ._run import InMemoryRun
from ._types import MetricPoint, ParamSpec, ParamValue

__all__ = ["point_from_dict", "read_jsonl", "replay"]


def replay(
    bindings: Iterable[PolicyBinding],
    lines: Iterable[Mapping[str, Any]],
    initial_params: Mapping[str, ParamValue],
    specs: Mapping[str, ParamSpec] | None = None,
    *,
    finish: bool = True,
) -> Iterator[dict[str, Any]]:
    """Replay metric lines through ``bindings``; yield one dict per outcome row, in order.

    Each line is ``{"run": "r1", "step": 3, "metrics": {"val_loss": 0.52}}`` with optional
    ``"time"`` (default: the step, so output never depends on the clock) and ``"rank"``.
    Every run gets an :class:`InMemoryRun` with ``initial_params`` (specs inferred, unbounded,
    where ``specs`` does not give one). Per run, the engine's ``attach`` runs at its first
    line; each line is recorded into the run's history and observed by the engine; ``"apply"``
    outcomes change the run's params at once (so later decisions see them). With ``finish``,
    each run ends as ``"completed"`` after the last line (at its last time), in the order the
    runs first appeared. A line may also carry ``"end": "completed" | "failed" | "vanished"``
    (``metrics`` then optional): the run ends there (``finish``), and a later line with the
    same run name starts a new run. Triggers are reported but do not cut a run's later lines.

    Rows are :meth:`Outcome.records`: per changed param ``run, step, policy, kind, param,
    old, new, reason`` and per trigger ``run, step, policy, kind, trigger, reason``. Same
    input, same rows: ``json.dumps`` of two replays is byte-identical.

    Bad initial params raise ``ValueError`` here; a malformed line raises
    :class:`ReplayInputError` naming its index when it is reached.
    """
    bindings = list(bindings)
    engine = PolicyEngine(bindings)  # checks the bindings now, not at the first line
    InMemoryRun("<replay>", params=initial_params, specs=specs)  # checks params against specs
    return _replay(engine, lines, dict(initial_params), dict(specs or {}), finish)


def _replay(
    engine: PolicyEngine,
    lines: Iterable[Mapping[str, Any]],
    initial_params: dict[str, ParamValue],
    specs: dict[str, ParamSpec],
    finish: bool,
) -> Iterator[dict[str, Any]]:
    runs: dict[str, InMemoryRun] = {}
    last_time: dict[str, float] = {}
    for number, line in enumerate(lines, start=1):
        where = f"input line {number}"
        point = point_from_dict(line, where=where)
        end = _end_of(line, where)
        view = runs.get(point.run)
        if view is None:
            view = InMemoryRun(point.run, params=initial_params, specs=specs, step=point.step)
            runs[point.run] = view
            yield from _emit(engine.attach(view), view)
        last_time[point.run] = point.time
        if point.metrics or end is None:
            view.record(point)
            yield from _emit(engine.observe(point, view), view)
        if end is not None:
            del runs[point.run]
            yield from _emit(engine.finish(view, end, point.time), view)
    if finish:
        for name, view in runs.items():
            yield from _emit(engine.finish(view, "completed", last_time[name]), view)


def _end_of(line: Mapping[str, Any], where: str) -> RunOutcome | None:
    end = line.get("end")
    if end is None or end in ("completed", "failed", "vanished"):
        return end
    raise ReplayInputError(f"{where}: 'end' must be 'completed', 'failed' or 'vanished' but got {end!r}")


def _emit(outcomes: list[Outcome], view: InMemoryRun) -> Iterator[dict[str, Any]]:
    for outcome in outcomes:
        if outcome.kind == "apply" and outcome.changes:
            view.apply(outcome.changes)
        yield from outcome.records()


def point_from_dict(line: Mapping[str, Any], *, where: str = "line") -> MetricPoint:
    """Validate one metrics line and make a :class:`MetricPoint` of it.

    ``run`` (non-empty string), ``step`` (int >= 0) and ``metrics`` (object of numbers;
    ``null`` reads as NaN) are required -- ``metrics`` may be left out on a line with ``end``;
    ``time`` defaults to ``step`` and ``rank`` to 0. Other keys are ignored here.
    Raises :class:`ReplayInputError` starting with ``where``.
    """
    if not isinstance(line, Mapping):
        raise ReplayInputError(f"{where}: expected a JSON object but got {line!r}")
    required = ("run", "step") if "end" in line else ("run", "step", "metrics")
    for key in required:
        if key not in line:
            raise ReplayInputError(f"{where}: missing required key {key!r}")
    run, step, metrics = line["run"], line["step"], line.get("metrics", {})
    if not isinstance(run, str) or not run:
        raise ReplayInputError(f"{where}: 'run' must be a non-empty string but got {run!r}")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ReplayInputError(f"{where}: 'step' must be an integer >= 0 but got {step!r}")
    if not isinstance(metrics, Mapping):
        raise ReplayInputError(f"{where}: 'metrics' must be an object but got {metrics!r}")
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if value is None:
            values[name] = math.nan
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = float(value)
        else:
            raise ReplayInputError(f"{where}: metric {name!r} must be a number or null but got {value!r}")
    time = line.get("time", step)
    if not isinstance(time, (int, float)) or isinstance(time, bool) or not math.isfinite(time):
        raise ReplayInputError(f"{where}: 'time' must be a finite number but got {time!r}")
    rank = line.get("rank", 0)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise ReplayInputError(f"{where}: 'rank' must be an integer >= 0 but got {rank!r}")
    try:
        return MetricPoint(run=run, step=step, time=float(time), metrics=values, rank=rank)
    except ValueError as exc:
        raise ReplayInputError(f"{where}: {exc}") from None


def read_jsonl(source: str | os.PathLike[str] | IO[str]) -> Iterator[dict[str, Any]]:
    """Yield the lines of a JSONL metrics file as dicts, checked with :func:`point_from_dict`.

    Blank lines are skipped. A malformed line raises :class:`ReplayInputError` naming the
    file and the line number (``metrics.jsonl:17: invalid JSON: ...``). Lazy: the file is
    read while the result is consumed. ``source`` may be an open text file.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            file = open(path, encoding="utf-8")
        except OSError as exc:
            raise ReplayInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        return _read_and_close(file, path)
    return _read_lines(source, getattr(source, "name", "<stream>"))


def _read_and_close(file: IO[str], path: str) -> Iterator[dict[str, Any]]:
    with file:
        yield from _read_lines(file, path)


def _read_lines(file: Iterable[str], name: str) -> Iterator[dict[str, Any]]:
    for number, text in enumerate(file, start=1):
        if not text.strip():
            continue
        where = f"{name}:{number}"
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReplayInputError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        point_from_dict(line, where=where)
        _end_of(line, where)
        yield line
