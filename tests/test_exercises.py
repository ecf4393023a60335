"""The classroom checks: each passes minirlhf's own function and fails a subtly wrong one.

A check that let a wrong implementation through would teach the bug, so every check here is run
against the mistakes students (and frameworks) actually make.
"""
import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minirlhf.exercises import (check_compute_gae, check_kl_penalty, check_masked_mean, check_pairwise_loss,
                                check_ppo_policy_loss, check_ranking_loss, check_shape_rewards)
from minirlhf.exercises.blank import BEGIN, END, STUB, blank_notebook, blank_source
from minirlhf.losses import pairwise_loss, plackett_luce_loss, ppo_policy_loss, ranking_loss, sigmoid_rank_loss
from minirlhf.ops import last_true_index, masked_mean
from minirlhf.ppo import compute_gae, kl_penalty, shape_rewards

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "exercises_rlhf.ipynb"


def fails(check, fn, *words):
    """check(fn) raises AssertionError whose message names the exercise and contains every word."""
    with pytest.raises(AssertionError) as info:
        check(fn)
    message = str(info.value)
    assert "case '" in message, message
    for w in words:
        assert w in message, message
    return message


# ------------------------------------------------------------------------------------------ masked mean

def test_masked_mean_check_passes_the_reference(capsys):
    check_masked_mean(masked_mean)
    out = capsys.readouterr().out
    assert out.startswith("✔ masked_mean: all ") and out.rstrip().endswith("checks passed")


def test_masked_mean_check_catches_ignoring_the_mask():
    fails(check_masked_mean, lambda x, mask, dim=None: x.mean() if dim is None else x.mean(dim), "masked_mean")


def test_masked_mean_check_catches_dividing_by_all_entries():
    def wrong(x, mask, dim=None):
        s = x * mask
        return s.mean() if dim is None else s.mean(dim)
    fails(check_masked_mean, wrong)


def test_masked_mean_check_catches_nan_on_an_all_padding_row():
    def wrong(x, mask, dim=None):
        mask = mask.to(x.dtype)
        return (x * mask).sum() / mask.sum() if dim is None else (x * mask).sum(dim) / mask.sum(dim)
    fails(check_masked_mean, wrong, "all-padding row")


# ------------------------------------------------------------------------------------------ pairwise loss

def test_pairwise_loss_check_passes_the_reference(capsys):
    check_pairwise_loss(pairwise_loss)
    assert "✔ pairwise_loss: all" in capsys.readouterr().out


def test_pairwise_loss_check_catches_sigma_instead_of_log_sigma():
    fails(check_pairwise_loss, lambda rc, rr: -torch.sigmoid(rc - rr).mean())


def test_pairwise_loss_check_catches_the_gradient_of_sigma_even_when_values_match():
    """A loss whose values match but whose gradient is σ's: only the gradient case can catch it."""
    def wrong(rc, rr):
        ref = -F.logsigmoid(rc - rr)
        fake = -torch.sigmoid(rc - rr)
        return (ref.detach() + fake - fake.detach()).mean()
    fails(check_pairwise_loss, wrong, "gradient", "confident")


def test_pairwise_loss_check_catches_log_of_sigmoid_underflow():
    fails(check_pairwise_loss, lambda rc, rr: -torch.log(torch.sigmoid(rc - rr)).mean(), "logsigmoid")


def test_pairwise_loss_check_catches_the_swapped_sign():
    fails(check_pairwise_loss, lambda rc, rr: -F.logsigmoid(rr - rc).mean())


def test_pairwise_loss_check_catches_a_sum_over_the_batch():
    fails(check_pairwise_loss, lambda rc, rr: -F.logsigmoid(rc - rr).sum())


# ------------------------------------------------------------------------------------------ ranking loss

def test_ranking_loss_check_passes_the_reference(capsys):
    check_ranking_loss(ranking_loss)
    assert "✔ ranking_loss: all" in capsys.readouterr().out


