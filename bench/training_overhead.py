"""Benchmark 3: what the SDK costs a real training loop (examples/train_digits.py on CPU).

A worker process imports examples/train_digits.py and runs its ``train()``
repeatedly, interleaving three variants in rotating order (ABC, BCA, CAB, ...):

* ``no-sdk``: ``--no-sdk``, plain constants, the SDK is not used;
* ``no-sdk-again``: the same once more, an A/A control: its ratio to ``no-sdk``
  is the noise floor of this machine during this run;
* ``no-sdk+neighbour``: ``no-sdk`` while another process spins a quarter of
  the time (7.5 ms of every 30 ms), about what the supervisor uses under
  ``sdk+ops``. These 2 vCPUs are not independent (measured here: a neighbour
  slows the loop's own CPU time by a few percent), so this control shows what
  any process beside the trainer costs it, SDK or not.
* ``sdk``: connected to a supervisor subprocess, ``report`` every step (loss,
  grad_norm as 0-d tensors) and val metrics every epoch, no changes;
* ``sdk+ops``: the same, while this (parent) process changes ``lr`` through
  ``OperatorClient.set`` once every 10 training steps' worth of time (the step
  time is measured on a warm-up ``no-sdk`` run in the same worker);
* ``sdk-no-epoch-flush``: as ``sdk``, without the example's ``hp.flush(0)``
  after each epoch's validation metrics. Its epochs last tens of milliseconds
  here, so that flush sends a batch (and gets it acknowledged) thirty times a
  second; a real epoch lasts minutes. This variant shows what that costs.
* ``sdk-process`` and ``sdk-process+ops``: as ``sdk`` and ``sdk+ops`` with
  ``transport="process"``: the connection lives in a sidecar process and the
  training process runs no SDK thread. The sidecar's CPU (it is this worker's
  child) is reported beside it.

One process for all variants removes interpreter and torch start-up from the
comparison; the same seed makes every variant do the same arithmetic.
Reported: the median over rounds of each variant's loop time divided by the
``no-sdk`` loop time of the same round (loop = first step to last epoch's
report, before ``close()``), and the same including ``close()`` (which waits
until the supervisor has stored every point). The supervisor shares the same
2 cores, so its CPU use during a variant is charged to that variant's wall time:
it is reported next to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import PYTHON, ROOT, Result, SupervisorProcess, cpu_seconds, summary

VARIANTS = ("no-sdk", "no-sdk-again", "no-sdk+neighbour", "sdk", "sdk+ops", "sdk-no-epoch-flush", "sdk-process",
            "sdk-process+ops")
CONTROLS = ("no-sdk-again", "no-sdk+neighbour")  # no SDK at all: what the machine alone does to the loop
NEIGHBOUR_DUTY = (0.0075, 0.0225)  # seconds busy, seconds asleep: a quarter of a core, as the supervisor under ops
_NEIGHBOUR = (
    "import time\n"
    "while True:\n"
    f"    t = time.perf_counter()\n"
    f"    while time.perf_counter() - t < {NEIGHBOUR_DUTY[0]}: pass\n"
    f"    time.sleep({NEIGHBOUR_DUTY[1]})\n"
)
JUDGED = ("sdk", "sdk+ops", "sdk-process", "sdk-process+ops")  # the spec's loop; the others explain it
TARGET = 0.01
OPS_EVERY_STEPS = 10


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("train_digits", ROOT / "examples" / "train_digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _voluntary_switches() -> int:
    """Voluntary context switches of the calling thread so far (it blocked: on the GIL, a lock, I/O)."""
    import threading

    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split(":")[1])
    return 0


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def worker(address: str, rounds: int, epochs: int) -> None:
    """Runs in the worker process; prints one JSON line per run and BEGIN/END markers."""
    example = _load_example()

    def train(variant: str, tag: str) -> dict[str, Any]:
        argv = ["--epochs", str(epochs), "--seed", "0", "--quiet", "--threads", "1"]
        if variant.startswith("no-sdk"):
            argv.append("--no-sdk")
        else:
            argv += ["--address", address, "--run", f"overhead-{variant}"]
        if variant.startswith("sdk-process"):
            argv += ["--transport", "process"]
        args = example.parse_args(argv)
        hp = example.connect_params(args)
        if not variant.startswith("no-sdk"):
            # Connected before the clock starts, as a long run is: what is measured is the
            # steady state, not the start of a sidecar process or of the connection.
            hp.wait_connected(10)
        if variant == "sdk-no-epoch-flush":
            type(hp).flush = lambda self, timeout=None: True  # a class of this session's own
        neighbour = None
        if variant == "no-sdk+neighbour":
            neighbour = subprocess.Popen([sys.executable, "-c", _NEIGHBOUR])
            time.sleep(0.1)  # past its start-up
        sidecar = getattr(getattr(hp, "_transport", None), "_proc", None)
        print(f"BEGIN {variant} {tag}", flush=True)
        sidecar_start_cpu = cpu_seconds(sidecar.pid) if sidecar is not None else 0.0  # importing, connecting
        c0, t0, v0, k0 = time.process_time(), time.thread_time(), _voluntary_switches(), _children_cpu()
        summary = example.train(args, hp)
        cpu, main_cpu = time.process_time() - c0, time.thread_time() - t0
        sidecar_cpu = _children_cpu() - k0  # the sidecar, waited for by close()
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
        switches = (_voluntary_switches() - v0) / max(summary["steps"], 1)
        print(f"END {variant} {tag}", flush=True)
        times = [0.0] + [e["time_s"] for e in summary["epochs"]]
        epochs_s = np.diff(times).tolist()
        epoch_s = float(np.median(epochs_s[1:]))  # the first epoch includes connecting
        return {"variant": variant, "tag": tag, "loop_s": summary["loop_s"], "epoch_s": epoch_s, "epochs_s": epochs_s,
                "wall_s": summary["wall_s"], "sidecar_cpu_s": sidecar_cpu, "sidecar_start_cpu_s": sidecar_start_cpu,
                "steps": summary["steps"], "cpu_s": cpu, "main_cpu_s": main_cpu, "switches_per_step": switches,
                "version": summary["version"],
                "final_val_loss": summary["final_val_loss"]}

    warm = train("no-sdk", "warmup")
    print("STEP_S " + json.dumps(warm["loop_s"] / warm["steps"]), flush=True)
    train("sdk", "warmup")
    for r in range(rounds):
        k = r % len(VARIANTS)
        order = VARIANTS[k:] + VARIANTS[:k]
        for variant in order:
            print("RESULT " + json.dumps({**train(variant, str(r)), "round": r}), flush=True)


class Operator(threading.Thread):
    """Changes lr of the ``run_name`` run every ``interval`` seconds while enabled."""

    def __init__(self, address: str) -> None:
        super().__init__(name="bench-operator", daemon=True)
        from supervisor.client import OperatorClient

        self.client = OperatorClient(address)
        self.enabled = threading.Event()
        self.stop = threading.Event()
        self.interval = 0.01
        self.run_name = ""
        self.sets: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def run(self) -> None:
        values = (0.05, 0.045)
        i = 0
        while not self.stop.is_set():
            if not self.enabled.wait(0.1):
                continue
            t = time.perf_counter()
            try:
                self.client.set(self.run_name, {"lr": values[i % 2]})
                self.sets[self.run_name] = self.sets.get(self.run_name, 0) + 1
            except Exception:  # the run may not be registered yet in the first milliseconds
                self.errors[self.run_name] = self.errors.get(self.run_name, 0) + 1
            i += 1
            time.sleep(max(0.0, self.interval - (time.perf_counter() - t)))


def _sidecar_note(runs: list[dict[str, Any]], variant: str) -> str:
    own = [r for r in runs if r["variant"] == variant and r["sidecar_cpu_s"] > 0]
    if not own:
        return ""
    cpu = float(np.median([r["sidecar_cpu_s"] for r in own]))
    start = float(np.median([r["sidecar_start_cpu_s"] for r in own]))
    after = float(np.median([r["sidecar_cpu_s"] - r["sidecar_start_cpu_s"] for r in own]))
    wall = float(np.median([r["wall_s"] for r in own]))
    return (f"; its sidecar process used {cpu * 1e3:.0f} ms of CPU per run: {start * 1e3:.0f} ms starting "
            f"(before the clock), {after * 1e3:.0f} ms in the loop and close(), {after / wall * 100:.0f}% of a "
            "core over the loop (/proc, 10 ms ticks)")


def _bootstrap_ci(ratios: np.ndarray, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(ratios, size=(n, len(ratios)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def run(quick: bool, out: Path | None = None) -> Result:
    result = Result("training overhead")
    # Many short runs, finely interleaved: this machine's speed drifts by tens of
    # percent over seconds (see the A/A control), so pairs must be close in time.
    rounds, epochs = (4, 6) if quick else (48, 8)
    runs: list[dict[str, Any]] = []
    sup_cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with SupervisorProcess() as sup:
        op = Operator(sup.address)
        op.start()
        cmd = [PYTHON, "-m", "bench.training_overhead", "--worker", "--address", sup.address,
               "--rounds", str(rounds), "--epochs", str(epochs)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        began: tuple[float, float] = (0.0, 0.0)
        step_s = float("nan")
        for line in proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "STEP_S":
                step_s = json.loads(rest)
                op.interval = OPS_EVERY_STEPS * step_s
            elif kind == "BEGIN":
                variant = rest.split()[0]
                if variant.endswith("+ops"):
                    op.run_name = f"overhead-{variant}"
                    op.enabled.set()
                began = (time.perf_counter(), cpu_seconds(sup.pid))
            elif kind == "END":
                op.enabled.clear()
                variant, tag = rest.split()
                if tag != "warmup":
                    sup_cpu[variant].append((cpu_seconds(sup.pid) - began[1]) / (time.perf_counter() - began[0]))
            elif kind == "RESULT":
                runs.append(json.loads(rest))
        if proc.wait() != 0:
            raise RuntimeError(f"worker failed with exit code {proc.returncode}")
        op.stop.set()
        op.join(2)
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["variant"]] = r
    ratios: dict[str, dict[str, list[float]]] = {}
    for variant in VARIANTS[1:]:
        ratios[variant] = {
            "loop": [rr[variant]["loop_s"] / rr["no-sdk"]["loop_s"] for rr in by_round.values()],
            "with_close": [rr[variant]["wall_s"] / rr["no-sdk"]["wall_s"] for rr in by_round.values()],
            "epoch": [rr[variant]["epoch_s"] / rr["no-sdk"]["epoch_s"] for rr in by_round.values()],
            "cpu": [rr[variant]["cpu_s"] / rr["no-sdk"]["cpu_s"] for rr in by_round.values()],
            "main_cpu": [rr[variant]["main_cpu_s"] / rr["no-sdk"]["main_cpu_s"] for rr in by_round.values()],
        }
    switches = {v: float(np.median([r["switches_per_step"] for r in runs if r["variant"] == v])) for v in VARIANTS}
    pooled = {v: float(np.median([x for r in runs if r["variant"] == v for x in r["epochs_s"][1:]])) for v in VARIANTS}
    base = summary([r["loop_s"] for r in runs if r["variant"] == "no-sdk"])
    steps = runs[0]["steps"]
    result.row("no-sdk loop time: median", base["p50"], "s",
               note=f"{steps} steps ({epochs} epochs), {rounds} rounds; step {step_s * 1e3:.3f} ms in the warm-up; "
                    f"supervisor CPU meanwhile {np.median(sup_cpu['no-sdk']) * 100:.0f}% of a core")
    for variant in VARIANTS[1:]:
        loop = np.array(ratios[variant]["loop"])
        epoch = np.array(ratios[variant]["epoch"])
        close = np.array(ratios[variant]["with_close"])
        cpu = np.array(ratios[variant]["cpu"])
        extra = ""
        if variant.endswith("+ops"):
            run_name = f"overhead-{variant}"
            extra = (f"; {op.sets.get(run_name, 0)} sets at one per {OPS_EVERY_STEPS} steps "
                     f"({op.interval * 1e3:.1f} ms), {op.errors.get(run_name, 0)} errors")
        steady = np.median(epoch) - 1
        lo, hi = _bootstrap_ci(epoch)
        is_control = variant in CONTROLS
        judged = variant in JUDGED
        label = {"no-sdk-again": "difference (A/A noise floor)",
                 "no-sdk+neighbour": "difference (a neighbour process, no SDK)"}.get(variant, "overhead")
        result.row(f"{variant}: steady-state {label} "
                   "(median epoch time) vs no-sdk", steady * 100, "%",
                   target="< 1%" if judged else "", met=bool(steady < TARGET) if judged else None,
                   note=f"median over {len(epoch)} rounds of the per-round ratio of median epoch times "
                        f"(epochs 2..{epochs}), 95% bootstrap CI [{(lo - 1) * 100:+.1f}%, {(hi - 1) * 100:+.1f}%], "
                        f"min {epoch.min():.3f}, max {epoch.max():.3f}; all epochs pooled "
                        f"{(pooled[variant] / pooled['no-sdk'] - 1) * 100:+.1f}%; supervisor CPU "
                        f"{np.median(sup_cpu[variant]) * 100:.0f}% of a core during the run{extra}")
        whole = np.median(loop) - 1
        result.row(f"{variant}: whole-loop {'difference' if is_control else 'overhead'} (first step to last report) "
                   "vs no-sdk", whole * 100, "%", target="< 1%" if judged else "",
                   met=bool(whole < TARGET) if judged else None,
                   note=f"per-round ratios min {loop.min():.3f} max {loop.max():.3f}; "
                        "the session connected before the first step; "
                        f"with close() (waits until all points are stored) {(np.median(close) - 1) * 100:+.1f}%; "
                        f"trainer process CPU {(np.median(cpu) - 1) * 100:+.1f}%, its training thread's CPU "
                        f"{(np.median(ratios[variant]['main_cpu']) - 1) * 100:+.1f}%; the training thread blocked "
                        f"(voluntary context switches) {switches[variant]:.2f} times per step, no-sdk "
                        f"{switches['no-sdk']:.2f}{_sidecar_note(runs, variant)}")
    result.data = {"runs": runs, "ratios": ratios, "pooled_epoch_s": pooled, "switches_per_step": switches,
                   "supervisor_cpu_fraction": sup_cpu,
                   "step_s": step_s,
                   "operator_sets": op.sets, "operator_errors": op.errors, "operator_interval_s": op.interval}
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--address", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    a = p.parse_args()
    worker(a.address, a.rounds, a.epochs)
    sys.exit(0)
