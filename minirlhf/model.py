"""GPT-2, exactly, plus the two heads RLHF needs: a value head and a reward head.

The architecture is GPT-2's (Radford et al. 2019): learned position embeddings, pre-LayerNorm blocks,
tanh-approximated GELU, and an LM head tied to the token embedding. Parameter names are GPT-2's
(`transformer.h.0.attn.c_attn`, ...) so a Hugging Face checkpoint maps onto this module one to one
(see checkpoint.py for the on-disk format).

Padding: every forward takes an optional `attention_mask` (B, T) with 1 on real tokens. Positions are
derived from it (`cumsum(mask) - 1`, as Hugging Face's GPT-2 takes position_ids), and keys at pad positions are
masked, so a left-padded row gives the same logits at its real positions as the unpadded row.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint
from .errors import InputError
from .ops import last_true_index


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    """Number of token ids (the tokenizer's vocab_size)."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block; n_embd must divide by it."""
    n_embd: int = 256
    """Width of the residual stream."""
    block_size: int = 128
    """Maximum sequence length (GPT-2's n_positions)."""
    dropout: float = 0.0
    """Dropout on embeddings, attention and MLP outputs. Turned off (eval mode) during RL."""

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) positions: 0, 1, 2, ... counting real tokens only (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class KVCache:
    """Preallocated keys and values for every layer: (n_layer, 2, B, nh, max_len, hs).

    `length` is how many positions are filled. Storage is allocated on the first write, in the dtype
    the keys come in (bf16 under CUDA autocast), and filled in place afterwards, so the sampler's step
    loop allocates nothing per token. Each layer's (keys, values) views are made once, at allocation, so
    a step does no indexing to find its layer: at batch 1 the cost of a step is mostly such small ops.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int):
        self.shape = (config.n_layer, 2, batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.kv = None
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, nh, t, hs) after the filled part; return all keys/values so far."""
        if self.kv is None:
            self.kv = torch.empty(self.shape, device=k.device, dtype=k.dtype)
            self.layers = [(kv[0], kv[1]) for kv in self.kv]
        keys, values = self.layers[layer]
        start, end = self.length, self.length + k.shape[2]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, attn_mask, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        # q, k, v for all heads at once: (B, T, 3·C) -> 3 × (B, nh, T, hs), in three ops (this runs per token)
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, L, hs), L = positions so far
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and cache is None,
            dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's gelu_new


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


def build_attn_mask(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Boolean (B, 1, q_len, L) mask: query i may see key j iff j is real and j <= i (in absolute positions).

    The last q_len keys are the queries' own positions (prefill: q_len == L; cached step: q_len == 1).
    A pad query would see no key at all and softmax would give NaN, so it may always see itself; its
    output is never read.
    """
    L = attention_mask.shape[1]
    q_pos = torch.arange(L - q_len, L, device=attention_mask.device)
    k_pos = torch.arange(L, device=attention_mask.device)
    causal = k_pos[None, :] <= q_pos[:, None]                        # (q_len, L)
    allowed = causal[None] & attention_mask.bool()[:, None, :]       # (B, q_len, L)
    allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None]     # never an empty row
    return allowed[:, None]


class GPT(nn.Module):
    """GPT-2. `model(input_ids, attention_mask=None)` returns logits (B, T, vocab)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, input_ids, attention_mask=None, cache: KVCache | None = None,
                      position_ids=None, attn_mask=None):
        """Final-LayerNorm hidden states (B, T, n_embd): what the LM head, value head and reward head read.

        With a cache, `input_ids` are the new tokens only and `attention_mask` covers every position so far.
        The sampler's step passes `position_ids` (B, T) instead, with `attn_mask` (boolean, (B, 1, T, L), as
        build_attn_mask makes it, or None: every cached key is visible) ready-made; it keeps them up to date
        rather than rebuilding them every step, and answers for them (positions are not checked against
        block_size).
        """
        B, T = input_ids.shape
        if position_ids is not None:
            pos, too_long = position_ids, False
        elif attention_mask is None and cache is None:
            attn_mask = None  # plain causal attention, the fast path
            pos = torch.arange(T, device=input_ids.device).expand(B, T)
            too_long = T > self.config.block_size
        else:
            if attention_mask is None:
                raise ValueError("a KV cache needs the attention_mask of all positions so far (or position_ids)")
            attn_mask = build_attn_mask(attention_mask, T)
            pos = position_ids_from_mask(attention_mask)[:, -T:]
            # positions never exceed the column count, so the (GPU-syncing) max is needed only past it
            too_long = attention_mask.shape[1] > self.config.block_size and pos.max() >= self.config.block_size
        if too_long:
            raise ValueError(f"sequence of {int(pos.max()) + 1} positions exceeds block_size={self.config.block_size}")
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x)

    def forward(self, input_ids, attention_mask=None):
        return self.lm_head(self.hidden_states(input_ids, attention_mask))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- Hugging Face GPT-2 format on disk (config.json + model.safetensors) --
    def save_pretrained(self, directory, tokenizer=None):
        """Write config.json + model.safetensors (HF GPT-2 format) and, if given, tokenizer.json."""
        extra = {}
        if tokenizer is not None:
            extra = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
            tokenizer.save(Path(directory) / "tokenizer.json")
        checkpoint.save_gpt2(directory, self.state_dict(), self.config, extra)

    @classmethod
    def from_pretrained(cls, directory, dropout: float = 0.0):
        config_dict, state = checkpoint.load_gpt2(directory)
        model = cls(GPTConfig(**config_dict, dropout=dropout))
        checkpoint.load_into(model, state, directory)
        return model


