"""Metrics: one JSON object per step in metrics.jsonl, a tqdm bar, and a guard against NaN.

Metric names carry a prefix that says where they come from (`train/loss`, `ppo/clipfrac`,
`env/reward_mean`, ...); the README's glossary explains each one.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tqdm import tqdm  # plain tqdm: tqdm.auto warns in kernels without ipywidgets

from .errors import InputError, TrainingDiverged  # noqa: F401  (TrainingDiverged importable from here, as before)


def check_finite(metrics: dict, step: int, keys=None, unit: str = "step"):
    """Raise TrainingDiverged naming the step (or iteration: `unit`) and the first non-finite metric.

    Trainers call it on the loss and the gradient norm after backward and BEFORE optimizer.step(), so
    a NaN never reaches the weights, and before any checkpoint of that step is written.
    """
    for k in keys or metrics:
        v = metrics.get(k)
        if isinstance(v, float) and not math.isfinite(v):
            raise TrainingDiverged(f"{unit} {step}: {k} is {v}; stopping (the last good checkpoint is kept)")


class MetricsLogger:
    """Append-only JSONL writer (flushed each row, so a killed run keeps what it logged)."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.rows: list[dict] = []
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, row: dict):
        row = {k: (round(v, 8) if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"{path}:{i}: not valid JSON") from None
    return rows


def progress(total: int, initial: int = 0, desc: str = "", enabled: bool = True):
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, leave=True)


def close_progress_bars():
    """End every open bar's line, so that an error printed next starts on a line of its own."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
