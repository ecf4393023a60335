"""Padding and accumulation, where online RL code goes silently wrong.

1. A pretrained policy gives PAD a very low logprob (it never saw PAD as a target): at a low temperature
   log π(PAD) is −100 or so, and a KL term that exponentiates it (k3: exp(−log π) > float32's max once
   log π < −88.7) overflowed under the padding, turning GRPO's gradient into NaN. Every trainer must take a
   step at T = 0.15 and T = 0.1 after a short pretraining (this tiny model's log π(PAD) is about −11 at
   T = 1: −70 at T = 0.15, below −100 at T = 0.1, where the old code stopped with grpo/grad_norm NaN).
2. Gradient accumulation changes memory, not the update: with responses of different lengths, one step at
   accumulation 4 equals one step at accumulation 1, for every loss aggregation.
3. The gradients of the KL estimators as loss terms, exactly, on a small categorical: k1 → 0,
   k2 → ∇KL(π‖ref), k3 → ∇KL(ref‖π).
"""
import math

import pytest
import torch

from minirlhf import GPT, GPTConfig
from minirlhf.advantages import kl_penalty
from minirlhf.errors import InputError
from minirlhf.grpo import GRPOConfig, GRPOTrainer, RLOOConfig
from minirlhf.ops import AGGREGATIONS, masked_aggregate
from minirlhf.optim import make_adamw
from minirlhf.ppo import PPOConfig, PPOTrainer
from minirlhf.sft import collate, lm_loss

CFG = GPTConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=32, block_size=32)
PAD, BOS, EOS = 0, 1, 2
PROMPTS = [[BOS, 5], [BOS, 6, 4], [BOS, 7], [BOS, 8, 9]]


def letters_reward(seq, rmask):
    """A toy reward: the number of response tokens that are 5."""
    return ((seq[:, -rmask.shape[1]:] == 5).float() * rmask).sum(-1)


