"""Three ways to write down the same ranking of K candidates, and the conversions between them.

The reward-model study notes (on InstructGPT's reward loss, docs/references.md) store a ranking of K answers as:

- ranks        (B, K)       rank[k] of candidate k; 0 = best.              e.g. [1, 2, 0]
- pair labels  (B, P)       for each pair (i, j), i < j, in itertools.combinations order
                            (P = K(K-1)/2): 1 if candidate i is better.    e.g. [1, 0, 0]
- gather ids   (B, P, 2)    for each pair, [better, worse].                e.g. [[0,1],[2,0],[2,1]]

The notes used lookup tables that stopped at K = 9; here the pairs come from itertools for any
K >= 2. Every function accepts nested lists or tensors and returns the same kind it was given
(lists in, lists out). The leading batch dimension is optional.
"""
from __future__ import annotations

import itertools
import math

import torch

from .losses import pairwise_loss


def pair_index(K: int) -> list[tuple[int, int]]:
    """The C(K,2) pairs (i, j), i < j, in itertools.combinations order.

    >>> pair_index(3)
    [(0, 1), (0, 2), (1, 2)]
    """
    if K < 2:
        raise ValueError(f"a ranking needs K >= 2 candidates, got K = {K}")
    return list(itertools.combinations(range(K), 2))


def _num_candidates(num_pairs: int) -> int:
    """K such that K(K-1)/2 = num_pairs."""
    K = (1 + math.isqrt(1 + 8 * num_pairs)) // 2
    if K < 2 or K * (K - 1) // 2 != num_pairs:
        raise ValueError(f"{num_pairs} pairs is not K-choose-2 for any K >= 2")
    return K


def _tensor(x, dtype=torch.long):
    """(tensor, was_list): lists become tensors, and results go back to lists at the end."""
    if isinstance(x, torch.Tensor):
        return x, False
    return torch.tensor(x, dtype=dtype), True


def _out(t: torch.Tensor, as_list: bool):
    return t.tolist() if as_list else t


def ranks_to_pair_labels(ranks):
    """Pair label 1 where rank[i] <= rank[j] (the first of the pair is better), else 0.

    A tie counts as "first is better", the notes' rule (`losses.ranking_loss` skips ties instead).

    >>> ranks_to_pair_labels([[1, 2, 0], [2, 1, 0]])   # pairs (0,1), (0,2), (1,2)
    [[1, 0, 0], [0, 0, 0]]
    """
    ranks, as_list = _tensor(ranks)
    pairs = torch.tensor(pair_index(ranks.shape[-1]), device=ranks.device)     # (P, 2)
    labels = ranks[..., pairs[:, 0]] <= ranks[..., pairs[:, 1]]               # (..., P)
    return _out(labels.long(), as_list)


def pair_labels_to_gather_ids(pair_labels):
    """[better, worse] for each pair: (i, j) where the label is 1, (j, i) where it is 0.

    >>> pair_labels_to_gather_ids([[1, 0, 1]])
    [[[0, 1], [2, 0], [1, 2]]]
    """
    labels, as_list = _tensor(pair_labels)
    pairs = torch.tensor(pair_index(_num_candidates(labels.shape[-1])), device=labels.device)
    first_better = labels.bool().unsqueeze(-1)                                  # (..., P, 1)
    return _out(torch.where(first_better, pairs, pairs.flip(-1)), as_list)     # (..., P, 2)


def gather_ids_to_pair_labels(gather_ids):
    """Inverse of pair_labels_to_gather_ids: 1 where the pair is written (i, j) with i < j.

    Raises ValueError if an entry is not one of the K-choose-2 pairs in their order.

    >>> gather_ids_to_pair_labels([[[0, 1], [2, 0], [1, 2]]])
    [[1, 0, 1]]
    """
    ids, as_list = _tensor(gather_ids)
    pairs = torch.tensor(pair_index(_num_candidates(ids.shape[-2])), device=ids.device)
    if not torch.equal(ids.sort(-1).values, pairs.expand_as(ids)):
        raise ValueError("gather ids are not the K-choose-2 pairs in itertools order")
    return _out((ids[..., 0] < ids[..., 1]).long(), as_list)


def scores_to_ranks(scores, ties: str = "min"):
    """Ranks from scores: the highest score gets rank 0. For RRHF's {query, responses, scores}.

    ties="min": tied scores share the best rank of their group (competition ranking, "0 1 1 3"), so
        `losses.ranking_loss` skips those pairs, as RRHF's loss does (it needs a strict score gap).
    ties="first": a permutation; among tied scores the earlier index ranks better (a stable sort).
    Either way the answer depends only on the scores, never on sort internals.

    >>> scores_to_ranks([0.5, 2.0, 0.5, -1.0])
    [1, 0, 1, 3]
    >>> scores_to_ranks([0.5, 2.0, 0.5, -1.0], ties="first")
    [1, 0, 2, 3]
    """
    if ties not in ("min", "first"):
        raise ValueError(f"ties must be 'min' or 'first', got {ties!r}")
    s, as_list = _tensor(scores, dtype=torch.float64)
    s_i, s_j = s.unsqueeze(-1), s.unsqueeze(-2)                     # (..., K, 1), (..., 1, K)
    ranks = (s_j > s_i).sum(-1)                                     # how many score strictly higher
    if ties == "first":
        K = s.shape[-1]
        earlier = torch.ones(K, K, dtype=torch.bool, device=s.device).tril(-1)   # [i, j]: j < i
        ranks = ranks + ((s_j == s_i) & earlier).sum(-1)
    return _out(ranks, as_list)


def ranking_loss_from_gather_ids(rewards: torch.Tensor, gather_ids: torch.Tensor) -> torch.Tensor:
    """The reward-model study notes' loss_v3: -mean log sigma(r[better] - r[worse]) over the (B, P) pairs.

    rewards (B, K), gather_ids (B, P, 2) long -> scalar. When there are no ties it equals
    `losses.ranking_loss(rewards, ranks)` with
    gather_ids = pair_labels_to_gather_ids(ranks_to_pair_labels(ranks)).

    >>> r = torch.tensor([[3., 1., 2.]])
    >>> round(ranking_loss_from_gather_ids(r, torch.tensor([[[0, 1], [0, 2], [2, 1]]])).item(), 4)
    0.2512
    """
    better = rewards.gather(1, gather_ids[..., 0])
    worse = rewards.gather(1, gather_ids[..., 1])
    return pairwise_loss(better, worse)
