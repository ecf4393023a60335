"""The GRPO family's options (GRPOConfig), each against a hand computation on a hand-built batch:
loss_type (grpo, bnpo, dr_grpo, dapo) and accumulation, GSPO's sequence-level ratio, DAPO's clip-higher,
dynamic sampling, masking of truncated completions, the entropy bonus and μ = ppo_epochs > 1."""
import math
from dataclasses import replace

import pytest
import torch
from conftest import write_tiny_rl_dirs

from minirlhf import GPT, GPTConfig
from minirlhf.config import apply_overrides
from minirlhf.errors import InputError
from minirlhf.grpo import LOSS_TYPES, GRPOConfig, GRPOTrainer, equal_groups, train_grpo
from minirlhf.losses import ppo_policy_loss
from minirlhf.rollout import Rollout, sequence_logprobs
from minirlhf.tracking import read_metrics

CFG = GPTConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=32, block_size=40)
PAD, BOS, EOS = 0, 1, 2
# 8 hand-written responses (max_new_tokens = 6) of 1 … 6 tokens; rows 5 and 6 reached 6 tokens without EOS
RESPONSES = [[2], [5, 2], [6, 7, 2], [3, 4, 5, 2], [9, 9, 8, 7, 2], [4, 5, 6, 7, 8, 9], [7, 7, 7, 7, 7, 7], [8, 3, 2]]
ADV = torch.tensor([1.0, -0.5, 0.8, -1.2, 0.3, -0.7, 1.5, -0.2])


def token_sum_reward(seq, rmask):
    return (seq[:, -rmask.shape[1]:] * rmask).sum(-1).float()


def make_trainer(reward=token_sum_reward, perturb=0.0, **kw):
    torch.manual_seed(0)
    policy, ref = GPT(CFG), GPT(CFG)
    ref.load_state_dict(policy.state_dict())
    if perturb:  # the policy away from the reference, so that the KL term has a gradient
        with torch.no_grad():
            policy.lm_head.weight.add_(perturb * torch.randn_like(policy.lm_head.weight))
    cfg = dict(max_new_tokens=6, batch_size=8, group_size=4, num_minibatches=1, eos_id=EOS, pad_id=PAD, lr=1e-2,
               iterations=0, seed=0, kl_coef=0.0, max_grad_norm=0.0)
    return GRPOTrainer(policy, ref, reward, GRPOConfig(**{**cfg, **kw}))


def hand_rollout(trainer, responses, prompt=(BOS, 5)) -> Rollout:
    """A rollout of hand-written responses (right-padded) with the policy's and the reference's logprobs."""
    N, P, T = max(map(len, responses)), len(prompt), trainer.config.temperature
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (N - len(r)) for r in responses])
    seq = torch.tensor([list(prompt) + r + [PAD] * (N - len(r)) for r in responses])
    attn = torch.cat([torch.ones(len(responses), P), mask], 1).long()
    with torch.no_grad():
        lp, entropy = sequence_logprobs(trainer.policy, seq, attn, P, T, with_entropy=True)
        ref = sequence_logprobs(trainer.ref_policy, seq, attn, P, T)
    return Rollout(seq, attn, mask, P, lp * mask, ref * mask, None, torch.zeros(len(responses)), entropy * mask)


def flat_grad(model):
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in model.parameters()])


def update_grads(trainer, ro, adv, kl_coef=0.0):
    """trainer.update with the optimizer's step a no-op (the weights never move) -> (each optimizer step's
    gradient, each loss call's (minibatch, advantages))."""
    grads, calls, loss = [], [], trainer.loss
    trainer.optimizer.step = lambda: grads.append(flat_grad(trainer.model).clone())
    trainer.loss = lambda mb, a, kl: calls.append((mb, a)) or loss(mb, a, kl)
    trainer.update(ro, adv, kl_coef)
    trainer.loss = loss
    return grads, calls


