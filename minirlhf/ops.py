"""The shared tensor ops of minirlhf: masked statistics, token logprobs, entropy.

Every reduction over response tokens goes through this file, so a padding bug can only live in one
place. Response tensors are (B, T); `mask` is 1.0 (or True) on real tokens and 0 on padding.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum_i x_i * m_i over `dim` (all dims when None)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def all_ranks_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over the ranks of a torch.distributed run (torchrun); `t` itself in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None, across_ranks: bool = False) -> torch.Tensor:
    """sum_i x_i m_i / sum_i m_i. An all-padding row gives 0, not NaN (the count is clamped at 1).

    across_ranks=True (dim=None only): both sums run over the entries of every rank, so the mean is
    the one of the concatenated batch (used to whiten PPO advantages under torchrun).
    """
    mask = mask.to(x.dtype)
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    if across_ranks:
        if dim is not None:
            raise ValueError("masked_mean(across_ranks=True) reduces over all entries (dim=None)")
        total, count = all_ranks_sum(torch.stack([total, count]))
    return total / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True,
               across_ranks: bool = False) -> torch.Tensor:
    """Variance of the real entries of x (over all of them; over every rank's with across_ranks).

    unbiased=True multiplies by n/(n-1) (Bessel), as lm-human-preferences does for rewards;
    advantage whitening uses unbiased=False (as lm-human-preferences does).
    """
    mean = masked_mean(x, mask, across_ranks=across_ranks)
    var = masked_mean((x - mean) ** 2, mask, across_ranks=across_ranks)
    if unbiased:
        n = mask.to(x.dtype).sum()
        n = all_ranks_sum(n) if across_ranks else n
        if n < 2:
            raise ValueError("masked_var(unbiased=True) needs at least two unmasked entries")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8, across_ranks: bool = False) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with statistics over real entries only; padding is returned as 0.

    shift_mean=False gives (x - mean) / std + mean: the spread is scaled to 1 while the mean stays where it
    was (TRL's `whiten_rewards` with shift_mean=False, lm-human-preferences' reward scaling); it is not x / std.
    across_ranks=True takes mean and var over the real entries of every rank (all-reduced sums), so a
    batch split over N processes is whitened exactly as the whole batch in one process would be.
    """
    mean = masked_mean(x, mask, across_ranks=across_ranks)
    var = masked_var(x, mask, unbiased=False, across_ranks=across_ranks)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens) under softmax(logits); logits (..., V), tokens (...) -> (...).

    Computed as gather(logits) - logsumexp(logits): the full (B, T, V) log-softmax is never kept,
    only one number per token (this matters for memory at large vocabularies).
    """
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def predicting_positions(x: torch.Tensor, start: int = 1) -> torch.Tensor:
    """x[:, start-1:-1]: the outputs at the positions that predict tokens start … T−1 of a sequence.

    The one place where position i−1 stands for token i. GPT-2 is causal, so its output at position i−1 has
    seen tokens 0 … i−1 only and is the distribution of token i. x (B, T, ...) are logits or hidden states of
    a forward over the whole sequence: the rollout takes the hidden states that predict (and value) the
    response, start = prompt length P; `shifted_logprobs` takes logits.
    """
    return x[:, start - 1:-1]


def shifted_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, start: int = 1) -> torch.Tensor:
    """log p(token i | tokens < i) for i = start … T−1: logits (B, T, V) of a forward over input_ids (B, T)
    -> (B, T − start). With start = 1, every token but the first; with start = P, a response after a prompt."""
    return logprobs_from_logits(predicting_positions(logits, start), input_ids[:, start:])


def entropy_from_logits(logits: torch.Tensor, lse: torch.Tensor | None = None) -> torch.Tensor:
    """H = logsumexp(z) - sum_v softmax(z)_v z_v, per position; (..., V) -> (...).

    `lse`, the logsumexp of the same logits, may be passed in when the caller has it already.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1) if lse is None else lse
    return lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # fused softmax: one pass fewer than exp(z - lse)


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logprobs_from_logits and entropy_from_logits sharing one logsumexp (the rollout needs both)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - lse, entropy_from_logits(logits, lse)


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last nonzero entry of each row of a (B, T) mask (0 for an all-zero row).

    Works for left padding, right padding or both: it is where a sequence score is read.
    """
    T = mask.shape[-1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).amax(-1)


AGGREGATIONS = ("token_mean", "sequence_mean", "dr_grpo")


def masked_aggregate(x: torch.Tensor, mask: torch.Tensor, how: str = "token_mean",
                     norm_len: int | None = None) -> torch.Tensor:
    """Per-token values (B, T) -> one scalar, in one of the three ways policy-gradient losses differ by:

      token_mean     sum_bt m x / sum_bt m: every real token weighs the same (masked_mean; PPO as in
                     lm-human-preferences, DAPO's token-level loss, TRL's "bnpo"/"dapo").
      sequence_mean  mean over sequences of each one's masked mean: every sequence weighs the same, so a
                     token of a short response weighs more than one of a long response (the original
                     GRPO). Rows without a real token are left out of the mean.
      dr_grpo        sum_bt m x / (B * L), L = norm_len, or the padded length T when None (Dr. GRPO, Liu
                     et al. 2025): a divisor that depends on no response's length. Pass the generation
                     budget (max_new_tokens) as norm_len for the same L in every batch, as TRL does with
                     max_completion_length; the padded T changes when a batch stops early.

    Garbage under the padding (inf, NaN) is replaced by 0 first, so it cannot leak.
    Worked example, x = [[1, 1, 1, 1], [4, pad, pad, pad]]: token_mean 8/5 = 1.6,
    sequence_mean (1 + 4)/2 = 2.5, dr_grpo 8/(2*4) = 1.0.
    """
    real = mask.bool()
    x = torch.where(real, x, torch.zeros_like(x))
    if how == "token_mean":
        return masked_mean(x, mask)
    if how == "sequence_mean":
        return masked_mean(masked_mean(x, mask, dim=-1), real.any(-1))
    if how == "dr_grpo":
        n_sequences = x[..., 0].numel()
        return masked_sum(x, mask) / (n_sequences * (x.shape[-1] if norm_len is None else norm_len))
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {how!r}")


def aggregation_count(mask: torch.Tensor, how: str = "token_mean") -> torch.Tensor:
    """How many units masked_aggregate(·, mask, how) averages over: real tokens (token_mean), sequences with a
    real token (sequence_mean) or sequences (dr_grpo, whose L is the same for every part of a batch).

    A batch's aggregate is Σ_parts count_k · aggregate_k / Σ_parts count_k for any split of its rows (with the
    same norm_len): what gradient accumulation and data parallelism need (online.minibatch_update).
    Worked example, masks [[1, 1, 1, 1]] and [[1, 0, 0, 0]]: token_mean counts 4 and 1, sequence_mean 1 and 1.
    """
    real = mask.bool()
    if how == "token_mean":
        return real.sum().float()
    if how == "sequence_mean":
        return real.any(-1).sum().float()
    if how == "dr_grpo":
        return torch.tensor(float(real[..., 0].numel()), device=mask.device)
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {how!r}")
