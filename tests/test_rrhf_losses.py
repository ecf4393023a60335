"""RRHF's ranking and SFT losses: a naive double loop, the authors' own formula on their worked numbers,
padding invariance, and batching (a batch is the mean of its single queries)."""
import math

import pytest
import torch

from minirlhf.losses import rrhf_loss, rrhf_sft_loss, sequence_scores


def loop_rrhf(scores, rw, mask=None):
    """Per query, the sum over ordered pairs (i, j) with r_i < r_j of max(0, p_i - p_j); mean over queries."""
    total = 0.0
    for b, (p, r) in enumerate(zip(scores.tolist(), rw.tolist())):
        real = [True] * len(p) if mask is None else mask[b].tolist()
        for i in range(len(p)):
            for j in range(len(p)):
                if real[i] and real[j] and r[i] < r[j]:
                    total += max(0.0, p[i] - p[j])
    return total / len(scores)


def authors_rrhf_loss(scores, rw_scores):
    """The authors' first rrhf_loss (one query per step, rw_scores (1, K)), as the independent reference."""
    diff = scores.unsqueeze(0) - scores.unsqueeze(-1)
    rw_diff = rw_scores.unsqueeze(0) - rw_scores.unsqueeze(-1)
    aval = torch.bitwise_and(rw_diff > 0, diff < 0)[0]
    return -diff[aval].sum()


def random_case(seed, B=5, K=6, ties=True):
    g = torch.Generator().manual_seed(seed)
    scores = -torch.rand(B, K, generator=g, dtype=torch.float64) * 3
    rw = torch.randint(0, 4 if ties else 1000, (B, K), generator=g).double()     # small ints: ties happen
    return scores, rw


# ---------------------------------------------------------------------------- rrhf_loss


@pytest.mark.parametrize("K", [2, 3, 6])
def test_rrhf_matches_double_loop(K):
    scores, rw = random_case(K, K=K)
    assert rrhf_loss(scores, rw).item() == pytest.approx(loop_rrhf(scores, rw), rel=1e-12)


def test_rrhf_matches_loop_with_candidate_mask():
    scores, rw = random_case(1)
    mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(2)) < 0.7
    mask[:, 0] = True
    assert rrhf_loss(scores, rw, mask).item() == pytest.approx(loop_rrhf(scores, rw, mask), rel=1e-12)
    assert rrhf_loss(scores, rw, mask).item() != pytest.approx(rrhf_loss(scores, rw).item())


def test_rrhf_docstring_example():
    r = torch.tensor([[0.2, 0.9, 0.5]])
    assert rrhf_loss(torch.tensor([[-1.0, -2.0, -1.5]]), r).item() == pytest.approx(2.0)
    assert rrhf_loss(torch.tensor([[-2.0, -1.0, -1.5]]), r).item() == 0.0


def test_rrhf_equals_the_authors_formula_for_one_query():
    for seed in range(4):
        scores, rw = random_case(seed, B=1)
        assert rrhf_loss(scores, rw).item() == pytest.approx(authors_rrhf_loss(scores[0], rw).item(), rel=1e-12)


def test_rrhf_worked_numbers_from_the_authors_trainer():
    # Printed by their trainer on the taco query (rrhf_loss 3.7421) and on a second query (9.0703); the
    # printed policy scores are rounded to 4 decimals, so the sums agree to about 1e-3.
    taco_p = torch.tensor([[-0.7102, -1.0950, -1.0060, -1.0923, -1.4811, -0.5766]], dtype=torch.float64)
    taco_r = torch.tensor([[-1.427734375, -1.03515625, -1.28125, -1.1923828125, -1.6572265625, -2.400390625]],
                          dtype=torch.float64)
    assert rrhf_loss(taco_p, taco_r).item() == pytest.approx(3.7421, abs=1e-3)
    p2 = torch.tensor([[-1.8340, -1.5368, -2.0713, -1.2388, -2.1106, -0.4438]], dtype=torch.float64)
    r2 = torch.tensor([[-0.6064, -0.5854, -0.5791, -0.7280, -2.1777, -2.5430]], dtype=torch.float64)
    assert rrhf_loss(p2, r2).item() == pytest.approx(9.0703, abs=1e-3)
    # The same two queries as one batch: the mean of the two.
    both = rrhf_loss(torch.cat([taco_p, p2]), torch.cat([taco_r, r2])).item()
    assert both == pytest.approx((rrhf_loss(taco_p, taco_r).item() + rrhf_loss(p2, r2).item()) / 2, rel=1e-12)


def test_rrhf_refuses_the_1d_shape_the_authors_code_gets_wrong():
    p = torch.tensor([-0.5, -0.3, -0.4, -0.8, -0.2, -0.1])
    r = torch.tensor([-0.84, -0.85, -0.57, -0.62, -0.49, -0.87])
    assert authors_rrhf_loss(p, r).item() == pytest.approx(-2.5)         # 1-D rewards: wrong pairs, loss < 0
    assert authors_rrhf_loss(p, r[None]).item() == pytest.approx(2.8)    # (1, K): right
    assert rrhf_loss(p[None], r[None]).item() == pytest.approx(2.8)
    assert loop_rrhf(p[None], r[None]) == pytest.approx(2.8)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        rrhf_loss(p, r)
    with pytest.raises(ValueError):
        rrhf_loss(p[None], r[None, :5])
    with pytest.raises(ValueError):
        rrhf_loss(p[None], r[None], torch.ones(1, 5, dtype=torch.bool))


