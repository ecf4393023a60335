"""The math of reward over-optimisation (minirlhf.scaling_laws), each against an independent computation: the
best-of-n KL against the exact KL of best-of-n over a fine uniform categorical; the best-of-n estimator against
brute force over every n-subset, Monte Carlo and the closed-form expected maximum rank; the Gao fits against
noiseless and noisy synthetic curves; the peaks against a grid search."""
import itertools
import math

import pytest
import torch

from minirlhf.scaling_laws import (best_of_n_expectation, best_of_n_kl_bound, best_of_n_weights, fit_gao, gao_bon,
                                   gao_peak, gao_rl)

GAO = {"bon": gao_bon, "rl": gao_rl}


# ------------------------------------------------------------------------------------------ best_of_n_kl

def test_best_of_n_kl_closed_form_values():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    assert best_of_n_kl_bound(64) == pytest.approx(math.log(64) - 63 / 64, abs=1e-15)
    for n in (0, -3):
        with pytest.raises(ValueError, match="n >= 1"):
            best_of_n_kl_bound(n)


def uniform_best_of_n_kl_bound(M: int, n: int) -> float:
    """Exact KL(best-of-n ‖ uniform) over M distinct items, n drawn WITH replacement: the i-th in proxy order
    is the best with probability (i/M)^n − ((i−1)/M)^n."""
    F = torch.arange(M + 1, dtype=torch.float64) / M
    q = F[1:] ** n - F[:-1] ** n
    q = q[q > 0]
    return float((q * (q * M).log()).sum())


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_best_of_n_kl_is_the_limit_of_the_exact_kl_over_a_finer_and_finer_uniform_base(n):
    errors = [best_of_n_kl_bound(n) - uniform_best_of_n_kl_bound(M, n) for M in (10, 100, 1000, 100_000)]
    assert all(e >= -1e-12 for e in errors), errors                            # an upper bound at every M
    assert all(a > b for a, b in zip(errors, errors[1:])), errors             # and the gap closes as M grows
    assert errors[-1] < 1e-3 * best_of_n_kl_bound(n), errors


# ------------------------------------------------------------------------------------------ best_of_n_expectation

