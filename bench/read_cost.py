"""Benchmark 1: what reading a live parameter costs, next to a dict lookup and an attribute read.

All variants run in this process, round-robin within each repeat, through
``timeit`` with the objects bound to locals (so every variant pays the same
LOAD_FAST). Reported: median ns per read over the repeats, the same net of
timeit's empty loop (measured in the same repeats), and the median of the
per-repeat ratios to the dict lookup. The session is connected to a real
supervisor subprocess, so its background threads exist while it is read.

The references the issue names run in the same round-robin when installed
(``make bench-refs``, bench/_references.py): a LiveTune ``liveVar`` read as its
users read it, ``lr()``, and a Kiponos client's ``get("train/lr")``. Without
them the rows carry the issue's quoted ratios and say so.
"""

from __future__ import annotations

import timeit
from typing import Any

import numpy as np

from bench import _references
from bench._common import Result, SupervisorProcess, summary

LIVETUNE = "LiveTune lr() (liveVar)"
KIPONOS = "Kiponos client.get('train/lr')"
QUOTED = {LIVETUNE: (3.9, "LiveTune"), KIPONOS: (68.0, "kiponos")}
"""The issue's ratios to a dict lookup, shown when the tool is not installed here."""
TARGET_RATIO = 1.5


class _Plain:
    def __init__(self) -> None:
        self.lr = 0.05


VARIANTS = {
    "empty loop (timeit overhead)": "pass",
    "dict lookup d['lr']": "d['lr']",
    "attribute read obj.lr": "o.lr",
    "hp.lr": "hp.lr",
    "hp['lr']": "hp['lr']",
}


def measure(hp: Any, *, number: int, repeats: int) -> dict[str, list[float]]:
    env = {"HP": hp, "D": {"lr": 0.05, "weight_decay": 0.0, "dropout": 0.1}, "O": _Plain(), "LT": None, "KP": None}
    variants = dict(VARIANTS)
    livetune = _references.livetune_var(0.05, "bench-read-lr")
    if livetune is not None:
        env["LT"], variants[LIVETUNE] = livetune[0], "lt()"
    kiponos = _references.kiponos_client({"train/lr": "0.05", "train/weight_decay": "0.0", "train/dropout": "0.1"})
    if kiponos is not None:
        env["KP"], variants[KIPONOS] = kiponos, "kp.get('train/lr')"
    setup = "hp = HP; d = D; o = O; lt = LT; kp = KP"
    timers = {name: timeit.Timer(stmt, setup=setup, globals=env) for name, stmt in variants.items()}
    for t in timers.values():  # warm up
        t.timeit(number // 10)
    per_read: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        names = list(variants)
        names = names[r % len(names):] + names[: r % len(names)]  # rotate the order every repeat
        for name in names:
            per_read[name].append(timers[name].timeit(number) / number * 1e9)
    return per_read


def run(quick: bool) -> Result:
    from trainer_sdk import Float, connect

    result = Result("read cost")
    number, repeats = (200_000, 15) if quick else (1_000_000, 41)
    with SupervisorProcess() as sup:
        hp = connect("bench-read", {"lr": Float(0.05, min=1e-5, max=1.0, log=True), "weight_decay": 0.0,
                                    "dropout": 0.1}, address=sup.address, telemetry=False)
        try:
            if not hp.wait_connected(30):
                raise RuntimeError("session did not connect")
            per_read = measure(hp, number=number, repeats=repeats)
        finally:
            hp.close()
    empty = np.array(per_read["empty loop (timeit overhead)"])
    dict_ns = np.array(per_read["dict lookup d['lr']"])
    stats = {}
    for name, values in per_read.items():
        a = np.array(values)
        ratio = a / dict_ns
        net_ratio = (a - empty) / np.maximum(dict_ns - empty, 1e-3)
        stats[name] = {"ns": summary(a), "net_ns": summary(a - empty), "ratio_to_dict": summary(ratio),
                       "net_ratio_to_dict": summary(net_ratio)}
        if name.startswith("empty"):
            result.row(f"{name}", float(np.median(a)), "ns/read")
            continue
        target = ""
        met = None
        if name == "hp.lr":
            target = f"<= {TARGET_RATIO}x dict"
            met = bool(np.median(ratio) <= TARGET_RATIO)
        quoted = ""
        if name in QUOTED:
            ratio_quoted, distribution = QUOTED[name]
            quoted = f"; {distribution} {_references.version(distribution)}; the issue quoted {ratio_quoted}x dict"
        result.row(f"{name}: median", float(np.median(a)), "ns/read", target=target, met=met,
                   note=f"{np.median(ratio):.2f}x dict (raw), {np.median(net_ratio):.2f}x net of the empty loop; "
                        f"p90 {np.percentile(a, 90):.1f} ns over {repeats} repeats x {number:,} reads{quoted}")
    for name, (ratio_quoted, distribution) in QUOTED.items():
        if name not in per_read:
            result.row(f"{name} (quoted, not measured here)", f"{ratio_quoted}x dict", "",
                       note=f"{distribution} is not installed (make bench-refs): the issue's figure")
    result.data = {"number": number, "repeats": repeats, "per_read_ns": per_read, "stats": stats}
    return result
