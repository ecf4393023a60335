"""PPO policy and value losses: a naive loop, padding invariance, ratio = 1, a hand-worked example."""
import math

import pytest
import torch

from minirlhf.losses import ppo_policy_loss, ppo_value_loss


def random_batch(seed, B=4, T=7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logprobs = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    advantages = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) < 0.7).double()
    mask[0, 0] = 1.0                                     # at least one real token
    return logprobs, old, advantages, mask


def naive_policy(logprobs, old, adv, mask, eps):
    total = clipped = kl = ratio_sum = count = 0.0
    B, T = mask.shape
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            lp, olp, a = logprobs[b, t].item(), old[b, t].item(), adv[b, t].item()
            r = math.exp(lp - olp)
            unclipped, clip_term = -a * r, -a * min(max(r, 1 - eps), 1 + eps)
            total += max(unclipped, clip_term)
            clipped += float(clip_term > unclipped)
            kl += 0.5 * (lp - olp) ** 2
            ratio_sum += r
            count += 1
    return total / count, clipped / count, kl / count, ratio_sum / count


def naive_value(values, old, returns, mask, c):
    total = clipped = count = 0.0
    B, T = mask.shape
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            v, vo, R = values[b, t].item(), old[b, t].item(), returns[b, t].item()
            vc = vo + min(max(v - vo, -c), c)
            e1, e2 = (v - R) ** 2, (vc - R) ** 2
            total += max(e1, e2)
            clipped += float(e2 > e1)
            count += 1
    return 0.5 * total / count, clipped / count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_loss_matches_naive_loop(seed):
    logprobs, old, adv, mask = random_batch(seed)
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, cliprange=0.2)
    exp_loss, exp_clip, exp_kl, exp_ratio = naive_policy(logprobs, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx(exp_loss, rel=1e-10)
    assert stats["clipfrac"].item() == pytest.approx(exp_clip, rel=1e-10)
    assert stats["approx_kl"].item() == pytest.approx(exp_kl, rel=1e-10)
    assert stats["ratio_mean"].item() == pytest.approx(exp_ratio, rel=1e-10)
    assert 0 < exp_clip < 1                    # the case really mixes clipped and unclipped tokens


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_loss_matches_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    _, _, _, mask = random_batch(seed)
    values, old, returns = (torch.randn(4, 7, generator=g, dtype=torch.float64) for _ in range(3))
    loss, stats = ppo_value_loss(values, old, returns, mask, cliprange_value=0.2)
    exp_loss, exp_clip = naive_value(values, old, returns, mask, 0.2)
    assert loss.item() == pytest.approx(exp_loss, rel=1e-10)
    assert stats["vf_clipfrac"].item() == pytest.approx(exp_clip, rel=1e-10)
    assert 0 < exp_clip < 1


def pad(x, fill, n=3):
    return torch.cat([x, torch.full((x.shape[0], n), fill, dtype=x.dtype)], dim=1)


def test_padding_changes_nothing():
    logprobs, old, adv, mask = random_batch(5)
    base_loss, base_stats = ppo_policy_loss(logprobs, old, adv, mask, 0.2)
    # Garbage in padded columns: huge, infinite, NaN. exp(1e4) would overflow if it leaked.
    padded = ppo_policy_loss(pad(logprobs, 1e4), pad(old, -math.inf), pad(adv, math.nan),
                             pad(mask, 0.0), 0.2)
    assert padded[0].item() == pytest.approx(base_loss.item(), rel=1e-12)
    for k in base_stats:
        assert padded[1][k].item() == pytest.approx(base_stats[k].item(), rel=1e-12), k

    g = torch.Generator().manual_seed(6)
    values, old_v, returns = (torch.randn(4, 7, generator=g, dtype=torch.float64) for _ in range(3))
    base_v, base_vs = ppo_value_loss(values, old_v, returns, mask, 0.2)
    pad_v, pad_vs = ppo_value_loss(pad(values, 1e30), pad(old_v, math.nan), pad(returns, -math.inf),
                                   pad(mask, 0.0), 0.2)
    assert pad_v.item() == pytest.approx(base_v.item(), rel=1e-12)
    assert pad_vs["vf_clipfrac"].item() == pytest.approx(base_vs["vf_clipfrac"].item(), rel=1e-12)


def test_padding_gets_no_gradient_and_bool_mask_works():
    logprobs, old, adv, mask = random_batch(7)
    logprobs = pad(logprobs, 1e4).requires_grad_()   # exp(2e4) = inf if it leaked
    mask_b = pad(mask, 0.0).bool()
    loss, _ = ppo_policy_loss(logprobs, pad(old, -1e4), pad(adv, 3.0), mask_b, 0.2)
    loss.backward()
    assert torch.isfinite(logprobs.grad).all()
    assert (logprobs.grad[~mask_b] == 0).all()
    assert (logprobs.grad[mask_b] != 0).any()


def test_ratio_one_first_minibatch():
    _, old, adv, mask = random_batch(8)
    logprobs = old.clone().requires_grad_()
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, 0.2)
    assert stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0
    expected = -(adv * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert not any(v.requires_grad for v in stats.values())


def test_policy_loss_docstring_example():
    ratio = torch.tensor([[1.5, 0.5, 0.5]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3)
    loss, stats = ppo_policy_loss(ratio.log(), torch.zeros(1, 3, dtype=torch.float64), adv, mask, 0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 0.5) / 3, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)


def test_value_loss_hand_worked():
    values = torch.tensor([[1.0, 0.1, 123.0]], dtype=torch.float64)
    old = torch.zeros(1, 3, dtype=torch.float64)
    returns = torch.full((1, 3), 2.0, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = ppo_value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 0: v_clipped 0.2, max(1, 3.24) = 3.24; token 1: 3.61; token 2 is padding.
    assert loss.item() == pytest.approx(0.5 * (3.24 + 3.61) / 2, rel=1e-12)
    assert loss.item() == pytest.approx(1.7125, rel=1e-12)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------- GRPO-family options


def naive_grpo(logprobs, old, adv, mask, eps, eps_high, how, norm_len=None):
    """Per-token clipped terms with Python floats, then the chosen aggregation, one sequence at a time."""
    B, T = mask.shape
    per_seq = []
    for b in range(B):
        terms = []
        for t in range(T):
            if mask[b, t]:
                r = math.exp(logprobs[b, t].item() - old[b, t].item())
                a = adv[b, t].item()
                terms.append(max(-a * r, -a * min(max(r, 1 - eps), 1 + eps_high)))
        per_seq.append(terms)
    if how == "token_mean":
        return sum(map(sum, per_seq)) / sum(map(len, per_seq))
    if how == "sequence_mean":
        means = [sum(s) / len(s) for s in per_seq if s]
        return sum(means) / len(means)
    return sum(map(sum, per_seq)) / (B * (T if norm_len is None else norm_len))


@pytest.mark.parametrize("how", ["token_mean", "sequence_mean", "dr_grpo"])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_aggregations_and_clip_higher_match_loop(how, eps_high):
    for seed in range(3):
        logprobs, old, adv, mask = random_batch(seed)
        mask[1] = 0.0                                          # an empty row: skipped by sequence_mean
        loss, _ = ppo_policy_loss(logprobs, old, adv, mask, 0.2, cliprange_high=eps_high, aggregation=how)
        expected = naive_grpo(logprobs, old, adv, mask, 0.2, 0.2 if eps_high is None else eps_high, how)
        assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_aggregations_differ_and_norm_len():
    logprobs, old, adv, mask = random_batch(4)
    values = {how: ppo_policy_loss(logprobs, old, adv, mask, 0.2, aggregation=how)[0].item()
              for how in ("token_mean", "sequence_mean", "dr_grpo")}
    assert len(set(values.values())) == 3
    fixed, _ = ppo_policy_loss(logprobs, old, adv, mask, 0.2, aggregation="dr_grpo", norm_len=20)
    assert fixed.item() == pytest.approx(values["dr_grpo"] * 7 / 20, rel=1e-12)


@pytest.mark.parametrize("how", ["token_mean", "sequence_mean", "dr_grpo"])
def test_aggregations_ignore_padding(how):
    logprobs, old, adv, mask = random_batch(9)
    base, _ = ppo_policy_loss(logprobs, old, adv, mask, 0.2, cliprange_high=0.3, aggregation=how, norm_len=12)
    padded, _ = ppo_policy_loss(pad(logprobs, 1e4), pad(old, -math.inf), pad(adv, math.nan), pad(mask, 0.0),
                                0.2, cliprange_high=0.3, aggregation=how, norm_len=12)
    assert padded.item() == pytest.approx(base.item(), rel=1e-12)
    # an all-padding extra sequence changes nothing either, except Dr. GRPO's divisor B * L
    extra = [torch.cat([x, torch.full((1, 7), fill, dtype=x.dtype)]) for x, fill in
             ((logprobs, 5.0), (old, -5.0), (adv, math.nan), (mask, 0.0))]
    grown, _ = ppo_policy_loss(*extra, 0.2, cliprange_high=0.3, aggregation=how, norm_len=12)
    scale = 4 / 5 if how == "dr_grpo" else 1.0
    assert grown.item() == pytest.approx(base.item() * scale, rel=1e-12)


def test_cliprange_high_none_is_todays_loss_exactly():
    for seed in range(5):
        logprobs, old, adv, mask = random_batch(seed)
        default = ppo_policy_loss(logprobs, old, adv, mask, 0.2)
        explicit = ppo_policy_loss(logprobs, old, adv, mask, 0.2, cliprange_high=None, aggregation="token_mean")
        symmetric = ppo_policy_loss(logprobs, old, adv, mask, 0.2, cliprange_high=0.2)
        ratio = torch.exp((logprobs - old) * mask)
        today = (torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)) * mask).sum() / mask.sum()
        for loss, stats in (explicit, symmetric):
            assert torch.equal(loss, default[0])
            assert all(torch.equal(stats[k], default[1][k]) for k in stats)
        assert default[0].item() == pytest.approx(today.item(), rel=1e-14)