@pytest.fixture(scope="module")
def pretrained():
    """A tiny GPT pretrained for a few seconds on texts of 2-6 tokens that end in EOS (PAD is never a target)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    docs = [[BOS] + torch.randint(3, 20, (int(n),), generator=g).tolist() + [EOS]
            for n in torch.randint(2, 7, (256,), generator=g)]
    model = GPT(CFG)
    opt = make_adamw(model, 1e-2)
    for step in range(120):
        ids = collate(docs[(step * 32) % 256:(step * 32) % 256 + 32], PAD)
        opt.zero_grad()
        lm_loss(model, ids, PAD).backward()
        opt.step()
    return model.eval()


def copies(model):
    policy, ref = GPT(CFG), GPT(CFG)
    policy.load_state_dict(model.state_dict())
    ref.load_state_dict(model.state_dict())
    return policy, ref


def pad_logprob(model, temperature):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([[BOS, 5, 6]]))[0, -1] / temperature, -1)[PAD].item()


def make(algo, model, **kw):
    policy, ref = copies(model)
    common = dict(max_new_tokens=10, batch_size=16, num_minibatches=2, eos_id=EOS, pad_id=PAD, lr=3e-3,
                  iterations=0, seed=0)
    common.update(kw)
    if algo == "ppo":
        return PPOTrainer(policy, ref, letters_reward, PPOConfig(**common))
    cls = RLOOConfig if algo == "rloo" else GRPOConfig
    return GRPOTrainer(policy, ref, letters_reward, cls(group_size=4, **common))


# ---------------------------------------------------------------- 1. low temperature, real padding

def test_the_k3_term_has_a_zero_gradient_under_padding_not_nan():
    lp = torch.tensor([[-1.0, -100.0]], requires_grad=True)
    ref, mask = torch.tensor([[-1.2, 0.0]]), torch.tensor([[1.0, 0.0]])
    masked_aggregate(kl_penalty(lp, ref, "k3", mask), mask).backward()
    # d k3 / d log π = 1 − π_ref/π = 1 − e^(−0.2) on the real token; nothing at all on the pad
    assert lp.grad[0].tolist() == pytest.approx([1 - math.exp(-0.2), 0.0])
    assert kl_penalty(lp, ref, "k3", mask)[0, 1].item() == 0.0


@pytest.mark.parametrize("temperature", [0.15, 0.1])
@pytest.mark.parametrize("algo,kw", [("grpo", dict(kl_coef=0.05)), ("grpo", dict(kl_coef=0.0)),
                                     ("grpo", dict(kl_coef=0.05, kl_estimator="k2")),
                                     ("rloo", dict(kl_coef=0.05)), ("rloo", dict(kl_coef=0.05, kl_estimator="k3")),
                                     ("ppo", dict(kl_coef=0.05)), ("ppo", dict(kl_coef=0.05, kl_estimator="k3"))])
def test_every_trainer_steps_at_a_low_temperature_after_pretraining(pretrained, algo, kw, temperature):
    assert pad_logprob(pretrained, 0.1) < -89   # the trap is set: exp(−log π(PAD)) overflows float32 at T = 0.1
    trainer = make(algo, pretrained, temperature=temperature, **kw)
    for _ in range(2):
        row = trainer.step(PROMPTS if algo == "ppo" else PROMPTS[:4])
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    assert row["tokens/response_len"] < 10                           # responses stopped at EOS: there was padding
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_grpo_without_kl_has_no_kl_term(pretrained):
    assert "grpo/kl_loss" not in make("grpo", pretrained, kl_coef=0.0).step(PROMPTS)
    assert "grpo/kl_loss" in make("grpo", pretrained, kl_coef=0.05).step(PROMPTS)


# ---------------------------------------------------------------- 2. accumulation is the same update

def one_step_params(algo, model, accumulation, **kw):
    trainer = make(algo, model, num_minibatches=1, gradient_accumulation_steps=accumulation, temperature=1.0, **kw)
    if algo == "ppo":
        trainer.config.ppo_epochs = 1
    row = trainer.step(PROMPTS * 4 if algo == "ppo" else PROMPTS)
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()]), row


@pytest.mark.parametrize("algo,kw", [("ppo", {})] + [("grpo", dict(loss_aggregation=a)) for a in AGGREGATIONS]
                         + [("rloo", {})])
def test_one_step_at_accumulation_4_equals_one_step_at_accumulation_1(pretrained, algo, kw):
    whole, row = one_step_params(algo, pretrained, 1, **kw)
    accumulated, _ = one_step_params(algo, pretrained, 4, **kw)
    start = torch.cat([p.detach().flatten() for p in pretrained.parameters()])
    assert 2 < row["tokens/response_len"] < 9                       # lengths differ from response to response
    moved = (whole[:start.numel()] - start).abs().max().item()
    assert moved > 1e-4                                             # the step did something to compare
    torch.testing.assert_close(accumulated, whole, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- 3. the KL estimators as loss terms

def test_kl_estimators_as_loss_terms_have_the_gradients_of_their_kls_exactly():
    """On a categorical of 5 actions, E_{a~π}[∇_θ k(a)] summed exactly over the actions (the samples fixed,
    the gradient only through log π, as in GRPO's loss) against autograd of the closed-form KLs."""
    torch.manual_seed(0)
    theta = torch.randn(5, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(5), 0)
    actions = torch.arange(5)

    def expected_grad(estimator):
        logp = torch.log_softmax(theta, 0)
        weights = logp.exp().detach()                                   # π(a): the sampling distribution
        k = kl_penalty(logp[actions], ref_logp[actions], estimator)
        return torch.autograd.grad((weights * k).sum(), theta)[0]

    logp = torch.log_softmax(theta, 0)
    reverse = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), theta)[0]      # ∇ KL(π ‖ ref)
    logp = torch.log_softmax(theta, 0)
    forward = torch.autograd.grad((ref_logp.exp() * (ref_logp - logp)).sum(), theta)[0]  # ∇ KL(ref ‖ π)
    assert reverse.abs().max() > 0.05 and (reverse - forward).abs().max() > 0.01     # the three answers differ
    torch.testing.assert_close(expected_grad("k1"), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(expected_grad("k2"), reverse, atol=1e-6, rtol=0)
    torch.testing.assert_close(expected_grad("k3"), forward, atol=1e-6, rtol=0)


def test_grpo_refuses_k1_as_its_loss_term_but_rloo_takes_it_in_the_reward():
    with pytest.raises(InputError, match="--kl_estimator=k1.*zero expected gradient"):
        GRPOConfig(kl_estimator="k1")
    assert RLOOConfig(kl_estimator="k1").kl_estimator == "k1"
    GRPOConfig(kl_estimator="k2")


def test_objective_kl_is_k1_for_every_method_and_the_loss_estimator_has_its_own_name(pretrained):
    trainer = make("grpo", pretrained)
    with torch.no_grad():
        for p in trainer.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seen, rollout = [], trainer.rollout
    trainer.rollout = lambda prompts: seen.append(rollout(prompts)) or seen[-1]
    row = trainer.step(PROMPTS)
    ro = seen[0]
    by_hand = lambda k: sum(sum(k(a, b) for a, b, m in zip(*r) if m) for r in zip(  # noqa: E731
        ro.logprobs.tolist(), ro.ref_logprobs.tolist(), ro.response_mask.tolist())) / len(ro.scores)
    assert row["objective/kl"] == pytest.approx(by_hand(lambda lp, ref: lp - ref), rel=1e-4)
    assert row["objective/kl_k3"] == pytest.approx(by_hand(lambda lp, ref: math.exp(ref - lp) - 1 - (ref - lp)),
                                                   rel=1e-4)
    assert row["objective/kl"] != pytest.approx(row["objective/kl_k3"], rel=1e-3)
    assert "objective/kl_k1" not in make("ppo", pretrained).step(PROMPTS)
