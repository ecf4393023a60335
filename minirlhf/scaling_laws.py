"""The pure math of reward over-optimisation (Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model
Overoptimization"): what best-of-n costs in KL, the unbiased best-of-n estimate from a fixed pool of samples,
and the two functional forms of the gold reward against d = √KL(π ‖ π_ref), with their fit and their peak.

    best-of-n   R_bon(d) = d (α_bon − β_bon d)          (Gao et al. 2022, eq. 1)
    RL          R_RL(d)  = d (α_RL − β_RL log d)        (Gao et al. 2022, eq. 2)

R is the gold reward's gain over the initial policy (the caller subtracts the d = 0 value). The proxy reward
keeps rising with d while the gold one rises, peaks and falls: Goodhart's law, measured. Nothing here trains
or samples; the gold-reward sandbox recipe calls these on its samples' scores.
"""
from __future__ import annotations

import math

import torch

FORMS = ("bon", "rl")
MIN_D = 1e-6                       # fit_gao ignores points at d ≤ MIN_D: both forms are 0 there, whatever α, β


def best_of_n_kl_bound(n: int) -> float:
    """KL(π_bon ‖ π) = log n − (n − 1)/n nats: the analytic KL of best-of-n sampling from its base policy, used
    by Stiennon et al. 2020 (appendix) and Gao et al. 2022 to put best-of-n on the same √KL axis as RL.

    Exact for a continuous proxy (no two samples tie): the best of n has CDF F(x)^n, density n F^(n−1) f, and
    E_bon[log(n F^(n−1))] = log n + (n − 1) E[log U^(1/n)] = log n − (n − 1)/n. With ties (a discrete base,
    repeated samples) it is an upper bound (Beirami et al. 2024, "Theoretical guarantees on the best-of-n
    alignment policy"). n = 1 gives 0; it grows like log n.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def _vector(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (the M samples of one prompt), got shape {tuple(t.shape)}")
    return t


def best_of_n_weights(M: int, n: int) -> torch.Tensor:
    """(M,) float64: the probability that the i-th smallest of M (1-based) is the best of n drawn without
    replacement, C(i − 1, n − 1) / C(M, n): the other n − 1 must all come from the i − 1 below it. Computed as
    exp(log C(i−1, n−1) − log C(M, n)) with lgamma, since C(4096, 1024) ≈ 10^998 overflows float64. Sums to 1
    (the hockey-stick identity); 0 for i < n."""
    if not 1 <= n <= M:
        raise ValueError(f"best-of-n from a pool of M = {M} samples needs 1 <= n <= M, got n = {n}")
    i = torch.arange(1, M + 1, dtype=torch.float64)

    def log_comb(a, b):                           # log C(a, b) for a ≥ b ≥ 0
        return torch.lgamma(a + 1) - math.lgamma(b + 1) - torch.lgamma(a - b + 1)

    log_w = log_comb((i - 1).clamp(min=n - 1), n - 1) - log_comb(torch.tensor(float(M), dtype=torch.float64), n)
    return torch.where(i >= n, log_w.exp(), torch.zeros_like(log_w))


def best_of_n_expectation(proxy, value, n: int) -> float:
    """E[value at the sample of highest proxy among n drawn without replacement from the M given]:

        E = Σ_i C(i − 1, n − 1) / C(M, n) · value_(i)        (samples sorted by proxy, ascending; i = 1..M)

    Gao et al. 2022's unbiased estimator of best-of-n from one fixed pool of M ≥ n samples of a prompt (better
    than splitting the pool into M/n disjoint groups: every subset counts). `proxy` and `value` are (M,) tensors
    or lists; `value` is any per-sample quantity (the gold reward, the proxy itself, a length, ...). n = 1 gives
    the mean of `value`, n = M its value at the top-proxy sample. Ties in `proxy` are broken by a stable sort:
    of two equal scores, the later sample counts as the higher. Average over prompts outside.

    Worked example: proxy [0.1, 0.9, 0.5], value [1, 2, 3], n = 2. The pairs {0,1}, {0,2}, {1,2} give 2, 3, 2:
    E = 7/3. By the weights: sorted by proxy the values are [1, 3, 2], weighted [0, 1/3, 2/3]: 3/3 + 4/3 = 7/3.
    """
    proxy, value = _vector(proxy, "proxy"), _vector(value, "value")
    if proxy.shape != value.shape:
        raise ValueError(f"proxy and value must have the same length, got {len(proxy)} and {len(value)}")
    order = torch.sort(proxy, stable=True).indices
    return float((best_of_n_weights(len(proxy), n) * value[order]).sum())


def gao_bon(d, alpha, beta):
    """R_bon(d) = d (α − β d) (Gao et al. 2022, eq. 1): the gold reward gain of best-of-n at d = √KL."""
    return d * (alpha - beta * d)


def gao_rl(d, alpha, beta):
    """R_RL(d) = d (α − β log d) (Gao et al. 2022, eq. 2): the gold reward gain of RL at d = √KL; 0 at d = 0
    (d log d → 0), for floats and tensors alike."""
    if torch.is_tensor(d):
        return alpha * d - beta * torch.xlogy(d, d)           # xlogy(0, 0) = 0
    return 0.0 if d == 0 else d * (alpha - beta * math.log(d))


def _form(form: str):
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return form


def fit_gao(d, r, form: str) -> tuple[float, float] | None:
    """Least-squares (α, β) of r ≈ gao_<form>(d, α, β) over the points with d > 1e-6 (Gao et al. 2022).

    Both forms are linear in (α, β): r = α·d + β·(−d²) for "bon", r = α·d + β·(−d log d) for "rl", so this
    is one float64 torch.linalg.lstsq on those two features, minimising the squared error in r itself (not in
    r/d, which would weight the points near d = 0 most). `r` is the reward GAIN over the start: the caller
    subtracts the d = 0 value, as both forms pass through the origin. None when fewer than two points have d > 0.
    """
    form = _form(form)
    d, r = _vector(d, "d"), _vector(r, "r")
    keep = d > MIN_D
    d, r = d[keep], r[keep]
    if len(d) < 2:
        return None
    second = -d ** 2 if form == "bon" else -d * d.log()
    A = torch.stack([d, second], 1)                           # (P, 2)
    alpha, beta = torch.linalg.lstsq(A, r[:, None]).solution[:, 0].tolist()
    return alpha, beta


def gao_peak(alpha: float, beta: float, form: str) -> float | None:
    """The d ≥ 0 that maximises the fitted gold curve, where over-optimisation begins:
    bon: d* = α / (2β) (0 when α ≤ 0: the curve only falls); rl: d* = exp(α/β − 1) (R' = α − β − β log d).
    None when β ≤ 0: the curve never turns over."""
    form = _form(form)
    if beta <= 0:
        return None
    if form == "bon":
        return max(0.0, alpha / (2 * beta))
    return math.exp(min(alpha / beta - 1, 709.0))             # e^709 ≈ 8e307: the largest float64 exponential
