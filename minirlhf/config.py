"""Config dataclasses and `--key=value` overrides.

Every trainer has a dataclass config whose fields carry a docstring (a string literal right after
the field, the convention CleanRL uses). `apply_overrides` turns `["--lr=3e-4", "--steps=100"]` into a
new config; an unknown key is an error that lists the valid ones. Values are parsed by the field's type,
never with eval/exec.

A setting that was renamed stays accepted under its old name, with a FutureWarning: a config class declares
`renamed: ClassVar[dict[str, str]] = {"old": "new"}`, and `apply_overrides` (--old=...) and `from_dict` (an old
run's train_config.json or demo.json) read the old key as the new one, as does the constructor of a class marked
@keeps_old_names. `config_help` lists only the new names.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import types
import typing
import warnings
from typing import ClassVar

from .diagnostics import DiagnosticsConfig, check_watch_settings
from .errors import InputError


def renamed_keys(cls) -> dict[str, str]:
    """{old name: new name} of the settings `cls` and its bases declare renamed (their `renamed` ClassVar)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(vars(klass).get("renamed", {}))
    return out


def current_name(cls, name: str, prefix: str = "", warn: bool = True, stacklevel: int = 3) -> str:
    """The name setting `name` of config class `cls` has now: `name` itself, or its new name, with one
    FutureWarning "--prefix.old is now --prefix.new" when `warn`."""
    new = renamed_keys(cls).get(name)
    if new is None:
        return name
    if warn:
        warnings.warn(f"--{prefix}{name} is now --{prefix}{new}", FutureWarning, stacklevel=stacklevel)
    return new


def current_keys(cls, data: dict, prefix: str = "", warn: bool = True, stacklevel: int = 4) -> dict:
    """`data` (settings by name) with every renamed key of `cls` under its new name (one FutureWarning each,
    when `warn`); where both names are present, the new one's value wins."""
    out = {k: v for k, v in data.items() if k not in renamed_keys(cls)}
    for k, v in data.items():
        if k in renamed_keys(cls):
            out.setdefault(current_name(cls, k, prefix, warn, stacklevel), v)
    return out


def keeps_old_names(cls):
    """Class decorator, above @dataclass: the constructor takes a renamed setting's old name too, e.g.
    GRPOConfig(epochs=2) is GRPOConfig(ppo_epochs=2) with a FutureWarning (a subclass that is its own
    @dataclass gets a new __init__, so it carries the decorator too)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **current_keys(type(self), kwargs, stacklevel=4))  # the warning names the caller's line

    cls.__init__ = __init__
    return cls


def field_docs(cls) -> dict[str, str]:
    """Map each field of a dataclass to the docstring written under it in the source."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    docs, body = {}, tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _parse_value(text: str, typ, name: str):
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # Optional[X] or X | None
        if text.lower() in ("none", "null", ""):
            return None
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    if typ is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise InputError(f"--{name}: expected true or false, got {text!r}")
    try:
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
    except ValueError:
        raise InputError(f"--{name}: expected {typ.__name__}, got {text!r}") from None
    return text


def apply_overrides(config, overrides: list[str]):
    """Return a copy of `config` with `--key=value` overrides applied (dashes in keys may be `-` or `_`).

    A field that is itself a config dataclass (the demo's stages) is reached with a dotted key:
    `--ppo.kl_coef=0.2`. Fields a config names in `shared_fields` (the demo's seed and device) are set once
    at the top, never inside a stage. An unknown key is an error that names the keys by their full dotted
    name, and the nearest one: `--ppo.kl_coeff` -> did you mean ppo.kl_coef?
    """
    for item in overrides:
        if not item.startswith("--") or item == "--":
            raise InputError(f"unrecognised argument {item!r}: config overrides are written --key=value")
        key, value = item[2:].split("=", 1) if "=" in item else (item[2:], None)
        config = _apply(config, key.replace("-", "_").split("."), value, key)
    return config


