import pytest
import torch

from minirlhf import GPT, GPTConfig


@pytest.fixture
def tiny_config():
    return GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=48)


@pytest.fixture
def tiny_gpt(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config).eval()
