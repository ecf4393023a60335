"""From a rollout's scores to per-token advantages: KL estimators and shaping, GAE, KL controllers.

    scores (B,), logprobs, ref_logprobs (B, T) ──shape_rewards──▶ r_t = −β·KL_t (+ the score at the end)
        ──compute_gae (with the critic's values)──▶ advantages, returns          (PPO)

The critic-free methods replace GAE with a baseline built from the other samples of the same prompt;
those estimators sit here too, so that every online trainer takes its advantages from this one file.
Every function is pure: tensors in, tensors out, no model and no optimizer.
"""
from __future__ import annotations

import torch

from .ops import last_true_index, masked_var


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1",
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π (http://joschu.net/blog/kl-approx.html).

    It returns the estimate, not the penalty: the penalty is β × it, subtracted from the reward in PPO's shaping
    and RLOO's score, or added to the loss in GRPO. (The name is the one TRL and the papers' code use.)

    With log r = log π_ref − log π:
      k1 = −log r                 unbiased, high variance, can be negative per token (the default, as in
                                  lm-human-preferences and TRL)
      k2 = ½ (log r)²             biased, low variance, ≥ 0
      k3 = (r − 1) − log r        unbiased, low variance, ≥ 0 (GRPO's choice)

    "Unbiased" is said of the estimate's VALUE: E_π[k1] = E_π[k3] = KL(π ‖ π_ref). As a loss term whose
    gradient flows through log π on fixed samples, they differ (an exact check on a categorical is in
    tests/test_padding_and_accumulation.py):
      E_π[∇k1] = Σ_a ∇π(a) = 0                    no pull towards the reference at all
      E_π[∇k2] = ∇ KL(π ‖ π_ref)                  the reverse KL's gradient
      E_π[∇k3] = ∇ KL(π_ref ‖ π)                  the forward KL's gradient (GRPO's term)
    so k1 is only meaningful in the reward (PPO's shaping, RLOO), never as GRPO's loss term.

    mask (B, T), optional: log r is set to 0 on padding before anything is computed, so the estimate there
    is exactly 0 and so is its gradient. Under padding log π is whatever the model says about PAD (−50 at a
    low temperature), and k3's exp(log r) would overflow there: multiplying by the mask afterwards hides the
    value but not the inf × 0 = NaN in the backward pass.
    """
    log_r = ref_logprobs - logprobs
    if mask is not None:
        log_r = torch.where(mask.bool(), log_r, torch.zeros_like(log_r))
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r ** 2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"estimator must be k1, k2 or k3, got {estimator!r}")


def shape_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float, estimator: str = "k1"):
    """r_t = −β·KL_t for every real response token, and + score at the last real one.

    The last real token is the EOS when the response produced one, else the final token; never a pad
    (trl #1893). Returns (rewards, kl), both (B, N) and zero on padding.
    """
    kl = kl_penalty(logprobs, ref_logprobs, estimator, mask)
    rewards = -kl_coef * kl
    last = last_true_index(mask)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards, kl


def compute_gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded (B, T) responses.

        δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t,     A_t = δ_t + γλ·A_{t+1}·m_{t+1}

    V and A beyond the last real token count as 0 (the episode has ended), so padding changes nothing.
    Returns (advantages, returns) with returns = A + V, both zero on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


class FixedKLController:
    """β stays at kl_coef."""

    def __init__(self, kl_coef: float):
        self.kl_coef = kl_coef

    def update(self, current_kl: float, n_samples: int):
        pass


class AdaptiveKLController:
    """Ziegler et al. 2019: β ← β·(1 + clip((KL − target)/target, −0.2, 0.2)·n/horizon).

    KL is the mean over sequences of the summed per-token KL; n is the number of samples this update (all ranks'),
    and the horizon is counted in samples too (lm-human-preferences' `horizon`, TRL's).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.kl_coef, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_samples: int):
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * n_samples / self.horizon


def explained_variance(values, returns, mask) -> float:
    """1 − Var[returns − V] / Var[returns] over real tokens: 1 is a perfect critic, ≤ 0 a useless one."""
    var = masked_var(returns, mask, unbiased=False)
    return (1 - masked_var(returns - values, mask, unbiased=False) / var.clamp(min=1e-8)).item()


# --------------------------------------------------------------------------------------------------
# Critic-free baselines: the other samples of the same prompt (GRPO, RLOO)
# --------------------------------------------------------------------------------------------------

GROUP_SCALES = ("group", "batch", "none")


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (B,) -> (B/G, G), after checking that the grouping makes sense."""
    if group_size < 2:
        raise ValueError(f"GRPO/RLOO need at least 2 samples per prompt (group_size={group_size}): the group "
                         "baseline of one sample is itself, so every advantage is 0")
    if rewards.dim() != 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards must be (B,) with B = n_prompts * group_size; got shape "
                         f"{tuple(rewards.shape)} with group_size={group_size}")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantage (Shao et al. 2024, DeepSeekMath): each sample against its own prompt's group.

        A_i = (r_i - mean_group(r)) / (std + eps)

    rewards (B,) with B = n_prompts * G, the G samples of one prompt contiguous -> A (B,), one per
    sequence (broadcast over its tokens by the policy loss). `scale` chooses the std:
      "group"  the std of the G rewards of the prompt: GRPO, as TRL's default; the unbiased one
               (Bessel, torch.std's default), as TRL's `.std(dim=1)`.
      "batch"  the unbiased std of all B rewards (TRL's scale_rewards="batch"): the mean is still
               per group, but an easy prompt's near-identical rewards are no longer blown up. Under
               torchrun the std is over every rank's rewards, so a batch split over N processes is
               scaled exactly as the whole batch in one process would be (as PPO's whitening).
      "none"   no division (Dr. GRPO, Liu et al. 2025): dividing by a group's std weights prompts that
               are almost always or almost never solved most, a difficulty bias.
    A group whose G rewards are equal has A = 0 (no NaN: eps keeps the division finite): it carries
    no learning signal, which is why DAPO filters such prompts out.

    Worked example, G = 4, rewards [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) = 0.5774,
    A = +-0.5 / (0.5774 + 1e-4) = [0.8659, -0.8659, -0.8659, 0.8659]; with scale="none" [0.5, -0.5, -0.5, 0.5].
    """
    if scale not in GROUP_SCALES:
        raise ValueError(f"scale must be one of {', '.join(GROUP_SCALES)}; got {scale!r}")
    grouped = _groups(rewards, group_size)                                      # (n_prompts, G)
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(1, keepdim=True) + eps)
    elif scale == "batch":
        batch_var = masked_var(rewards, torch.ones_like(rewards), unbiased=True, across_ranks=True)
        centred = centred / (batch_var.sqrt() + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019):

        A_i = r_i - (sum_j r_j - r_i) / (G - 1)

    the baseline of sample i is the mean reward of the G - 1 OTHER samples of its prompt, so it does not
    depend on y_i and the policy gradient stays unbiased (GRPO's group mean includes r_i itself).
    A_i = G/(G-1) (r_i - mean), so the advantages of a group sum to 0. For RLOO's KL-in-reward form,
    pass r_i - beta * KL_i (the sequence's summed KL to the reference) as the reward.

    rewards (B,), groups of G contiguous -> A (B,).
    Worked example, G = 3, rewards [3, 0, 0]: baselines 0, 1.5, 1.5 -> A = [3, -1.5, -1.5].
    """
    grouped = _groups(rewards, group_size)
    others = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)
