"""One chunked sampling path (sampling.sample_batches), one prompt room (sampling.prompt_room), one scoring
(rollout.score): evaluation, best-of-n and make_preferences given the same seed and batches draw the same
responses and give them the same scores, and every batch is cut to the room the models leave."""
import warnings

import pytest
import torch

from minirlhf import GPT, GPTConfig, RewardModel, Tokenizer
from minirlhf.evaluation import best_of_n, sample_and_score
from minirlhf.responses import make_preferences
from minirlhf.reward_eval import score_sequences
from minirlhf.rollout import rollouts, score
from minirlhf.sampling import generate, left_pad, prompt_room, sample_batches

TEXTS = ["刚收到货，感觉很好", "这部电影很无聊", "说实话，真的很不错", "这次购物总的来说体验很差"]
PROMPTS = ["这部电影很", "说实话", "刚收到货，感觉很好，这次购物总的来说体验很差"]


@pytest.fixture(scope="module")
def models():
    tok = Tokenizer.train(TEXTS, 300)
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=20)).eval()
    rm = RewardModel(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=24)).eval()
    with torch.no_grad():
        rm.gain.fill_(2.0)
        rm.bias.fill_(-0.5)
    return tok, policy, rm


def test_the_prompt_room_is_the_smallest_context_less_the_new_tokens(models):
    _, policy, rm = models
    assert prompt_room(8, policy, rm) == 12 and prompt_room(8, rm, policy) == 12
    assert prompt_room(8, policy, None) == 12      # a run scored by a function has no reward model
    assert prompt_room(8, rm) == 16 and prompt_room(20, policy) == 0


def test_every_batch_is_cut_to_the_room_keeping_each_prompts_end(models):
    tok, policy, _ = models
    seen = []

    def spy(ids, max_new_tokens, **kw):
        seen.append(ids)
        return generate(policy, ids, max_new_tokens, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(sample_batches(policy, tok, PROMPTS, 2, 8, batch_size=4, sample=spy))
        whole = tok.encode_prompts(PROMPTS)
    assert [len(chunk) for chunk, _ in batches] == [4, 2]
    assert [c for chunk, _ in batches for c in chunk] == [p for p in PROMPTS for _ in range(2)]
    ids = [i for batch in seen for i in batch]
    assert max(len(i) for i in ids) == prompt_room(8, policy) < len(whole[2])
    assert ids[4] == whole[2][-prompt_room(8, policy):]                      # the long prompt keeps its end
    assert all(g.sequences.shape[1] <= policy.config.block_size for _, g in batches)


def test_evaluation_best_of_one_and_make_preferences_draw_and_score_the_same(models):
    tok, policy, rm = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluated = sample_and_score(policy, policy, rm, tok, PROMPTS, 3, 6, seed=4, batch_size=5)
        best_of_1 = best_of_n(policy, rm, tok, PROMPTS, 3, 1, 6, seed=4, batch_size=5)
        _, rankings = make_preferences(policy, rm, tok, PROMPTS, 3, 6, seed=4, batch_size=5)
    assert best_of_1.responses == evaluated.responses == [r for rk in rankings for r in rk.responses]
    assert best_of_1.rewards == evaluated.rewards == [s for rk in rankings for s in rk.scores]
    assert evaluated.kl == pytest.approx([0.0] * 9, abs=1e-5)                 # the policy is its own reference


def test_rollouts_are_the_sampled_batches_collected(models):
    tok, policy, rm = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = list(sample_batches(policy, tok, PROMPTS, 2, 6, seed=9, batch_size=4))
        rolled = list(rollouts(policy, policy, rm, tok, PROMPTS, 2, 6, seed=9, batch_size=4))
    for (c1, g), (c2, ro) in zip(sampled, rolled, strict=True):
        assert c1 == c2 and torch.equal(g.sequences, ro.sequences) and torch.equal(g.logprobs, ro.logprobs)
        assert torch.equal(ro.scores, score(rm, g.sequences, g.attention_mask))


@torch.no_grad()
def test_raw_and_normalised_scores_and_their_batches(models):
    tok, _, rm = models
    seqs = tok.encode_texts(TEXTS, 12)
    ids, mask = left_pad(seqs, tok.pad_id)
    raw = score(rm, ids, mask, raw=True)
    assert score(rm, ids, mask).tolist() == pytest.approx((2.0 * raw - 0.5).tolist(), abs=1e-6)
    assert torch.equal(score_sequences(rm, seqs, tok.pad_id), raw)
    assert score_sequences(rm, seqs, tok.pad_id, 3, normalized=True).tolist() == \
        pytest.approx(score(rm, ids, mask).tolist(), abs=1e-6)             # left padding changes nothing
