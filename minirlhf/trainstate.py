"""Resumable training state, without pickle: safetensors for tensors, JSON for the rest.

A checkpoint is a directory `checkpoints/step-N/` holding the modules' weights (heads included), the
optimizer's state, the RNG states of every rank (python, torch, and any torch.Generator the trainer
samples with) and a `state.json` (the step, the number of ranks, the KL controller, ...). The learning
rate needs no state: it is a pure function of the step (optim.lr_at).

Writing (crash-safe at every moment): each file goes to `.step-N.partial/` (temp file, fsync, rename),
`state.json` last; the finished directory is renamed to `step-N`, and only then does the pointer file
`checkpoints/LATEST` (itself replaced atomically) name it. The two newest checkpoints are kept.

Resuming (`latest_checkpoint`) loads a checkpoint only if it is complete: named `step-N` with a
`state.json` that parses and says step N. A `.partial` directory is never looked at. If LATEST is
missing, or names a directory that is missing or incomplete, resume falls back to the newest complete
`step-N` with a warning; if LATEST exists but no complete checkpoint does, it stops with an error (rather
than silently start again). A checkpoint that is complete but whose files are damaged (disk corruption,
hand edits) is an error naming the file: it is never skipped silently, and nothing is overwritten.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import torch

from .checkpoint import atomic_write, load_into, load_json, load_tensors, save_json, save_tensors
from .errors import InputError
from .runtime import all_gather, barrier, dist_info, is_main_process


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


def _keep_hyperparameters(meta: dict, optimizer) -> dict:
    """The checkpoint's param groups with the hyperparameters (lr, weight decay, betas, eps) of `optimizer`,
    which the trainer built from the config: the moments come back, and a setting changed on resume
    (--allow-changed=lr) takes effect even under a constant schedule. With unchanged settings nothing differs: a
    schedule sets the lr before every step anyway."""
    groups, current = meta["param_groups"], optimizer.state_dict()["param_groups"]
    if len(groups) != len(current):
        return meta  # load_state_dict says what does not match
    return {"param_groups": [{**old, **{k: v for k, v in new.items() if k != "params"}}
                             for old, new in zip(groups, current)]}


def _untie(state: dict) -> dict:
    """Drop GPT-2's tied `lm_head.weight` (safetensors refuses two names for one tensor)."""
    return {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}


def _retie(tensors: dict, expected: dict) -> dict:
    for key in expected:
        if key.endswith("lm_head.weight") and key not in tensors:
            tensors[key] = tensors.get(key[:-len("lm_head.weight")] + "transformer.wte.weight")
    return {k: v for k, v in tensors.items() if v is not None}


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors: torch's, each generator's, and python's (625 ints + gauss)."""
    version, state, gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "python": torch.tensor(state, dtype=torch.int64),
               "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64)}
    tensors.update({f"gen.{k}": g.get_state() for k, g in generators.items()})
    return tensors


def set_rng_state(tensors: dict, generators: dict[str, torch.Generator], python_version: int = 3):
    torch.set_rng_state(tensors["torch"])
    for k, g in generators.items():
        g.set_state(tensors[f"gen.{k}"])
    gauss = tensors["python_gauss"].item()
    random.setstate((python_version, tuple(int(x) for x in tensors["python"].tolist()),
                     None if gauss != gauss else gauss))


def save_checkpoint(out_dir, step: int, modules: dict, optimizer, generators: dict, extra: dict,
                    keep: int = 2):
    """Write checkpoints/step-N completely, then point LATEST at it; keep the newest `keep`.

    Call it on every rank: the ranks' RNG states are gathered to rank 0, which alone writes.
    """
    rank_states = {f"rank{r}.{k}": t for k, v in rng_state(generators).items()
                   for r, t in enumerate(all_gather(v))}
    if not is_main_process():
        return
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp, old = root / f".step-{step}.partial", root / f".step-{step}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_tensors(tmp / f"{name}.safetensors", _untie(module.state_dict()))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    save_tensors(tmp / "rng.safetensors", rank_states)
    save_json(tmp / "state.json", {"step": step, "world_size": dist_info()[1], "optimizer": opt_meta,
                                   "python_rng_version": random.getstate()[0], "extra": extra})
    _fsync_dir(tmp)
    if final.exists():  # the same step saved twice (a resumed run's end): swap, then delete the old one
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write(root / "LATEST", lambda p: Path(p).write_text(final.name + "\n"))
    shutil.rmtree(old, ignore_errors=True)
    for old_step in _complete_steps(root)[keep:]:
        if old_step != step:
            shutil.rmtree(root / f"step-{old_step}", ignore_errors=True)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_complete(path: Path) -> bool:
    """A `step-N` directory whose state.json parses and says step N (state.json is written last)."""
    m = re.fullmatch(r"step-(\d+)", path.name)
    if not m or not (path / "state.json").is_file():
        return False
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(state, dict) and state.get("step") == int(m.group(1))


