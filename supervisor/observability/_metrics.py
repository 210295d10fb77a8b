"""Prometheus export of the supervisor's state.

``SupervisorMetrics`` keeps plain Python state (dicts of numbers) that the
supervisor's event loop updates through cheap method calls, and a custom
collector turns that state into metric families when Prometheus scrapes. Nothing
is registered on prometheus_client's process-wide registry: the caller passes a
``CollectorRegistry`` in (a new one by default).

Every series carries only bounded labels: ``run``, ``param``, ``metric``,
``policy``, ``source`` and ``kind`` (``supervisor_build_info`` has its version
labels). Never a step, a version or a time.

Threading: the update methods run on the server's asyncio thread, ``collect``
on prometheus_client's HTTP threads. One lock guards the state; each update holds
it for a few dictionary operations, a scrape for one copy of the state.
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
import math
import platform
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

log = logging.getLogger("supervisor.observability")

ACK_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Upper bounds (seconds) of the change -> acknowledgement histogram. A delta
becomes visible at the trainer's next ``report()``, so the latency includes one
training step; delayed changes (``--at-step``) land in the upper buckets."""

POLICY_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the policy evaluation histogram."""

DECISION_KINDS = frozenset({"applied", "shadow", "refused", "error", "trigger"})
"""Accepted ``kind`` values of ``record_decision``; anything else is counted as ``other``."""

KNOWN_ERROR_KINDS: tuple[str, ...] = (
    "invalid_change",
    "bad_message",
    "policy_error",
    "non_finite_metric",
    "metric_name_rejected",
)
"""Error kinds exported at 0 from the start, so that ``increase()`` sees their first occurrence."""

MAX_ERROR_KINDS = 64
"""Distinct error kinds kept; further kinds are counted under ``kind="other"``."""

MAX_POLICIES = 256
"""Distinct policy names kept; further names are counted under ``policy="other"``."""

MAX_REJECTED_REMEMBERED = 1024
"""Rejected metric names remembered per run, so that each is counted once."""

_ALLOW_CACHE_MAX = 4096


def _build_labels() -> dict[str, str]:
    try:
        from importlib.metadata import version

        supervisor_version = version("training-supervisor")
    except Exception:
        import supervisor

        supervisor_version = getattr(supervisor, "__version__", "unknown")
    try:
        import grpc

        grpc_version = grpc.__version__
    except Exception:  # pragma: no cover - grpc is a hard dependency
        grpc_version = "unknown"
    return {"version": supervisor_version, "python": platform.python_version(), "grpc": grpc_version}


class _Histogram:
    """Bucket counts without labels; exported cumulatively."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound), float(cumulative)))
        return buckets, self.total


@dataclass(eq=False)
class _Run:
    ack: _Histogram = field(default_factory=lambda: _Histogram(ACK_LATENCY_BUCKETS))
    params: dict[str, float] = field(default_factory=dict)
    changes: dict[tuple[str, str], int] = field(default_factory=dict)  # (param, source) -> count
    last_change: dict[str, float] = field(default_factory=dict)
    connected: int = 0
    points: int = 0
    dropped_reported: int = 0  # the trainers' cumulative figure, as last reported
    dropped: int = 0  # what we export: only goes up
    metrics: dict[str, float] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)


_ERROR_ALIASES = {"refused_change": "invalid_change", "bad_session": "bad_message"}
"""Exception class names the servicers pass, mapped to the documented kinds."""

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_SNAKE = re.compile(r"[^a-z0-9_]+")


def _snake(kind: str) -> str:
    """``RefusedChange`` -> ``refused_change``; ``bad message`` -> ``bad_message``."""
    snake = _NOT_SNAKE.sub("_", _CAMEL.sub("_", kind).lower()).strip("_") or "unknown"
    return _ERROR_ALIASES.get(snake, snake)


