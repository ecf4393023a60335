"""The classroom exercises work in both directions: every reference solution passes its check, every stub
fails it, and the mistakes students (and frameworks) actually make fail it with a hint naming the mistake;
grade's output. (The blank tool and the students' notebook are test_exercises_notebook.py.)
"""
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from minirlhf import exercises
from minirlhf.advantages import compute_gae, group_advantages, kl_penalty, shape_rewards
from minirlhf.exercises import EXERCISES, grade
from minirlhf.exercises.blank import BEGIN, END, blank_source
from minirlhf.exercises.harness import show
from minirlhf.losses import (dpo_loss, pairwise_loss, plackett_luce_loss, ppo_policy_loss, ranking_loss,
                             sigmoid_rank_loss)
from minirlhf.ops import last_true_index, logprobs_from_logits, masked_mean, masked_whiten, shifted_logprobs
from minirlhf.sampling import filter_logits
from minirlhf.scaling_laws import best_of_n_expectation

REFERENCE = {  # minirlhf's own functions, with the students' signatures
    "masked_mean": masked_mean, "masked_whiten": masked_whiten, "shifted_logprobs": shifted_logprobs,
    "top_p_filter": lambda logits, top_p: filter_logits(logits, top_p=top_p),
    "pairwise_loss": pairwise_loss, "ranking_loss": ranking_loss, "kl_penalty": kl_penalty,
    "shape_rewards": shape_rewards, "compute_gae": compute_gae, "ppo_policy_loss": ppo_policy_loss,
    "dpo_loss": lambda pc, pr, rc, rr, beta: dpo_loss(pc, pr, rc, rr, beta),
    "best_of_n_expectation": best_of_n_expectation, "group_advantages": group_advantages,
}


def check(name):
    return getattr(exercises, f"check_{name}")


def fails(name, fn, *words):
    """check_<name>(fn) raises AssertionError whose message names the exercise and contains every word."""
    with pytest.raises(AssertionError) as info:
        check(name)(fn)
    message = str(info.value)
    assert message.startswith(name), message
    for w in words:
        assert w in message, message
    return message


def bare_stub(*args, **kwargs):
    raise NotImplementedError  # your code here


# ------------------------------------------------------------------------------------------ both directions

def test_every_exercise_has_a_check_in_all_and_a_reference():
    assert exercises.__all__ == [f"check_{n}" for n in EXERCISES]
    public = {n for n in dir(exercises) if n.startswith("check_")}
    assert public == set(exercises.__all__)
    assert set(REFERENCE) == set(EXERCISES)


@pytest.mark.parametrize("name", EXERCISES)
def test_the_reference_passes(name, capsys):
    check(name)(REFERENCE[name])
    out = capsys.readouterr().out
    match = re.fullmatch(rf"✔ {name}: all (\d+) checks passed\n", out)
    assert match and int(match.group(1)) >= 10, out


@pytest.mark.parametrize("name", EXERCISES)
def test_the_stub_fails(name):
    fails(name, bare_stub, "not implemented yet")


# ------------------------------------------------------------------------------------------ the wrong answers

def whiten_over_padding(x, mask):
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-8) * mask


def whiten_bessel(x, mask):
    real = x[mask.bool()]
    return (x - real.mean()) / torch.sqrt(real.var() + 1e-8) * mask                   # torch.var is unbiased


def whiten_unmasked_output(x, mask):
    mean = masked_mean(x, mask)
    return (x - mean) / torch.sqrt(masked_mean((x - mean) ** 2, mask) + 1e-8)


def log_of_softmax(logits, ids):
    return torch.log(torch.softmax(logits[:, :-1], -1)).gather(-1, ids[:, 1:, None]).squeeze(-1)


def top_p_without_the_crossing_token(logits, top_p):
    """The classic: remove where the cumulative mass exceeds top_p, without shifting by one."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    remove = sorted_logits.softmax(-1).cumsum(-1) > top_p
    remove[..., 0] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def top_p_in_sorted_order(logits, top_p):
    sorted_logits, _ = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(-1)
    return logits.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))


def pairwise_loss_with_sigma_gradient(rc, rr):
    """Values right, gradient σ's: only the gradient case can catch it."""
    fake = -torch.sigmoid(rc - rr)
    return (-F.logsigmoid(rc - rr).detach() + fake - fake.detach()).mean()


def ranking_by_columns(rewards, ranks):
    i, j = torch.triu_indices(rewards.shape[1], rewards.shape[1], 1)
    return -F.logsigmoid(rewards[:, i] - rewards[:, j]).mean()


