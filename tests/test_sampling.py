import warnings

import pytest
import torch
import torch.nn.functional as F

from minirlhf import generate
from minirlhf.sampling import filter_logits, fit_to_context, left_pad, sample_next


def uncached_generate(model, prompts, max_new_tokens, temperature, top_k, top_p, eos_id, generator, pad_id=0):
    """The reference: re-run the whole sequence through the model for every new token."""
    ids, mask = left_pad(prompts, pad_id)
    B = ids.shape[0]
    finished = torch.zeros(B, dtype=torch.bool)
    toks, lps, rmask = [], [], []
    for _ in range(max_new_tokens):
        logits = model(ids, mask)[:, -1]
        tok, lp = sample_next(logits, temperature, top_k, top_p, generator)
        tok = torch.where(finished, pad_id, tok)
        toks.append(tok), lps.append(torch.where(finished, 0.0, lp)), rmask.append((~finished).long())
        ids = torch.cat([ids, tok[:, None]], 1)
        mask = torch.cat([mask, rmask[-1][:, None]], 1)
        if eos_id is not None:
            finished |= tok == eos_id
            if finished.all():
                break
    return ids, torch.stack(lps, 1), torch.stack(rmask, 1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 10, 1.0), (1.3, 0, 0.8)])
def test_cached_equals_uncached(tiny_gpt, temperature, top_k, top_p):
    prompts = [[1, 5, 6, 7, 8], [1, 9], [1, 3, 4]]
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, eos_id=2)
    out = generate(tiny_gpt, prompts, 20, generator=torch.Generator().manual_seed(3), **kw)
    ids, lps, rmask = uncached_generate(tiny_gpt, prompts, 20, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(out.sequences, ids)
    assert torch.equal(out.response_mask, rmask)
    torch.testing.assert_close(out.logprobs, lps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("top_k", [0, 5])
def test_kept_entropy_and_hidden_states_equal_a_full_forward(tiny_gpt, top_k):
    """keep_entropy / keep_hidden: what the sampler computed while sampling equals what a full forward over the
    finished sequences gives (left padding, EOS and the tokens masked after it included); with top-k on, the
    entropy is that of the filtered distribution sampled from."""
    T = 0.8
    out = generate(tiny_gpt, [[1, 5, 6, 7, 8], [1, 9], [1, 3, 4]] * 3, 15, temperature=T, top_k=top_k, eos_id=2,
                   generator=torch.Generator().manual_seed(2), keep_entropy=True, keep_hidden=True)
    m = out.response_mask
    assert m.eq(0).any(), "some row should have finished early, so that masking is exercised"
    hidden = tiny_gpt.hidden_states(out.sequences, out.attention_mask)[:, out.prompt_len - 1:-1]
    torch.testing.assert_close(out.hidden, hidden * m[..., None], atol=1e-5, rtol=0)
    logp = F.log_softmax(filter_logits(tiny_gpt.lm_head(hidden) / T, top_k=top_k), -1)
    entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)              # 0·log 0 = 0 for filtered tokens
    torch.testing.assert_close(out.entropy, entropy * m, atol=1e-5, rtol=0)
    assert out.entropy[m.bool()].min() > 0


def test_compiled_step_samples_the_same(tiny_gpt, monkeypatch):
    """compile_step=True runs decode_step through torch.compile (here its "eager" backend, which needs no C++
    compiler, with fullgraph=True: the step must trace as one graph) and samples the same tokens."""
    compile_, calls = torch.compile, []
    monkeypatch.setattr(torch, "compile",
                        lambda fn, **kw: calls.append(fn) or compile_(fn, backend="eager", fullgraph=True))
    prompts, kw = [[1, 5, 6, 7, 8], [1, 9], [1, 3, 4]], dict(temperature=0.9, eos_id=2, keep_entropy=True)
    out = generate(tiny_gpt, prompts, 12, generator=torch.Generator().manual_seed(4), compile_step=True, **kw)
    ref = generate(tiny_gpt, prompts, 12, generator=torch.Generator().manual_seed(4), **kw)
    assert [fn.__name__ for fn in calls] == ["decode_step"]
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.logprobs, ref.logprobs, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.entropy, ref.entropy, atol=1e-6, rtol=0)
    torch._dynamo.reset()  # the compiled step is cached with decode_step: leave no eager-backend entry behind


def test_nothing_is_kept_unless_asked(tiny_gpt):
    out = generate(tiny_gpt, [[1, 4]], 3, generator=torch.Generator().manual_seed(0))
    assert out.entropy is None and out.hidden is None


