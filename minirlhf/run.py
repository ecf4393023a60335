"""The life of a training run, the same for every trainer (pretrain, reward, PPO, GRPO/RLOO, DPO/RRHF).

    run = Run(out, "ppo", total, resume=..., overwrite=..., inputs=(init_dir, reward_dir))  # checks, writes nothing
    ... load inputs, build the model and optimizer ...
    start, extra = run.restore({"model": model}, optimizer, {"data": gen})   # the checkpoint, if resuming
    run.begin(config, tokenizer, start)             # only now is --out created (or, with --overwrite, emptied)
    for step in range(start, total):
        ... the trainer's own loop body ...
        run.log(row, loss=f"{loss:.3f}")            # metrics.jsonl + the progress bar
        run.maybe_checkpoint(step + 1, extra)       # every --save-every steps
    run.finish(save, extra)                         # the model (rank 0), a last checkpoint, plots/

Nothing is written before `begin`, so a run that fails on its inputs leaves --out as it was; metrics rows
after the resumed checkpoint are dropped (they are logged again). The trainer's loop body stays in the
trainer, top to bottom: this class only holds what would otherwise be copied into each of them.

Settings on resume. `train_config.json` keeps the settings the run started with (its top-level keys, as
before) and appends one entry per resume to a `resumes` list: the step it resumed from and what changed,

    {"lr": 0.0001, "iterations": 40, ..., "trainer": "ppo",
     "resumes": [{"iteration": 40, "changed": {"iterations": {"from": 40, "to": 60}}}]}

so the settings in force from a step on are the top level with every earlier entry's "to" applied
(`recorded_settings`). The command line (`resume_config`) starts a resumed run from those settings, not
from the defaults: `--resume` alone continues the same run, and a setting given again must equal the
recorded one unless named in `--allow-changed=key,key`. The length (`--steps`, `--iterations`) may grow
without it (the LR schedule then spans the new length), and the settings in FREE_ON_RESUME never need it.
The Python API takes the config it is given as meant, and records what differs in the same way.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .checkpoint import load_json, save_json
from .config import apply_overrides, current_keys, current_name, from_dict
from .diagnostics import Watch
from .errors import InputError, TrainingDiverged
from .plots import plot_run
from .runtime import is_main_process
from .tracking import MetricsLogger, Reporters, progress, read_metrics
from .trainstate import check_out_dir, load_checkpoint, save_checkpoint, start_out_dir, truncate_metrics

FREE_ON_RESUME = ("device", "compile", "compile_sampler", "recompute_logprobs", "gradient_accumulation_steps",
                  "save_every", "eval_every", "eval_batch_size", "report_to", "stop_on", "diagnostics")
"""Settings a resume may change without --allow-changed: they change where and how fast the same numbers are
computed (device, torch.compile, the sampler's logprobs recomputed, gradient accumulation: equal up to float
rounding), or what is saved and logged (checkpoints, how often and in what chunks validation runs; validation
draws no random numbers), or what is watched (the health checks and where metrics are also written), never what
is trained. So does the Python API's show_progress, which is no setting."""
META_KEYS = ("trainer", "resumes")  # train_config.json's keys that are not settings


def recorded_settings(record: dict, path, step_key: str | None = None, before: int | None = None) -> dict:
    """The settings in force according to a train_config.json: the top level, then each resume's changes in turn
    (with `before`, only the resumes from a `step_key` earlier than it). Malformed entries are an InputError."""
    settings, entries = {k: v for k, v in record.items() if k not in META_KEYS}, record.get("resumes", [])
    if not isinstance(entries, list):
        raise InputError(f"{path}: 'resumes' must be a list, got {type(entries).__name__}")
    for entry in entries:
        try:
            if before is not None and entry[step_key] >= before:
                continue
            settings.update({k: change["to"] for k, change in entry["changed"].items()})
        except (KeyError, TypeError, AttributeError):
            raise InputError(f"{path}: malformed 'resumes' entry {entry!r}") from None
    return settings


