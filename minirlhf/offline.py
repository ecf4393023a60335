"""What every offline trainer (DPO, RRHF, SFT on demonstrations) shares: config fields and the run.

    examples ──objective.encode──▶ token sequences ──objective.prepare──▶ (DPO: reference logps)
    for each step:  a batch of examples ──objective.loss──▶ loss, metrics ──backward, clip, NaN guard, step
                    every eval_every steps: the same metrics on the held-out examples (val/*)

"Offline": the responses are fixed data (from people, other models, or earlier samples of the policy, see
responses.make_preferences); nothing is sampled during training. Each algorithm's file (dpo.py, rrhf.py,
sft.py) holds its config (an `OfflineConfig` with its own fields) and its `Objective`: how its examples
are encoded (responses.py) and the loss of a batch. `train_offline` is the run around any of them, on
run.Run: load the --init policy, split train/val, loop, log, checkpoint, save.

Choices, said out loud:
  * The policy loads with dropout 0 (GPT.from_pretrained), so a forward is deterministic and DPO's step-0
    invariants hold exactly.
  * The length is a number of optimizer steps; examples are reshuffled every epoch (reward.batch_indices, a
    pure function of the step, so --resume needs no data-loader state). Linear warm-up, cosine decay.
  * Validation holds out whole examples (train_val_split); val/* are means over validation batches of
    eval_batch_size examples, weighted by their number of examples.
  * Under torchrun (runtime.py) rank r takes the r-th of N consecutive batches of the one shuffled order, so
    together they take the batch of size N·batch_size a single process would; gradients are averaged,
    metrics are means over ranks, validation runs on rank 0.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TrainConfig, validate
from .data import train_val_split
from .errors import InputError
from .model import GPT, RewardModel
from .optim import clip_grad, lr_at, make_adamw, set_lr
from .reward import batch_indices
from .run import Run
from .runtime import (average_gradients, init_distributed, is_main_process, mean_across_ranks,
                      resolve_device, seed_everything, sync_params)
from .tokenizer import Tokenizer
from .tracking import check_finite


@dataclass
class OfflineConfig(TrainConfig):
    """What the offline trainers add to config.TrainConfig (the step, optimiser and run fields)."""
    batch_size: int = 16
    """Examples per step (a DPO pair, an RRHF query with all its responses, an SFT demonstration)."""
    max_len: int = 0
    """Longest prompt ⊕ response in tokens; longer ones lose the prompt's start first, then the response's
    end (responses.join). 0: the model's block_size."""
    eval_batch_size: int = 64
    """Examples per forward in validation (and when DPO precomputes the reference)."""
    seed: int = 0
    """Seed for the split and the data order."""

    def __post_init__(self):
        super().__post_init__()
        validate(self, non_negative=("max_len",))


