"""Loading the data files (texts, prompts, pairs, rankings, demonstrations), every bad line reported as file:line;
splitting them (train_val_split) and drawing a step's batch of them (batch_indices).

    texts           .txt, one document a line; or .jsonl (.json, .ndjson) {"text": str}
    prompts         {"prompt": str}
    pairs           {"prompt": str, "chosen": str, "rejected": str}, or full-text {"chosen", "rejected"}
    rankings        {"query": str, "responses": [str, ...], "scores": [number, ...]}   (the RRHF format),
                    optionally "sources": ["provided" | "sampled", ...], one per response: where it came from
                    (a dataset's own answers vs samples of a policy; RRHF's only_use_provide / only_use_sample)
    demonstrations  {"prompt": str, "response": str}   (supervised fine-tuning, InstructGPT's first step);
                    "completion" is accepted for "response" (TRL's prompt-completion format)

Files are UTF-8 (a leading BOM is allowed); blank lines are skipped; fields other than these are
ignored. A problem raises `InputError("file:line: what is wrong")` before any training starts.
Chat format (a field holding a list of {"role", "content"} messages, TRL's conversational datasets) is not
supported: minirlhf's models continue plain text, with no chat template. Such a field is refused with a
line that says so; give the prompt and the response as strings.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError, at


TEXT_SUFFIXES, JSONL_SUFFIXES = (".txt",), (".jsonl", ".json", ".ndjson")


class Located(str):
    """A string read from a file that remembers where it came from: `where` is "file:line". It is a str in
    every other way; messages about it (e.g. a prompt cut to fit the context) name its line."""
    where: str

    def __new__(cls, value: str, where: str):
        s = super().__new__(cls, value)
        s.where = where
        return s


@dataclass
class Pair:
    """One human comparison. prompt is "" for full-text pairs (the prompt is inside both texts)."""
    prompt: str
    chosen: str
    rejected: str


SOURCES = ("provided", "sampled")


@dataclass
class Ranking:
    """One query with K >= 2 responses and their scores (higher is better). `sources`, when given, says
    for each response whether the data set provided it or a policy sampled it (see SOURCES)."""
    query: str
    responses: list[str]
    scores: list[float]
    sources: list[str] | None = None


@dataclass
class Demonstration:
    """A prompt and the response to learn (the prompt is context only: it is not in the loss)."""
    prompt: str
    response: str


def _lines(path):
    """(line number, text) for each non-blank line; raises InputError for a missing or empty file."""
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    out = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise at(path, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
            line = line.rstrip("\r\n")
            if line.strip():
                out.append((lineno, line))
    if not out:
        raise InputError(f"{path}: no records")
    return out


def _records(path):
    """(line number, dict) for each JSONL record."""
    records = []
    for lineno, line in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise at(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise at(path, lineno, f"expected a JSON object, got {_type_name(obj)}")
        records.append((lineno, obj))
    return records


def _type_name(value) -> str:
    names = {type(None): "null", bool: "bool", int: "int", float: "float", str: "string",
             list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _field(obj, key, path, lineno):
    if key not in obj:
        raise at(path, lineno, f"missing field '{key}'")
    return obj[key]


def _is_chat(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "content" in m for m in value)


def _text(value, name, path, lineno, allow_empty=False) -> str:
    """A string field; empty (or whitespace-only) is an error unless allow_empty."""
    if _is_chat(value):
        raise at(path, lineno, f"field {name} is in chat format (a list of {{role, content}} messages), which "
                               f"minirlhf does not support: give it as one string")
    if not isinstance(value, str):
        raise at(path, lineno, f"field {name} must be a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise at(path, lineno, f"field {name} is empty")
    return value


def _list(value, name, path, lineno) -> list:
    if not isinstance(value, list):
        raise at(path, lineno, f"field {name} must be a list, got {_type_name(value)}")
    return value


def load_texts(path) -> list[str]:
    """Pretraining documents: a .txt file (one document a line) or JSONL {"text": str} (.jsonl, .json or
    .ndjson); any other file name is refused, naming the two formats."""
    suffix = Path(path).suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return [line for _, line in _lines(path)]
    if suffix not in JSONL_SUFFIXES:
        raise InputError(f"{path}: a text file must be .txt (one document a line) or .jsonl "
                         f"({{\"text\": ...}} a line), got {suffix or 'no extension'!r}")
    return [_text(_field(obj, "text", path, n), "'text'", path, n) for n, obj in _records(path)]


def load_prompts(path) -> list[Located]:
    """RL prompts: JSONL {"prompt": str}, each non-empty; each remembers its file:line (`Located`)."""
    return [Located(_text(_field(obj, "prompt", path, n), "'prompt'", path, n), f"{path}:{n}")
            for n, obj in _records(path)]


def _pair(obj, path, lineno) -> Pair:
    prompt = _text(obj.get("prompt", ""), "'prompt'", path, lineno, allow_empty=True)
    chosen = _text(_field(obj, "chosen", path, lineno), "'chosen'", path, lineno)
    rejected = _text(_field(obj, "rejected", path, lineno), "'rejected'", path, lineno)
    return Pair(prompt, chosen, rejected)


def _ranking(obj, path, lineno) -> Ranking:
    query = _text(_field(obj, "query", path, lineno), "'query'", path, lineno, allow_empty=True)
    responses = _list(_field(obj, "responses", path, lineno), "'responses'", path, lineno)
    scores = _list(_field(obj, "scores", path, lineno), "'scores'", path, lineno)
    if len(responses) < 2:
        raise at(path, lineno, f"a ranking needs at least 2 responses, got {len(responses)}")
    if len(responses) != len(scores):
        raise at(path, lineno, f"{len(responses)} responses but {len(scores)} scores")
    for k, response in enumerate(responses):
        _text(response, f"'responses'[{k}]", path, lineno)
    for k, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise at(path, lineno, f"field 'scores'[{k}] must be a number, got {_type_name(score)}")
        if not math.isfinite(score):
            raise at(path, lineno, f"field 'scores'[{k}] must be finite, got {score}")
    sources = obj.get("sources")
    if sources is not None:
        if len(_list(sources, "'sources'", path, lineno)) != len(responses):
            raise at(path, lineno, f"{len(responses)} responses but {len(sources)} sources")
        for k, source in enumerate(sources):
            if source not in SOURCES:
                raise at(path, lineno, f"field 'sources'[{k}] must be one of {', '.join(map(repr, SOURCES))}, "
                                       f"got {source!r}")
        sources = list(sources)
    return Ranking(query, list(responses), [float(s) for s in scores], sources)


def load_pairs(path) -> list[Pair]:
    """Preference pairs: {"prompt", "chosen", "rejected"}; "prompt" may be absent (full-text pairs)."""
    return [_pair(obj, path, n) for n, obj in _records(path)]


def load_rankings(path) -> list[Ranking]:
    """RRHF-style rankings: {"query", "responses", "scores"[, "sources"]}, K >= 2, scores finite numbers."""
    return [_ranking(obj, path, n) for n, obj in _records(path)]


def _demonstration(obj, path, lineno) -> Demonstration:
    if "messages" in obj and "prompt" not in obj:
        raise at(path, lineno, "a 'messages' record is chat format, which minirlhf does not support: give "
                               "{\"prompt\": str, \"response\": str}")
    key = "response" if "response" in obj or "completion" not in obj else "completion"   # TRL's name
    return Demonstration(_text(_field(obj, "prompt", path, lineno), "'prompt'", path, lineno, allow_empty=True),
                         _text(_field(obj, key, path, lineno), f"'{key}'", path, lineno))


def load_demonstrations(path) -> list[Demonstration]:
    """Supervised fine-tuning data: {"prompt", "response"} ("completion" is accepted for "response"); the
    prompt may be empty, the response not."""
    return [_demonstration(obj, path, n) for n, obj in _records(path)]


def load_preferences(path) -> list[Pair] | list[Ranking]:
    """Pairs or rankings, whichever the first record is; every later record must be the same kind."""
    records = _records(path)
    lineno, first = records[0]
    if "responses" in first:
        parse = _ranking
    elif "chosen" in first:
        parse = _pair
    else:
        raise at(path, lineno, "expected a pair {prompt, chosen, rejected} or a ranking "
                               f"{{query, responses, scores}}; got keys {sorted(first)}")
    return [parse(obj, path, n) for n, obj in records]


def train_val_split(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Random (train, val) split, the same for the same seed; each part keeps the input order.

    The validation part has round(len(items) * val_fraction) items, at least 1 if val_fraction > 0,
    but training always keeps at least one item: a single item gives ([item], []).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(items)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_val = min(n_val, max(n - 1, 0))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx = set(perm[:n_val])
    train = [x for i, x in enumerate(items) if i not in val_idx]
    val = [x for i, x in enumerate(items) if i in val_idx]
    return train, val


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Example indices for a step: a fresh permutation each epoch, a pure function of the step (so
    --resume needs no data-loader state)."""
    out, pos = [], step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = perm[offset:offset + batch_size - len(out)].tolist()
        out += take
        pos += len(take)
    return out
