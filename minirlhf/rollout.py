"""The rollout shared by every online RL trainer (PPO now; GRPO and RLOO use the same pieces).

    prompts ──generate──▶ sequences ──policy / reference forward──▶ logprobs, ref_logprobs
            ──reward──▶ one score per sequence, read at the last real token

Alignment, the classic source of off-by-one bugs (trl #15, DeepSpeed-Chat #672): response token t sits
at column P+t of `sequences`; its logprob comes from the logits at column P+t-1 (ops.shifted_logprobs
does that shift), and its value V(s_t) is read from the hidden state at the same column P+t-1 — the
state *before* the token is chosen.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .model import GPT, RewardModel, ValueHead
from .ops import logprobs_and_entropy, logprobs_from_logits


@dataclass
class Rollout:
    sequences: torch.Tensor       # (B, P+N) left-padded prompts ⊕ responses
    attention_mask: torch.Tensor  # (B, P+N)
    response_mask: torch.Tensor   # (B, N) float, 1 up to and including EOS
    prompt_len: int               # P
    logprobs: torch.Tensor        # (B, N) under the policy that sampled (temperature applied)
    ref_logprobs: torch.Tensor    # (B, N) under the frozen reference (same temperature)
    values: torch.Tensor | None   # (B, N) critic's V(s_t), None for critic-free methods
    scores: torch.Tensor          # (B,) reward per sequence (after any missing-EOS penalty)
    entropy: torch.Tensor         # (B, N) policy entropy per response position

    def minibatch(self, idx: torch.Tensor) -> "Rollout":
        """The rows `idx` of every tensor field."""
        return Rollout(**{k: (v[idx] if torch.is_tensor(v) else v) for k, v in self.__dict__.items()})


def response_hidden(gpt: GPT, sequences, attention_mask, prompt_len: int) -> torch.Tensor:
    """Hidden states at columns P-1 … P+N-2: those that predict (and value) response tokens 0 … N-1."""
    hidden = gpt.hidden_states(sequences, attention_mask)
    return hidden[:, prompt_len - 1:-1]


def response_logprobs(gpt: GPT, hidden, responses, temperature: float, with_entropy: bool = False):
    """logprobs (B, N) of `responses` under softmax(logits / T), from response_hidden's output.

    Dividing by the sampling temperature here, every time, keeps the recomputed distribution equal to the
    one sampled from (REFERENCES.md item 4); otherwise KL grows too fast.
    """
    logits = gpt.lm_head(hidden).float() / temperature                       # (B, N, V)
    return logprobs_and_entropy(logits, responses) if with_entropy else logprobs_from_logits(logits, responses)


def sequence_logprobs(gpt: GPT, sequences, attention_mask, prompt_len: int, temperature: float,
                      with_entropy: bool = False):
    """Response logprobs (B, N) (and entropy) of `sequences` under `gpt`: used for the reference model."""
    hidden = response_hidden(gpt, sequences, attention_mask, prompt_len)
    return response_logprobs(gpt, hidden, sequences[:, prompt_len:], temperature, with_entropy)


class ActorCritic(nn.Module):
    """The policy and its value function.

    value_model="shared": one trunk, two heads (the seed's GPT2HeadWithValueModel, TRL's
      AutoModelForCausalLMWithValueHead): cheap, one forward gives logprobs and values, but the value loss
      pulls on the policy's features (vf_coef weighs that).
    value_model="separate": the critic is its own GPT-2 trunk, initialised from the reward model when one
      is given (Stiennon et al. 2020; OpenRLHF): values start close to the final score and the policy's
      features are left alone, at twice the memory and compute.
    """

    def __init__(self, policy: GPT, critic_trunk: GPT | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic_trunk
        self.value_head = ValueHead(policy.config.n_embd)

    @classmethod
    def build(cls, policy: GPT, value_model: str, reward_model: RewardModel | None = None) -> "ActorCritic":
        if value_model == "shared":
            return cls(policy)
        if value_model != "separate":
            raise ValueError(f"value_model must be 'shared' or 'separate', got {value_model!r}")
        source = reward_model.gpt if isinstance(reward_model, RewardModel) else policy
        critic = GPT(source.config).to(next(policy.parameters()).device)
        critic.load_state_dict(source.state_dict())
        ac = cls(policy, critic)
        if isinstance(reward_model, RewardModel):  # V starts as the normalised score of each prefix
            with torch.no_grad():
                ac.value_head.v.weight.copy_(reward_model.gain * reward_model.head.weight)
                ac.value_head.v.bias.copy_(reward_model.gain * reward_model.head.bias + reward_model.bias)
        return ac

    def forward(self, sequences, attention_mask, prompt_len: int, temperature: float, with_entropy=False):
        """-> logprobs (B, N), values (B, N)[, entropy (B, N)] for the response part of `sequences`."""
        responses = sequences[:, prompt_len:]
        hidden = response_hidden(self.policy, sequences, attention_mask, prompt_len)
        out = response_logprobs(self.policy, hidden, responses, temperature, with_entropy)
        if self.critic is not None:
            hidden = response_hidden(self.critic, sequences, attention_mask, prompt_len)
        values = self.value_head(hidden).float()
        return (*out, values) if with_entropy else (out, values)


def score(reward, sequences, attention_mask, response_mask) -> torch.Tensor:
    """(B,) scores: a RewardModel reads prompt ⊕ response at its last real token; any other callable is
    called as fn(sequences, response_mask)."""
    if isinstance(reward, RewardModel):
        return reward(sequences, attention_mask).float()
    return torch.as_tensor(reward(sequences, response_mask), dtype=torch.float32, device=sequences.device)


def apply_missing_eos_penalty(scores, responses, eos_id: int | None, penalty: float | None):
    """N+ implementation details' non_eos_penalty: a response that never produced EOS gets `penalty`
    as its score (not added: replaced), so the policy cannot win by never finishing."""
    if penalty is None or eos_id is None:
        return scores
    has_eos = (responses == eos_id).any(-1)
    return torch.where(has_eos, scores, torch.full_like(scores, penalty))