def _complete_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under `root`, newest first."""
    if not root.is_dir():
        return []
    return sorted((int(d.name[5:]) for d in root.glob("step-*") if _is_complete(d)), reverse=True)


def latest_checkpoint(out_dir) -> Path | None:
    """The checkpoint a resume loads: the one LATEST names if complete, else the newest complete one."""
    root = Path(out_dir) / "checkpoints"
    pointer = root / "LATEST"
    named = pointer.read_text(encoding="utf-8", errors="replace").strip() if pointer.is_file() else None
    if named is not None and re.fullmatch(r"step-\d+", named) and _is_complete(root / named):
        return root / named
    steps = _complete_steps(root)
    if steps:
        found = root / f"step-{steps[0]}"
        why = f"names {named!r}, which is missing or incomplete" if named is not None else "is missing"
        warnings.warn(f"{pointer}: {why}; resuming from the newest complete checkpoint, {found.name}")
        return found
    if named is not None:
        raise InputError(f"{pointer}: names {named!r}, which is missing or incomplete, and no complete "
                         f"checkpoint is left (pass --overwrite to start the run again)")
    return None


def load_checkpoint(path, modules: dict, optimizer, generators: dict) -> tuple[int, dict]:
    """Restore everything save_checkpoint wrote (this rank's RNG states); returns (step, extra).

    A damaged or mismatched checkpoint is one InputError naming it, never a traceback.
    """
    path = Path(path)
    state = load_json(path / "state.json")
    rank, world = dist_info()
    if state.get("world_size", 1) != world:
        raise InputError(f"{path}: written by a run of {state.get('world_size', 1)} process(es); resume it with "
                         f"the same number (torchrun --nproc_per_node {state.get('world_size', 1)}), not {world}")
    try:
        for name, module in modules.items():
            tensors = _retie(load_tensors(path / f"{name}.safetensors"), module.state_dict())
            load_into(module, tensors, path / f"{name}.safetensors")
        optimizer.load_state_dict(_unflatten_optimizer(load_tensors(path / "optimizer.safetensors"),
                                                       _keep_hyperparameters(state["optimizer"], optimizer)))
        prefix = f"rank{rank}."
        rng = {k[len(prefix):]: v for k, v in load_tensors(path / "rng.safetensors").items() if k.startswith(prefix)}
        set_rng_state(rng, generators, state.get("python_rng_version", 3))
        return state["step"], state["extra"]
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        what = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"{path}: damaged or incompatible checkpoint ({type(e).__name__}: {what})") from None


RUN_MARKERS = ("train_config.json", "checkpoints", "metrics.jsonl", "config.json", "tokenizer.json")


def check_inputs_outside(out_dir, inputs):
    """`inputs` (paths a run reads) may not be `out_dir` or lie inside it: a run never writes over, or
    with --overwrite deletes, what it reads."""
    out = Path(out_dir).resolve()
    for inp in inputs:
        path = Path(inp).resolve()
        if path == out or out in path.parents:
            raise InputError(f"{out_dir}: --out must not be or contain an input of the run ({inp})")


def check_out_dir(out_dir, resume: bool, overwrite: bool, inputs=()) -> Path | None:
    """Refuse to clobber an existing run; return the checkpoint to resume from, if any. Changes nothing.

    * an existing, non-empty `out_dir` needs --resume (continue it) or --overwrite (replace it), and
      --overwrite only replaces what looks like a minirlhf output (train_config.json, checkpoints/, ...);
    * --resume with no checkpoint yet starts fresh (a run killed before its first save);
    * `inputs` (paths the run reads) may not be `out_dir` or lie inside it.
    """
    out = Path(out_dir)
    check_inputs_outside(out, [i for i in inputs if i is not None])
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return None
    looks_like_run = any((out / m).exists() for m in RUN_MARKERS)
    if resume:  # a run writes train_config.json before anything else, so one killed early has it
        if not (out / "checkpoints").exists() and not (out / "train_config.json").exists():
            raise InputError(f"{out}: --resume, but it holds no minirlhf run (no checkpoints/ or train_config.json)")
        return latest_checkpoint(out)
    if not overwrite:
        raise InputError(f"{out}: already exists and is not empty (pass --resume to continue it, "
                         f"or --overwrite to replace it)")
    if not looks_like_run:
        raise InputError(f"{out}: --overwrite only replaces a minirlhf output directory, and this one holds "
                         f"none (no checkpoints/ or train_config.json); choose another --out")
    return None


def start_out_dir(out_dir, resume: bool, overwrite: bool):
    """After every input is read and checked: rank 0 empties `out_dir` (--overwrite) and creates it.

    Every rank must have run check_out_dir first; the barriers keep one rank's writes from being
    mistaken by another for an existing run.
    """
    out = Path(out_dir)
    barrier()
    if is_main_process():
        if overwrite and not resume and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    barrier()


def truncate_metrics(path, step_key: str, last_step: int):
    """On resume: drop metric rows after the checkpoint's step (and a half-written last line)."""
    path = Path(path)
    if not path.exists() or not is_main_process():
        return
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get(step_key), int) and row[step_key] <= last_step:
            rows.append(line)
    atomic_write(path, lambda p: Path(p).write_text("".join(r + "\n" for r in rows), encoding="utf-8"))