def _apply(config, path: list[str], value: str | None, full_key: str, prefix: str = "", parent=None):
    """Set the field at `path` inside `config`, itself reached by the dotted `prefix` ("" or "ppo.") from a
    `parent` config class (None at the top); value None: the key came without `=value`."""
    hints = typing.get_type_hints(type(config))
    name = current_name(type(config), path[0], prefix)
    if name not in hints or name not in {f.name for f in dataclasses.fields(config)}:
        raise InputError(f"unknown config key {full_key!r}{_suggest(config, path, prefix, parent)}; valid keys: "
                         f"{', '.join(_keys(config, prefix, parent))}")
    child = getattr(config, name)
    if dataclasses.is_dataclass(child):
        if len(path) == 1:
            raise InputError(f"--{full_key} is a group of settings: set one of them, e.g. --{prefix}{name}."
                             f"{_settable(child, type(config))[0]}=...")
        if path[1] in getattr(type(config), "shared_fields", ()):
            raise InputError(f"--{full_key}: every stage uses the top-level --{path[1]}; set that instead")
        child = _apply(child, path[1:], value, full_key, f"{prefix}{name}.", type(config))
        return dataclasses.replace(config, **{name: child})
    if len(path) > 1:
        raise InputError(f"unknown config key {full_key!r}; {prefix}{name} has no sub-settings")
    if value is None:
        raise InputError(f"--{full_key} needs a value: config overrides are written --{full_key}=VALUE")
    return dataclasses.replace(config, **{name: _parse_value(value, hints[name], full_key)})


def _settable(config, parent=None) -> list[str]:
    """The fields of `config` an override may set: all but those its parent config shares with every stage."""
    shared = getattr(parent, "shared_fields", ())
    return [f.name for f in dataclasses.fields(config) if f.name not in shared]


def _keys(config, prefix: str = "", parent=None) -> list[str]:
    """Valid keys at this level, by their full dotted name; a nested group shown as `group.<key>`."""
    return [f"{prefix}{name}.<key>" if dataclasses.is_dataclass(getattr(config, name)) else f"{prefix}{name}"
            for name in _settable(config, parent)]


def _leaves(config, prefix: str = "", parent=None) -> list[str]:
    """Every key an override may set at or below `config`, by its full dotted name (ppo.kl_coef)."""
    out = []
    for name in _settable(config, parent):
        child = getattr(config, name)
        out += (_leaves(child, f"{prefix}{name}.", type(config)) if dataclasses.is_dataclass(child)
                else [f"{prefix}{name}"])
    return out


def _suggest(config, path: list[str], prefix: str = "", parent=None) -> str:
    """' (did you mean ppo.kl_coef?)': the keys at or below this level whose last part is the last part of the
    unknown key `path` (a key given without its group, or with a wrong one), or else is within a typo of it
    (difflib's ratio >= 0.8); by full dotted name, those under the group the user named first."""
    keys = _leaves(config, prefix, parent)
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    wanted = _renamed_below(config).get(path[-1], path[-1])      # an old name, given in the wrong group
    close = difflib.get_close_matches(wanted, sorted(set(last.values())), n=1, cutoff=0.8)
    hits = [k for k in keys if close and last[k] == close[0]]
    group = [k for k in hits if f".{k}".endswith(".".join(["", *path[:-1], last[k]]))]
    hits = group or hits
    if not hits:
        return ""
    return f" (did you mean {', '.join(hits[:-1]) + ' or ' if len(hits) > 1 else ''}{hits[-1]}?)"


def _renamed_below(config) -> dict[str, str]:
    """{old: new} of the renamed settings of `config` and of every config group below it."""
    out = renamed_keys(type(config))
    for f in dataclasses.fields(config):
        if dataclasses.is_dataclass(getattr(config, f.name)):
            out = {**_renamed_below(getattr(config, f.name)), **out}
    return out


def from_dict(cls, data: dict, prefix: str = ""):
    """Rebuild a config dataclass (nested groups included) from asdict() output, e.g. a saved demo.json or an
    old run's train_config.json; a renamed setting's old key is read as its new one (with a FutureWarning)."""
    hints = typing.get_type_hints(cls)
    data = current_keys(cls, data, prefix)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            typ = hints[f.name]
            kwargs[f.name] = (from_dict(typ, data[f.name], f"{prefix}{f.name}.") if dataclasses.is_dataclass(typ)
                              else data[f.name])
    return cls(**kwargs)


