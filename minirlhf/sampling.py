"""Batched sampling with a KV cache: prompts of any lengths, left-padded, one step per new token.

    prompts (lists of ids) ──left pad──▶ (B, P) ──prefill──▶ cache ──step × N──▶ (B, P+N)

Choices, said out loud:
  * Left padding, so every row's next token is written at the same column; positions come from the
    attention mask, so a padded row samples exactly what it would alone.
  * A row that emits EOS is finished: afterwards it emits PAD, its response_mask is 0 there and its
    logprob is 0. EOS itself is a real response token (mask 1), so the policy learns to stop.
  * `logprobs` are those of the distribution actually sampled from: after temperature, top-k and
    top-p. With top_k=0, top_p=1 they equal log_softmax(logits / T) of a full forward, which is why the
    rollout can take them (and the entropy and hidden states kept on request) from here; with filtering
    on they differ, the known source of "negative KL" (trl #925): PPO keeps them off.
  * Each token after the first is one call of `decode_step` (forward one token per row, LM head, sample),
    which may be torch.compile'd whole. At batch 1 a step reads every weight once and runs ~100 small
    ops, so its time is memory traffic and per-op overhead, not arithmetic (benchmarks/RESULTS.md).
  * Greedy decoding is top_k=1 (its logprobs are then 0).
  * On CUDA the forward passes run under bf16 autocast, like every other forward in minirlhf
    (runtime.autocast); the sampling itself is done in fp32. On CPU everything is fp32.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

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
    entropy: torch.Tensor | None = None  # (B, N) entropy of each step's distribution (keep_entropy)
    hidden: torch.Tensor | None = None   # (B, N, n_embd) final hidden state that predicted each token (keep_hidden)

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


def uniforms(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(n, 1) numbers uniform on [0, 1), drawn where the generator lives (a CPU generator also serves a CUDA
    model, with the same draws) and moved to `device`."""
    r = torch.rand(n, 1, generator=generator, device=generator.device if generator is not None else device)
    return r.to(device)


