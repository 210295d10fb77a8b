"""Run the benchmarks: ``python -m bench.run --quick`` (about a minute) or ``--full``.

Writes bench/results/results.json (every sample), results.md (the table) and
PNG plots; ``--quick`` writes to bench/results/quick/ instead. ``--only NAME
...`` runs some benchmarks and keeps the other sections of an existing
results.json (each section records when, at which commit and in which mode it
ran).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench._common import ROOT, Result, cpu_counters, fmt, machine, machine_usage, python_loop_ms

BENCHMARKS = {
    "read_cost": "1. read cost",
    "report_cost": "2. report cost",
    "training_overhead": "3. training overhead",
    "control_latency": "4. control latency",
    "scale": "5. scale",
    "control_quality": "6. control quality",
}
FULL_ONLY = {"control_quality"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small samples, about a minute")
    mode.add_argument("--full", action="store_true", help="the full suite (default)")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None)
    p.add_argument("--out", type=Path, default=None,
                   help="default bench/results (--full) or bench/results/quick (--quick, so a smoke run never "
                        "overwrites the full results)")
    args = p.parse_args(argv)
    quick = args.quick
    if args.out is None:
        args.out = ROOT / "bench" / "results" / ("quick" if quick else "")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    names = args.only or [n for n in BENCHMARKS if not (quick and n in FULL_ONLY)]
    results_path = args.out / "results.json"
    previous: dict[str, Any] = {}
    if args.only and results_path.exists():
        previous = json.loads(results_path.read_text()).get("sections", {})
    info = machine()
    print(f"machine: {info['nproc']} cpus, {info['cpu_model']}, python {info['python']}, torch {info['torch']}, "
          f"grpc {info['grpc']}; load {info['loadavg_at_start']}", flush=True)
    sections = dict(previous)
    for name in names:
        print(f"\n== {BENCHMARKS[name]} ({'quick' if quick else 'full'})", flush=True)
        started = time.time()
        speed = python_loop_ms()
        counters = cpu_counters()
        try:
            module = importlib.import_module(f"bench.{name}")
            kwargs = {"out": args.out} if "out" in module.run.__code__.co_varnames else {}
            result: Result = module.run(quick, **kwargs)
            section = {"title": BENCHMARKS[name], "rows": [r.as_dict() for r in result.rows], "data": result.data,
                       "plots": result.plots}
        except Exception as exc:  # one broken benchmark must not hide the others
            traceback.print_exc()
            section = {"title": BENCHMARKS[name], "rows": [], "data": {}, "plots": [],
                       "error": f"{type(exc).__name__}: {exc}"}
        section["machine_usage"] = machine_usage(counters, cpu_counters())
        section["python_loop_ms"] = round(speed, 2)
        section["git_commit"] = info.get("git_commit")
        section.update(mode="quick" if quick else "full", started=dt.datetime.fromtimestamp(started).isoformat(
            timespec="seconds"), seconds=round(time.time() - started, 1))
        sections[name] = section
        for row in section["rows"]:
            print("  " + _line(row), flush=True)
        if "error" in section:
            print(f"  ERROR {section['error']}", flush=True)
        _write(args.out, info, sections)
    print(f"\nwrote {results_path} and {args.out / 'results.md'}")
    return 0


def _line(row: dict[str, Any]) -> str:
    met = {True: "met", False: "MISSED", None: ""}[row["met"]]
    value = fmt(row["value"]) if not isinstance(row["value"], str) else row["value"]
    return f"{row['metric']}: {value} {row['unit']}  {('[' + row['target'] + ' ' + met + ']') if row['target'] else ''}"


def table(info: dict[str, Any], sections: dict[str, Any]) -> str:
    lines = [
        f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), {info.get('mem_gib', '?')} GiB, "
        f"Python {info['python']}, torch {info['torch']}, grpcio {info['grpc']}, protobuf {info['google.protobuf']}, "
        f"numpy {info['numpy']}; load average at start {', '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}; "
        f"code at git {info.get('git_commit')}"
        f"{' with uncommitted changes outside bench/' if info.get('git_uncommitted_outside_bench') else ''}.",
        "",
        "| benchmark | measurement | value | unit | target | met | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in BENCHMARKS:
        section = sections.get(name)
        if section is None:
            continue
        usage = section.get("machine_usage", {})
        title = (f"{section['title']} ({section['mode']}, {section['started']}, git {section.get('git_commit', '?')}; "
                 f"machine busy "
                 f"{usage.get('busy', float('nan')):.0%}, steal {usage.get('steal', float('nan')):.0%}; "
                 f"reference Python loop {section.get('python_loop_ms', float('nan')):.1f} ms before it)")
        if section.get("error"):
            lines.append(f"| {title} | failed | | | | | {section['error']} |")
        for row in section["rows"]:
            value = row["value"] if isinstance(row["value"], str) else fmt(row["value"])
            met = {True: "yes", False: "**no**", None: ""}[row["met"]]
            lines.append(f"| {title} | {row['metric']} | {value} | {row['unit']} | {row['target']} | {met} | "
                         f"{row['note']} |")
            title = ""
    return "\n".join(lines) + "\n"


def _write(out: Path, info: dict[str, Any], sections: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps({"machine": info, "sections": sections}, indent=1, default=str))
    (out / "results.md").write_text(table(info, sections))


if __name__ == "__main__":
    sys.exit(main())
