"""The rollout shared by every online RL trainer (PPO, GRPO, RLOO) and by the evaluation of any policy.

    prompts ──generate──▶ sequences, and from the sampler's own pass: logprobs, entropy (, values)
            ──reference forward──▶ ref_logprobs
            ──reward──▶ one score per sequence, read at the last real token

`collect` does all of it for one batch and returns a `Rollout`; `rollouts` does it for many text prompts,
batch after batch (sampling.sample_batches' batches and draws: how a policy is evaluated); `score` is the one
place a reward model (or a reward function) scores sequences. What a trainer does next (KL shaping and
GAE for PPO, group baselines for GRPO and RLOO) lives in advantages.py.

Alignment, the classic source of off-by-one bugs (trl #15, DeepSpeed-Chat #672): response token t sits
at column P+t of `sequences`; its logprob comes from the output at column P+t-1 (ops.predicting_positions
does that shift), and its value V(s_t) is read from the hidden state at the same column P+t-1 — the
state *before* the token is chosen.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from .errors import InputError
from .model import GPT, RewardModel
from .ops import logprobs_and_entropy, logprobs_from_logits, predicting_positions
from .reward_fns import call_checked
from .runtime import PhaseTimer, autocast
from .sampling import generate, sample_batches
from .tokenizer import Tokenizer


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

    @property
    def responses(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len:]

    def minibatch(self, idx: torch.Tensor) -> "Rollout":
        """The rows `idx` of every tensor field."""
        return Rollout(**{k: (v[idx] if torch.is_tensor(v) else v) for k, v in self.__dict__.items()})


def response_hidden(gpt: GPT, sequences, attention_mask, prompt_len: int) -> torch.Tensor:
    """Hidden states at columns P-1 … P+N-2: those that predict (and value) response tokens 0 … N-1."""
    return predicting_positions(gpt.hidden_states(sequences, attention_mask), prompt_len)


def response_logprobs(gpt: GPT, hidden, responses, temperature: float, with_entropy: bool = False):
    """logprobs (B, N) of `responses` under softmax(logits / T), from response_hidden's output.

    Dividing by the sampling temperature here, every time, keeps the recomputed distribution equal to the
    one sampled from (lm-human-preferences; "The N implementation details of RLHF with PPO", Huang et al.
    2023); otherwise KL grows too fast.
    """
    logits = gpt.lm_head(hidden).float() / temperature                       # (B, N, V)
    return logprobs_and_entropy(logits, responses) if with_entropy else logprobs_from_logits(logits, responses)


def sequence_logprobs(gpt: GPT, sequences, attention_mask, prompt_len: int, temperature: float,
                      with_entropy: bool = False):
    """Response logprobs (B, N) (and entropy) of `sequences` under `gpt`: used for the reference model."""
    hidden = response_hidden(gpt, sequences, attention_mask, prompt_len)
    return response_logprobs(gpt, hidden, sequences[:, prompt_len:], temperature, with_entropy)


class PolicyLogprobs(nn.Module):
    """A policy as an update sees it: forward(sequences, attention_mask, prompt_len, temperature) -> (B, N)
    response logprobs. The critic-free trainers (GRPO, RLOO) train this module; PPO's ActorCritic adds values.
    A module (not a function) so that `torch.compile` can take the whole update forward."""

    def __init__(self, policy: GPT):
        super().__init__()
        self.policy = policy

    def forward(self, sequences, attention_mask, prompt_len: int, temperature: float) -> torch.Tensor:
        return sequence_logprobs(self.policy, sequences, attention_mask, prompt_len, temperature)


def score(reward, sequences, attention_mask, response_mask=None, raw: bool = False) -> torch.Tensor:
    """(B,) fp32 scores of one batch, under autocast (runtime.autocast: bf16 on CUDA, as every forward): THE scoring
    of rollouts, best-of-n, make_preferences and reward_eval.score_sequences.

    A RewardModel reads prompt ⊕ response at its last real token: normalised, gain·raw + bias (what a policy is
    rewarded with), or with raw=True the head's own score (what the reward losses see). Any other callable is
    called as fn(sequences, response_mask) (a TextReward turns the ids into strings first).
    """
    with autocast(sequences.device):
        if isinstance(reward, RewardModel):
            return (reward.raw_scores(sequences, attention_mask) if raw else reward(sequences, attention_mask)).float()
        return torch.as_tensor(reward(sequences, response_mask), dtype=torch.float32, device=sequences.device)


def takes_text(fn) -> bool:
    """True for a reward function on strings: its first parameter is named `prompts` (TRL's convention)."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "prompts"


class TextReward:
    """A reward function on strings, as TRL's reward functions get them:

        fn(prompts: list[str], responses: list[str]) -> one number per response

    called with each rollout's prompt and response decoded by `tokenizer` (special tokens — BOS, EOS, PAD —
    left out), and with their ids (`prompt_ids`, `response_ids`) if it names them (reward_fns.py: the one
    signature and its checks, one finite number a response). The trainers call it like any reward callable,
    fn(sequences, response_mask); `train_ppo`/`train_grpo` wrap a `reward_fn` whose first parameter is named `prompts` in it themselves.
    Example: `TextReward(lambda prompts, responses: [r.count("好") for r in responses], tokenizer)`.
    """

    def __init__(self, fn, tokenizer: Tokenizer):
        self.fn, self.tokenizer = fn, tokenizer

    def texts(self, sequences, response_mask) -> tuple[list[str], list[str]]:
        P = sequences.shape[1] - response_mask.shape[1]
        responses = torch.where(response_mask.bool(), sequences[:, P:], self.tokenizer.pad_id)
        return (self.tokenizer.decode_batch(sequences[:, :P].tolist()),
                self.tokenizer.decode_batch(responses.tolist()))

    def __call__(self, sequences, response_mask) -> torch.Tensor:
        prompts, responses = self.texts(sequences, response_mask)
        P, lengths = sequences.shape[1] - response_mask.shape[1], response_mask.sum(-1).long().tolist()
        batch = {"prompts": prompts, "responses": responses,
                 "prompt_ids": [[t for t in row if t != self.tokenizer.pad_id] for row in sequences[:, :P].tolist()],
                 "response_ids": [row[:n] for row, n in zip(sequences[:, P:].tolist(), lengths)]}
        scores = call_checked(self.fn, repr(getattr(self.fn, "__name__", self.fn)), batch)
        return torch.tensor(scores, dtype=torch.float32, device=sequences.device)


def apply_missing_eos_penalty(scores, responses, eos_id: int | None, penalty: float | None):
    """N+ implementation details' non_eos_penalty: a response that never produced EOS gets `penalty`
    as its score (not added: replaced), so the policy cannot win by never finishing."""
    if penalty is None or eos_id is None:
        return scores
    has_eos = (responses == eos_id).any(-1)
    return torch.where(has_eos, scores, torch.full_like(scores, penalty))


@torch.no_grad()
def collect(policy: GPT, ref_policy: GPT, reward, prompts: list[list[int]], max_new_tokens: int,
            temperature: float = 1.0, eos_id: int | None = None, pad_id: int = 0,
            generator: torch.Generator | None = None, missing_eos_penalty: float | None = None,
            value_fn=None, recompute_logprobs: bool = False, compile_step: bool = False,
            timer: PhaseTimer | None = None) -> Rollout:
    """One batch of experience: sample a response to every prompt, then score it every way a trainer needs.

    prompts are token lists ([bos] + encode(prompt)); `reward` is a RewardModel or fn(sequences, response_mask).
    `value_fn(hidden, sequences, attention_mask, prompt_len) -> (B, N)` gives the critic's values from the
    policy's response hidden states (PPO; a separate critic ignores them and runs its own trunk); without it
    `values` is None (GRPO, RLOO, evaluation). Sampling is plain (no top-k / top-p), so the distribution
    sampled from is the one whose logprobs are optimised.

    The policy is run once: its logprobs and entropy (and, for value_fn, its hidden states) are those the
    sampler computed while sampling (generate's keep_entropy / keep_hidden). They equal a full forward's over
    the finished sequences up to float rounding (~1e-6 in fp32: a cached one-token step adds in another
    order); recompute_logprobs=True takes them from such a forward instead, at the cost of that forward. The
    reference model and the reward model always run their own forward. compile_step: generate's.
    `timer` records time/generate_s, policy_forward_s (values, or the recomputation), reference_s, scoring_s.
    """
    timer = timer or PhaseTimer()
    device = next(policy.parameters()).device
    with timer("time/generate_s"):
        gen = generate(policy, prompts, max_new_tokens, temperature=temperature, eos_id=eos_id, pad_id=pad_id,
                       generator=generator, keep_entropy=True, keep_hidden=value_fn is not None,
                       compile_step=compile_step)
    seq, attn, P = gen.sequences, gen.attention_mask, gen.prompt_len
    mask = gen.response_mask.float()
    with autocast(device):
        with timer("time/policy_forward_s"):
            hidden, logprobs, entropy = gen.hidden, gen.logprobs, gen.entropy
            if recompute_logprobs:
                hidden = response_hidden(policy, seq, attn, P)
                logprobs, entropy = response_logprobs(policy, hidden, gen.responses, temperature, with_entropy=True)
            values = value_fn(hidden, seq, attn, P) * mask if value_fn is not None else None
        with timer("time/reference_s"):
            ref_logprobs = sequence_logprobs(ref_policy, seq, attn, P, temperature)
        with timer("time/scoring_s"):
            scores = score(reward, seq, attn, mask)
    scores = apply_missing_eos_penalty(scores, gen.responses, eos_id, missing_eos_penalty)
    return Rollout(seq, attn, mask, P, logprobs * mask, ref_logprobs * mask, values, scores, entropy * mask)


def rollouts(policy: GPT, ref_policy: GPT, reward, tokenizer: Tokenizer, prompts: list[str], n_per_prompt: int,
             max_new_tokens: int, temperature: float = 1.0, seed: int = 0, batch_size: int = 128):
    """Yield (prompt texts, Rollout) per batch: n_per_prompt rollouts of each text prompt, in order, `collect`ed
    batch_size at a time on sampling.sample_batches' batches, prompt cuts and draws (one CPU generator seeded
    `seed`). How a policy is evaluated (evaluation.sample_and_score): the very rollout PPO trains on."""
    return sample_batches(policy, tokenizer, prompts, n_per_prompt, max_new_tokens, temperature, seed, batch_size,
                          sample=partial(collect, policy, ref_policy, reward))


def load_policy_and_reward(init_dir, reward_dir, device):
    """(tokenizer, policy, frozen reference, reward model or None) of an online RL run, checking that they share
    one vocabulary. reward_dir=None: the run is scored by a reward function, and no reward model is loaded."""
    RewardModel.warn_if_one(init_dir, "training")
    tokenizer = Tokenizer.from_file(Path(init_dir) / "tokenizer.json")
    policy = GPT.from_pretrained(init_dir).to(device)
    ref = GPT.from_pretrained(init_dir).to(device)
    reward = None if reward_dir is None else RewardModel.from_pretrained(reward_dir).to(device)
    for name, cfg in (("--init", policy.config), ("--reward", reward.config if reward else None)):
        if cfg is not None and cfg.vocab_size != tokenizer.vocab_size:
            raise InputError(f"{name}: model has {cfg.vocab_size} tokens but {init_dir}/tokenizer.json has "
                             f"{tokenizer.vocab_size}")
    reward_tok = None if reward_dir is None else Path(reward_dir) / "tokenizer.json"
    if reward_tok is not None and reward_tok.exists() and \
            Tokenizer.from_file(reward_tok).tok.to_str() != tokenizer.tok.to_str():
        raise InputError(f"{reward_tok}: the reward model was trained with a different tokenizer than {init_dir}")
    return tokenizer, policy, ref, reward
