"""Checks for the path from a rollout's scores to advantages: kl_penalty, shape_rewards, compute_gae."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..advantages import compute_gae as ref_compute_gae
from ..advantages import kl_penalty as ref_kl_penalty
from ..advantages import shape_rewards as ref_shape_rewards
from ..ops import last_true_index
from .harness import SEEDS, SHAPES, Checker, first, gen, pad_right, right_mask, show, with_garbage

# ------------------------------------------------------------------------------------------ KL estimators

def _kl_mistakes(lp, ref, est):
    log_r = ref - lp                                   # right: log r = log π_ref − log π
    k = {"k1": -log_r, "k2": 0.5 * log_r ** 2, "k3": torch.expm1(log_r) - log_r}[est]
    wrong = {"k1": {"k1 has the sign flipped: k1 = −log r = log π − log π_ref (policy minus reference)": log_r},
             "k2": {"k2 has no ½: k2 = ½ (log r)²": 2 * k},
             "k3": {"k3 uses r the wrong way round: r = π_ref / π, so log r = log π_ref − log π":
                    torch.expm1(-log_r) + log_r,
                    "you added the log term in k3: k3 = (r − 1) − log r": torch.expm1(log_r) + log_r}}[est]
    return lambda: wrong


def check_kl_penalty(fn):
    """fn(logprobs, ref_logprobs, estimator) with estimator "k1", "k2" or "k3" -> per-token estimates of
    KL(π ‖ π_ref) from tokens sampled from π, same shape as logprobs."""
    c = Checker("kl_penalty")
    for est in ("k1", "k2", "k3"):
        for seed in SEEDS:
            for B, T in SHAPES:
                g = gen(seed)
                lp = -3 * torch.rand(B, T, generator=g)
                ref = lp + 0.7 * torch.randn(B, T, generator=g)
                c.close(f"{est}: random seed={seed} B={B} T={T}", c.call(est, fn, lp, ref, est),
                        ref_kl_penalty(lp, ref, est), mistakes=_kl_mistakes(lp, ref, est),
                        hint="log r = log π_ref − log π (reference minus policy); k1 = −log r")
        lp = -3 * torch.rand(2, 4, generator=gen(5))
        c.close(f"{est}: π = π_ref gives 0", c.call(est, fn, lp, lp.clone(), est), torch.zeros(2, 4))
    g = gen(6)
    lp = -3 * torch.rand(50, generator=g)
    ref = lp + torch.randn(50, generator=g)
    for est in ("k2", "k3"):
        got = torch.as_tensor(c.call(est, fn, lp, ref, est))
        c.true(f"{est} is never negative", bool((got >= -1e-6).all()), f"got {show(got)}")
    # Monte Carlo: the mean of an unbiased estimator over tokens sampled from π is the exact KL.
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    q = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1])
    exact = (p * (p / q).log()).sum()
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=gen(8))
    lp, ref = p.log()[tokens], q.log()[tokens]
    for est in ("k1", "k3"):
        mean = torch.as_tensor(c.call(est, fn, lp, ref, est)).float().mean()
        c.close(f"{est} is unbiased: its mean over 200k samples of π is KL(π ‖ π_ref) = {exact:.4f}", mean,
                exact, atol=5e-3, rtol=0,
                hint="the sign or the direction is wrong (KL(π ‖ π_ref) = E_π[log π − log π_ref])")
    c.done()


# ------------------------------------------------------------------------------------------ reward shaping

def _shaping(scores, lp, ref, mask, beta, where="last_real", sign=-1.0):
    """Rewards with the score at `where` and the penalty's sign as given, for the mistakes' values."""
    kl = (lp - ref) * mask
    col = {"last_real": last_true_index(mask), "last_column": torch.full_like(scores, mask.shape[1] - 1).long(),
           "first": torch.zeros_like(scores).long()}[where]
    return sign * beta * kl + F.one_hot(col, mask.shape[1]) * scores[:, None]


def _shaping_mistakes(scores, lp, ref, mask, beta):
    return lambda: {
        "the score went to the last COLUMN: a short response's last column is a pad (trl #1893); put it on the last "
        "REAL token (for right padding, mask.sum(1) − 1)": _shaping(scores, lp, ref, mask, beta, "last_column"),
        "the score went to the first token: it belongs on the last real one, where the response ends":
            _shaping(scores, lp, ref, mask, beta, "first"),
        "the KL term has the wrong sign: it is a penalty, r_t = −β·(log π − log π_ref)":
            _shaping(scores, lp, ref, mask, beta, sign=+1.0),
        "the score is added on every real token: it is added once, on the last real token":
            -beta * (lp - ref) * mask + scores[:, None] * mask,
    }


def check_shape_rewards(fn):
    """fn(scores (B,), logprobs, ref_logprobs, mask, kl_coef) -> (rewards, kl) (or rewards), (B, T):
    r_t = −β·k1_t on every real token, + score on the LAST REAL token (the EOS, or the final token when
    there is none); zero on padding. Responses are right-padded; the k1 estimator is used."""
    c = Checker("shape_rewards")
    for seed in SEEDS:
        for B, T in SHAPES:
            for beta in (0.1, 0.0):
                g = gen(seed)
                mask = right_mask(B, T, g)
                scores = 2 * torch.randn(B, generator=g)
                lp = -3 * torch.rand(B, T, generator=g) * mask
                ref = (lp + 0.5 * torch.randn(B, T, generator=g)) * mask
                expected, expected_kl = ref_shape_rewards(scores, lp, ref, mask, beta)
                case = f"random seed={seed} B={B} T={T} β={beta}"
                out = c.call(case, fn, scores, lp, ref, mask, beta)
                c.close(case, first(out), expected, mistakes=_shaping_mistakes(scores, lp, ref, mask, beta),
                        hint="the score goes on the last REAL token of each row, never on a pad")
                if isinstance(out, (tuple, list)):
                    c.close(case + ": the kl output", out[1] * mask, expected_kl)
                out = first(c.call(case, fn, scores, with_garbage(lp, mask, g), with_garbage(ref, mask, g), mask, beta))
                c.close(case + ", with garbage under the padding", out, expected,
                        hint="rewards must be 0 on padding whatever the logprobs hold there (multiply by the mask)")
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    lp = -torch.rand(3, 4, generator=gen(12)) * mask
    scores = torch.tensor([1.0, 2.0, 3.0])
    got = first(c.call("hand-built", fn, scores, lp, lp.clone(), mask, 0.1))
    c.close("hand-built: π = π_ref, lengths 2, 4 (no EOS: the final token), 1 — the score lands on the last "
            "real token", got, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]]),
            mistakes=_shaping_mistakes(scores, lp, lp, mask, 0.1),
            hint="not on the last column: a short response's last column is a pad (trl #1893)")
    ref = lp - 0.5 * mask  # k1 = log π − log π_ref = +0.5 on every real token
    got = first(c.call("hand-built", fn, torch.zeros(3), lp, ref, mask, 0.2))
    c.close("hand-built: score 0, log π − log π_ref = 0.5 everywhere, β = 0.2 gives −0.1 on real tokens", got,
            -0.1 * mask, hint="the penalty is −β·(log π − log π_ref)")
    g = gen(13)
    mask = right_mask(4, 5, g)
    scores, lp = torch.randn(4, generator=g), -torch.rand(4, 5, generator=g) * mask
    ref = (lp + 0.3 * torch.randn(4, 5, generator=g)) * mask
    base = first(c.call("padding invariance", fn, scores, lp, ref, mask, 0.1))
    more = first(c.call("padding invariance", fn, scores, pad_right(lp, 3, -4.0), pad_right(ref, 3, -1.0),
                        pad_right(mask, 3, 0.0), 0.1))
    c.close("adding right padding changes nothing (and the extra columns stay 0)", more, pad_right(base, 3, 0.0))
    c.done()


# ------------------------------------------------------------------------------------------ GAE

def _perfect_values(rewards, mask, gamma):
    """V_t = Σ_{s≥t} γ^(s−t) r_s over real tokens of right-padded rows: the true return from t."""
    V = torch.zeros_like(rewards)
    nxt = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        nxt = (rewards[:, t] + gamma * nxt) * mask[:, t]
        V[:, t] = nxt
    return V


def _gae_mistakes(r, v, mask, gamma, lam):
    """Each classic mistake is GAE with other arguments: A_t = δ_t + λ A_{t+1} is γ' = γ, λ' = λ/γ; a δ
    without γ on V_{t+1} is γ' = 1, λ' = γλ; a loop that ignores the mask runs over the padding."""
    def mistakes():
        wrong = {"your V_{t+1} and A_{t+1} beyond the last real token come from the padding: they count as 0 "
                 "(multiply next_value and next_advantage by the mask)": ref_compute_gae(r, v, torch.ones_like(mask),
                                                                                     gamma, lam)[0] * mask,
                 "your next value is not discounted by γ: δ_t = r_t + γ·V_{t+1} − V_t":
                     ref_compute_gae(r, v, mask, 1.0, gamma * lam)[0]}
        if gamma > 0:
            wrong["your trace has λ without γ: A_t = δ_t + γλ·A_{t+1}"] = \
                ref_compute_gae(r, v, mask, gamma, lam / gamma)[0]
        return wrong
    return mistakes


def check_compute_gae(fn):
    """fn(rewards, values, mask, gamma, lam) -> (advantages, returns), all (B, T), right-padded responses:
    δ_t = r_t + γ V_{t+1} − V_t,  A_t = δ_t + γλ A_{t+1}, nothing beyond the last real token, returns = A + V,
    both zero on padding."""
    c = Checker("compute_gae")
    settings = ((1.0, 0.95), (0.99, 0.9), (0.9, 0.0), (1.0, 1.0))
    for seed in SEEDS:
        for B, T in SHAPES:
            for gamma, lam in settings:
                g = gen(seed)
                mask = right_mask(B, T, g)
                r, v = torch.randn(B, T, generator=g) * mask, torch.randn(B, T, generator=g) * mask
                exp_a, exp_ret = ref_compute_gae(r, v, mask, gamma, lam)
                case = f"random seed={seed} B={B} T={T} γ={gamma} λ={lam}"
                out = c.call(case, fn, r, v, mask, gamma, lam)
                if not isinstance(out, (tuple, list)) or len(out) != 2:
                    c.fail(case, "return a pair (advantages, returns)")
                c.close(case + ": advantages (zeros under padding)", out[0] * mask, exp_a,
                        mistakes=_gae_mistakes(r, v, mask, gamma, lam))
                c.close(case + ": returns (zeros under padding)", out[1] * mask, exp_ret,
                        hint="returns = advantages + values",
                        mistakes=lambda: {"your returns are the advantages alone: returns = advantages + values":
                                          exp_a})
                rg, vg = with_garbage(r, mask, g), with_garbage(v, mask, g)
                out = c.call(case, fn, rg, vg, mask, gamma, lam)
                c.close(case + ": advantages, with garbage under the padding", out[0] * mask, exp_a,
                        hint="padding leaked into real tokens: V and A beyond the last real token count as 0 "
                             "(multiply next_value and next_advantage by the mask)",
                        mistakes=_gae_mistakes(rg, vg, mask, gamma, lam))
                c.close(case + ": returns, with garbage under the padding", out[1] * mask, exp_ret)
                c.close(case + ": advantages are 0 on padding", out[0] * (1 - mask), torch.zeros(B, T))
                c.close(case + ": returns are 0 on padding", out[1] * (1 - mask), torch.zeros(B, T))
    g = gen(9)
    mask = right_mask(4, 7, g)
    r = torch.randn(4, 7, generator=g) * mask
    for gamma, lam in settings:
        V = _perfect_values(r, mask, gamma)
        adv, ret = c.call("perfect V", fn, r, V, mask, gamma, lam)
        c.close(f"a perfect value function gives zero advantage (γ={gamma}, λ={lam})", adv, torch.zeros(4, 7),
                hint="with V_t = r_t + γ V_{t+1} every δ_t is 0", mistakes=_gae_mistakes(r, V, mask, gamma, lam))
        c.close(f"a perfect value function: returns = V (γ={gamma}, λ={lam})", ret, V)
    v = torch.randn(4, 7, generator=g) * mask
    v_next = torch.cat([v[:, 1:], torch.zeros(4, 1)], 1) * torch.cat([mask[:, 1:], torch.zeros(4, 1)], 1)
    c.close("λ = 0 gives the one-step TD error r_t + γ V_{t+1} − V_t",
            first(c.call("λ=0", fn, r, v, mask, 0.9, 0.0)), (r + 0.9 * v_next - v) * mask)
    mc = _perfect_values(r, mask, 1.0)
    c.close("γ = λ = 1 gives the Monte Carlo advantage Σ_{s≥t} r_s − V_t",
            first(c.call("γ=λ=1", fn, r, v, mask, 1.0, 1.0)), (mc - v) * mask)
    adv = first(c.call("hand-built", fn, torch.tensor([[0.0, 0.0, 1.0, 0.0]]), torch.zeros(1, 4),
                       torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 1.0, 0.5))
    c.close("hand-built: r = [0, 0, 1, pad], V = 0, γ = 1, λ = 0.5 gives A = [0.25, 0.5, 1, 0]", adv,
            torch.tensor([[0.25, 0.5, 1.0, 0.0]]))
    base = first(c.call("padding invariance", fn, r, v, mask, 0.99, 0.95))
    more = first(c.call("padding invariance", fn, pad_right(r, 3, 50.0), pad_right(v, 3, -50.0),
                        pad_right(mask, 3, 0.0), 0.99, 0.95))
    c.close("adding right padding (holding ±50) changes nothing", more[:, :7], base)
    c.done()