def test_logprobs_are_of_the_tempered_distribution(tiny_gpt):
    prompts = [[1, 4, 5], [1, 6]]
    T = 0.6
    out = generate(tiny_gpt, prompts, 6, temperature=T, generator=torch.Generator().manual_seed(0))
    logits = tiny_gpt(out.sequences, out.attention_mask)[:, out.prompt_len - 1:-1] / T
    expected = F.log_softmax(logits, -1).gather(-1, out.responses[..., None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs, expected, atol=1e-5, rtol=0)


def test_padded_row_samples_as_if_alone(tiny_gpt):
    """Row 0 is left-padded by 6 next to a longer prompt; its logprobs equal those of its own tokens
    scored without any padding."""
    out = generate(tiny_gpt, [[1, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9]], 10,
                   generator=torch.Generator().manual_seed(5))
    row = out.sequences[0, 6:][None]                                   # drop the 6 pads
    logits = tiny_gpt(row)[:, 2:-1]                                    # positions predicting the response
    expected = F.log_softmax(logits, -1).gather(-1, row[:, 3:, None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs[:1], expected, atol=1e-5, rtol=0)


def test_eos_rows_stop_and_are_masked(tiny_gpt):
    """Hot sampling makes EOS turn up in some rows: after it come pads, mask 0 and logprob 0."""
    eos, pad = 2, 0
    out = generate(tiny_gpt, [[1, 5]] * 16, 30, eos_id=eos, generator=torch.Generator().manual_seed(0),
                   temperature=3.0)
    resp, m = out.responses, out.response_mask
    finished_rows = 0
    for row in range(16):
        hits = (resp[row] == eos).nonzero()
        if len(hits):
            finished_rows += 1
            k = hits[0].item()
            assert m[row, :k + 1].eq(1).all() and m[row, k + 1:].eq(0).all()  # EOS itself is kept
            assert resp[row, k + 1:].eq(pad).all() and out.logprobs[row, k + 1:].eq(0).all()
        else:
            assert m[row].eq(1).all()
    assert 0 < finished_rows < 16
    assert torch.equal(out.attention_mask[:, out.prompt_len:], m)


def test_stops_early_when_all_rows_finish(tiny_gpt):
    """A model that always says EOS: one step, then generation ends for the whole batch."""
    with torch.no_grad():
        tiny_gpt.transformer.ln_f.weight.zero_()
        tiny_gpt.transformer.ln_f.bias.copy_(tiny_gpt.transformer.wte.weight[2] * 1e4)
    out = generate(tiny_gpt, [[1, 5], [1, 6, 7]], 40, eos_id=2, generator=torch.Generator())
    assert out.sequences.shape == (2, 4) and out.responses[:, 0].eq(2).all()
    assert out.response_mask.eq(1).all()


def test_seeded_generation_is_reproducible(tiny_gpt):
    a = generate(tiny_gpt, [[1, 4]] * 3, 8, generator=torch.Generator().manual_seed(9))
    b = generate(tiny_gpt, [[1, 4]] * 3, 8, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.sequences, b.sequences)


def test_top_k_support():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_support_hand_built():
    probs = torch.tensor([[0.05, 0.5, 0.25, 0.15, 0.05]])
    logits = probs.log()
    # sorted: .5, .25, .15, .05, .05 ; cumulative .5, .75, .9 -> top_p=0.7 keeps {.5, .25}
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[False, True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.75 + 1e-4)).tolist() == [[False, True, True, True, False]]
    # the most likely token is always kept
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).tolist() == [[False, True, False, False, False]]
    # top-k then top-p compose
    assert torch.isfinite(filter_logits(logits, top_k=1, top_p=0.99)).sum() == 1


def test_filtered_logprobs_renormalise():
    logits = torch.randn(4, 30)
    tok, lp = sample_next(logits, 1.0, 5, 1.0, torch.Generator().manual_seed(0))
    kept = torch.topk(logits, 5).values
    expected = logits.gather(-1, tok[:, None]).squeeze(-1) - torch.logsumexp(kept, -1)
    torch.testing.assert_close(lp, expected)
    assert all(t in set(torch.topk(logits[i], 5).indices.tolist()) for i, t in enumerate(tok.tolist()))


def test_bad_arguments(tiny_gpt):
    with pytest.raises(ValueError, match="block_size"):
        generate(tiny_gpt, [[1] * 40], 20)
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny_gpt, [[1]], 2, temperature=0)
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny_gpt, [[]], 2)


def sample_categorical(probs, generator):
    from minirlhf.sampling import inverse_cdf, uniforms
    return inverse_cdf(probs, uniforms(probs.shape[0], generator, probs.device))


def test_inverse_cdf_frequencies_and_zero_probability_tokens():
    """Inverse-CDF sampling draws token i with probability p_i, and never a token of probability 0."""
    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0])
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_categorical(probs.expand(1000, 5), g) for _ in range(100)])
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[1] == 0 and freq[4] == 0
    torch.testing.assert_close(freq, probs, atol=0.005, rtol=0)
    # unnormalised rows (a filtered distribution before renormalising) sample the same shape
    half = sample_categorical(torch.tensor([[1.0, 0.0, 1.0]]).expand(20000, 3), torch.Generator().manual_seed(1))
    assert (half != 1).all() and abs((half == 0).float().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_forward_passes_run_in_bf16_on_cuda_fp32_on_cpu(tiny_gpt, device):
    """generate() runs its forwards under runtime.autocast (bf16 on CUDA, like training and PPO's recomputed
    logprobs), while its logprobs stay fp32."""
    model = tiny_gpt.to(device)
    seen = []
    hook = model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    out = generate(model, [[1, 5, 6]], 3, generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert set(seen) == {torch.bfloat16 if device == "cuda" else torch.float32}
    assert out.logprobs.dtype == torch.float32


# ---------------------------------------------------------------- one prompt and a length, fitted to the context

@pytest.mark.parametrize("P,asked,block,kept,new", [
    (8, 48, 40, 8, 32),     # `minirlhf sample` defaults on a demo --quick model: the response gets what is left
    (8, 16, 40, 8, 16),     # fits: nothing cut
    (30, 48, 40, 20, 20),   # the prompt would leave less than half: it keeps its last half
    (35, 8, 40, 32, 8),     # a short response still fits after the prompt's last 32 tokens
    (45, 48, 40, 20, 20),   # the prompt alone fills the context
    (1, 5, 2, 1, 1),        # the smallest context
])
def test_fit_to_context(P, asked, block, kept, new):
    prompt = list(range(100, 100 + P))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, n = fit_to_context(prompt, asked, block)
    assert (len(out), n) == (kept, new) and out == prompt[len(prompt) - kept:]      # the prompt keeps its end
    assert len(out) + n <= block and n >= 1
    assert len(caught) == (0 if (kept, new) == (P, asked) else 1)                   # one warning iff anything is cut
