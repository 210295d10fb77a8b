"""``supervisor replay``: the live policy code over recorded metrics, offline and deterministic."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policies import PolicyConfigError, ReplayInputError, load_config, read_jsonl, replay


def parse_value(text: str) -> Any:
    """``--param`` values: whole numbers, numbers, true/false, else text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def replay_command(config: Path, metrics: Path, params: Mapping[str, str], *, as_json: bool) -> int:
    try:
        bindings = load_config(config)
        initial = {name: parse_value(value) for name, value in params.items()}
        for row in replay(bindings, read_jsonl(metrics), initial):
            if as_json:
                print(json.dumps(row, sort_keys=False))
            elif "param" in row:
                print(
                    f"{row['run']} step {row['step']}: {row['policy']} {row['kind']} "
                    f"{row['param']} {row['old']} -> {row['new']}  ({row['reason']})"
                )
            else:
                what = f"trigger {row['trigger']}" if "trigger" in row else row["kind"]
                print(f"{row['run']} step {row['step']}: {row['policy']} {what}  ({row['reason']})")
    except (PolicyConfigError, ReplayInputError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
