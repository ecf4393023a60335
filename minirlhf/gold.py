"""A gold reward: the sandbox's stand-in for the human, and the labels proxies learn from (Gao et al. 2022,
"Scaling Laws for Reward Model Overoptimization"; Coste et al. 2024, "Reward Model Ensembles Help Mitigate
Overoptimization").

Gao et al. could not ask people thousands of times, so they made a "gold" reward model (large, trained on real
human data) the ground truth, labelled comparisons with it, and trained small proxies on those labels. RL against
a proxy then shows over-optimisation as a measurement: the proxy keeps rising while the gold, never trained
against, peaks and falls. The gold here judges a review as a person would, a positive review AND readable text:

    gold(x, y) = sentiment(x, y) · fluency(x, y)                                   ∈ (0, 1)
    sentiment  = σ(r̂(x ⊕ y))            r̂: a reward model larger than the proxies, trained on real (positive,
                                          negative) review pairs and normalised to mean 0, std 1 on real reviews
    fluency    = max(0, 1 − rep/ρ) · exp(−max(0, nll − τ))
    rep        = share of the response's character bigrams already written earlier in x ⊕ y (loops)
    nll        = mean −log p_LM(y_t | x, y_<t) per response token under a language model larger than the
                 policy (gibberish), τ = its 90th percentile on real reviews, so real text pays nothing

ρ = 0.5 ("half the bigrams repeated is unreadable"): a real review repeats 3% of its bigrams on average (99th
percentile 23%); the loops a weakly regularised PPO run writes, 「性价比不错，性价比不错，价比不错不错」, 25–42%.
A proxy trained on the reference policy's samples rarely sees a loop, so it cannot learn the repetition term:
what Gao et al.'s proxies could not learn of their gold, here known and written down.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from .checkpoint import load_json, save_json
from .data import Pair
from .model import GPT, RewardModel
from .responses import batched_response_logps, encode_prompt_responses
from .reward_eval import score_sequences
from .tokenizer import Tokenizer

PARTS = ("sentiment", "repetition", "nll", "fluency", "gold")


def joined(tokenizer: Tokenizer, prompts, responses, max_len: int):
    """prompt ⊕ response token sequences, encoded as a rollout holds them (responses.encode_prompt_responses)."""
    out, _ = encode_prompt_responses(tokenizer, list(prompts), [[r] for r in responses], max_len)
    return [j for (j,) in out]


@torch.no_grad()
def score_responses(rm: RewardModel, tokenizer: Tokenizer, prompts, responses, batch_size: int = 256):
    """A reward model's normalised scores (N,) of (prompt, response) texts, on CPU."""
    seqs = [j.ids for j in joined(tokenizer, prompts, responses, rm.config.block_size)]
    return score_sequences(rm, seqs, tokenizer.pad_id, batch_size, normalized=True).cpu()


def repetition(prompt: str, response: str, n: int = 2) -> float:
    """Share of the response's character n-grams that already occur earlier in prompt ⊕ response (0 when the
    response has none): 0 for fresh text, near 1 for a loop. An n-gram that straddles the boundary counts as
    the response's."""
    text, start = prompt + response, len(prompt)
    firsts = range(max(start - n + 1, 0), len(text) - n + 1)
    if not firsts:
        return 0.0
    return sum(text[i:i + n] in text[:i + n - 1] for i in firsts) / len(firsts)


class GoldReward:
    """gold(x, y) = σ(r̂) · max(0, 1 − rep/ρ) · exp(−max(0, nll − τ)) (the module docstring): a text reward
    function, gold(prompts, responses) -> one number a response, so it can score, label and even train
    (reward_fns.py's signature) — though a sandbox never trains against its gold."""

    def __init__(self, rm: RewardModel, lm: GPT, tokenizer: Tokenizer, tau: float, rho: float = 0.5, n: int = 2,
                 batch_size: int = 256):
        self.rm, self.lm, self.tokenizer = rm.eval(), lm.eval(), tokenizer
        self.tau, self.rho, self.n, self.batch_size = tau, rho, n, batch_size

    def nll(self, prompts, responses) -> torch.Tensor:
        """Mean −log p_LM per response token (EOS included) (N,)."""
        seqs = joined(self.tokenizer, prompts, responses, self.lm.config.block_size)
        return -batched_response_logps(self.lm, seqs, self.tokenizer.pad_id, length_penalty=1.0,
                                       batch_size=self.batch_size)

    def parts(self, prompts, responses) -> dict[str, list[float]]:
        """Every term of the formula, one list each (PARTS), for reading what the gold saw."""
        if not len(responses):
            return {k: [] for k in PARTS}
        sentiment = torch.sigmoid(score_responses(self.rm, self.tokenizer, prompts, responses, self.batch_size))
        nll = self.nll(prompts, responses)
        rep = torch.tensor([repetition(p, r, self.n) for p, r in zip(prompts, responses)])
        fluency = (1 - rep / self.rho).clamp(min=0) * torch.exp(-(nll - self.tau).clamp(min=0))
        values = dict(sentiment=sentiment, repetition=rep, nll=nll, fluency=fluency, gold=sentiment * fluency)
        return {k: v.tolist() for k, v in values.items()}

    def __call__(self, prompts, responses) -> list[float]:
        return self.parts(prompts, responses)["gold"]

    def save(self, directory) -> None:
        """gold.json beside the two model directories (rm/, lm/) it names."""
        save_json(Path(directory) / "gold.json", {"tau": self.tau, "rho": self.rho, "n": self.n,
                                                  "rm": "rm", "lm": "lm"})

    @classmethod
    def load(cls, directory, device="cpu") -> "GoldReward":
        directory = Path(directory)
        spec = load_json(directory / "gold.json")
        rm = RewardModel.from_pretrained(directory / spec["rm"]).to(device)
        lm = GPT.from_pretrained(directory / spec["lm"]).to(device)
        tokenizer = Tokenizer.from_file(directory / spec["lm"] / "tokenizer.json")
        return cls(rm, lm, tokenizer, spec["tau"], spec["rho"], spec["n"])


def label_pairs(prompts: list[str], first: list[str], second: list[str], gold_first: list[float],
                gold_second: list[float], temperature: float = 0.0, seed: int = 0) -> list[Pair]:
    """Comparisons labelled by the gold: for each (x, y1, y2), the response with the higher gold score is chosen.

    temperature = 0: deterministic labels (Gao et al.'s), a tie (equal gold) dropped. temperature T > 0: noisy
    labels, y1 chosen with the Bradley–Terry probability σ((g1 − g2)/T) (as a person who is less sure when two
    answers are close), one draw per pair from random.Random(seed).
    """
    rng = random.Random(seed)
    pairs = []
    for x, a, b, ga, gb in zip(prompts, first, second, gold_first, gold_second, strict=True):
        if temperature > 0:
            first_wins = rng.random() < 1 / (1 + math.exp(-(ga - gb) / temperature))
        elif ga == gb:
            continue
        else:
            first_wins = ga > gb
        pairs.append(Pair(x, a, b) if first_wins else Pair(x, b, a))
    return pairs
