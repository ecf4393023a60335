import math

import torch

from minirlhf.ops import (entropy_from_logits, last_true_index, logprobs_from_logits, masked_mean,
                          masked_var, masked_whiten, shifted_logprobs)


def rand_masked(seed=0, B=4, T=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[:, 0] = 1
    return x, mask


def test_masked_stats_against_a_loop():
    x, mask = rand_masked()
    vals = [x[b, t].item() for b in range(4) for t in range(7) if mask[b, t]]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / len(vals)
    assert math.isclose(masked_mean(x, mask).item(), mean, rel_tol=1e-5)
    assert math.isclose(masked_var(x, mask, unbiased=False).item(), var, rel_tol=1e-5)
    assert math.isclose(masked_var(x, mask).item(), var * len(vals) / (len(vals) - 1), rel_tol=1e-5)
    row = masked_mean(x, mask, dim=1)
    for b in range(4):
        rv = [x[b, t].item() for t in range(7) if mask[b, t]]
        assert math.isclose(row[b].item(), sum(rv) / len(rv), rel_tol=1e-5)


def test_padding_changes_no_statistic():
    x, mask = rand_masked(1)
    xp = torch.cat([x, 1e6 * torch.ones(4, 3)], 1)  # garbage in padded columns
    mp = torch.cat([mask, torch.zeros(4, 3)], 1)
    assert torch.allclose(masked_mean(xp, mp), masked_mean(x, mask))
    assert torch.allclose(masked_var(xp, mp), masked_var(x, mask))
    torch.testing.assert_close(masked_whiten(xp, mp)[:, :7], masked_whiten(x, mask))
    assert masked_whiten(xp, mp)[:, 7:].eq(0).all()


def test_whiten():
    x, mask = rand_masked(2)
    w = masked_whiten(x, mask)
    assert abs(masked_mean(w, mask).item()) < 1e-6
    assert abs(masked_var(w, mask, unbiased=False).item() - 1) < 1e-4
    kept = masked_whiten(x, mask, shift_mean=False)
    assert math.isclose(masked_mean(kept, mask).item(), masked_mean(x, mask).item(), rel_tol=1e-4)


def test_logprobs_and_entropy_against_softmax():
    logits = torch.randn(3, 5, 11)
    tokens = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), ref)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))


def test_shift_scores_token_i_with_logits_i_minus_1():
    logits = torch.randn(2, 6, 9)
    ids = torch.randint(0, 9, (2, 6))
    out = shifted_logprobs(logits, ids)
    assert out.shape == (2, 5)
    for b in range(2):
        for i in range(1, 6):
            expected = torch.log_softmax(logits[b, i - 1], -1)[ids[b, i]]
            assert torch.isclose(out[b, i - 1], expected)


def test_last_true_index():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0]])
    assert last_true_index(mask).tolist() == [2, 3, 2]


def test_logprobs_and_entropy_share_one_logsumexp_and_agree():
    from minirlhf.ops import logprobs_and_entropy
    logits = 5 * torch.randn(3, 4, 13)
    tokens = torch.randint(0, 13, (3, 4))
    lp, ent = logprobs_and_entropy(logits, tokens)
    torch.testing.assert_close(lp, logprobs_from_logits(logits, tokens))
    z = logits.double()  # float64 reference: lse − Σ p·z cancels when the entropy is near 0
    expected = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
    torch.testing.assert_close(ent.double(), expected, atol=5e-5, rtol=0)
