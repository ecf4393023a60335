"""Self-grading checks for the classroom exercises (ARENA / minitorch style).

    check_compute_gae(compute_gae)     # the student's function goes in
    ✔ compute_gae: all 31 checks passed

Each `check_xxx(fn)` calls the student's `fn` next to minirlhf's own implementation on random inputs
(several seeds and shapes, padding masks with garbage stored under the padding) and on hand-built
cases whose answer is known without any reference: a perfect value function gives zero advantage, the
score lands on the last real token and not on a pad, a ratio of 1 makes the policy loss −mean(A), and
adding padding changes nothing. It prints "✔ <exercise>: all N checks passed", or raises
AssertionError naming the case that failed, with what was expected and what came back.

Pure torch, seeded, well under a second each. The signatures are those of the reference functions;
a function may return extra outputs after the first (e.g. `(loss, stats)`): only what is named in
each check is compared.
"""
from __future__ import annotations

import math

import torch

from ..losses import pairwise_loss as ref_pairwise_loss
from ..losses import ppo_policy_loss as ref_ppo_policy_loss
from ..losses import ranking_loss as ref_ranking_loss
from ..ops import masked_mean as ref_masked_mean
from ..ppo import compute_gae as ref_compute_gae
from ..ppo import kl_penalty as ref_kl_penalty
from ..ppo import shape_rewards as ref_shape_rewards

__all__ = ["check_masked_mean", "check_pairwise_loss", "check_ranking_loss", "check_kl_penalty",
           "check_compute_gae", "check_ppo_policy_loss", "check_shape_rewards"]

SEEDS = (0, 1, 2)
SHAPES = ((1, 1), (3, 5), (5, 9))  # (B, T): a single token, a small batch, a longer one


# ------------------------------------------------------------------------------------------ plumbing

def _show(t) -> str:
    """A tensor as a short string (at most 24 numbers), for failure messages."""
    if not torch.is_tensor(t):
        return repr(t)
    flat = t.detach().float().flatten()
    with torch.no_grad():
        body = ", ".join(f"{v:.4g}" for v in flat[:24].tolist()) + (", ..." if flat.numel() > 24 else "")
    return f"shape {tuple(t.shape)}: [{body}]"


class Checker:
    """Counts the checks of one exercise; the first failure raises AssertionError with the case name."""

    def __init__(self, exercise: str):
        self.exercise, self.n = exercise, 0

    def fail(self, case: str, why: str):
        raise AssertionError(f"{self.exercise} — case '{case}': {why}")

    def call(self, case: str, fn, *args, **kwargs):
        """fn(*args); an exception other than NotImplementedError becomes a failure of `case`."""
        try:
            return fn(*args, **kwargs)
        except NotImplementedError:
            raise
        except Exception as e:
            raise AssertionError(f"{self.exercise} — case '{case}': your function raised "
                                 f"{type(e).__name__}: {e}") from e

    def close(self, case: str, got, expected, atol: float = 1e-5, rtol: float = 1e-4, hint: str = ""):
        """got ≈ expected (same shape, finite where expected is finite)."""
        self.n += 1
        if not torch.is_tensor(got):
            if isinstance(got, (int, float)):
                got = torch.tensor(float(got))
            else:
                self.fail(case, f"expected a tensor, got {type(got).__name__}")
        expected = torch.as_tensor(expected, dtype=torch.float32)
        got = got.detach().float()
        if got.shape != expected.shape:
            self.fail(case, f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
                      + (f". {hint}" if hint else ""))
        if not torch.allclose(got, expected, atol=atol, rtol=rtol):
            diff = (got - expected).abs().nan_to_num(float("inf"))
            where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
            at = f" (largest difference at index {where})" if where else ""
            self.fail(case, f"values differ{at}\n  expected {_show(expected)}\n  got      {_show(got)}"
                      + (f"\n  hint: {hint}" if hint else ""))

    def true(self, case: str, condition: bool, why: str):
        self.n += 1
        if not condition:
            self.fail(case, why)

    def done(self):
        print(f"✔ {self.exercise}: all {self.n} checks passed")


