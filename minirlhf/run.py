"""The life of a training run, the same for every trainer (pretrain, reward, PPO, GRPO/RLOO, DPO/RRHF).

    run = Run(out, "ppo", total, resume=..., overwrite=..., inputs=(init_dir, reward_dir))  # checks, writes nothing
    ... load inputs, build the model and optimizer ...
    start, extra = run.restore({"model": model}, optimizer, {"data": gen})   # the checkpoint, if resuming
    run.begin(config, tokenizer)                    # only now is --out created (or, with --overwrite, emptied)
    for step in range(start, total):
        ... the trainer's own loop body ...
        run.log(row, loss=f"{loss:.3f}")            # metrics.jsonl + the progress bar
        run.maybe_checkpoint(step + 1, extra)       # every --save-every steps
    run.finish(save, extra)                         # the model (rank 0), a last checkpoint, plots/

Nothing is written before `begin`, so a run that fails on its inputs leaves --out as it was; metrics rows
after the resumed checkpoint are dropped (they are logged again). The trainer's loop body stays in the
trainer, top to bottom: this class only holds what would otherwise be copied into each of them.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .checkpoint import save_json
from .plots import plot_run
from .runtime import is_main_process
from .tracking import MetricsLogger, progress
from .trainstate import check_out_dir, load_checkpoint, save_checkpoint, start_out_dir, truncate_metrics


class Run:
    def __init__(self, out_dir, name: str, total: int, resume: bool = False, overwrite: bool = False,
                 inputs=(), step_key: str = "step", save_every: int = 0, show_progress: bool = True):
        self.out, self.name, self.total, self.step_key = Path(out_dir), name, total, step_key
        self.resume, self.overwrite, self.save_every, self.show_progress = resume, overwrite, save_every, show_progress
        self.ckpt = check_out_dir(self.out, resume, overwrite, inputs)  # refuses to clobber; changes nothing
        self.modules, self.optimizer, self.generators = {}, None, {}
        self.logger = self.bar = None

    def restore(self, modules: dict, optimizer, generators: dict) -> tuple[int, dict]:
        """Register what a checkpoint holds; load the one being resumed, if any -> (start step, extra state)."""
        self.modules, self.optimizer, self.generators = modules, optimizer, generators
        if self.ckpt is None:
            return 0, {}
        return load_checkpoint(self.ckpt, modules, optimizer, generators)

    def begin(self, config, tokenizer=None, start: int = 0, **config_extra):
        """Create (or, with --overwrite, empty) --out; write train_config.json (and tokenizer.json); open
        metrics.jsonl, dropping rows after `start`, and the progress bar."""
        start_out_dir(self.out, self.resume, self.overwrite)
        if is_main_process():
            save_json(self.out / "train_config.json", {**asdict(config), **config_extra})
            if tokenizer is not None:
                tokenizer.save(self.out / "tokenizer.json")
        truncate_metrics(self.out / "metrics.jsonl", self.step_key, start)
        self.logger = MetricsLogger(self.out / "metrics.jsonl", enabled=is_main_process())
        self.bar = progress(self.total, start, self.name, self.show_progress and is_main_process())

    def log(self, row: dict, **postfix):
        self.logger.log(row)
        self.bar.update(1)
        if postfix:
            self.bar.set_postfix(**postfix)

    def maybe_checkpoint(self, step: int, extra: dict | None = None):
        """A resumable checkpoint every `save_every` steps (call it on every rank: RNG states are gathered)."""
        if self.save_every and step % self.save_every == 0:
            self.checkpoint(step, extra)

    def checkpoint(self, step: int, extra: dict | None = None):
        save_checkpoint(self.out, step, self.modules, self.optimizer, self.generators, extra or {})

    def finish(self, save, extra: dict | None = None):
        """Close the bar; rank 0 calls save() (the model directory); a last checkpoint; plots/."""
        self.bar.close()
        if is_main_process():
            save()
        self.checkpoint(self.total, extra)
        if is_main_process():
            plot_run(self.out)
