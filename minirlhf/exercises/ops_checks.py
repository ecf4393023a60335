"""Checks for the tensor ops every loss is built on: masked_mean, masked_whiten, shifted_logprobs."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops import logprobs_from_logits
from ..ops import masked_mean as ref_masked_mean
from ..ops import masked_whiten as ref_masked_whiten
from ..ops import shifted_logprobs as ref_shifted_logprobs
from .harness import MASKS, PADS, SEEDS, SHAPES, Checker, gen, right_mask, with_garbage

# ------------------------------------------------------------------------------------------ masked mean

def _mean_mistakes(x, mask, dim=None):
    m = mask.float()
    return lambda: {
        "you averaged over every entry, padding included: sum and count only where mask is 1":
            x.mean() if dim is None else x.mean(dim),
        "you divided by the number of ALL entries; divide by the number of real ones, mask.sum()":
            (x * m).mean() if dim is None else (x * m).mean(dim),
    }


def check_masked_mean(fn):
    """fn(x, mask, dim=None) -> Σ x·m / Σ m over all entries (dim=None) or along `dim`; 0 for an all-pad row."""
    c = Checker("masked_mean")
    for seed in SEEDS:
        for B, T in SHAPES:
            g = gen(seed)
            x = torch.randn(B, T, generator=g)
            for kind, make in MASKS:
                mask = make(B, T, g)
                xg = with_garbage(x, mask, g)
                case = f"random seed={seed} B={B} T={T} {kind} padding"
                hint = "the padded entries of x hold large garbage: they must not enter the sum"
                c.close(case + ", dim=None", c.call(case, fn, xg, mask), ref_masked_mean(xg, mask), hint=hint,
                        mistakes=_mean_mistakes(xg, mask))
                c.close(case + ", dim=1", c.call(case, fn, xg, mask, dim=1), ref_masked_mean(xg, mask, dim=1),
                        hint="dim=1 gives one mean per row, shape (B,)", mistakes=_mean_mistakes(xg, mask, 1))
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, -50.0, -50.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    c.close("hand-built: [1, 2, 3, pad] and [4, pad, pad, pad]", c.call("hand-built", fn, x, mask), 10.0 / 4,
            mistakes=_mean_mistakes(x, mask))
    c.close("hand-built, dim=1", c.call("hand-built", fn, x, mask, dim=1), torch.tensor([2.0, 4.0]))
    c.close("a bool mask works like a float one", c.call("bool mask", fn, x, mask.bool()), 10.0 / 4,
            hint="convert the mask to x's dtype first (mask.to(x.dtype))")
    g = gen(7)
    x = torch.randn(4, 6, generator=g)
    c.close("an all-ones mask gives x.mean()", c.call("all ones", fn, x, torch.ones(4, 6)), x.mean())
    mask = right_mask(4, 6, g)
    base = c.call("padding invariance", fn, x, mask)
    for side, pad in PADS:
        more = c.call("padding invariance", fn, pad(x, 3, 123.0), pad(mask, 3, 0.0))
        c.close(f"adding {side} padding (holding 123.0) changes nothing", more, base)
    mask[1] = 0.0
    c.close("an all-padding row gives 0, not NaN (dim=1)", c.call("all-padding row", fn, x, mask, dim=1),
            ref_masked_mean(x, mask, dim=1), hint="divide by count.clamp(min=1): 0/0 is NaN")
    c.done()


# ------------------------------------------------------------------------------------------ masked whiten

def _whiten_mistakes(x, mask, eps=1e-8):
    m = mask.float()
    n = m.sum()
    whole = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n
    return lambda: {
        "the mean and variance include the padding: take both over the real entries only (masked_mean)":
            whole * m,
        "you used the unbiased variance (÷ n−1); whitening uses the biased one (÷ n), as lm-human-preferences does":
            (x - mean) / torch.sqrt(var * n / (n - 1).clamp(min=1) + eps) * m,
        "your output is not 0 on the padding: multiply the result by the mask": (x - mean) / torch.sqrt(var + eps),
        "you did not subtract the mean (that is shift_mean=False, a different function)": x / torch.sqrt(var + eps) * m,
    }


def check_masked_whiten(fn):
    """fn(x, mask) -> (x − μ) / sqrt(σ² + 1e-8) with μ, σ² (biased, ÷ n) over real entries; 0 on padding."""
    c = Checker("masked_whiten")
    for seed in SEEDS:
        for B, T in SHAPES:
            for kind, make in MASKS:
                g = gen(seed)
                mask = make(B, T, g)
                xg = with_garbage(3 + 2 * torch.randn(B, T, generator=g), mask, g, scale=30.0)
                case = f"random seed={seed} B={B} T={T} {kind} padding"
                c.close(case, c.call(case, fn, xg, mask), ref_masked_whiten(xg, mask), atol=1e-4,
                        hint="μ and σ² over the real entries only, (x − μ) / sqrt(σ² + 1e-8), then × mask",
                        mistakes=_whiten_mistakes(xg, mask))
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    s = math.sqrt(1.5)  # μ = 2, σ² = 2/3: (x − μ)/σ = ±sqrt(3/2)
    c.close("hand-built: [1, 2, 3, pad] gives [−1.2247, 0, 1.2247, 0]", c.call("hand-built", fn, x, mask),
            torch.tensor([[-s, 0.0, s, 0.0]]), atol=1e-4, mistakes=_whiten_mistakes(x, mask))
    g = gen(8)
    mask = right_mask(4, 7, g)
    x = with_garbage(torch.randn(4, 7, generator=g), mask, g)
    out = torch.as_tensor(c.call("statistics", fn, x, mask)).float()
    c.close("the output's real entries have mean 0", ref_masked_mean(out, mask), 0.0, atol=1e-5)
    c.close("the output's real entries have (biased) variance 1", ref_masked_mean(out ** 2, mask), 1.0, atol=1e-4,
            hint="divide by sqrt of the variance over n real entries (not n − 1, not over the padding)",
            mistakes=lambda: {"you used the unbiased variance (÷ n−1) instead of the biased one (÷ n)":
                              ref_masked_mean(ref_masked_whiten(x, mask) ** 2, mask) * (mask.sum() - 1) / mask.sum()})
    c.close("3·x + 5 gives the same output (whitening undoes scale and shift)",
            c.call("affine invariance", fn, 3 * x + 5, mask), out, atol=1e-4)
    for side, pad in PADS:
        more = c.call("padding invariance", fn, pad(x, 3, 77.0), pad(mask, 3, 0.0))
        kept = slice(0, 7) if side == "right" else slice(3, 10)
        c.close(f"adding {side} padding (holding 77.0) changes nothing", torch.as_tensor(more)[:, kept], out, atol=1e-4)
    const = torch.full((2, 3), 4.0)
    c.close("a constant input gives 0, not NaN", c.call("constant", fn, const, torch.ones(2, 3)), torch.zeros(2, 3),
            hint="add eps = 1e-8 to the variance before the square root: σ² is 0 here")
    c.done()


# ------------------------------------------------------------------------------------------ shifted logprobs

def _shift_mistakes(logits, ids):
    return lambda: {
        "the logits at position i scored token i: logits[:, i−1] predict token i, so drop the LAST logits "
        "and the FIRST token (logits[:, :-1] with input_ids[:, 1:])": logprobs_from_logits(logits[:, 1:], ids[:, 1:]),
        "you shifted the logits but not the tokens: score input_ids[:, 1:] with logits[:, :-1]":
            logprobs_from_logits(logits[:, :-1], ids[:, :-1]),
        "you returned probabilities, not log-probabilities": ref_shifted_logprobs(logits, ids).exp(),
        "you took the raw logit, which is not a log-probability: subtract the logsumexp over the vocabulary "
        "(log_softmax)":
            logits[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1),
        "you normalised over the wrong dimension: log_softmax over the vocabulary, dim=-1":
            torch.log_softmax(logits[:, :-1], dim=1).gather(-1, ids[:, 1:, None]).squeeze(-1),
    }


def check_shifted_logprobs(fn):
    """fn(logits (B, T, V), input_ids (B, T)) -> (B, T−1): log softmax(logits[:, i−1])[input_ids[:, i]]."""
    c = Checker("shifted_logprobs")
    for seed in SEEDS:
        for B, T, V in ((2, 5, 7), (3, 8, 50), (1, 2, 3)):
            g = gen(seed)
            logits = 3 * torch.randn(B, T, V, generator=g)
            ids = torch.randint(0, V, (B, T), generator=g)
            case = f"random seed={seed} B={B} T={T} V={V}"
            c.close(case, c.call(case, fn, logits, ids), ref_shifted_logprobs(logits, ids),
                    hint="the output is (B, T−1): the first token has no logits before it, the last logits "
                         "predict a token that is not in the sequence", mistakes=_shift_mistakes(logits, ids))
    B, T, V = 2, 6, 11
    c.close("uniform logits give log(1/V) everywhere", c.call("uniform", fn, torch.zeros(B, T, V),
            torch.randint(0, V, (B, T), generator=gen(9))), torch.full((B, T - 1), -math.log(V)))
    ids = torch.randint(0, V, (B, T), generator=gen(10))
    logits = torch.zeros(B, T, V)
    logits[:, :-1] = 20.0 * F.one_hot(ids[:, 1:], V)                   # position i−1 bets on token i
    sure = 20.0 - math.log(math.exp(20.0) + V - 1)
    c.close("hand-built: the logits at i−1 put 20 on token i, so every logprob is 20 − log(e²⁰ + V − 1) ≈ 0",
            c.call("hand-built", fn, logits, ids), torch.full((B, T - 1), sure), mistakes=_shift_mistakes(logits, ids))
    base = c.call("what is not scored", fn, logits, ids)
    other = logits.clone()
    other[:, -1] = 50 * torch.randn(B, V, generator=gen(11))
    first_changed = ids.clone()
    first_changed[:, 0] = (ids[:, 0] + 1) % V
    c.close("the last position's logits change nothing (they predict a token beyond the sequence)",
            c.call("what is not scored", fn, other, first_changed), base,
            hint="token i is scored by the logits at i − 1: the last logits and the first token are never used")
    logits = torch.tensor([[[0.0, -200.0, 0.0], [0.0, 0.0, 0.0]]])
    got = c.call("stability", fn, logits, torch.tensor([[0, 1]]))
    c.close("a token 200 below the others has logprob −200 − log 2 (finite)", got,
            torch.tensor([[-200.0 - math.log(2.0)]]), atol=1e-3,
            hint="log(softmax(x)) underflows: softmax gives exactly 0 there and log(0) = −inf. Use "
                 "torch.log_softmax, or logit − torch.logsumexp(logits, −1)")
    c.done()
