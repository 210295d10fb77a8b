"""Train a small MLP on scikit-learn's digits, with live parameters from the supervisor.

The lines that involve the supervisor are marked ``# sdk``: one ``connect``
call, plain reads of ``hp.lr`` / ``hp.weight_decay`` / ``hp.dropout`` at every
step, ``hp.report`` (never blocks), and ``hp.triggered`` for stop, checkpoint
and rollback. Everything else is an ordinary PyTorch loop.

    supervisor serve --port 50051 &
    SUPERVISOR_ADDR=127.0.0.1:50051 python examples/train_digits.py --sleep 0.02
    supervisor set digits-01 lr=0.01          # from another shell
    supervisor trigger digits-01 checkpoint

Without a supervisor it trains offline on the defaults (one warning).
``--no-sdk`` runs the same loop on plain constants without importing the SDK,
which is what the overhead benchmark compares against.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.relu(self.fc1(x)))
        x = self.dropout(torch.relu(self.fc2(x)))
        return self.out(x)


def load_data(seed: int, val_fraction: float = 0.25) -> tuple[torch.Tensor, ...]:
    """Digits (1,797 8x8 images, shipped with scikit-learn), split by ``seed``."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


class Constants:
    """``--no-sdk``: the same attributes as a session, fixed, and no SDK code at all."""

    def __init__(self, **values: float) -> None:
        self.__dict__.update(values)
        self.version = 0

    def report(self, step: int, /, **metrics: Any) -> None:
        pass

    def triggered(self, name: str) -> bool:
        return False

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


def connect_params(args: argparse.Namespace) -> Any:
    if args.no_sdk:
        return Constants(lr=args.lr, weight_decay=args.weight_decay, dropout=args.dropout, clip_norm=args.clip_norm)
    from trainer_sdk import Float, connect  # sdk

    return connect(  # sdk
        run=args.run,
        params={
            "lr": Float(args.lr, min=1e-5, max=1.0, log=True),
            "weight_decay": Float(args.weight_decay, min=0.0, max=0.1),
            "dropout": Float(args.dropout, min=0.0, max=0.9),
            "clip_norm": Float(args.clip_norm, min=1e-3, max=1e6),
        },
        address=args.address,
        transport=args.transport,  # "process": the connection lives in a sidecar, not in threads here
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    model.train()
    return nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(args: argparse.Namespace, hp: Any = None) -> dict[str, Any]:
    """Train; ``hp`` defaults to a session (or constants with --no-sdk); benchmarks pass their own."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train, y_train, x_val, y_val = load_data(args.seed)
    model = MLP(args.hidden, args.dropout)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    batch = args.batch_size
    steps_per_epoch = args.steps_per_epoch or math.ceil(len(x_train) / batch)
    checkpoint_dir = Path(args.checkpoint_dir)
    good = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})  # last good state, in memory

    if hp is None:
        hp = connect_params(args)  # sdk
    if args.wait_params:  # a search trial waits for the values the supervisor suggests
        deadline = time.monotonic() + args.wait_params
        while hp.version == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
    summary: dict[str, Any] = {"run": args.run, "seed": args.seed, "sdk": not args.no_sdk, "epochs": [],
                               "stopped": False, "rollbacks": 0, "checkpoints": []}
    start = time.perf_counter()
    step = 0
    try:
        for epoch in range(args.epochs):
            order = torch.randperm(len(x_train))
            total, count = 0.0, 0
            for i in range(steps_per_epoch):
                for group in opt.param_groups:  # sdk: live values, read at every step
                    group["lr"] = hp.lr
                    group["weight_decay"] = hp.weight_decay
                model.dropout.p = hp.dropout  # sdk

                idx = order[(i * batch) % len(x_train):][:batch]
                loss = loss_fn(model(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.clip_norm)
                opt.step()
                hp.report(step, loss=loss.detach(), grad_norm=grad_norm)  # sdk: never blocks
                total += loss.item()
                count += 1
                step += 1

                if hp.triggered("checkpoint"):  # sdk
                    checkpoint_dir.mkdir(parents=True, exist_ok=True)
                    path = checkpoint_dir / f"{args.run}-step{step}.pt"
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, path)
                    summary["checkpoints"].append(str(path))
                    print(f"checkpoint saved to {path}", flush=True)
                if hp.triggered("rollback"):  # sdk
                    model.load_state_dict(good["model"])
                    opt.load_state_dict(good["opt"])
                    summary["rollbacks"] += 1
                    print(f"rolled back to the last good state (epoch {good.get('epoch', 'start')})", flush=True)
                if hp.triggered("stop"):  # sdk
                    summary["stopped"] = True
                    break
                if args.sleep:
                    time.sleep(args.sleep)

            val_loss, val_acc = evaluate(model, x_val, y_val)
            train_loss = total / max(count, 1)
            hp.report(step, val_loss=val_loss, val_acc=val_acc, train_loss=train_loss)  # sdk
            hp.flush(0)  # sdk: policies watch epoch metrics; send them now, without waiting
            lr = opt.param_groups[0]["lr"]
            summary["epochs"].append({"epoch": epoch, "step": step, "lr": lr, "train_loss": train_loss,
                                      "val_loss": val_loss, "val_acc": val_acc,
                                      "time_s": time.perf_counter() - start})
            if not args.quiet:
                print(f"epoch {epoch:3d}  lr {lr:.4g}  train_loss {train_loss:.4f}  "
                      f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}", flush=True)
            if math.isfinite(val_loss):
                good = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch})
            if summary["stopped"]:
                print(f"stopped by the supervisor at step {step}", flush=True)
                break
        summary["loop_s"] = time.perf_counter() - start
    finally:
        hp.close()  # sdk: sends what is buffered, says goodbye
    summary.update(wall_s=time.perf_counter() - start, steps=step, version=hp.version,
                   final_val_loss=summary["epochs"][-1]["val_loss"] if summary["epochs"] else None,
                   final_val_acc=summary["epochs"][-1]["val_acc"] if summary["epochs"] else None,
                   lr_per_epoch=[e["lr"] for e in summary["epochs"]])
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="digits-01", help="run name at the supervisor")
    p.add_argument("--address", default=os.environ.get("SUPERVISOR_ADDR"),
                   help="supervisor host:port (default $SUPERVISOR_ADDR; none: offline)")
    p.add_argument("--no-sdk", action="store_true", help="plain constants, no SDK (overhead baseline)")
    p.add_argument("--transport", choices=("thread", "process"), default="thread",
                   help="where the SDK's connection lives: threads in this process, or a sidecar process")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps-per-epoch", type=int, default=0, help="default: one pass over the training set")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=1e4, help="gradient clipping norm (default: large, no clipping)")
    p.add_argument("--wait-params", type=float, default=0.0, metavar="SECONDS",
                   help="before training, wait up to this long for the supervisor's first change (search trials)")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per step, to make a demo watchable")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.add_argument("--json-summary", type=Path, default=None, help="write final metrics and the lr per epoch here")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = train(args)
    print(f"done: {summary['steps']} steps in {summary['wall_s']:.2f}s, val_loss {summary['final_val_loss']:.4f}, "
          f"val_acc {summary['final_val_acc']:.4f}", flush=True)
    if args.json_summary:
        args.json_summary.parent.mkdir(parents=True, exist_ok=True)
        args.json_summary.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
