"""What every offline trainer (DPO, RRHF, SFT on demonstrations) shares: config fields and the run.

    examples ──objective.encode──▶ token sequences ──objective.prepare──▶ (DPO: reference logps)
    for each step:  a batch of examples ──objective.loss──▶ loss, metrics ──backward, clip, NaN guard, step
                    every eval_every steps: the same metrics on the held-out examples (val/*)

"Offline": the responses are fixed data (from people, other models, or earlier samples of the policy, see
responses.make_preferences); nothing is sampled during training. Each algorithm's file (dpo.py, rrhf.py,
sft.py) holds its config (an `OfflineConfig` with its own fields) and its `Objective`: how its examples
are encoded (responses.py) and the loss of a batch. `train_offline` loads the --init policy and splits
train/val; the loop, the logging, the checkpoints and the save are the step trainer's (steps.train_steps),
the same as pretraining's and the reward model's.

Choices, said out loud:
  * The policy loads with dropout 0 (GPT.from_pretrained), so a forward is deterministic and DPO's step-0
    invariants hold exactly.
  * The length is a number of optimizer steps; examples are reshuffled every epoch (steps.EpochBatches, a
    pure function of the step, so --resume needs no data-loader state). Linear warm-up, cosine decay.
  * Validation holds out whole examples (train_val_split); val/* are means over validation batches of
    eval_batch_size examples, weighted by their number of examples (steps.validation_means).
  * Under torchrun (runtime.py) rank r takes the r-th of N consecutive batches of the one shuffled order, so
    together they take the batch of size N·batch_size a single process would; gradients are averaged,
    metrics are means over ranks, validation runs on rank 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig, keeps_old_names, validate
from .data import train_val_split
from .errors import InputError
from .model import GPT, RewardModel
from .run import Run
from .runtime import init_distributed, resolve_device, seed_everything, sync_params
from .steps import StepObjective, train_steps
from .tokenizer import Tokenizer


@keeps_old_names
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


class Objective(StepObjective):
    """What an offline algorithm adds to the step trainer (steps.StepObjective: `name`, which names the run and
    prefixes its metrics, and the `loss` of a batch): how its examples are encoded, and `prepare`."""
    name = "offline"

    def encode(self, examples: list, tokenizer: Tokenizer, max_len: int) -> list:
        """Data examples -> what `loss` takes a batch of (token sequences, responses.Joined)."""
        raise NotImplementedError

    def prepare(self, model: GPT, train: list, val: list, pad_id: int):
        """Called once before the first step (and before a checkpoint is restored), while `model` is still
        the --init policy: DPO's reference log-probabilities are computed here."""


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
    init_distributed(device)                                     # torchrun: see runtime.py
    run = Run(out_dir, objective.name, config.steps, resume, overwrite, inputs=(init_dir,),
              save_every=config.save_every, show_progress=show_progress)
    seed_everything(config.seed)
    tokenizer, model, max_len = load_policy(init_dir, config.max_len, device)
    sync_params(model)
    train, val = train_val_split(objective.encode(examples, tokenizer, max_len), config.val_fraction, config.seed)
    objective.prepare(model, train, val, tokenizer.pad_id)       # the --init policy, before any restore
    return train_steps(objective, model, tokenizer, run, config, train, val, on_step, **config_extra)
