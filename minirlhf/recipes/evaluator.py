"""How the recipes measure a policy: samples of the prompts scored by the reward model (the proxy), KL to the
reference and distinct-2 (evaluation.py), snownlp's judge (reviews.judge_positive), an independent classifier,
and, where the run has one, the gold reward (gold.GoldReward, the sandbox's ground truth). `Evaluator` gives
every policy of a comparison or an over-optimisation curve the same evaluation, under one seed; `eval_steps`
says where along training.
"""
from __future__ import annotations

import math

import torch

from ..evaluation import best_of_n, sample_and_score, summary
from . import reviews
from .demo_config import DemoConfig
from .shared_stages import Prepared


def judge_stats(prompts: list[str], responses: list[str]) -> dict:
    """snownlp's judge on prompt + response, and on the response alone (stricter: the prompt's words don't count)."""
    judged = reviews.judge_positive([p + r for p, r in zip(prompts, responses)])
    judged_response = reviews.judge_positive(responses)
    rate = lambda js: sum(j > 0.5 for j in js) / len(js)  # noqa: E731
    return {"judge_positive_rate": rate(judged), "judge_positive_rate_response": rate(judged_response),
            "judge_mean": sum(judged) / len(judged), "judged": judged}


def sample_and_judge(policy, ref, reward, tokenizer, prompts: list[str], n: int, max_new_tokens: int, seed: int):
    """`n` samples of each prompt from `policy`, scored and judged: (the figures, the Samples, each one's judge
    probability). The figures are evaluation.summary's (reward, KL to `ref`, distinct-2) and judge_stats'."""
    s = sample_and_score(policy, ref, reward, tokenizer, prompts, n, max_new_tokens, seed=seed)
    judge = judge_stats(s.prompts, s.responses)
    judged = judge.pop("judged")
    return summary(s) | judge, s, judged


def point(x: int, stats: dict) -> dict:
    """One point of a method's curve: where it is in training (x) and what the evaluation measured."""
    keep = ("reward", "kl", "judge_positive_rate", "judge_positive_rate_response", "distinct_2")
    return {"x": x, **{k: round(float(stats[k]), 4) for k in keep}}


def gold_stats(gold, prompts: list[str], responses: list[str]) -> dict:
    """The gold's mean over the samples, its standard error, and the mean repetition it read ({} without a gold)."""
    if gold is None:
        return {}
    parts = gold.parts(prompts, responses)
    g = torch.tensor(parts["gold"], dtype=torch.float64)
    se = g.std().item() / math.sqrt(len(g)) if len(g) > 1 else 0.0
    return {"gold": round(g.mean().item(), 4), "gold_se": round(se, 4),
            "repetition": round(sum(parts["repetition"]) / len(g), 4)}


class Evaluator:
    """The same evaluation for every policy: eval_samples of each pool prompt, one seed for every point. `reward`
    is the proxy the points report (default: the run's reward model), `gold` a GoldReward or None."""

    SEED = 10_000

    def __init__(self, prep: Prepared, demo: DemoConfig, eval_samples: int, reward=None, gold=None):
        self.prep, self.demo, self.eval_samples = prep, demo, eval_samples
        self.reward, self.gold = (prep.rm if reward is None else reward), gold
        self._start = None

    def start(self) -> dict:
        """The reference's point (x = 0), where every trained method's curve starts: evaluated once, since the
        evaluation's seed is fixed it would come out the same for each."""
        if self._start is None:
            self._start = self(self.prep.sft, 0)
        return dict(self._start)

    def samples(self, policy, n: int):
        """sample_and_judge of every pool prompt, n samples each, under the evaluation's seed."""
        p = self.prep
        return sample_and_judge(policy, p.sft, self.reward, p.tokenizer, reviews.POOL, n,
                                self.demo.ppo.max_new_tokens, self.SEED)

    def __call__(self, policy, x: int) -> dict:
        stats, s, _ = self.samples(policy, self.eval_samples)
        return point(x, stats) | gold_stats(self.gold, s.prompts, s.responses)

    def best_of_n(self, n: int) -> dict:
        p = self.prep
        s = best_of_n(p.sft, self.reward, p.tokenizer, reviews.POOL, self.eval_samples, n,
                      self.demo.ppo.max_new_tokens, seed=self.SEED)
        return (point(n, summary(s) | judge_stats(s.prompts, s.responses))   # s.kl: the bound, on every sample
                | gold_stats(self.gold, s.prompts, s.responses))


def eval_steps(total: int, points: int) -> set[int]:
    """About `points` steps in 1 … total, log-spaced and always including the last: 100, 8 -> 1 2 4 7 14 27 52 100."""
    if points == 1:
        return {total}
    return {round(total ** (i / (points - 1))) for i in range(points)} | {total}
