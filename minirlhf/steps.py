"""The step-based trainer: pretraining, SFT, reward-model training, DPO and RRHF are objectives of ONE loop.

    for step in range(start, config.steps):
        lr = linear warm-up, then cosine decay to lr·min_lr_ratio          (optim.lr_at)
        batch = this rank's examples for the step                         objective.batches
        loss, metrics = objective.loss(model, batch, pad_id)              objective.loss
        backward; average the gradients over ranks; clip; NaN guard; optimizer step
        every eval_every steps, and at the last: val/* on the held-out    objective.validate
        log the row (metrics.jsonl, the progress bar); checkpoint every save_every steps
    the model directory                                                    objective.save

Each trainer builds its model, its data and its run.Run, each in the order its inputs are checked and its
random numbers drawn (sft.pretrain, reward.train_reward_model, offline.train_offline for DPO, RRHF and SFT),
then hands them to `train_steps`. Its `StepObjective` says only what differs:

    name      the run's name (train_config.json's "trainer", the progress bar); `prefix` names its metrics
              ({prefix}/loss, {prefix}/grad_norm, {prefix}/lr, {prefix}/epoch); the name unless it says otherwise
    batches   how a step's examples are drawn: EpochBatches (every example once an epoch, a fresh order each
              epoch) unless it says otherwise (pretraining: RandomBatches, from a checkpointed generator)
    loss      the mean loss of a batch (with gradient) and its metrics, {prefix}/loss among them
    validate  val/* on the held-out examples; by default each metric of `loss`, averaged over them
    postfix   what the progress bar shows;  save  the model directory (rank 0, after the last step)

Choices, said out loud:
  * The length is a number of optimizer steps, not epochs: with EpochBatches the data are reshuffled each epoch
    of len(train) / batch_size steps. The LR is a pure function of the step, and so is an EpochBatches batch:
    --resume needs no scheduler or data-loader state (RandomBatches' generator is checkpointed).
  * The NaN guard runs after backward and BEFORE optimizer.step(): a NaN never reaches the weights, nor a
    checkpoint (tracking.check_finite).
  * Under torchrun (runtime.py) gradients are averaged and metrics are means over ranks; validation runs on
    rank 0. With EpochBatches rank r of N takes the r-th of N consecutive batches of the one shuffled order, so
    together they take the batch of size N·batch_size that one process would.
  * No gradient accumulation, no mixed-precision loss scaling (bf16 autocast on CUDA needs none).
"""
from __future__ import annotations

import time

import torch

from .data import batch_indices
from .optim import clip_grad, lr_at, make_adamw, set_lr
from .run import Run
from .runtime import average_gradients, dist_info, is_main_process, mean_across_ranks
from .tokenizer import Tokenizer
from .tracking import check_finite


class EpochBatches:
    """Every example once an epoch, in a fresh order each epoch (data.batch_indices, a pure function of the
    step); rank r of N takes the r-th of N consecutive batches. A batch holds at most len(train) examples."""
    generators: dict = {}   # nothing to checkpoint

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.rank, self.world = dist_info()

    def indices(self, step: int) -> list[int]:
        return batch_indices(step * self.world + self.rank, self.n, self.batch_size, self.seed)

    def epoch(self, step: int) -> float | None:
        """Epochs done once `step` (0-based) is, counting every rank's examples."""
        return (step + 1) * self.batch_size * self.world / self.n


class RandomBatches:
    """batch_size indices drawn uniformly, with replacement, from `generator` (saved in checkpoints as "data");
    under torchrun each rank seeds its own (runtime.rank_seed). No epochs."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generators = n, batch_size, {"data": generator}

    def indices(self, step: int) -> list[int]:
        return torch.randint(self.n, (self.batch_size,), generator=self.generators["data"]).tolist()

    def epoch(self, step: int) -> float | None:
        return None


class StepObjective:
    """What a step-based trainer adds to `train_steps` (see the module docstring)."""
    name = "steps"

    @property
    def prefix(self) -> str:
        """The prefix of the loop's metrics; a subclass may set it as a class attribute (pretraining's "train")."""
        return self.name

    def batches(self, train: list, config) -> EpochBatches | RandomBatches:
        return EpochBatches(len(train), config.batch_size, config.seed)

    def loss(self, model, batch: list, pad_id: int) -> tuple[torch.Tensor, dict]:
        """(mean loss over the batch, with grad; metrics as floats or 0-dim tensors, `{prefix}/loss` among them)."""
        raise NotImplementedError

    def validate(self, model, examples: list, pad_id: int, batch_size: int) -> dict:
        return validation_means(self, model, examples, pad_id, batch_size)

    def postfix(self, row: dict) -> dict:
        return {"loss": f"{row[f'{self.prefix}/loss']:.3f}"}

    def save(self, model, run: Run, tokenizer: Tokenizer):
        model.save_pretrained(run.out, tokenizer)


@torch.no_grad()
def validation_means(objective: StepObjective, model, examples: list, pad_id: int, batch_size: int) -> dict:
    """val/<metric>: each metric of objective.loss averaged over batches of `batch_size` examples, weighted by
    their size (a `{prefix}/` is dropped: {prefix}/loss is reported as val/loss)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        _, stats = objective.loss(model, chunk, pad_id)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(chunk)
    model.train(was_training)
    own = objective.prefix + "/"
    return {f"val/{k[len(own):] if k.startswith(own) else k}": v / len(examples) for k, v in sums.items()}


def train_steps(objective: StepObjective, model, tokenizer: Tokenizer, run: Run, config, train: list, val: list,
                on_step=None, **config_extra):
    """Train `model` on `train` for config.steps optimizer steps of `objective` (from the checkpoint `run` resumes,
    if any), validating on `val`; write the model directory (objective.save). `config` is a config.TrainConfig;
    `config_extra` is recorded in train_config.json beside it; `on_step(model, row)` is called after each logged
    step (the comparison recipe evaluates the policy there). Returns the model, in eval mode."""
    optimizer = make_adamw(model, config.lr, config.weight_decay)
    batches = objective.batches(train, config)
    start, _ = run.restore({"model": model}, optimizer, batches.generators)  # read (and checked) before any write
    run.begin(config, tokenizer, start, **config_extra)                      # nothing is written before this line
    p, pad = objective.prefix, tokenizer.pad_id
    model.train()
    t0 = time.time()
    for step in range(start, config.steps):
        lr = lr_at(step, config.steps, config.lr, config.warmup_steps, "cosine", config.min_lr_ratio)
        set_lr(optimizer, lr)
        loss, stats = objective.loss(model, [train[i] for i in batches.indices(step)], pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(model)                                 # torchrun: the mean gradient over ranks
        grad_norm = clip_grad(model, config.max_grad_norm)
        epoch = batches.epoch(step)
        row = {"step": step + 1, **{k: float(v) for k, v in stats.items()}, f"{p}/grad_norm": grad_norm,
               f"{p}/lr": lr, **({} if epoch is None else {f"{p}/epoch": epoch}), "time/elapsed_s": time.time() - t0}
        row = mean_across_ranks(row)                             # torchrun: metrics are means over ranks
        check_finite(row, step + 1, [f"{p}/loss", f"{p}/grad_norm"])  # before the step: no NaN update
        optimizer.step()
        if val and is_main_process() and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
            row.update(objective.validate(model, val, pad, config.eval_batch_size))
        run.log(row, **objective.postfix(row))
        if on_step is not None:
            on_step(model, row)
        run.maybe_checkpoint(step + 1)                           # every rank (RNG states gathered)
    model.eval()
    run.finish(lambda: objective.save(model, run, tokenizer))
    return model
