"""Rank <-> pair label <-> gather id conversions (the reward-model study notes), for any K, lists or tensors."""
import doctest

import pytest
import torch

import minirlhf.ranks as ranks_module
from minirlhf.losses import ranking_loss
from minirlhf.ranks import (gather_ids_to_pair_labels, pair_index, pair_labels_to_gather_ids,
                            ranking_loss_from_gather_ids, ranks_to_pair_labels, scores_to_ranks)

# The reward-model study notes' tables for K = 3.
SEED_COMBINATION_3 = [[0, 1], [0, 2], [1, 2]]
SEED_RE_COMBINATION_3 = [[1, 0], [2, 0], [2, 1]]


def seed_rank_to_pair_label(ranks):
    """The reward-model study notes' rank_to_pair_label for K = 3, written out as the reference."""
    return [[1 if rank[a] <= rank[b] else 0 for a, b in SEED_COMBINATION_3] for rank in ranks]


def seed_pair_label_to_gather_id(pair_labels):
    return [[SEED_COMBINATION_3[k] if p else SEED_RE_COMBINATION_3[k] for k, p in enumerate(row)]
            for row in pair_labels]


def test_pair_index_matches_seed_table_and_counts():
    assert [list(p) for p in pair_index(3)] == SEED_COMBINATION_3
    for K in range(2, 13):
        pairs = pair_index(K)
        assert len(pairs) == K * (K - 1) // 2
        assert all(i < j for i, j in pairs) and pairs == sorted(pairs)
    with pytest.raises(ValueError):
        pair_index(1)


def test_k3_agrees_with_seed_tables_on_all_rankings():
    all_ranks = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0], [0, 0, 1], [1, 1, 1]]
    labels = ranks_to_pair_labels(all_ranks)
    assert labels == seed_rank_to_pair_label(all_ranks)
    assert pair_labels_to_gather_ids(labels) == seed_pair_label_to_gather_id(labels)


def test_seed_examples():
    # From the notes' comments: ranks [[1,2,0],[2,1,0]]; pair_label [[1,0,1],[0,0,1]] round trip.
    assert ranks_to_pair_labels([[1, 2, 0], [2, 1, 0]]) == [[1, 0, 0], [0, 0, 0]]
    pair_labels = [[1, 0, 1], [0, 0, 1]]
    gather_ids = pair_labels_to_gather_ids(pair_labels)
    assert gather_ids == [[[0, 1], [2, 0], [1, 2]], [[1, 0], [2, 0], [1, 2]]]
    assert gather_ids_to_pair_labels(gather_ids) == pair_labels
    assert gather_ids_to_pair_labels([[[1, 0], [2, 0], [2, 1]], [[0, 1], [0, 2], [1, 2]]]) == \
        [[0, 0, 0], [1, 1, 1]]


@pytest.mark.parametrize("K", range(2, 13))
def test_round_trips_on_random_permutations(K):
    g = torch.Generator().manual_seed(K)
    ranks = torch.stack([torch.randperm(K, generator=g) for _ in range(5)])
    labels = ranks_to_pair_labels(ranks)
    gather_ids = pair_labels_to_gather_ids(labels)
    assert gather_ids.shape == (5, K * (K - 1) // 2, 2)
    assert torch.equal(gather_ids_to_pair_labels(gather_ids), labels)
    # Each gather id really is [better, worse].
    better, worse = gather_ids[..., 0], gather_ids[..., 1]
    assert (ranks.gather(1, better) < ranks.gather(1, worse)).all()
    # Lists in, lists out, same values.
    assert ranks_to_pair_labels(ranks.tolist()) == labels.tolist()
    assert pair_labels_to_gather_ids(labels.tolist()) == gather_ids.tolist()
    # Item k is better than exactly K-1-rank[k] others: the labels determine the ranks.
    wins = torch.zeros_like(ranks).scatter_add_(1, better, torch.ones_like(better))
    assert torch.equal(wins, K - 1 - ranks)
    # scores_to_ranks inverts a ranking given as scores.
    assert torch.equal(scores_to_ranks(-ranks.double()), ranks)


def test_unbatched_input():
    assert ranks_to_pair_labels([2, 0, 1]) == [0, 0, 1]
    assert pair_labels_to_gather_ids([0, 0, 1]) == [[1, 0], [2, 0], [1, 2]]


def test_bad_gather_ids_and_pair_counts_raise():
    with pytest.raises(ValueError):
        gather_ids_to_pair_labels([[[0, 1], [1, 2], [0, 2]]])       # pairs out of order
    with pytest.raises(ValueError):
        pair_labels_to_gather_ids([[1, 0]])                          # 2 is not K-choose-2


def test_scores_to_ranks_and_ties():
    assert scores_to_ranks([0.5, 2.0, 0.5, -1.0]) == [1, 0, 1, 3]
    assert scores_to_ranks([0.5, 2.0, 0.5, -1.0], ties="first") == [1, 0, 2, 3]
    # The RRHF walkthrough's example: scores [-1.43, -1.04, -1.28, -1.19, -1.66, -2.40].
    scores = [-1.427734375, -1.03515625, -1.28125, -1.1923828125, -1.6572265625, -2.400390625]
    assert scores_to_ranks(scores) == [3, 0, 2, 1, 4, 5]
    t = scores_to_ranks(torch.tensor([[1.0, 1.0, 1.0], [3.0, 2.0, 1.0]]), ties="first")
    assert torch.equal(t, torch.tensor([[0, 1, 2], [0, 1, 2]]))
    with pytest.raises(ValueError):
        scores_to_ranks([1.0, 2.0], ties="max")


@pytest.mark.parametrize("K", [2, 3, 5, 12])
def test_ranking_loss_from_gather_ids_equals_ranking_loss(K):
    g = torch.Generator().manual_seed(100 + K)
    rewards = torch.randn(4, K, generator=g, dtype=torch.float64)
    ranks = torch.stack([torch.randperm(K, generator=g) for _ in range(4)])
    gather_ids = pair_labels_to_gather_ids(ranks_to_pair_labels(ranks))
    assert ranking_loss_from_gather_ids(rewards, gather_ids).item() == \
        pytest.approx(ranking_loss(rewards, ranks).item(), rel=1e-12)


def test_docstring_examples_run():
    result = doctest.testmod(ranks_module)
    assert result.attempted > 0 and result.failed == 0