def test_rrhf_padding_candidates_change_nothing():
    scores, rw = random_case(3)
    base = rrhf_loss(scores, rw)
    pad_scores = torch.cat([scores, torch.tensor([[math.nan, 1e30]] * 5, dtype=torch.float64)], 1)
    pad_rw = torch.cat([rw, torch.tensor([[1e9, math.nan]] * 5, dtype=torch.float64)], 1)
    mask = torch.cat([torch.ones(5, 6, dtype=torch.bool), torch.zeros(5, 2, dtype=torch.bool)], 1)
    pad_scores.requires_grad_()
    padded = rrhf_loss(pad_scores, pad_rw, mask)
    assert padded.item() == pytest.approx(base.item(), rel=1e-12)
    padded.backward()
    assert torch.isfinite(pad_scores.grad).all() and (pad_scores.grad[:, 6:] == 0).all()


def test_rrhf_batch_is_mean_of_single_queries():
    scores, rw = random_case(4, B=7)
    singles = [rrhf_loss(scores[b:b + 1], rw[b:b + 1]).item() for b in range(7)]
    assert rrhf_loss(scores, rw).item() == pytest.approx(sum(singles) / 7, rel=1e-12)
    assert len(set(singles)) > 1


def test_rrhf_gradient_pushes_the_better_candidate_up():
    scores = torch.tensor([[-1.0, -2.0]], requires_grad=True)              # candidate 1 is better
    rrhf_loss(scores, torch.tensor([[0.0, 1.0]])).backward()
    assert scores.grad.tolist() == [[1.0, -1.0]]                           # descent: p_0 down, p_1 up


# ---------------------------------------------------------------------------- rrhf_sft_loss


def loop_sft(token_logps, mask, rw, cand_mask=None):
    total = 0.0
    for b in range(token_logps.shape[0]):
        r = rw[b].tolist()
        real = [True] * len(r) if cand_mask is None else cand_mask[b].tolist()
        best = max((k for k in range(len(r)) if real[k]), key=lambda k: (r[k], -k))   # first of ties
        toks = [x for x, m in zip(token_logps[b, best].tolist(), mask[b, best].tolist()) if m]
        total += -sum(toks) / len(toks)
    return total / token_logps.shape[0]


def random_tokens(seed, B=4, K=3, T=7):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, K, T, generator=g, dtype=torch.float64) * 4
    mask = torch.arange(T) < torch.randint(1, T + 1, (B, K, 1), generator=g)
    rw = torch.randn(B, K, generator=g, dtype=torch.float64)
    return logps, mask, rw


def test_sft_matches_loop():
    for seed in range(3):
        logps, mask, rw = random_tokens(seed)
        assert rrhf_sft_loss(logps, mask, rw).item() == pytest.approx(loop_sft(logps, mask, rw), rel=1e-12)


def test_sft_docstring_example_and_tie_rule():
    logps = torch.tensor([[[-9.0, -9.0, -9.0], [-0.5, -1.5, 123.0]]])
    mask = torch.tensor([[[1, 1, 1], [1, 1, 0]]])
    assert rrhf_sft_loss(logps, mask, torch.tensor([[0.1, 0.7]])).item() == pytest.approx(1.0)
    assert rrhf_sft_loss(logps, mask, torch.tensor([[0.7, 0.7]])).item() == pytest.approx(9.0)   # first wins


def test_sft_averages_over_real_tokens_not_padding():
    logps, mask, rw = random_tokens(5)
    base = rrhf_sft_loss(logps, mask, rw)
    more_pad = torch.cat([torch.where(mask, logps, torch.tensor(math.nan, dtype=torch.float64)),
                          torch.full((4, 3, 5), -1e30, dtype=torch.float64)], -1)
    more_mask = torch.cat([mask, torch.zeros(4, 3, 5, dtype=torch.bool)], -1)
    assert rrhf_sft_loss(more_pad, more_mask, rw).item() == pytest.approx(base.item(), rel=1e-12)
    # the authors' mean over the whole padded row would shrink as padding is added
    best = rw.argmax(1)
    row_mean = -(logps * mask)[torch.arange(4), best].mean(-1).mean()
    assert row_mean.item() < base.item()


def test_sft_with_padded_candidates():
    logps, mask, rw = random_tokens(6, K=4)
    cand = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    rw_garbage = torch.where(cand, rw, torch.tensor(1e9, dtype=torch.float64))   # a padded one would "win"
    expected = loop_sft(logps, mask, rw, cand)
    assert rrhf_sft_loss(logps, mask, rw_garbage, cand).item() == pytest.approx(expected, rel=1e-12)
    singles = [rrhf_sft_loss(logps[b:b + 1], mask[b:b + 1], rw_garbage[b:b + 1], cand[b:b + 1]).item()
               for b in range(4)]
    assert expected == pytest.approx(sum(singles) / 4, rel=1e-12)
    with pytest.raises(ValueError, match="at least one real candidate"):
        rrhf_sft_loss(logps, mask, rw, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        rrhf_sft_loss(logps[0], mask[0], rw[0])


def test_full_rrhf_objective_gradient_flows_only_through_real_tokens():
    logps, mask, rw = random_tokens(7)
    logps = torch.where(mask, logps, torch.tensor(math.nan, dtype=torch.float64)).requires_grad_()
    p = sequence_scores(logps, mask, length_penalty=1.0)
    loss = 1.0 * rrhf_loss(p, rw) + rrhf_sft_loss(logps, mask, rw)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert (logps.grad[~mask] == 0).all() and (logps.grad[mask] != 0).any()
