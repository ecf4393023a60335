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


# ---------------------------------------------------------------------------------------------- --report_to
REPORTERS = ("tensorboard", "wandb")


def check_report_to(report_to: str) -> list[str]:
    """The writers `--report_to=tensorboard,wandb` names, each installed; else an InputError saying what to install."""
    names = [n.strip() for n in (report_to or "").split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in REPORTERS:
            raise InputError(f"--report_to: unknown {name!r}; choose from {', '.join(REPORTERS)} (comma-separated)")
        try:
            if name == "tensorboard":
                import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
            else:
                import wandb  # noqa: F401
        except ImportError:
            raise InputError(f"--report_to={name}: the {name} package is not installed; pip install {name} "
                             f"(or pip install -e \".[{name}]\")") from None
    return names


class Reporters:
    """The rows of metrics.jsonl, also written to TensorBoard (event files in <out>/tensorboard, through
    torch.utils.tensorboard) and/or wandb, under the same metric names; numbers only, at the row's step or
    iteration. metrics.jsonl stays the record: these are views of it."""

    def __init__(self, report_to: str, out_dir, step_key: str, config: dict | None = None, enabled: bool = True):
        self.step_key, self.writers = step_key, []
        names = check_report_to(report_to) if enabled else []
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter
            self.writers.append(("tensorboard", SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))))
        if "wandb" in names:
            import wandb
            self.writers.append(("wandb", wandb.init(project="minirlhf", dir=str(out_dir), config=config or {})))

    def log(self, row: dict):
        step = row.get(self.step_key)
        scalars = {k: v for k, v in row.items() if k != self.step_key and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        for kind, w in self.writers:
            if kind == "tensorboard":
                for k, v in scalars.items():
                    w.add_scalar(k, v, step)
                w.flush()
            else:
                w.log(scalars, step=step)

    def close(self):
        for kind, w in self.writers:
            (w.close if kind == "tensorboard" else w.finish)()
        self.writers = []
