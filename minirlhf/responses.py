"""Prompt ⊕ response sequences and their log-probabilities: the pieces DPO, RRHF and SFT on demonstrations share.
Reward training encodes its pairs and rankings here too (encode_prompt_responses), so a reward model learns on the
very ids a rollout will show it.

    prompt, responses ──[bos] + encode(prompt) ⊕ encode(response) + [eos], cut to max_len──▶ Joined(ids, P)
        ──right-pad──▶ ResponseBatch(input_ids, attention_mask, response_mask)
        ──ONE forward──▶ log π(y_t | x, y_<t) per response token (ops.shifted_logprobs)
        ──Σ over the response, or its per-token mean (losses.sequence_scores)──▶ one number per response

Pitfalls of training on fixed responses, each handled here once (and tested in tests/test_responses.py):
  * Tokens merging at the prompt/response boundary. Prompt and response are encoded separately
    (Tokenizer.encode_prompts, Tokenizer.encode_responses) and then joined, as a rollout joins a prompt's ids
    and the sampled ids, so the response starts at a token boundary and the response mask covers exactly its
    tokens. Encoding prompt + response as one text lets a byte-level BPE merge the prompt's last characters
    with the response's first into one token; a split "at len(prompt_ids)" would then fall inside a token,
    scoring part of the prompt or missing part of the response.
  * Truncation that drops the response. An example longer than max_len loses the START of its prompt first
    (the end is what the response continues); only when a response alone does not fit after one prompt token
    does that response lose its END (it then has no EOS). The prompt is cut once per example, to fit its
    longest response, so DPO's chosen and rejected (RRHF's K candidates) always condition on the same x.
  * Padding. Batches are right-padded and carry their attention mask, from which the model takes its
    positions (cumsum(mask) − 1) and hides pad keys: a row's log-probabilities do not depend on how long its
    neighbours are.
  * One forward. DPO's chosen and rejected responses of a batch (RRHF's K candidates of every query) go
    through the model together as one batch: one forward and one backward per step, not two.

`make_preferences` makes such data from a policy's own samples ranked by a reward model: best-vs-worst Pairs
for DPO and all-k Rankings for RRHF.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .data import Pair, Ranking
from .losses import sequence_scores
from .model import GPT
from .ops import shifted_logprobs
from .rollout import apply_missing_eos_penalty, score
from .runtime import autocast
from .sampling import sample_batches
from .tokenizer import Tokenizer


class Joined(NamedTuple):
    """One prompt ⊕ response token sequence: ids[:prompt_len] is the prompt, ids[prompt_len:] the response."""
    ids: list[int]
    prompt_len: int


def join(prompt_ids: list[int], responses_ids: list[list[int]], max_len: int) -> tuple[list[Joined], bool, int]:
    """Join one prompt to each of its responses, within max_len tokens -> (joined, prompt cut?, responses cut).

    The prompt keeps its last max_len − (longest response) tokens, but at least one (the token that predicts
    the response's first); a response longer than max_len − (kept prompt) keeps its start. Every example's
    prompt is cut the same way for all its responses.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 (a prompt token and a response token), got {max_len}")
    if not prompt_ids or not responses_ids or not all(responses_ids):
        raise ValueError("a prompt needs at least one token ([bos]) and each response at least one ([eos])")
    keep = max(1, max_len - max(len(r) for r in responses_ids))
    prompt = prompt_ids[-keep:]
    room = max_len - len(prompt)
    joined = [Joined(prompt + r[:room], len(prompt)) for r in responses_ids]
    return joined, len(prompt) < len(prompt_ids), sum(len(r) > room for r in responses_ids)


class Cuts(NamedTuple):
    """What encode_prompt_responses cut to fit max_len: prompts that lost their start, responses their end."""
    prompts: int
    responses: int


def encode_prompt_responses(tokenizer: Tokenizer, prompts: list[str], responses: list[list[str]],
                            max_len: int) -> tuple[list[list[Joined]], Cuts]:
    """THE encoding of prompt ⊕ response: how reward training, DPO, RRHF and SFT read (prompt, response) text,
    and how a rollout presents it to the reward model -> (for each prompt, its Joined sequences; Cuts).

    Rule: [bos] + encode(prompt), then encode(response) + [eos], each encoded on its own (Tokenizer.encode_prompts,
    Tokenizer.encode_responses) and concatenated, exactly what a rollout holds: the prompt ids it sampled from,
    then the sampled ids (EOS included when sampled). Encoding prompt + response as one text would let a BPE
    merge across the boundary ("the mov" + "ie" -> "movie"), ids no rollout ever shows the reward model.
    Too long for max_len: `join`, i.e. the prompt keeps its END and the response its START, as a rollout keeps a
    prompt's last block_size − max_new_tokens tokens and stops a response at its budget (a response cut here
    has no EOS, like a sample that hit max_new_tokens). One warning counts what was cut.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} lists of responses")
    prompt_ids = tokenizer.encode_prompts(prompts)
    flat = tokenizer.encode_responses([r for rs in responses for r in rs])
    out, prompts_cut, responses_cut, start = [], 0, 0, 0
    for p, rs in zip(prompt_ids, responses):
        joined, p_cut, r_cut = join(p, flat[start:start + len(rs)], max_len)
        start += len(rs)
        out.append(joined)
        prompts_cut += p_cut
        responses_cut += r_cut
    if prompts_cut or responses_cut:
        warnings.warn(f"longer than max_len={max_len} tokens: {prompts_cut} of {len(prompts)} prompts were cut at "
                      f"their start, {responses_cut} of {len(flat)} responses at their end (no EOS)")
    return out, Cuts(prompts_cut, responses_cut)


@dataclass
class ResponseBatch:
    """Right-padded prompt ⊕ response sequences. response_mask is aligned with shifted_logprobs(logits,
    input_ids): entry [b, t] is 1 when token t + 1 of row b is a response token (EOS included)."""
    input_ids: torch.Tensor       # (B, T)
    attention_mask: torch.Tensor  # (B, T)   1 on real tokens
    response_mask: torch.Tensor   # (B, T-1) 1 on the response's tokens, 0 on the prompt and on padding


def collate_responses(seqs: list[Joined], pad_id: int, device=None) -> ResponseBatch:
    """Right-pad Joined sequences into a ResponseBatch.

    Right padding puts every real token at the column its position says, and a causal model never lets a
    real token see the pads after it; the attention mask still goes to the model, which takes positions
    from it, so nothing depends on the padding side.
    """
    T = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), T), dtype=torch.long)
    response = torch.zeros((len(seqs), T), dtype=torch.float32)
    for i, (s, p) in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(s)
        attention[i, :len(s)] = 1
        response[i, p:len(s)] = 1.0
    return ResponseBatch(ids.to(device), attention.to(device), response[:, 1:].to(device))


def token_logps(model, batch: ResponseBatch) -> torch.Tensor:
    """log π(token t + 1 | tokens ≤ t) for every column of a ResponseBatch: (B, T-1), fp32, with grad.

    Only those under batch.response_mask belong to the response; the others are the prompt's and the
    padding's, and every reduction that follows masks them.
    """
    with autocast(batch.input_ids.device):
        logits = model(batch.input_ids, batch.attention_mask)                  # (B, T, V)
    return shifted_logprobs(logits, batch.input_ids)


def response_logps(model, seqs: list[Joined], pad_id: int, length_penalty: float = 0.0) -> torch.Tensor:
    """One number per sequence, from one forward: Σ_t log π(y_t | x, y_<t) over its response tokens divided by
    |y| ** length_penalty (losses.sequence_scores): 0 the sum, log π(y | x) (DPO); 1 the per-token mean
    (RRHF, IPO, the `dpo_use_average` of RLAIF-V). (B,), with grad."""
    batch = collate_responses(seqs, pad_id, next(model.parameters()).device)
    return sequence_scores(token_logps(model, batch), batch.response_mask, length_penalty)


@torch.no_grad()
def batched_response_logps(model, seqs: list[Joined], pad_id: int, length_penalty: float = 0.0,
                           batch_size: int = 64) -> torch.Tensor:
    """response_logps of many sequences in eval mode, batch_size at a time, without grad -> (N,) on CPU."""
    was_training = model.training
    model.eval()
    out = [response_logps(model, seqs[i:i + batch_size], pad_id, length_penalty).cpu()
           for i in range(0, len(seqs), batch_size)]
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def make_preferences(policy: GPT, reward, tokenizer: Tokenizer, prompts: list[str], k: int, max_new_tokens: int,
                     seed: int = 0, temperature: float = 1.0, batch_size: int = 128,
                     missing_eos_penalty: float | None = None) -> tuple[list[Pair], list[Ranking]]:
    """k samples of `policy` for each prompt, scored by `reward` -> (pairs, rankings).

    rankings: one Ranking per prompt with its k responses, their scores and sources "sampled" (RRHF's input).
    pairs: per prompt, the best-scored response as chosen and the worst as rejected (the first of tied ones;
    DPO's input); a prompt whose k scores are all equal, or whose best and worst texts are the same, gives no
    pair, so there may be fewer pairs than prompts.

    `reward` is a RewardModel (normalised scores, read at the last real token of prompt ⊕ response, as PPO is
    rewarded) or a callable fn(sequences, response_mask) -> (B,), as rollout.score takes it. Sampling is
    plain (no top-k / top-p) at `temperature`, from one CPU generator seeded `seed` (sampling.sample_batches);
    with missing_eos_penalty a response that never produced EOS gets that score instead. Responses are text:
    decoded without special tokens, so training re-encodes them (a response that hit max_new_tokens is then
    given an EOS; a byte-level tokenizer may split a sampled text differently). A response that is EOS alone
    is the empty string, which data files (data.load_pairs) refuse: keep such pairs in memory or filter them.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2 (a preference needs two responses), got {k}")
    texts, scores = [], []
    for _, gen in sample_batches(policy, tokenizer, prompts, k, max_new_tokens, temperature, seed, batch_size):
        s = score(reward, gen.sequences, gen.attention_mask, gen.response_mask.float())
        scores += apply_missing_eos_penalty(s, gen.responses, tokenizer.eos_id, missing_eos_penalty).tolist()
        texts += tokenizer.decode_batch(gen.responses.tolist())
    pairs, rankings = [], []
    for i, prompt in enumerate(prompts):
        r, s = texts[i * k:(i + 1) * k], scores[i * k:(i + 1) * k]
        rankings.append(Ranking(prompt, r, s, ["sampled"] * k))
        best, worst = s.index(max(s)), s.index(min(s))
        if s[best] > s[worst] and r[best] != r[worst]:
            pairs.append(Pair(prompt, r[best], r[worst]))
    return pairs, rankings
