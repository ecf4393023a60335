"""Runs scored by a Python reward function instead of a reward model: on strings (TRL's convention, first
parameter `prompts`) or on the rollout's tensors, with no reward-model directory at all."""
import json

import pytest
import torch
from conftest import write_tiny_rl_dirs

from minirlhf import Tokenizer
from minirlhf.errors import InputError
from minirlhf.grpo import GRPOConfig, train_grpo
from minirlhf.ppo import PPOConfig, PPOTrainer, train_ppo
from minirlhf.rollout import TextReward

TEXTS = ["今天天气很好", "我们喜欢这部电影", "真的很不错", "不好不好"]
PROMPTS = ["今天", "我们"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return write_tiny_rl_dirs(tmp_path_factory.mktemp("rf"), TEXTS)


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_with_a_text_reward_and_no_reward_directory(dirs, tmp_path):
    seen = []

    def count_hao(prompts, responses):
        seen.append((prompts, responses))
        return [r.count("好") for r in responses]
    cfg = GRPOConfig(iterations=2, batch_size=8, group_size=4, num_minibatches=1, max_new_tokens=6)
    trainer = train_grpo(PROMPTS, dirs / "sft", None, tmp_path / "g", cfg, reward_fn=count_hao, show_progress=False)
    prompts, responses = seen[0]
    assert set(prompts) <= set(PROMPTS) and len(responses) == 8          # the texts, special tokens left out
    assert all(isinstance(r, str) and "<" not in r for r in responses)
    # the logged reward is the mean of what the function returned
    assert rows(tmp_path / "g")[0]["env/reward_mean"] == pytest.approx(
        sum(r.count("好") for r in responses) / 8)
    assert (tmp_path / "g" / "model.safetensors").exists() and trainer.reward.fn is count_hao


def test_ppo_with_a_tensor_reward_and_no_reward_directory(dirs, tmp_path):
    cfg = PPOConfig(iterations=1, batch_size=4, num_minibatches=1, ppo_epochs=1, max_new_tokens=4)
    train_ppo(PROMPTS, dirs / "sft", None, tmp_path / "p", cfg, show_progress=False,
              reward_fn=lambda seq, mask: mask.sum(-1))
    assert rows(tmp_path / "p")[0]["env/reward_mean"] == pytest.approx(rows(tmp_path / "p")[0]["tokens/response_len"])


def test_a_reward_model_and_a_reward_function_together_or_neither_are_refused(dirs, tmp_path):
    cfg = PPOConfig(iterations=1, batch_size=4, num_minibatches=1)
    with pytest.raises(InputError, match="not both"):
        train_ppo(PROMPTS, dirs / "sft", dirs / "reward", tmp_path / "a", cfg, reward_fn=lambda s, m: m.sum(-1))
    with pytest.raises(InputError, match="reward model directory or a reward_fn"):
        train_ppo(PROMPTS, dirs / "sft", None, tmp_path / "b", cfg)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_text_reward_decodes_left_padded_prompts_and_right_padded_responses(dirs):
    tok = Tokenizer.from_file(dirs / "sft" / "tokenizer.json")
    p1, p2 = (tok.encode_prompts([p])[0] for p in ("今天", "我们喜欢"))
    r1, r2 = tok.encode("很好"), tok.encode("不")
    P, N = max(len(p1), len(p2)), 3
    seq = torch.full((2, P + N), tok.pad_id)
    seq[0, P - len(p1):P], seq[1, P - len(p2):P] = torch.tensor(p1), torch.tensor(p2)
    seq[0, P:P + len(r1) + 1] = torch.tensor(r1 + [tok.eos_id])
    seq[1, P:P + len(r2) + 1] = torch.tensor(r2 + [tok.eos_id])
    seq[1, P + 2] = 7                                                      # garbage after EOS, masked out
    mask = torch.tensor([[1., 1., 1.], [1., 1., 0.]])
    got = []
    scores = TextReward(lambda prompts, responses: got.append((prompts, responses)) or [1, 2], tok)(seq, mask)
    assert got == [(["今天", "我们喜欢"], ["很好", "不"])]
    assert scores.tolist() == [1.0, 2.0]
    with pytest.raises(InputError, match="returned 1 scores for 2 responses"):
        TextReward(lambda prompts, responses: [0], tok)(seq, mask)


def test_step_with_text_prompts_says_it_takes_ids(dirs):
    from minirlhf import GPT
    policy, ref = GPT.from_pretrained(dirs / "sft"), GPT.from_pretrained(dirs / "sft")
    trainer = PPOTrainer(policy, ref, lambda s, m: m.sum(-1), PPOConfig(batch_size=2, num_minibatches=1, iterations=0))
    with pytest.raises(InputError, match=r"PPOTrainer.step takes prompts as token ids.*encode_prompts"):
        trainer.step(["今天", "我们"])
