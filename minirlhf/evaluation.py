"""Evaluating a policy: sample, score, and measure what RL did to it.

    reward        mean reward-model score of the samples (what PPO optimised)
    kl            mean over samples of Σ_t (log π − log π_ref): nats the policy moved from its reference
    distinct-n    distinct n-grams / all n-grams over every response (Li et al. 2016): falls when the
                  policy collapses to one phrase, the classic failure of over-optimisation
A task can add its own independent judge (the sentiment demo uses snownlp's classifier), which is the
honest check: the reward model is what the policy was trained to please.

`make_preferences` turns a policy's samples, ranked by a reward model, into training data for the offline
methods: best-vs-worst Pairs for DPO and all-k Rankings for RRHF.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .advantages import kl_penalty
from .data import Pair, Ranking
from .model import GPT, RewardModel
from .reward_eval import score_sequences
from .rollout import apply_missing_eos_penalty, collect, score
from .runtime import autocast
from .sampling import sample_batches
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
    (rollout.collect) and the same k1 estimator (advantages.kl_penalty) as PPO's."""
    gen = torch.Generator().manual_seed(seed)
    room = policy.config.block_size - max_new_tokens
    texts = [p for p in prompts for _ in range(n_per_prompt)]
    out = Samples([], [], [], [])
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        ro = collect(policy, ref, reward, tokenizer.encode_prompts(chunk, room), max_new_tokens, temperature,
                     tokenizer.eos_id, tokenizer.pad_id, gen)
        out.prompts += chunk
        out.responses += tokenizer.decode_batch(ro.responses.tolist())
        out.rewards += ro.scores.tolist()
        out.kl += (kl_penalty(ro.logprobs, ro.ref_logprobs, "k1") * ro.response_mask).sum(-1).tolist()
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


@torch.no_grad()
def make_preferences(policy: GPT, reward, tokenizer: Tokenizer, prompts: list[str], k: int, max_new_tokens: int,
                     seed: int = 0, temperature: float = 1.0, batch_size: int = 128,
                     missing_eos_penalty: float | None = None) -> tuple[list[Pair], list[Ranking]]:
    """k samples of `policy` for each prompt, scored by `reward` -> (pairs, rankings).

    rankings: one Ranking per prompt with its k responses, their scores and sources "sampled" (RRHF's input).
    pairs: per prompt, the best-scored response as chosen and the worst as rejected (the first of tied ones;
    DPO's input); a prompt whose k scores are all equal, or whose best and worst texts are the same, gives no
    pair, so there may be fewer pairs than prompts.

    `reward` is a RewardModel (normalised scores, read at the last real token of prompt ⊕ response, as PPO is
    rewarded) or a callable fn(sequences, response_mask) -> (B,), as rollout.score takes it. Sampling is
    plain (no top-k / top-p) at `temperature`, from one CPU generator seeded `seed` (sampling.sample_batches);
    with missing_eos_penalty a response that never produced EOS gets that score instead. Responses are text:
    decoded without special tokens, so training re-encodes them (a response that hit max_new_tokens is then
    given an EOS; a byte-level tokenizer may split a sampled text differently). A response that is EOS alone
    is the empty string, which data files (data.load_pairs) refuse: keep such pairs in memory or filter them.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2 (a preference needs two responses), got {k}")
    device = next(policy.parameters()).device
    texts, scores = [], []
    for _, gen in sample_batches(policy, tokenizer, prompts, k, max_new_tokens, temperature, seed, batch_size):
        with autocast(device):
            s = score(reward, gen.sequences, gen.attention_mask, gen.response_mask.float())
        scores += apply_missing_eos_penalty(s, gen.responses, tokenizer.eos_id, missing_eos_penalty).tolist()
        texts += tokenizer.decode_batch(gen.responses.tolist())
    pairs, rankings = [], []
    for i, prompt in enumerate(prompts):
        r, s = texts[i * k:(i + 1) * k], scores[i * k:(i + 1) * k]
        rankings.append(Ranking(prompt, r, s, ["sampled"] * k))
        best, worst = s.index(max(s)), s.index(min(s))
        if s[best] > s[worst] and r[best] != r[worst]:
            pairs.append(Pair(prompt, r[best], r[worst]))
    return pairs, rankings