def ranking_adjacent_only(rewards, ranks):
    ordered = rewards.gather(1, ranks.argsort(1))
    return -F.logsigmoid(ordered[:, :-1] - ordered[:, 1:]).mean()


def ranking_with_sigma(rewards, ranks):
    pairs = torch.combinations(torch.arange(rewards.shape[1]), r=2)
    i, j = pairs[:, 0], pairs[:, 1]
    diff = torch.where(ranks[:, i] < ranks[:, j], rewards[:, i] - rewards[:, j], rewards[:, j] - rewards[:, i])
    return -torch.sigmoid(diff).mean()


def kl_but(est, wrong):
    return lambda lp, ref, e: wrong(lp, ref) if e == est else kl_penalty(lp, ref, e)


def shaping(scores, lp, ref, mask, beta, where="last_real", sign=-1.0, mask_kl=True):
    kl = (lp - ref) * mask if mask_kl else lp - ref
    col = {"last_real": last_true_index(mask), "last_column": torch.full_like(scores, mask.shape[1] - 1).long(),
           "first": torch.zeros_like(scores).long()}[where]
    return sign * beta * kl + F.one_hot(col, mask.shape[1]) * scores[:, None], kl


def shaping_in_place(scores, lp, ref, mask, beta):
    lp -= ref                                                                       # writes into the caller's tensor
    rewards = -beta * lp * mask
    rewards[torch.arange(len(scores)), last_true_index(mask)] += scores
    return rewards


def gae_loop(rewards, values, mask, gamma, lam, use_mask=True, trace_gamma=True, delta_gamma=True, add_values=True):
    """The textbook loop with switches for the classic mistakes."""
    m = mask if use_mask else torch.ones_like(mask)
    adv = torch.zeros_like(rewards)
    next_adv = next_v = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + (gamma if delta_gamma else 1.0) * next_v - values[:, t]
        next_adv = (delta + (gamma if trace_gamma else 1.0) * lam * next_adv) * m[:, t]
        adv[:, t] = next_adv
        next_v = values[:, t] * m[:, t]
    return adv, (adv + values) * mask if add_values else adv


def ppo(logprobs, old, adv, mask, eps, reduce=torch.max, masked=True, clip_only=False, clip=True):
    ratio = torch.exp(torch.where(mask.bool(), logprobs - old, torch.zeros_like(old)))
    adv = torch.where(mask.bool(), adv, torch.zeros_like(adv))
    clipped = -adv * torch.clamp(ratio, 1 - eps, 1 + eps) if clip else -adv * ratio
    losses = clipped if clip_only else reduce(-adv * ratio, clipped)
    return masked_mean(losses, mask) if masked else losses.mean()


def ppo_gradient_through_clipped_tokens(lp, old, adv, mask, eps):
    leak = masked_mean(-adv * torch.exp(lp - old), mask)
    return ppo(lp, old, adv, mask, eps).detach() + leak - leak.detach()


def dpo(pc, pr, rc, rr, beta, reference=True, use_beta=True, loss=F.logsigmoid, detach=True, reduce=None):
    if not reference:
        rc, rr = torch.zeros_like(rc), torch.zeros_like(rr)
    chosen, rejected = pc - rc, pr - rr
    losses = -loss((beta if use_beta else 1.0) * (chosen - rejected))
    chosen, rejected = (chosen.detach(), rejected.detach()) if detach else (chosen, rejected)
    return losses if reduce is None else reduce(losses), beta * chosen, beta * rejected


def best_of_n(proxy, value, n, weights="right", descending=False, sort_by="proxy", dtype=torch.float64):
    """The sum of weights × values sorted by `sort_by`, with switches for the classic mistakes."""
    M = len(proxy)
    i = torch.arange(1, M + 1, dtype=dtype)

    def log_comb(a, b):
        return torch.lgamma(a + 1) - math.lgamma(b + 1) - torch.lgamma(a - b + 1)
    total = log_comb(torch.tensor(float(M), dtype=dtype), n)
    w = {"right": lambda: torch.where(i >= n, (log_comb((i - 1).clamp(min=n - 1), n - 1) - total).exp(), 0.0),
         "shifted": lambda: torch.where(i >= n - 1, (log_comb(i.clamp(min=n - 1), n - 1) - total).exp(), 0.0),
         "with_replacement": lambda: (i / M) ** n - ((i - 1) / M) ** n,
         "exp_first": lambda: torch.where(i >= n, log_comb((i - 1).clamp(min=n - 1), n - 1).exp() / total.exp(), 0.0),
         }[weights]()
    key = proxy if sort_by == "proxy" else value
    return (w * value.to(dtype)[torch.sort(key, descending=descending).indices]).sum()


