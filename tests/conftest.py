import os

import pytest
import torch

from minirlhf import GPT, GPTConfig

# Tests use tiny models, which one thread runs as fast as two; and a second thread that spin-waits for a
# busy core can make a 5 s test take 100 s on a loaded machine. Subprocesses (CLI tests) inherit this.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    return GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=48)


@pytest.fixture
def tiny_gpt(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


def write_tiny_rl_dirs(tmp, texts, n_embd=16, block_size=24, prompts=None):
    """A random tiny policy (tmp/sft) and reward model (tmp/reward) sharing a char tokenizer trained on
    `texts`, and optionally tmp/prompts.jsonl: the inputs of a `minirlhf ppo` run."""
    import json

    from minirlhf import RewardModel, Tokenizer
    tok = Tokenizer.train(texts, 300)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=n_embd, block_size=block_size)
    GPT(cfg).save_pretrained(tmp / "sft", tok)
    RewardModel(cfg).save_pretrained(tmp / "reward", tok)
    if prompts is not None:
        (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n"
                                                   for p in prompts), encoding="utf-8")
    return tmp
