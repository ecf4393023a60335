"""responses.py, the encoding and log-probabilities DPO, RRHF and SFT share: against a per-example loop, padding
(a longer neighbour, garbage under the pads) changes nothing, a BPE boundary that would merge, truncation."""
import warnings

import pytest
import torch

from minirlhf import Tokenizer
from minirlhf.responses import (Joined, batched_response_logps, collate_responses, encode_prompt_responses, join,
                                response_logps)


def random_joined(g, n, vocab=64):
    """n Joined sequences of random ids in 3..vocab-1 with prompts and responses of different lengths."""
    out = []
    for _ in range(n):
        P, R = (int(x) for x in torch.randint(1, 9, (2,), generator=g))
        out.append(Joined(torch.randint(3, vocab, (P + R,), generator=g).tolist(), P))
    return out


def loop_logps(model, seq: Joined, average: bool) -> float:
    """Σ (or mean) over response tokens of log p(token | everything before it), the row alone, Python loop."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq.ids]))[0].double(), -1)   # (T, V), no padding at all
    terms = [logp[t - 1, seq.ids[t]].item() for t in range(seq.prompt_len, len(seq.ids))]
    return sum(terms) / (len(terms) if average else 1)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_response_logps_equal_a_per_example_loop(tiny_gpt, length_penalty):
    seqs = random_joined(torch.Generator().manual_seed(0), 6)
    with torch.no_grad():
        got = response_logps(tiny_gpt, seqs, pad_id=0, length_penalty=length_penalty)
    want = torch.tensor([loop_logps(tiny_gpt, s, average=length_penalty == 1.0) for s in seqs], dtype=torch.float64)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert len({len(s.ids) for s in seqs}) > 1                                     # the batch really was padded


def test_a_longer_neighbour_and_garbage_under_the_padding_change_nothing(tiny_gpt):
    g = torch.Generator().manual_seed(1)
    seqs = random_joined(g, 4)
    long = Joined(torch.randint(3, 64, (40,), generator=g).tolist(), 5)
    with torch.no_grad():
        alone = torch.stack([response_logps(tiny_gpt, [s], 0) for s in seqs]).squeeze(1)
        padded = response_logps(tiny_gpt, seqs + [long], pad_id=0)[:4]
        garbage = response_logps(tiny_gpt, [long] + seqs, pad_id=63)[1:]            # another pad id: other pads
    assert torch.allclose(padded, alone, atol=1e-5) and torch.allclose(garbage, alone, atol=1e-5)
    assert max(len(s.ids) for s in seqs) < len(long.ids)


def test_batched_logps_restore_train_mode_and_chunk_like_one_batch(tiny_gpt):
    seqs = random_joined(torch.Generator().manual_seed(2), 7)
    tiny_gpt.train()
    chunked = batched_response_logps(tiny_gpt, seqs, 0, batch_size=3)
    assert tiny_gpt.training
    with torch.no_grad():
        assert torch.allclose(chunked, response_logps(tiny_gpt.eval(), seqs, 0), atol=1e-5)


def test_response_mask_marks_exactly_the_response_tokens():
    batch = collate_responses([Joined([1, 7, 8, 9, 2], 2), Joined([1, 5, 2], 1)], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 7, 8, 9, 2], [1, 5, 2, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # entry t is token t+1: row 0's response is 8, 9, <eos> (tokens 2..4), row 1's 5, <eos> (tokens 1..2)
    assert batch.response_mask.tolist() == [[0, 1, 1, 1], [1, 1, 0, 0]]


def test_a_bpe_boundary_that_would_merge_is_split_where_the_response_starts():
    tok = Tokenizer.train(["hello world, the world is wide; world peace"] * 50, 300, kind="bpe")
    prompt, response = "hello wor", "ld peace"
    whole = tok.encode(prompt + response)
    p, r = tok.encode(prompt), tok.encode(response)
    assert whole != p + r                                    # the tokenizer does merge across this boundary
    assert whole[:len(p)] != p or whole[len(p):] != r        # so splitting the joint encoding at len(p) is wrong
    [[seq]], cuts = encode_prompt_responses(tok, [prompt], [[response]], 64)
    assert cuts == (0, 0)
    assert seq.ids == [tok.bos_id] + p + r + [tok.eos_id] and seq.prompt_len == 1 + len(p)
    batch = collate_responses([seq], tok.pad_id)
    scored = batch.input_ids[0, 1:][batch.response_mask[0].bool()].tolist()
    assert scored == r + [tok.eos_id] and tok.decode(scored) == response


def test_truncation_cuts_the_prompt_start_first_and_keeps_the_response():
    prompt, short, longer = [1] + list(range(10, 20)), [30, 31, 2], [40, 41, 42, 43, 2]
    (a, b), prompt_cut, responses_cut = join(prompt, [short, longer], 8)
    assert prompt_cut and responses_cut == 0
    assert a.ids == [17, 18, 19] + short and b.ids == [17, 18, 19] + longer     # one prompt for both: its end
    assert a.prompt_len == b.prompt_len == 3
    (c,), prompt_cut, responses_cut = join(prompt, [list(range(50, 60)) + [2]], 6)
    assert c == Joined([19, 50, 51, 52, 53, 54], 1) and responses_cut == 1       # one prompt token, response's start
    (d,), prompt_cut, responses_cut = join(prompt, [short], 32)
    assert d == Joined(prompt + short, len(prompt)) and not prompt_cut and not responses_cut


def test_encode_warns_once_with_what_was_cut():
    tok = Tokenizer.train(["abcd q:?"], 300)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out, cuts = encode_prompt_responses(tok, ["q:aaaaaaaa", "q:"], [["bb", "ccccccccccc"], ["d"]], 10)
    assert len(w) == 1 and "1 of 2 prompts" in str(w[0].message) and "1 of 3 responses" in str(w[0].message)
    assert cuts.prompts == 1 and cuts.responses == 1
    assert [len(s.ids) for s in out[0]] == [4, 10] and out[0][0].ids[-1] == tok.eos_id
    assert out[1][0].ids == [tok.bos_id] + tok.encode("q:") + tok.encode("d") + [tok.eos_id]
