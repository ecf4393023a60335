"""The gold-reward sandbox on the flagship (Gao et al. 2022; Coste et al. 2024): a gold reward trained once, and
proxy reward models trained on gold-labelled comparisons of the reference policy's samples.

    the demo's pretrain/ tokenizer and reviews ──▶ gold/lm/   a language model larger than the policy
                                                  gold/rm/   a reward model on it, trained on every real
                                                             (positive, negative) review pair of the train split
                                                  gold/gold.json   τ and ρ of gold.GoldReward's formula
    sft/'s samples of the prompt pool, paired and labelled by the gold ──▶ proxies/n<N>/  for each N, nested
                                                                           (the first N comparisons)

The gold is a stage of the run directory like the demo's (cached while its settings are unchanged); `minirlhf
overopt` and `minirlhf compare` read every policy with it. The gold is never trained against.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..checkpoint import load_json, save_json
from ..config import validate
from ..data import Pair
from ..errors import InputError
from ..gold import GoldReward, label_pairs, score_responses
from ..model import GPT, RewardModel
from ..reward import RewardConfig, train_reward_model
from ..sampling import sample_batches
from ..sft import PretrainConfig, pretrain
from . import reviews
from .demo_config import DemoConfig
from .shared_stages import Prepared, reward_accuracy
from .stages import mark_done, stage_digest, stage_record


def _gold_lm() -> PretrainConfig:
    return PretrainConfig(n_layer=4, n_head=4, n_embd=160, block_size=72, steps=500, lr=2e-3, batch_size=32,
                          eval_every=250, warmup_steps=30)


def _gold_rm() -> RewardConfig:
    return RewardConfig(loss="pairwise", steps=300, batch_size=32, lr=3e-4, eval_every=150, val_fraction=0.05)


@dataclass
class GoldConfig:
    """The gold reward: its two models' training and the formula's constants (gold.GoldReward)."""
    lm: PretrainConfig = field(default_factory=_gold_lm)
    """The gold's language model (--gold.lm.<key>): 4 layers × 160, against the policy's 3 × 128, on every
    review of the train split; its per-token NLL is the fluency term, its trunk the gold reward model's."""
    rm: RewardConfig = field(default_factory=_gold_rm)
    """The gold's sentiment reward model (--gold.rm.<key>): Bradley–Terry on every real (positive, negative)
    pair of the train split (7,392; 300 steps of 32, 1.3 epochs), normalised on the validation split's real reviews."""
    rho: float = 0.5
    """Repetition at which the fluency factor reaches 0: max(0, 1 − rep/ρ)."""
    tau_quantile: float = 0.9
    """τ is this quantile of the gold LM's NLL on real test-split reviews: real text pays no fluency cost."""

    def __post_init__(self):
        validate(self, positive=("rho",))
        if not 0 < self.tau_quantile <= 1:
            raise InputError(f"--gold.tau_quantile must be in (0, 1], got {self.tau_quantile}")


def quick_gold_config() -> GoldConfig:
    """`--quick`: toy gold models (their numbers mean nothing)."""
    g = GoldConfig()
    return replace(g, lm=replace(g.lm, n_layer=1, n_head=2, n_embd=32, block_size=40, steps=20, eval_every=10,
                                 warmup_steps=4),
                   rm=replace(g.rm, steps=10, batch_size=16, eval_every=5))


def gold_settings(gold: GoldConfig, seed: int, device: str) -> dict:
    return {"lm": stage_record(replace(gold.lm, seed=seed, device=device)),
            "rm": stage_record(replace(gold.rm, seed=seed, device=device)),
            "rho": gold.rho, "tau_quantile": gold.tau_quantile}