def _check_trainer(record: dict, path, name: str) -> dict:
    """`record` (a train_config.json), if the run it describes is one of trainer `name`; else an InputError."""
    trainer = record.get("trainer", name)  # a run recorded before "trainer" was: taken on trust
    if trainer != name:
        how = f"grpo --algo {trainer}" if trainer in ("grpo", "rloo") else trainer
        raise InputError(f"{path}: a {trainer} run, not {name}; resume it with minirlhf {how}")
    return record


def _changes(old: dict, new: dict) -> dict:
    """{key: {"from": old, "to": new}} for the settings whose values differ (compared as JSON)."""
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731
    return {k: {"from": old.get(k), "to": v} for k, v in new.items() if k not in old or not same(old[k], v)}


def resume_config(out_dir, trainer: str, config_cls, overrides: list[str], allow_changed: str | None = None,
                  length_key: str = "steps"):
    """The config of `minirlhf <trainer> --resume`: the run's recorded settings <- `overrides` (--key=value, what
    the command line gave). A given setting that differs from the recorded one is an InputError unless it is in
    FREE_ON_RESUME, named in `allow_changed` ("lr,batch_size"), or the length growing; so is a run recorded by
    another trainer. No train_config.json yet (a run killed before it began): the defaults <- overrides."""
    path = Path(out_dir) / "train_config.json"
    allowed = _allowed_keys(allow_changed, config_cls)
    if not path.is_file():
        return apply_overrides(config_cls(), overrides)
    recorded = recorded_settings(_check_trainer(load_json(path), path, trainer), path)
    try:
        base = from_dict(config_cls, recorded)
    except (TypeError, ValueError, InputError) as e:
        raise InputError(f"{path}: its settings do not make a {config_cls.__name__} ({e})") from None
    config = apply_overrides(base, overrides)
    old, new = asdict(base), asdict(config)
    refused = [k for k in _changes(old, new) if k not in FREE_ON_RESUME and k not in allowed
               and not (k == length_key and new[k] > old[k])]
    if refused:
        what = ", ".join(f"--{k}={new[k]} differs from the run's {old[k]}" for k in refused)
        raise InputError(f"{path}: {what}; pass --allow-changed={','.join(refused)} to change "
                         f"{'it' if len(refused) == 1 else 'them'} on resume")
    return config


def _allowed_keys(allow_changed: str | None, config_cls) -> set[str]:
    keys = {current_name(config_cls, k.strip().replace("-", "_")) for k in (allow_changed or "").split(",")
            if k.strip()}
    fields = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(keys - set(fields))
    if unknown:
        raise InputError(f"--allow-changed: unknown setting {unknown[0]!r}; valid: {', '.join(fields)}")
    return keys