def naive_loss(trainer, calls, loss_type, level, kl_coef, rollout_tokens):
    """One optimizer step's loss by hand: Σ over the rows of its micro-batches and their real tokens of
    w · (−min(r A, clip(r, 1 − ε, 1 + ε_high) A) + β k3), w the token's weight under `loss_type`."""
    c = trainer.config
    lengths = [int(n) for mb, _ in calls for n in mb.response_mask.sum(-1)]   # the minibatch's responses
    total = 0.0
    for mb, adv in calls:
        lp = sequence_logprobs(trainer.policy, mb.sequences, mb.attention_mask, mb.prompt_len, c.temperature)
        for b in range(len(adv)):
            n = int(mb.response_mask[b].sum())
            w = {"grpo": 1 / (len(lengths) * n), "bnpo": 1 / sum(lengths),
                 "dr_grpo": 1 / (len(lengths) * c.max_new_tokens), "dapo": 1 / rollout_tokens}[loss_type]
            log_r = [lp[b, t] - mb.logprobs[b, t] for t in range(n)]
            for t in range(n):
                r = torch.exp(log_r[t] if level == "token" else sum(log_r) / n)
                a = adv[b].item()
                surrogate = torch.min(r * a, r.clamp(1 - c.cliprange, 1 + c.cliprange_high) * a)
                d = mb.ref_logprobs[b, t] - lp[b, t]
                total = total + w * (-surrogate + kl_coef * (torch.exp(d) - d - 1))
    return total


def moved_old_logprobs(ro):
    """π_old ≠ π: log-ratios 0.3·sin(·) on the real tokens (ratios 0.74 … 1.35, some clipped)."""
    wave = 0.3 * torch.sin(torch.arange(6.0) + 1.7 * torch.arange(8.0)[:, None])
    return ro.logprobs - wave * ro.response_mask


# ------------------------------------------------------------------ 1. loss_type, 2. GSPO, 3. clip-higher

@pytest.mark.parametrize("loss_type,level", [("grpo", "token"), ("bnpo", "token"), ("dr_grpo", "token"),
                                             ("dapo", "token"), ("grpo", "sequence")])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_each_loss_type_is_its_hand_normaliser_and_accumulation_changes_nothing(loss_type, level, accumulation):
    """grpo 1/(B_mb·|y_i|), bnpo 1/(tokens of the minibatch), dr_grpo 1/(B_mb·max_new_tokens), dapo 1/(tokens of the
    whole rollout): 2 minibatches, of 1 or 2 micro-batches each, give the gradient of the minibatch's formula."""
    trainer = make_trainer(perturb=0.1, loss_type=loss_type, importance_sampling_level=level, num_minibatches=2,
                           gradient_accumulation_steps=accumulation, kl_coef=0.1, cliprange_high=0.28)
    ro = hand_rollout(trainer, RESPONSES)
    ro.logprobs = moved_old_logprobs(ro)
    grads, calls = update_grads(trainer, ro, ADV, 0.1)
    steps = [calls[s * accumulation:(s + 1) * accumulation] for s in range(2)]
    tokens = [sum(mb.response_mask.sum().item() for mb, _ in step) for step in steps]
    assert len(grads) == 2 and tokens[0] != tokens[1]                 # dapo's divisor differs from bnpo's here
    for grad, step in zip(grads, steps):
        trainer.model.zero_grad()
        naive_loss(trainer, step, loss_type, level, 0.1, ro.response_mask.sum().item()).backward()
        assert grad.abs().max() > 1e-3
        torch.testing.assert_close(grad, flat_grad(trainer.model), rtol=1e-4, atol=1e-7)


def test_loss_type_maps_to_an_aggregation_and_loss_aggregation_still_works():
    for loss_type, how in LOSS_TYPES.items():
        trainer = make_trainer(loss_type=loss_type)
        assert (trainer.aggregation, trainer.denominator) == (how, "rollout" if loss_type == "dapo" else "minibatch")
    assert make_trainer(loss_aggregation="sequence_mean").aggregation == "sequence_mean"   # loss_type None
    assert GRPOConfig(loss_type="grpo", loss_aggregation="sequence_mean").loss_type == "grpo"  # they agree
    c = apply_overrides(GRPOConfig(), ["--loss_type=dapo", "--importance_sampling_level=sequence",
                                       "--dynamic_sampling=true", "--entropy_coef=0.01"])
    assert (c.loss_type, c.importance_sampling_level, c.dynamic_sampling, c.entropy_coef) == \
        ("dapo", "sequence", True, 0.01)
    assert apply_overrides(c, ["--loss_type=none"]).loss_type is None


@pytest.mark.parametrize("kw,match", [
    (dict(loss_type="token_mean"), "--loss_type must be one of None, grpo, bnpo, dr_grpo, dapo, got 'token_mean'"),
    (dict(loss_type="dapo", loss_aggregation="sequence_mean"),
     "--loss_type=dapo and --loss_aggregation=sequence_mean disagree"),
    (dict(importance_sampling_level="seq"), "--importance_sampling_level must be one of token, sequence"),
    (dict(max_resample_rounds=-1), "--max_resample_rounds must be >= 0"),
    (dict(entropy_coef=-0.1), "--entropy_coef must be >= 0")])
