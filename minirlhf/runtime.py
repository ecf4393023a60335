"""Where and how a run executes: seeds, device, bf16 autocast, and (under torchrun) the process group.

CPU by default; defaults never query CUDA. `--device cuda` runs in bf16 autocast (weights stay fp32).
"""
from __future__ import annotations

import contextlib
import os
import random

import torch

from .errors import InputError


def seed_everything(seed: int) -> torch.Generator:
    """Seed python and torch; return a torch.Generator for the run's own sampling (data order, rollouts)."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(name)
    raise InputError(f"--device must be cpu or cuda, got {name!r}")


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU (fp32 there keeps runs bit-reproducible)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dist_info() -> tuple[int, int]:
    """(rank, world_size) under torchrun, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return dist_info()[0] == 0
