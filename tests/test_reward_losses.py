"""Reward-model losses against plain-Python loops, the seed documents' own numbers, and gradients."""
import itertools
import math

import pytest
import torch

from minirlhf.losses import (best_of_k_loss, pairwise_loss, plackett_luce_loss, ranking_loss,
                             sigmoid_rank_loss)
from minirlhf.ranks import pair_labels_to_gather_ids, ranks_to_pair_labels


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def random_case(B, K, seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, K, generator=g, dtype=torch.float64) * 3
    ranks = torch.stack([torch.randperm(K, generator=g) for _ in range(B)])
    return rewards, ranks


def loop_pair_mean(rewards, ranks, f):
    """mean over rows and non-tied pairs of f(r_better - r_worse), with Python floats."""
    total, count = 0.0, 0
    for r, rk in zip(rewards.tolist(), ranks.tolist()):
        for i, j in itertools.combinations(range(len(r)), 2):
            if rk[i] == rk[j]:
                continue
            better, worse = (i, j) if rk[i] < rk[j] else (j, i)
            total += f(r[better] - r[worse])
            count += 1
    return total / count


def loop_plackett_luce(rewards, ranks):
    """Peel off the top item, one position at a time."""
    total = 0.0
    for r, rk in zip(rewards.tolist(), ranks.tolist()):
        remaining = sorted(range(len(r)), key=lambda k: rk[k])
        while remaining:
            top = remaining[0]
            total += math.log(sum(math.exp(r[k]) for k in remaining)) - r[top]
            remaining = remaining[1:]
    return total / len(rewards)


# ---------------------------------------------------------------------------- against loops


@pytest.mark.parametrize("K", [2, 3, 4, 5, 6])
def test_ranking_loss_matches_loop(K):
    rewards, ranks = random_case(7, K, seed=K)
    expected = loop_pair_mean(rewards, ranks, lambda d: -log_sigmoid(d))
    assert ranking_loss(rewards, ranks).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("K", [2, 3, 4, 5, 6])
def test_sigmoid_rank_loss_matches_loop(K):
    rewards, ranks = random_case(7, K, seed=10 + K)
    expected = -loop_pair_mean(rewards, ranks, sigmoid)
    assert sigmoid_rank_loss(rewards, ranks).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("K", [2, 3, 4, 5, 6])
def test_plackett_luce_matches_peeling_loop(K):
    rewards, ranks = random_case(5, K, seed=20 + K)
    expected = loop_plackett_luce(rewards, ranks)
    assert plackett_luce_loss(rewards, ranks).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("K", [2, 3, 4, 5, 6])
def test_best_of_k_matches_loop(K):
    rewards, _ = random_case(6, K, seed=30 + K)
    best = torch.randint(0, K, (6,), generator=torch.Generator().manual_seed(K))
    expected = sum(math.log(sum(math.exp(x) for x in r)) - r[b]
                   for r, b in zip(rewards.tolist(), best.tolist())) / 6
    assert best_of_k_loss(rewards, best).item() == pytest.approx(expected, rel=1e-10)


def test_pairwise_loss_matches_loop_with_margin():
    g = torch.Generator().manual_seed(0)
    rw, rl = torch.randn(2, 9, generator=g, dtype=torch.float64)
    for margin in (0.0, 0.7):
        expected = sum(-log_sigmoid(w - l - margin) for w, l in zip(rw.tolist(), rl.tolist())) / 9
        assert pairwise_loss(rw, rl, margin=margin).item() == pytest.approx(expected, rel=1e-12)


def test_ranking_loss_skips_ties():
    rewards = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64)
    ranks = torch.tensor([[0, 1, 1]])            # items 1 and 2 tied: only (0,1) and (0,2) count
    expected = (-log_sigmoid(2.0) - log_sigmoid(1.0)) / 2
    assert ranking_loss(rewards, ranks).item() == pytest.approx(expected, rel=1e-12)
    assert ranking_loss(rewards, torch.tensor([[0, 0, 0]])).item() == 0.0