def _first(out):
    """The first output of a function that may return (main, extras...)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _right_mask(B: int, T: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) float mask, 1 on a prefix of random length 1..T (row 0 always full: a response without EOS)."""
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    return (torch.arange(T)[None, :] < lengths[:, None]).float()


def _left_mask(B, T, g):
    return _right_mask(B, T, g).flip(1)


def _scattered_mask(B, T, g):
    """Random holes anywhere, at least one real entry per row."""
    m = (torch.rand(B, T, generator=g) < 0.6).float()
    m[torch.arange(B), torch.randint(0, T, (B,), generator=g)] = 1.0
    return m


def _with_garbage(x: torch.Tensor, mask: torch.Tensor, g: torch.Generator, scale: float = 10.0):
    """x with every padded entry replaced by large random numbers: what is under the padding must not matter."""
    junk = scale * torch.randn(x.shape, generator=g)
    return torch.where(mask.bool(), x, junk)


def _pad_right(x: torch.Tensor, n: int, value) -> torch.Tensor:
    return torch.cat([x, torch.full((x.shape[0], n), float(value))], 1)


def _pad_left(x: torch.Tensor, n: int, value) -> torch.Tensor:
    return torch.cat([torch.full((x.shape[0], n), float(value)), x], 1)


# ------------------------------------------------------------------------------------------ masked mean

def check_masked_mean(fn):
    """fn(x, mask, dim=None) -> Σ x·m / Σ m over all entries (dim=None) or along `dim`; 0 for an all-pad row."""
    c = Checker("masked_mean")
    for seed in SEEDS:
        for B, T in SHAPES:
            g = _gen(seed)
            x = torch.randn(B, T, generator=g)
            for kind, make in (("right", _right_mask), ("left", _left_mask), ("scattered", _scattered_mask)):
                mask = make(B, T, g)
                xg = _with_garbage(x, mask, g)
                case = f"random seed={seed} B={B} T={T} {kind} padding"
                c.close(case + ", dim=None", c.call(case, fn, xg, mask), ref_masked_mean(xg, mask),
                        hint="the padded entries of x hold large garbage: they must not enter the sum")
                c.close(case + ", dim=1", c.call(case, fn, xg, mask, dim=1), ref_masked_mean(xg, mask, dim=1),
                        hint="dim=1 gives one mean per row, shape (B,)")
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, -50.0, -50.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    c.close("hand-built: [1, 2, 3, pad] and [4, pad, pad, pad]", c.call("hand-built", fn, x, mask), 10.0 / 4)
    c.close("hand-built, dim=1", c.call("hand-built", fn, x, mask, dim=1), torch.tensor([2.0, 4.0]))
    c.close("a bool mask works like a float one", c.call("bool mask", fn, x, mask.bool()), 10.0 / 4)
    g = _gen(7)
    x = torch.randn(4, 6, generator=g)
    c.close("an all-ones mask gives x.mean()", c.call("all ones", fn, x, torch.ones(4, 6)), x.mean())
    mask = _right_mask(4, 6, g)
    base = c.call("padding invariance", fn, x, mask)
    for side, pad in (("right", _pad_right), ("left", _pad_left)):
        more = c.call("padding invariance", fn, pad(x, 3, 123.0), pad(mask, 3, 0.0))
        c.close(f"adding {side} padding (holding 123.0) changes nothing", more, base)
    mask[1] = 0.0
    c.close("an all-padding row gives 0, not NaN (dim=1)", c.call("all-padding row", fn, x, mask, dim=1),
            ref_masked_mean(x, mask, dim=1), hint="divide by count.clamp(min=1): 0/0 is NaN")
    c.done()


# ------------------------------------------------------------------------------------------ reward-model losses

