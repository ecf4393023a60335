"""Judging and calibrating a reward model: pair accuracies, validation, and the normalisation of its scores.

    accuracy          share of untied pairs scored in the right order (equal scores count as wrong)
    ranking accuracy  share of prompts whose every untied pair is right
    normalisation     gain, bias so that the scores of the initial policy's samples have mean 0 and std 1
                      (Ziegler et al. 2019; lm-human-preferences): what PPO's KL coefficient is sized against
"""
from __future__ import annotations

import math

import torch

from .losses import ordered_pairs
from .model import GPT, RewardModel
from .rollout import score
from .sampling import left_pad, sample_batches
from .tokenizer import Tokenizer


@torch.no_grad()
def pair_stats(rewards: torch.Tensor, ranks: torch.Tensor) -> dict:
    """Sums over the untied pairs of (n, K) rewards: pairs, correctly ordered ones, r_better - r_worse,
    and prompts whose every untied pair is right (a fully correct ranking)."""
    diff, valid = ordered_pairs(rewards, ranks)  # (n, P): r_better - r_worse; valid False on tied ranks
    correct = (diff > 0) & valid                  # equal scores count as wrong
    return {"pairs": int(valid.sum()), "correct": int(correct.sum()), "margin": float(diff[valid].sum()),
            "prompts": rewards.shape[0], "ranked": int((correct | ~valid).all(1).sum())}


def summarize(groups, prefix: str) -> dict:
    """Accuracy (untied pairs ordered right), ranking accuracy (prompts fully right), mean margin."""
    s = {"pairs": 0, "correct": 0, "margin": 0.0, "prompts": 0, "ranked": 0}
    for r, rk in groups:
        for k, v in pair_stats(r.float(), rk).items():
            s[k] += v
    return {f"{prefix}/accuracy": s["correct"] / max(s["pairs"], 1),
            f"{prefix}/ranking_accuracy": s["ranked"] / max(s["prompts"], 1),
            f"{prefix}/margin_mean": s["margin"] / max(s["pairs"], 1)}


def score_sequences(model: RewardModel, seqs: list[list[int]], pad_id: int, batch_size: int | None = None,
                    normalized: bool = False) -> torch.Tensor:
    """Scores (N,) of N token lists, left-padded and attention-masked, by rollout.score: raw scores (what the
    losses see) or normalised ones (gain·raw + bias, what a policy is rewarded with). One forward pass when
    batch_size is None, else one per batch_size sequences."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), batch_size or max(len(seqs), 1)):
        ids, mask = left_pad(seqs[i:i + (batch_size or len(seqs))], pad_id, device)   # (n, T), (n, T)
        out.append(score(model, ids, mask, raw=not normalized))
    return torch.cat(out)


def reference_samples(policy: GPT, tokenizer: Tokenizer, prompts: list[str], n: int, max_new_tokens: int,
                      seed: int, batch_size: int) -> list[list[int]]:
    """n sequences [bos] prompt ⊕ response sampled (T = 1) from `policy`, as evenly as possible over the
    distinct prompts (BOS alone when there are none); too-long prompts keep their end."""
    distinct = list(dict.fromkeys(p for p in prompts if p)) or [""]
    max_new = min(max_new_tokens, policy.config.block_size - 1)
    seqs = [row[m.bool()].tolist()
            for _, g in sample_batches(policy, tokenizer, distinct, math.ceil(n / len(distinct)), max_new,
                                       seed=seed + 1, batch_size=batch_size)
            for row, m in zip(g.sequences, g.attention_mask)]
    return seqs[:n]


@torch.no_grad()
def fit_reward_normalization(model: RewardModel, seqs: list[list[int]], pad_id: int, batch_size: int = 64) -> dict:
    """Set gain, bias so that model(seqs) has mean 0, std 1; return the statistics."""
    was_training = model.training
    model.eval()
    raw = score_sequences(model, seqs, pad_id, batch_size)
    model.fit_normalization(raw)
    model.train(was_training)
    return {"n": len(seqs), "raw_mean": raw.mean().item(), "raw_std": raw.std(unbiased=False).item(),
            "gain": model.gain.item(), "bias": model.bias.item()}


def normalization_set(reference_texts, init_dir, prompts, tokenizer, config, max_len: int,
                      device) -> tuple[list[list[int]], str]:
    """The sequences normalisation is fitted on, and where they come from: `reference_texts` encoded like
    training sequences if given, else samples of the --init policy on the training prompts."""
    if reference_texts is not None:
        return tokenizer.encode_texts(list(reference_texts), max_len), "reference_texts"
    policy = GPT.from_pretrained(init_dir).to(device)
    seqs = reference_samples(policy, tokenizer, prompts, config.norm_samples, config.norm_max_new_tokens,
                             config.seed, config.eval_batch_size)
    return seqs, f"{config.norm_samples} samples of the --init policy on the training prompts"
