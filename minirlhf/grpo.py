"""GRPO and RLOO: PPO's clipped update without a critic; the baseline is the other samples of the same prompt.

One iteration of `GRPOTrainer.step(prompts)`:
    1. rollout     G responses to each prompt (rollout.collect, as PPO), scored by the reward model
    2. advantages  one per response, from its group of G (advantages.py):
                     GRPO (Shao et al. 2024)     A_i = (r_i − mean_G r) / (std_G r + ε)
                     RLOO (Ahmadian et al. 2024) R_i = r_i − β Σ_t KL_t,  A_i = R_i − mean_{j≠i} R_j
    3. update      ppo_epochs × num_minibatches of PPO's clipped per-token objective, A_i broadcast over
                   the tokens of response i; GRPO adds β·KL_t (k3, a loss term with gradient):
                     loss = agg_t( −min(ρ_t A_i, clip(ρ_t, 1−ε, 1+ε_high) A_i) + β·k3_t )   (no term at β = 0)
The iteration itself is online.OnlineTrainer.step, as PPO's; this file is what GRPO and RLOO change: a group of
responses per prompt, advantages from the group, and (GRPO) the KL as a loss term.

Where the KL goes is the difference that matters. GRPO keeps the reward pure and pulls the policy back
with a k3 term in the loss (k3 = π_ref/π − log(π_ref/π) − 1 ≥ 0: an unbiased, low-variance estimate of
KL(π ‖ π_ref), whose gradient as a loss is that of KL(π_ref ‖ π); k1 as a loss has none, so it is refused). RLOO puts
β·KL (k1 by default) into the reward before the baseline, as PPO's shaping does, so the KL is traded
against the score sample by sample. No value head, no GAE: a response is one action with one advantage.

CPU: `minirlhf grpo --prompts p.jsonl --init runs/x/sft --reward runs/x/reward --out runs/x/grpo`
     (`--algo rloo` for RLOO). GPU: add `--device cuda`.
Simplifications: groups are sampled together in one batch; a group whose G rewards are all equal gives
zero advantage and no gradient (logged as `*/zero_std_frac`; DAPO would re-sample those prompts).
With one epoch and one minibatch the loss value is ≈ 0 every iteration while the gradient is not: at
ratio 1 the loss is −mean(A), and group-centred advantages average to about zero (see ppo_policy_loss).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .advantages import GROUP_SCALES, group_advantages, kl_penalty, rloo_advantages
from .config import keeps_old_names, validate
from .errors import InputError
from .losses import ppo_policy_loss
from .model import GPT
from .online import OnlineConfig, OnlineTrainer, train_online
from .ops import AGGREGATIONS, masked_aggregate
from .rollout import PolicyLogprobs, Rollout
from .runtime import autocast


@keeps_old_names
@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO's fields; the ones every online trainer shares are OnlineConfig's. `batch_size` counts responses:
    batch_size / group_size prompts per iteration."""
    group_size: int = 4
    """G, responses sampled per prompt (at least 2: the baseline of one sample is itself)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch (μ in the GRPO paper, TRL's num_iterations; 1 = every update is on-policy)."""
    kl_coef: float = 0.05
    """β: weight of the KL to the reference (GRPO: of the k3 loss term; RLOO: in the reward)."""
    kl_estimator: str = "k3"
    """GRPO's loss term: k3 (never negative; its gradient is that of KL(π_ref ‖ π)) or k2 (that of KL(π ‖ π_ref));
    k1 is refused, as a loss term its expected gradient is 0 (advantages.kl_penalty). RLOO's reward uses k1 by
    default (RLOOConfig)."""
    cliprange: float = 0.2
    """Lower (and, without cliprange_high, upper) ratio clip ε."""
    cliprange_high: float | None = None
    """Upper clip ε_high (DAPO's clip-higher, e.g. 0.28); None: symmetric."""
    scale_rewards: str = "group"
    """GRPO: divide by the group's std ('group'), the batch's ('batch') or not at all ('none', Dr. GRPO)."""
    loss_aggregation: str = "token_mean"
    """How per-token terms become the loss: token_mean (DAPO; as PPO here), sequence_mean (the original
    GRPO, length-biased) or dr_grpo (sum / (B · max_new_tokens))."""

    algo = "grpo"  # a class attribute, not a setting: `minirlhf grpo --algo rloo` picks RLOOConfig
    renamed: ClassVar[dict[str, str]] = {"epochs": "ppo_epochs"}  # old names, still read (FutureWarning)

    def __post_init__(self):
        super().__post_init__()
        validate(self, positive=("cliprange",),
                 choices={"scale_rewards": GROUP_SCALES, "loss_aggregation": AGGREGATIONS})
        if self.algo == "grpo" and self.kl_estimator == "k1":
            raise InputError("--kl_estimator=k1: as GRPO's loss term k1 = log π − log π_ref has zero expected "
                             "gradient (E_π[∇ log π] = 0), so it would not pull towards the reference at all; "
                             "use k3 (GRPO's, the gradient of KL(π_ref ‖ π)) or k2 (of KL(π ‖ π_ref)), or "
                             "--algo rloo, which puts k1 in the reward")
        if self.group_size < 2:
            raise InputError(f"--group_size={self.group_size}: {self.algo.upper()} needs at least 2 responses per "
                             f"prompt (the group baseline of one sample is the sample itself: every advantage is 0)")
        if self.batch_size % self.group_size:
            raise InputError(f"--batch_size={self.batch_size} must be a multiple of --group_size={self.group_size}")
        if self.cliprange_high is not None and not self.cliprange_high > 0:
            raise InputError(f"--cliprange_high must be > 0, got {self.cliprange_high}")

    @property
    def samples_per_prompt(self) -> int:
        return self.group_size


