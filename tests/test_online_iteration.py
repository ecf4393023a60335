"""The online iteration is written once (online.OnlineTrainer.step); an algorithm supplies its advantages, its
loss and its stats. A new one — REINFORCE with the batch-mean baseline, in a dozen lines — runs on that loop."""
import dataclasses

import torch

from minirlhf import GPT, GPTConfig
from minirlhf.grpo import GRPOTrainer
from minirlhf.losses import ppo_policy_loss
from minirlhf.online import OnlineConfig, OnlineTrainer
from minirlhf.ppo import PPOTrainer
from minirlhf.rollout import PolicyLogprobs

CFG = GPTConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=32, block_size=40)
TOKEN = 7


def count_token_reward(seq, rmask):
    return ((seq[:, -rmask.shape[1]:] == TOKEN).float() * rmask).sum(-1)


@dataclasses.dataclass
class ReinforceConfig(OnlineConfig):
    algo = "reinforce"


class Reinforce(OnlineTrainer):
    loss_keys = ("reinforce/loss",)

    def __init__(self, policy, ref, reward, config):
        super().__init__(PolicyLogprobs(policy), ref, reward, config)

    def modules(self):
        return {"policy": self.model}

    def advantages(self, ro, kl_coef):
        kl = ro.logprobs - ro.ref_logprobs
        return kl * ro.response_mask, ro.scores - ro.scores.mean()

    def advantage_stats(self, ro, kl, kl_coef, advantages):
        return {"reinforce/advantages_abs_mean": advantages.abs().mean().item()}

    def loss(self, mb, advantages):
        logprobs = self.train_forward(mb.sequences, mb.attention_mask, mb.prompt_len, self.config.temperature)
        loss, stats = ppo_policy_loss(logprobs, mb.logprobs, advantages, mb.response_mask, 0.2)
        return loss, {"reinforce/loss": loss.detach(), **{f"reinforce/{k}": v for k, v in stats.items()}}

    def update(self, ro, advantages):
        return self.optimize(ro, lambda mb, idx: self.loss(mb, advantages[idx]))


def test_an_algorithm_that_supplies_only_advantages_and_a_loss_learns_on_the_shared_iteration():
    torch.manual_seed(0)
    policy, ref = GPT(CFG), GPT(CFG)
    ref.load_state_dict(policy.state_dict())
    config = ReinforceConfig(max_new_tokens=8, batch_size=32, num_minibatches=2, ppo_epochs=1, lr=3e-3, eos_id=2,
                             pad_id=0, iterations=0, kl_coef=0.0)
    trainer = Reinforce(policy, ref, count_token_reward, config)
    rows = [trainer.step([[1, 5], [1, 6, 4]] * 16) for _ in range(25)]
    first, last = rows[0], rows[-1]
    assert {"iteration", "env/reward_mean", "objective/kl", "objective/entropy", "tokens/response_len",
            "reinforce/loss", "reinforce/grad_norm", "reinforce/first_ratio_mean", "time/rollout_s"} <= set(last)
    assert abs(first["reinforce/first_ratio_mean"] - 1) < 1e-5          # the first minibatch is on-policy
    assert trainer.guard_keys == ("env/reward_mean", "objective/kl", "reinforce/loss", "reinforce/grad_norm")
    assert trainer.iteration == 25
    early = sum(r["env/reward_mean"] for r in rows[:5]) / 5
    late = sum(r["env/reward_mean"] for r in rows[-5:]) / 5
    assert late > early + 0.3, (early, late)                            # 7 becomes more frequent


def test_ppo_and_grpo_do_not_write_their_own_iteration():
    for cls in (PPOTrainer, GRPOTrainer):
        assert "step" not in vars(cls) and {"advantages", "loss", "update", "advantage_stats"} <= set(vars(cls))
