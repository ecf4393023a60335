"""Resumable training state, without pickle: safetensors for tensors, JSON for the rest.

A checkpoint is a directory `checkpoints/step-N/` holding the modules' weights, the optimizer's state,
the RNG states (python, torch, and any torch.Generator the trainer samples with) and a JSON of extras
(the step, the KL controller, ...). It is written completely, fsynced, and only then does the pointer
file `checkpoints/LATEST` (itself replaced atomically) name it. A run killed at any moment therefore
resumes from the last *complete* checkpoint, never a half-written one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from .checkpoint import atomic_write, load_into, load_json, load_tensors, save_json, save_tensors
from .errors import InputError


def _flatten_optimizer(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _untie(state: dict) -> dict:
    """Drop GPT-2's tied `lm_head.weight` (safetensors refuses two names for one tensor)."""
    return {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}


def _retie(tensors: dict, expected: dict) -> dict:
    for key in expected:
        if key.endswith("lm_head.weight") and key not in tensors:
            tensors[key] = tensors.get(key[:-len("lm_head.weight")] + "transformer.wte.weight")
    return {k: v for k, v in tensors.items() if v is not None}


def rng_state(generators: dict[str, torch.Generator]) -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    tensors.update({f"gen.{k}": g.get_state() for k, g in generators.items()})
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]]}


def set_rng_state(tensors: dict, meta: dict, generators: dict[str, torch.Generator]):
    torch.set_rng_state(tensors["torch"])
    for k, g in generators.items():
        g.set_state(tensors[f"gen.{k}"])
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))


def save_checkpoint(out_dir, step: int, modules: dict, optimizer, generators: dict, extra: dict,
                    keep: int = 2):
    """Write checkpoints/step-N completely, then point LATEST at it; keep the newest `keep`."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_tensors(tmp / f"{name}.safetensors", _untie(module.state_dict()))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    rng_tensors, rng_meta = rng_state(generators)
    save_tensors(tmp / "rng.safetensors", rng_tensors)
    save_json(tmp / "state.json", {"step": step, "optimizer": opt_meta, "rng": rng_meta, "extra": extra})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write(root / "LATEST", lambda p: Path(p).write_text(final.name + "\n"))
    steps = sorted((int(d.name[5:]) for d in root.glob("step-*") if d.name[5:].isdigit()), reverse=True)
    for old in steps[keep:]:
        shutil.rmtree(root / f"step-{old}", ignore_errors=True)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_checkpoint(out_dir) -> Path | None:
    pointer = Path(out_dir) / "checkpoints" / "LATEST"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise InputError(f"{pointer}: names {path.name}, which is incomplete or missing")
    return path


def load_checkpoint(path, modules: dict, optimizer, generators: dict) -> tuple[int, dict]:
    """Restore everything save_checkpoint wrote; returns (step, extra)."""
    path = Path(path)
    state = load_json(path / "state.json")
    for name, module in modules.items():
        tensors = _retie(load_tensors(path / f"{name}.safetensors"), module.state_dict())
        load_into(module, tensors, path / f"{name}.safetensors")
    optimizer.load_state_dict(_unflatten_optimizer(load_tensors(path / "optimizer.safetensors"),
                                                   state["optimizer"]))
    set_rng_state(load_tensors(path / "rng.safetensors"), state["rng"], generators)
    return state["step"], state["extra"]


def prepare_out_dir(out_dir, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber an existing run. Returns the checkpoint to resume from, if any.

    --resume with no checkpoint yet starts fresh (a run killed before its first save).
    """
    out = Path(out_dir)
    if resume:
        return latest_checkpoint(out) if out.exists() else None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out}: already exists and is not empty (pass --resume to continue it, "
                             f"or --overwrite to replace it)")
        shutil.rmtree(out)
    return None


def truncate_metrics(path, step_key: str, last_step: int):
    """On resume: drop metric rows after the checkpoint's step (and a half-written last line)."""
    path = Path(path)
    if not path.exists():
        return
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get(step_key, -1) <= last_step:
            rows.append(line)
    atomic_write(path, lambda p: Path(p).write_text("".join(r + "\n" for r in rows), encoding="utf-8"))
