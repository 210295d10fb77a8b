#!/usr/bin/env python3
"""Render the Grafana dashboard's panels to a PNG with matplotlib, straight from Prometheus.

    python deploy/grafana/render_dashboard.py --prometheus http://127.0.0.1:9090 --run digits-01 \\
        --minutes 15 --out docs/img/dashboard.png

It runs the PromQL of deploy/grafana/dashboards/supervisor.json itself (every
panel's targets and the change annotations), with Grafana's template variables
substituted, over a time range (``/api/v1/query_range``; instant queries for
stat and bar-gauge panels), and draws one subplot per panel. No Grafana needed:
this is how the picture in docs/observability.md is made.

The helpers (``load_dashboard``, ``dashboard_queries``, ``substitute``) are also
what the tests use to check every expression of the dashboard. Needs matplotlib
only to draw; the rest is the standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "supervisor.json"

GRAFANA_DEFAULTS = {
    "__rate_interval": "20s",  # 4 x the 5 s scrape interval, as Grafana computes it
    "__interval": "5s",
    "__range": "15m",
    "datasource": "prometheus",
}


@dataclass(frozen=True)
class Query:
    """One PromQL expression of the dashboard and where it comes from."""

    source: str  # "panel", "annotation" or "variable"
    title: str  # panel title, annotation name or variable name
    expr: str
    legend: str = ""
    instant: bool = False
    panel_type: str = ""
    unit: str = ""
    use_value_for_time: bool = False


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.*?)\s*,\s*(?P<label>[a-zA-Z_]\w*)\s*\)\s*$", re.S)


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Every PromQL expression: panel targets, annotations, and the selectors of query variables."""
    out: list[Query] = []
    for panel in _panels(dashboard):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        for t in panel.get("targets", []):
            if t.get("expr"):
                out.append(
                    Query(
                        "panel",
                        panel.get("title", ""),
                        t["expr"],
                        t.get("legendFormat", ""),
                        bool(t.get("instant")) and not t.get("range"),
                        panel.get("type", ""),
                        unit,
                    )
                )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            out.append(
                Query(
                    "annotation",
                    annotation.get("name", ""),
                    annotation["expr"],
                    annotation.get("titleFormat", ""),
                    use_value_for_time=bool(annotation.get("useValueForTime")),
                )
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = _LABEL_VALUES.match(text)
        if match:
            out.append(Query("variable", variable["name"], match["selector"], match["label"]))
        elif text:
            out.append(Query("variable", variable["name"], text))
    return out


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Grafana's ``$name``, ``${name}``, ``${name:fmt}`` and ``[[name]]`` replaced by ``variables[name]``.

    Built-ins (``$__rate_interval``, ``$__interval``, ``$__range``) default to
    ``GRAFANA_DEFAULTS``. An unknown variable raises KeyError.
    """
    values = {**GRAFANA_DEFAULTS, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bracketed") or match.group("plain")
        return values[name]

    pattern = r"\$\{(?P<braced>\w+)(?::\w+)?\}|\[\[(?P<bracketed>\w+)\]\]|\$(?P<plain>\w+)"
    return re.sub(pattern, replace, expr)


def promql_regex_literal(value: str) -> str:
    r"""``value`` as an exact-match regex inside a PromQL double-quoted string (as Grafana formats it).

    Regex metacharacters get a backslash, and that backslash is doubled for the
    string literal: ``a.b`` becomes ``a\\.b``.
    """
    escaped = re.sub(r"([\\.*+?^${}()|\[\]])", r"\\\1", value)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


def run_variables(run: str) -> dict[str, str]:
    """Template values selecting one run (escaped: the dashboard matches with =~) and every metric."""
    return {"run": promql_regex_literal(run), "metric": ".*"}


# -- Prometheus HTTP API -----------------------------------------------------------------------------------


def prometheus_get(base_url: str, path: str, params: Mapping[str, str], timeout: float = 10.0) -> Any:
    """GET ``base_url + path`` with ``params``; the ``data`` of a successful answer."""
    url = f"{base_url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def query_range(base_url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    return prometheus_get(
        base_url,
        "/api/v1/query_range",
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
    )["result"]


def query_instant(base_url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    return prometheus_get(base_url, "/api/v1/query", params)["result"]


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """Grafana's ``{{label}}`` legend format."""
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


# -- drawing ------------------------------------------------------------------------------------------------


_UNIT_SCALE = {
    "bytes": (1 / 2**30, "GiB"),
    "percentunit": (100.0, "%"),
    "s": (1.0, "s"),
    "watt": (1.0, "W"),
    "celsius": (1.0, "°C"),
    "pps": (1.0, "points/s"),
    "ops": (1.0, "/s"),
}


def render(
    base_url: str,
    run: str,
    out: Path,
    *,
    minutes: float = 15.0,
    end: float | None = None,
    dashboard_path: Path = DASHBOARD,
    columns: int = 3,
) -> Path:
    """Query every panel of the dashboard for ``run`` over the last ``minutes`` and save a PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dashboard = load_dashboard(dashboard_path)
    variables = run_variables(run)
    end = time.time() if end is None else end
    start = end - minutes * 60
    step = max(1.0, (end - start) / 300)
    queries = dashboard_queries(dashboard)
    panels = [p for p in _panels(dashboard) if p.get("type") != "row" and p.get("targets")]

    change_times: list[tuple[float, str]] = []
    for q in queries:
        if q.source == "annotation" and q.use_value_for_time:
            for series in query_range(base_url, substitute(q.expr, variables), start, end, step):
                for _, value in series["values"]:
                    when = float(value) / 1000.0
                    if start <= when <= end and all(abs(when - t) > 1e-3 for t, _ in change_times):
                        change_times.append((when, legend(q.legend, series["metric"])))

    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.0 * columns, 3.2 * rows), squeeze=False)
    fig.suptitle(
        f"{dashboard.get('title', 'dashboard')} - run {run}   "
        f"({datetime.fromtimestamp(start):%H:%M:%S} to {datetime.fromtimestamp(end):%H:%M:%S})",
        fontsize=14,
    )
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        scale, unit_label = _UNIT_SCALE.get(unit, (1.0, ""))
        title = panel.get("title", "")
        ax.set_title(title + (f" ({unit_label})" if unit_label else ""), fontsize=10)
        targets = [t for t in panel["targets"] if t.get("expr")]
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
        drawn = 0
        if panel.get("type") in ("stat", "bargauge"):
            names: list[str] = []
            values: list[float] = []
            for t in targets:
                for series in query_instant(base_url, substitute(t["expr"], variables), end):
                    names.append(legend(t.get("legendFormat", ""), series["metric"]))
                    values.append(float(series["value"][1]) * scale)
            drawn = len(names)
            if names and panel.get("type") == "stat":
                ax.axis("off")
                for i, (name, value) in enumerate(zip(names, values, strict=True)):
                    y = 1 - (i + 1) / (len(names) + 1)
                    ax.text(
                        0.5,
                        y + 0.08,
                        f"{value:g}",
                        ha="center",
                        va="center",
                        fontsize=28,
                        weight="bold",
                        color="tab:green" if value > 0 else "tab:red",
                        transform=ax.transAxes,
                    )
                    ax.text(0.5, y - 0.12, name, ha="center", va="center", fontsize=10, transform=ax.transAxes)
            elif names:
                ax.barh(names, values, color="tab:blue", height=0.6)
                ax.set_xlim(0, max(max(values), 1.0) * 1.25)
                for i, v in enumerate(values):
                    ax.text(v, i, f" {v:g}", va="center", fontsize=9)
                ax.tick_params(axis="y", labelsize=8)
        else:
            for t in targets:
                for series in query_range(base_url, substitute(t["expr"], variables), start, end, step):
                    points = [(float(ts), float(v)) for ts, v in series["values"]]
                    xs = [datetime.fromtimestamp(ts) for ts, _ in points]
                    ys = [v * scale for _, v in points]
                    label = legend(t.get("legendFormat", ""), series["metric"])
                    if custom.get("lineInterpolation") == "stepAfter":
                        ax.step(xs, ys, where="post", label=label)
                    else:
                        ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
                    drawn += 1
            for when, _ in change_times:
                ax.axvline(datetime.fromtimestamp(when), color="orange", linestyle="--", linewidth=1)
            if change_times and title == "Parameter values":
                for when, text in change_times:
                    ax.annotate(
                        text,
                        (datetime.fromtimestamp(when), 1.0),
                        xycoords=("data", "axes fraction"),
                        fontsize=7,
                        color="darkorange",
                        rotation=90,
                        va="top",
                        ha="right",
                    )
            scale_distribution = custom.get("scaleDistribution", {})
            if scale_distribution.get("type") == "symlog" and drawn:
                ax.set_yscale("symlog", linthresh=float(scale_distribution.get("linearThreshold", 1.0)))
                if all(y >= 0 for line in ax.get_lines() for y in line.get_ydata()):
                    ax.set_ylim(bottom=0)
            elif scale_distribution.get("type") == "log" and drawn:
                ax.set_yscale("log")
            ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
            ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
            ax.tick_params(axis="x", labelsize=7)
            if drawn:
                ax.legend(fontsize=7, loc="best")
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--run", required=True, help="run name ($run of the dashboard)")
    parser.add_argument("--minutes", type=float, default=15.0, help="time range, ending now")
    parser.add_argument("--out", type=Path, default=Path("docs/img/dashboard.png"))
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    args = parser.parse_args(argv)
    path = render(args.prometheus, args.run, args.out, minutes=args.minutes, dashboard_path=args.dashboard)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
