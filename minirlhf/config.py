"""Config dataclasses and `--key=value` overrides.

Every trainer has a dataclass config whose fields carry a docstring (a string literal right after
the field, the convention CleanRL uses). `apply_overrides` turns `["--lr=3e-4", "--steps=100"]` into a
new config; an unknown key is an error that lists the valid ones. Values are parsed by the field's type,
never with eval/exec.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import types
import typing

from .errors import InputError


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
    """Return a copy of `config` with `--key=value` overrides applied (dashes in keys may be `-` or `_`)."""
    hints = typing.get_type_hints(type(config))
    valid = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise InputError(f"unrecognised argument {item!r}: config overrides are written --key=value")
        key, value = item[2:].split("=", 1)
        key = key.replace("-", "_")
        if key not in valid:
            raise InputError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        changes[key] = _parse_value(value, hints[key], key)
    return dataclasses.replace(config, **changes)


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


def config_help(cls) -> str:
    """A table of fields, defaults and docstrings for --help."""
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{f.name}={default}\n      {docs.get(f.name, '')}")
    return "config overrides (--key=value):\n" + "\n".join(lines)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
