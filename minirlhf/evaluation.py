"""Evaluating a policy: sample, score, and measure what RL did to it.

    reward        mean reward-model score of the samples (what PPO optimised)
    kl            mean over samples of Σ_t (log π − log π_ref): nats the policy moved from its reference
    distinct-n    distinct n-grams / all n-grams over every response (Li et al. 2016): falls when the
                  policy collapses to one phrase, the classic failure of over-optimisation
A task can add its own independent judge (the sentiment demo uses snownlp's classifier), which is the
honest check: the reward model is what the policy was trained to please.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import GPT, RewardModel
from .rollout import sequence_logprobs
from .runtime import autocast
from .sampling import generate
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
def sample_batches(policy: GPT, tokenizer: Tokenizer, prompts: list[str], n_per_prompt: int, max_new_tokens: int,
                   temperature: float = 1.0, seed: int = 0, batch_size: int = 128):
    """Yield (prompt texts, GenerationOutput) per batch: n_per_prompt samples of each prompt, in order."""
    gen = torch.Generator().manual_seed(seed)
    texts = [p for p in prompts for _ in range(n_per_prompt)]
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        ids = [[tokenizer.bos_id] + t for t in tokenizer.encode_batch(chunk)]
        yield chunk, generate(policy, ids, max_new_tokens, temperature=temperature, eos_id=tokenizer.eos_id,
                              pad_id=tokenizer.pad_id, generator=gen)


@torch.no_grad()
def sample_and_score(policy: GPT, ref: GPT, reward: RewardModel, tokenizer: Tokenizer, prompts: list[str],
                     n_per_prompt: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                     batch_size: int = 128) -> Samples:
    """n_per_prompt samples for each prompt, with reward and KL to the reference."""
    device = next(policy.parameters()).device
    out = Samples([], [], [], [])
    for chunk, g in sample_batches(policy, tokenizer, prompts, n_per_prompt, max_new_tokens, temperature, seed,
                                   batch_size):
        mask = g.response_mask.float()
        with autocast(device):
            lp = sequence_logprobs(policy, g.sequences, g.attention_mask, g.prompt_len, temperature)
            ref_lp = sequence_logprobs(ref, g.sequences, g.attention_mask, g.prompt_len, temperature)
            scores = reward(g.sequences, g.attention_mask).float()
        out.prompts += chunk
        out.responses += tokenizer.decode_batch(g.responses.tolist())
        out.rewards += scores.tolist()
        out.kl += ((lp - ref_lp) * mask).sum(-1).tolist()
    return out


@torch.no_grad()
def score_texts(rm: RewardModel, tokenizer: Tokenizer, texts: list[str], batch_size: int = 128) -> torch.Tensor:
    """Reward-model scores (B,) of full texts, each fed as [bos] + text + [eos] (cut to fit the context:
    a byte-fallback character takes several tokens), left-padded in batches."""
    from .sampling import left_pad
    device = next(rm.parameters()).device
    room = rm.config.block_size - 2
    out = []
    for i in range(0, len(texts), batch_size):
        ids = [[tokenizer.bos_id] + x[:room] + [tokenizer.eos_id] for x in tokenizer.encode_batch(texts[i:i + batch_size])]
        seq, mask = left_pad(ids, tokenizer.pad_id, device)
        with autocast(device):
            out.append(rm(seq, mask).float().cpu())
    return torch.cat(out)


def summary(samples: Samples) -> dict:
    n = max(len(samples.rewards), 1)
    return {"reward": sum(samples.rewards) / n, "kl": sum(samples.kl) / n,
            "distinct_2": distinct_n(samples.responses, 2), "n": len(samples.rewards)}