class Objective:
    """What an offline algorithm adds to the shared run. `name` names the run and prefixes its metrics
    (`{name}/loss`, `{name}/grad_norm`, `{name}/lr`, `{name}/epoch`)."""
    name = "offline"

    def encode(self, examples: list, tokenizer: Tokenizer, max_len: int) -> list:
        """Data examples -> what `loss` takes a batch of (token sequences, responses.Joined)."""
        raise NotImplementedError

    def prepare(self, model: GPT, train: list, val: list, pad_id: int):
        """Called once before the first step (and before a checkpoint is restored), while `model` is still
        the --init policy: DPO's reference log-probabilities are computed here."""

    def loss(self, model: GPT, batch: list, pad_id: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(mean loss over the batch, with grad; metrics as 0-dim tensors, `{name}/loss` among them)."""
        raise NotImplementedError


def load_policy(init_dir, max_len: int, device) -> tuple[Tokenizer, GPT, int]:
    """(tokenizer, policy, max_len resolved against block_size) of --init, checking that they match."""
    RewardModel.warn_if_one(init_dir, "training")
    tokenizer = Tokenizer.from_file(Path(init_dir) / "tokenizer.json")
    model = GPT.from_pretrained(init_dir).to(device)
    tokenizer.check_model(model.config, init_dir)
    block = model.config.block_size
    if not 0 <= max_len <= block or max_len == 1:
        raise InputError(f"--max_len={max_len} must be in [2, block_size={block}] (or 0: block_size)")
    return tokenizer, model, max_len or block


@torch.no_grad()
def evaluate(objective: Objective, model: GPT, examples: list, pad_id: int, batch_size: int) -> dict:
    """val/<metric>: each metric of objective.loss averaged over batches, weighted by their size."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        _, stats = objective.loss(model, chunk, pad_id)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(chunk)
    model.train(was_training)
    return {f"val/{k.split('/', 1)[-1] if k.startswith(objective.name + '/') else k}": v / len(examples)
            for k, v in sums.items()}


def train_offline(objective: Objective, examples: list, init_dir, out_dir, config: OfflineConfig,
                  resume: bool = False, overwrite: bool = False, show_progress: bool = True, on_step=None,
                  **config_extra) -> GPT:
    """Train the GPT-2 in `init_dir` on `examples` with `objective`; write a self-contained model directory.

    The directory holds config.json, model.safetensors, tokenizer.json, train_config.json, metrics.jsonl (one
    row per step), plots/ and checkpoints/ (for --resume). Nothing is written before every input is checked.
    `on_step(model, row)` is called after each logged step (the comparison recipe evaluates the policy there).
    """
    if not examples:
        raise InputError(f"no examples to train {objective.name} on")
    if Path(out_dir).resolve() == Path(init_dir).resolve():
        raise InputError(f"{out_dir}: --out must differ from --init")
    device = resolve_device(config.device)
    rank, world = init_distributed(device)                       # torchrun: see runtime.py
    run = Run(out_dir, objective.name, config.steps, resume, overwrite, inputs=(init_dir,),
              save_every=config.save_every, show_progress=show_progress)
    seed_everything(config.seed)
    tokenizer, model, max_len = load_policy(init_dir, config.max_len, device)
    sync_params(model)
    pad = tokenizer.pad_id
    train, val = train_val_split(objective.encode(examples, tokenizer, max_len), config.val_fraction, config.seed)
    objective.prepare(model, train, val, pad)                     # the --init policy, before any restore
    optimizer = make_adamw(model, config.lr, config.weight_decay)
    start, _ = run.restore({"model": model}, optimizer, {})      # read (and checked) before any write
    run.begin(config, tokenizer, start, **config_extra)          # nothing is written before this line
    batch_size = min(config.batch_size, len(train))
    name = objective.name
    model.train()                                                # dropout is 0: train() changes nothing
    t0 = time.time()
    for step in range(start, config.steps):
        lr = lr_at(step, config.steps, config.lr, config.warmup_steps, "cosine", config.min_lr_ratio)
        set_lr(optimizer, lr)
        # torchrun: rank r takes the r-th of `world` consecutive batches of the same shuffled order
        batch = [train[i] for i in batch_indices(step * world + rank, len(train), batch_size, config.seed)]
        loss, stats = objective.loss(model, batch, pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(model)                                 # torchrun: the mean gradient over ranks
        grad_norm = clip_grad(model, config.grad_clip)
        row = {"step": step + 1, **{k: float(v) for k, v in stats.items()}, f"{name}/grad_norm": grad_norm,
               f"{name}/lr": lr, f"{name}/epoch": (step + 1) * batch_size * world / len(train),
               "time/elapsed_s": time.time() - t0}
        row = mean_across_ranks(row)                             # torchrun: metrics are means over ranks
        check_finite(row, step + 1, [f"{name}/loss", f"{name}/grad_norm"])  # before the step: no NaN update
        optimizer.step()
        if val and is_main_process() and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
            row.update(evaluate(objective, model, val, pad, config.eval_batch_size))
        run.log(row, loss=f"{row[f'{name}/loss']:.3f}")
        if on_step is not None:
            on_step(model, row)
        run.maybe_checkpoint(step + 1)                           # every rank (RNG states gathered)
    model.eval()
    run.finish(lambda: model.save_pretrained(run.out, tokenizer))
    return model
