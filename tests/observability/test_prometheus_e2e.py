"""End to end: supervisor + trainer + a real Prometheus, queried with the dashboard's own PromQL.

    supervisor serve --port 0 --metrics-port 0        (real process, console script)
    tests/observability/trainer_script.py              (real trainer_sdk process)
    prometheus, scraping the supervisor every second   (real server, loopback, tmp storage)
    supervisor set prom-e2e lr=0.02 --wait             (real CLI)

then polls Prometheus's HTTP API with the queries of deploy/grafana/dashboards/supervisor.json
until the new value and the change count show up. With RENDER_DASHBOARD=path.png it also
renders the dashboard there (deploy/grafana/render_dashboard.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.observability.helpers import DASHBOARD, ROOT, load_render_module

render = load_render_module()
RUN = "prom-e2e"


def supervisor_command() -> list[str]:
    """The ``supervisor`` console script of this environment (``python -m supervisor`` if not installed)."""
    script = Path(sys.executable).parent / "supervisor"
    if script.exists():
        return [str(script)]
    found = shutil.which("supervisor")
    return [found] if found else [sys.executable, "-m", "supervisor"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Supervisor:
    proc: subprocess.Popen[str]
    address: str
    metrics_url: str


@pytest.fixture
def supervisor_with_metrics(tmp_path: Path) -> Iterator[Supervisor]:
    log = open(tmp_path / "supervisor.log", "w")  # closed below
    cmd = [
        *supervisor_command(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--db",
        str(tmp_path / "sup.db"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    try:
        address = metrics_url = ""
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline and not metrics_url:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"supervisor exited: {(tmp_path / 'supervisor.log').read_text()[-2000:]}")
            if line.startswith("listening on "):
                address = line.split()[-1]
            elif line.startswith("metrics on "):
                metrics_url = line.split()[-1]
        assert address and metrics_url, "supervisor did not print its listening and metrics lines"
        yield Supervisor(proc, address, metrics_url)
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str


def start_prometheus(binary: str, target: str, tmp_path: Path) -> Prometheus:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: supervisor\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n"
        f"    static_configs:\n      - targets: [{target!r}]\n"
    )
    last_error = ""
    for attempt in range(3):  # Prometheus cannot take port 0: pick one, retry if someone took it meanwhile
        port = free_port()
        log = tmp_path / f"prometheus{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / f'data{attempt}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return Prometheus(proc, url)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        stop(proc)
        last_error = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"prometheus did not become ready: {last_error}")


@pytest.fixture
def prometheus_factory(prometheus_binary: str, tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        prometheus = start_prometheus(prometheus_binary, target, tmp_path)
        started.append(prometheus)
        return prometheus

    yield start
    for prometheus in started:
        stop(prometheus.proc)


def dashboard_query(title: str, index: int | None = None) -> str:
    """The expression of the dashboard panel or annotation called ``title`` (its ``index``-th if it has several),
    with the template variables set for run prom-e2e."""
    queries = [q for q in render.dashboard_queries(render.load_dashboard(DASHBOARD)) if q.title == title]
    if index is None:
        assert len(queries) == 1, f"dashboard has {len(queries)} queries titled {title!r}"
        index = 0
    return render.substitute(queries[index].expr, render.run_variables(RUN))


def poll(predicate: Callable[[], object], timeout: float, message: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {message}")


def test_prometheus_sees_values_and_changes_through_the_dashboard_queries(
    supervisor_with_metrics: Supervisor,
    prometheus_factory: Callable[[str], Prometheus],
    trainer_script: Callable,
) -> None:
    started = time.time()
    sup = supervisor_with_metrics
    target = sup.metrics_url.removeprefix("http://").removesuffix("/metrics")
    prometheus = prometheus_factory(target)
    trainer = trainer_script("--run", RUN, "--address", sup.address, "--telemetry", "0.5", "--seconds", "300")
    trainer.wait_connected()

    def query(expr: str) -> list[dict]:
        return render.query_instant(prometheus.url, expr)

    def target_up() -> bool:
        active = render.prometheus_get(prometheus.url, "/api/v1/targets", {"state": "active"})["activeTargets"]
        return any(t["health"] == "up" for t in active)

    poll(target_up, 30, "Prometheus to scrape the supervisor")

    param_values = dashboard_query("Parameter values")
    poll(
        lambda: any(s["metric"].get("param") == "lr" and float(s["value"][1]) == 0.1 for s in query(param_values)),
        30,
        "lr=0.1 in Prometheus",
    )

    set_result = subprocess.run(
        [*supervisor_command(), "set", RUN, "lr=0.02", "--address", sup.address, "--wait"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert set_result.returncode == 0, set_result.stderr
    changed_at = time.time()

    poll(
        lambda: any(s["metric"].get("param") == "lr" and float(s["value"][1]) == 0.02 for s in query(param_values)),
        30,
        "lr=0.02 in Prometheus",
    )
    changes = dashboard_query("Changes by source")
    series = poll(lambda: [s for s in query(changes) if s["metric"].get("param") == "lr"], 30, "the change count")
    assert [(s["metric"]["source"], float(s["value"][1])) for s in series] == [("operator", 1.0)]

    annotation = dashboard_query("Parameter changes")
    (marker,) = poll(lambda: query(annotation), 30, "the change annotation")
    assert abs(float(marker["value"][1]) / 1000 - changed_at) < 10  # milliseconds, Grafana's useValueForTime

    trainer_metrics = dashboard_query("Trainer metrics")
    names = poll(
        lambda: (
            {s["metric"]["metric"] for s in query(trainer_metrics)} >= {"loss", "grad_norm"}
            and {s["metric"]["metric"] for s in query(trainer_metrics)}
        ),
        30,
        "loss and grad_norm",
    )
    assert not any(n.startswith(("gpu", "host_")) for n in names)  # telemetry has its own panels
    poll(
        lambda: (
            query(dashboard_query("Host CPU (trainers without a GPU)")) or query(dashboard_query("GPU utilization"))
        ),
        30,
        "telemetry (GPU or host)",
    )
    (connected,) = query(dashboard_query("Connected trainer ranks"))
    assert float(connected["value"][1]) == 1
    latency = dashboard_query("Change -> acknowledgement latency", 0)  # p50

    def ack_latency() -> list[dict]:
        now = time.time()
        result = render.query_range(prometheus.url, latency, now - 60, now, 1)
        return [s for s in result if any(value != "NaN" for _, value in s["values"])]

    poll(ack_latency, 30, "the acknowledgement latency quantiles")

    # Every query of the dashboard runs against the real server without an error.
    for q in render.dashboard_queries(render.load_dashboard(DASHBOARD)):
        render.query_instant(prometheus.url, render.substitute(q.expr, render.run_variables(RUN)))

    out = os.environ.get("RENDER_DASHBOARD")
    if out:
        time.sleep(3)
        path = render.render(prometheus.url, RUN, Path(out), minutes=(time.time() - started) / 60 + 0.2)
        assert path.stat().st_size > 10_000
