"""Benchmark 6 (full mode only): does supervision find a learning rate as good as a grid search?

examples/train_digits.py, several seeds, every run the same step budget
(EPOCHS epochs). All runs execute in this process through the example's
``train()`` (one torch thread), so every method does the same arithmetic
apart from its learning rate:

* grid: five fixed learning rates (5x compute); "grid best" is the rate with
  the best mean final val loss over seeds, and "oracle" the best rate per seed;
* torch ReduceLROnPlateau in process, stepped with each epoch's val loss (an
  hp-like object whose ``lr`` comes from the scheduler, passed to ``train``);
* the supervisor's ``plateau`` policy, live, with the same options, starting
  from the same lr; its lr per epoch is compared with torch's epoch by epoch;
* Optuna population search (``optuna`` policy, TPE, median pruning) at equal
  total compute to the grid: trials run one after another until five full
  runs' worth of steps is spent; the result is the best completed trial;
* ``optuna_in_run``: one run whose lr is re-searched every few epochs (1x compute).

Reported per method: final val loss and accuracy, mean and standard deviation
over seeds, and the compute used.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._common import ROOT, Result, SupervisorProcess, rel
from bench.training_overhead import _load_example

EPOCHS = 30
GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
START_LR = 0.05  # the example's default: the adaptive methods start untuned
PLATEAU = {"factor": 0.5, "patience": 3, "threshold": 1e-4}
INRUN_SEGMENT_EPOCHS = 3


class TorchPlateauParams:
    """Stands in for a session: ``lr`` follows torch's ReduceLROnPlateau, stepped on each val_loss report."""

    def __init__(self, args: Any) -> None:
        self._opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
        self._sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self._opt, mode="min", **PLATEAU)
        self.weight_decay, self.dropout, self.clip_norm = args.weight_decay, args.dropout, args.clip_norm
        self.version = 0

    @property
    def lr(self) -> float:
        return self._opt.param_groups[0]["lr"]

    def report(self, step: int, /, **metrics: Any) -> None:
        if "val_loss" in metrics:
            self._sched.step(metrics["val_loss"])

    def triggered(self, name: str) -> bool:
        return False

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


