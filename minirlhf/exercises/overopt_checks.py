"""Check for the unbiased best-of-n estimator from a fixed pool of samples (Gao et al. 2022), the measuring stick
of reward over-optimisation: how good is the best of n by the proxy, according to the gold reward?"""
from __future__ import annotations

import math

import torch

from ..scaling_laws import best_of_n_expectation as ref_best_of_n_expectation
from .harness import SEEDS, Checker, gen, show


def _log_comb(a: torch.Tensor, b: int) -> torch.Tensor:
    """log C(a, b) elementwise in float64, −inf where a < b."""
    ok = a >= b
    a = torch.where(ok, a, torch.full_like(a, float(b)))
    return torch.where(ok, torch.lgamma(a + 1) - math.lgamma(b + 1) - torch.lgamma(a - b + 1),
                       torch.full_like(a, float("-inf")))


def _weighted(proxy, value, weights: torch.Tensor, descending: bool = False) -> torch.Tensor:
    order = torch.sort(proxy.double(), descending=descending, stable=True).indices
    return (weights * value.double()[order]).sum()


def _best_of_n_mistakes(proxy, value, n):
    M = len(proxy)
    i = torch.arange(1, M + 1, dtype=torch.float64)
    log_total = _log_comb(torch.tensor([float(M)], dtype=torch.float64), n)
    right = (_log_comb(i - 1, n - 1) - log_total).exp()
    shifted = (_log_comb(i, n - 1) - log_total).exp()
    with_replacement = (i / M) ** n - ((i - 1) / M) ** n
    shifted_hint = ("your weights are off by one: the i-th smallest (1-based) is the best of the n when the other "
                    "n − 1 all come from the i − 1 BELOW it, C(i − 1, n − 1) / C(M, n), not C(i, n − 1)")
    return lambda: {
        "you used the weights of sampling WITH replacement, (i/M)^n − ((i−1)/M)^n: the n are drawn WITHOUT "
        "replacement from the M (distinct samples), so the weight is C(i − 1, n − 1) / C(M, n)":
            _weighted(proxy, value, with_replacement),
        "you sorted in descending order: with C(i − 1, n − 1) the LARGEST weight belongs to the highest proxy, "
        "so sort the proxy ascending (you computed the value at the WORST of n)":
            _weighted(proxy, value, right, descending=True),
        shifted_hint: _weighted(proxy, value, shifted),
        shifted_hint + " (normalising those weights does not make them right)":
            _weighted(proxy, value, shifted / shifted.sum()),
        "you forgot to divide by C(M, n), the number of n-subsets: the weights must sum to 1":
            _weighted(proxy, value, (_log_comb(i - 1, n - 1)).exp()),
        "you sorted by the VALUE: the best of n is chosen by the PROXY; the value is only read off the chosen one":
            _weighted(value, value, right),
        "you averaged the n samples of highest proxy: the estimate is the mean, over every n-subset of the M, of "
        "the value at that subset's best": value.double()[proxy.argsort()][-n:].mean(),
    }


def check_best_of_n_expectation(fn):
    """fn(proxy (M,), value (M,), n) -> a number: the mean, over all C(M, n) subsets of n of the M samples, of
    `value` at the subset's highest proxy = Σ_i C(i − 1, n − 1) / C(M, n) · value_(i), the samples sorted by
    proxy ascending (no ties here)."""
    c = Checker("best_of_n_expectation")

    def run(case, proxy, value, n, expected, **kwargs):
        c.close(case, c.call(case, fn, proxy, value, n), expected, mistakes=_best_of_n_mistakes(proxy, value, n),
                **kwargs)

    for seed in SEEDS:
        for M in (6, 13, 40):
            g = gen(seed)
            proxy, value = torch.randn(M, generator=g), torch.randn(M, generator=g)
            for n in sorted({2, 3, M // 2, M - 1, M, 1}):
                run(f"random seed={seed} M={M} n={n}", proxy, value, n, ref_best_of_n_expectation(proxy, value, n),
                    hint="sort by proxy ascending; the i-th (1-based) is the best of the n with probability "
                         "C(i − 1, n − 1) / C(M, n)")
    proxy, value = torch.tensor([0.1, 0.9, 0.5]), torch.tensor([1.0, 2.0, 3.0])
    run("worked example: proxy [0.1, 0.9, 0.5], value [1, 2, 3], n = 2: the pairs give 2, 3, 2, so 7/3",
        proxy, value, 2, 7 / 3)
    g = gen(7)
    proxy, value = torch.randn(9, generator=g), torch.randn(9, generator=g)
    run("n = 1 is the mean of the values", proxy, value, 1, value.mean())
    run("n = M is the value at the highest proxy", proxy, value, 9, value[proxy.argmax()])
    base = c.call("invariance", fn, proxy, value, 4)
    perm = torch.randperm(9, generator=g)
    c.close("reordering the M samples (proxy and value together) changes nothing",
            c.call("invariance", fn, proxy[perm], value[perm], 4), base,
            hint="sort the VALUES by the proxy (value[proxy.argsort()]), not the proxy alone")
    c.close("only the order of the proxy matters: exp(3 · proxy) + 5 gives the same answer",
            c.call("invariance", fn, torch.exp(3 * proxy) + 5, value, 4), base,
            hint="the weights depend on each sample's RANK by proxy, never on the proxy's values")
    for M, n in ((20, 5), (4096, 1024)):
        ranks = torch.randperm(M, generator=g).float() + 1
        case = f"value = proxy = rank (shuffled 1..{M}), n = {n}: the max of n distinct ranks has mean n(M + 1)/(n + 1)"
        got = c.call(case, fn, ranks, ranks, n)
        big = ("at M = 4096, n = 1024 C(M, n) ≈ 10^998 overflows: compute each weight as exp(log C(i − 1, n − 1) − "
               "log C(M, n)) with math.lgamma or torch.lgamma, in float64 (lgamma(4097) ≈ 3·10^4, which float32 "
               "holds only to ±0.002)")
        c.true(case + ": the result is finite", bool(torch.isfinite(torch.as_tensor(got, dtype=torch.float64)).all()),
               f"got {show(got)}", hint=big)
        c.close(case, got, n * (M + 1) / (n + 1), mistakes=_best_of_n_mistakes(ranks, ranks, n),
                hint=big if M > 1000 else "")
    c.done()