def brute_force(proxy, value, n):
    """The mean over every n-subset of the value at its highest proxy (ties: the later sample is higher)."""
    picks = [value[max(s, key=lambda i: (proxy[i], i))] for s in itertools.combinations(range(len(proxy)), n)]
    return sum(picks) / len(picks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expectation_matches_brute_force_over_every_subset(seed):
    g = torch.Generator().manual_seed(seed)
    proxy, value = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    for n in range(1, 8):
        expected = brute_force(proxy.tolist(), value.tolist(), n)
        assert best_of_n_expectation(proxy, value, n) == pytest.approx(expected, abs=1e-12)
        assert best_of_n_expectation(proxy.tolist(), value.tolist(), n) == pytest.approx(expected, abs=1e-12)


def test_ties_are_broken_by_position_as_a_stable_sort_does():
    proxy, value = [1.0, 2.0, 1.0, 2.0, 0.0, 1.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    for n in range(1, 7):
        assert best_of_n_expectation(proxy, value, n) == pytest.approx(brute_force(proxy, value, n), abs=1e-12)
    assert best_of_n_expectation([1.0, 1.0], [10.0, 20.0], 2) == pytest.approx(20.0, abs=1e-12)


def test_expectation_matches_monte_carlo():
    g = torch.Generator().manual_seed(3)
    M, n, draws = 50, 8, 40_000
    proxy, value = torch.randn(M, generator=g), torch.randn(M, generator=g)
    subsets = torch.rand(draws, M, generator=g).argsort(1)[:, :n]            # n distinct samples per draw
    best = subsets.gather(1, proxy[subsets].argmax(1, keepdim=True)).squeeze(1)
    picked = value[best].double()
    se = picked.std().item() / math.sqrt(draws)
    assert abs(best_of_n_expectation(proxy, value, n) - picked.mean().item()) < 4 * se


def test_n_one_gives_the_mean_and_n_m_the_value_at_the_top_proxy():
    g = torch.Generator().manual_seed(4)
    proxy, value = torch.randn(30, generator=g), torch.randn(30, generator=g)
    assert best_of_n_expectation(proxy, value, 1) == pytest.approx(value.double().mean().item(), abs=1e-12)
    assert best_of_n_expectation(proxy, value, 30) == pytest.approx(value[proxy.argmax()].item(), abs=1e-12)


@pytest.mark.parametrize("M, n", [(10, 3), (4096, 1), (4096, 1024), (4096, 4096)])
def test_large_pools_are_stable_and_give_the_expected_maximum_rank(M, n):
    """value = proxy rank: the max of n distinct draws from 1..M has mean n (M + 1) / (n + 1). (lgamma of numbers
    near 3e4 leaves about 12 good digits of each weight; C(4096, 1024) itself would overflow float64.)"""
    ranks = torch.randperm(M, generator=torch.Generator().manual_seed(5)).double() + 1
    got = best_of_n_expectation(ranks, ranks, n)
    assert got == pytest.approx(n * (M + 1) / (n + 1), rel=1e-10)
    w = best_of_n_weights(M, n)
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0, abs=1e-10)
    assert (w[:n - 1] == 0).all() and (w[n:] >= w[n - 1:-1]).all() and w[-1] == pytest.approx(n / M, rel=1e-10)


def test_bad_pools_are_refused():
    for n in (0, 4):
        with pytest.raises(ValueError, match="1 <= n <= M"):
            best_of_n_expectation([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n)
    with pytest.raises(ValueError, match="same length"):
        best_of_n_expectation([1.0, 2.0, 3.0], [1.0, 2.0], 1)
    with pytest.raises(ValueError, match="1-D"):
        best_of_n_expectation(torch.zeros(2, 3), torch.zeros(2, 3), 1)


# ------------------------------------------------------------------------------------------ the functional forms

def test_forms_on_floats_and_tensors_agree_and_rl_is_zero_at_zero():
    d = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    for form, f in GAO.items():
        as_floats = [f(x, 1.2, 0.3) for x in d.tolist()]
        assert f(d, 1.2, 0.3).tolist() == pytest.approx(as_floats, abs=1e-12)
    assert gao_rl(0.0, 1.2, 0.3) == 0.0 and gao_rl(d, 1.2, 0.3)[0].item() == 0.0
    assert gao_bon(2.0, 1.0, 0.25) == 1.0 and gao_rl(math.e, 1.0, 0.25) == pytest.approx(0.75 * math.e)


@pytest.mark.parametrize("form, alpha, beta", [("bon", 1.3, 0.4), ("rl", 0.9, 0.35), ("bon", 0.5, -0.1),
                                               ("rl", 1.0, 0.0)])
def test_fits_recover_alpha_and_beta_from_noiseless_points(form, alpha, beta):
    d = torch.linspace(0, 4, 17, dtype=torch.float64)                        # d = 0 included: it is skipped
    r = GAO[form](d, alpha, beta)
    fit = fit_gao(d.tolist(), r.tolist(), form)
    assert fit == pytest.approx((alpha, beta), abs=1e-9)


@pytest.mark.parametrize("form, alpha, beta", [("bon", 1.3, 0.4), ("rl", 0.9, 0.35)])
def test_fits_recover_alpha_and_beta_from_noisy_points(form, alpha, beta):
    g = torch.Generator().manual_seed(6)
    d = torch.linspace(0.05, 4, 200, dtype=torch.float64)
    r = GAO[form](d, alpha, beta) + 0.02 * torch.randn(200, generator=g, dtype=torch.float64)
    a, b = fit_gao(d, r, form)
    assert a == pytest.approx(alpha, abs=0.02) and b == pytest.approx(beta, abs=0.02)
    assert fit_gao(d, r, form) != pytest.approx((alpha, beta), abs=1e-9)      # the noise did move it


def test_fits_need_two_points_with_d_above_zero_and_a_known_form():
    assert fit_gao([0.0, 0.5], [0.0, 0.3], "bon") is None
    assert fit_gao([0.0, 1e-9, 0.5], [0.0, 0.0, 0.3], "rl") is None
    assert fit_gao([0.5, 1.0], [0.3, 0.4], "rl") is not None
    with pytest.raises(ValueError, match="form"):
        fit_gao([0.5, 1.0], [0.3, 0.4], "ppo")


@pytest.mark.parametrize("form, alpha, beta", [("bon", 1.3, 0.4), ("rl", 0.9, 0.35), ("rl", 1.5, 0.6),
                                               ("bon", -0.2, 0.5)])
def test_the_peak_is_where_a_grid_search_finds_the_maximum(form, alpha, beta):
    d = torch.linspace(0, 12, 1_200_001, dtype=torch.float64)
    best = d[GAO[form](d, alpha, beta).argmax()].item()
    assert gao_peak(alpha, beta, form) == pytest.approx(best, abs=2e-5)


def test_the_peak_of_a_fitted_curve_and_no_peak_without_turn_over():
    d = torch.linspace(0, 5, 26, dtype=torch.float64)
    for form, alpha, beta in (("bon", 1.0, 0.2), ("rl", 0.8, 0.4)):
        fit = fit_gao(d, GAO[form](d, alpha, beta), form)
        assert gao_peak(*fit, form) == pytest.approx(gao_peak(alpha, beta, form), rel=1e-9)
    assert gao_peak(1.0, 0.0, "bon") is None and gao_peak(1.0, -0.1, "rl") is None
    with pytest.raises(ValueError, match="form"):
        gao_peak(1.0, 0.5, "dpo")