def test_ranking_loss_check_catches_column_order_instead_of_ranks():
    def wrong(rewards, ranks):
        K = rewards.shape[1]
        i, j = torch.triu_indices(K, K, 1)
        return -F.logsigmoid(rewards[:, i] - rewards[:, j]).mean()
    fails(check_ranking_loss, wrong)


@pytest.mark.parametrize("wrong", [sigmoid_rank_loss, plackett_luce_loss])
def test_ranking_loss_check_catches_other_losses(wrong):
    fails(check_ranking_loss, wrong)


def test_ranking_loss_check_catches_adjacent_pairs_only():
    def wrong(rewards, ranks):
        ordered = rewards.gather(1, ranks.argsort(1))
        return -F.logsigmoid(ordered[:, :-1] - ordered[:, 1:]).mean()
    fails(check_ranking_loss, wrong)


# ------------------------------------------------------------------------------------------ KL estimators

def test_kl_penalty_check_passes_the_reference(capsys):
    check_kl_penalty(kl_penalty)
    assert "✔ kl_penalty: all" in capsys.readouterr().out


def test_kl_penalty_check_catches_the_wrong_sign():
    fails(check_kl_penalty, lambda lp, ref, est: -kl_penalty(lp, ref, est) if est == "k1" else kl_penalty(lp, ref, est),
          "k1")


def test_kl_penalty_check_catches_k3_in_the_wrong_direction():
    def wrong(lp, ref, est):
        if est != "k3":
            return kl_penalty(lp, ref, est)
        log_r = lp - ref
        return torch.expm1(log_r) - log_r
    fails(check_kl_penalty, wrong, "k3")


def test_kl_penalty_check_catches_k2_without_the_half():
    fails(check_kl_penalty, lambda lp, ref, est: (ref - lp) ** 2 if est == "k2" else kl_penalty(lp, ref, est), "k2")


# ------------------------------------------------------------------------------------------ GAE

def gae_loop(rewards, values, mask, gamma, lam, use_mask=True, discount_trace=True, add_values=True):
    """The textbook loop with switches for the classic mistakes."""
    B, T = rewards.shape
    m = mask if use_mask else torch.ones_like(mask)
    adv = torch.zeros_like(rewards)
    next_adv = next_v = torch.zeros(B)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_v * 1.0 - values[:, t]
        next_adv = (delta + (gamma if discount_trace else 1.0) * lam * next_adv) * m[:, t]
        adv[:, t] = next_adv
        next_v = values[:, t] * m[:, t]
    return adv, (adv + values) * m if add_values else adv


def test_compute_gae_check_passes_the_reference(capsys):
    check_compute_gae(compute_gae)
    assert "✔ compute_gae: all" in capsys.readouterr().out


def test_compute_gae_check_passes_a_correct_loop(capsys):
    check_compute_gae(lambda r, v, m, g, l: gae_loop(r, v, m, g, l))
    assert "✔ compute_gae" in capsys.readouterr().out


def test_compute_gae_check_catches_unmasked_padding():
    msg = fails(check_compute_gae, lambda r, v, m, g, l: gae_loop(r, v, m, g, l, use_mask=False), "padding")
    assert "garbage" in msg


def test_compute_gae_check_catches_a_trace_without_gamma():
    fails(check_compute_gae, lambda r, v, m, g, l: gae_loop(r, v, m, g, l, discount_trace=False), "γ=0.99")


def test_compute_gae_check_catches_returns_without_values():
    fails(check_compute_gae, lambda r, v, m, g, l: gae_loop(r, v, m, g, l, add_values=False), "returns")


# ------------------------------------------------------------------------------------------ PPO loss

def ppo_variant(logprobs, old, adv, mask, eps, reduce=torch.max, masked=True):
    ratio = torch.exp(torch.where(mask.bool(), logprobs - old, torch.zeros_like(old)))
    adv = torch.where(mask.bool(), adv, torch.zeros_like(adv))
    losses = reduce(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps, 1 + eps))
    return masked_mean(losses, mask) if masked else losses.mean()


