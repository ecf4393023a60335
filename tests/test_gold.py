"""The gold reward of the sandbox (gold.py): its formula on hand-made texts and against an independent
computation, padding changing nothing, and the labels proxies learn from."""
import math

import pytest
import torch

from minirlhf import GPT, GPTConfig, RewardModel, Tokenizer
from minirlhf.gold import GoldReward, label_pairs, repetition

TEXTS = ["刚收到货，感觉很好", "质量不错，物流很快", "这部电影很无聊", "性价比不错，性价比不错"]


def test_repetition_on_hand_made_texts():
    assert repetition("刚收到货，感觉", "质量不错，物流也快") == 0.0           # nothing written twice
    assert repetition("", "不错不错不错") == pytest.approx(3 / 5)      # 不错 错不 [不错 错不 不错]: 3 of 5 seen
    assert repetition("很好", "很好") == pytest.approx(1 / 2)             # 好很 new, 很好 seen in the prompt
    assert repetition("刚收到货", "") == 0.0 and repetition("", "好") == 0.0
    loop = "性价比不错，性价比不错，价比不错不错"
    assert repetition("刚收到货，感觉", loop) > 0.4 > 0.1 > repetition("刚收到货，感觉", "性价比不错，物流很快")


@pytest.fixture(scope="module")
def gold():
    tok = Tokenizer.train(TEXTS, 300)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32)
    return GoldReward(RewardModel(cfg).eval(), GPT(cfg).eval(), tok, tau=4.0, rho=0.5)


def by_hand(gold, prompt, response):
    """The formula, one text at a time, with its own forward passes (no batching, no padding)."""
    tok = gold.tokenizer
    p = [tok.bos_id] + tok.encode(prompt)
    ids = p + tok.encode(response) + [tok.eos_id]
    x = torch.tensor([ids])
    with torch.no_grad():
        r = gold.rm(x).item()                         # the normalised score of the last token
        logp = torch.log_softmax(gold.lm(x)[0].float(), -1)
    nll = -sum(logp[t - 1, ids[t]].item() for t in range(len(p), len(ids))) / (len(ids) - len(p))
    rep = repetition(prompt, response)
    return 1 / (1 + math.exp(-r)) * max(0.0, 1 - rep / 0.5) * math.exp(-max(0.0, nll - 4.0)), nll


def test_the_gold_is_its_formula_and_padding_changes_nothing(gold):
    prompts = ["刚收到货，", "这部电影", "", "说实话"]
    responses = ["感觉很好", "很无聊很无聊很无聊", "质量不错，物流很快", "好"]     # different lengths: left padding
    parts = gold.parts(prompts, responses)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        expected, nll = by_hand(gold, p, r)
        assert parts["gold"][i] == pytest.approx(expected, abs=1e-5)
        assert parts["nll"][i] == pytest.approx(nll, abs=1e-4)
        assert gold([p], [r])[0] == pytest.approx(parts["gold"][i], abs=1e-6)   # alone = in a padded batch
    assert parts["gold"][1] == 0.0                  # 5 of its 9 bigrams repeated: past ρ = 0.5, unreadable
    assert gold.parts([], []) == {k: [] for k in parts}


def test_the_gold_saves_and_loads(gold, tmp_path):
    gold.rm.save_pretrained(tmp_path / "rm", gold.tokenizer)
    gold.lm.save_pretrained(tmp_path / "lm", gold.tokenizer)
    gold.save(tmp_path)
    again = GoldReward.load(tmp_path)
    assert (again.tau, again.rho) == (4.0, 0.5)
    assert again(["刚收到货，"], ["感觉很好"]) == pytest.approx(gold(["刚收到货，"], ["感觉很好"]), abs=1e-6)


def test_labels_choose_the_higher_gold_and_drop_ties():
    pairs = label_pairs(["x", "x", "x"], ["a", "b", "c"], ["A", "B", "C"], [0.9, 0.1, 0.5], [0.2, 0.3, 0.5])
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "A"), ("B", "b")]


def test_noisy_labels_follow_bradley_terry():
    n, ga, gb, T = 4000, 0.6, 0.4, 0.1
    pairs = label_pairs(["x"] * n, ["a"] * n, ["b"] * n, [ga] * n, [gb] * n, temperature=T, seed=1)
    share = sum(p.chosen == "a" for p in pairs) / n
    p = 1 / (1 + math.exp(-(ga - gb) / T))                        # σ(2) ≈ 0.881
    assert share == pytest.approx(p, abs=3 * math.sqrt(p * (1 - p) / n))
    assert pairs == label_pairs(["x"] * n, ["a"] * n, ["b"] * n, [ga] * n, [gb] * n, temperature=T, seed=1)