def fp32_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A scalar head computed in fp32 even inside bf16 autocast: bf16 keeps 8 bits of mantissa, so a
    score near −8 would be rounded to steps of 0.06, coarser than the differences PPO learns from."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return layer(x.float())


class ValueHead(nn.Module):
    """V(s_t) = w·h_t + b, one scalar per position. Starts at exactly zero (lm-human-preferences)."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.v = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.v.weight)
        nn.init.zeros_(self.v.bias)

    def forward(self, hidden):  # (B, T, C) -> (B, T), in fp32 even under bf16 autocast
        return fp32_linear(self.v, hidden).squeeze(-1)

    def save(self, directory, name="value_head"):
        checkpoint.save_tensors(Path(directory) / f"{name}.safetensors", self.state_dict())

    def load(self, directory, name="value_head"):
        checkpoint.load_into(self, checkpoint.load_tensors(Path(directory) / f"{name}.safetensors"), directory)
        return self


class RewardModel(nn.Module):
    """A GPT-2 trunk and a scalar head, read at the last real token of prompt ⊕ response.

    r(x, y) = gain · (w·h_last + b) + bias. The head starts as N(0, 1/sqrt(d+1)) with bias 0
    (lm-human-preferences); `gain`/`bias` are the normalisation fitted after training so that scores on a
    reference set have mean 0 and std 1 (Ziegler et al. 2019). "Last real token" is the last position with
    attention_mask 1, so neither left padding of the prompt nor right padding after EOS can move the score.
    """

    def __init__(self, config: GPTConfig, gpt: GPT | None = None):
        super().__init__()
        self.config = config
        self.gpt = gpt if gpt is not None else GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(config.n_embd + 1))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))

    def raw_scores(self, input_ids, attention_mask=None):
        """Unnormalised scores (B,): the head applied at the last real token."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.gpt.hidden_states(input_ids, attention_mask)                  # (B, T, C)
        last = last_true_index(attention_mask)                                      # (B,)
        h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)
        return fp32_linear(self.head, h_last).squeeze(-1)

    def forward(self, input_ids, attention_mask=None):
        return self.gain * self.raw_scores(input_ids, attention_mask) + self.bias

    @torch.no_grad()
    def fit_normalization(self, raw: torch.Tensor, target_mean: float = 0.0, target_std: float = 1.0):
        """Set gain, bias so that gain·raw + bias has the target mean and std (unbiased=False)."""
        std = raw.float().std(unbiased=False).clamp(min=1e-8)
        self.gain.fill_(target_std / std)
        self.bias.fill_(target_mean - self.gain * raw.float().mean())

    def save_pretrained(self, directory, tokenizer=None):
        self.gpt.save_pretrained(directory, tokenizer)
        head = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        head.update(gain=self.gain, bias=self.bias)
        checkpoint.save_tensors(Path(directory) / self.HEAD_FILE, head)

    HEAD_FILE = "reward_head.safetensors"

    @classmethod
    def warn_if_one(cls, directory, doing: str) -> None:
        """Warn when `directory` holds a reward model (its head file), about to be used as a policy: `doing`
        says for what ("sampling", "training") — its trunk was trained to score text, not to write it."""
        if (Path(directory) / cls.HEAD_FILE).is_file():
            warnings.warn(f"{directory} is a reward model: {doing} its trunk, which was trained to score text, "
                          f"not to write it (give a pretrained or SFT policy directory)")

    @classmethod
    def from_pretrained(cls, directory, init_head: bool = False):
        """Load trunk + head. With init_head=True a plain LM directory is accepted and the head is fresh."""
        gpt = GPT.from_pretrained(directory)
        model = cls(gpt.config, gpt)
        head_path = Path(directory) / cls.HEAD_FILE
        if head_path.exists() or not init_head:
            state = checkpoint.load_tensors(head_path)
            checkpoint.load_into(model.head, {k[5:]: v for k, v in state.items() if k.startswith("head.")}, head_path)
            if state.get("gain", torch.empty(1)).shape != () or state.get("bias", torch.empty(1)).shape != ():
                raise InputError(f"{head_path}: scalar 'gain' and 'bias' (the reward normalisation) are missing")
            model.gain.copy_(state["gain"])
            model.bias.copy_(state["bias"])
        return model