def group_adv(rewards, G, scale, unbiased=True, baseline="group", layout="rows", eps=1e-4, std="group"):
    """GRPO's group advantage with one of the mistakes students make (the right one with the defaults)."""
    grouped = rewards.view(-1, G) if layout == "rows" else rewards.view(G, -1).t()
    mean = rewards.mean() if baseline == "batch" else grouped.mean(1, keepdim=True)
    centred = grouped - mean
    if scale == "group":
        spread = rewards.std(unbiased=unbiased) if std == "batch" or baseline == "batch" else grouped.std(
            1, unbiased=unbiased, keepdim=True)
        centred = centred / (spread + eps)
    return centred.reshape(-1)


WRONG = [  # (exercise, wrong answer, words the failure message must contain)
    ("masked_mean", lambda x, m, dim=None: x.mean() if dim is None else x.mean(dim), "padding included"),
    ("masked_mean", lambda x, m, dim=None: (x * m).mean() if dim is None else (x * m).mean(dim), "ALL entries"),
    ("masked_mean", lambda x, m, dim=None: (x * m).sum() / m.sum() if dim is None else (x * m).sum(dim) / m.sum(dim),
     "all-padding row", "clamp"),
    ("masked_mean", lambda x, m, dim=None: masked_mean(x.mul_(m), m, dim), "in place", "x = x * mask"),
    ("masked_whiten", whiten_over_padding, "include the padding"),
    ("masked_whiten", whiten_bessel, "unbiased variance"),
    ("masked_whiten", whiten_unmasked_output, "multiply the result by the mask"),
    ("shifted_logprobs", lambda z, ids: logprobs_from_logits(z[:, 1:], ids[:, 1:]),
     "logits at position i scored token i"),
    ("shifted_logprobs", lambda z, ids: logprobs_from_logits(z[:, :-1], ids[:, :-1]), "but not the tokens"),
    ("shifted_logprobs", lambda z, ids: torch.softmax(z[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1),
     "probabilities, not log-probabilities"),
    ("shifted_logprobs", log_of_softmax, "underflows", "log_softmax"),
    ("shifted_logprobs", logprobs_from_logits, "expected shape", "(B, T−1)"),
    ("top_p_filter", top_p_without_the_crossing_token, "crosses the threshold"),
    ("top_p_filter", top_p_in_sorted_order, "SORTED order"),
    ("top_p_filter", lambda z, p: torch.where(torch.isinf(f := filter_logits(z, top_p=p)), 0.0, f), "float('-inf')"),
    ("pairwise_loss", lambda rc, rr: -torch.sigmoid(rc - rr).mean(), "σ in place of log σ", "−σ(Δ)"),
    ("pairwise_loss", lambda rc, rr: (1 - torch.sigmoid(rc - rr)).mean(), "σ in place of log σ"),
    ("pairwise_loss", pairwise_loss_with_sigma_gradient, "gradient", "confident"),
    ("pairwise_loss", lambda rc, rr: -torch.log(torch.sigmoid(rc - rr)).mean(), "logsigmoid"),
    ("pairwise_loss", lambda rc, rr: -F.logsigmoid(rr - rc).mean(), "wrong way round"),
    ("pairwise_loss", lambda rc, rr: -F.logsigmoid(rc - rr).sum(), "summed"),
    ("ranking_loss", lambda r, ranks: ranking_loss(r, r.shape[1] - 1 - ranks), "ranks in reverse",
     "rank 0 is the BEST"),
    ("ranking_loss", ranking_by_columns, "column order"),
    ("ranking_loss", lambda r, ranks: ranking_by_columns(r.gather(1, ranks), ranks), "rank OF candidate k"),
    ("ranking_loss", ranking_with_sigma, "σ in place of log σ"),
    ("ranking_loss", ranking_adjacent_only, "neighbouring"),
    ("ranking_loss", sigmoid_rank_loss),
    ("ranking_loss", plackett_luce_loss),
    ("kl_penalty", kl_but("k1", lambda lp, ref: ref - lp), "k1 has the sign flipped"),
    ("kl_penalty", kl_but("k2", lambda lp, ref: (ref - lp) ** 2), "k2 has no ½"),
    ("kl_penalty", kl_but("k3", lambda lp, ref: torch.expm1(lp - ref) - (lp - ref)), "k3 uses r the wrong way round"),
    ("shape_rewards", lambda *a: shaping(*a, where="last_column"), "last COLUMN", "trl #1893"),
    ("shape_rewards", lambda *a: shaping(*a, where="first"), "first token"),
    ("shape_rewards", lambda *a: shaping(*a, sign=+1.0), "wrong sign"),
    ("shape_rewards", lambda *a: shaping(*a, mask_kl=False), "garbage", "multiply by the mask"),
    ("shape_rewards", shaping_in_place, "in place"),
    ("compute_gae", lambda *a: gae_loop(*a, use_mask=False), "garbage", "multiply next_value and next_advantage"),
    ("compute_gae", lambda *a: gae_loop(*a, trace_gamma=False), "λ without γ"),
    ("compute_gae", lambda *a: gae_loop(*a, delta_gamma=False), "not discounted by γ"),
    ("compute_gae", lambda *a: gae_loop(*a, add_values=False), "returns = advantages + values"),
    ("ppo_policy_loss", lambda *a: ppo(*a, clip_only=True), "clip without the max"),
    ("ppo_policy_loss", lambda *a: ppo(*a, reduce=torch.min), "min of the NEGATED"),
    ("ppo_policy_loss", lambda *a: ppo(*a, clip=False), "nothing is clipped"),
    ("ppo_policy_loss", lambda *a: ppo(*a, masked=False), "averaged over the padding"),
    ("ppo_policy_loss", lambda lp, old, *a: ppo(old, lp, *a), "upside down"),
    ("ppo_policy_loss", ppo_gradient_through_clipped_tokens, "d loss / d logprob", "no gradient"),
    ("dpo_loss", lambda *a: dpo(*a, reference=False), "left out the reference model"),
    ("dpo_loss", lambda *a: dpo(*a, use_beta=False), "left out β"),
    ("dpo_loss", lambda *a: dpo(*a, loss=torch.sigmoid), "σ in place of log σ"),
    ("dpo_loss", lambda pc, pr, rc, rr, beta: dpo(pr, pc, rr, rc, beta)[:1] + dpo(pc, pr, rc, rr, beta)[1:],
     "wrong sign"),
    ("dpo_loss", lambda *a: dpo(*a, detach=False), "detached", ".detach()"),
    ("dpo_loss", lambda *a: dpo(*a, reduce=torch.mean), "one loss per pair"),
    ("dpo_loss", lambda *a: dpo(*a)[0], "return (losses, chosen_rewards, rejected_rewards)"),
    ("dpo_loss", lambda pc, pr, rc, rr, beta: (dpo(pc, pr, rc, rr, beta)[0], pc - rc, pr - rr), "no β"),
    ("best_of_n_expectation", lambda p, v, n: best_of_n(p, v, n, weights="with_replacement"), "WITH replacement",
     "C(i − 1, n − 1) / C(M, n)"),
    ("best_of_n_expectation", lambda p, v, n: best_of_n(p, v, n, descending=True), "descending", "WORST of n"),
    ("best_of_n_expectation", lambda p, v, n: best_of_n(p, v, n, weights="shifted"), "off by one", "not C(i, n − 1)"),
    ("best_of_n_expectation", lambda p, v, n: best_of_n(p, v, n, sort_by="value"), "sorted by the VALUE"),
    ("best_of_n_expectation", lambda p, v, n: best_of_n(p, v, n, weights="exp_first"), "the result is finite",
     "10^998", "lgamma"),
    ("best_of_n_expectation", lambda p, v, n: best_of_n(p, v, n, dtype=torch.float32), "M = 4096", "float64"),
    ("group_advantages", lambda r, G, scale: group_adv(r, G, scale, unbiased=False), "population std", "Bessel"),
    ("group_advantages", lambda r, G, scale: group_adv(r, G, scale, baseline="batch"), "mean of the whole batch"),
    ("group_advantages", lambda r, G, scale: group_adv(r, G, scale, layout="columns"), "down the columns"),
    ("group_advantages", lambda r, G, scale: group_adv(r, G, scale, eps=0.0), "left out ε = 1e-4"),
    ("group_advantages", lambda r, G, scale: group_adv(r, G, "group"), "scale='none'", "only subtracts"),
    ("group_advantages", lambda r, G, scale: group_adv(r, G, scale, std="batch"), "batch's std"),
]


@pytest.mark.parametrize("name, wrong, words", [pytest.param(w[0], w[1], w[2:], id=f"{w[0]}-{i}")
                                                for i, w in enumerate(WRONG)])
def test_a_wrong_answer_fails_with_a_hint_naming_the_mistake(name, wrong, words):
    message = fails(name, wrong, *words)
    assert "HINT: " in message or not words, message


def test_every_exercise_has_a_wrong_answer_with_a_hint():
    assert {w[0] for w in WRONG if len(w) > 2} == set(EXERCISES)


def test_a_stub_called_by_another_exercise_is_named():
    """ppo_policy_loss calling an unsolved masked_mean: the failure says which exercise to solve first."""
    students = {}
    exec(blank_source(f"def masked_mean(x, mask, dim=None):\n    {BEGIN}\n    return x\n    {END}\n"), students)
    masked_mean = students["masked_mean"]

    def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange):
        return masked_mean(-advantages * torch.exp(logprobs - old_logprobs), mask)

    message = fails("ppo_policy_loss", ppo_policy_loss, "not implemented yet")
    assert "exercise 1: masked_mean is not written yet — solve it first" in message, message


