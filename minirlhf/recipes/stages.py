"""Cached stages of a recipe's run directory: a stage is re-used while its settings, and every earlier stage's,
are unchanged; otherwise it runs again, and says why in one line.

Each stage directory holds a `stage.json` with the hash of its settings chained onto the hash of the stage
before it, the seconds it took and the settings themselves (to name what changed). The demo, the comparison and
the over-optimisation run all build on this.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields, replace
from pathlib import Path

from ..checkpoint import load_json, save_json
from ..config import renamed_keys
from ..errors import InputError


class StagedConfig:
    """What a recipe's config (a dataclass of stage configs, plus its own seed and device) shares: every stage
    runs with the recipe's seed and device, set once at the top (apply_overrides refuses --ppo.seed)."""

    shared_fields = ("seed", "device")

    def stage(self, name: str):
        """The config stage `name` runs with: its own, with the recipe's seed and device."""
        return replace(getattr(self, name), seed=self.seed, device=self.device)


def check_out_dir(out: Path, kind: str = "demo run", marker: str = "demo.json"):
    """A run directory is reused only if it holds a recipe's run (the demo's stages' demo.json, which every recipe
    built on them writes; the arithmetic recipe's arithmetic_config.json); anything else is never overwritten.
    `kind` names the run in the error."""
    if out.exists() and any(out.iterdir()) and not (out / marker).exists():
        raise InputError(f"{out}: exists and is not a minirlhf {kind}; choose another --out")


WATCH_ONLY = ("report_to", "stop_on", "diagnostics")  # settings that watch a run, never change what it trains


def stage_record(config) -> dict:
    """A stage's config as its hash and stage.json record it: asdict(config), a renamed setting under its old name
    (config.py's `renamed`), so that renaming a setting changes no hash and re-trains no finished stage; without the
    WATCH_ONLY settings, which change what a run reports, not what it trains; without a setting the class lists as
    `added` (after runs were recorded) while it has its default, so that a new option re-trains nothing either."""
    old = {new: name for name, new in renamed_keys(type(config)).items()}
    added = {f.name: f.default for f in fields(config) if f.name in getattr(type(config), "added", ())}
    return {old.get(k, k): v for k, v in asdict(config).items()
            if k not in WATCH_ONLY and not (k in added and v == added[k])}


def chained_hashes(settings: dict[str, dict]) -> dict[str, str]:
    """{stage: hash} for stages in pipeline order: each hash covers that stage's settings and the hash of the stage
    before it, so a change anywhere re-runs that stage and the ones after it."""
    out, upstream = {}, ""
    for stage, part in settings.items():
        upstream = out[stage] = stage_digest(upstream, part)
    return out


def stage_digest(upstream: str, part) -> str:
    """A stage's hash: its settings on top of the stage before it (so a change re-runs every later stage)."""
    return hashlib.sha256((upstream + json.dumps(part, sort_keys=True)).encode()).hexdigest()[:16]


def is_done(stage_dir: Path, digest: str) -> bool:
    marker = stage_dir / "stage.json"
    return marker.is_file() and load_json(marker).get("hash") == digest


def mark_done(stage_dir: Path, digest: str, seconds: float, settings: dict):
    save_json(stage_dir / "stage.json", {"hash": digest, "seconds": seconds, "settings": settings})


def _flat(d: dict, prefix: str = "") -> dict:
    """{"ppo": {"kl_coef": 0.3}} -> {"ppo.kl_coef": 0.3}"""
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (_flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])}


def stage_note(stage_dir: Path, settings: dict, earlier_rerun: str | None) -> str:
    """Why a stage that is not done runs: first time, its settings changed (which), or an earlier stage re-ran."""
    name, marker = f"{stage_dir.name}/", stage_dir / "stage.json"
    if not marker.is_file():
        return f"training {name}" + (" (replacing an unfinished one)" if stage_dir.exists() else "")
    old, new = _flat(load_json(marker).get("settings", {})), _flat(settings)
    changed = [f"{k}={old.get(k)!r} -> {new[k]!r}" for k in sorted(new) if old and old.get(k) != new[k]]
    if changed:
        return f"re-training {name} (settings changed: {', '.join(changed)})"
    return f"re-training {name} (" + (f"{earlier_rerun}/ re-ran, so its input changed)" if earlier_rerun
                                      else "settings changed)")


class Stages:
    """Which stages of a run directory are reused and which run, and why (one line each)."""

    def __init__(self, hashes: dict, settings: dict):
        self.hashes, self.settings, self.reran = hashes, settings, []

    def must_run(self, stage_dir: Path, digest: str | None = None, settings: dict | None = None) -> bool:
        """Say whether a stage is reused (its settings and every earlier stage's unchanged) or why it runs."""
        stage = stage_dir.name
        if is_done(stage_dir, digest or self.hashes[stage]):
            print(f"reusing {stage}/ (settings unchanged)", flush=True)
            return False
        print(stage_note(stage_dir, settings or self.settings[stage], self.reran[-1] if self.reran else None),
              flush=True)
        self.reran.append(stage)
        return True
