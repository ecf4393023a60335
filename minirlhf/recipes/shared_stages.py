"""The stages every recipe starts with, trained or reused in a run directory: the data, then pretraining
(pretrain/), the reference policy (sft/) and the reward model (reward/). `prepare` runs them and returns them
loaded (`Prepared`); the demo adds PPO on top, the comparison its methods, the over-optimisation run a long PPO.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checkpoint import load_json, save_json
from ..data import Pair
from ..evaluation import score_texts
from ..model import GPT, RewardModel
from ..reward import train_reward_model
from ..runtime import resolve_device
from ..sft import pretrain, train_sft
from ..tokenizer import Tokenizer
from . import reviews
from .demo_config import DemoConfig, stage_hashes, stage_settings
from .stages import Stages, mark_done


def train_tokenizer(texts: list[str], config: DemoConfig) -> Tokenizer:
    """The pretraining config's tokenizer on `texts`; a char one keeps a slot for config.stand_in."""
    kind = config.pretrain.tokenizer_kind
    stand_in = config.stand_in if kind == "char" and config.stand_in else None
    return Tokenizer.train(texts, config.pretrain.vocab_size, kind, stand_in=stand_in)


def known_characters(data: reviews.Reviews, tokenizer: Tokenizer, config: DemoConfig) -> reviews.Reviews:
    """Every split with the characters the char tokenizer lacks replaced by config.stand_in, so that no text
    the models learn from or are tested on spells a character in byte tokens (why: tokenizer.py's docstring)."""
    if not config.stand_in or config.pretrain.tokenizer_kind != "char":
        return data
    return data.map(lambda texts: tokenizer.replace_unknown(texts, config.stand_in))


@torch.no_grad()
def reward_accuracy(reward_dir, tokenizer, data, config, device) -> dict:
    """Held-out (test split) pairwise accuracy: P[r(pos) > r(neg)] over aligned test pairs."""
    rm = RewardModel.from_pretrained(reward_dir).to(device).eval()
    n = min(len(data.test_pos), len(data.test_neg))
    score = lambda texts: score_texts(rm, tokenizer, [t[:config.max_chars] for t in texts[:n]])  # noqa: E731
    pos, neg = score(data.test_pos), score(data.test_neg)
    return {"test_pairs": n, "test_accuracy": (pos > neg).float().mean().item()}


@dataclass
class Prepared:
    """Stages 1 to 3 of a run directory, loaded: what the demo, the comparison and the over-optimisation run
    build on."""
    data: reviews.Reviews
    tokenizer: Tokenizer
    sft_dir: Path
    reward_dir: Path
    sft: GPT
    rm: RewardModel
    stages: Stages
    seconds: dict
    preferences: tuple | None = None  # the comparison's offline data, made once

    @property
    def reward_model_accuracy(self) -> dict:
        return load_json(self.reward_dir / "test_accuracy.json")


def prepare(out: Path, config: DemoConfig, show_progress: bool = True) -> Prepared:
    """The data, then stage 1 (pretraining, pretrain/), stage 2 (the reference policy, sft/) and stage 3 (the
    reward model, reward/), each trained or reused when its settings are unchanged."""
    device = resolve_device(config.device)
    stages = Stages(stage_hashes(config), stage_settings(config))
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "demo.json", asdict(config))
    seconds: dict[str, float] = {}
    t0 = time.time()
    data = reviews.load_reviews(config.seed)
    seconds["data"] = time.time() - t0
    cut = lambda texts: [t[:config.max_chars] for t in texts]  # noqa: E731

    # ---------------------------------------------------------------- 1. pretraining on every review
    pretrain_dir = out / "pretrain"
    t0 = time.time()
    run_pretrain = stages.must_run(pretrain_dir)
    tokenizer = (train_tokenizer(cut(data.train_pos + data.train_neg), config) if run_pretrain
                 else Tokenizer.from_file(pretrain_dir / "tokenizer.json"))
    data = known_characters(data, tokenizer, config)  # every split, so also what the models are tested on
    if run_pretrain:
        pretrain(cut(data.train_pos + data.train_neg), pretrain_dir, config.stage("pretrain"), tokenizer,
                 overwrite=True, show_progress=show_progress)
        mark_done(pretrain_dir, stages.hashes["pretrain"], time.time() - t0, stages.settings["pretrain"])
    seconds["pretrain"] = load_json(pretrain_dir / "stage.json")["seconds"]
    tokenizer.save(out / "tokenizer.json")

    # ---------------------------------------------------------------- 2. SFT: the reference policy
    sft_dir = out / "sft" if config.sft_stage else pretrain_dir
    if config.sft_stage:
        if stages.must_run(sft_dir):
            t0 = time.time()
            train_sft(reviews.demonstrations(data.train_pos, config.max_chars), pretrain_dir, sft_dir,
                      config.stage("sft"), overwrite=True, show_progress=show_progress)
            mark_done(sft_dir, stages.hashes["sft"], time.time() - t0, stages.settings["sft"])
        seconds["sft"] = load_json(sft_dir / "stage.json")["seconds"]
    sft = GPT.from_pretrained(sft_dir).to(device).eval()

    # ---------------------------------------------------------------- 3. the reward model
    reward_dir = out / "reward"
    if stages.must_run(reward_dir):
        t0 = time.time()
        pairs = [Pair("", p, n) for p, n in zip(cut(data.train_pos), cut(data.train_neg))]
        # normalised on the reference's own samples of the pool, scored as sampled, as PPO's rollouts will be
        train_reward_model(pairs, sft_dir, reward_dir, config.stage("reward"), tokenizer, overwrite=True,
                           show_progress=show_progress, norm_prompts=reviews.POOL)
        save_json(reward_dir / "test_accuracy.json", reward_accuracy(reward_dir, tokenizer, data, config, device))
        mark_done(reward_dir, stages.hashes["reward"], time.time() - t0, stages.settings["reward"])
    seconds["reward"] = load_json(reward_dir / "stage.json")["seconds"]
    rm = RewardModel.from_pretrained(reward_dir).to(device).eval()
    return Prepared(data, tokenizer, sft_dir, reward_dir, sft, rm, stages, seconds)
