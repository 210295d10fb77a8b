"""SupervisorMetrics on its own: a registry in, exposition text out, checked by the real promtool."""

from __future__ import annotations

import math
import threading
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor import observability
from supervisor.observability import SupervisorMetrics
from tests.observability.helpers import check_metrics

ALLOWED_LABELS = {"run", "param", "metric", "policy", "source", "kind", "le"}

FAMILIES = {
    "supervisor_build_info": "gauge",
    "supervisor_trainer_flush_interval_seconds": "gauge",
    "supervisor_param_value": "gauge",
    "supervisor_param_changes": "counter",
    "supervisor_param_last_change_timestamp_seconds": "gauge",
    "supervisor_change_ack_latency_seconds": "histogram",
    "supervisor_connected_ranks": "gauge",
    "supervisor_metric_points_received": "counter",
    "supervisor_metric_points_dropped": "counter",
    "supervisor_trainer_metric": "gauge",
    "supervisor_policy_decisions": "counter",
    "supervisor_policy_evaluation_seconds": "histogram",
    "supervisor_errors": "counter",
}


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scrape(metrics: SupervisorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def samples(metrics: SupervisorMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted label items: value} of every sample called ``name``."""
    out = {}
    for family in text_string_to_metric_families(scrape(metrics)):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: SupervisorMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics, name).get(tuple(sorted(labels.items())))


def exercise_everything(m: SupervisorMetrics) -> None:
    m.set_param_values("run-a", {"lr": 0.1, "warmup": 100, "amp": True, "optimizer": "adam"})
    m.record_change("run-a", ["lr", "warmup"], "operator", 1_700_000_000.5)
    m.record_change("run-a", ["lr"], "policy:plateau", 1_700_000_010.0)
    m.record_ack("run-a", 0.012)
    m.record_ack("run-a", 3.0)
    m.set_connected("run-a", 2)
    m.add_points("run-a", 10)
    m.set_dropped("run-a", 3)
    m.set_latest_metrics(
        "run-a", {"loss": 0.5, "grad_norm": float("nan"), "gpu0_power_watts": 250.0, "val_loss": float("inf")}
    )
    m.record_decision("plateau", "applied")
    m.record_decision("plateau", "shadow")
    m.observe_policy_seconds("plateau", 0.0004)
    m.record_error("invalid_change")
    m.record_error("non_finite_metric")
    m.run_finished("run-b")  # unknown run: nothing happens
    m.forget_expired()


def test_every_family_passes_promtool(promtool: str) -> None:
    m = SupervisorMetrics(CollectorRegistry())
    exercise_everything(m)
    text = scrape(m)
    with_samples = {f.name for f in text_string_to_metric_families(text) if f.samples}
    assert with_samples == set(FAMILIES)  # every family has samples, so promtool lints all of them
    result = check_metrics(promtool, text)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", (result.stdout, result.stderr)


def test_family_types_and_labels_are_bounded() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    exercise_everything(m)
    families = {f.name: f for f in text_string_to_metric_families(scrape(m))}
    # The text parser names counters without their _total suffix.
    assert set(families) == set(FAMILIES)
    for name, family in families.items():
        assert family.type == FAMILIES[name], name
        assert name.startswith("supervisor_")
        for sample in family.samples:
            if name == "supervisor_build_info":
                assert set(sample.labels) == {"version", "python", "grpc"}
                continue
            assert set(sample.labels) <= ALLOWED_LABELS, sample


def test_build_info_names_versions() -> None:
    import grpc

    info = samples(SupervisorMetrics(CollectorRegistry()), "supervisor_build_info")
    ((labels, one),) = info.items()
    labels = dict(labels)
    assert one == 1 and labels["grpc"] == grpc.__version__ and labels["version"] and labels["python"].count(".") == 2


def test_param_values_numbers_and_bools_only_and_replace_previous() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    m.set_param_values("r", {"lr": 0.1, "bs": 32, "amp": True, "ema": False, "opt": "adam"})
    assert samples(m, "supervisor_param_value") == {
        (("param", "lr"), ("run", "r")): 0.1,
        (("param", "bs"), ("run", "r")): 32.0,
        (("param", "amp"), ("run", "r")): 1.0,
        (("param", "ema"), ("run", "r")): 0.0,
    }
    m.set_param_values("r", {"lr": 0.02})  # the run's complete values: the others went away
    assert samples(m, "supervisor_param_value") == {(("param", "lr"), ("run", "r")): 0.02}


def test_every_change_counts_even_within_one_scrape_interval() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    m.record_change("r", ["lr"], "operator", 100.0)
    m.record_change("r", ["lr"], "operator", 101.0)
    m.record_change("r", ["lr", "wd"], "policy:p", 102.0)
    assert value(m, "supervisor_param_changes_total", run="r", param="lr", source="operator") == 2
    assert value(m, "supervisor_param_changes_total", run="r", param="lr", source="policy:p") == 1
    assert value(m, "supervisor_param_changes_total", run="r", param="wd", source="policy:p") == 1
    assert value(m, "supervisor_param_last_change_timestamp_seconds", run="r", param="lr") == 102.0


def test_ack_latency_histogram() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    for latency in (0.003, 0.2, 7.0, -1.0, float("nan")):
        m.record_ack("r", latency)
    assert value(m, "supervisor_change_ack_latency_seconds_count", run="r") == 5
    assert value(m, "supervisor_change_ack_latency_seconds_sum", run="r") == pytest.approx(7.203)
    assert value(m, "supervisor_change_ack_latency_seconds_bucket", run="r", le="0.005") == 3  # 0.003 and two zeros
    assert value(m, "supervisor_change_ack_latency_seconds_bucket", run="r", le="0.25") == 4
    assert value(m, "supervisor_change_ack_latency_seconds_bucket", run="r", le="+Inf") == 5


def test_dropped_is_a_counter_that_only_goes_up() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    m.set_dropped("r", 0)
    assert value(m, "supervisor_metric_points_dropped_total", run="r") == 0
    m.set_dropped("r", 5)
    m.set_dropped("r", 5)
    m.set_dropped("r", 8)
    assert value(m, "supervisor_metric_points_dropped_total", run="r") == 8
    m.set_dropped("r", 2)  # the trainer restarted and counts from zero again
    assert value(m, "supervisor_metric_points_dropped_total", run="r") == 10
    m.set_dropped("r", 4)
    assert value(m, "supervisor_metric_points_dropped_total", run="r") == 12


def test_points_and_connected() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    m.add_points("r", 3)
    m.add_points("r", 4)
    m.set_connected("r", 2)
    assert value(m, "supervisor_metric_points_received_total", run="r") == 7
    assert value(m, "supervisor_connected_ranks", run="r") == 2
    # A run known from any call exports its per-run counters from zero.
    m.set_connected("other", 1)
    assert value(m, "supervisor_metric_points_received_total", run="other") == 0
    assert value(m, "supervisor_change_ack_latency_seconds_count", run="other") == 0


def test_latest_metrics_capped_per_run_and_rejections_counted_once() -> None:
    m = SupervisorMetrics(CollectorRegistry(), max_metric_names_per_run=2)
    m.set_latest_metrics("r", {"loss": 1.0, "acc": 0.5, "extra": 9.0})
    m.set_latest_metrics("r", {"loss": 0.9, "acc": 0.6, "extra": 8.0, "more": 1.0})
    assert samples(m, "supervisor_trainer_metric") == {
        (("metric", "loss"), ("run", "r")): 0.9,
        (("metric", "acc"), ("run", "r")): 0.6,
    }
    assert value(m, "supervisor_errors_total", kind="metric_name_rejected") == 2  # extra, more: once each
    m.set_latest_metrics("s", {"extra": 1.0})  # the cap is per run
    assert value(m, "supervisor_trainer_metric", run="s", metric="extra") == 1.0


def test_latest_metrics_allowlist_exact_and_patterns() -> None:
    m = SupervisorMetrics(CollectorRegistry(), metric_allowlist=["loss", "gpu*"])
    m.set_latest_metrics("r", {"loss": 1.0, "gpu0_power_watts": 200.0, "secret_number": 4.0})
    got = {dict(k)["metric"] for k in samples(m, "supervisor_trainer_metric")}
    assert got == {"loss", "gpu0_power_watts"}
    assert value(m, "supervisor_errors_total", kind="metric_name_rejected") == 1


def test_non_finite_trainer_values_are_exported_as_is() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    m.set_latest_metrics("r", {"loss": float("nan"), "grad_norm": float("inf")})
    assert math.isnan(value(m, "supervisor_trainer_metric", run="r", metric="loss"))
    assert value(m, "supervisor_trainer_metric", run="r", metric="grad_norm") == math.inf


def test_finished_run_expires_after_retention_unless_it_reconnects() -> None:
    clock = Clock()
    m = SupervisorMetrics(CollectorRegistry(), retention_seconds=60, clock=clock)
    for run in ("done", "back"):
        m.set_param_values(run, {"lr": 0.1})
        m.set_connected(run, 1)
        m.set_connected(run, 0)
        m.run_finished(run)
    m.set_connected("live", 1)
    clock.now += 59
    assert {dict(k)["run"] for k in samples(m, "supervisor_connected_ranks")} == {"done", "back", "live"}
    m.set_connected("back", 1)  # reconnected within the retention: kept
    clock.now += 2
    runs = {dict(k)["run"] for k in samples(m, "supervisor_connected_ranks")}  # scrape forgets expired runs
    assert runs == {"back", "live"}
    assert "done" not in scrape(m)


def test_run_finished_twice_restarts_the_retention() -> None:
    clock = Clock()
    m = SupervisorMetrics(CollectorRegistry(), retention_seconds=10, clock=clock)
    m.set_connected("a", 0)
    m.set_connected("b", 0)
    m.run_finished("a")
    clock.now += 5
    m.run_finished("b")
    m.run_finished("a")  # finished again: 10 s from now
    clock.now += 6
    m.forget_expired()
    assert {dict(k)["run"] for k in samples(m, "supervisor_connected_ranks")} == {"a", "b"}
    clock.now += 5
    m.forget_expired()
    assert samples(m, "supervisor_connected_ranks") == {}


def test_policy_decisions_and_seconds() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    m.record_decision("plateau", "applied")
    m.record_decision("plateau", "applied")
    m.record_decision("guard", "refused")
    m.record_decision("guard", "bogus")
    m.observe_policy_seconds("plateau", 0.002)
    assert value(m, "supervisor_policy_decisions_total", policy="plateau", kind="applied") == 2
    assert value(m, "supervisor_policy_decisions_total", policy="guard", kind="refused") == 1
    assert value(m, "supervisor_policy_decisions_total", policy="guard", kind="other") == 1
    assert value(m, "supervisor_policy_evaluation_seconds_count", policy="plateau") == 1
    assert value(m, "supervisor_policy_evaluation_seconds_count", policy="guard") == 0


def test_error_kinds_are_snake_case_and_bounded() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    assert value(m, "supervisor_errors_total", kind="bad_message") == 0  # exported before the first one
    m.record_error("RefusedChange")  # what the servicers pass: type(exc).__name__
    m.record_error("BadSession")
    m.record_error("UnknownRun")
    assert value(m, "supervisor_errors_total", kind="invalid_change") == 1
    assert value(m, "supervisor_errors_total", kind="bad_message") == 1
    assert value(m, "supervisor_errors_total", kind="unknown_run") == 1
    for i in range(200):
        m.record_error(f"kind_{i}")
    errors = samples(m, "supervisor_errors_total")
    assert len(errors) == observability._metrics.MAX_ERROR_KINDS + 1
    assert value(m, "supervisor_errors_total", kind="other") > 0


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="cannot be negative but got -1"):
        SupervisorMetrics(CollectorRegistry(), max_metric_names_per_run=-1)
    with pytest.raises(ValueError, match="retention_seconds"):
        SupervisorMetrics(CollectorRegistry(), retention_seconds=-5)
    with pytest.raises(TypeError):
        SupervisorMetrics(CollectorRegistry(), metric_allowlist="loss")


def test_own_registry_never_the_global_one() -> None:
    before = {f.name for f in REGISTRY.collect()}
    a, b = SupervisorMetrics(), SupervisorMetrics()  # two instances: no "Duplicated timeseries"
    a.set_connected("x", 1)
    assert a.registry is not b.registry and a.registry is not REGISTRY
    assert "supervisor_connected_ranks" not in {f.name for f in REGISTRY.collect()} - before
    assert value(b, "supervisor_connected_ranks", run="x") is None
    with pytest.raises(ValueError, match="Duplicated"):
        SupervisorMetrics(a.registry)


def test_public_surface() -> None:
    assert observability.__all__ == ["SupervisorMetrics"]


def test_scrapes_while_updating() -> None:
    m = SupervisorMetrics(CollectorRegistry(), retention_seconds=0)
    stop = threading.Event()
    failures: list[BaseException] = []

    def scraper() -> None:
        try:
            while not stop.is_set():
                scrape(m)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for i in range(3000):
            run = f"r{i % 50}"
            m.set_latest_metrics(run, {f"m{i % 70}": float(i)})
            m.record_change(run, ["lr"], "operator", float(i))
            m.set_param_values(run, {"lr": i})
            if i % 7 == 0:
                m.run_finished(run)
    finally:
        stop.set()
        thread.join()
    assert not failures


def test_serve_on_a_free_port() -> None:
    m = SupervisorMetrics(CollectorRegistry())
    m.set_param_values("served", {"lr": 0.5})
    host, port = m.serve("127.0.0.1", 0)
    try:
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
        assert 'supervisor_param_value{param="lr",run="served"} 0.5' in body
        with pytest.raises(RuntimeError):
            m.serve("127.0.0.1", 0)
    finally:
        m.close()