def check_pairwise_loss(fn):
    """fn(r_chosen, r_rejected) -> mean over the batch of −log σ(r_chosen − r_rejected), a scalar."""
    c = Checker("pairwise_loss")
    for seed in SEEDS:
        for B in (1, 4, 16):
            g = _gen(seed)
            rc, rr = 3 * torch.randn(B, generator=g), 3 * torch.randn(B, generator=g)
            c.close(f"random seed={seed} B={B}", c.call("random", fn, rc, rr), ref_pairwise_loss(rc, rr))
    c.close("worked example: differences +1 and −1 give (0.3133 + 1.3133) / 2",
            c.call("worked example", fn, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])), 0.8133, atol=1e-4)
    c.close("equal rewards give log 2", c.call("equal", fn, torch.zeros(3), torch.zeros(3)), math.log(2))
    g = _gen(3)
    rc, rr = torch.randn(8, generator=g), torch.randn(8, generator=g)
    swapped = c.call("swap", fn, rc, rr) - c.call("swap", fn, rr, rc)
    c.close("loss(c, r) − loss(r, c) = −mean(c − r)", swapped, -(rc - rr).mean())
    got = c.call("stability", fn, torch.tensor([0.0]), torch.tensor([200.0]))
    c.true("a pair wrong by 200 gives loss 200 (finite)", bool(torch.isfinite(torch.as_tensor(got)).all()),
           f"got {_show(got)}: log(sigmoid(-200)) underflows to log(0) = -inf in float32; "
           f"use F.logsigmoid (= -softplus(-x)), which stays exact")
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


def check_ranking_loss(fn):
    """fn(rewards (B, K), ranks (B, K), a permutation of 0..K-1 per row, 0 = best) -> InstructGPT's loss:
    the mean over prompts and over all K-choose-2 pairs of −log σ(r_better − r_worse)."""
    c = Checker("ranking_loss")
    for seed in SEEDS:
        for B, K in ((1, 2), (3, 3), (5, 4), (2, 6)):
            g = _gen(seed)
            rewards, ranks = 2 * torch.randn(B, K, generator=g), _random_ranks(B, K, g)
            c.close(f"random seed={seed} B={B} K={K}", c.call("random", fn, rewards, ranks),
                    ref_ranking_loss(rewards, ranks))
    c.close("worked example: rewards [3, 1, 2], ranks [0, 2, 1] give 0.2512",
            c.call("worked example", fn, torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[0, 2, 1]])),
            0.2512, atol=1e-4)
    g = _gen(4)
    rewards, ranks = torch.randn(6, 2, generator=g), _random_ranks(6, 2, g)
    better = rewards.gather(1, ranks.argsort(1))  # column 0: the reward of rank 0
    c.close("K = 2 is the pairwise loss", c.call("K=2", fn, rewards, ranks),
            ref_pairwise_loss(better[:, 0], better[:, 1]))
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


# ------------------------------------------------------------------------------------------ KL estimators

def check_kl_penalty(fn):
    """fn(logprobs, ref_logprobs, estimator) with estimator "k1", "k2" or "k3" -> per-token estimates of
    KL(π ‖ π_ref) from tokens sampled from π, same shape as logprobs."""
    c = Checker("kl_penalty")
    for est in ("k1", "k2", "k3"):
        for seed in SEEDS:
            for B, T in SHAPES:
                g = _gen(seed)
                lp = -3 * torch.rand(B, T, generator=g)
                ref = lp + 0.7 * torch.randn(B, T, generator=g)
                c.close(f"{est}: random seed={seed} B={B} T={T}", c.call(est, fn, lp, ref, est),
                        ref_kl_penalty(lp, ref, est),
                        hint="log r = log π_ref − log π (reference minus policy); k1 = −log r")
        lp = -3 * torch.rand(2, 4, generator=_gen(5))
        c.close(f"{est}: π = π_ref gives 0", c.call(est, fn, lp, lp.clone(), est), torch.zeros(2, 4))
    g = _gen(6)
    lp = -3 * torch.rand(50, generator=g)
    ref = lp + torch.randn(50, generator=g)
    for est in ("k2", "k3"):
        got = torch.as_tensor(c.call(est, fn, lp, ref, est))
        c.true(f"{est} is never negative", bool((got >= -1e-6).all()), f"got {_show(got)}")
    # Monte Carlo: the mean of an unbiased estimator over tokens sampled from π is the exact KL.
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    q = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1])
    exact = (p * (p / q).log()).sum()
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=_gen(8))
    lp, ref = p.log()[tokens], q.log()[tokens]
    for est in ("k1", "k3"):
        mean = torch.as_tensor(c.call(est, fn, lp, ref, est)).float().mean()
        c.close(f"{est} is unbiased: its mean over 200k samples of π is KL(π ‖ π_ref) = {exact:.4f}", mean,
                exact, atol=5e-3, rtol=0,
                hint="the sign or the direction is wrong (KL(π ‖ π_ref) = E_π[log π − log π_ref])")
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


