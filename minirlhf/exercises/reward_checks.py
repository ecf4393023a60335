"""Checks for the reward-model losses: Bradley–Terry pairwise and InstructGPT's K-wise ranking loss."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..losses import pairwise_loss as ref_pairwise_loss
from ..losses import ranking_loss as ref_ranking_loss
from .harness import SEEDS, Checker, gen, show

SIGMA_NOT_LOG_SIGMA = ("you used σ in place of log σ. A loss built on σ(Δ) saturates: its gradient σ(1−σ) "
                       "vanishes for a confidently WRONG pair, which then never gets corrected. Use −F.logsigmoid(Δ)")


def _pairwise_mistakes(rc, rr):
    d = rc - rr
    return lambda: {
        SIGMA_NOT_LOG_SIGMA + " (your loss is −σ(Δ))": -torch.sigmoid(d).mean(),
        SIGMA_NOT_LOG_SIGMA + " (your loss is 1 − σ(Δ) = σ(−Δ))": torch.sigmoid(-d).mean(),
        SIGMA_NOT_LOG_SIGMA + " (your loss is σ(Δ): the sign is wrong too)": torch.sigmoid(d).mean(),
        "you forgot the minus sign: the loss is the NEGATIVE log-likelihood −log σ(Δ)": F.logsigmoid(d).mean(),
        "Δ is the wrong way round: Δ = r_chosen − r_rejected": -F.logsigmoid(-d).mean(),
        "you summed over the batch: take the mean": -F.logsigmoid(d).sum(),
    }


def check_pairwise_loss(fn):
    """fn(r_chosen, r_rejected) -> mean over the batch of −log σ(r_chosen − r_rejected), a scalar."""
    c = Checker("pairwise_loss")
    for seed in SEEDS:
        for B in (1, 4, 16):
            g = gen(seed)
            rc, rr = 3 * torch.randn(B, generator=g), 3 * torch.randn(B, generator=g)
            c.close(f"random seed={seed} B={B}", c.call("random", fn, rc, rr), ref_pairwise_loss(rc, rr),
                    hint="−log σ(r_chosen − r_rejected), averaged over the batch",
                    mistakes=_pairwise_mistakes(rc, rr))
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    c.close("worked example: differences +1 and −1 give (0.3133 + 1.3133) / 2",
            c.call("worked example", fn, rc, rr), 0.8133, atol=1e-4, mistakes=_pairwise_mistakes(rc, rr))
    c.close("equal rewards give log 2", c.call("equal", fn, torch.zeros(3), torch.zeros(3)), math.log(2),
            mistakes=_pairwise_mistakes(torch.zeros(3), torch.zeros(3)))
    g = gen(3)
    rc, rr = torch.randn(8, generator=g), torch.randn(8, generator=g)
    swapped = c.call("swap", fn, rc, rr) - c.call("swap", fn, rr, rc)
    c.close("loss(c, r) − loss(r, c) = −mean(c − r)", swapped, -(rc - rr).mean())
    got = c.call("stability", fn, torch.tensor([0.0]), torch.tensor([200.0]))
    c.true("a pair wrong by 200 gives loss 200 (finite)", bool(torch.isfinite(torch.as_tensor(got)).all()),
           f"got {show(got)}", hint="log(sigmoid(-200)) underflows to log(0) = -inf in float32; "
                                    "use F.logsigmoid (= -softplus(-x)), which stays exact")
    c.close("a pair wrong by 200 gives loss 200", got, 200.0, rtol=1e-4)
    rc = torch.tensor([0.0], requires_grad=True)
    loss = c.call("gradient", fn, rc, torch.tensor([10.0]))
    c.call("gradient (the loss must be differentiable)", lambda: loss.backward())
    c.close("gradient at r_c − r_r = −10 is −(1 − σ(−10)) ≈ −1 (full signal when confidently wrong)",
            rc.grad, torch.tensor([-(1 - torch.sigmoid(torch.tensor(-10.0)).item())]), atol=1e-4,
            hint="a loss of −σ(x) has gradient σ(x)(1−σ(x)) ≈ 4.5e-5 here: it never corrects a confident "
                 "mistake. Use −log σ(x).")
    c.true("the loss is a scalar", torch.as_tensor(got).dim() == 0,
           f"expected a 0-dim tensor (mean over the batch), got shape {tuple(torch.as_tensor(got).shape)}")
    c.done()


def _random_ranks(B: int, K: int, g: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randperm(K, generator=g) for _ in range(B)])


def _pairs_by_columns(rewards, loss=lambda d: -F.logsigmoid(d)):
    """The loss over all column pairs i < j as if column i were always the better one."""
    i, j = torch.triu_indices(rewards.shape[1], rewards.shape[1], 1)
    return loss(rewards[:, i] - rewards[:, j]).mean()


def _ranking_mistakes(rewards, ranks):
    K = rewards.shape[1]
    ordered = rewards.gather(1, ranks.argsort(1))                  # column k: the reward of rank k
    return lambda: {
        "you read the ranks in reverse: rank 0 is the BEST response, so the better of a pair is the one with the "
        "SMALLER rank": ref_ranking_loss(rewards, K - 1 - ranks),
        "you compared the candidates in their column order: order each pair by its ranks "
        "(the better one has the smaller rank)": _pairs_by_columns(rewards),
        "you read ranks[b, k] as the candidate AT rank k; it is the rank OF candidate k "
        "(rewards.gather(1, ranks.argsort(1)) puts them in rank order)": _pairs_by_columns(rewards.gather(1, ranks)),
        SIGMA_NOT_LOG_SIGMA: _pairs_by_columns(ordered, lambda d: -torch.sigmoid(d)),
        "you used only neighbouring ranks: InstructGPT uses all K(K−1)/2 pairs":
            -F.logsigmoid(ordered[:, :-1] - ordered[:, 1:]).mean(),
        "you summed over the pairs: divide by the number of pairs, K(K−1)/2 (a mean over pairs and prompts)":
            ref_ranking_loss(rewards, ranks) * (K * (K - 1) // 2),
    }


def check_ranking_loss(fn):
    """fn(rewards (B, K), ranks (B, K), a permutation of 0..K-1 per row, 0 = best) -> InstructGPT's loss:
    the mean over prompts and over all K-choose-2 pairs of −log σ(r_better − r_worse)."""
    c = Checker("ranking_loss")
    for seed in SEEDS:
        for B, K in ((5, 4), (2, 6), (3, 3), (1, 2)):   # K = 2 last: there, column order and reversed ranks agree
            g = gen(seed)
            rewards, ranks = 2 * torch.randn(B, K, generator=g), _random_ranks(B, K, g)
            c.close(f"random seed={seed} B={B} K={K}", c.call("random", fn, rewards, ranks),
                    ref_ranking_loss(rewards, ranks), hint="−log σ(r_better − r_worse) averaged over every pair "
                    "of every prompt; the better of a pair has the smaller rank",
                    mistakes=_ranking_mistakes(rewards, ranks))
    rewards, ranks = torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[0, 2, 1]])
    c.close("worked example: rewards [3, 1, 2], ranks [0, 2, 1] give 0.2512",
            c.call("worked example", fn, rewards, ranks), 0.2512, atol=1e-4, mistakes=_ranking_mistakes(rewards, ranks))
    g = gen(4)
    rewards, ranks = torch.randn(6, 2, generator=g), _random_ranks(6, 2, g)
    better = rewards.gather(1, ranks.argsort(1))  # column 0: the reward of rank 0
    c.close("K = 2 is the pairwise loss", c.call("K=2", fn, rewards, ranks),
            ref_pairwise_loss(better[:, 0], better[:, 1]), mistakes=_ranking_mistakes(rewards, ranks))
    rewards, ranks = torch.randn(4, 5, generator=g), _random_ranks(4, 5, g)
    base = c.call("invariance", fn, rewards, ranks)
    perm = torch.randperm(5, generator=g)
    c.close("reordering the K candidates (rewards and ranks together) changes nothing",
            c.call("invariance", fn, rewards[:, perm], ranks[:, perm]), base,
            hint="compare r_i and r_j by their ranks, not by their column positions")
    c.close("adding a constant to a prompt's rewards changes nothing",
            c.call("invariance", fn, rewards + 5 * torch.randn(4, 1, generator=g), ranks), base)
    got = c.call("stability", fn, torch.tensor([[0.0, 200.0]]), torch.tensor([[0, 1]]))
    c.close("a pair wrong by 200 gives loss 200 (finite: use F.logsigmoid)", got, 200.0, rtol=1e-4)
    c.done()