def test_ppo_policy_loss_check_passes_the_reference(capsys):
    check_ppo_policy_loss(ppo_policy_loss)
    assert "✔ ppo_policy_loss: all" in capsys.readouterr().out


def test_ppo_policy_loss_check_catches_min_instead_of_max():
    fails(check_ppo_policy_loss, lambda *a: ppo_variant(*a, reduce=torch.min))


def test_ppo_policy_loss_check_catches_a_mean_over_padding():
    fails(check_ppo_policy_loss, lambda *a: ppo_variant(*a, masked=False), "padding")


def test_ppo_policy_loss_check_catches_no_clipping():
    fails(check_ppo_policy_loss, lambda lp, old, adv, mask, eps: masked_mean(-adv * torch.exp(lp - old), mask))


def test_ppo_policy_loss_check_catches_gradient_through_clipped_tokens():
    """Values right, gradient wrong: the clipped surrogate replaced by one that keeps the unclipped gradient."""
    def wrong(lp, old, adv, mask, eps):
        right = ppo_variant(lp, old, adv, mask, eps)
        leak = masked_mean(-adv * torch.exp(lp - old), mask)
        return right.detach() + leak - leak.detach()
    fails(check_ppo_policy_loss, wrong, "d loss / d logprob")


# ------------------------------------------------------------------------------------------ reward shaping

def test_shape_rewards_check_passes_the_reference(capsys):
    check_shape_rewards(shape_rewards)
    assert "✔ shape_rewards: all" in capsys.readouterr().out


def shaping_variant(scores, lp, ref, mask, beta, where="last_real", sign=-1.0, mask_kl=True):
    kl = lp - ref
    if mask_kl:
        kl = kl * mask
    rewards = sign * beta * kl
    col = {"last_real": last_true_index(mask), "last_column": torch.full_like(scores, mask.shape[1] - 1).long(),
           "first": torch.zeros_like(scores).long()}[where]
    rewards = rewards + F.one_hot(col, mask.shape[1]) * scores[:, None]
    return rewards, kl


def test_shape_rewards_check_catches_the_score_on_the_last_column():
    fails(check_shape_rewards, lambda *a: shaping_variant(*a, where="last_column"), "last REAL token")


def test_shape_rewards_check_catches_the_score_on_the_first_token():
    fails(check_shape_rewards, lambda *a: shaping_variant(*a, where="first"))


def test_shape_rewards_check_catches_a_kl_bonus():
    fails(check_shape_rewards, lambda *a: shaping_variant(*a, sign=+1.0))


def test_shape_rewards_check_catches_unmasked_kl():
    fails(check_shape_rewards, lambda *a: shaping_variant(*a, mask_kl=False), "garbage")


def test_shape_rewards_check_catches_in_place_writes():
    def wrong(scores, lp, ref, mask, beta):
        lp -= ref                                                   # writes into the caller's tensor
        rewards = -beta * lp * mask
        rewards[torch.arange(len(scores)), last_true_index(mask)] += scores
        return rewards
    fails(check_shape_rewards, wrong, "in place")


# ------------------------------------------------------------------------------------------ the notebook's stubs

def test_blank_source_replaces_solution_blocks_with_a_stub():
    src = f"def f(x):\n    \"\"\"doc\"\"\"\n    {BEGIN}\n    y = x + 1\n    return y\n    {END}\n\nprint(1)\n"
    out = blank_source(src)
    assert out == f"def f(x):\n    \"\"\"doc\"\"\"\n    {STUB}\n\nprint(1)\n"
    with pytest.raises(ValueError):
        blank_source(f"    {BEGIN}\n    x = 1\n")


def test_blank_notebook_removes_every_solution_and_keeps_valid_code(tmp_path):
    out = tmp_path / "blank.ipynb"
    n = blank_notebook(NOTEBOOK, out)
    assert n >= 7  # one block per exercise at least
    nb = json.loads(out.read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert sum(src.count(STUB) for src in code) == n
    for src in code:
        assert BEGIN not in src and END not in src
        ast.parse(src)                                              # every stub cell is still valid Python