def crashing_top_p_filter(logits, top_p):
    order = torch.argsort(logits, descending=True)
    return logits[order[10]]                                                   # the line the failure must show


def test_a_crash_shows_the_students_file_line_and_code():
    message = fails("top_p_filter", crashing_top_p_filter, "your function raised IndexError")
    line = crashing_top_p_filter.__code__.co_firstlineno + 2
    assert f"test_exercises.py:{line}, in crashing_top_p_filter\n      return logits[order[10]]" in message, message
    assert "harness.py" not in message and "torch" + os.sep not in message, message


def test_values_of_two_or_more_dimensions_print_with_their_shape_row_by_row():
    assert show(torch.tensor([[1.0, 2.0], [3.0, 40.0]])) == "shape (2, 2):\n    [0] [ 1,  2]\n    [1] [ 3, 40]"
    assert show(torch.zeros(2, 1, 3)).splitlines() == ["shape (2, 1, 3):", "    [0, 0] [0, 0, 0]", "    [1, 0] [0, 0, 0]"]
    assert show(torch.zeros(20, 2)).splitlines()[-1] == "    ... (12 more rows)"
    assert show(torch.tensor([1.0, 2.5])) == "shape (2,): [1, 2.5]"                         # 1-D stays on one line
    message = fails("compute_gae", lambda *a: gae_loop(*a, add_values=False), "returns = advantages + values")
    rows = re.search(r"expected shape \((\d+), (\d+)\):\n((?:    \[\d+\] \[.*\]\n)+)  got      shape", message)
    assert rows and len(rows.group(3).splitlines()) == int(rows.group(1)), message
    assert all(len(r.split(",")) == int(rows.group(2)) for r in rows.group(3).splitlines()), message


