"""PPO: the tests that catch the bugs the big frameworks shipped (docs/references.md)."""
import math

import pytest
import torch

from minirlhf import GPT, GPTConfig, RewardModel
from minirlhf.advantages import AdaptiveKLController, FixedKLController, compute_gae, kl_penalty, shape_rewards
from minirlhf.ppo import ActorCritic, PPOConfig, PPOTrainer
from minirlhf.rollout import apply_missing_eos_penalty, collect, sequence_logprobs

CFG = GPTConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=32, block_size=40)
TOKEN = 7


def count_token_reward(seq, rmask):
    """+1 for every occurrence of TOKEN in the response."""
    return ((seq[:, -rmask.shape[1]:] == TOKEN).float() * rmask).sum(-1)


def make_trainer(reward=count_token_reward, seed=0, **kw):
    torch.manual_seed(seed)
    policy = GPT(CFG)
    ref = GPT(CFG)
    ref.load_state_dict(policy.state_dict())
    cfg = dict(max_new_tokens=8, batch_size=16, num_minibatches=2, ppo_epochs=2, eos_id=2, pad_id=0,
               lr=3e-3, iterations=0, seed=seed)
    cfg.update(kw)
    return PPOTrainer(policy, ref, reward, PPOConfig(**cfg))


# ------------------------------------------------------------------ pure functions

def naive_gae(rewards, values, mask, gamma, lam):
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = int(sum(mask[b]))
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b][t + 1] if t + 1 < n else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t] = last
    return adv


def test_gae_equals_the_reversed_loop_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    B, T = 4, 9
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = [9, 5, 1, 7]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    adv, ret = compute_gae(rewards * mask, values, mask, gamma=0.99, lam=0.9)
    expected = naive_gae((rewards * mask).tolist(), values.tolist(), mask.tolist(), 0.99, 0.9)
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(ret, (adv + values) * mask)
    # garbage beyond the end (values, rewards) changes nothing
    junk = torch.full((B, 3), 1e3)
    adv2, ret2 = compute_gae(torch.cat([rewards * mask, junk], 1), torch.cat([values, junk], 1),
                             torch.cat([mask, torch.zeros(B, 3)], 1), 0.99, 0.9)
    torch.testing.assert_close(adv2[:, :T], adv)
    assert adv2[:, T:].eq(0).all() and ret2[:, T:].eq(0).all()


def test_a_perfect_value_function_gives_zero_advantage():
    """γ = λ = 1 and V_t = sum of the rewards still to come: every δ_t = 0."""
    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    values = rewards.flip(-1).cumsum(-1).flip(-1)
    adv, ret = compute_gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.zeros(1, 4)) and torch.allclose(ret, values)


def test_score_lands_on_eos_or_last_token_never_pad():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float)  # row 0: EOS at col 2
    lp = torch.zeros(2, 5)
    rewards, kl = shape_rewards(torch.tensor([3.0, -2.0]), lp, lp, mask, kl_coef=0.1)
    assert rewards.tolist() == [[0, 0, 3.0, 0, 0], [0, 0, 0, 0, -2.0]]


def test_kl_shaping_is_minus_beta_kl_on_real_tokens_only():
    g = torch.Generator().manual_seed(1)
    lp, ref = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    rewards, kl = shape_rewards(torch.zeros(2), lp, ref, mask, kl_coef=0.5)
    torch.testing.assert_close(kl, (lp - ref) * mask)
    torch.testing.assert_close(rewards, -0.5 * (lp - ref) * mask)