class Run:
    def __init__(self, out_dir, name: str, total: int, resume: bool = False, overwrite: bool = False,
                 inputs=(), step_key: str = "step", save_every: int = 0, show_progress: bool = True):
        self.out, self.name, self.total, self.step_key = Path(out_dir), name, total, step_key
        self.resume, self.overwrite, self.save_every, self.show_progress = resume, overwrite, save_every, show_progress
        self.ckpt = check_out_dir(self.out, resume, overwrite, inputs)  # refuses to clobber; changes nothing
        self.record = self._read_record() if resume else None
        self.modules, self.optimizer, self.generators = {}, None, {}
        self.logger = self.bar = self.watch = self.reporters = None

    def _read_record(self) -> dict | None:
        """The resumed run's train_config.json (None if it has none); it must be a run of this trainer."""
        path = self.out / "train_config.json"
        if not path.is_file():
            return None
        return _check_trainer(load_json(path), path, self.name)

    def restore(self, modules: dict, optimizer, generators: dict) -> tuple[int, dict]:
        """Register what a checkpoint holds; load the one being resumed, if any -> (start step, extra state)."""
        self.modules, self.optimizer, self.generators = modules, optimizer, generators
        if self.ckpt is None:
            return 0, {}
        start, extra = load_checkpoint(self.ckpt, modules, optimizer, generators)
        if start > self.total:
            raise InputError(f"{self.ckpt}: the run is already at {self.step_key} {start}, past --{self.step_key}s "
                             f"{self.total}; give at least {start}")
        return start, extra

    def begin(self, config, tokenizer=None, start: int = 0, **config_extra):
        """Create (or, with --overwrite, empty) --out; write train_config.json (on resume: append the resume to its
        history) and tokenizer.json; open metrics.jsonl, dropping rows after `start`, and the progress bar."""
        record = self._config_record({**asdict(config), **config_extra}, start, type(config))
        start_out_dir(self.out, self.resume, self.overwrite)
        if is_main_process():
            save_json(self.out / "train_config.json", record)
            if tokenizer is not None:
                tokenizer.save(self.out / "tokenizer.json")
        truncate_metrics(self.out / "metrics.jsonl", self.step_key, start)
        self.logger = MetricsLogger(self.out / "metrics.jsonl", enabled=is_main_process())
        self.bar = progress(self.total, start, self.name, self.show_progress and is_main_process())
        # the health checks (diagnostics.py), primed on the rows a resumed run keeps; the optional metric writers
        self.watch = Watch(config.diagnostics, config_extra, config.stop_on)
        kept = read_metrics(self.out / "metrics.jsonl") if start and (self.out / "metrics.jsonl").is_file() else []
        for row in kept:
            self.watch.observe(row)
        self.reporters = Reporters(config.report_to, self.out, self.step_key, record, enabled=is_main_process())

    def _config_record(self, settings: dict, start: int, config_cls) -> dict:
        """train_config.json's new contents: a fresh run's settings, or the record plus this resume (dropping
        the resumes from `start` on, whose steps are done again) and what it changed (a setting recorded under
        an old name compared under its new one). Says which on stdout."""
        fresh = {**settings, "trainer": self.name}
        if not self.resume:
            return fresh
        if self.ckpt is None:
            _say(f"{self.name}: no checkpoint in {self.out} yet, starting from {self.step_key} 0")
            return fresh
        record = self.record or fresh  # a train_config.json deleted by hand: the settings given now
        recorded = recorded_settings(record, self.out / "train_config.json", self.step_key, start)
        changed = _changes(current_keys(config_cls, recorded, warn=False), settings)
        _say(f"{self.name}: resuming from {self.step_key} {start} of {self.total} ({self.ckpt})" +
             "".join(f"; {k} {c['from']} -> {c['to']}" for k, c in changed.items()))
        kept = [e for e in record.get("resumes", []) if e[self.step_key] < start]
        return {**record, "resumes": kept + [{self.step_key: start, "changed": changed}]}

    def log(self, row: dict, **postfix):
        """The row into metrics.jsonl (with the record of any health check that fires now) and the writers of
        --report_to; the bar moves; a check that fires is said once, and stops the run if --stop_on names it."""
        findings = self.watch.observe(row)
        if findings:
            row = {**row, "diagnostics": [f.record() for f in findings]}
        self.logger.log(row)
        self.reporters.log(row)
        self.bar.update(1)
        if postfix:
            self.bar.set_postfix(**postfix)
        for f in findings:
            if is_main_process():
                self.bar.write(f"{self.name}: {self.step_key} {f.step}: {f.message}", file=sys.stderr)
        stop = self.watch.must_stop(findings)
        if stop is not None:
            self.reporters.close()
            raise TrainingDiverged(f"{self.step_key} {stop.step}: health check {stop.rule.name} fired and --stop_on "
                                   f"names it; stopping (the last good checkpoint is kept)")

    def maybe_checkpoint(self, step: int, extra: dict | None = None):
        """A resumable checkpoint every `save_every` steps (call it on every rank: RNG states are gathered)."""
        if self.save_every and step % self.save_every == 0:
            self.checkpoint(step, extra)

    def checkpoint(self, step: int, extra: dict | None = None):
        save_checkpoint(self.out, step, self.modules, self.optimizer, self.generators, extra or {})

    def finish(self, save, extra: dict | None = None):
        """Close the bar; rank 0 calls save() (the model directory); a last checkpoint; plots/."""
        self.bar.close()
        self.reporters.close()
        if is_main_process():
            save()
        self.checkpoint(self.total, extra)
        if is_main_process():
            plot_run(self.out)


def _say(message: str):
    if is_main_process():
        print(message, flush=True)