def test_grade_carries_on_after_a_failure_and_counts(capsys):
    namespace = dict(REFERENCE, pairwise_loss=lambda rc, rr: -torch.sigmoid(rc - rr).mean())
    del namespace["compute_gae"]
    assert grade(namespace) == 1
    out = capsys.readouterr().out
    assert "✘ pairwise_loss — case" in out and "σ in place of log σ" in out
    assert "✘ compute_gae: there is no function named compute_gae" in out
    assert out.count("✔ ") == len(EXERCISES) - 2
    assert out.rstrip().endswith(f"{len(EXERCISES) - 2} of {len(EXERCISES)} exercises pass")
    assert grade(REFERENCE) == 0


@pytest.mark.parametrize("which", ["top_p_filter", "4"])
def test_grade_grades_one_exercise_by_name_or_number(which, capsys):
    namespace = dict(REFERENCE, pairwise_loss=lambda rc, rr: -torch.sigmoid(rc - rr).mean())
    assert grade(namespace, [which]) == 0                                       # pairwise_loss is not graded
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("✔ top_p_filter: all") and out[1] == "1 of 1 exercises pass", out
    assert grade(namespace, ["pairwise_loss", which]) == 1
    assert capsys.readouterr().out.rstrip().endswith("1 of 2 exercises pass")


@pytest.mark.parametrize("which", ["top_q_filter", "0", str(len(EXERCISES) + 1)])
def test_grade_names_the_valid_exercises_for_an_unknown_one(which, capsys):
    assert grade(REFERENCE, [which]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"error: no exercise {which!r}"), err
    assert all(f"{i} {name}" in err for i, name in enumerate(EXERCISES, 1)), err