def check_compute_gae(fn):
    """fn(rewards, values, mask, gamma, lam) -> (advantages, returns), all (B, T), right-padded responses:
    δ_t = r_t + γ V_{t+1} − V_t,  A_t = δ_t + γλ A_{t+1}, nothing beyond the last real token, returns = A + V,
    both zero on padding."""
    c = Checker("compute_gae")
    settings = ((1.0, 0.95), (0.99, 0.9), (0.9, 0.0), (1.0, 1.0))
    for seed in SEEDS:
        for B, T in SHAPES:
            for gamma, lam in settings:
                g = _gen(seed)
                mask = _right_mask(B, T, g)
                r, v = torch.randn(B, T, generator=g) * mask, torch.randn(B, T, generator=g) * mask
                exp_a, exp_ret = ref_compute_gae(r, v, mask, gamma, lam)
                case = f"random seed={seed} B={B} T={T} γ={gamma} λ={lam}"
                out = c.call(case, fn, r, v, mask, gamma, lam)
                if not isinstance(out, (tuple, list)) or len(out) != 2:
                    c.fail(case, "return a pair (advantages, returns)")
                c.close(case + ": advantages (zeros under padding)", out[0] * mask, exp_a)
                c.close(case + ": returns (zeros under padding)", out[1] * mask, exp_ret,
                        hint="returns = advantages + values")
                rg, vg = _with_garbage(r, mask, g), _with_garbage(v, mask, g)
                out = c.call(case, fn, rg, vg, mask, gamma, lam)
                c.close(case + ": advantages, with garbage under the padding", out[0] * mask, exp_a,
                        hint="padding leaked into real tokens: V and A beyond the last real token count as 0 "
                             "(multiply next_value and next_advantage by the mask)")
                c.close(case + ": returns, with garbage under the padding", out[1] * mask, exp_ret)
                c.close(case + ": advantages are 0 on padding", out[0] * (1 - mask), torch.zeros(B, T))
                c.close(case + ": returns are 0 on padding", out[1] * (1 - mask), torch.zeros(B, T))
    g = _gen(9)
    mask = _right_mask(4, 7, g)
    r = torch.randn(4, 7, generator=g) * mask
    for gamma, lam in settings:
        V = _perfect_values(r, mask, gamma)
        adv, ret = c.call("perfect V", fn, r, V, mask, gamma, lam)
        c.close(f"a perfect value function gives zero advantage (γ={gamma}, λ={lam})", adv, torch.zeros(4, 7),
                hint="with V_t = r_t + γ V_{t+1} every δ_t is 0")
        c.close(f"a perfect value function: returns = V (γ={gamma}, λ={lam})", ret, V)
    v = torch.randn(4, 7, generator=g) * mask
    v_next = torch.cat([v[:, 1:], torch.zeros(4, 1)], 1) * torch.cat([mask[:, 1:], torch.zeros(4, 1)], 1)
    c.close("λ = 0 gives the one-step TD error r_t + γ V_{t+1} − V_t", _first(c.call("λ=0", fn, r, v, mask, 0.9, 0.0)),
            (r + 0.9 * v_next - v) * mask)
    mc = _perfect_values(r, mask, 1.0)
    c.close("γ = λ = 1 gives the Monte Carlo advantage Σ_{s≥t} r_s − V_t",
            _first(c.call("γ=λ=1", fn, r, v, mask, 1.0, 1.0)), (mc - v) * mask)
    adv = _first(c.call("hand-built", fn, torch.tensor([[0.0, 0.0, 1.0, 0.0]]), torch.zeros(1, 4),
                        torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 1.0, 0.5))
    c.close("hand-built: r = [0, 0, 1, pad], V = 0, γ = 1, λ = 0.5 gives A = [0.25, 0.5, 1, 0]", adv,
            torch.tensor([[0.25, 0.5, 1.0, 0.0]]))
    base = _first(c.call("padding invariance", fn, r, v, mask, 0.99, 0.95))
    more = _first(c.call("padding invariance", fn, _pad_right(r, 3, 50.0), _pad_right(v, 3, -50.0),
                         _pad_right(mask, 3, 0.0), 0.99, 0.95))
    c.close("adding right padding (holding ±50) changes nothing", more[:, :7], base)
    c.done()