@keeps_old_names
@dataclass
class RLOOConfig(GRPOConfig):
    """RLOO: the same fields; the KL goes into the reward (k1, as PPO's shaping) and the baseline is the
    leave-one-out mean, so `scale_rewards` is not used."""
    kl_estimator: str = "k1"
    """The per-token KL summed into each response's reward: k1 (the RLOO paper's, as PPO), k2 or k3."""

    algo = "rloo"


class GRPOTrainer(OnlineTrainer):
    """GRPO or RLOO (by `config.algo`) on a GPT policy against a RewardModel or any fn(sequences, mask):
    OnlineTrainer's iteration on groups of `group_size` responses, without a critic."""

    def __init__(self, policy: GPT, ref_policy: GPT, reward, config: GRPOConfig,
                 generator: torch.Generator | None = None):
        super().__init__(PolicyLogprobs(policy), ref_policy, reward, config, generator)

    @property
    def loss_keys(self):
        return (f"{self.prefix}/loss",)

    @property
    def aggregation(self) -> str:
        return self.config.loss_aggregation

    def modules(self) -> dict:
        return {"policy": self.model}

    # ------------------------------------------------------------ 2. advantages, one per response
    def advantages(self, ro: Rollout, kl_coef: float):
        """-> (per-token KL (B, N), advantages (B,)). RLOO subtracts β·Σ_t KL_t from each score first."""
        c = self.config
        kl = kl_penalty(ro.logprobs, ro.ref_logprobs, c.kl_estimator, ro.response_mask)
        if c.algo == "rloo":
            return kl, rloo_advantages(ro.scores - kl_coef * kl.sum(-1), c.group_size)
        return kl, group_advantages(ro.scores, c.group_size, c.scale_rewards)

    def advantage_stats(self, ro: Rollout, kl, kl_coef: float, advantages) -> dict:
        groups = ro.scores.view(-1, self.config.group_size)
        return {f"{self.prefix}/advantages_abs_mean": advantages.abs().mean().item(),
                f"{self.prefix}/zero_std_frac": (groups.max(1).values == groups.min(1).values).float().mean().item()}

    # ------------------------------------------------------------ 3. update
    def loss(self, mb: Rollout, advantages, kl_coef: float):
        c = self.config
        with autocast(self.device):
            logprobs = self.train_forward(mb.sequences, mb.attention_mask, mb.prompt_len, c.temperature)
        pg_loss, stats = ppo_policy_loss(logprobs, mb.logprobs, advantages, mb.response_mask, c.cliprange,
                                         cliprange_high=c.cliprange_high, aggregation=c.loss_aggregation,
                                         norm_len=c.max_new_tokens)
        loss = pg_loss  # β = 0: no KL term at all (not even a zero times a term that could be inf)
        out = {f"{self.prefix}/policy_loss": pg_loss.detach()}
        if c.algo == "grpo" and kl_coef > 0:  # the KL as a loss term, with gradient, aggregated like the policy term
            kl_loss = masked_aggregate(kl_penalty(logprobs, mb.ref_logprobs, c.kl_estimator, mb.response_mask),
                                       mb.response_mask, c.loss_aggregation, c.max_new_tokens)
            loss = pg_loss + kl_coef * kl_loss
            out[f"{self.prefix}/kl_loss"] = kl_loss.detach()
        stats = {f"{self.prefix}/{k}": v for k, v in stats.items()}
        return loss, {f"{self.prefix}/loss": loss.detach(), **out, **stats}

    def update(self, ro: Rollout, advantages, kl_coef: float | None = None) -> dict:
        """ppo_epochs × num_minibatches optimizer steps of `loss` over the rollout (OnlineTrainer.optimize);
        kl_coef: β of GRPO's KL term, None for the controller's current β."""
        kl_coef = self.kl_ctl.kl_coef if kl_coef is None else kl_coef
        return self.optimize(ro, lambda mb, idx: self.loss(mb, advantages[idx], kl_coef))


def train_grpo(prompts: list[str], init_dir, reward_dir, out_dir, config: GRPOConfig, **kwargs) -> GRPOTrainer:
    """The GRPO or RLOO run (online.train_online): `minirlhf grpo [--algo rloo]`. kwargs: resume, overwrite,
    reward_fn, show_progress, on_iteration. Returns the trainer; its .policy is the new policy."""
    return train_online(GRPOTrainer, config.algo, prompts, init_dir, reward_dir, out_dir, config, **kwargs)
