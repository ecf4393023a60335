"""GRPO and RLOO: group baselines on the shared rollout, PPO's clipped loss, where the KL goes, the CLI."""
import json
import math

import pytest
import torch
from conftest import check_online_resume, run_cli, write_tiny_rl_dirs

from minirlhf import GPT, GPTConfig
from minirlhf.advantages import kl_penalty
from minirlhf.errors import InputError
from minirlhf.grpo import GRPOConfig, GRPOTrainer, RLOOConfig, train_grpo
from minirlhf.rollout import collect

CFG = GPTConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=32, block_size=40)
TOKEN = 7
PROMPTS = [[1, 5], [1, 6, 4]]


def count_token_reward(seq, rmask):
    """+1 for every occurrence of TOKEN in the response."""
    return ((seq[:, -rmask.shape[1]:] == TOKEN).float() * rmask).sum(-1)


def make_trainer(algo="grpo", reward=count_token_reward, seed=0, perturb=0.0, **kw):
    torch.manual_seed(seed)
    policy, ref = GPT(CFG), GPT(CFG)
    ref.load_state_dict(policy.state_dict())
    if perturb:
        with torch.no_grad():
            policy.lm_head.weight.add_(perturb * torch.randn_like(policy.lm_head.weight))
    cfg = dict(max_new_tokens=8, batch_size=16, group_size=4, num_minibatches=2, eos_id=2, pad_id=0, lr=3e-3,
               iterations=0, seed=seed)
    cfg.update(kw)
    return GRPOTrainer(policy, ref, reward, (RLOOConfig if algo == "rloo" else GRPOConfig)(**cfg))


def test_a_group_of_one_is_refused_with_a_clear_message():
    for cls, name in ((GRPOConfig, "GRPO"), (RLOOConfig, "RLOO")):
        with pytest.raises(InputError, match=rf"--group_size=1: {name} needs at least 2 responses per prompt"):
            cls(group_size=1)
    with pytest.raises(InputError, match="multiple of --group_size"):
        GRPOConfig(batch_size=10, group_size=4, num_minibatches=1)


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_first_minibatch_ratio_is_exactly_one_and_groups_are_sampled_together(algo):
    trainer = make_trainer(algo)
    stats = trainer.step(PROMPTS * 2)                                 # 4 distinct prompts × G = 4 = 16 rollouts
    assert abs(stats[f"{algo}/first_ratio_mean"] - 1.0) < 1e-6
    assert stats[f"{algo}/first_approx_kl"] < 1e-10
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)     # policy == reference at the start
    for key in ("env/reward_mean", f"{algo}/loss", f"{algo}/policy_loss", f"{algo}/clipfrac", f"{algo}/grad_norm",
                f"{algo}/zero_std_frac", "objective/entropy", "tokens/response_len", "time/generate_s"):
        assert key in stats and math.isfinite(stats[key]), key
    assert (f"{algo}/kl_loss" in stats) == (algo == "grpo")          # GRPO's KL is a loss term, RLOO's is not