# ------------------------------------------------------------------------------------------ PPO loss

def check_ppo_policy_loss(fn):
    """fn(logprobs, old_logprobs, advantages, mask, cliprange) -> loss (or (loss, stats)):
    masked_mean(max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε))) with ratio = exp(logprobs − old_logprobs)."""
    c = Checker("ppo_policy_loss")
    for seed in SEEDS:
        for B, T in SHAPES:
            for kind, make in (("right", _right_mask), ("left", _left_mask), ("scattered", _scattered_mask)):
                for eps in (0.2, 0.1):
                    g = _gen(seed)
                    mask = make(B, T, g)
                    old = -3 * torch.rand(B, T, generator=g)
                    lp = old + 0.3 * torch.randn(B, T, generator=g)
                    adv = torch.randn(B, T, generator=g)
                    lp, old, adv = (_with_garbage(x, mask, g, scale=3.0) for x in (lp, old, adv))
                    case = f"random seed={seed} B={B} T={T} {kind} padding ε={eps}"
                    c.close(case, _first(c.call(case, fn, lp, old, adv, mask, eps)),
                            ref_ppo_policy_loss(lp, old, adv, mask, eps)[0],
                            hint="the loss is the max of the two negated surrogates (the min of the surrogates), "
                                 "averaged over real tokens only")
    g = _gen(10)
    mask = _right_mask(4, 6, g)
    lp, adv = -torch.rand(4, 6, generator=g), torch.randn(4, 6, generator=g)
    c.close("ratio 1 (logprobs = old_logprobs) gives −masked_mean(A)",
            _first(c.call("ratio 1", fn, lp, lp.clone(), adv, mask, 0.2)), -ref_masked_mean(adv, mask))
    one = torch.ones(1, 1)
    for A, ratio, expected, why in ((1.0, 1.5, -1.2, "clipped: the step is already big"),
                                    (-1.0, 0.5, 0.8, "clipped, the other direction"),
                                    (1.0, 0.5, -0.5, "not clipped: undoing a bad step is allowed")):
        lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
        loss = _first(c.call("worked example", fn, lp, torch.zeros(1, 1), torch.tensor([[A]]), one, 0.2))
        c.close(f"worked example ε=0.2, A={A:+}, ratio {ratio}: loss {expected} ({why})", loss, expected)
        c.call("gradient (the loss must be differentiable)", lambda: loss.backward())
        grad = 0.0 if why.startswith("clipped") else -A * ratio
        c.close(f"worked example ε=0.2, A={A:+}, ratio {ratio}: d loss / d logprob = {grad}", lp.grad,
                torch.tensor([[grad]]), hint="a clipped token must get no gradient (clamp, not a constant)")
    g = _gen(11)
    mask = _right_mask(3, 5, g)
    old = -torch.rand(3, 5, generator=g)
    lp, adv = old + 0.5 * torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    base = _first(c.call("padding invariance", fn, lp, old, adv, mask, 0.2))
    for side, pad in (("right", _pad_right), ("left", _pad_left)):
        more = _first(c.call("padding invariance", fn, pad(lp, 2, 1.0), pad(old, 2, -2.0), pad(adv, 2, 7.0),
                             pad(mask, 2, 0.0), 0.2))
        c.close(f"adding {side} padding changes nothing", more, base)
    c.true("the loss is a scalar", torch.as_tensor(base).dim() == 0,
           f"expected a 0-dim tensor, got shape {tuple(torch.as_tensor(base).shape)}")
    c.done()


