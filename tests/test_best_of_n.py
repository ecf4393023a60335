"""Best-of-n: the kept sample is the reward model's best of n draws; its KL bound against the exact KL."""

import pytest
import torch

from minirlhf import GPT, GPTConfig, Tokenizer
from minirlhf.evaluation import best_of_n, best_of_n_kl_bound
from minirlhf.sampling import sample_batches

TEXTS = ["刚收到货，感觉很好", "这部电影很无聊", "说实话，真的很不错", "这次购物总的来说体验很差"]


@pytest.fixture(scope="module")
def tok_and_policy():
    tok = Tokenizer.train(TEXTS, 300)
    torch.manual_seed(0)
    return tok, GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=32)).eval()


def count_reward(tok):
    good = tok.encode("好")[0]
    return lambda seq, mask: ((seq[:, -mask.shape[1]:] == good).float() * mask).sum(-1) + 0.01 * mask.sum(-1)


@pytest.mark.parametrize("n", [1, 4])
def test_the_kept_sample_is_the_best_of_its_n_candidates(tok_and_policy, n):
    tok, policy = tok_and_policy
    reward = count_reward(tok)
    prompts = ["这部电影很", "说实话"]
    out = best_of_n(policy, reward, tok, prompts, n_per_prompt=3, n=n, max_new_tokens=6, seed=5, batch_size=8)
    assert out.prompts == [p for p in prompts for _ in range(3)] and len(out.responses) == 6
    # the same candidates, drawn independently with the same seed and batching, scored one by one
    per_batch = max(1, 8 // n) * n
    scores = []
    for _, g in sample_batches(policy, tok, [p for p in prompts for _ in range(3)], n, 6, seed=5, batch_size=per_batch):
        scores += reward(g.sequences, g.response_mask.float()).tolist()
    best = [max(scores[i:i + n]) for i in range(0, len(scores), n)]
    assert out.rewards == pytest.approx(best)
    assert out.kl == [pytest.approx(best_of_n_kl_bound(n))] * 6


def test_n_below_one_is_refused(tok_and_policy):
    tok, policy = tok_and_policy
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n(policy, count_reward(tok), tok, ["好"], 1, 0, 4)