def test_rloo_advantages_are_leave_one_out_of_the_kl_penalised_reward_and_sum_to_zero_per_group():
    trainer = make_trainer("rloo", perturb=0.5, kl_coef=0.3)
    c = trainer.config
    prompts = [p for p in PROMPTS * 2 for _ in range(c.group_size)]
    ro = collect(trainer.policy, trainer.ref_policy, trainer.reward, prompts, c.max_new_tokens, c.temperature,
                 c.eos_id, c.pad_id, trainer.generator)
    kl, adv = trainer.advantages(ro, 0.3)
    # independent computation, one group at a time, with plain Python sums
    k1 = ((ro.logprobs - ro.ref_logprobs) * ro.response_mask).sum(-1).tolist()
    R = [s - 0.3 * k for s, k in zip(ro.scores.tolist(), k1)]
    G = c.group_size
    for g in range(len(R) // G):
        group = R[g * G:(g + 1) * G]
        for i in range(G):
            baseline = (sum(group) - group[i]) / (G - 1)
            assert adv[g * G + i].item() == pytest.approx(group[i] - baseline, abs=1e-5)
        assert sum(adv[g * G:(g + 1) * G].tolist()) == pytest.approx(0.0, abs=1e-5)
    assert any(abs(k) > 1e-3 for k in k1)                           # the KL term really entered the reward


def test_grpo_loss_equals_the_per_token_formula_with_the_k3_term():
    trainer = make_trainer("grpo", perturb=0.5, kl_coef=0.2, cliprange=0.1, loss_aggregation="sequence_mean")
    c = trainer.config
    ro = collect(trainer.policy, trainer.ref_policy, trainer.reward, [p for p in PROMPTS for _ in range(4)],
                 c.max_new_tokens, c.temperature, c.eos_id, c.pad_id, trainer.generator)
    adv = torch.linspace(-1.5, 1.5, ro.sequences.shape[0])
    old = ro.logprobs - 0.3 * ro.response_mask                      # pretend the policy moved since sampling
    ro.logprobs = old
    loss, _ = trainer.loss(ro, adv, 0.2)
    lp = trainer.model(ro.sequences, ro.attention_mask, ro.prompt_len, 1.0).detach()
    per_seq = []
    for b in range(ro.sequences.shape[0]):
        terms = []
        for t in range(ro.response_mask.shape[1]):
            if ro.response_mask[b, t] == 0:
                continue
            ratio = math.exp(lp[b, t] - old[b, t])
            a = adv[b].item()
            surrogate = min(ratio * a, min(max(ratio, 0.9), 1.1) * a)
            d = ro.ref_logprobs[b, t].item() - lp[b, t].item()
            k3 = math.exp(d) - d - 1
            terms.append(-surrogate + 0.2 * k3)
        per_seq.append(sum(terms) / len(terms))
    assert loss.item() == pytest.approx(sum(per_seq) / len(per_seq), abs=1e-5)


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_toy_reward_rises(algo):
    trainer = make_trainer(algo, kl_coef=0.01, epochs=2)
    rows = [trainer.step(PROMPTS * 2) for _ in range(25)]
    early = sum(r["env/reward_mean"] for r in rows[:3]) / 3
    late = sum(r["env/reward_mean"] for r in rows[-3:]) / 3
    assert late > early + 1.5, (early, late)


def test_grpo_kl_term_alone_pulls_the_policy_back_to_the_reference():
    """A constant reward gives zero advantages: only β·k3 is left, and it must shrink the KL."""
    def run(kl_coef):
        trainer = make_trainer("grpo", reward=lambda seq, m: torch.ones(seq.shape[0]), perturb=0.1,
                               kl_coef=kl_coef, lr=1e-2, epochs=2)
        return trainer, [trainer.step(PROMPTS * 2) for _ in range(12)]
    trainer, rows = run(1.0)
    assert rows[0]["grpo/zero_std_frac"] == 1.0 and rows[0]["grpo/advantages_abs_mean"] == 0.0
    assert rows[-1]["objective/kl"] < 0.1 * rows[0]["objective/kl"], [r["objective/kl"] for r in rows]
    still, _ = run(0.0)                                              # no KL term: nothing moves the policy
    for a, b in zip(still.model.parameters(), make_trainer("grpo", perturb=0.1).model.parameters()):
        assert torch.equal(a, b)


def test_k3_term_is_never_negative_and_zero_at_the_reference():
    lp = torch.log_softmax(torch.randn(4, 6), -1)
    assert (kl_penalty(lp, lp, "k3") == 0).all()
    assert (kl_penalty(lp, lp.roll(1, 1), "k3") >= 0).all()


# ------------------------------------------------------------------ the run and the CLI

TEXTS = ["刚收到货，感觉很好", "这部电影很无聊", "说实话，真的很不错", "这次购物总的来说体验很差"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return write_tiny_rl_dirs(tmp_path_factory.mktemp("grpo"), TEXTS, n_embd=32, block_size=32,
                              prompts=["刚收到货，感觉", "这部电影很"])


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_cli_writes_a_self_contained_policy(dirs, algo):
    out = dirs / algo
    run_cli("grpo", "--algo", algo, "--prompts", dirs / "prompts.jsonl", "--init", dirs / "sft", "--reward",
            dirs / "reward", "--out", out, "--iterations", "2", "--batch_size=8", "--group_size=4",
            "--num_minibatches=2", "--max_new_tokens=6")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2] and f"{algo}/loss" in rows[0]
    assert json.loads((out / "train_config.json").read_text())["kl_estimator"] == ("k1" if algo == "rloo" else "k3")
    GPT.from_pretrained(out)


def test_cli_refuses_a_group_of_one(dirs):
    r = run_cli("grpo", "--prompts", dirs / "prompts.jsonl", "--init", dirs / "sft", "--reward", dirs / "reward",
                "--out", dirs / "never", "--group_size=1", check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--group_size=1: GRPO needs at least 2 responses per prompt" in r.stderr
    assert not (dirs / "never").exists()


def test_interrupted_then_resumed_run_matches_an_unbroken_one(dirs):
    cfg = RLOOConfig(iterations=4, save_every=2, batch_size=8, group_size=4, num_minibatches=2, max_new_tokens=6,
                     seed=3)
    check_online_resume(train_grpo, dirs, ["刚收到货，感觉", "这部电影很"], cfg)
