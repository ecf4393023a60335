"""Reward functions as code: `--reward_fn module:function` wherever an online trainer takes a reward model.

One signature, TRL's `reward_funcs` convention with minirlhf's names:

    def my_reward(prompts, responses, prompt_ids, response_ids) -> list[float]      # one number a response

called by keyword for a batch of B rollouts: `prompts` and `responses` are the decoded texts (special tokens left
out), `prompt_ids` and `response_ids` the token ids without padding (a response's EOS included when it has
one). A function takes the names it needs, `prompts` first, and may end with **kwargs (TRL's `completions` and
`completion_ids` are accepted for `responses` and `response_ids`); it returns B finite numbers. Several functions
are summed with `--reward_weights` (1 each by default), as TRL sums its reward_funcs.

    minirlhf grpo --prompts p.jsonl --init runs/x/sft --reward_fn my_rewards.py:length --out runs/x/grpo
    minirlhf grpo ... --reward_fn my_rewards:length --reward_fn my_rewards:has_answer --reward_weights 0.1,1

`module:function` imports `module` (the current directory is searched first); `path/file.py:function` loads a
file. A wrong name, a function that cannot take this signature, a wrong number of scores or a non-finite one
stops the run with one line naming the function.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path

from .errors import InputError

ARGUMENTS = ("prompts", "responses", "prompt_ids", "response_ids")
ALIASES = {"completions": "responses", "completion_ids": "response_ids"}  # TRL's names for the same


def load_reward_fn(spec: str):
    """The function `spec` names: 'module:function' or 'path/file.py:function', its signature checked."""
    module_name, sep, fn_name = spec.rpartition(":")
    if not sep or not module_name or not fn_name:
        raise InputError(f"--reward_fn {spec}: expected module:function or path/file.py:function")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise InputError(f"--reward_fn {spec}: {path}: file not found")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        _run_module(spec, lambda: loader.loader.exec_module(module), path=path)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))   # `minirlhf ...` (not `python -m`) does not search it
        module = _run_module(spec, lambda: importlib.import_module(module_name), module_name)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise InputError(f"--reward_fn {spec}: {module_name} has no function {fn_name!r}")
    check_signature(fn, spec)
    return fn


def _run_module(spec: str, load, module_name: str | None = None, path: Path | None = None):
    """load() (importing `module_name`, or executing the file `path`), a failure of the user's module turned
    into one line naming its file:line."""
    try:
        return load()
    except ModuleNotFoundError as e:
        if module_name is not None and (module_name == e.name or module_name.startswith(f"{e.name}.")):
            raise InputError(f"--reward_fn {spec}: no module named {e.name!r}") from None
        error = e  # an import inside the user's module failed
    except Exception as e:
        error = e
    if isinstance(error, SyntaxError):
        where = f"{error.filename}:{error.lineno}"
    else:  # the innermost frame in the user's file (not in importlib, nor in a library it called)
        frames = [(tb.tb_frame.f_code.co_filename, tb.tb_lineno) for tb in _walk(error.__traceback__)]
        origin = path or _origin(module_name)
        mine = [f for f in frames if origin is not None and Path(f[0]).resolve() == Path(origin).resolve()]
        where = "%s:%d" % (mine or frames)[-1]
    raise InputError(f"--reward_fn {spec}: importing it failed at {where}: {type(error).__name__}: {error}") from None


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _origin(module_name: str) -> str | None:
    try:
        return importlib.util.find_spec(module_name).origin
    except Exception:  # a parent package that fails to import, say: fall back to the innermost frame
        return None


def check_signature(fn, name: str):
    """Refuse a function that cannot be called as fn(prompts=, responses=, prompt_ids=, response_ids=)."""
    params = list(inspect.signature(fn).parameters.values())
    named = [p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    unknown = [p.name for p in named if p.name not in (*ARGUMENTS, *ALIASES) and p.default is p.empty]
    positional_only = [p.name for p in named if p.kind == p.POSITIONAL_ONLY]
    if unknown or positional_only or not named or named[0].name != "prompts":
        raise InputError(f"reward function {name}{inspect.signature(fn)}: expected "
                         f"({', '.join(ARGUMENTS)}) — the names it needs, prompts first, by keyword "
                         f"(minirlhf.reward_fns)")


def _call(fn, batch: dict):
    """fn called by keyword with the arguments it names (all of them if it takes **kwargs); a function of two
    positional parameters with other names, fn(prompts, outs), is called with (prompts, responses)."""
    batch = {**batch, **{alias: batch[name] for alias, name in ALIASES.items()}}
    params = inspect.signature(fn).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return fn(**{k: batch[k] for k in ARGUMENTS}, **{k: batch[k] for k in ALIASES
                                                          if k in {p.name for p in params}})
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if all(p.kind != p.POSITIONAL_ONLY and (p.name in batch or p.default is not p.empty) for p in named):
        return fn(**{p.name: batch[p.name] for p in named if p.name in batch})   # a parameter with a default
    return fn(batch["prompts"], batch["responses"])                            # and another name keeps it


def call_checked(fn, name: str, batch: dict) -> list[float]:
    """fn's scores for the batch (the keyword arguments of ARGUMENTS), checked: one finite number a response."""
    scores = _call(fn, batch)
    n = len(batch["responses"])
    try:
        scores = [float(x) for x in scores]
    except (TypeError, ValueError):
        raise InputError(f"reward function {name} returned {type(scores).__name__}, "
                         "not one number a response") from None
    if len(scores) != n:
        raise InputError(f"reward function {name} returned {len(scores)} scores for {n} responses")
    bad = next((i for i, x in enumerate(scores) if not math.isfinite(x)), None)
    if bad is not None:
        raise InputError(f"reward function {name} returned {scores[bad]} for response {bad} "
                         f"({batch['responses'][bad][:40]!r}): every score must be finite")
    return scores


def combine(fns: list, names: list[str] | None = None, weights: list[float] | None = None):
    """One reward function: Σ_i weights[i] · fns[i](...) (weights 1 by default), each part checked by name."""
    names = names or [getattr(f, "__name__", repr(f)) for f in fns]
    weights = [1.0] * len(fns) if weights is None else [float(w) for w in weights]
    if len(weights) != len(fns):
        raise InputError(f"--reward_weights gives {len(weights)} weights for {len(fns)} reward functions")
    for fn, name in zip(fns, names):
        check_signature(fn, name)

    def rewards(prompts, responses, prompt_ids, response_ids):
        batch = {"prompts": prompts, "responses": responses, "prompt_ids": prompt_ids, "response_ids": response_ids}
        total = [0.0] * len(responses)
        for fn, name, w in zip(fns, names, weights):
            total = [t + w * s for t, s in zip(total, call_checked(fn, name, batch))]
        return total

    rewards.__name__ = " + ".join(f"{w:g}·{n}" for n, w in zip(names, weights))
    return rewards


def parse_weights(text: str | None, n: int) -> list[float] | None:
    """--reward_weights '0.1,1' -> [0.1, 1.0] (None: 1 each), for n functions."""
    if text is None:
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise InputError(f"--reward_weights {text}: expected numbers separated by commas, e.g. 0.1,1") from None
    if len(weights) != n:
        raise InputError(f"--reward_weights {text}: {len(weights)} weights for {n} --reward_fn")
    return weights
