"""DPO training: step-0 invariants, a precomputed reference gives the run a live one gives, the implicit-reward
accuracy rises on a synthetic preference set, resume equals an unbroken run, IPO scores per-token means, one
forward for chosen and rejected.

The synthetic task: after the prompt "q:", chosen responses are strings over "ac", rejected ones over "bd";
a 2-layer, 32-wide GPT-2 (random init) is the policy and the reference.
"""
import math
import random

import pytest
import torch
from conftest import check_resume_equals_an_unbroken_run, no_time

from minirlhf import GPT
from minirlhf.data import Pair
from minirlhf.dpo import DPOConfig, encode_pairs, pair_logps, train_dpo
from minirlhf.errors import InputError
from minirlhf.tracking import read_metrics

FAST = dict(batch_size=16, lr=1e-3, warmup_steps=0, eval_every=100)


def letters(rng, alphabet):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 9)))


def ac_pairs(n, seed):
    rng = random.Random(seed)
    return [Pair("q:", letters(rng, "ac"), letters(rng, "bd")) for _ in range(n)]


def metrics(out):
    return read_metrics(out / "metrics.jsonl")


@pytest.mark.parametrize("precompute", [True, False])
def test_step_0_loss_is_log_2_and_rewards_are_0(init_dir, tmp_path, precompute):
    train_dpo(ac_pairs(40, 0), init_dir, tmp_path / "out", DPOConfig(steps=1, precompute_ref=precompute, **FAST),
              show_progress=False)
    [row] = metrics(tmp_path / "out")
    assert row["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margin"):
        assert row[k] == pytest.approx(0.0, abs=1e-6)
    assert row["rewards/accuracy"] == 0.0                                   # equal rewards are not "right"
    assert row["logps/chosen"] < 0 and row["dpo/grad_norm"] > 0             # a real gradient all the same


def test_precomputed_reference_gives_the_same_run_as_a_live_one(init_dir, tmp_path):
    cfg = dict(steps=6, val_fraction=0.2, eval_every=3, batch_size=8, lr=3e-3, warmup_steps=0)
    pre = train_dpo(ac_pairs(40, 1), init_dir, tmp_path / "pre", DPOConfig(**cfg), show_progress=False)
    live = train_dpo(ac_pairs(40, 1), init_dir, tmp_path / "live", DPOConfig(precompute_ref=False, **cfg),
                     show_progress=False)
    a, b = no_time(metrics(tmp_path / "pre")), no_time(metrics(tmp_path / "live"))
    assert [r.keys() for r in a] == [r.keys() for r in b] and "val/rewards/accuracy" in a[2]
    for ra, rb in zip(a, b):  # equal up to float rounding: the reference ran on batches padded differently
        assert all(ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-5) for k in ra), (ra, rb)
    assert abs(a[-1]["rewards/margin"]) > 0.01                             # the policy did move from the reference
    for p, q in zip(pre.parameters(), live.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_implicit_reward_accuracy_rises_on_a_synthetic_preference_set(init_dir, tmp_path):
    model = train_dpo(ac_pairs(200, 2), init_dir, tmp_path / "out",
                      DPOConfig(steps=40, val_fraction=0.2, beta=0.1, **FAST),
                      show_progress=False)
    rows = metrics(tmp_path / "out")
    assert rows[0]["rewards/accuracy"] == 0.0
    assert sum(r["rewards/accuracy"] for r in rows[-10:]) / 10 >= 0.9
    assert rows[-1]["val/rewards/accuracy"] >= 0.9                           # on 40 held-out pairs
    assert rows[-1]["val/loss"] < math.log(2) - 0.2 and rows[-1]["val/rewards/margin"] > 0
    GPT.from_pretrained(tmp_path / "out")                                     # a model directory
    assert not model.training


def test_resume_equals_an_unbroken_run(init_dir, tmp_path, monkeypatch):
    cfg = DPOConfig(steps=6, save_every=2, val_fraction=0.2, eval_every=3, batch_size=8, lr=3e-3)
    check_resume_equals_an_unbroken_run(train_dpo, ac_pairs(40, 3), init_dir, tmp_path, cfg, monkeypatch)


def loop_logps(model, tok, prompt, response, average):
    """log π(response | prompt) with the row alone and a Python loop over its tokens (sum or per-token mean)."""
    p, r = [tok.bos_id] + tok.encode(prompt), tok.encode(response) + [tok.eos_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + r]))[0].double(), -1)
    terms = [logp[len(p) + t - 1, tok_id].item() for t, tok_id in enumerate(r)]
    return sum(terms) / (len(terms) if average else 1)


@pytest.mark.parametrize("loss_type, average_logps, average", [("ipo", None, True), ("sigmoid", None, False),
                                                               ("sigmoid", True, True)])
def test_ipo_scores_per_token_means_the_others_sums(init_dir, tok, tmp_path, loss_type, average_logps, average):
    pairs = ac_pairs(6, 4)
    cfg = DPOConfig(steps=1, loss_type=loss_type, average_logps=average_logps, val_fraction=0.0, **FAST)
    assert cfg.length_penalty == (1.0 if average else 0.0)
    train_dpo(pairs, init_dir, tmp_path / "out", cfg, show_progress=False)   # batch 16 >= 6: every pair
    [row] = metrics(tmp_path / "out")
    init = GPT.from_pretrained(init_dir).eval()
    want = sum(loop_logps(init, tok, p.prompt, p.chosen, average) for p in pairs) / len(pairs)
    assert row["logps/chosen"] == pytest.approx(want, abs=1e-5)
    if loss_type == "ipo":                                                    # (0 - 1/(2 beta))^2 at step 0
        assert row["dpo/loss"] == pytest.approx((1 / (2 * cfg.beta)) ** 2, rel=1e-6)


def test_config_refuses_ipo_on_sums_and_bad_values():
    with pytest.raises(InputError, match="ipo needs per-token"):
        DPOConfig(loss_type="ipo", average_logps=False)
    with pytest.raises(InputError, match="loss_type"):
        DPOConfig(loss_type="kto")
    with pytest.raises(InputError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(InputError, match="label_smoothing"):
        DPOConfig(loss_type="hinge", label_smoothing=0.1)


def test_reference_free_rewards_are_beta_log_pi(init_dir, tmp_path):
    cfg = DPOConfig(steps=1, reference_free=True, beta=0.5, val_fraction=0.0, **FAST)
    train_dpo(ac_pairs(8, 5), init_dir, tmp_path / "out", cfg, show_progress=False)
    [row] = metrics(tmp_path / "out")
    assert row["rewards/chosen"] == pytest.approx(0.5 * row["logps/chosen"], rel=1e-6)
    margin = 0.5 * (row["logps/chosen"] - row["logps/rejected"])
    assert row["rewards/margin"] == pytest.approx(margin, rel=1e-5)
    assert row["dpo/loss"] != pytest.approx(math.log(2), abs=1e-3)          # no reference cancels the policy


def test_chosen_and_rejected_go_through_the_model_in_one_forward(init_dir, tok):
    model = GPT.from_pretrained(init_dir).eval()
    examples = encode_pairs(ac_pairs(5, 6), tok, 32)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape))
    with torch.no_grad():
        chosen, rejected = pair_logps(model, examples, tok.pad_id, 0.0)
    assert len(calls) == 1 and calls[0][0] == 10
    with torch.no_grad():
        for e, c, r in zip(examples, chosen, rejected):
            alone_c, alone_r = pair_logps(model, [e], tok.pad_id, 0.0)
            assert torch.allclose(c, alone_c[0], atol=1e-5) and torch.allclose(r, alone_r[0], atol=1e-5)
