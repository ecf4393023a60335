"""Pretraining and supervised fine-tuning: next-token prediction. Its output is the reference policy.

    pretrain   loss = mean over real tokens t of  −log p(x_t | x_<t)           (each text is [bos] x_1 … x_n [eos])
    train_sft  loss = mean over RESPONSE tokens of −log p(y_t | x, y_<t)       (InstructGPT's first step: a
               demonstration {prompt x, response y} is [bos] x ⊕ y [eos]; the prompt is context, never a target)

CPU: `minirlhf pretrain --text reviews.txt --out runs/lm` (a 4-layer, 256-wide GPT-2 learns Chinese
review text in a few minutes). GPU: add `--device cuda` (bf16 autocast) and a bigger preset, e.g.
`--n_layer=12 --n_embd=768 --n_head=12`. Several processes: `torchrun --nproc_per_node 2 -m minirlhf
pretrain ...` (runtime.py: each rank samples `batch_size` texts from its own seed; gradients averaged).
Both are objectives of the step trainer (steps.py), which runs the loop, the validation and the checkpoints.

Supervised fine-tuning on demonstrations: `minirlhf sft --data demos.jsonl --init runs/lm --out runs/sft`
({"prompt", "response"} lines; `--device cuda` on a GPU). It runs on offline.py's run with the encoding DPO
and RRHF use (responses.py): prompt and response encoded apart and joined, a long example losing its
prompt's start first, right-padded batches with an attention mask.

Simplifications: one document per row, right-padded within a batch (causal attention means real tokens
never see the pads after them, so no attention mask is needed; pads are dropped from the loss). Texts
longer than block_size are cut at the end. No packing, no gradient accumulation. SFT's loss weighs every
response token of a batch the same (a long response counts more than a short one, as in pretraining); under
torchrun it is the mean over ranks of each rank's token mean, which equals the token mean of the whole batch
only when the ranks hold as many response tokens each.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import TrainConfig, keeps_old_names, validate
from .data import Demonstration, train_val_split
from .errors import InputError
from .model import GPT, GPTConfig
from .offline import Objective, OfflineConfig, train_offline
from .ops import masked_mean
from .responses import ResponseBatch, collate_responses, encode_prompt_responses, token_logps
from .run import Run
from .runtime import autocast, init_distributed, rank_seed, resolve_device, seed_everything, sync_params
from .steps import RandomBatches, StepObjective, train_steps
from .tokenizer import Tokenizer


@keeps_old_names
@dataclass
class PretrainConfig(TrainConfig):
    """Pretraining's fields; the step, optimiser and run fields are config.TrainConfig's."""
    vocab_size: int = 3000
    """Tokenizer vocabulary size when a tokenizer is trained here (ignored when one is given)."""
    tokenizer_kind: str = "char"
    """'char' (one token per character; right for Chinese) or 'bpe' (byte-level BPE, as GPT-2): use bpe for
    English and other languages written with spaces, which a char vocabulary reads letter by letter."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads."""
    n_embd: int = 256
    """Model width."""
    block_size: int = 96
    """Context length in tokens; longer texts are cut."""
    dropout: float = 0.0
    """Dropout during pretraining."""
    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 32
    """Texts per step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 30
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices."""
    val_fraction: float = 0.05
    """Share of texts held out for the validation loss."""
    eval_every: int = 100
    """Steps between validation losses (and at the last step)."""
    compile: bool = False
    """Opt-in torch.compile of the training forward (worth it on a GPU for larger models: GPT-2 124M
    went from 32% to 38% MFU on an H100, benchmarks/RESULTS.md; the first steps pay the compile time)."""

    def __post_init__(self):
        super().__post_init__()
        validate(self, positive=("vocab_size", "n_layer", "n_head", "n_embd"),
                 choices={"tokenizer_kind": ("char", "bpe")})
        if self.vocab_size < 260:
            raise InputError(f"--vocab_size must be at least 260 (3 special and 256 byte tokens come first), "
                             f"got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise InputError(f"--n_embd={self.n_embd} must be divisible by --n_head={self.n_head}")
        if self.block_size < 2:
            raise InputError(f"--block_size must be at least 2, got {self.block_size}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"--dropout must be in [0, 1), got {self.dropout}")


def collate(docs: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-pad token lists into a (B, T) tensor."""
    T = max(len(d) for d in docs)
    out = torch.full((len(docs), T), pad_id, dtype=torch.long)
    for i, d in enumerate(docs):
        out[i, :len(d)] = torch.as_tensor(d)
    return out


def lm_loss(model: GPT, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean next-token cross-entropy over real target tokens of a right-padded batch."""
    logits = model(ids[:, :-1])
    targets = ids[:, 1:].masked_fill(ids[:, 1:] == pad_id, -100)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


@torch.no_grad()
def evaluate_loss(model: GPT, docs: list[list[int]], pad_id: int, device, batch_size: int = 64) -> float:
    """Token-weighted mean loss over `docs`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(docs), batch_size):
        ids = collate(docs[i:i + batch_size], pad_id).to(device)
        n = int((ids[:, 1:] != pad_id).sum())
        with autocast(device):
            total += lm_loss(model, ids, pad_id).item() * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


class Pretraining(StepObjective):
    """Next-token prediction on whole texts, for the step trainer (steps.py): each step's texts drawn at random,
    with replacement, from `generator`; the loss and val/loss token means. `forward` is the model the training
    loss runs (torch.compile's wrapper, sharing the model's parameters; None: the model itself)."""
    name, prefix = "pretrain", "train"

    def __init__(self, generator: torch.Generator, device, forward=None):
        self.generator, self.device, self.forward = generator, device, forward

    def batches(self, train, config):
        return RandomBatches(len(train), config.batch_size, self.generator)

    def loss(self, model, batch, pad_id):
        ids = collate(batch, pad_id).to(self.device)
        with autocast(self.device):
            loss = lm_loss(self.forward or model, ids, pad_id)
        return loss, {"train/loss": loss.detach()}

    def validate(self, model, examples, pad_id, batch_size):
        return {"val/loss": evaluate_loss(model, examples, pad_id, self.device, batch_size)}


def pretrain(texts: list[str], out_dir, config: PretrainConfig, tokenizer: Tokenizer | None = None,
             resume: bool = False, overwrite: bool = False, show_progress: bool = True):
    """Train a tokenizer (unless given) and a GPT on `texts`; write a self-contained model directory.

    Returns (model, tokenizer). The directory holds config.json, model.safetensors, tokenizer.json,
    metrics.jsonl (one row per step), plots/ and checkpoints/ for --resume. Nothing is written (and
    with --overwrite nothing is deleted) before every input has been checked. Metrics: train/loss,
    train/grad_norm, train/lr and, every eval_every steps, val/loss.
    """
    if not texts:
        raise InputError("no texts to train on")
    device = resolve_device(config.device)
    init_distributed(device)
    run = Run(out_dir, "pretrain", config.steps, resume, overwrite, save_every=config.save_every,
              show_progress=show_progress)
    gen = seed_everything(rank_seed(config.seed))  # rank 0: config.seed; its init is broadcast below
    if run.ckpt is not None:
        tokenizer = Tokenizer.from_file(run.out / "tokenizer.json")
    elif tokenizer is None:
        tokenizer = Tokenizer.train(texts, config.vocab_size, kind=config.tokenizer_kind)

    train_texts, val_texts = train_val_split(texts, config.val_fraction, config.seed)
    train_docs = tokenizer.encode_texts(train_texts, config.block_size)
    val_docs = tokenizer.encode_texts(val_texts, config.block_size)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=config.n_layer, n_head=config.n_head,
                          n_embd=config.n_embd, block_size=config.block_size, dropout=config.dropout)).to(device)
    sync_params(model)
    forward = torch.compile(model) if config.compile else None   # shares its parameters with `model`
    objective = Pretraining(gen, device, forward)
    return train_steps(objective, model, tokenizer, run, config, train_docs, val_docs), tokenizer


# ---------------------------------------------------------------- supervised fine-tuning on demonstrations


@keeps_old_names
@dataclass
class SFTConfig(OfflineConfig):
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    val_fraction: float = 0.05
    """Share of demonstrations held out for val/loss."""


def response_nll(model: GPT, batch: ResponseBatch) -> torch.Tensor:
    """Mean −log p(y_t | x, y_<t) over the response tokens of a batch (EOS included): the prompt's own
    predictions, and the padding's, are masked out of the mean, so they get no gradient."""
    return masked_mean(-token_logps(model, batch), batch.response_mask)


class SFT(Objective):
    name = "sft"

    def encode(self, examples, tokenizer, max_len):
        for d in examples:
            if not isinstance(d, Demonstration):
                raise InputError(f"SFT trains on demonstrations {{prompt, response}}, got a {type(d).__name__}")
        joined, _ = encode_prompt_responses(tokenizer, [d.prompt for d in examples],
                                            [[d.response] for d in examples], max_len)
        return [j for (j,) in joined]

    def loss(self, model, batch, pad_id):
        loss = response_nll(model, collate_responses(batch, pad_id, next(model.parameters()).device))
        return loss, {"sft/loss": loss.detach()}


def train_sft(demonstrations: list[Demonstration], init_dir, out_dir, config: SFTConfig, resume: bool = False,
              overwrite: bool = False, show_progress: bool = True, on_step=None) -> GPT:
    """Fine-tune the GPT-2 in `init_dir` on {prompt, response} demonstrations, the loss on response tokens
    only; write a self-contained model directory (as pretrain). Metrics: sft/loss, sft/grad_norm, sft/lr,
    sft/epoch and, every eval_every steps, val/loss."""
    return train_offline(SFT(), demonstrations, init_dir, out_dir, config, resume, overwrite, show_progress, on_step)
