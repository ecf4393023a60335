"""PPO for language models: the loop of Ziegler et al. 2019 and Stiennon et al. 2020.

One iteration of `PPOTrainer.step(prompts)`:
    1. rollout   sample responses with the KV-cache sampler, keeping its logprobs (same temperature), entropy
                 and hidden states (values); the frozen reference's logprobs; score prompt ⊕ response
                 (rollout.collect)
    2. shaping   r_t = −β·KL_t on every response token, plus the score on the last real one (EOS)
    3. GAE       δ_t = r_t + γV_{t+1} − V_t,  A_t = δ_t + γλA_{t+1};  returns = A + V; whiten A
    4. update    ppo_epochs × num_minibatches of the clipped policy loss + vf_coef × clipped value loss
The iteration itself is online.OnlineTrainer.step, the same for GRPO and RLOO; this file is what PPO adds:
its config, the critic (ActorCritic), the advantages of 2–3 (the formulas are advantages.py) and the loss of 4
(losses.py).

CPU: `minirlhf ppo --prompts p.jsonl --init runs/x/sft --reward runs/x/reward --out runs/x/policy`.
GPU: add `--device cuda` (bf16 autocast). Several processes: `torchrun --nproc_per_node 2 -m minirlhf ppo ...`.
Every choice on which the papers differ is a config field, with the default stated in its docstring.
Simplifications: one process per rollout batch (no asynchronous generation), no reward-model ensembles,
responses are right-padded after EOS.

Under torchrun (runtime.py) each rank samples `batch_size` rollouts from its own seed; advantages are
whitened with the mean and variance of ALL ranks' tokens (ops.masked_whiten(across_ranks=True)), the
adaptive KL controller sees the KL averaged over ranks, and gradients are averaged before each step.
NaN guard: a non-finite reward stops the iteration before the update, and a non-finite loss or
gradient norm stops it before optimizer.step(), raising TrainingDiverged with the iteration.

The output directory is a self-contained policy: config.json + model.safetensors (HF GPT-2 format),
tokenizer.json, value_head.safetensors (and critic/ when value_model=separate), metrics.jsonl with one
row per iteration, plots/, and checkpoints/ for --resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .advantages import (AdaptiveKLController, FixedKLController, compute_gae, explained_variance,  # noqa: F401
                         kl_penalty, shape_rewards)
from .config import validate
from .losses import ppo_policy_loss, ppo_value_loss
from .model import GPT, RewardModel, ValueHead
from .online import OnlineConfig, OnlineTrainer, train_online
from .ops import masked_mean, masked_whiten
from .rollout import Rollout, response_hidden, response_logprobs
from .runtime import autocast


@dataclass
class PPOConfig(OnlineConfig):
    """PPO's fields; the ones every online trainer shares (generation, optimisation, KL, run) are OnlineConfig's."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE λ."""
    cliprange: float = 0.2
    """PPO policy ratio clip ε."""
    cliprange_value: float = 0.2
    """Value clip around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    whiten_advantages: bool = True
    """Whiten advantages over the whole rollout batch (masked, unbiased=False)."""
    scale_rewards: bool = False
    """Scale shaped rewards to unit std before GAE, keeping their mean: (r − μ)/σ + μ (masked_whiten's
    shift_mean=False, TRL's whiten_rewards)."""
    value_model: str = "shared"
    """'shared' (value head on the policy trunk) or 'separate' (critic trunk from the reward model)."""

    algo = "ppo"

    def __post_init__(self):
        super().__post_init__()
        validate(self, positive=("cliprange", "cliprange_value"), non_negative=("vf_coef",),
                 unit_interval=("gamma", "lam"), choices={"value_model": ("shared", "separate")})


class ActorCritic(nn.Module):
    """The policy and its value function.

    value_model="shared": one trunk, two heads (the Chinese RLHF cookbook's GPT2HeadWithValueModel, TRL's
      AutoModelForCausalLMWithValueHead): cheap, one forward gives logprobs and values, but the value loss
      pulls on the policy's features (vf_coef weighs that).
    value_model="separate": the critic is its own GPT-2 trunk, initialised from the reward model when one
      is given (Stiennon et al. 2020; OpenRLHF): values start close to the final score and the policy's
      features are left alone, at twice the memory and compute.
    """

    def __init__(self, policy: GPT, critic_trunk: GPT | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic_trunk
        self.value_head = ValueHead(policy.config.n_embd)

    @classmethod
    def build(cls, policy: GPT, value_model: str, reward_model: RewardModel | None = None) -> "ActorCritic":
        if value_model == "shared":
            return cls(policy)
        if value_model != "separate":
            raise ValueError(f"value_model must be 'shared' or 'separate', got {value_model!r}")
        source = reward_model.gpt if isinstance(reward_model, RewardModel) else policy
        critic = GPT(source.config).to(next(policy.parameters()).device)
        critic.load_state_dict(source.state_dict())
        ac = cls(policy, critic)
        if isinstance(reward_model, RewardModel):  # V starts as the normalised score of each prefix
            with torch.no_grad():
                ac.value_head.v.weight.copy_(reward_model.gain * reward_model.head.weight)
                ac.value_head.v.bias.copy_(reward_model.gain * reward_model.head.bias + reward_model.bias)
        return ac

    def values(self, policy_hidden, sequences, attention_mask, prompt_len: int) -> torch.Tensor:
        """V(s_t) (B, N) from the policy's response hidden states (shared) or the critic's own (separate)."""
        hidden = policy_hidden if self.critic is None else response_hidden(self.critic, sequences, attention_mask,
                                                                            prompt_len)
        return self.value_head(hidden).float()

    def forward(self, sequences, attention_mask, prompt_len: int, temperature: float):
        """-> logprobs (B, N), values (B, N) for the response part of `sequences` (the update's forward)."""
        hidden = response_hidden(self.policy, sequences, attention_mask, prompt_len)
        logprobs = response_logprobs(self.policy, hidden, sequences[:, prompt_len:], temperature)
        return logprobs, self.values(hidden, sequences, attention_mask, prompt_len)


class PPOTrainer(OnlineTrainer):
    """PPO on a GPT policy against a RewardModel or any `fn(sequences, response_mask) -> (B,) scores`:
    OnlineTrainer's iteration with a critic, shaping + GAE for advantages, and the clipped policy + value loss."""

    loss_keys = ("ppo/policy_loss", "ppo/value_loss")
    aggregation = "token_mean"  # both losses are means over the minibatch's response tokens

    def __init__(self, policy: GPT, ref_policy: GPT, reward, config: PPOConfig,
                 generator: torch.Generator | None = None):
        device = next(policy.parameters()).device
        super().__init__(ActorCritic.build(policy, config.value_model, reward).to(device), ref_policy, reward,
                         config, generator)

    def modules(self) -> dict:
        return {"actor_critic": self.model}

    # ------------------------------------------------------------ 1. rollout, with the critic's values
    def rollout(self, prompts: list[list[int]]) -> Rollout:
        return super().rollout(prompts, value_fn=self.model.values)

    # ------------------------------------------------------------ 2. shaping and 3. GAE
    def advantages(self, ro: Rollout, kl_coef: float):
        """2. shaping and 3. GAE on the rollout's tensors (no gradient) -> (kl, advantages, returns).

        Whitening (of advantages, and of rewards with scale_rewards) uses every rank's tokens.
        """
        c = self.config
        rewards, kl = shape_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.response_mask, kl_coef,
                                    c.kl_estimator)
        if c.scale_rewards:
            rewards = masked_whiten(rewards, ro.response_mask, shift_mean=False, across_ranks=True)
        advantages, returns = compute_gae(rewards, ro.values, ro.response_mask, c.gamma, c.lam)
        if c.whiten_advantages:
            advantages = masked_whiten(advantages, ro.response_mask, across_ranks=True)
        return kl, advantages, returns

    def advantage_stats(self, ro: Rollout, kl, kl_coef: float, advantages, returns) -> dict:
        m = ro.response_mask
        return {"objective/non_score_reward": (-kl_coef * kl).sum(-1).mean().item(),
                "ppo/returns_mean": masked_mean(returns, m).item(),
                "ppo/advantages_mean": masked_mean(advantages, m).item(),
                "ppo/explained_variance": explained_variance(ro.values, returns, m)}

    # ------------------------------------------------------------ 4. update
    def loss(self, mb: Rollout, advantages, returns):
        """The clipped policy loss + vf_coef × the clipped value loss on a minibatch of the rollout."""
        c = self.config
        with autocast(self.device):
            logprobs, values = self.train_forward(mb.sequences, mb.attention_mask, mb.prompt_len, c.temperature)
        pg_loss, pg_stats = ppo_policy_loss(logprobs, mb.logprobs, advantages, mb.response_mask, c.cliprange)
        vf_loss, vf_stats = ppo_value_loss(values, mb.values, returns, mb.response_mask, c.cliprange_value)
        return pg_loss + c.vf_coef * vf_loss, {"ppo/policy_loss": pg_loss.detach(), "ppo/value_loss": vf_loss.detach(),
                                               **{f"ppo/{k}": v for k, v in {**pg_stats, **vf_stats}.items()}}

    def update(self, ro: Rollout, advantages, returns) -> dict:
        """ppo_epochs × num_minibatches optimizer steps of `loss` over the rollout (OnlineTrainer.optimize)."""
        return self.optimize(ro, lambda mb, idx: self.loss(mb, advantages[idx], returns[idx]))

    def save(self, out_dir, tokenizer):
        out = Path(out_dir)
        self.model.policy.save_pretrained(out, tokenizer)
        self.model.value_head.save(out)
        if self.model.critic is not None:
            self.model.critic.save_pretrained(out / "critic")


def train_ppo(prompts: list[str], init_dir, reward_dir, out_dir, config: PPOConfig, **kwargs) -> PPOTrainer:
    """The PPO run (online.train_online): `minirlhf ppo`. kwargs: resume, overwrite, reward_fn, show_progress,
    on_iteration. Returns the trainer; its .policy is the new policy."""
    return train_online(PPOTrainer, "ppo", prompts, init_dir, reward_dir, out_dir, config, **kwargs)
