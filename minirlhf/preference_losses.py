"""Losses that train the policy itself on ranked responses, with no RL loop: DPO and RRHF.

Both start from one number per response, a sequence score built from its token log-probabilities
(`sequence_scores`): summed for DPO, length-normalised for RRHF. Every name here is re-exported by
`minirlhf.losses`, which is where to import them from.

Shapes: token tensors are (..., T) with a mask (1/True on real response tokens, 0 on the prompt and
on padding); sequence tensors are (B,) for DPO's chosen/rejected pairs and (B, K) for RRHF's K
candidates per query.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def sequence_scores(token_logps: torch.Tensor, mask: torch.Tensor,
                    length_penalty: float = 1.0) -> torch.Tensor:
    """A response's score from its token log-probabilities, over the LAST dim:

        p = sum_t m_t log pi(y_t | x, y_<t) / (sum_t m_t) ** length_penalty

    length_penalty = 0 gives log pi(y | x), the summed log-probability DPO uses (Rafailov et al. 2023;
    `get_batch_logps` without averaging); 1 gives the per-token average (RLAIF-V's `dpo_use_average`,
    and what IPO expects); RRHF (Yuan et al. 2023) calls p_i the score of response i and defaults to 1.
    Values below 1 favour long responses, above 1 short ones.

    token_logps (..., T), mask (..., T) bool/float -> (...): (B, T) -> (B,), (B, K, T) -> (B, K).
    Padding never matters: it is replaced by 0 before the sum (garbage, inf or NaN there included), and
    an all-padding row counts as length 1, so it scores 0, not NaN.

    Worked example: token logps [-1, -2, -3] with the last one padding: sum -3 over 2 tokens;
    length_penalty 0 -> -3, 1 -> -1.5, 2 -> -0.75.
    """
    if token_logps.shape != mask.shape:
        raise ValueError(f"token_logps and mask must have the same shape; got {tuple(token_logps.shape)} "
                         f"and {tuple(mask.shape)}")
    real = mask.bool()
    total = torch.where(real, token_logps, torch.zeros_like(token_logps)).sum(-1)
    length = real.sum(-1).clamp(min=1).to(total.dtype)
    return total / length ** length_penalty


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None,
             beta: float, reference_free: bool = False, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0):
    """Direct Preference Optimization (Rafailov et al. 2023), per pair, with SLiC's and IPO's variants.

    Where it comes from. RLHF maximises E[r(x, y)] - beta KL(pi || pi_ref). That objective's optimum is
    pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x), so any reward can be read back from its optimal
    policy: r(x, y) = beta log(pi*(y|x) / pi_ref(y|x)) + beta log Z(x). Put that into the Bradley-Terry
    likelihood of a preference y_w > y_l: Z(x) cancels in the difference, and the reward model's loss
    becomes a loss on the policy itself. With log-ratio margin

        Delta = (log pi(y_w) - log pi(y_l)) - (log pi_ref(y_w) - log pi_ref(y_l))

    loss_type picks the loss on Delta (one value per pair; average them yourself):
      "sigmoid"  -log sigma(beta Delta): DPO. With label_smoothing eps > 0, the conservative DPO
                 (cDPO) of labels flipped with probability eps:
                 -(1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta).
      "hinge"    relu(1 - beta Delta): SLiC-HF (Zhao et al. 2023); zero once the margin is >= 1/beta.
      "ipo"      (Delta - 1/(2 beta))^2: IPO (Azar et al. 2023), which regresses Delta onto a finite
                 target instead of pushing it to infinity. IPO expects per-token-averaged logps
                 (sequence_scores with length_penalty=1), as TRL does; summed logps make the target
                 1/(2 beta) tiny next to Delta.

    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)). The rewards are DPO's implicit
    rewards beta log(pi(y) / pi_ref(y)), detached: their difference is beta Delta, so
    "rewards/accuracy" = mean[chosen > rejected] and "rewards/margin" = beta Delta. Only that margin
    is optimised: the chosen reward falling while the margin grows is expected (both log-probabilities
    often fall, the rejected one faster), not a bug.

    Inputs are sequence log-probabilities (B,) (`sequence_scores` of the response tokens), policy with
    grad, reference without. At step 0 the policy is the reference: Delta = 0, every loss is log 2
    (sigmoid) and every reward 0, a check worth logging.

    reference_free=True uses an implicit uniform reference (log pi_ref the same for every response),
    so Delta = log pi(y_w) - log pi(y_l) and the reference arguments may be None. The rewards are then
    beta log pi(y): the same reference the loss uses, so that their difference is still beta Delta.
    (The authors' code, eric-mitchell/direct-preference-optimization, and TRL's DPOTrainer keep
    reporting beta (log pi - log pi_ref) with a reference the loss ignores, so they still need a
    reference model, and their reported margin is not the quantity being optimised.)

    beta (> 0) is the strength of the KL anchor: typically 0.1-0.5. As beta -> 0,
    -log sigma(beta Delta) = log 2 - beta Delta / 2 + O(beta^2): the loss becomes linear in Delta, and
    its gradient, -beta/2 grad(log pi(y_w) - log pi(y_l)), no longer depends on the reference, which
    only shifts Delta by a constant. That is the sense of the usual remark that "the reference model is
    ignored as beta -> 0"; with reference_free the reference was never there.

    Worked example, beta = 0.1: log pi(y_w) = -10, log pi(y_l) = -12, both -11 under the reference.
    Delta = (-10 + 12) - 0 = 2, beta Delta = 0.2.
      sigmoid: log(1 + e^-0.2) = 0.5981; with label_smoothing 0.1:
               0.9 * 0.5981 + 0.1 * log(1 + e^0.2) = 0.5383 + 0.0798 = 0.6181.
      hinge:   relu(1 - 0.2) = 0.8.      ipo: (2 - 1/0.2)^2 = (2 - 5)^2 = 9.
      rewards: chosen 0.1 * (-10 + 11) = 0.1, rejected 0.1 * (-12 + 11) = -0.1, margin 0.2 = beta Delta.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(DPO_LOSS_TYPES)}; got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type='sigmoid' only; got loss_type={loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5); got {label_smoothing}")
    if reference_free:
        ref_chosen_logps = torch.zeros_like(policy_chosen_logps)
        ref_rejected_logps = torch.zeros_like(policy_rejected_logps)
    elif ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError("dpo_loss needs the reference logps unless reference_free=True")
    shapes = {tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps,
                                       ref_chosen_logps, ref_rejected_logps)}
    if len(shapes) != 1 or policy_chosen_logps.dim() != 1:
        raise ValueError(f"dpo_loss takes four (B,) sequence logps (see sequence_scores); got shapes {shapes}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps                   # log pi/pi_ref (y_w)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps             # log pi/pi_ref (y_l)
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
        if label_smoothing:
            losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:
        losses = (delta - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def _candidate_mask(scores: torch.Tensor, rw_scores: torch.Tensor, cand_mask: torch.Tensor | None,
                    name: str) -> torch.Tensor:
    """cand_mask as bool (all True when None), after checking that everything is (B, K)."""
    if scores.dim() != 2 or rw_scores.shape != scores.shape or (
            cand_mask is not None and cand_mask.shape != scores.shape):
        raise ValueError(f"{name}: scores, rw_scores (and the candidate mask) must all be (B, K), one row "
                         f"per query (a single query is (1, K)); got {tuple(scores.shape)}, "
                         f"{tuple(rw_scores.shape)}"
                         + ("" if cand_mask is None else f", {tuple(cand_mask.shape)}"))
    return torch.ones_like(scores, dtype=torch.bool) if cand_mask is None else cand_mask.bool()


def rrhf_loss(scores: torch.Tensor, rw_scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RRHF's ranking loss (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with
    Human Feedback without tears"):

        L_rank = mean over queries of  sum_{i, j : r_i < r_j}  max(0, p_i - p_j)

    p_i is the policy's length-normalised score of candidate i (`sequence_scores`, length_penalty 1 by
    default) and r_i its reward (a reward model's score, or a human ranking). Each pair that the policy
    orders against the rewards costs its score gap; pairs already in order, and tied rewards, cost 0.
    No reference model and no sampling during training: the K candidates are fixed (from the policy,
    other models or humans; `only_use_provide` / `only_use_sample` in the authors' code are just which
    candidates you pass). The full RRHF loss is rrhf_weight * rrhf_loss + rrhf_sft_loss; the authors'
    train.sh uses rrhf_weight 1.

    scores, rw_scores (B, K); mask (B, K) bool for queries with fewer than K candidates: a padded
    candidate is in no pair, whatever its score (garbage and NaN included). -> scalar.
    Per query this is the authors' sum over pairs, so one query gives their number; queries are
    averaged rather than summed, so the scale does not grow with the batch. Their trainer (GanjinZero/
    RRHF train.py) builds the (K, K) pair matrix of one query and keeps its first row, which is right
    only with one query per step and rewards shaped (1, K): 1-D rewards silently select the wrong pairs
    (p = [-0.5, -0.3, -0.4, -0.8, -0.2, -0.1], r = [-0.84, -0.85, -0.57, -0.62, -0.49, -0.87] give it
    -2.5, a negative "loss"; the answer is 2.8). Here any shape but (B, K) is a ValueError.

    Worked example: p = [-1.0, -2.0, -1.5], r = [0.2, 0.9, 0.5] (best: 1, then 2, then 0), the policy's
    order exactly reversed. Pairs (worse, better): (0, 1) max(0, -1 + 2) = 1.0; (0, 2) 0.5; (2, 1) 0.5;
    loss 2.0. With p = [-2.0, -1.0, -1.5] (the right order) every term is 0.
    """
    real = _candidate_mask(scores, rw_scores, mask, "rrhf_loss")
    p = torch.where(real, scores, torch.zeros_like(scores))
    r = torch.where(real, rw_scores, torch.zeros_like(rw_scores))
    worse = worse_pairs(r, real)
    gap = torch.relu(p[:, :, None] - p[:, None, :])                            # max(0, p_i - p_j)
    return torch.where(worse, gap, torch.zeros_like(gap)).sum((1, 2)).mean()


def worse_pairs(rewards: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, K, K) bools: entry [b, i, j] is True when candidates i and j of query b are both real and i is
    rewarded lower than j (the pair (i worse, j better)); tied rewards make no pair."""
    return (rewards[:, :, None] < rewards[:, None, :]) & real[:, :, None] & real[:, None, :]


def rrhf_sft_loss(token_logps: torch.Tensor, mask: torch.Tensor, rw_scores: torch.Tensor,
                  cand_mask: torch.Tensor | None = None) -> torch.Tensor:
    """RRHF's supervised term: the negative log-likelihood of each query's best-rewarded candidate.

        L_sft = mean over queries of  -(1/|y_b|) sum_t log pi(y_b,t | x, y_b,<t),   b = argmax_i r_i

    The mean is over the real tokens of y_b (`sequence_scores` with length_penalty 1), never over its
    padding: the authors' `-logit_label[max_idx].mean()` averages over the whole padded row, prompt
    positions included, which shrinks the loss of short answers. Of tied best rewards the first wins.

    token_logps, mask (B, K, T): response-token logprobs of every candidate and their mask;
    rw_scores (B, K); cand_mask (B, K) bool marks real candidates (a padded one is never the best).
    -> scalar.

    Worked example: one query, rewards [0.1, 0.7], candidate 1's token logps [-0.5, -1.5, pad]:
    loss = (0.5 + 1.5) / 2 = 1.0.
    """
    if token_logps.dim() != 3 or mask.shape != token_logps.shape:
        raise ValueError(f"rrhf_sft_loss: token_logps and mask must both be (B, K, T); got "
                         f"{tuple(token_logps.shape)} and {tuple(mask.shape)}")
    scores = sequence_scores(token_logps, mask, length_penalty=1.0)                # (B, K) per-token means
    real = _candidate_mask(scores, rw_scores, cand_mask, "rrhf_sft_loss")
    if not real.any(1).all():
        raise ValueError("rrhf_sft_loss: every query needs at least one real candidate")
    best = torch.where(real, rw_scores, torch.full_like(rw_scores, -torch.inf)).argmax(1)   # (B,)
    return -scores.gather(1, best[:, None]).mean()