def _config(seeds: list[int], tag: str, steps_per_epoch: int) -> str:
    parts = [f"""
[[policy]]
id = "plateau"
type = "plateau"
runs = "q{tag}-plateau-*"
metric = "val_loss"
factor = {PLATEAU['factor']}
patience = {PLATEAU['patience']}
threshold = {PLATEAU['threshold']}

[[policy]]
id = "inrun"
type = "optuna_in_run"
runs = "q{tag}-inrun-*"
metric = "loss"
segment_steps = {INRUN_SEGMENT_EPOCHS * steps_per_epoch}
params = ["lr"]
seed = 0
"""]
    for seed in seeds:
        parts.append(f"""
[[policy]]
id = "optuna-s{seed}"
type = "optuna"
runs = "q{tag}-optuna-s{seed}-*"
metric = "val_loss"
study_name = "q{tag}-s{seed}"
sampler = "tpe"
seed = {seed}
pruner = "median"
n_startup_trials = 2
n_warmup_steps = {10 * steps_per_epoch}
params = ["lr"]
""")
    return "".join(parts)


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    loss = np.array([r["final_val_loss"] for r in runs])
    acc = np.array([r["final_val_acc"] for r in runs])
    return {"val_loss_mean": float(loss.mean()), "val_loss_std": float(loss.std(ddof=1)) if len(loss) > 1 else 0.0,
            "val_acc_mean": float(acc.mean()), "val_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "n": len(runs)}


def run(quick: bool, out: Path | None = None) -> Result:
    out = out or ROOT / "bench" / "results"
    result = Result("control quality")
    example = _load_example()
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    tag = uuid.uuid4().hex[:6]

    def args_for(seed: int, *extra: str) -> Any:
        return example.parse_args(["--epochs", str(EPOCHS), "--seed", str(seed), "--quiet", "--threads", "1",
                                   *extra])

    steps_per_epoch = math.ceil(len(example.load_data(0)[0]) / 32)
    full_steps = EPOCHS * steps_per_epoch
    data: dict[str, Any] = {"seeds": seeds, "epochs": EPOCHS, "steps_per_run": full_steps, "grid": GRID,
                            "plateau": PLATEAU, "start_lr": START_LR}
    grid: dict[float, list[dict[str, Any]]] = {lr: [] for lr in GRID}
    torch_plateau: list[dict[str, Any]] = []
    for seed in seeds:
        for lr in GRID:
            grid[lr].append(example.train(args_for(seed, "--no-sdk", "--lr", str(lr))))
        args = args_for(seed, "--no-sdk", "--lr", str(START_LR))
        torch_plateau.append(example.train(args, hp=TorchPlateauParams(args)))

    sup_plateau: list[dict[str, Any]] = []
    optuna_best: list[dict[str, Any]] = []
    optuna_trials: list[list[dict[str, Any]]] = []
    inrun: list[dict[str, Any]] = []
    lags: list[int] = []
    workdir = Path(__import__("tempfile").mkdtemp(prefix="bench-quality-"))
    config = workdir / "policies.toml"
    config.write_text(_config(seeds, tag, steps_per_epoch))
    with SupervisorProcess(config=config, workdir=workdir) as sup:
        from supervisor.client import OperatorClient

        client = OperatorClient(sup.address)
        for seed in seeds:
            run_name = f"q{tag}-plateau-s{seed}"
            r = example.train(args_for(seed, "--address", sup.address, "--run", run_name, "--lr", str(START_LR)))
            sup_plateau.append(r)
            for entry in client.history(run_name):
                if entry.source == "policy:plateau" and entry.acks:
                    # entry.step: the step of the point the decision answers (the epoch's val report)
                    lags.append(entry.acks[0].step - entry.step)
            # Optuna population at the grid's compute: trials until 5 full runs' steps are spent
            used, trials = 0, []
            while used + full_steps <= len(GRID) * full_steps:
                name = f"q{tag}-optuna-s{seed}-t{len(trials)}"
                t = example.train(args_for(seed, "--address", sup.address, "--run", name, "--wait-params", "10"))
                t["trial_lr"] = t["lr_per_epoch"][0] if t["lr_per_epoch"] else None
                trials.append(t)
                used += t["steps"]
                time.sleep(0.3)  # let the policy tell the study before the next ask
            optuna_trials.append(trials)
            done = [t for t in trials if not t["stopped"]]
            optuna_best.append(min(done, key=lambda t: t["final_val_loss"]) if done else trials[-1])
            inrun.append(example.train(args_for(seed, "--address", sup.address, "--run", f"q{tag}-inrun-s{seed}",
                                                "--lr", str(START_LR))))
        client.close()

    grid_means = {lr: _summary(runs)["val_loss_mean"] for lr, runs in grid.items()}
    best_lr = min(grid_means, key=grid_means.get)
    oracle = [min((grid[lr][i] for lr in GRID), key=lambda r: r["final_val_loss"]) for i in range(len(seeds))]
    methods = {
        f"grid best (lr={best_lr:g}, chosen on mean over seeds; 5x compute)": (grid[best_lr], 5.0),
        "grid oracle (best lr per seed; 5x compute)": (oracle, 5.0),
        f"torch ReduceLROnPlateau in process (start lr {START_LR:g}; 1x)": (torch_plateau, 1.0),
        f"supervisor plateau policy, live (start lr {START_LR:g}; 1x)": (sup_plateau, 1.0),
        "supervisor optuna population + median pruning (best completed trial; <=5x)": (
            optuna_best, float(np.mean([sum(t["steps"] for t in ts) for ts in optuna_trials]) / full_steps)),
        f"supervisor optuna_in_run (segments of {INRUN_SEGMENT_EPOCHS} epochs; 1x)": (inrun, 1.0),
    }
    grid_best = _summary(grid[best_lr])
    for lr in GRID:
        s = _summary(grid[lr])
        result.row(f"fixed lr {lr:g}: final val loss", f"{s['val_loss_mean']:.4f} +- {s['val_loss_std']:.4f}", "",
                   note=f"val acc {s['val_acc_mean']:.4f} +- {s['val_acc_std']:.4f}; {len(seeds)} seeds")
    per_method = {}
    for label, (runs, compute) in methods.items():
        s = _summary(runs)
        per_method[label] = {**s, "compute_x": compute, "final_val_loss": [r["final_val_loss"] for r in runs]}
        target = met = None
        note = f"val acc {s['val_acc_mean']:.4f} +- {s['val_acc_std']:.4f}; compute {compute:.2f}x one run"
        if label.startswith("supervisor"):
            wins = sum(r["final_val_loss"] <= g["final_val_loss"] for r, g in zip(runs, grid[best_lr], strict=True))
            target = "<= grid best val loss"
            met = s["val_loss_mean"] <= grid_best["val_loss_mean"]
            note += f"; <= grid best in {wins}/{len(seeds)} seeds"
        result.row(f"{label}: final val loss", f"{s['val_loss_mean']:.4f} +- {s['val_loss_std']:.4f}", "",
                   target=target or "", met=met, note=note)
    # plateau: supervisor vs torch, epoch by epoch
    agree, first_diff = [], []
    for t, s in zip(torch_plateau, sup_plateau, strict=True):
        a, b = t["lr_per_epoch"], s["lr_per_epoch"]
        same = [math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a, b, strict=False)]
        agree.append(sum(same) / len(same))
        first_diff.append(next((i for i, ok in enumerate(same) if not ok), None))
    result.row("plateau: epochs whose lr equals torch's (supervisor vs in process)",
               f"{np.mean(agree):.0%}", "", note=f"first differing epoch per seed {first_diff}; the policy's change "
               f"reached the trainer {np.median(lags) if lags else float('nan'):.0f} steps (median; max "
               f"{max(lags) if lags else float('nan')}; an epoch is {steps_per_epoch} steps) after the val report "
               f"that caused it; the steps in between trained at the old lr, so their losses, hence later "
               f"decisions, differ")
    trials_per_seed = [len(ts) for ts in optuna_trials]
    pruned = [sum(t["stopped"] for t in ts) for ts in optuna_trials]
    result.row("optuna population: trials / pruned per seed", f"{trials_per_seed} / {pruned}", "",
               note="TPE on lr in the declared range [1e-5, 1] (log), median pruner after 2 trials and 10 epochs; "
                    "best trial lrs " + ", ".join(f"{b['trial_lr']:.3g}" for b in optuna_best))
    data.update(grid={str(lr): runs for lr, runs in grid.items()}, torch_plateau=torch_plateau,
                supervisor_plateau=sup_plateau, optuna_trials=optuna_trials, inrun=inrun, methods=per_method,
                plateau_lag_steps=lags, plateau_lr_agreement=agree, plateau_first_diff=first_diff, best_grid_lr=best_lr)
    result.data = data
    result.plots.append(_plot(data, grid[best_lr], best_lr, out))
    return result


