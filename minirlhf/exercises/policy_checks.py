"""Checks for the policy losses: PPO's clipped surrogate and DPO."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..losses import dpo_loss as ref_dpo_loss
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


# ------------------------------------------------------------------------------------------ DPO

def _dpo_mistakes(pc, pr, rc, rr, beta):
    delta = (pc - rc) - (pr - rr)
    return lambda: {
        "you left out the reference model: Δ = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)], "
        "not log π(y_w) − log π(y_l)": -F.logsigmoid(beta * (pc - pr)),
        "you left out β: the loss is −log σ(β·Δ)": -F.logsigmoid(delta),
        "β is outside the log σ: the loss is −log σ(β·Δ), not −β·log σ(Δ)": -beta * F.logsigmoid(delta),
        "the margin has the wrong sign: Δ = log-ratio of the CHOSEN response minus that of the rejected one, "
        "each log-ratio policy minus reference": -F.logsigmoid(-beta * delta),
        "you used σ in place of log σ: the loss is −log σ(β·Δ) (exercise 5's Bradley–Terry loss)":
            -torch.sigmoid(beta * delta),
    }


def _reward_mistakes(p, r, beta):
    return lambda: {"the implicit reward is β·(log π(y) − log π_ref(y)): yours has no β": p - r,
                    "the implicit reward is β·(log π(y) − log π_ref(y)): yours has no reference": beta * p,
                    "the implicit reward is policy minus reference, β·(log π(y) − log π_ref(y))": beta * (r - p)}


def _dpo_outputs(c: Checker, case: str, fn, *args):
    """The three outputs (losses, chosen_rewards, rejected_rewards), or a failure saying what to return."""
    out = c.call(case, fn, *args)
    c.true(case + ": three outputs", isinstance(out, (tuple, list)) and len(out) == 3,
           f"got {type(out).__name__}", hint="return (losses, chosen_rewards, rejected_rewards), each of shape (B,)")
    return out


def check_dpo_loss(fn):
    """fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) ->
    (losses, chosen_rewards, rejected_rewards), all (B,): losses −log σ(β·Δ) with
    Δ = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)], rewards β·(log π − log π_ref), detached."""
    c = Checker("dpo_loss")
    for seed in SEEDS:
        for B in (4, 16, 1):
            for beta in (0.1, 0.5):
                g = gen(seed)
                pc, pr = -20 - 30 * torch.rand(B, generator=g), -20 - 30 * torch.rand(B, generator=g)
                rc, rr = pc + 3 * torch.randn(B, generator=g), pr + 3 * torch.randn(B, generator=g)
                exp_losses, exp_chosen, exp_rejected = ref_dpo_loss(pc, pr, rc, rr, beta)
                case = f"random seed={seed} B={B} β={beta}"
                losses, chosen, rejected = _dpo_outputs(c, case, fn, pc, pr, rc, rr, beta)
                c.close(case + ": losses", losses, exp_losses, mistakes=_dpo_mistakes(pc, pr, rc, rr, beta),
                        hint="one loss per pair, shape (B,) (no mean): −log σ(β·Δ)")
                c.close(case + ": chosen_rewards", chosen, exp_chosen, mistakes=_reward_mistakes(pc, rc, beta))
                c.close(case + ": rejected_rewards", rejected, exp_rejected, mistakes=_reward_mistakes(pr, rr, beta))
    g = gen(14)
    pc, pr = -10 - 20 * torch.rand(5, generator=g), -10 - 20 * torch.rand(5, generator=g)
    losses, chosen, rejected = _dpo_outputs(c, "policy = reference", fn, pc, pr, pc.clone(), pr.clone(), 0.1)
    c.close("the policy equals the reference (step 0): every loss is log 2", losses, torch.full((5,), math.log(2)),
            mistakes=_dpo_mistakes(pc, pr, pc, pr, 0.1))
    c.close("the policy equals the reference (step 0): every chosen reward is 0", chosen, torch.zeros(5),
            mistakes=_reward_mistakes(pc, pc, 0.1))
    c.close("the policy equals the reference (step 0): every rejected reward is 0", rejected, torch.zeros(5),
            mistakes=_reward_mistakes(pr, pr, 0.1))
    pc, pr, ref = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0])
    losses, chosen, rejected = _dpo_outputs(c, "worked example", fn, pc, pr, ref, ref.clone(), 0.1)
    c.close("worked example β=0.1: log π(y_w) = −10, log π(y_l) = −12, both −11 under π_ref: loss log(1 + e^−0.2)",
            losses, torch.tensor([math.log(1 + math.exp(-0.2))]), mistakes=_dpo_mistakes(pc, pr, ref, ref, 0.1))
    c.close("worked example: chosen reward 0.1·(−10 + 11) = 0.1", chosen, torch.tensor([0.1]),
            mistakes=_reward_mistakes(pc, ref, 0.1))
    c.close("worked example: rejected reward 0.1·(−12 + 11) = −0.1", rejected, torch.tensor([-0.1]),
            mistakes=_reward_mistakes(pr, ref, 0.1))
    g = gen(15)
    pc, pr = -30 * torch.rand(6, generator=g), -30 * torch.rand(6, generator=g)
    rc, rr = pc + torch.randn(6, generator=g), pr + torch.randn(6, generator=g)
    base = _dpo_outputs(c, "invariance", fn, pc, pr, rc, rr, 0.2)[0]
    shift = 7 * torch.randn(6, generator=g)
    c.close("adding the same number to log π(y_w) and log π_ref(y_w) changes nothing (only log-ratios count)",
            _dpo_outputs(c, "invariance", fn, pc + shift, pr, rc + shift, rr, 0.2)[0], base,
            hint="subtract the reference from the policy for each response")
    c.close("adding the same number to both responses' policy logps changes nothing (only the margin counts)",
            _dpo_outputs(c, "invariance", fn, pc + shift, pr + shift, rc, rr, 0.2)[0], base)
    pc = torch.tensor([-30.0, -12.0], requires_grad=True)
    pr = torch.tensor([-10.0, -12.0], requires_grad=True)
    rc, rr = torch.tensor([-10.0, -12.0]), torch.tensor([-30.0, -12.0])   # row 0: Δ = −20 − 20 = −40
    losses, chosen, rejected = _dpo_outputs(c, "gradient", fn, pc, pr, rc, rr, 0.5)
    c.close("a pair wrong by β·Δ = −20 has loss 20 (finite: use F.logsigmoid)", losses,
            torch.tensor([20.0, math.log(2)]), rtol=1e-4, mistakes=_dpo_mistakes(pc.detach(), pr.detach(), rc, rr, 0.5))
    c.true("the rewards are detached (they are for logging)", not chosen.requires_grad and not rejected.requires_grad,
           f"chosen_rewards.requires_grad={chosen.requires_grad}, rejected_rewards.requires_grad="
           f"{rejected.requires_grad}", hint="return beta * logratio.detach(): no gradient may flow through them")
    c.call("gradient (the loss must be differentiable)", lambda: losses.sum().backward())
    c.close("d loss / d log π(y_w) = −β·σ(−β·Δ): ≈ −0.5 for the wrong pair, −0.25 at Δ = 0", pc.grad,
            torch.tensor([-0.5 * torch.sigmoid(torch.tensor(20.0)).item(), -0.25]), atol=1e-4,
            hint="the gradient raises log π(y_w) and lowers log π(y_l), hardest where the margin is most wrong")
    c.close("d loss / d log π(y_l) = +β·σ(−β·Δ)", pr.grad,
            torch.tensor([0.5 * torch.sigmoid(torch.tensor(20.0)).item(), 0.25]), atol=1e-4)
    c.done()
