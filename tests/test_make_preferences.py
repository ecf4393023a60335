"""responses.make_preferences: a policy's k samples per prompt, scored -> best-vs-worst Pairs and all-k Rankings.

The policy is built by hand so that every sample can be checked from its text: all its blocks are zeroed and its
final LayerNorm outputs a fixed vector v, so its next-token distribution is the same everywhere, uniform over
好, 不, 坏 and <eos> (their embeddings are 20·v; every other token's logit is about 0, e^-20 times less likely).
"""
import pytest
import torch

from minirlhf import GPT, GPTConfig, RewardModel, Tokenizer
from minirlhf.evaluation import score_texts
from minirlhf.responses import make_preferences

PROMPTS = ["这部电影很", "刚收到货，感觉", "说实话", "总的来说"]
WORDS = "好不坏"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(PROMPTS + [WORDS], 300)


def word_policy(tok):
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.transformer.h.parameters():
            p.zero_()
        v = torch.nn.functional.normalize(torch.randn(16), dim=0)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(v)
        for i in [tok.encode(w)[0] for w in WORDS] + [tok.eos_id]:
            model.transformer.wte.weight[i] = 20 * v
    return model.eval()


def count_good(tok):
    """A reward callable: the number of 好 tokens in the response."""
    good = tok.encode("好")[0]
    return lambda seqs, mask: ((seqs[:, -mask.shape[1]:] == good) * mask).sum(-1).float()


def test_rankings_carry_the_scores_and_pairs_are_best_against_worst(tok):
    pairs, rankings = make_preferences(word_policy(tok), count_good(tok), tok, PROMPTS, k=4, max_new_tokens=8, seed=0)
    assert [r.query for r in rankings] == PROMPTS
    for r in rankings:
        assert len(r.responses) == len(r.scores) == 4 and r.sources == ["sampled"] * 4
        assert set("".join(r.responses)) <= set(WORDS)
        assert r.scores == [float(text.count("好")) for text in r.responses]     # scored from the text itself
    with_spread = [r for r in rankings if max(r.scores) > min(r.scores)]
    assert len(pairs) == len(with_spread) >= 2
    for p, r in zip(pairs, with_spread):
        assert p.prompt == r.query and p.chosen.count("好") > p.rejected.count("好")
        assert p.chosen == r.responses[r.scores.index(max(r.scores))]
        assert p.rejected == r.responses[r.scores.index(min(r.scores))]
    again = make_preferences(word_policy(tok), count_good(tok), tok, PROMPTS, k=4, max_new_tokens=8, seed=0)
    assert again == (pairs, rankings)                                           # seeded


def test_a_reward_model_scores_the_sampled_sequences(tok):
    torch.manual_seed(1)
    rm = RewardModel(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32)).eval()
    max_new = 10
    pairs, rankings = make_preferences(word_policy(tok), rm, tok, PROMPTS, k=3, max_new_tokens=max_new, seed=1,
                                       batch_size=5)                           # batches split prompts' groups
    finished = [(r.query + text, s) for r in rankings for text, s in zip(r.responses, r.scores) if len(text) < max_new]
    assert len(finished) >= 8                                                  # those ended with EOS
    again = score_texts(rm, tok, [t for t, _ in finished])                     # [bos] text [eos], scored anew
    assert torch.allclose(again, torch.tensor([s for _, s in finished]), atol=1e-5)
    for p in pairs:
        r = next(r for r in rankings if r.query == p.prompt)
        assert r.scores[r.responses.index(p.chosen)] >= r.scores[r.responses.index(p.rejected)]


def test_missing_eos_penalty_replaces_the_score_of_unfinished_responses(tok):
    _, rankings = make_preferences(word_policy(tok), count_good(tok), tok, PROMPTS, k=4, max_new_tokens=3, seed=2,
                                   missing_eos_penalty=-5.0)
    scores = {(len(t) == 3, s == -5.0) for r in rankings for t, s in zip(r.responses, r.scores)}
    assert scores == {(True, True), (False, False)}                            # both kinds occurred
    with pytest.raises(ValueError, match="k must be at least 2"):
        make_preferences(word_policy(tok), count_good(tok), tok, PROMPTS, k=1, max_new_tokens=3)
