"""Checks for the policy losses: PPO's clipped surrogate."""
from __future__ import annotations

import math

import torch

from ..losses import ppo_policy_loss as ref_ppo_policy_loss
from ..ops import masked_mean
from .harness import MASKS, PADS, SEEDS, SHAPES, Checker, first, gen, right_mask, with_garbage


def _ppo_mistakes(lp, old, adv, mask, eps):
    real = mask.bool()
    ratio = torch.exp(torch.where(real, lp - old, torch.zeros_like(lp)))
    adv0 = torch.where(real, adv, torch.zeros_like(adv))
    clipped = -adv0 * torch.clamp(ratio, 1 - eps, 1 + eps)

    def ref(*args):
        return ref_ppo_policy_loss(*args)[0]
    return lambda: {
        "you applied the clip without the max: the loss is max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), the pessimistic "
        "of the two, so a step that undoes a bad move (A > 0, ρ < 1−ε) is not clipped": masked_mean(clipped, mask),
        "you took the min of the NEGATED surrogates; the loss is their max (= −min of the surrogates)":
            masked_mean(torch.min(-adv0 * ratio, clipped), mask),
        "nothing is clipped: the second term uses clip(ρ, 1 − ε, 1 + ε)": masked_mean(-adv0 * ratio, mask),
        "you averaged over the padding too: use a masked mean over real tokens":
            ref(lp, old, adv, mask, eps) * mask.sum() / mask.numel(),
        "the ratio is upside down: ρ = exp(logprobs − old_logprobs) = π / π_old": ref(old, lp, adv, mask, eps),
        "the sign is wrong: the LOSS is −A·ρ (we minimise it to raise the surrogate A·ρ)":
            ref(lp, old, -adv, mask, eps),
    }


def check_ppo_policy_loss(fn):
    """fn(logprobs, old_logprobs, advantages, mask, cliprange) -> loss (or (loss, stats)):
    masked_mean(max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε))) with ratio = exp(logprobs − old_logprobs)."""
    c = Checker("ppo_policy_loss")
    for seed in SEEDS:
        for B, T in SHAPES:
            for kind, make in MASKS:
                for eps in (0.2, 0.1):
                    g = gen(seed)
                    mask = make(B, T, g)
                    old = -3 * torch.rand(B, T, generator=g)
                    lp = old + 0.3 * torch.randn(B, T, generator=g)
                    adv = torch.randn(B, T, generator=g)
                    lp, old, adv = (with_garbage(x, mask, g, scale=3.0) for x in (lp, old, adv))
                    case = f"random seed={seed} B={B} T={T} {kind} padding ε={eps}"
                    c.close(case, first(c.call(case, fn, lp, old, adv, mask, eps)),
                            ref_ppo_policy_loss(lp, old, adv, mask, eps)[0],
                            mistakes=_ppo_mistakes(lp, old, adv, mask, eps),
                            hint="the loss is the max of the two negated surrogates (the min of the surrogates), "
                                 "averaged over real tokens only; padding may hold anything")
    g = gen(10)
    mask = right_mask(4, 6, g)
    lp, adv = -torch.rand(4, 6, generator=g), torch.randn(4, 6, generator=g)
    c.close("ratio 1 (logprobs = old_logprobs) gives −masked_mean(A)",
            first(c.call("ratio 1", fn, lp, lp.clone(), adv, mask, 0.2)), -masked_mean(adv, mask),
            mistakes=_ppo_mistakes(lp, lp, adv, mask, 0.2))
    one = torch.ones(1, 1)
    for A, ratio, expected, why in ((1.0, 1.5, -1.2, "clipped: the step is already big"),
                                    (-1.0, 0.5, 0.8, "clipped, the other direction"),
                                    (1.0, 0.5, -0.5, "not clipped: undoing a bad step is allowed")):
        lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
        adv = torch.tensor([[A]])
        loss = first(c.call("worked example", fn, lp, torch.zeros(1, 1), adv, one, 0.2))
        c.close(f"worked example ε=0.2, A={A:+}, ratio {ratio}: loss {expected} ({why})", loss, expected,
                mistakes=_ppo_mistakes(lp.detach(), torch.zeros(1, 1), adv, one, 0.2))
        c.call("gradient (the loss must be differentiable)", lambda: loss.backward())
        grad = 0.0 if why.startswith("clipped") else -A * ratio
        c.close(f"worked example ε=0.2, A={A:+}, ratio {ratio}: d loss / d logprob = {grad}", lp.grad,
                torch.tensor([[grad]]), hint="a clipped token must get no gradient (clamp, not a constant)")
    g = gen(11)
    mask = right_mask(3, 5, g)
    old = -torch.rand(3, 5, generator=g)
    lp, adv = old + 0.5 * torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    base = first(c.call("padding invariance", fn, lp, old, adv, mask, 0.2))
    for side, pad in PADS:
        more = first(c.call("padding invariance", fn, pad(lp, 2, 1.0), pad(old, 2, -2.0), pad(adv, 2, 7.0),
                            pad(mask, 2, 0.0), 0.2))
        c.close(f"adding {side} padding changes nothing", more, base)
    c.true("the loss is a scalar", torch.as_tensor(base).dim() == 0,
           f"expected a 0-dim tensor, got shape {tuple(torch.as_tensor(base).shape)}")
    c.done()