@keeps_old_names
@dataclasses.dataclass
class TrainConfig:
    """The fields every step-based trainer shares (pretraining, reward models, DPO, RRHF, SFT); each trainer's
    config subclasses it, redeclaring a field where its default or meaning differs."""
    steps: int = 200
    """Optimizer steps (--steps). The data are reshuffled each epoch of len(train)/batch_size steps."""
    batch_size: int = 16
    """Examples per step."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr·min_lr_ratio."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 disables); the online trainers' name, and TRL's."""
    val_fraction: float = 0.1
    """Share of examples held out for validation."""
    eval_every: int = 50
    """Steps between validation passes (and at the last step)."""
    eval_batch_size: int = 64
    """Examples per forward in validation."""
    seed: int = 0
    """Seed for initialisation, the split and the data order."""
    device: str = "cpu"
    """cpu or cuda (bf16 autocast)."""
    save_every: int = 0
    """Steps between resumable checkpoints (0: only at the end)."""
    report_to: str = ""
    """Also write each metrics row to 'tensorboard' (event files in <out>/tensorboard) and/or 'wandb',
    comma-separated, under metrics.jsonl's names; metrics.jsonl is written regardless."""
    stop_on: str = ""
    """Stop the run when one of these health checks fires: rule names, comma-separated, or 'any'; '' only
    reports them."""
    diagnostics: DiagnosticsConfig = dataclasses.field(default_factory=DiagnosticsConfig)
    """The health checks' thresholds (--diagnostics.<key>, diagnostics.py); they never change what is trained."""
    renamed: ClassVar[dict[str, str]] = {"grad_clip": "max_grad_norm"}  # old names, still read (FutureWarning)

    def __post_init__(self):
        validate(self, positive=("steps", "batch_size", "lr", "eval_every", "eval_batch_size"),
                 non_negative=("warmup_steps", "min_lr_ratio", "weight_decay", "max_grad_norm", "save_every"))
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val_fraction must be in [0, 1), got {self.val_fraction}")
        check_watch_settings(self)


def validate(config, positive=(), non_negative=(), unit_interval=(), choices: dict | None = None):
    """The shared checks a config's __post_init__ runs: an InputError `--key must be ..., got v` otherwise.

    positive: > 0; non_negative: >= 0; unit_interval: in [0, 1]; choices: {key: allowed values}.
    """
    def bad(name, what):
        raise InputError(f"--{name} must be {what}, got {getattr(config, name)!r}")
    for name in positive:
        if not getattr(config, name) > 0:
            bad(name, "> 0")
    for name in non_negative:
        if not getattr(config, name) >= 0:
            bad(name, ">= 0")
    for name in unit_interval:
        if not 0 <= getattr(config, name) <= 1:
            bad(name, "in [0, 1]")
    for name, allowed in (choices or {}).items():
        if getattr(config, name) not in allowed:
            bad(name, f"one of {', '.join(map(str, allowed))}")


def field_docs_all(cls) -> dict[str, str]:
    """field_docs over the class and its bases (a subclass's docstring wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        if dataclasses.is_dataclass(klass):
            docs.update(field_docs(klass))
    return docs


def config_help(config, prefix: str = "") -> str:
    """A table of fields, defaults and docstrings for --help. `config` is a config class (its defaults are
    shown) or an instance (its values are); a nested group's fields are listed as group.key."""
    cls = config if isinstance(config, type) else type(config)
    docs = field_docs_all(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if isinstance(config, type):
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        else:
            value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(config_help(value, f"{prefix}{f.name}.").split("\n", 1)[1])
        else:
            lines.append(f"  --{prefix}{f.name}={value}\n      {docs.get(f.name, '')}")
    return "config overrides (--key=value):\n" + "\n".join(lines)