class SupervisorMetrics:
    """The supervisor's Prometheus series; one instance per server.

    ``registry``: where the collector is registered (a new ``CollectorRegistry``
    if omitted). ``max_metric_names_per_run``: how many distinct trainer metric
    names each run may export as ``supervisor_trainer_metric`` (the first ones
    seen win). ``metric_allowlist``: if given, only these names (exact, or
    shell patterns such as ``gpu*``) are exported, still at most
    ``max_metric_names_per_run`` per run. ``retention_seconds``: how long the
    series of a finished run stay after ``run_finished``. ``clock``: the time
    source of that retention.

    Every update method is O(1) in the number of runs and cheap enough to call
    on the server's event loop for every message.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_metric_names_per_run: int = 64,
        metric_allowlist: Collection[str] | None = None,
        retention_seconds: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_metric_names_per_run < 0:
            raise ValueError(f"max_metric_names_per_run cannot be negative but got {max_metric_names_per_run}")
        if not retention_seconds >= 0:
            raise ValueError(f"retention_seconds must be >= 0 but got {retention_seconds}")
        if isinstance(metric_allowlist, str):
            raise TypeError("metric_allowlist must be a collection of names, not one string")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_metric_names_per_run = int(max_metric_names_per_run)
        self.retention_seconds = float(retention_seconds)
        self._clock = clock
        self._allow_exact: frozenset[str] | None = None
        self._allow_patterns: tuple[str, ...] = ()
        self._allow_cache: dict[str, bool] = {}
        if metric_allowlist is not None:
            names = list(metric_allowlist)
            self._allow_exact = frozenset(n for n in names if not any(c in n for c in "*?["))
            self._allow_patterns = tuple(n for n in names if any(c in n for c in "*?["))
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._expiry: dict[str, float] = {}  # run -> time its series go; insertion order is expiry order
        self._decisions: dict[tuple[str, str], int] = {}
        self._policy_seconds: dict[str, _Histogram] = {}
        self._errors: dict[str, int] = dict.fromkeys(KNOWN_ERROR_KINDS, 0)
        self._warned: set[str] = set()
        self._build = _build_labels()
        self._pacing = 0.0
        self._http: Any = None
        self.registry.register(_Collector(self))

    # -- per run -------------------------------------------------------------------------------

    def _run(self, run: str) -> _Run:
        state = self._runs.get(run)
        if state is None:
            state = self._runs[run] = _Run()
        return state

    def set_param_values(self, run: str, values: Mapping[str, Any]) -> None:
        """The run's complete current parameter values.

        Numbers are exported as they are, booleans as 0/1; strings (Text and
        Choice parameters) are not exported. Parameters absent from ``values``
        are dropped from ``supervisor_param_value``.
        """
        numeric: dict[str, float] = {}
        for name, value in values.items():
            if isinstance(value, bool):
                numeric[name] = 1.0 if value else 0.0
            elif isinstance(value, int | float):
                numeric[name] = float(value)
        with self._lock:
            self._run(run).params = numeric

    def record_change(self, run: str, params: Sequence[str], source: str, when: float) -> None:
        """One accepted change of ``params`` by ``source`` ("operator", "policy:<id>", ...) at ``when`` (epoch s)."""
        with self._lock:
            state = self._run(run)
            for param in params:
                key = (param, source)
                state.changes[key] = state.changes.get(key, 0) + 1
                state.last_change[param] = when

    def record_ack(self, run: str, latency_seconds: float) -> None:
        """Seconds from recording a change to a trainer rank acknowledging it."""
        if not latency_seconds >= 0:  # also refuses NaN
            latency_seconds = 0.0
        with self._lock:
            self._run(run).ack.observe(latency_seconds)

    def set_connected(self, run: str, ranks: int) -> None:
        """Trainer ranks connected now. A run that gets a rank back is no longer due to expire."""
        with self._lock:
            self._run(run).connected = ranks
            if ranks > 0:
                self._expiry.pop(run, None)

    def add_points(self, run: str, received: int) -> None:
        """``received`` more metric points arrived from the run's trainers."""
        with self._lock:
            self._run(run).points += received

    def set_dropped(self, run: str, dropped_total: int) -> None:
        """The trainers' cumulative count of dropped points.

        Exported as a counter: it grows by the difference to the last report,
        and a report lower than the last (a trainer restarted and counts from 0
        again) adds the whole new figure, so the counter never goes down.
        """
        with self._lock:
            state = self._run(run)
            if dropped_total >= state.dropped_reported:
                state.dropped += dropped_total - state.dropped_reported
            else:
                state.dropped += dropped_total
            state.dropped_reported = dropped_total

    def _allowed(self, name: str) -> bool:
        if self._allow_exact is None or name in self._allow_exact:
            return True
        if not self._allow_patterns:
            return False
        cached = self._allow_cache.get(name)
        if cached is None:
            cached = any(fnmatch.fnmatchcase(name, pattern) for pattern in self._allow_patterns)
            if len(self._allow_cache) < _ALLOW_CACHE_MAX:
                self._allow_cache[name] = cached
        return cached

    def set_latest_metrics(self, run: str, values: Mapping[str, float]) -> None:
        """The latest value of each metric the run's trainers report.

        A name outside the allow-list, or beyond the first
        ``max_metric_names_per_run`` names of the run, is not exported; each such
        name is counted once per run in ``supervisor_errors_total{kind="metric_name_rejected"}``.
        """
        with self._lock:
            state = self._run(run)
            exported = state.metrics
            cap = self.max_metric_names_per_run
            rejected = 0
            for name, value in values.items():
                if name in exported or len(exported) < cap and self._allowed(name):
                    exported[name] = value
                elif name not in state.rejected:
                    rejected += 1
                    if len(state.rejected) < MAX_REJECTED_REMEMBERED:
                        state.rejected.add(name)
            if rejected:
                self._errors["metric_name_rejected"] += rejected

    def run_finished(self, run: str) -> None:
        """The run ended: its series are removed ``retention_seconds`` from now, unless a rank reconnects."""
        with self._lock:
            if run not in self._runs:
                return
            self._expiry.pop(run, None)  # re-insert at the end: keeps the dict in expiry order
            self._expiry[run] = self._clock() + self.retention_seconds
        self.forget_expired()

    def forget_expired(self) -> None:
        """Remove the series of runs whose retention has passed (also done at every scrape)."""
        with self._lock:
            if not self._expiry:
                return
            now = self._clock()
            while self._expiry:
                run, due = next(iter(self._expiry.items()))
                if due > now:
                    break
                del self._expiry[run]
                self._runs.pop(run, None)

    # -- policies and errors -----------------------------------------------------------------------

    def _policy(self, policy: str) -> str:
        if policy in self._policy_seconds or len(self._policy_seconds) < MAX_POLICIES:
            return policy
        return "other"

    def record_decision(self, policy: str, kind: str) -> None:
        """A policy decision; ``kind`` is one of applied, shadow, refused, error, trigger."""
        if kind not in DECISION_KINDS:
            self._warn_once(
                f"decision:{kind}",
                "record_decision: unknown kind %r counted as 'other' (expected one of %s)",
                kind,
                ", ".join(sorted(DECISION_KINDS)),
            )
            kind = "other"
        with self._lock:
            policy = self._policy(policy)
            self._policy_seconds.setdefault(policy, _Histogram(POLICY_SECONDS_BUCKETS))
            key = (policy, kind)
            self._decisions[key] = self._decisions.get(key, 0) + 1

    def observe_policy_seconds_many(self, timings: Iterable[tuple[str, float]]) -> None:
        """``observe_policy_seconds`` for many (policy, seconds) at once: one lock for a batch of points."""
        with self._lock:
            for policy, seconds in timings:
                policy = self._policy(policy)
                histogram = self._policy_seconds.get(policy)
                if histogram is None:
                    histogram = self._policy_seconds[policy] = _Histogram(POLICY_SECONDS_BUCKETS)
                histogram.observe(seconds if seconds >= 0 else 0.0)

    def observe_policy_seconds(self, policy: str, seconds: float) -> None:
        """How long one evaluation of ``policy`` took."""
        self.observe_policy_seconds_many([(policy, seconds)])

    def set_pacing(self, seconds: float) -> None:
        """The interval between metric batches the supervisor asks of each trainer (see Supervisor.pacing)."""
        self._pacing = float(seconds)

    def record_error(self, kind: str) -> None:
        """One error of ``kind``, a short snake_case word.

        Other spellings are converted (``UnknownRun`` -> ``unknown_run``), and the
        servicers' exception names map to the documented kinds
        (``RefusedChange`` -> ``invalid_change``, ``BadSession`` -> ``bad_message``).
        """
        kind = _snake(kind)
        with self._lock:
            if kind not in self._errors and len(self._errors) >= MAX_ERROR_KINDS:
                kind = "other"
            self._errors[kind] = self._errors.get(kind, 0) + 1

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned and len(self._warned) < 100:
            self._warned.add(key)
            log.warning(message, *args)

    # -- HTTP ---------------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` of this registry on ``host:port`` (0: a free port) from a daemon thread.

        Returns the bound (host, port).
        """
        from prometheus_client import start_http_server

        if self._http is not None:
            raise RuntimeError("SupervisorMetrics.serve() was already called")
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = (server, thread)
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop the HTTP server started by ``serve``, if any."""
        if self._http is not None:
            server, thread = self._http
            self._http = None
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    # -- scrape ---------------------------------------------------------------------------------------

    def _families(self) -> Iterator[Metric]:
        self.forget_expired()
        with self._lock:  # copy what the families need; build them outside the lock
            runs = [
                (
                    name,
                    dict(s.params),
                    dict(s.changes),
                    dict(s.last_change),
                    s.ack.snapshot(),
                    s.connected,
                    s.points,
                    s.dropped,
                    dict(s.metrics),
                )
                for name, s in self._runs.items()
            ]
            decisions = dict(self._decisions)
            policy_seconds = {p: h.snapshot() for p, h in self._policy_seconds.items()}
            errors = dict(self._errors)

        yield InfoMetricFamily("supervisor_build", "Version of the supervisor, Python and gRPC.", value=self._build)
        yield GaugeMetricFamily(
            "supervisor_trainer_flush_interval_seconds",
            "Least seconds each trainer leaves between metric batches, as the supervisor asks (grows with trainers).",
            value=self._pacing,
        )

        param_value = GaugeMetricFamily(
            "supervisor_param_value",
            "Current value of a live numeric parameter (booleans as 0/1).",
            labels=["run", "param"],
        )
        changes_total = CounterMetricFamily(
            "supervisor_param_changes",
            "Accepted changes of a parameter, by who made them.",
            labels=["run", "param", "source"],
        )
        last_change = GaugeMetricFamily(
            "supervisor_param_last_change_timestamp_seconds",
            "Unix time of the last accepted change of a parameter.",
            labels=["run", "param"],
        )
        ack = HistogramMetricFamily(
            "supervisor_change_ack_latency_seconds",
            "Seconds from recording a change to a trainer rank acknowledging it.",
            labels=["run"],
        )
        connected = GaugeMetricFamily(
            "supervisor_connected_ranks", "Trainer ranks of the run connected now.", labels=["run"]
        )
        received = CounterMetricFamily(
            "supervisor_metric_points_received", "Metric points received from the run's trainers.", labels=["run"]
        )
        dropped = CounterMetricFamily(
            "supervisor_metric_points_dropped",
            "Metric points the run's trainers dropped from their bounded buffers before sending.",
            labels=["run"],
        )
        trainer_metric = GaugeMetricFamily(
            "supervisor_trainer_metric",
            "Latest value of a metric the run's trainers report (loss, grad_norm, gpu0_power_watts, ...).",
            labels=["run", "metric"],
        )
        for name, params, changes, last, (buckets, ack_sum), ranks, points, drops, metrics in runs:
            for param, value in params.items():
                param_value.add_metric([name, param], value)
            for (param, source), count in changes.items():
                changes_total.add_metric([name, param, source], count)
            for param, when in last.items():
                last_change.add_metric([name, param], when)
            ack.add_metric([name], buckets, ack_sum)
            connected.add_metric([name], ranks)
            received.add_metric([name], points)
            dropped.add_metric([name], drops)
            for metric, value in metrics.items():
                trainer_metric.add_metric([name, metric], value)
        yield from (param_value, changes_total, last_change, ack, connected, received, dropped, trainer_metric)

        decisions_total = CounterMetricFamily(
            "supervisor_policy_decisions",
            "Policy decisions by policy and kind (applied, shadow, refused, error, trigger).",
            labels=["policy", "kind"],
        )
        for (policy, kind), count in decisions.items():
            decisions_total.add_metric([policy, kind], count)
        yield decisions_total
        evaluation = HistogramMetricFamily(
            "supervisor_policy_evaluation_seconds", "Seconds one evaluation of a policy took.", labels=["policy"]
        )
        for policy, (buckets, total) in policy_seconds.items():
            evaluation.add_metric([policy], buckets, total)
        yield evaluation
        errors_total = CounterMetricFamily(
            "supervisor_errors",
            "Errors by kind (invalid_change, bad_message, policy_error, non_finite_metric, ...).",
            labels=["kind"],
        )
        for kind, count in errors.items():
            errors_total.add_metric([kind], count)
        yield errors_total


class _Collector:
    """Registered on the registry; reads the live state at scrape time."""

    def __init__(self, metrics: SupervisorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._families()

    def describe(self) -> list[Metric]:
        # Names only, for the registry's duplicate check; no samples.
        return [
            InfoMetricFamily("supervisor_build", ""),
            GaugeMetricFamily("supervisor_trainer_flush_interval_seconds", ""),
            GaugeMetricFamily("supervisor_param_value", ""),
            CounterMetricFamily("supervisor_param_changes", ""),
            GaugeMetricFamily("supervisor_param_last_change_timestamp_seconds", ""),
            HistogramMetricFamily("supervisor_change_ack_latency_seconds", ""),
            GaugeMetricFamily("supervisor_connected_ranks", ""),
            CounterMetricFamily("supervisor_metric_points_received", ""),
            CounterMetricFamily("supervisor_metric_points_dropped", ""),
            GaugeMetricFamily("supervisor_trainer_metric", ""),
            CounterMetricFamily("supervisor_policy_decisions", ""),
            HistogramMetricFamily("supervisor_policy_evaluation_seconds", ""),
            CounterMetricFamily("supervisor_errors", ""),
        ]
