"""deploy/: the dashboard's PromQL parses (real promtool), names exported series; configs load."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from supervisor.observability import SupervisorMetrics
from tests.observability.helpers import DASHBOARD, ROOT, load_render_module
from tests.observability.test_metrics import exercise_everything

render = load_render_module()
DEPLOY = ROOT / "deploy"


def check_rules(promtool: str, exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Each expression as a recording rule; ``promtool check rules`` parses them all."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        lines += [f"      - record: dashboard:expr_{i}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def substituted() -> list[tuple[str, str]]:
    queries = render.dashboard_queries(render.load_dashboard(DASHBOARD))
    variables = render.run_variables("prom-e2e")
    return [(f"{q.source} {q.title!r}", render.substitute(q.expr, variables)) for q in queries]


def test_dashboard_has_the_expected_parts() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["run"]["query"]["query"] == "label_values(supervisor_param_value, run)"
    titles = {p["title"] for p in dashboard["panels"] if p["type"] != "row"}
    for expected in (
        "Parameter values",
        "Trainer metrics",
        "GPU utilization",
        "GPU memory used",
        "GPU power",
        "GPU temperature",
        "Change -> acknowledgement latency",
        "Policy decisions",
        "Connected trainer ranks",
        "Metric points received / dropped",
        "Errors",
        "Changes by source",
    ):
        assert expected in titles
    annotations = [a for a in dashboard["annotations"]["list"] if a.get("expr")]
    assert annotations and all('run=~"$run"' in a["expr"] for a in annotations)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries = render.dashboard_queries(dashboard)
    assert {q.source for q in queries} == {"panel", "annotation", "variable"}
    assert any("histogram_quantile" in q.expr for q in queries)


def test_every_expression_parses_with_promtool(promtool: str, tmp_path: Path) -> None:
    exprs = substituted()
    assert len(exprs) >= 15
    for where, expr in exprs:
        assert "$" not in expr and "[[" not in expr, f"{where}: unsubstituted variable in {expr}"
    result = check_rules(promtool, [e for _, e in exprs], tmp_path)
    if result.returncode != 0:  # say which one
        bad = [(w, e) for w, e in exprs if check_rules(promtool, [e], tmp_path).returncode != 0]
        pytest.fail(f"promtool check rules failed for {bad}:\n{result.stdout}{result.stderr}")
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_check_rules_does_reject_bad_promql(promtool: str, tmp_path: Path) -> None:
    assert check_rules(promtool, ['rate(supervisor_errors_total{kind=~"x"}[5m]'], tmp_path).returncode != 0
    assert check_rules(promtool, ["sum by (run (supervisor_connected_ranks)"], tmp_path).returncode != 0


def test_substitution_of_grafana_variables() -> None:
    s = render.substitute
    assert s('x{run=~"$run"}[$__rate_interval]', {"run": "a"}) == 'x{run=~"a"}[20s]'
    assert s('x{run=~"${run}"} [[metric]] ${run:regex}', {"run": "a", "metric": "m"}) == 'x{run=~"a"} m a'
    assert render.run_variables("prom-e2e.1")["run"] == r"prom-e2e\\.1"
    with pytest.raises(KeyError):
        s("$unknown", {})


@pytest.mark.parametrize("name", ["prom-e2e", "a.b", "x+y(1)", 'q"uote', "back\\slash", "[br]{c}|*?^$"])
def test_run_names_become_exact_regexes(name: str) -> None:
    literal = render.promql_regex_literal(name)
    regex = json.loads(f'"{literal}"')  # PromQL unescapes the string like JSON does for these
    assert re.fullmatch(regex, name) and not re.fullmatch(regex, name + "x")


def test_dashboard_uses_only_exported_series() -> None:
    metrics = SupervisorMetrics(CollectorRegistry())
    exercise_everything(metrics)
    text = generate_latest(metrics.registry).decode()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    used = set()
    for _, expr in substituted():
        used |= set(re.findall(r"\bsupervisor_[a-z_]+\b", expr))
    assert used, "the dashboard queries no supervisor_ series"
    assert used <= exported, f"not exported: {used - exported}"
    # And every family appears on the dashboard, but the build info.
    families = {name.removesuffix("_bucket").removesuffix("_total") for name in used}
    for family in (
        "supervisor_param_value",
        "supervisor_param_changes",
        "supervisor_param_last_change_timestamp_seconds",
        "supervisor_change_ack_latency_seconds",
        "supervisor_connected_ranks",
        "supervisor_metric_points_received",
        "supervisor_metric_points_dropped",
        "supervisor_trainer_metric",
        "supervisor_policy_decisions",
        "supervisor_policy_evaluation_seconds",
        "supervisor_errors",
    ):
        assert family in families, family


def test_prometheus_config_is_valid(promtool: str) -> None:
    path = DEPLOY / "prometheus" / "prometheus.yml"
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = path.read_text()
    assert "job_name: supervisor" in text and '"127.0.0.1:9464"' in text and "scrape_interval: 5s" in text


def test_grafana_provisioning_yaml_loads() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (it comes with optuna)")
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert datasources["apiVersion"] == 1 and source["type"] == "prometheus" and source["url"].startswith("http")
    dashboards = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/supervisor.yml").read_text())
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "supervisor" and job["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