# ------------------------------------------------------------------------------------------ reward shaping

def check_shape_rewards(fn):
    """fn(scores (B,), logprobs, ref_logprobs, mask, kl_coef) -> (rewards, kl) (or rewards), (B, T):
    r_t = −β·k1_t on every real token, + score on the LAST REAL token (the EOS, or the final token when
    there is none); zero on padding. Responses are right-padded; the k1 estimator is used."""
    c = Checker("shape_rewards")
    for seed in SEEDS:
        for B, T in SHAPES:
            for beta in (0.1, 0.0):
                g = _gen(seed)
                mask = _right_mask(B, T, g)
                scores = 2 * torch.randn(B, generator=g)
                lp = -3 * torch.rand(B, T, generator=g)
                ref = lp + 0.5 * torch.randn(B, T, generator=g)
                expected, expected_kl = ref_shape_rewards(scores, lp * mask, ref * mask, mask, beta)
                case = f"random seed={seed} B={B} T={T} β={beta}"
                out = c.call(case, fn, scores, lp * mask, ref * mask, mask, beta)
                c.close(case, _first(out), expected,
                        hint="the score goes on the last REAL token of each row, never on a pad")
                if isinstance(out, (tuple, list)):
                    c.close(case + ": the kl output", out[1] * mask, expected_kl)
                out = _first(c.call(case, fn, scores, _with_garbage(lp, mask, g), _with_garbage(ref, mask, g),
                                    mask, beta))
                c.close(case + ", with garbage under the padding", out, expected,
                        hint="rewards must be 0 on padding whatever the logprobs hold there (multiply by the mask)")
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    lp = -torch.rand(3, 4, generator=_gen(12)) * mask
    scores = torch.tensor([1.0, 2.0, 3.0])
    got = _first(c.call("hand-built", fn, scores, lp, lp.clone(), mask, 0.1))
    c.close("hand-built: π = π_ref, lengths 2, 4 (no EOS: the final token), 1 — the score lands on the last "
            "real token", got, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]]),
            hint="not on the last column: a short response's last column is a pad (trl #1893)")
    ref = lp - 0.5 * mask  # k1 = log π − log π_ref = +0.5 on every real token
    got = _first(c.call("hand-built", fn, torch.zeros(3), lp, ref, mask, 0.2))
    c.close("hand-built: score 0, log π − log π_ref = 0.5 everywhere, β = 0.2 gives −0.1 on real tokens", got,
            -0.1 * mask, hint="the penalty is −β·(log π − log π_ref)")
    g = _gen(13)
    mask = _right_mask(4, 5, g)
    scores, lp = torch.randn(4, generator=g), -torch.rand(4, 5, generator=g) * mask
    ref = (lp + 0.3 * torch.randn(4, 5, generator=g)) * mask
    inputs = [t.clone() for t in (scores, lp, ref, mask)]
    base = _first(c.call("padding invariance", fn, scores, lp, ref, mask, 0.1))
    c.true("the inputs are not modified in place", all(torch.equal(a, b) for a, b in zip(inputs, (scores, lp, ref, mask))),
           "scores, logprobs, ref_logprobs or mask changed: build a new tensor instead of writing into them")
    more = _first(c.call("padding invariance", fn, scores, _pad_right(lp, 3, -4.0), _pad_right(ref, 3, -1.0),
                         _pad_right(mask, 3, 0.0), 0.1))
    c.close("adding right padding changes nothing (and the extra columns stay 0)", more,
            _pad_right(base, 3, 0.0))
    c.done()
