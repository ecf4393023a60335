"""Every loss from the papers, as pure functions with the equation in the docstring.

DPO, RRHF and their sequence scores live in `minirlhf.preference_losses` and are re-exported here:
import every loss from `minirlhf.losses`.

Reward-model losses take rewards (B, K): one scalar r(x, y_k) per candidate k of prompt x.
Ranks are (B, K) integers, 0 = best. PPO losses take response-token tensors (B, T) and a mask
(1/True on real tokens); their reductions go through `minirlhf.ops`, so padding is handled in one
place. Each docstring works a small example by hand; the tests check those numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import masked_aggregate, masked_mean
from .preference_losses import dpo_loss, rrhf_loss, rrhf_sft_loss, sequence_scores

__all__ = ["best_of_k_loss", "pairwise_loss", "ordered_pairs", "ranking_loss", "plackett_luce_loss",
           "sigmoid_rank_loss", "ppo_policy_loss", "ppo_value_loss", "dpo_loss", "rrhf_loss", "rrhf_sft_loss",
           "sequence_scores"]

# --------------------------------------------------------------------------------------------------
# Reward-model losses
# --------------------------------------------------------------------------------------------------


def best_of_k_loss(rewards: torch.Tensor, best_idx: torch.Tensor) -> torch.Tensor:
    """Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences".

    A labeller picks the best b of K candidates; the reward model is a K-way softmax classifier:

        loss = -E[ log( exp r(x, y_b) / sum_k exp r(x, y_k) ) ]    (mean over the batch)

    This is `F.cross_entropy(rewards, best_idx)`. It only learns from the winner: the order of the
    K-1 others is never used (InstructGPT's pairwise loss fixes that).

    rewards (B, K) float, best_idx (B,) long -> scalar.

    Worked example (loss_v1 of the reward-model study notes, docs/references.md): every row is
    a, a+1, a+2, a+3, so every row has
    log-sum-exp = a + log(1 + e + e^2 + e^3) = a + 3.4402. With best_idx = [0, 1, 2, 3] the
    per-row losses are 3.4402 - 0, -1, -2, -3, and their mean is 3.4402 - 1.5 = 1.9402.
    """
    return F.cross_entropy(rewards, best_idx)


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                  margin: float = 0.0) -> torch.Tensor:
    """Stiennon et al. 2020, "Learning to summarize from human feedback" (Bradley-Terry):

        loss = -E[ log sigma(r(x, y_w) - r(x, y_l) - margin) ]     (mean over the batch)

    sigma(r_w - r_l) is the modelled probability that the labeller prefers y_w. `margin` > 0 asks
    for a gap of at least that size (Touvron et al. 2023, Llama 2); 0 gives the paper's loss.
    This is best_of_k_loss with K = 2. F.logsigmoid is used because log(sigmoid(x)) underflows
    to log(0) = -inf for x < -100 or so, while logsigmoid(x) = -softplus(-x) stays exact.

    r_chosen, r_rejected: any matching shape (usually (B,)) -> scalar.

    Worked example: r_w - r_l = 1 gives log(1 + e^-1) = 0.3133; r_w - r_l = -1 (the model has it
    backwards) gives log(1 + e) = 1.3133; the batch of both has loss 0.8133.
    """
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def _check_ranking_shapes(rewards: torch.Tensor, ranks: torch.Tensor) -> None:
    if rewards.dim() != 2 or rewards.shape != ranks.shape or rewards.shape[1] < 2:
        raise ValueError(f"rewards and ranks must both be (B, K) with K >= 2; got "
                         f"{tuple(rewards.shape)} and {tuple(ranks.shape)}")


def ordered_pairs(rewards: torch.Tensor, ranks: torch.Tensor):
    """For all K-choose-2 pairs (i, j), i < j: r_better - r_worse (B, P) and valid (B, P) bool.

    A pair whose two ranks are equal (a tie) has no better member: valid is False there.
    """
    _check_ranking_shapes(rewards, ranks)
    K = rewards.shape[1]
    # (P, 2) pairs (i, j), i < j, in itertools.combinations order
    pairs = torch.combinations(torch.arange(K, device=rewards.device), r=2)
    i, j = pairs[:, 0], pairs[:, 1]
    rank_i, rank_j = ranks[:, i], ranks[:, j]                                  # (B, P)
    diff = rewards[:, i] - rewards[:, j]                                       # r_i - r_j
    diff = torch.where(rank_i < rank_j, diff, -diff)                           # r_better - r_worse
    return diff, rank_i != rank_j


def ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """InstructGPT (Ouyang et al. 2022), eq. 1: every one of the K-choose-2 pairs is a comparison.

        loss = -1/C(K,2) * E_x[ sum_{(y_w, y_l)} log sigma(r(x, y_w) - r(x, y_l)) ]

    i.e. the mean of -log sigma(r_better - r_worse) over all pairs and all prompts. Keeping the K
    candidates of one prompt in one row means each is scored once, not K-1 times (the paper's
    reason for batching by prompt: less overfitting, fewer forward passes).

    Ties: a pair with equal ranks says nothing about which is better, so it is skipped; the mean
    is then over the non-tied pairs of the whole batch (equal to the paper's 1/C(K,2) form when
    there are no ties). A batch with no untied pair gives 0. The reward-model study notes' rank_to_pair_label instead
    counts a tie as "first is better"; `minirlhf.ranks` keeps that rule for its conversions.

    rewards (B, K) float, ranks (B, K) int -> scalar. Vectorised: no Python loop over pairs.

    Worked example: rewards [[3, 1, 2]], ranks [[0, 2, 1]] (item 0 best, then item 2, then item 1).
    Pairs (0,1): 3-1 = 2; (0,2): 3-2 = 1; (1,2): item 2 is better, 2-1 = 1.
    loss = (log(1+e^-2) + 2 log(1+e^-1)) / 3 = (0.1269 + 0.3133 + 0.3133) / 3 = 0.2512.
    """
    diff, valid = ordered_pairs(rewards, ranks)
    return masked_mean(-F.logsigmoid(diff), valid)


def plackett_luce_loss(rewards: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the whole ranking under Plackett-Luce (Plackett 1975, Luce 1959).

    The best item is drawn from softmax(r) over all K, the next from softmax over the K-1 left, ...

        P(ranking) = prod_{j=0}^{K-1} exp(r_(j)) / sum_{m >= j} exp(r_(m))
        loss = E_x[ sum_j ( logsumexp_{m >= j} r_(m) - r_(j) ) ]   (sum over positions, mean over x)

    where r_(j) is the reward of the item ranked j. The last position contributes 0. With K = 2 it
    is exactly pairwise_loss: logsumexp(r_w, r_l) - r_w = log(1 + e^(r_l - r_w))
    = -log sigma(r_w - r_l).
    Tied ranks are ordered by index (a stable sort), so ties are not skipped here.

    rewards (B, K) float, ranks (B, K) int -> scalar.

    Worked example: rewards [[3, 1, 2]], ranks [[0, 2, 1]]: in rank order the rewards are 3, 2, 1.
    j=0: log(e^3+e^2+e^1) - 3 = log(1 + e^-1 + e^-2) = 0.4076; j=1: log(e^2+e^1) - 2 = 0.3133;
    j=2: 0. loss = 0.7209.
    """
    _check_ranking_shapes(rewards, ranks)
    order = torch.argsort(ranks, dim=1, stable=True)       # (B, K): order[:, j] = item ranked j
    r_sorted = rewards.gather(1, order)                    # r_(0), r_(1), ...
    # logsumexp over each suffix m >= j: a reversed cumulative logsumexp.
    suffix_lse = torch.logcumsumexp(r_sorted.flip(1), dim=1).flip(1)
    return (suffix_lse - r_sorted).sum(1).mean()


def sigmoid_rank_loss(rewards: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """The original Chinese rank-list example (the RLHF Cookbook, docs/references.md): kept to show why it is
    the wrong loss.

        loss = -mean_{pairs} sigma(r_better - r_worse)       (no log; InstructGPT has log sigma)

    Same pairs and tie rule as ranking_loss. It is bounded below by -1, but its gradient vanishes
    exactly where learning is most needed. With x = r_better - r_worse:

        d/dx sigma(x)     = sigma(x) (1 - sigma(x))  -> 0 as x -> -inf   (confidently wrong: no signal)
        d/dx log sigma(x) = 1 - sigma(x)             -> 1 as x -> -inf   (full signal)

    At x = -10 the first is 4.5e-5 and the second 0.99995: a reward model initialised (or drifted)
    to a wrong order by a wide margin stays wrong under this loss. Both vanish as x -> +inf, which
    is fine: the pair is already right.

    Worked example: rewards [[3, 1, 2]], ranks [[0, 2, 1]]: differences 2, 1, 1;
    loss = -(0.8808 + 0.7311 + 0.7311) / 3 = -0.7810.
    """
    diff, valid = ordered_pairs(rewards, ranks)
    return -masked_mean(torch.sigmoid(diff), valid)


# --------------------------------------------------------------------------------------------------
# PPO losses (Schulman et al. 2017, as in openai/lm-human-preferences policy/train_policy.py)
# --------------------------------------------------------------------------------------------------


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with padding set to 0, so garbage there (even inf/nan) cannot leak into exp() or x * 0."""
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, cliprange: float, *, cliprange_high: float | None = None,
                    aggregation: str = "token_mean", norm_len: int | None = None,
                    importance_sampling_level: str = "token"):
    """PPO's clipped surrogate, per token, as a masked mean over response tokens:

        ratio_t = exp(log pi(a_t|s_t) - log pi_old(a_t|s_t))
        loss    = masked_mean( max(-A_t ratio_t, -A_t clip(ratio_t, 1 - eps, 1 + eps)) )

    The max of the two negated terms is the min of the two surrogates: a pessimistic bound, so a
    token earns nothing for moving its ratio beyond 1 +- eps in the direction A favours.

    GRPO (Shao et al. 2024) and RLOO use the same per-token objective with one advantage per
    sequence (`minirlhf.advantages.group_advantages` / `rloo_advantages`); GRPO's beta * k3 KL term is
    added by its trainer. The keyword options are where the GRPO family differs:
      cliprange_high  upper clip 1 + eps_high instead of 1 + eps (DAPO's "clip-higher", Yu et al. 2025,
                      eps 0.2 / eps_high 0.28): a low-probability token with A > 0 may grow further, which
                      keeps exploration (entropy) from collapsing. None: symmetric, as PPO.
      aggregation     how the (B, T) per-token terms become one number (`minirlhf.ops.masked_aggregate`):
                      "token_mean" (the default, above; DAPO), "sequence_mean" (the original GRPO:
                      mean per sequence, then over sequences) or "dr_grpo" (sum / (B * norm_len), Liu et
                      al. 2025). They differ in the weight of one token: 1/(all tokens), 1/(B * |y_i|)
                      or 1/(B * L). Under "sequence_mean" a token of a short response weighs more:
                      short correct (A > 0) answers get the bigger push per token, and long wrong
                      (A < 0) answers the smaller penalty per token, so wrong answers drift longer. That
                      is the length bias Dr. GRPO removes with a constant divisor. norm_len: Dr. GRPO's
                      L (default: the padded length T; pass max_new_tokens to fix it across batches).
      importance_sampling_level  "token" (PPO's, above) or "sequence" (GSPO, Zheng et al. 2025, "Group
                      Sequence Policy Optimization"): one ratio per response, the geometric mean of its tokens'
                        s_i = exp( mean_t (log pi(a_t) - log pi_old(a_t)) )   over the real tokens of response i,
                      clipped (1 - eps, 1 + eps_high) as a whole and broadcast to its tokens (as TRL), so one
                      token whose probability jumped no longer decides alone; the gradient reaches every token
                      of the response through the mean. Being a mean of log-ratios, s_i stays close to 1: the
                      paper clips at eps = 3e-4 / eps_high = 4e-4, and its objective is a per-sequence mean
                      (aggregation "sequence_mean"). approx_kl stays per token; the other stats are of s_i.

    With one update per rollout the ratio is 1 on every token, so the loss VALUE is -aggregate(A):
    about 0 for GRPO's group-centred advantages (exactly 0 under "sequence_mean" with whole groups).
    The gradient is not: at ratio 1, grad ratio_t = grad log pi(a_t), so each token's log-probability
    is pushed up or down by its own A and nothing cancels. A flat GRPO loss curve says nothing about
    learning.

    logprobs (B, T) with grad; old_logprobs (B, T) without; advantages (B, T) per token, or (B, 1) /
    (B,) per sequence (broadcast over its tokens); mask (B, T) float/bool.
    Returns (loss, stats); stats are detached 0-dim tensors (call .item() to log):
      clipfrac   masked mean of [clipped term > unclipped term]: tokens whose gradient is cut off.
      approx_kl  masked mean of 0.5 (log pi - log pi_old)^2: Schulman's k2 estimator of
                 KL(pi_old || pi) from samples of pi_old (http://joschu.net/blog/kl-approx.html),
                 as lm-human-preferences logs it. Biased but low-variance and never negative.
      ratio_mean masked mean of the ratio; exactly 1 on the first minibatch of the first epoch.
      ratio_max  the largest ratio on a real token (an update that blew one token up: "ratios of 1e8").

    Worked example, eps = 0.2, one token each:
      A = +1, ratio 1.5: max(-1.5, -1.2) = -1.2 (clipped: gradient 0, the step is already big).
      A = -1, ratio 0.5: max(0.5, 0.8) = 0.8 (clipped, same reason in the other direction).
      A = +1, ratio 0.5: max(-0.5, -0.8) = -0.5 (not clipped: undoing a bad step is always allowed).
    Sequence level, A = +1, log-ratios [0.3, -0.1, 0.4]: s = exp(0.2) = 1.2214, clipped to 1.2 on all three
    tokens (token level would clip two of them and keep 0.905 for the middle one).
    """
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1)                                   # (B,) -> (B, 1)
    log_ratio = _zero_padding(logprobs - old_logprobs, mask)
    advantages = _zero_padding(advantages, mask)                                # (B, 1) -> (B, T)
    if importance_sampling_level == "sequence":                                 # GSPO: log s_i on all its tokens
        log_weight = _zero_padding(masked_mean(log_ratio, mask, dim=-1)[:, None].expand_as(log_ratio), mask)
    elif importance_sampling_level == "token":
        log_weight = log_ratio
    else:
        raise ValueError(f"importance_sampling_level must be token or sequence, got {importance_sampling_level!r}")
    ratio = torch.exp(log_weight)
    high = cliprange if cliprange_high is None else cliprange_high
    pg_losses = -advantages * ratio                                             # (B, T)
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + high)
    loss = masked_aggregate(torch.max(pg_losses, pg_losses_clipped), mask, aggregation, norm_len)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses_clipped > pg_losses).to(ratio.dtype), mask),
            # approx_kl: k2 = 0.5 (log r)^2, http://joschu.net/blog/kl-approx.html
            "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask.bool(), ratio, torch.zeros_like(ratio)).max(),
        }
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, cliprange_value: float):
    """Clipped value loss, as in lm-human-preferences (and PPO2's baselines code):

        v_clipped = V_old + clip(V - V_old, -c, c)
        loss      = 0.5 * masked_mean( max((V - R)^2, (v_clipped - R)^2) )

    Like the policy loss it is pessimistic: the larger of the two errors. A token whose value has
    moved more than c from V_old towards its return gives no more gradient (the clipped error is
    the larger, and constant in V); a value that moved the wrong way is still pulled back.

    values (B, T) with grad; old_values, returns (B, T); mask (B, T) float/bool.
    Returns (loss, stats) with stats["vf_clipfrac"]: masked mean of [clipped error > unclipped].

    Worked example, c = 0.2, V_old = 0, R = 2 for two tokens:
      V = 1.0: v_clipped = 0.2, errors (1-2)^2 = 1 and (0.2-2)^2 = 3.24 -> 3.24 (clipped).
      V = 0.1: v_clipped = 0.1, both errors 3.61 -> 3.61 (not clipped).
      loss = 0.5 * (3.24 + 3.61) / 2 = 1.7125, vf_clipfrac = 0.5.
    """
    values, old_values = _zero_padding(values, mask), _zero_padding(old_values, mask)
    returns = _zero_padding(returns, mask)
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses_clipped), mask)
    vf_clipfrac = masked_mean((vf_losses_clipped > vf_losses).to(values.dtype), mask).detach()
    return loss, {"vf_clipfrac": vf_clipfrac}
