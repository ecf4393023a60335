"""One encoding of prompt ⊕ response for reward training, rollouts and scoring (responses.encode_prompt_responses).

A rollout holds [bos] + encode(prompt), the ids it sampled from, then the sampled response ids (EOS included);
the reward model scores that at its last real token. Reward training must feed the model the same ids: with
GPT-2's byte-level BPE, encode("the mov" + "ie was great") is not encode("the mov") + encode("ie was great"),
so encoding prompt + response as one text trains the reward model on ids no rollout ever shows it. Every
expected sequence below is written out from Tokenizer.encode, never taken from the code under test.
"""
import warnings

import pytest
import torch

from minirlhf import GPTConfig, RewardModel, Tokenizer
from minirlhf.data import Pair, Ranking
from minirlhf.reward import encode_examples, forward_examples
from minirlhf.rollout import score
from minirlhf.sampling import left_pad

PROMPT = "the mov"                                   # " movie" is one BPE token; " mov" + "ie" are two
RESPONSES = ["ie was great", "ie was bad", "ie was boring"]


@pytest.fixture(scope="module")
def bpe():
    texts = ["the movie was great", "the movie was bad", "the movie was boring", "a movie, a great movie"] * 50
    return Tokenizer.train(texts, 300, kind="bpe")


@pytest.fixture(scope="module")
def char():
    return Tokenizer.train(["the movie was great, bad or boring? 这部电影很好"], 300, kind="char")


def rollout_ids(tok, prompt, response):
    """What a rollout presents to the reward model: the prompt's ids, then the sampled ids up to EOS."""
    return [tok.bos_id] + tok.encode(prompt) + tok.encode(response) + [tok.eos_id]


def test_the_bpe_tokenizer_merges_across_the_prompt_response_boundary(bpe):
    for r in RESPONSES:                              # else the tests below could not tell the encodings apart
        assert bpe.encode(PROMPT + r) != bpe.encode(PROMPT) + bpe.encode(r)


def test_reward_training_encodes_pairs_and_rankings_as_a_rollout_presents_them(bpe):
    examples, cuts = encode_examples([Pair(PROMPT, RESPONSES[0], RESPONSES[1]),
                                      Ranking(PROMPT, RESPONSES, [2.0, 0.0, 1.0])], bpe, 64)
    assert cuts == (0, 0)
    assert examples[0].seqs == [rollout_ids(bpe, PROMPT, r) for r in RESPONSES[:2]]
    assert examples[1].seqs == [rollout_ids(bpe, PROMPT, r) for r in RESPONSES]
    assert examples[1].ranks == [0, 2, 1]


def test_a_pair_scores_the_same_in_reward_training_and_in_a_rollout(bpe):
    torch.manual_seed(0)
    rm = RewardModel(GPTConfig(vocab_size=bpe.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32)).eval()
    prompts = [PROMPT, "a great movie, the mov"]           # prompts of different lengths: left padding
    pair = (RESPONSES[0], "ie")                             # responses of different lengths: right padding
    examples, _ = encode_examples([Pair(p, *pair) for p in prompts], bpe, 32)
    with torch.no_grad():
        trained_on = torch.cat([r for r, _ in forward_examples(rm, examples, bpe.pad_id)]).flatten()  # (4,)
    # the rollout's layout (sampling.generate): left-padded prompts, then responses right-padded after EOS
    rows = [(p, r) for p in prompts for r in pair]
    prompt_ids, prompt_mask = left_pad([[bpe.bos_id] + bpe.encode(p) for p, _ in rows], bpe.pad_id)
    sampled = [bpe.encode(r) + [bpe.eos_id] for _, r in rows]
    N = max(len(s) for s in sampled)
    response_mask = torch.tensor([[1] * len(s) + [0] * (N - len(s)) for s in sampled])
    responses = torch.tensor([s + [bpe.pad_id] * (N - len(s)) for s in sampled])
    with torch.no_grad():
        rolled_out = score(rm, torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, response_mask], 1),
                           response_mask.float())
    assert len(set(map(len, sampled))) > 1                 # the responses really were padded
    torch.testing.assert_close(trained_on, rolled_out, atol=1e-5, rtol=0)


def test_a_long_example_keeps_the_prompts_end_and_whole_responses_as_a_rollout_does(bpe):
    prompt = "a great movie, a great movie, a great movie, the mov"
    sampled = [bpe.encode(r) + [bpe.eos_id] for r in RESPONSES[:2]]
    budget = max(map(len, sampled))                        # a rollout's max_new_tokens: the longest response
    max_len = budget + 3
    kept_prompt = ([bpe.bos_id] + bpe.encode(prompt))[-3:]  # a rollout's prompt keeps its last max_len − budget
    assert len(bpe.encode(prompt)) > 3
    with pytest.warns(UserWarning, match="1 of 1 prompts were cut at their start"):
        [ex], cuts = encode_examples([Pair(prompt, *RESPONSES[:2])], bpe, max_len)
    assert cuts == (1, 0)
    assert ex.seqs == [kept_prompt + s for s in sampled]   # both responses whole, with their EOS


def test_a_response_longer_than_max_len_keeps_its_start_and_loses_its_eos(bpe):
    with pytest.warns(UserWarning, match="1 of 2 responses at their end"):
        [ex], cuts = encode_examples([Pair(PROMPT, RESPONSES[0], "ie")], bpe, 4)
    assert cuts == (1, 1)
    assert ex.seqs == [[bpe.encode(PROMPT)[-1]] + bpe.encode(RESPONSES[0])[:3],   # one prompt token, no EOS
                       [bpe.encode(PROMPT)[-1]] + bpe.encode("ie") + [bpe.eos_id]]


@pytest.mark.parametrize("max_len", [64, 6])
def test_full_text_pairs_keep_the_ids_they_had_cut_or_not(char, max_len):
    """The demo's pairs are full texts (prompt ""): [bos] + encode(text) + [eos], cut keeping its start, as before."""
    texts = ["the movie was great", "这部电影很好, bad"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # max_len=6 cuts both texts, as it should
        [ex], _ = encode_examples([Pair("", *texts)], char, max_len)
    assert ex.seqs == [([char.bos_id] + char.encode(t) + [char.eos_id])[:max_len] for t in texts]
    assert ex.seqs == char.encode_texts(texts, max_len)    # = how score_texts and reference_texts encode


def test_a_char_tokenizer_gives_the_ids_it_gave_as_one_text_when_nothing_is_cut(char):
    responses = ["好", "the movie was boring?"]
    [ex], _ = encode_examples([Ranking("这部电影很", responses, [1.0, 0.0])], char, 64)
    assert ex.seqs == [[char.bos_id] + char.encode("这部电影很" + r) + [char.eos_id] for r in responses]