def inverse_cdf(probs: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """One token per row of a (B, V) probability table (not necessarily normalised), given r (B, 1) uniform
    on [0, 1): token i is drawn when cdf[i-1] < u ≤ cdf[i], u = (1 - r)·cdf[V-1], which happens with
    probability p_i. u > 0, so a token of probability 0 (filtered out by top-k/top-p) is never drawn.
    One random number per row: torch.multinomial draws one per vocabulary entry (B·V of them, on one core),
    which at 64 × 4096 on a CPU cost more than the whole forward step."""
    cdf = probs.cumsum(-1)                                                          # (B, V)
    return torch.searchsorted(cdf, (1 - r) * cdf[:, -1:]).squeeze(-1)              # first i with cdf[i] ≥ u


def sample_from(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, r: torch.Tensor,
                with_entropy: bool = False):
    """logits (B, V), uniforms r (B, 1) -> tokens (B,), their logprobs (B,), and the entropy (B,) of the
    distribution sampled from (None unless with_entropy): softmax(filter(logits / T)).

    Entropy H = −Σ p·log p over the tokens that filtering kept; with top_k=0, top_p=1 it is the entropy of
    softmax(logits / T), which is what the rollout reports (ops.entropy_from_logits on recomputed logits).
    """
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # (÷ 1 is exact: one op fewer)
    logp = F.log_softmax(filter_logits(logits, top_k, top_p), dim=-1)
    probs = logp.exp()
    tokens = inverse_cdf(probs, r)
    entropy = None
    if with_entropy:  # filtered tokens have p = 0 and log p = −inf: 0·log 0 counts as 0
        entropy = -(probs * (logp if top_k == 0 and top_p >= 1.0 else logp.masked_fill(probs == 0, 0.0))).sum(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1), entropy


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: logits (B, V) -> (tokens (B,), logprobs (B,)) under the filtered, tempered distribution."""
    tokens, logprobs, _ = sample_from(logits, temperature, top_k, top_p,
                                      uniforms(logits.shape[0], generator, logits.device))
    return tokens, logprobs


def decode_step(model, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, attn_mask, r: torch.Tensor,
                temperature: float, top_k: int, top_p: float, with_entropy: bool):
    """The one step of the decoding loop: feed token t of every row (B,), at `positions` (B,), and sample
    token t+1 -> (hidden (B, C) that predicts it, tokens, logprobs, entropy) as sample_from gives them.

    One function, so that it can be compiled whole (generate(compile_step=True)).
    """
    hidden = model.hidden_states(tokens[:, None], cache=cache, position_ids=positions[:, None],
                                 attn_mask=attn_mask)[:, 0]
    return hidden, *sample_from(model.lm_head(hidden), temperature, top_k, top_p, r, with_entropy)


def compiled_decode_step(device: torch.device):
    """decode_step through torch.compile (its compiled code is cached with decode_step, so only the first call
    compiles). On CPU with inductor's C++ wrapper: the step's ~35 kernels are then called from C++, not Python,
    which at batch 1 saves a tenth of the step (benchmarks/RESULTS.md)."""
    return torch.compile(decode_step, options={"cpp_wrapper": True} if device.type == "cpu" else None)


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             generator: torch.Generator | None = None, pad_id: int = 0, keep_hidden: bool = False,
             keep_entropy: bool = False, compile_step: bool = False) -> GenerationOutput:
    """Sample up to `max_new_tokens` for every prompt at once. Stops early when every row has hit EOS.

    keep_entropy: also return each step's entropy (B, N) (0 where masked); keep_hidden: also return the
    final hidden state that predicted each token (B, N, n_embd) (0 where masked): the rollout reads its
    entropy and value-head values from these, so that it needs no second forward of the policy.
    compile_step: torch.compile decode_step (compiled_decode_step; opt-in: the first call compiles for tens of
    seconds, the second length once more, with dynamic shapes; afterwards each step runs fewer, fused kernels,
    which matters at batch 1, where a step is mostly small ops). Same tokens; logprobs to ~1e-6.
    """
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
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, with_entropy=keep_entropy)
    step = compiled_decode_step(device) if compile_step else decode_step
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, max_new_tokens, device=device)
    entropy = torch.zeros(B, max_new_tokens, device=device) if keep_entropy else None
    hidden = torch.zeros(B, max_new_tokens, model.config.n_embd, device=device) if keep_hidden else None
    alive = torch.ones(B, max_new_tokens, dtype=torch.bool, device=device)    # the response mask, as bools
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    with autocast(device):  # bf16 on CUDA, as every forward in minirlhf; nothing on CPU
        cache = KVCache(model.config, B, P + max_new_tokens)
        h = model.hidden_states(ids, prompt_mask, cache)[:, -1]                                   # prefill
        tok, lp, ent = sample_from(model.lm_head(h), r=uniforms(B, generator, device), **sample)
        attn_mask = step_attn_mask(prompt_mask, max_new_tokens, cache.kv.dtype)
        first_pos = prompt_mask.sum(-1)                                                         # (B,)
        n = 0
        # Each step writes what it sampled, raw; what a finished row samples after its EOS is masked at the end.
        for t in range(max_new_tokens):
            tokens[:, t], logprobs[:, t] = tok, lp
            if keep_entropy:
                entropy[:, t] = ent
            if keep_hidden:
                hidden[:, t] = h
            n = t + 1
            if eos_id is not None:
                alive[:, t] = ~finished
                finished |= tok == eos_id
                if finished.all():
                    break
            if t + 1 < max_new_tokens:
                h, tok, lp, ent = step(model, tokens[:, t], first_pos + t, cache,
                                       None if attn_mask is None else attn_mask[..., :P + t + 1],
                                       uniforms(B, generator, device), **sample)
    model.train(was_training)
    alive = alive[:, :n]
    response_mask = alive.long()
    return GenerationOutput(sequences=torch.cat([ids, tokens[:, :n].masked_fill(~alive, pad_id)], 1),
                            attention_mask=torch.cat([prompt_mask, response_mask], 1), response_mask=response_mask,
                            logprobs=logprobs[:, :n] * alive, prompt_len=P,
                            entropy=None if entropy is None else entropy[:, :n] * alive,
                            hidden=None if hidden is None else hidden[:, :n] * alive[..., None])


def step_attn_mask(prompt_mask: torch.Tensor, max_new_tokens: int, dtype) -> torch.Tensor | None:
    """The keys a decoding step's query may see, as an additive mask (B, 1, 1, P+N) of 0 and −inf (SDPA would
    turn a boolean one into that in every layer, at every step): every key but the prompts' left padding.

    A finished row goes on attending to its own pads; its outputs are never read. None when no prompt is padded
    (batch 1, prompts of one length): SDPA then runs without a mask, its fastest path.
    """
    if bool(prompt_mask.all()):
        return None
    visible = F.pad(prompt_mask.bool(), (0, max_new_tokens), value=True)                        # (B, P+N)
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(
        ~visible, float("-inf"))[:, None, None, :]


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


def prompt_room(max_new_tokens: int, *models) -> int:
    """The tokens a prompt may keep so that max_new_tokens more fit in the context of every one of `models` (GPT,
    RewardModel; a None is skipped: a run scored by a function): min(block_size) − max_new_tokens.

    What every batch of prompts is cut to (Tokenizer.encode_prompts keeps a prompt's end), so that generate never
    runs past a model's positions and the reward model reads the whole prompt ⊕ response. Below 1 there is no
    room, not even for [bos]: the caller says which setting leaves none.
    """
    return min(m.config.block_size for m in models if m is not None) - max_new_tokens


@torch.no_grad()
def sample_batches(model, tokenizer, prompts: list[str], n_per_prompt: int, max_new_tokens: int,
                   temperature: float = 1.0, seed: int = 0, batch_size: int = 128, sample=None):
    """Yield (prompt texts, output) per batch: n_per_prompt samples of each text prompt, in order. THE chunked
    sampling path: evaluation (through rollout.rollouts), best-of-n, make_preferences and the reward model's
    normalisation set all sample here, so the same seed and batches give them the same draws.

    Prompts are fed as tokenizer.encode_prompts gives them ([bos] + ids cut to prompt_room(max_new_tokens, model),
    a too-long one keeping its end, with one warning); the draws come from one CPU generator seeded `seed`,
    consumed batch after batch, so they are the same on any device. Each batch is
    `sample(ids, max_new_tokens, temperature=, eos_id=, pad_id=, generator=)`: by default `generate` on `model`
    (a GenerationOutput); rollout.rollouts passes rollout.collect (a Rollout, with reference logprobs and scores).
    """
    sample = sample or partial(generate, model)
    gen = torch.Generator().manual_seed(seed)
    room = prompt_room(max_new_tokens, model)
    texts = [p for p in prompts for _ in range(n_per_prompt)]
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        yield chunk, sample(tokenizer.encode_prompts(chunk, room), max_new_tokens, temperature=temperature,
                            eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, generator=gen)
