"""RRHF (Yuan et al. 2023, "Rank Responses to align Human Feedback"): teach the policy to score a query's K
responses in the order a reward gave them, plus fine-tuning on the best one. No reference model, no
sampling during training.

    rankings {query, responses, scores} ──responses.py──▶ K sequences [bos] query ⊕ response [eos] per query
        ──ONE forward over every response of the batch──▶ token logps (B, K, T) and a candidate mask
        ──p_i = Σ_t log π(y_i,t) / |y_i| ** length_penalty──▶ L_rank = Σ_{r_i < r_j} max(0, p_i − p_j)
        ──NLL of the best-scored response, per token──▶ L_sft
        loss = rrhf_weight · L_rank + L_sft

CPU: `minirlhf rrhf --data rankings.jsonl --init runs/lm --out runs/rrhf --steps 100` (a step is one forward
and backward over Σ K sequences of batch_size queries). GPU: add `--device cuda` (bf16 autocast) and a bigger
batch, e.g. `--batch_size=32`. Several processes: `torchrun --nproc_per_node 2 -m minirlhf rrhf ...`.

Choices and simplifications, said out loud:
  * The loss is the authors' code's, rrhf_weight · L_rank + L_sft (GanjinZero/RRHF train.py; their scripts
    use rrhf_weight 1); the paper writes L_rank + L_sft, which is rrhf_weight = 1. L_rank is averaged over
    queries, not summed over a batch (losses.rrhf_loss); L_sft is the mean NLL over the best response's real
    tokens, never over its padding (losses.rrhf_sft_loss). Tied rewards make no pair; of tied bests the first
    is fine-tuned on.
  * Queries may have different numbers K of responses: they are padded to the batch's largest K and a
    candidate mask keeps the padded ones out of every pair and of the SFT term.
  * Where a response came from: a ranking line may say, with "sources": ["provided" | "sampled", ...], which
    responses the data set provided (human or other-model answers) and which a policy sampled (RRHF's
    candidates from several sampling policies). only_use_provide keeps the provided ones, only_use_sample the
    sampled ones (the authors' code keeps the last two responses of a query, or drops them, instead of reading
    a label). A line without "sources" counts as all provided. A query left with fewer than two responses
    has no pair to rank and is dropped, with one warning counting them.
  * A query's K responses share its prompt; a long query loses its start first (responses.join). The
    authors' own warning, that a too-short maximum length leaves only prompt tokens and a loss of 0, cannot
    happen here: a response is never cut to nothing.

Metrics (metrics.jsonl, one row per step): rrhf/loss, rrhf/rank_loss, rrhf/sft_loss; rrhf/accuracy, the share
of the batch's pairs with different rewards whose scores p are in the reward's order (equal p counts as
wrong); rrhf/grad_norm, rrhf/lr, rrhf/epoch; every eval_every steps val/loss, val/rank_loss, val/sft_loss and
val/accuracy on the held-out queries.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .config import keeps_old_names, validate
from .data import Ranking
from .errors import InputError
from .losses import rrhf_loss, rrhf_sft_loss, sequence_scores
from .model import GPT
from .offline import Objective, OfflineConfig, train_offline
from .preference_losses import worse_pairs
from .responses import Joined, collate_responses, encode_prompt_responses, token_logps


@keeps_old_names
@dataclass
class RRHFConfig(OfflineConfig):
    length_penalty: float = 1.0
    """p_i = Σ log π / |y_i| ** length_penalty: 1 the per-token mean (the paper's), 0 the sum."""
    rrhf_weight: float = 1.0
    """Weight of the ranking loss: loss = rrhf_weight · L_rank + L_sft (the authors' scripts use 1)."""
    only_use_provide: bool = False
    """Train only on responses whose "sources" entry is "provided" (lines without sources: all provided)."""
    only_use_sample: bool = False
    """Train only on responses whose "sources" entry is "sampled"."""

    def __post_init__(self):
        super().__post_init__()
        validate(self, non_negative=("rrhf_weight",))
        if self.only_use_provide and self.only_use_sample:
            raise InputError("--only_use_provide and --only_use_sample exclude each other: set at most one")


def select_responses(rankings: list[Ranking], only_use_provide: bool, only_use_sample: bool) -> list[Ranking]:
    """Keep the responses of the wanted source; drop (with one warning) queries left with fewer than two."""
    if not (only_use_provide or only_use_sample):
        return rankings
    want = "provided" if only_use_provide else "sampled"
    out = []
    for r in rankings:
        keep = [k for k, s in enumerate(r.sources or ["provided"] * len(r.responses)) if s == want]
        if len(keep) >= 2:
            out.append(Ranking(r.query, [r.responses[k] for k in keep], [r.scores[k] for k in keep],
                               [want] * len(keep)))
    if not out:
        raise InputError(f"no query has two or more {want} responses to rank")
    if len(out) < len(rankings):
        warnings.warn(f"{len(rankings) - len(out)} of {len(rankings)} queries have fewer than two {want} responses "
                      f"and were dropped")
    return out


@dataclass
class RankExample:
    """One query's K sequences and their rewards."""
    seqs: list[Joined]
    scores: list[float]


def group_rows(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (N, ...) of B groups of `sizes` rows each -> (B, K, ...) zero-padded to K = max(sizes), and the
    candidate mask (B, K), True on real rows. Keeps the gradient."""
    B, K = len(sizes), max(sizes)
    rows = torch.repeat_interleave(torch.arange(B), torch.tensor(sizes)).to(x.device)
    cols = torch.cat([torch.arange(k) for k in sizes]).to(x.device)
    out = x.new_zeros((B, K) + tuple(x.shape[1:]))
    out[rows, cols] = x
    real = torch.zeros(B, K, dtype=torch.bool, device=x.device)
    real[rows, cols] = True
    return out, real


def pair_accuracy(p: torch.Tensor, rewards: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Share of pairs (i, j) of real candidates with r_i < r_j whose scores agree, p_i < p_j (ties in p are
    wrong; pairs with tied rewards are skipped). p, rewards, real (B, K) -> 0-dim; 0 with no such pair."""
    worse = worse_pairs(rewards, real)                                  # [b, i, j]: i is worse than j
    right = worse & (p[:, :, None] < p[:, None, :])
    return right.sum() / worse.sum().clamp(min=1)


class RRHF(Objective):
    name = "rrhf"

    def __init__(self, config: RRHFConfig):
        self.config = config

    def encode(self, examples, tokenizer, max_len):
        joined, _ = encode_prompt_responses(tokenizer, [r.query for r in examples],
                                            [r.responses for r in examples], max_len)
        return [RankExample(seqs, r.scores) for seqs, r in zip(joined, examples)]

    def loss(self, model, batch, pad_id):
        sizes = [len(ex.seqs) for ex in batch]
        flat = collate_responses([s for ex in batch for s in ex.seqs], pad_id, next(model.parameters()).device)
        logps, real = group_rows(token_logps(model, flat), sizes)      # (B, K, T-1): ONE forward, Σ K sequences
        mask, _ = group_rows(flat.response_mask, sizes)                 # (B, K, T-1)
        rewards, _ = group_rows(torch.tensor([s for ex in batch for s in ex.scores], device=logps.device), sizes)
        p = sequence_scores(logps, mask, self.config.length_penalty)   # (B, K)
        rank = rrhf_loss(p, rewards, real)
        sft = rrhf_sft_loss(logps, mask, rewards, real)
        loss = self.config.rrhf_weight * rank + sft
        return loss, {"rrhf/loss": loss.detach(), "rrhf/rank_loss": rank.detach(), "rrhf/sft_loss": sft.detach(),
                      "rrhf/accuracy": pair_accuracy(p.detach(), rewards, real)}


def train_rrhf(rankings: list[Ranking], init_dir, out_dir, config: RRHFConfig, resume: bool = False,
               overwrite: bool = False, show_progress: bool = True, on_step=None) -> GPT:
    """RRHF-train the GPT-2 in `init_dir` on rankings {query, responses, scores[, sources]}; write a
    self-contained model directory (as train_dpo)."""
    for r in rankings:
        if not isinstance(r, Ranking):
            raise InputError(f"RRHF trains on rankings {{query, responses, scores}}, got a {type(r).__name__}")
    rankings = select_responses(rankings, config.only_use_provide, config.only_use_sample)
    return train_offline(RRHF(config), rankings, init_dir, out_dir, config, resume, overwrite, show_progress, on_step)
