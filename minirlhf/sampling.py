"""Batched sampling with a KV cache: prompts of any lengths, left-padded, one step per new token.

    prompts (lists of ids) ──left pad──▶ (B, P) ──prefill──▶ cache ──step × N──▶ (B, P+N)

Choices, said out loud:
  * Left padding, so every row's next token is written at the same column; positions come from the
    attention mask, so a padded row samples exactly what it would alone.
  * A row that emits EOS is finished: afterwards it emits PAD, its response_mask is 0 there and its
    logprob is 0. EOS itself is a real response token (mask 1), so the policy learns to stop.
  * `logprobs` are those of the distribution actually sampled from: after temperature, top-k and
    top-p. With top_k=0, top_p=1 they equal log_softmax(logits / T), which is what PPO recomputes;
    with filtering on they differ, the known source of "negative KL" (trl #925): PPO keeps them off.
  * Greedy decoding is top_k=1 (its logprobs are then 0).
  * On CUDA the forward passes run under bf16 autocast, like every other forward in minirlhf
    (runtime.autocast); the sampling itself is done in fp32. On CPU everything is fp32.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import KVCache
from .runtime import autocast


@dataclass
class GenerationOutput:
    sequences: torch.Tensor       # (B, P+N) left-padded prompt ⊕ response (PAD after EOS)
    attention_mask: torch.Tensor  # (B, P+N) 1 on real tokens
    response_mask: torch.Tensor   # (B, N)   1 on response tokens up to and including EOS
    logprobs: torch.Tensor        # (B, N)   log p of each sampled token (0 where masked)
    prompt_len: int               # P: responses are sequences[:, P:]

    @property
    def responses(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len:]


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """[[5, 6], [7]] -> ids [[5, 6], [pad, 7]], mask [[1, 1], [0, 1]]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (feed [bos] + encode(prompt))")
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.as_tensor(p, dtype=torch.long)
        mask[i, P - len(p):] = 1
    return ids.to(device), mask.to(device)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus (Holtzman et al. 2019).

    Nucleus: sort by probability, keep the smallest prefix whose mass reaches top_p (the token that
    crosses the threshold is kept; the most likely token always is).
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs            # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of a (B, V) probability table, by inverting its CDF: token i is drawn when
    cdf[i-1] < u ≤ cdf[i] for u uniform on (0, cdf[V-1]], which happens with probability p_i.

    One random number per row. torch.multinomial draws one per vocabulary entry (B·V of them, on one
    core), which at 64 × 4096 on a CPU cost more than the whole forward step. u > 0, so a token of
    probability 0 (filtered out by top-k/top-p) is never drawn.
    """
    cdf = probs.cumsum(-1)                                                          # (B, V)
    # drawn where the generator lives (a CPU generator also serves a CUDA model, with the same draws)
    r = torch.rand(probs.shape[0], 1, generator=generator,
                   device=generator.device if generator is not None else probs.device)
    u = (1 - r.to(probs.device)) * cdf[:, -1:]                                     # (B, 1) in (0, cdf[V-1]]
    return torch.searchsorted(cdf, u).squeeze(-1)                                   # first i with cdf[i] ≥ u


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: logits (B, V) -> (tokens (B,), logprobs (B,)) under the filtered, tempered distribution."""
    logp = F.log_softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    tokens = sample_categorical(logp.exp(), generator)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             generator: torch.Generator | None = None, pad_id: int = 0) -> GenerationOutput:
    """Sample up to `max_new_tokens` for every prompt at once. Stops early when every row has hit EOS."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use top_k=1 for greedy decoding)")
    device = next(model.parameters()).device
    ids, prompt_mask = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    if P + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"block_size={model.config.block_size}")
    was_training = model.training
    model.eval()
    mask = torch.zeros(B, P + max_new_tokens, dtype=torch.long, device=device)
    mask[:, :P] = prompt_mask
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, max_new_tokens, device=device)
    with autocast(device):  # bf16 on CUDA, as every forward in minirlhf; nothing on CPU
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        cache = KVCache(model.config, B, P + max_new_tokens)
        hidden = model.hidden_states(ids, prompt_mask, cache)                              # prefill
        # A step's one query sees every real key so far, and sits at position (real prompt tokens) + t. Both are
        # kept here, updated in place, rather than rebuilt from the (B, L) mask at every step. (A finished row's
        # query does not see its own pad key; it still sees its prompt, and its output is never read.)
        visible = mask.bool()[:, None, None, :]                                            # (B, 1, 1, P+N)
        first_pos = prompt_mask.sum(-1, keepdim=True)                                      # (B, 1)
        n = 0
        for t in range(max_new_tokens):
            tok, lp = sample_next(model.lm_head(hidden[:, -1]), temperature, top_k, top_p, generator)
            tokens[:, t] = torch.where(finished, pad_id, tok)
            logprobs[:, t] = torch.where(finished, 0.0, lp)
            mask[:, P + t] = (~finished).long()
            visible[:, 0, 0, P + t] = ~finished
            n = t + 1
            if eos_id is not None:
                finished |= tok == eos_id
                if finished.all():
                    break
            if t + 1 < max_new_tokens:
                hidden = model.hidden_states(tokens[:, t:t + 1], mask[:, :P + t + 1], cache,     # one step
                                             position_ids=first_pos + t, attn_mask=visible[..., :P + t + 1])
    model.train(was_training)
    return GenerationOutput(sequences=torch.cat([ids, tokens[:, :n]], 1), attention_mask=mask[:, :P + n],
                            response_mask=mask[:, P:P + n].clone(), logprobs=logprobs[:, :n], prompt_len=P)


def fit_to_context(prompt: list[int], max_new_tokens: int, block_size: int) -> tuple[list[int], int]:
    """(prompt, max_new_tokens) cut to fit the model's context together, for sampling one prompt.

    The response gets the positions the prompt leaves, up to max_new_tokens. A prompt that leaves fewer than
    min(max_new_tokens, block_size // 2) keeps its end (what the response continues) and leaves that many.
    One warning says what was cut, if anything.
    """
    if max_new_tokens < 1 or not prompt:
        raise ValueError(f"need a prompt of at least one token and max_new_tokens >= 1, got {len(prompt)} and "
                         f"{max_new_tokens}")
    n_new = min(max_new_tokens, block_size - len(prompt))
    if n_new >= min(max_new_tokens, block_size // 2):
        if n_new < max_new_tokens:
            warnings.warn(f"--max-new-tokens {max_new_tokens} cut to {n_new}: the prompt takes {len(prompt)} of "
                          f"the model's {block_size} positions (block_size)")
        return prompt, n_new
    n_new = min(max_new_tokens, block_size // 2)
    keep = block_size - n_new
    warnings.warn(f"the prompt ({len(prompt)} tokens) was cut to its last {keep} to leave {n_new} new tokens "
                  f"in the model's {block_size} positions (block_size)")
    return prompt[-keep:], n_new


@torch.no_grad()
def sample_batches(model, tokenizer, prompts: list[str], n_per_prompt: int, max_new_tokens: int,
                   temperature: float = 1.0, seed: int = 0, batch_size: int = 128):
    """Yield (prompt texts, GenerationOutput) per batch: n_per_prompt samples of each text prompt, in order.

    Prompts are fed as tokenizer.encode_prompts gives them ([bos] + ids, a too-long one keeps its end, with
    one warning); the draws come from one CPU generator seeded `seed`, so they are the same on any device.
    """
    gen = torch.Generator().manual_seed(seed)
    room = model.config.block_size - max_new_tokens
    texts = [p for p in prompts for _ in range(n_per_prompt)]
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        ids = tokenizer.encode_prompts(chunk, room)
        yield chunk, generate(model, ids, max_new_tokens, temperature=temperature, eos_id=tokenizer.eos_id,
                              pad_id=tokenizer.pad_id, generator=gen)