# ---------------------------------------------------------------------------- docstring examples


def test_docstring_worked_examples():
    r = torch.tensor([[3.0, 1.0, 2.0]])
    rk = torch.tensor([[0, 2, 1]])
    assert ranking_loss(r, rk).item() == pytest.approx(0.2512, abs=1e-4)
    assert plackett_luce_loss(r, rk).item() == pytest.approx(0.7209, abs=1e-4)
    assert sigmoid_rank_loss(r, rk).item() == pytest.approx(-0.7810, abs=1e-4)
    assert pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item() == \
        pytest.approx(0.8133, abs=1e-4)


# ---------------------------------------------------------------------------- the reward-model study notes' numbers


def test_seed_loss_v1_best_of_4():
    rewards = torch.tensor([[1., 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
    labels = torch.tensor([0, 1, 2, 3])
    # Each row is a..a+3, so logsumexp = a + log(1+e+e^2+e^3); the picked logits are a+0..a+3.
    by_hand = math.log(1 + math.e + math.e ** 2 + math.e ** 3) - (0 + 1 + 2 + 3) / 4
    assert best_of_k_loss(rewards, labels).item() == pytest.approx(by_hand, rel=1e-6)
    assert best_of_k_loss(rewards, labels).item() == pytest.approx(1.9402, abs=1e-4)


def test_seed_loss_v1_plus_plus_form():
    # The notes' "sorted" form: the chosen candidate sits in column 0, so best_idx = 0.
    rewards = torch.tensor([[1., 2, 3, 4], [6, 5, 7, 8], [11, 10, 9, 12], [16, 13, 14, 15]])
    v1_plus_plus = torch.sum((rewards - rewards[:, :1]).exp(), -1).log().mean()
    v1_plus = -torch.log(rewards.exp()[:, 0] / rewards.exp().sum(1)).mean()
    ours = best_of_k_loss(rewards, torch.zeros(4, dtype=torch.long))
    assert ours.item() == pytest.approx(v1_plus_plus.item(), rel=1e-6)
    assert ours.item() == pytest.approx(v1_plus.item(), rel=1e-6)


def test_seed_loss_v2_pairwise():
    # loss_v2: CrossEntropy on [[1,2],[3,4],[5,6],[7,8]] with labels [0,1,0,1]:
    # rows 0, 2 pick the lower reward (margin -1), rows 1, 3 the higher (margin +1).
    by_hand = (2 * math.log1p(math.e) + 2 * math.log1p(math.exp(-1))) / 4
    chosen, rejected = torch.tensor([1., 4, 5, 8]), torch.tensor([2., 3, 6, 7])
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(by_hand, rel=1e-6)
    # loss_v2_plus_plus's sorted form: [[1,2],[4,3],[5,6],[8,7]], chosen in column 0.
    sorted_r = torch.tensor([[1., 2], [4, 3], [5, 6], [8, 7]])
    v2_pp = torch.sum((sorted_r - sorted_r[:, :1]).exp(), -1).log().mean()
    assert pairwise_loss(sorted_r[:, 0], sorted_r[:, 1]).item() == pytest.approx(v2_pp.item(), rel=1e-6)
    assert best_of_k_loss(sorted_r, torch.zeros(4, dtype=torch.long)).item() == \
        pytest.approx(by_hand, rel=1e-6)


def seed_loss_v3(gather_ids, rewards):
    """The reward-model study notes' loss_v3, copied as the independent reference."""
    r1 = torch.gather(rewards, 1, gather_ids[:, :, 0])
    r2 = torch.gather(rewards, 1, gather_ids[:, :, 1])
    return -torch.nn.functional.logsigmoid(r1 - r2).mean()


SEED_V3_RANKS = [
    [[0, 1, 2], [0, 1, 2], [0, 1, 2]],
    [[0, 1, 2], [0, 1, 2], [2, 1, 0]],
    [[0, 1, 2], [2, 1, 0], [2, 1, 0]],
    [[1, 0, 2], [2, 1, 0], [2, 1, 0]],
    [[2, 1, 0], [2, 1, 0], [2, 1, 0]],
]


@pytest.mark.parametrize("ranks", SEED_V3_RANKS)
def test_seed_v3_ranking_loss_equals_loss_v3(ranks):
    rewards = torch.tensor([[1., 2, 3], [2, 4, 6], [3, 9, 27]])
    gather_ids = torch.tensor(pair_labels_to_gather_ids(ranks_to_pair_labels(ranks)))
    expected = seed_loss_v3(gather_ids, rewards)
    assert ranking_loss(rewards, torch.tensor(ranks)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_seed_v3_numbers_by_hand():
    # First rank set: every row ranked 0 > 1 > 2 but rewards increase, so every pair is wrong.
    rewards = torch.tensor([[1., 2, 3], [2, 4, 6], [3, 9, 27]])
    diffs = [-1, -2, -1, -2, -4, -2, -6, -24, -18]
    by_hand = sum(-log_sigmoid(d) for d in diffs) / 9
    assert ranking_loss(rewards, torch.tensor(SEED_V3_RANKS[0])).item() == pytest.approx(by_hand, rel=1e-6)


# ---------------------------------------------------------------------------- Plackett-Luce


def test_plackett_luce_with_two_items_is_pairwise():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(8, 2, generator=g, dtype=torch.float64)
    ranks = torch.stack([torch.randperm(2, generator=g) for _ in range(8)])
    chosen = rewards.gather(1, ranks.argmin(1, keepdim=True)).squeeze(1)
    rejected = rewards.gather(1, ranks.argmax(1, keepdim=True)).squeeze(1)
    assert plackett_luce_loss(rewards, ranks).item() == \
        pytest.approx(pairwise_loss(chosen, rejected).item(), rel=1e-12)


# ---------------------------------------------------------------------------- gradients


def all_losses(rewards, ranks):
    best = ranks.argmin(1)
    chosen = rewards.gather(1, best[:, None]).squeeze(1)
    rejected = rewards.gather(1, ranks.argmax(1, keepdim=True)).squeeze(1)
    return {
        "best_of_k": best_of_k_loss(rewards, best),
        "pairwise": pairwise_loss(chosen, rejected),
        "ranking": ranking_loss(rewards, ranks),
        "plackett_luce": plackett_luce_loss(rewards, ranks),
        "sigmoid_rank": sigmoid_rank_loss(rewards, ranks),
    }


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_gradients_finite_at_large_margins(scale):
    ranks = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    for name in all_losses(torch.zeros(2, 4), ranks):
        rewards = (torch.arange(4.0).repeat(2, 1) * scale).requires_grad_()
        loss = all_losses(rewards, ranks)[name]
        loss.backward()
        assert torch.isfinite(loss), name
        assert torch.isfinite(rewards.grad).all(), name


def test_sigmoid_rank_gradient_vanishes_where_ranking_loss_does_not():
    # Ranked 0 > 1 > 2 > 3 but rewards 0, 30, 60, 90: every pair wrong by >= 30.
    ranks = torch.tensor([[0, 1, 2, 3]])
    r_sig = torch.tensor([[0.0, 30.0, 60.0, 90.0]], requires_grad=True)
    sigmoid_rank_loss(r_sig, ranks).backward()
    assert r_sig.grad.abs().max() < 1e-6

    r_log = torch.tensor([[0.0, 30.0, 60.0, 90.0]], requires_grad=True)
    ranking_loss(r_log, ranks).backward()
    # d/dx -log sigma(x) = -1 per pair, over 6 pairs: item k is better in 3-k pairs, worse in k.
    expected = torch.tensor([[-3.0, -1.0, 1.0, 3.0]]) / 6
    assert torch.allclose(r_log.grad, expected, atol=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError):
        ranking_loss(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        ranking_loss(torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.long))