def test_kl_estimators_on_a_small_categorical():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    exact = (p * (p / q).log()).sum().item()
    idx = torch.multinomial(p, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lq = p.log()[idx], q.log()[idx]
    k1, k2, k3 = (kl_penalty(lp, lq, e) for e in ("k1", "k2", "k3"))
    assert abs(k1.mean().item() - exact) < 0.01
    assert abs(k3.mean().item() - exact) < 0.01
    assert (k3 >= 0).all() and (k2 >= 0).all()
    assert (k1 < 0).any()  # per-token k1 can be negative: that is not a bug
    with pytest.raises(ValueError):
        kl_penalty(lp, lq, "k4")


def test_kl_controllers_follow_their_formula():
    fixed = FixedKLController(0.2)
    fixed.update(100.0, 64)
    assert fixed.kl_coef == 0.2
    ctl = AdaptiveKLController(0.15, target=6.0, horizon=10000)
    ctl.update(9.0, 64)  # error = 0.5 -> clipped to 0.2
    assert math.isclose(ctl.kl_coef, 0.15 * (1 + 0.2 * 64 / 10000))
    v = ctl.kl_coef
    ctl.update(5.4, 128)  # error = -0.1
    assert math.isclose(ctl.kl_coef, v * (1 - 0.1 * 128 / 10000))


def test_missing_eos_penalty_replaces_the_score():
    responses = torch.tensor([[5, 2, 0], [5, 6, 7]])
    out = apply_missing_eos_penalty(torch.tensor([0.7, 0.9]), responses, eos_id=2, penalty=-1.0)
    assert out.tolist() == [pytest.approx(0.7), -1.0]
    assert apply_missing_eos_penalty(torch.tensor([0.9]), responses[1:], 2, None).tolist() == [pytest.approx(0.9)]


# ------------------------------------------------------------------ padding

def test_left_padding_changes_no_logprob_value_or_score():
    torch.manual_seed(3)
    ac = ActorCritic(GPT(CFG)).eval()
    torch.nn.init.normal_(ac.value_head.v.weight)
    rm = RewardModel(CFG).eval()
    seq = torch.randint(3, 20, (1, 10))
    P = 4
    lp, v = ac(seq, torch.ones_like(seq), P, temperature=0.8)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), seq], 1)
    pmask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(seq)], 1)
    lp2, v2 = ac(padded, pmask, P + 5, temperature=0.8)
    torch.testing.assert_close(lp2, lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(v2, v, atol=1e-5, rtol=0)
    torch.testing.assert_close(rm(padded, pmask), rm(seq), atol=1e-5, rtol=0)


def test_rollout_logprobs_match_the_sampler():
    """The recomputed logprobs (temperature applied again) equal those the sampler reported."""
    from minirlhf import generate
    torch.manual_seed(4)
    gpt = GPT(CFG).eval()
    out = generate(gpt, [[1, 5, 6], [1, 9]], 8, temperature=0.7, eos_id=2, generator=torch.Generator().manual_seed(0))
    lp = sequence_logprobs(gpt, out.sequences, out.attention_mask, out.prompt_len, 0.7)
    torch.testing.assert_close(lp * out.response_mask, out.logprobs, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ the trainer

def test_rollout_comes_from_the_sampler_and_equals_a_full_forward():
    """The rollout's logprobs, entropy and shared-head values come from the sampler's own pass (no second policy
    forward): its logprobs are exactly generate()'s, and all three equal a full forward's to 1e-5."""
    from minirlhf import generate
    trainer = make_trainer(temperature=0.7)
    torch.nn.init.normal_(trainer.model.value_head.v.weight)
    prompts = [[1, 5], [1, 6, 4], [1, 3, 8, 9]] * 4
    state = trainer.generator.get_state()
    ro = trainer.rollout(prompts)
    trainer.generator.set_state(state)
    gen = generate(trainer.policy, prompts, 8, temperature=0.7, eos_id=2, generator=trainer.generator)
    assert torch.equal(ro.sequences, gen.sequences) and torch.equal(ro.logprobs, gen.logprobs)
    assert ro.response_mask.eq(0).any()  # EOS turned up, so masking is exercised

    trainer.generator.set_state(state)
    again = collect(trainer.policy, trainer.ref_policy, count_token_reward, prompts, 8, 0.7, 2, 0, trainer.generator,
                    value_fn=trainer.model.values, recompute_logprobs=True)
    assert torch.equal(again.sequences, ro.sequences)
    for name in ("logprobs", "entropy", "values", "ref_logprobs", "scores"):
        torch.testing.assert_close(getattr(ro, name), getattr(again, name), atol=1e-5, rtol=0, msg=name)
    logprobs, values = trainer.model(ro.sequences, ro.attention_mask, ro.prompt_len, 0.7)  # the update's forward
    torch.testing.assert_close(ro.logprobs, logprobs * ro.response_mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(ro.values, values * ro.response_mask, atol=1e-5, rtol=0)


@pytest.mark.parametrize("recompute", [False, True])
def test_first_minibatch_ratio_is_exactly_one(recompute):
    """The update's old logprobs are the rollout's and its new ones a full forward of the same weights, so the
    first minibatch's ratio is 1 up to float rounding: exactly with recompute_logprobs, and within the ~1e-7 by
    which a cached one-token step and a full forward round differently when they come from the sampler."""
    trainer = make_trainer(recompute_logprobs=recompute)
    stats = trainer.step([[1, 5]] * 16)
    assert abs(stats["ppo/first_ratio_mean"] - 1.0) < 1e-6
    assert stats["ppo/first_approx_kl"] < 1e-10
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the start


def test_toy_reward_rises_while_kl_stays_finite_and_reward_free_run_does_not():
    trainer = make_trainer()
    rows = [trainer.step([[1, 5], [1, 6, 4]] * 8) for _ in range(25)]
    early = sum(r["env/reward_mean"] for r in rows[:3]) / 3
    late = sum(r["env/reward_mean"] for r in rows[-3:]) / 3
    assert late > early + 2.0, (early, late)
    assert all(math.isfinite(r["objective/kl"]) for r in rows)

    flat = make_trainer(reward=lambda seq, m: torch.zeros(seq.shape[0]))
    seen = flat.rollout([[1, 5], [1, 6, 4]] * 8)
    before = count_token_reward(seen.sequences, seen.response_mask).mean().item()
    for _ in range(25):
        flat.step([[1, 5], [1, 6, 4]] * 8)
    after_ro = flat.rollout([[1, 5], [1, 6, 4]] * 8)
    after = count_token_reward(after_ro.sequences, after_ro.response_mask).mean().item()
    assert after < before + 1.0 and after < late - 2.0


def test_adaptive_kl_moves_beta_and_metrics_are_named():
    trainer = make_trainer(adaptive_kl=True, kl_coef=0.2, kl_target=0.5, kl_horizon=100)
    rows = [trainer.step([[1, 5]] * 16) for _ in range(4)]
    assert rows[-1]["objective/kl_coef"] != 0.2
    for key in ("env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "objective/entropy",
                "ppo/policy_loss", "ppo/value_loss", "ppo/approx_kl", "ppo/clipfrac", "ppo/ratio_mean",
                "ppo/explained_variance", "ppo/returns_mean", "tokens/response_len", "time/rollout_s",
                "time/update_s"):
        assert key in rows[-1] and math.isfinite(rows[-1][key]), key


def test_gradient_accumulation_gives_the_same_update():
    """Fixed-length responses: micro-batch means average to the minibatch mean exactly."""
    a = make_trainer(eos_id=None, gradient_accumulation_steps=1, num_minibatches=1, ppo_epochs=1)
    b = make_trainer(eos_id=None, gradient_accumulation_steps=4, num_minibatches=1, ppo_epochs=1)
    a.step([[1, 5]] * 16)
    b.step([[1, 5]] * 16)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)


def test_compiled_update_gives_the_same_update(monkeypatch):
    """compile=True traces the update's forward with torch.compile (here its "eager" backend: the same
    graph capture, no C++ compiler needed) and trains the very parameters the eager run trains."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compile_(model, backend="eager"))
    a = make_trainer(eos_id=None, num_minibatches=2, ppo_epochs=1)
    b = make_trainer(eos_id=None, num_minibatches=2, ppo_epochs=1, compile=True)
    assert b.train_forward is not b.model
    a.step([[1, 5]] * 16)
    b.step([[1, 5]] * 16)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)
    assert not torch.equal(b.model.policy.lm_head.weight, make_trainer().model.policy.lm_head.weight)


def test_compiled_sampler_gives_the_same_rollout(monkeypatch):
    """compile_sampler=True sends the sampler's step through torch.compile ("eager" backend here, as above)."""
    compile_, calls = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(fn) or compile_(fn, backend="eager"))
    a = make_trainer().rollout([[1, 5], [1, 6, 4]] * 8)
    b = make_trainer(compile_sampler=True).rollout([[1, 5], [1, 6, 4]] * 8)
    assert [fn.__name__ for fn in calls] == ["decode_step"]
    assert torch.equal(a.sequences, b.sequences)
    for name in ("logprobs", "entropy", "values"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-6, rtol=0, msg=name)
    torch._dynamo.reset()


def test_separate_critic_starts_from_the_reward_model():
    torch.manual_seed(5)
    rm = RewardModel(CFG).eval()
    with torch.no_grad():
        rm.gain.fill_(2.0), rm.bias.fill_(0.5)
    policy = GPT(CFG)
    ac = ActorCritic.build(policy, "separate", rm)
    seq = torch.randint(3, 20, (3, 9))
    _, values = ac(seq, torch.ones_like(seq), 4, 1.0)
    # V at the last response position reads hidden state of token T-2: the RM's score of seq[:, :-1]
    torch.testing.assert_close(values[:, -1], rm(seq[:, :-1]), atol=1e-5, rtol=0)
    assert all(p1.data_ptr() != p2.data_ptr() for p1, p2 in zip(ac.critic.parameters(), rm.gpt.parameters()))


def test_pad_equal_to_eos_is_refused():
    with pytest.raises(ValueError, match="pad_id"):
        make_trainer(eos_id=0, pad_id=0)