def prepare_gold(out: Path, prep: Prepared, demo: DemoConfig, gold: GoldConfig,
                 show_progress: bool = True) -> tuple[GoldReward, str]:
    """Train (or reuse) gold/ on the demo's tokenizer and data -> (the GoldReward on demo.device, its stage hash).
    Its hash chains onto the pretraining stage's (the tokenizer and the texts are that stage's)."""
    gold_dir = out / "gold"
    settings = gold_settings(gold, demo.seed, demo.device)
    digest = stage_digest(prep.stages.hashes["pretrain"], settings)
    if prep.stages.must_run(gold_dir, digest, settings):
        t0 = time.time()
        cut = lambda texts: [t[:demo.max_chars] for t in texts]  # noqa: E731
        data = prep.data
        lm_cfg = replace(gold.lm, seed=demo.seed, device=demo.device)
        if lm_cfg.block_size < demo.max_chars + 2:
            raise InputError(f"--gold.lm.block_size={lm_cfg.block_size} is too small for max_chars + 2 = "
                             f"{demo.max_chars + 2} tokens")
        pretrain(cut(data.train_pos + data.train_neg), gold_dir / "lm", lm_cfg, prep.tokenizer, overwrite=True,
                 show_progress=show_progress)
        pairs = [Pair("", p, n) for p, n in zip(cut(data.train_pos), cut(data.train_neg))]
        train_reward_model(pairs, gold_dir / "lm", gold_dir / "rm", replace(gold.rm, seed=demo.seed,
                                                                            device=demo.device),
                           prep.tokenizer, overwrite=True, show_progress=show_progress,
                           reference_texts=cut(data.val_pos + data.val_neg))
        scorer = load_gold_models(gold_dir, prep, demo, tau=0.0, rho=gold.rho)
        texts = cut(data.test_pos + data.test_neg)
        nll = scorer.nll([t[:5] for t in texts], [t[5:] for t in texts]).sort().values
        scorer.tau = nll[min(len(nll) - 1, math.ceil(gold.tau_quantile * len(nll)) - 1)].item()
        scorer.save(gold_dir)
        save_json(gold_dir / "test_accuracy.json",
                  reward_accuracy(gold_dir / "rm", prep.tokenizer, data, demo, demo.device))
        mark_done(gold_dir, digest, time.time() - t0, settings)
    return GoldReward.load(gold_dir, demo.device), digest


def load_gold_models(gold_dir: Path, prep: Prepared, demo: DemoConfig, tau: float, rho: float) -> GoldReward:
    rm = RewardModel.from_pretrained(gold_dir / "rm").to(demo.device)
    lm = GPT.from_pretrained(gold_dir / "lm").to(demo.device)
    return GoldReward(rm, lm, prep.tokenizer, tau, rho)


# ---------------------------------------------------------------------------------------------- the proxies

def _proxy() -> RewardConfig:
    return RewardConfig(loss="pairwise", steps=1, batch_size=32, lr=5e-4, eval_every=1, val_fraction=0.05,
                        norm_max_new_tokens=24)


@dataclass
class ProxyConfig:
    """Proxy reward models trained on gold-labelled comparisons of the reference's samples (Gao et al.)."""
    sizes: str = "500,2000,8000"
    """The numbers N of gold-labelled comparisons, comma-separated; each proxy sees the first N (nested sets)."""
    label_temperature: float = 0.0
    """0: deterministic gold labels; T > 0: Bradley–Terry-sampled, P(y1 ≻ y2) = σ((g1 − g2)/T) (label noise)."""
    heldout_pairs: int = 1000
    """Gold-labelled comparisons kept apart to measure each proxy's agreement with the gold."""
    epochs: float = 2.0
    """Passes over its N comparisons each proxy trains for (at least min_steps steps)."""
    min_steps: int = 40
    """The fewest steps a proxy trains for (a small N would otherwise get a handful)."""
    reward: RewardConfig = field(default_factory=_proxy)
    """The proxies' training (--proxy.reward.<key>), the demo's reward model's settings; its steps and eval_every
    are set for each N from epochs and min_steps."""

    def __post_init__(self):
        validate(self, positive=("heldout_pairs", "epochs", "min_steps"), non_negative=("label_temperature",))
        if not self.size_list() or min(self.size_list()) < 2:
            raise InputError(f"--proxy.sizes must be comma-separated integers >= 2, got {self.sizes!r}")

    def size_list(self) -> list[int]:
        try:
            return [int(n) for n in self.sizes.split(",")]
        except ValueError:
            raise InputError(f"--proxy.sizes must be comma-separated integers, got {self.sizes!r}") from None

    def steps(self, n: int) -> int:
        return max(self.min_steps, math.ceil(self.epochs * n / self.reward.batch_size))


def quick_proxy_config() -> ProxyConfig:
    p = ProxyConfig()
    return replace(p, sizes="16,64", heldout_pairs=16, min_steps=4, epochs=1.0,
                   reward=replace(p.reward, batch_size=16, norm_max_new_tokens=8))


SAMPLE_SEED = 20_000   # the labelled samples' seed: apart from the evaluation's (Evaluator.SEED)