def _plot(data: dict[str, Any], grid_best: list[dict[str, Any]], best_lr: float, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(runs: list[dict[str, Any]], key: str) -> np.ndarray:
        return np.array([[e[key] for e in r["epochs"]] for r in runs if len(r["epochs"]) == EPOCHS])

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    series = {f"grid best lr={best_lr:g}": grid_best, "torch plateau": data["torch_plateau"],
              "supervisor plateau": data["supervisor_plateau"], "optuna_in_run": data["inrun"]}
    for label, runs in series.items():
        c = curve(runs, "val_loss")
        if len(c):
            x = np.arange(1, c.shape[1] + 1)
            axes[0].plot(x, c.mean(0), label=label)
            axes[0].fill_between(x, c.min(0), c.max(0), alpha=0.15)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("val loss (mean, min-max over seeds)")
    axes[0].legend()
    for i, (t, s) in enumerate(zip(data["torch_plateau"], data["supervisor_plateau"], strict=True)):
        axes[1].step(range(1, len(t["lr_per_epoch"]) + 1), t["lr_per_epoch"], where="post", color=f"C{i}",
                     label=f"torch s{i}")
        axes[1].step(range(1, len(s["lr_per_epoch"]) + 1), s["lr_per_epoch"], where="post", color=f"C{i}",
                     linestyle="--", label=f"supervisor s{i}")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("lr at the end of the epoch")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / "control_quality.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rel(path)
