"""Evaluating a policy: sample, score, and measure what RL did to it.

    reward        mean reward-model score of the samples (what PPO optimised)
    kl            mean over samples of Σ_t (log π − log π_ref): nats the policy moved from its reference
    distinct-n    distinct n-grams / all n-grams over every response (Li et al. 2016): falls when the
                  policy collapses to one phrase, the classic failure of over-optimisation
    best-of-n     the zero-training baseline: keep the best of n samples by the reward model (best_of_n)
A task can add its own independent judge (the sentiment demo uses snownlp's classifier), which is the
honest check: the reward model is what the policy was trained to please.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .advantages import kl_penalty
from .model import GPT, RewardModel
from .reward_eval import score_sequences
from .rollout import rollouts, score
from .sampling import sample_batches
from .scaling_laws import best_of_n_kl_bound  # noqa: F401  (imported from here by notebooks and recipes)
from .tokenizer import Tokenizer


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct character n-grams over all n-grams of all texts (0 when there are none)."""
    grams = [t[i:i + n] for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class Samples:
    prompts: list[str]      # one per sample
    responses: list[str]
    rewards: list[float]
    kl: list[float]         # Σ_t log π − log π_ref per sample


@torch.no_grad()
def sample_and_score(policy: GPT, ref: GPT, reward: RewardModel, tokenizer: Tokenizer, prompts: list[str],
                     n_per_prompt: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                     batch_size: int = 128) -> Samples:
    """n_per_prompt samples for each prompt, with reward and KL to the reference: the same rollout
    (rollout.rollouts, batch_size at a time, one CPU generator seeded `seed`) and the same k1 estimator
    (advantages.kl_penalty) as PPO's."""
    out = Samples([], [], [], [])
    for chunk, ro in rollouts(policy, ref, reward, tokenizer, prompts, n_per_prompt, max_new_tokens, temperature,
                              seed, batch_size):
        out.prompts += chunk
        out.responses += tokenizer.decode_batch(ro.responses.tolist())
        out.rewards += ro.scores.tolist()
        out.kl += kl_penalty(ro.logprobs, ro.ref_logprobs, "k1", ro.response_mask).sum(-1).tolist()
    return out


@torch.no_grad()
def best_of_n(policy: GPT, reward: RewardModel, tokenizer: Tokenizer, prompts: list[str], n_per_prompt: int,
              n: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0, batch_size: int = 128) -> Samples:
    """The zero-training baseline: for each of n_per_prompt draws per prompt, sample n responses from `policy`
    and keep the one the reward model scores highest (rejection sampling; Nakano et al. 2021, Gao et al. 2022).

    Returns the kept samples; their `kl` is best_of_n_kl_bound(n) (an upper bound, not an estimate from the
    samples). n = 1 is the policy itself. Costs n times the sampling and no gradient step.
    """
    if n < 1:
        raise ValueError(f"best_of_n needs n >= 1, got {n}")
    out = Samples([], [], [], [])
    per_batch = max(1, batch_size // n) * n              # the n candidates of a draw stay in one batch
    draws = [p for p in prompts for _ in range(n_per_prompt)]
    for chunk, g in sample_batches(policy, tokenizer, draws, n, max_new_tokens, temperature, seed, per_batch):
        scores = score(reward, g.sequences, g.attention_mask, g.response_mask.float())
        best = scores.view(-1, n).argmax(1) + torch.arange(0, len(chunk), n, device=scores.device)   # (draws,)
        out.prompts += chunk[::n]
        out.responses += tokenizer.decode_batch(g.responses[best].tolist())
        out.rewards += scores[best].tolist()
    out.kl = [best_of_n_kl_bound(n)] * len(out.rewards)
    return out


def score_texts(rm: RewardModel, tokenizer: Tokenizer, texts: list[str], batch_size: int = 128) -> torch.Tensor:
    """Reward-model scores (B,) of full texts, each fed as [bos] + text + [eos] like a training sequence (a
    text too long for the context keeps its start: a byte-fallback character takes several tokens)."""
    seqs = tokenizer.encode_texts(texts, rm.config.block_size)
    return score_sequences(rm, seqs, tokenizer.pad_id, batch_size, normalized=True).cpu()


def summary(samples: Samples) -> dict:
    n = max(len(samples.rewards), 1)
    return {"reward": sum(samples.rewards) / n, "kl": sum(samples.kl) / n,
            "distinct_2": distinct_n(samples.responses, 2), "n": len(samples.rewards)}