def test_a_bad_option_value_is_a_one_line_input_error(kw, match):
    with pytest.raises(InputError, match=match) as e:
        GRPOConfig(**kw)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="--mask_truncated_completions needs an EOS token") as e:
        make_trainer(eos_id=None, mask_truncated_completions=True)
    assert "\n" not in str(e.value)


def test_gspo_ratio_is_the_geometric_mean_of_the_tokens_clipped_per_response():
    """s_i = exp(mean_t log π/π_old) over the real tokens; padding (9.0 here) is not in the mean."""
    log_r = torch.tensor([[0.3, -0.1, 0.4], [0.05, 9.0, 9.0]], dtype=torch.float64)
    mask, adv = torch.tensor([[1.0, 1, 1], [1, 0, 0]]), torch.tensor([1.0, -1.0], dtype=torch.float64)
    old = torch.zeros_like(log_r)

    def run(level):
        lp = log_r.clone().requires_grad_()
        loss, stats = ppo_policy_loss(lp, old, adv, mask, 0.2, aggregation="sequence_mean",
                                      importance_sampling_level=level)
        loss.backward()
        return loss.item(), stats, lp.grad
    s0, s1 = math.exp(0.2), math.exp(0.05)          # 1.2214: clipped at 1.2 (A > 0); 1.0513: inside the clip
    loss, stats, grad = run("sequence")
    assert loss == pytest.approx((-1.2 + s1) / 2, rel=1e-12)        # −A·clip(s0) on row 0, −A·s1 on row 1
    assert stats["ratio_mean"].item() == pytest.approx((3 * s0 + s1) / 4, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(0.75)           # the 3 tokens of row 0, clipped as one
    # row 0 clipped as a whole: no gradient on any token; row 1: d(−A s1)/d log π = s1 / |y| = s1, over B = 2
    torch.testing.assert_close(grad, torch.tensor([[0, 0, 0], [s1 / 2, 0, 0]], dtype=torch.float64))
    _, _, token_grad = run("token")                # per token, the middle one (ratio 0.905) is not clipped
    assert token_grad[0, 1].item() == pytest.approx(-math.exp(-0.1) / 3 / 2, rel=1e-12)


def test_clip_higher_raises_only_the_upper_bound_as_dapo():
    """ε = 0.2, ε_high = 0.28: a ratio of 1.25 with A > 0 is inside [0.8, 1.28], one of 0.75 with A < 0 is clipped at
    1 − ε = 0.8 (not 1 − ε_high = 0.72). Token mean over 2 + 3 tokens: (−1.25·2 + 0.8·3) / 5 = −0.02."""
    adv = torch.tensor([1.0, -1.0])
    for high, expected in ((0.28, (-1.25 * 2 + 0.8 * 3) / 5), (None, (-1.2 * 2 + 0.8 * 3) / 5)):
        trainer = make_trainer(cliprange=0.2, cliprange_high=high)
        ro = hand_rollout(trainer, [[5, 2], [6, 7, 2]])
        ro.logprobs = ro.logprobs - torch.log(torch.tensor([[1.25], [0.75]])) * ro.response_mask
        loss, stats = trainer.loss(ro, adv, 0.0)
        assert loss.item() == pytest.approx(expected, abs=1e-5)
        assert stats["grpo/clipfrac"].item() == pytest.approx(3 / 5 if high else 1.0)


# ------------------------------------------------------------------ 4. dynamic sampling

FLAT, GOOD, GOOD2 = [BOS, 5], [BOS, 6, 4], [BOS, 8, 9, 3]


def flat_for_token_5(seq, rmask):
    """1.0 for every response to a prompt holding token 5 (a group of equal rewards), else the token sum."""
    P = seq.shape[1] - rmask.shape[1]
    return torch.where((seq[:, :P] == 5).any(-1), 1.0, token_sum_reward(seq, rmask))


def step_and_catch(trainer, prompts, more_prompts):
    """trainer.step -> (row, the rollout the update trained on, its logprobs under the policy before the update)."""
    seen, update = [], trainer.update

    def spy(ro, *targets):
        with torch.no_grad():
            seen.append((ro, sequence_logprobs(trainer.policy, ro.sequences, ro.attention_mask, ro.prompt_len, 1.0)))
        return update(ro, *targets)
    trainer.update = spy
    row = trainer.step(prompts, more_prompts)
    return row, *seen[0]


def test_dynamic_sampling_replaces_groups_of_equal_rewards_with_new_prompts():
    trainer = make_trainer(flat_for_token_5, batch_size=16, num_minibatches=2, dynamic_sampling=True)
    row, ro, lp = step_and_catch(trainer, [FLAT, GOOD, FLAT, GOOD], lambda n: [GOOD2] * n)
    assert row["grpo/zero_std_frac"] == 0.5                            # before filtering: 2 of the 4 groups
    assert (row["grpo/resample_rounds"], row["grpo/filtered_frac"], row["grpo/unfilled_frac"]) == (1.0, 2 / 6, 0.0)
    assert len(ro.scores) == 16 and not equal_groups(ro.scores, 4).any()
    assert (ro.sequences[:, :4] == torch.tensor(GOOD2)).all(-1).sum() == 8   # the 2 new groups, prompts left-padded
    # rounds of other prompt and response lengths joined: the stored logprobs are still the policy's
    torch.testing.assert_close(lp * ro.response_mask, ro.logprobs, atol=1e-5, rtol=0)
    assert abs(row["grpo/first_ratio_mean"] - 1) < 1e-5


def test_dynamic_sampling_at_its_cap_trains_on_what_there_is_and_says_so():
    trainer = make_trainer(flat_for_token_5, batch_size=16, num_minibatches=2, dynamic_sampling=True,
                           max_resample_rounds=2)
    row, ro, _ = step_and_catch(trainer, [FLAT, GOOD, FLAT, GOOD], lambda n: [FLAT] * n)   # refills never help
    # 4 + 2 + 2 groups sampled, 4 trained on: the 2 informative ones, topped up with 2 of equal rewards
    assert (row["grpo/resample_rounds"], row["grpo/filtered_frac"], row["grpo/unfilled_frac"]) == (2.0, 0.5, 0.5)
    assert len(ro.scores) == 16 and equal_groups(ro.scores, 4).tolist() == [False, False, True, True]
    plain = make_trainer(flat_for_token_5, batch_size=16, num_minibatches=2).step([FLAT, GOOD, FLAT, GOOD])
    assert plain["grpo/zero_std_frac"] == 0.5 and "grpo/resample_rounds" not in plain   # off: today's row


def test_dynamic_sampling_without_more_prompts_redraws_from_the_given_ones():
    trainer = make_trainer(flat_for_token_5, batch_size=16, num_minibatches=2, dynamic_sampling=True,
                           max_resample_rounds=10)
    row, ro, _ = step_and_catch(trainer, [FLAT, GOOD, GOOD, GOOD], None)
    assert row["grpo/zero_std_frac"] == 0.25 and row["grpo/resample_rounds"] >= 1 and row["grpo/unfilled_frac"] == 0
    assert (ro.sequences[:, -ro.response_mask.shape[1] - 3:-ro.response_mask.shape[1]] == torch.tensor(GOOD)).all()


def test_a_run_refills_from_its_whole_prompt_pool(tmp_path):
    """One prompt per iteration from a pool of two, one of them scored 0 whatever the response: each time it
    is drawn, the refill comes from the pool (redrawing from the iteration's own prompt could never fill)."""
    texts = ["刚收到货，感觉很好", "这部电影很无聊"]
    dirs = write_tiny_rl_dirs(tmp_path, texts, n_embd=16, block_size=24)
    reward = lambda prompts, responses: [0.0 if p.startswith("这部") else float(sum(map(ord, r)) % 101)  # noqa: E731
                                         for p, r in zip(prompts, responses)]
    cfg = GRPOConfig(iterations=4, batch_size=4, group_size=4, num_minibatches=1, max_new_tokens=6, seed=1,
                     dynamic_sampling=True, max_resample_rounds=10)
    train_grpo(["刚收到货，感觉", "这部电影很"], dirs / "sft", None, dirs / "out", cfg, reward_fn=reward,
               show_progress=False)
    rows = read_metrics(dirs / "out" / "metrics.jsonl")
    assert any(r["grpo/zero_std_frac"] == 1.0 for r in rows) and all(r["grpo/unfilled_frac"] == 0 for r in rows)


# ------------------------------------------------------------------ 5. truncated completions, 6. entropy, 7. μ

def test_truncated_completions_get_no_loss():
    """With mask_truncated_completions the update's gradient is that of the finished responses alone (the
    policy term, the KL term and the token count); the truncated ones still have their advantage."""
    masked = make_trainer(perturb=0.1, kl_coef=0.1, mask_truncated_completions=True)
    plain = make_trainer(perturb=0.1, kl_coef=0.1)
    ro = hand_rollout(masked, RESPONSES)
    finished = masked.finished(ro)
    assert finished.tolist() == [True] * 5 + [False, False, True]
    keep = torch.nonzero(finished).flatten()
    (without,), _ = update_grads(masked, ro, ADV, 0.1)
    (alone,), _ = update_grads(plain, ro.minibatch(keep), ADV[keep], 0.1)
    (everything,), _ = update_grads(plain, ro, ADV, 0.1)
    torch.testing.assert_close(without, alone, rtol=1e-5, atol=1e-8)
    assert (everything - alone).abs().max() > 1e-3                   # the truncated rows did weigh in before


def test_entropy_bonus_is_minus_coef_times_the_aggregated_entropy_with_its_gradient():
    trainer = make_trainer(perturb=0.1, entropy_coef=0.05)
    ro = hand_rollout(trainer, RESPONSES)
    P = ro.prompt_len
    loss, stats = trainer.loss(ro, ADV, 0.0)
    trainer.model.zero_grad()
    loss.backward()
    with_bonus = flat_grad(trainer.model).clone()
    # by hand: H = −Σ_v p_v log p_v of softmax(logits / T) at every real response token, then the token mean
    logits = trainer.policy(ro.sequences, ro.attention_mask)[:, P - 1:-1] / trainer.config.temperature
    terms = [-(torch.softmax(logits[b, t], -1) * torch.log_softmax(logits[b, t], -1)).sum()
             for b in range(len(RESPONSES)) for t in range(len(RESPONSES[b]))]
    entropy = sum(terms) / len(terms)
    assert stats["grpo/entropy"].item() == pytest.approx(entropy.item(), rel=1e-5)
    trainer.config = replace(trainer.config, entropy_coef=0.0)
    no_bonus, stats_off = trainer.loss(ro, ADV, 0.0)
    assert loss.item() == pytest.approx(no_bonus.item() - 0.05 * entropy.item(), abs=1e-6)
    assert "grpo/entropy" not in stats_off
    trainer.model.zero_grad()
    (no_bonus - 0.05 * entropy).backward()
    torch.testing.assert_close(with_bonus, flat_grad(trainer.model), rtol=1e-4, atol=1e-7)
    trainer.model.zero_grad()
    no_bonus, _ = trainer.loss(ro, ADV, 0.0)
    no_bonus.backward()
    assert (with_bonus - flat_grad(trainer.model)).abs().max() > 1e-4   # the bonus has a gradient of its own


def test_the_second_pass_ratio_is_exp_of_new_minus_old_logprobs():
    """μ = ppo_epochs = 2 (TRL's num_iterations): π_old stays the rollout's, so after the first optimizer step
    the ratio is exp(log π_new − log π_old) ≠ 1, computed here token by token."""
    trainer = make_trainer(ppo_epochs=2)
    ro = hand_rollout(trainer, RESPONSES)
    seen, loss = [], trainer.loss

    def spy(mb, adv, kl):
        with torch.no_grad():
            lp = sequence_logprobs(trainer.policy, mb.sequences, mb.attention_mask, mb.prompt_len, 1.0)
        n = mb.response_mask.sum(-1).long().tolist()
        ratios = [(math.exp(lp[b, t] - mb.logprobs[b, t]), adv[b].item()) for b in range(len(n)) for t in range(n[b])]
        by_hand = sum(-min(r * a, min(max(r, 0.8), 1.2) * a) for r, a in ratios) / len(ratios)
        out = loss(mb, adv, kl)
        seen.append((sum(r for r, _ in ratios) / len(ratios), by_hand, out, mb.logprobs.sum().item()))
        return out
    trainer.loss = spy
    trainer.update(ro, ADV, 0.0)
    (first, _, _, old_1), (second, by_hand, (value, stats), old_2) = seen
    assert first == pytest.approx(1.0, abs=1e-6) and abs(second - 1) > 1e-3
    assert stats["grpo/ratio_mean"].item() == pytest.approx(second, rel=1e-5)
    assert value.item() == pytest.approx(by_hand, abs=1e-6)
    assert old_1 == old_2 == pytest.approx(ro.logprobs.sum().item())  # the same π_old on both passes
