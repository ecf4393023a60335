"""Files on disk: safetensors and JSON only (no pickle, so loading an untrusted directory runs no code).

A model directory is in Hugging Face GPT-2 format: `config.json` with GPT-2's keys and
`model.safetensors` with GPT-2's parameter names. Two differences from our nn.Module are handled here:
  * GPT-2 stores its projections as `Conv1D` (weight shape (in, out)); we use nn.Linear ((out, in)),
    so `c_attn`, `c_proj` and `c_fc` weights are transposed on the way in and out (as nanoGPT does);
  * the LM head is tied to `wte`, so `lm_head.weight` is not stored.
Every write is atomic: a temp file in the same directory, fsync, then rename, so a crash mid-write
never leaves a half-written file where a complete one is expected.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import InputError

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in older transformers files


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write_fn):
    """Run write_fn(tmp_path), fsync, and rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file a normal file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_json(path, obj):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
    atomic_write(path, write)


def load_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def save_tensors(path, tensors: dict, metadata: dict | None = None):
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None


def gpt2_config_dict(config, extra: dict | None = None) -> dict:
    """Our GPTConfig as the config.json that transformers writes for GPT2LMHeadModel."""
    d = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "torch_dtype": "float32",
    }
    d.update(extra or {})
    return d


def save_gpt2(directory, state_dict: dict, config, extra_config: dict | None = None):
    directory = Path(directory)
    tensors = {}
    for name, t in state_dict.items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        tensors[name] = t.t() if name.endswith(TRANSPOSED) else t
    save_tensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    save_json(directory / "config.json", gpt2_config_dict(config, extra_config))


def _check_supported(path, cfg: dict):
    problems = []
    if cfg.get("model_type", "gpt2") != "gpt2":
        problems.append(f"model_type={cfg.get('model_type')!r} (only gpt2 is supported)")
    if cfg.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function={cfg['activation_function']!r}")
    if cfg.get("n_inner") not in (None, 4 * cfg.get("n_embd", 0)):
        problems.append(f"n_inner={cfg['n_inner']}")
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or abs(eps - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon={cfg['layer_norm_epsilon']}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if cfg.get(flag):
            problems.append(f"{flag}=true")
    if cfg.get("scale_attn_weights", True) is False:
        problems.append("scale_attn_weights=false")
    if problems:
        raise InputError(f"{path}: unsupported GPT-2 variant: {', '.join(problems)}")


def load_gpt2(directory) -> tuple[dict, dict]:
    """Read a GPT-2 directory (ours or transformers') -> (GPTConfig kwargs, our state dict)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: model directory not found")
    cfg = load_json(directory / "config.json")
    _check_supported(directory / "config.json", cfg)
    config = {}
    for ours, key in (("vocab_size", "vocab_size"), ("n_layer", "n_layer"), ("n_head", "n_head"),
                      ("n_embd", "n_embd"), ("block_size", "n_positions")):
        if key not in cfg:
            raise InputError(f"{directory / 'config.json'}: missing GPT-2 key {key!r}")
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{directory / 'config.json'}: {key} must be a positive integer, got {value!r}")
        config[ours] = value
    if config["n_embd"] % config["n_head"]:
        raise InputError(f"{directory / 'config.json'}: n_embd={config['n_embd']} is not divisible by "
                         f"n_head={config['n_head']}")
    state = {}
    for name, t in load_tensors(directory / "model.safetensors").items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # checkpoints saved from GPT2Model have no prefix
        state[name] = t.t() if name.endswith(TRANSPOSED) else t
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return config, state


def load_into(module: torch.nn.Module, state: dict, where) -> None:
    """load_state_dict, but a missing/unexpected key or a shape mismatch is one InputError line."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = ([f"missing {missing[:3]}"] if missing else []) + \
                ([f"unexpected {unexpected[:3]}"] if unexpected else []) + \
                ([f"shape mismatch {wrong[:3]}"] if wrong else [])
        raise InputError(f"{where}: checkpoint does not match the model: {'; '.join(parts)}")
    module.load_state_dict(state)