def test_clip_higher_hand_worked():
    # A = +1, ratio 1.25: clipped at 1.2 by symmetric PPO, not by eps_high = 0.28; the low side is unchanged.
    ratio = torch.tensor([[1.25, 0.7]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    zeros, mask = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2)
    sym, s_stats = ppo_policy_loss(ratio.log(), zeros, adv, mask, 0.2)
    high, h_stats = ppo_policy_loss(ratio.log(), zeros, adv, mask, 0.2, cliprange_high=0.28)
    assert sym.item() == pytest.approx((-1.2 + 0.8) / 2, rel=1e-12)
    assert high.item() == pytest.approx((-1.25 + 0.8) / 2, rel=1e-12)
    assert s_stats["clipfrac"].item() == 1.0 and h_stats["clipfrac"].item() == 0.5


def test_sequence_level_advantages_broadcast():
    logprobs, old, adv, mask = random_batch(10)
    seq_adv = adv[:, 0]
    full = ppo_policy_loss(logprobs, old, seq_adv[:, None].expand_as(logprobs), mask, 0.2, aggregation="sequence_mean")
    for a in (seq_adv, seq_adv[:, None]):
        loss, stats = ppo_policy_loss(logprobs, old, a, mask, 0.2, aggregation="sequence_mean")
        assert torch.equal(loss, full[0]) and all(torch.equal(stats[k], full[1][k]) for k in stats)


def test_grpo_first_step_loss_is_zero_but_gradient_is_not():
    from minirlhf.advantages import group_advantages
    _, old, _, mask = random_batch(11, B=8, T=6)
    mask[:, 0] = 1.0
    adv = group_advantages(torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1], dtype=torch.float64), group_size=4)
    logprobs = old.clone().requires_grad_()
    loss, _ = ppo_policy_loss(logprobs, old, adv, mask, 0.2, aggregation="sequence_mean")
    assert abs(loss.item()) < 1e-12                         # -mean(A) = 0
    token_mean, _ = ppo_policy_loss(old, old, adv, mask, 0.2)
    assert token_mean.item() == pytest.approx(-(adv[:, None] * mask).sum().item() / mask.sum().item())
    loss.backward()
    # d loss / d log pi(a_t) = -A_i / (B |y_i|) on real tokens: up for A > 0, down for A < 0
    expected = -adv[:, None] / (8 * mask.sum(1, keepdim=True)) * mask
    assert torch.allclose(logprobs.grad, expected, rtol=1e-12, atol=0)
    assert logprobs.grad.abs().max() > 0.01


def test_masked_aggregate_docstring_example_and_bad_name():
    from minirlhf.ops import masked_aggregate
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, math.nan, math.inf, -math.inf]])
    m = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert masked_aggregate(x, m, "token_mean").item() == pytest.approx(1.6)
    assert masked_aggregate(x, m, "sequence_mean").item() == pytest.approx(2.5)
    assert masked_aggregate(x, m, "dr_grpo").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="token_mean, sequence_mean, dr_grpo"):
        masked_aggregate(x, m, "seq_mean_token_sum")
    with pytest.raises(ValueError, match="token_mean, sequence_mean, dr_grpo"):
        ppo_policy_loss(x, x, x, m, 0.2, aggregation="bnpo")
