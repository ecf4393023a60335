"""The demo's config: DemoConfig (its four stages' settings), the `--quick` preset, and each stage's settings and
hash, which decide whether a finished stage of a run directory is reused (stages.py). The comparison and the
over-optimisation run nest a DemoConfig for their shared stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..config import validate
from ..errors import InputError
from ..ppo import PPOConfig
from ..reward import RewardConfig
from ..sft import PretrainConfig, SFTConfig
from ..tokenizer import STAND_IN
from . import reviews
from .stages import StagedConfig, chained_hashes, stage_record


def _pretrain() -> PretrainConfig:
    return PretrainConfig(vocab_size=2400, n_layer=3, n_head=4, n_embd=128, block_size=72, steps=700, lr=3e-3,
                          batch_size=32, eval_every=175, warmup_steps=30)


def _sft() -> SFTConfig:
    return SFTConfig(steps=300, batch_size=32, lr=3e-4, warmup_steps=20, val_fraction=0.05, eval_every=100)


def _reward() -> RewardConfig:
    return RewardConfig(loss="pairwise", steps=150, batch_size=32, lr=5e-4, eval_every=50, val_fraction=0.05,
                        norm_max_new_tokens=24)


def _ppo() -> PPOConfig:
    return PPOConfig(iterations=100, batch_size=64, max_new_tokens=24, lr=2e-4, kl_coef=0.2)


@dataclass
class DemoConfig(StagedConfig):
    seed: int = 0
    """Seed of every stage (data split, init, sampling)."""
    device: str = "cpu"
    """cpu or cuda, for every stage."""
    max_chars: int = 40
    """Reviews are cut to their first max_chars characters for pretraining and reward training."""
    stand_in: str = STAND_IN
    """Char tokenizer: every character outside its vocabulary becomes this one, in every text, train and test
    ('' keeps them, spelled in byte tokens, which the small model learns to write but not to spell: its samples
    then show U+FFFD, the tokenizer's docstring says why)."""
    pretrain: PretrainConfig = field(default_factory=_pretrain)
    """Stage 1: a character-level GPT-2 pretrained on all the reviews (--pretrain.<key>)."""
    sft: SFTConfig = field(default_factory=_sft)
    """Stage 2, the reference policy: supervised fine-tuning on positive reviews as demonstrations, the opening
    as the prompt and the rest as the response, the loss on the response only (InstructGPT's first step;
    --sft.<key>)."""
    sft_stage: bool = True
    """False skips stage 2: the pretrained model is then the reference policy (the demo before SFT)."""
    reward: RewardConfig = field(default_factory=_reward)
    """Stage 3, the reward model: Bradley–Terry on (positive, negative) review pairs, its trunk from the
    reference policy (--reward.<key>)."""
    ppo: PPOConfig = field(default_factory=_ppo)
    """Stage 4, PPO from the prompt pool with a KL penalty to the reference (--ppo.<key>): 100 iterations,
    β = 0.2 (with the SFT stage, a held-out judge rate of 0.84–0.93 over seeds 0–4, mean 0.90, on one
    2-core machine; the README gives the sweep)."""
    widen_pool: int = 0
    """Extra PPO prompts cut from (training-split) review openings, on top of the 4-prompt pool."""
    judge_every: int = 10
    """PPO iterations between judge evaluations for the judge-rate curve (0: never)."""
    eval_samples: int = 32
    """Samples per pool prompt in the before/after evaluation."""
    heldout_prompts: int = 16
    """Prompts cut from test-split review openings: never seen in PPO."""
    heldout_samples: int = 8
    """Samples per held-out prompt."""
    quick: bool = False
    """Set by --quick (toy sizes): the report then says its numbers mean nothing."""

    def __post_init__(self):
        validate(self, positive=("max_chars", "eval_samples", "heldout_prompts", "heldout_samples"),
                 non_negative=("widen_pool", "judge_every"))
        longest = max(len(p) for p in reviews.POOL) + 1  # + [bos]
        if len(self.stand_in) > 1:
            raise InputError(f"--stand_in must be one character (or empty), got {self.stand_in!r}")
        if self.pretrain.block_size < max(self.max_chars + 2, longest + self.ppo.max_new_tokens):
            raise InputError(f"--pretrain.block_size={self.pretrain.block_size} is too small: texts need "
                             f"max_chars + 2 = {self.max_chars + 2} tokens and PPO needs a prompt "
                             f"({longest}) + ppo.max_new_tokens ({self.ppo.max_new_tokens})")
        if self.reward.norm_max_new_tokens != self.ppo.max_new_tokens:
            raise InputError(f"--reward.norm_max_new_tokens={self.reward.norm_max_new_tokens} must equal "
                             f"--ppo.max_new_tokens={self.ppo.max_new_tokens}: the reward model is normalised on "
                             f"samples as long as the policy's")


def quick_config() -> DemoConfig:
    """`--quick`: toy sizes, the same pipeline (what the tests run)."""
    d = DemoConfig()
    return replace(d, quick=True, max_chars=24, eval_samples=4, heldout_prompts=4, heldout_samples=2, judge_every=2,
                   pretrain=replace(d.pretrain, vocab_size=800, n_layer=1, n_head=2, n_embd=32, block_size=40,
                                    steps=40, eval_every=10, warmup_steps=8),
                   sft=replace(d.sft, steps=10, batch_size=16, warmup_steps=2, eval_every=5),
                   reward=replace(d.reward, steps=20, batch_size=16, eval_every=6, norm_max_new_tokens=8),
                   ppo=replace(d.ppo, iterations=4, batch_size=16, max_new_tokens=8))


def stage_settings(config: DemoConfig) -> dict[str, dict]:
    """The settings each stage is trained with, in pipeline order (each stage's config as stages.stage_record
    records it)."""
    return {"pretrain": {"max_chars": config.max_chars, "stand_in": config.stand_in,
                         "pretrain": stage_record(config.stage("pretrain"))},
            "sft": {"sft": stage_record(config.stage("sft")) if config.sft_stage else None},
            "reward": {"reward": stage_record(config.stage("reward"))},
            "policy": {"ppo": stage_record(config.stage("ppo")), "widen_pool": config.widen_pool,
                       "judge_every": config.judge_every}}


def stage_hashes(config: DemoConfig) -> dict[str, str]:
    """Each stage's hash covers its whole config (every field, defaults included) and every earlier stage's
    hash: a change anywhere re-runs that stage and the ones after it (stages.chained_hashes)."""
    return chained_hashes(stage_settings(config))
