"""GRPO and RLOO advantages against a per-group Python loop, their invariants, and the refusals."""
import math
import statistics

import pytest
import torch

from minirlhf.advantages import group_advantages, rloo_advantages


def loop_grpo(rewards, G, scale, eps=1e-4):
    r = rewards.tolist()
    batch_std = statistics.stdev(r)                                   # unbiased, like torch.std
    out = []
    for start in range(0, len(r), G):
        group = r[start:start + G]
        mean = sum(group) / G
        std = {"group": statistics.stdev(group), "batch": batch_std, "none": None}[scale]
        out += [(x - mean) / (std + eps) if std is not None else x - mean for x in group]
    return out


def loop_rloo(rewards, G):
    r = rewards.tolist()
    out = []
    for start in range(0, len(r), G):
        group = r[start:start + G]
        for i, x in enumerate(group):
            others = [y for j, y in enumerate(group) if j != i]
            out.append(x - sum(others) / len(others))
    return out


def random_rewards(seed, n_prompts=5, G=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_prompts * G, generator=g, dtype=torch.float64) * 2 + 1


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("G", [2, 3, 8])
def test_grpo_matches_loop(scale, G):
    rewards = random_rewards(G, G=G)
    got = group_advantages(rewards, G, scale=scale)
    assert got.tolist() == pytest.approx(loop_grpo(rewards, G, scale), rel=1e-10)


@pytest.mark.parametrize("G", [2, 3, 8])
def test_rloo_matches_loop_and_sums_to_zero_per_group(G):
    rewards = random_rewards(10 + G, G=G)
    got = rloo_advantages(rewards, G)
    assert got.tolist() == pytest.approx(loop_rloo(rewards, G), rel=1e-10)
    assert torch.allclose(got.view(-1, G).sum(1), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    # and it is the GRPO "none" advantage scaled by G/(G-1)
    assert torch.allclose(got, group_advantages(rewards, G, scale="none") * G / (G - 1), rtol=1e-12)


def test_docstring_examples():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert group_advantages(r, 4).tolist() == pytest.approx([expected, -expected, -expected, expected])
    assert expected == pytest.approx(0.8659, abs=1e-4)
    assert group_advantages(r, 4, scale="none").tolist() == [0.5, -0.5, -0.5, 0.5]
    assert rloo_advantages(torch.tensor([3.0, 0.0, 0.0]), 3).tolist() == [3.0, -1.5, -1.5]


def test_group_standardised_advantages_have_zero_mean_and_unit_std():
    rewards = random_rewards(3, G=6)
    adv = group_advantages(rewards, 6, eps=0.0).view(-1, 6)
    assert torch.allclose(adv.mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(adv.std(1), torch.ones(5, dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_variance_group_gives_zero_advantages(scale):
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.3, 0.3, 0.3, 0.3, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    adv = group_advantages(rewards, 4, scale=scale)
    assert torch.isfinite(adv).all()
    assert torch.allclose(adv[:8], torch.zeros(8, dtype=torch.float64), atol=1e-9)
    assert (adv[8:].abs() > 0.4).all()                    # the mixed group still gets a signal
    assert torch.isfinite(group_advantages(torch.ones(8), 4, scale=scale)).all()   # all-equal batch too
    assert (rloo_advantages(rewards, 4)[:4] == 0).all()


def test_groups_are_contiguous_and_independent():
    rewards = random_rewards(4, n_prompts=3, G=4)
    shifted = rewards.clone()
    shifted[4:8] += 100.0                                  # move one prompt's rewards only
    for fn in (lambda r: group_advantages(r, 4), lambda r: rloo_advantages(r, 4)):
        assert torch.allclose(fn(shifted), fn(rewards), rtol=1e-9)
    # a non-contiguous reading (prompt-major vs sample-major) would give different numbers
    interleaved = rewards.view(4, 3).T.reshape(-1)
    assert not torch.allclose(group_advantages(interleaved, 4), group_advantages(rewards, 4))


def test_refusals():
    with pytest.raises(ValueError, match=r"at least 2 samples per prompt \(group_size=1\).*every advantage is 0"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="n_prompts"):
        group_advantages(torch.zeros(7), 2)
    with pytest.raises(ValueError, match="n_prompts"):
        rloo_advantages(torch.zeros(7), 2)
    with pytest.raises(ValueError, match="n_prompts"):
        group_advantages(torch.zeros(2, 4), 4)
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.zeros(4), 2, scale="token")