@torch.no_grad()
def gold_comparisons(prep: Prepared, gold: GoldReward, n_pairs: int, max_new_tokens: int, label_temperature: float,
                     seed: int) -> list[Pair]:
    """n_pairs comparisons of two fresh samples of sft on one pool prompt (the pool in turn), labelled by the
    gold (gold.label_pairs). A pair the gold ties (two identical responses, mostly) is dropped, so 5% more pairs
    are sampled than asked for; fewer than n_pairs left is an InputError."""
    per_prompt = math.ceil(2 * math.ceil(1.05 * n_pairs + 8) / len(reviews.POOL))
    prompts, responses = [], []
    for chunk, g in sample_batches(prep.sft, prep.tokenizer, reviews.POOL, per_prompt, max_new_tokens,
                                   seed=seed + SAMPLE_SEED, batch_size=512):
        prompts += chunk
        responses += prep.tokenizer.decode_batch(g.responses.tolist())
    scores = gold(prompts, responses)
    # sample_batches keeps each prompt's samples together: pair neighbours, which share their prompt
    pairs = label_pairs(prompts[0::2], responses[0::2], responses[1::2], scores[0::2], scores[1::2],
                        label_temperature, seed)
    if len(pairs) < n_pairs:
        raise InputError(f"{n_pairs} gold-labelled comparisons asked for, {len(pairs)} made: the gold tied the "
                         f"rest (the reference repeats itself); ask for fewer (--proxy.sizes, --proxy.heldout_pairs)")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pairs[i] for i in order][:n_pairs]


def proxy_settings(config: ProxyConfig, n: int, seed: int, device: str, max_new_tokens: int) -> dict:
    return {"n": n, "label_temperature": config.label_temperature, "heldout_pairs": config.heldout_pairs,
            "reward": stage_record(replace(config.reward, steps=config.steps(n), seed=seed, device=device)),
            "max_new_tokens": max_new_tokens}


def prepare_proxies(out: Path, prep: Prepared, demo: DemoConfig, gold: GoldReward, gold_hash: str,
                    config: ProxyConfig, show_progress: bool = True) -> dict[int, RewardModel]:
    """Train (or reuse) proxies/n<N>/ for every N of config.sizes -> {N: the proxy, normalised on sft's samples
    of the pool}. Each proxy's agreement with the gold on held-out comparisons is in its gold_accuracy.json."""
    sizes, max_new = config.size_list(), demo.ppo.max_new_tokens
    upstream = stage_digest(prep.stages.hashes["sft"] + gold_hash, {"proxies": "gold-labelled sft samples"})
    todo = {n: (out / "proxies" / f"n{n}", proxy_settings(config, n, demo.seed, demo.device, max_new))
            for n in sizes}
    digests = {n: stage_digest(upstream, s) for n, (_, s) in todo.items()}
    runs = [n for n, (d, s) in todo.items() if prep.stages.must_run(d, digests[n], s)]
    if runs:
        comparisons = gold_comparisons(prep, gold, max(sizes) + config.heldout_pairs, max_new,
                                       config.label_temperature, demo.seed)
        heldout, train = comparisons[:config.heldout_pairs], comparisons[config.heldout_pairs:]
        for n in runs:
            t0 = time.time()
            proxy_dir, settings = todo[n]
            cfg = replace(config.reward, steps=config.steps(n), seed=demo.seed, device=demo.device,
                          eval_every=config.steps(n))
            train_reward_model(train[:n], prep.sft_dir, proxy_dir, cfg, prep.tokenizer, overwrite=True,
                               show_progress=show_progress, norm_prompts=reviews.POOL)
            proxy = RewardModel.from_pretrained(proxy_dir).to(demo.device).eval()
            save_json(proxy_dir / "gold_accuracy.json", {"n": n, **agreement(proxy, prep, heldout)})
            mark_done(proxy_dir, digests[n], time.time() - t0, settings)
    return {n: RewardModel.from_pretrained(todo[n][0]).to(demo.device).eval() for n in sizes}


@torch.no_grad()
def agreement(proxy: RewardModel, prep: Prepared, pairs: list[Pair]) -> dict:
    """How often the proxy prefers the gold's choice, on comparisons it never trained on."""
    prompts = [p.prompt for p in pairs]
    chosen = score_responses(proxy, prep.tokenizer, prompts, [p.chosen for p in pairs])
    rejected = score_responses(proxy, prep.tokenizer, prompts, [p.rejected for p in pairs])
    return {"heldout_pairs": len(pairs), "agreement_with_gold": (chosen > rejected).float().mean().item()}


def proxy_accuracy(out: Path, n: int) -> dict:
    return load_json(out / "proxies" / f"n{n}" / "gold_accuracy.json")
