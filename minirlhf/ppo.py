"""PPO for language models: the loop of Ziegler et al. 2019 and Stiennon et al. 2020.

One iteration of `PPOTrainer.step(prompts)`:
    1. rollout   sample responses with the KV-cache sampler; recompute logprobs (same temperature),
                 values, and the frozen reference's logprobs; score prompt ⊕ response
    2. shaping   r_t = −β·KL_t on every response token, plus the score on the last real one (EOS)
    3. GAE       δ_t = r_t + γV_{t+1} − V_t,  A_t = δ_t + γλA_{t+1};  returns = A + V; whiten A
    4. update    ppo_epochs × num_minibatches of the clipped policy loss + vf_coef × clipped value loss

CPU: `minirlhf ppo --prompts p.jsonl --init runs/x/sft --reward runs/x/reward --out runs/x/policy`.
GPU: add `--device cuda` (bf16 autocast). Every choice on which the papers differ is a config field,
with the default stated in its docstring. Simplifications: one process per rollout batch (no
asynchronous generation), no reward-model ensembles, responses are right-padded after EOS.

Under torchrun (runtime.py) each rank samples `batch_size` rollouts from its own seed; advantages are
whitened with the mean and variance of ALL ranks' tokens (ops.masked_whiten(across_ranks=True)), the
adaptive KL controller sees the KL averaged over ranks, and gradients are averaged before each step.
NaN guard: a non-finite reward stops the iteration before the update, and a non-finite loss or
gradient norm stops it before optimizer.step(), raising TrainingDiverged with the iteration.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .advantages import (AdaptiveKLController, FixedKLController, compute_gae, explained_variance,  # noqa: F401
                         kl_penalty, shape_rewards)
from .config import validate
from .losses import ppo_policy_loss, ppo_value_loss
from .model import GPT
from .ops import masked_mean, masked_whiten
from .errors import InputError
from .optim import clip_grad, lr_at, make_adamw, set_lr
from .rollout import ActorCritic, Rollout, apply_missing_eos_penalty, score, sequence_logprobs
from .runtime import autocast, average_gradients, dist_info, mean_across_ranks, rank_seed, sync_params
from .sampling import generate
from .tracking import check_finite


@dataclass
class PPOConfig:
    max_new_tokens: int = 24
    """Response length cap (tokens)."""
    temperature: float = 1.0
    """Sampling temperature; logprobs are always recomputed at the same temperature."""
    eos_id: int | None = None
    """EOS token id: responses stop there. None: fixed-length responses."""
    pad_id: int = 0
    """PAD token id (must differ from eos_id)."""
    batch_size: int = 64
    """Rollouts per iteration of a run (train_ppo draws them from the prompt pool); PPOTrainer.step
    itself samples one rollout per prompt it is given."""
    ppo_epochs: int = 4
    """Passes over each rollout batch, a fresh permutation each."""
    num_minibatches: int = 4
    """Minibatches per epoch (optimizer steps per epoch)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per minibatch (same result, less memory)."""
    lr: float = 1e-4
    """Adam learning rate (eps 1e-5, REFERENCES.md item 12)."""
    lr_schedule: str = "linear"
    """'linear' decay to 0 over `iterations`, or 'constant'."""
    iterations: int = 100
    """Iterations of a run (`minirlhf ppo --iterations`); the linear LR decay spans them (0: constant)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    kl_coef: float = 0.1
    """β (initial β when adaptive_kl)."""
    adaptive_kl: bool = False
    """Ziegler's proportional controller towards kl_target."""
    kl_target: float = 6.0
    """Target KL (nats per sequence) for the adaptive controller."""
    kl_horizon: int = 10000
    """Controller horizon in samples."""
    kl_estimator: str = "k1"
    """k1 (default, as lm-human-preferences), k2 or k3 — see kl_penalty."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE λ."""
    cliprange: float = 0.2
    """PPO policy ratio clip ε."""
    cliprange_value: float = 0.2
    """Value clip around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    whiten_advantages: bool = True
    """Whiten advantages over the whole rollout batch (masked, unbiased=False)."""
    scale_rewards: bool = False
    """Divide shaped rewards by their std (mean kept) before GAE."""
    missing_eos_penalty: float | None = None
    """If set, the score of a response without EOS is replaced by this value."""
    value_model: str = "shared"
    """'shared' (value head on the policy trunk) or 'separate' (critic trunk from the reward model)."""
    seed: int = 0
    """Seed for prompt order, sampling and minibatch order."""
    device: str = "cpu"
    """cpu or cuda (bf16 autocast)."""
    compile: bool = False
    """Opt-in torch.compile of the update's forward (worth it on a GPU for larger models with fixed-length
    rollouts, benchmarks/RESULTS.md; each new sequence length recompiles, the first ones slowly)."""
    save_every: int = 0
    """Iterations between resumable checkpoints (0: only at the end)."""

    def __post_init__(self):
        validate(self, positive=("max_new_tokens", "temperature", "batch_size", "ppo_epochs", "num_minibatches",
                                 "gradient_accumulation_steps", "lr", "kl_target", "kl_horizon", "cliprange",
                                 "cliprange_value"),
                 non_negative=("iterations", "max_grad_norm", "kl_coef", "vf_coef", "save_every"),
                 unit_interval=("gamma", "lam"),
                 choices={"lr_schedule": ("linear", "constant"), "kl_estimator": ("k1", "k2", "k3"),
                          "value_model": ("shared", "separate")})
        if self.batch_size % (self.num_minibatches * self.gradient_accumulation_steps):
            raise InputError(f"--batch_size={self.batch_size} must divide into --num_minibatches="
                             f"{self.num_minibatches} × --gradient_accumulation_steps="
                             f"{self.gradient_accumulation_steps} equal parts")


class PPOTrainer:
    """PPO on a GPT policy against a RewardModel or any `fn(sequences, response_mask) -> (B,) scores`."""

    def __init__(self, policy: GPT, ref_policy: GPT, reward, config: PPOConfig,
                 generator: torch.Generator | None = None):
        if config.eos_id is not None and config.eos_id == config.pad_id:
            raise ValueError("pad_id must differ from eos_id, or masking PAD also masks EOS")
        self.config = config
        self.device = next(policy.parameters()).device
        self.model = ActorCritic.build(policy, config.value_model, reward).to(self.device)
        sync_params(self.model)  # torchrun: every rank starts from rank 0's weights
        self.ref_policy, self.reward = ref_policy, reward
        for m in (self.model, ref_policy) + ((reward,) if isinstance(reward, torch.nn.Module) else ()):
            m.eval()  # dropout off everywhere (REFERENCES.md item 11); gradients still flow
        for p in ref_policy.parameters():
            p.requires_grad_(False)
        # the update's forward; torch.compile'd on request, sharing its parameters with self.model
        self.train_forward = torch.compile(self.model) if config.compile else self.model
        self.optimizer = make_adamw(self.model, config.lr, weight_decay=0.0, eps=1e-5, betas=(0.9, 0.999))
        self.kl_ctl = (AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
                       if config.adaptive_kl else FixedKLController(config.kl_coef))
        self.generator = generator or torch.Generator().manual_seed(rank_seed(config.seed))  # own seed per rank
        self.iteration = 0
        self.timing: dict[str, float] = {}

    # ------------------------------------------------------------ 1. rollout
    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> Rollout:
        c = self.config
        with self.timed("time/generate_s"):
            gen = generate(self.model.policy, prompts, c.max_new_tokens, temperature=c.temperature,
                           eos_id=c.eos_id, pad_id=c.pad_id, generator=self.generator)
        seq, attn, P = gen.sequences, gen.attention_mask, gen.prompt_len
        mask = gen.response_mask.float()
        with autocast(self.device):
            with self.timed("time/policy_forward_s"):
                logprobs, entropy, values = self.model(seq, attn, P, c.temperature, with_entropy=True)
            with self.timed("time/reference_s"):
                ref_logprobs = sequence_logprobs(self.ref_policy, seq, attn, P, c.temperature)
            with self.timed("time/scoring_s"):
                scores = score(self.reward, seq, attn, mask)
        scores = apply_missing_eos_penalty(scores, gen.responses, c.eos_id, c.missing_eos_penalty)
        return Rollout(seq, attn, mask, P, logprobs * mask, ref_logprobs * mask, values * mask,
                       scores, entropy)

    # ------------------------------------------------------------ 2. shaping and 3. GAE
    def advantages(self, ro: Rollout, beta: float):
        """2. shaping and 3. GAE on the rollout's tensors (no gradient) -> (kl, advantages, returns).

        Whitening (of advantages, and of rewards with scale_rewards) uses every rank's tokens.
        """
        c = self.config
        rewards, kl = shape_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.response_mask, beta,
                                    c.kl_estimator)
        if c.scale_rewards:
            rewards = masked_whiten(rewards, ro.response_mask, shift_mean=False, across_ranks=True)
        advantages, returns = compute_gae(rewards, ro.values, ro.response_mask, c.gamma, c.lam)
        if c.whiten_advantages:
            advantages = masked_whiten(advantages, ro.response_mask, across_ranks=True)
        return kl, advantages, returns

    # ------------------------------------------------------------ 4. update
    def _minibatch_loss(self, mb: Rollout, advantages, returns, n_micro: int):
        c = self.config
        with autocast(self.device):
            logprobs, values = self.train_forward(mb.sequences, mb.attention_mask, mb.prompt_len, c.temperature)
        pg_loss, pg_stats = ppo_policy_loss(logprobs, mb.logprobs, advantages, mb.response_mask, c.cliprange)
        vf_loss, vf_stats = ppo_value_loss(values, mb.values, returns, mb.response_mask, c.cliprange_value)
        loss = pg_loss + c.vf_coef * vf_loss
        (loss / n_micro).backward()
        return {"ppo/policy_loss": pg_loss.detach(), "ppo/value_loss": vf_loss.detach(), **{
            f"ppo/{k}": v for k, v in {**pg_stats, **vf_stats}.items()}}

    def update(self, ro: Rollout, advantages, returns) -> dict:
        c = self.config
        B = ro.sequences.shape[0]
        if B % (c.num_minibatches * c.gradient_accumulation_steps):
            raise ValueError(f"batch of {B} does not split into {c.num_minibatches} minibatches × "
                             f"{c.gradient_accumulation_steps} micro-batches")
        mb_size = B // c.num_minibatches
        micro = mb_size // c.gradient_accumulation_steps
        stats: dict[str, list] = {}
        for _ in range(c.ppo_epochs):
            perm = torch.randperm(B, generator=self.generator).to(self.device)
            for start in range(0, B, mb_size):
                self.optimizer.zero_grad(set_to_none=True)
                for m in range(start, start + mb_size, micro):
                    idx = perm[m:m + micro]
                    s = self._minibatch_loss(ro.minibatch(idx), advantages[idx], returns[idx],
                                             c.gradient_accumulation_steps)
                    for k, v in s.items():
                        stats.setdefault(k, []).append(v)
                average_gradients(self.model)  # torchrun: the mean gradient over ranks
                grad_norm = clip_grad(self.model, c.max_grad_norm)
                check_finite({"ppo/grad_norm": grad_norm, "ppo/policy_loss": s["ppo/policy_loss"].item(),
                              "ppo/value_loss": s["ppo/value_loss"].item()}, self.iteration + 1, unit="iteration")
                stats.setdefault("ppo/grad_norm", []).append(torch.tensor(grad_norm))
                self.optimizer.step()  # only now: a NaN above never reaches the weights
        return {k: torch.stack(v).float().mean().item() for k, v in stats.items()} | {
            "ppo/first_ratio_mean": stats["ppo/ratio_mean"][0].item(),
            "ppo/first_approx_kl": stats["ppo/approx_kl"][0].item()}

    # ------------------------------------------------------------ one iteration
    def step(self, prompts: list[list[int]]) -> dict:
        c = self.config
        if c.iterations and c.lr_schedule == "linear":
            set_lr(self.optimizer, lr_at(self.iteration, c.iterations, c.lr, schedule="linear", min_ratio=0.0))
        self.timing = {}
        with self.timed("time/rollout_s"):
            ro = self.rollout(prompts)
        reward_mean = mean_across_ranks({"r": ro.scores.float().mean().item()})["r"]  # NaN on any rank: all stop
        check_finite({"env/reward_mean": reward_mean}, self.iteration + 1, unit="iteration")
        beta = self.kl_ctl.value
        kl, advantages, returns = self.advantages(ro, beta)
        with self.timed("time/update_s"):
            stats = self.update(ro, advantages, returns)
        kl_per_seq = kl.sum(-1).mean().item()
        world = dist_info()[1]  # the controller sees the KL and the sample count of all ranks, so β stays equal
        self.kl_ctl.update(mean_across_ranks({"kl": kl_per_seq})["kl"], len(prompts) * world)
        self.iteration += 1
        m = ro.response_mask
        return {
            "iteration": self.iteration,
            "env/reward_mean": ro.scores.mean().item(), "env/reward_std": ro.scores.std().item(),
            "objective/kl": kl_per_seq, "objective/kl_coef": beta,
            "objective/entropy": masked_mean(ro.entropy, m).item(),
            "objective/non_score_reward": (-beta * kl).sum(-1).mean().item(),
            "ppo/returns_mean": masked_mean(returns, m).item(),
            "ppo/advantages_mean": masked_mean(advantages, m).item(),
            "ppo/explained_variance": explained_variance(ro.values, returns, m),
            **stats,
            "tokens/response_len": m.sum(-1).mean().item(),
            **self.timing,
        }

    @contextmanager
    def timed(self, name: str):
        """Wall seconds of the block into self.timing[name]. On CUDA it waits for the block's kernels, so
        that each phase is charged its own GPU work, not the next phase (one sync per phase)."""
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timing[name] = time.perf_counter() - t0

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "kl_coef": self.kl_ctl.value}

    def load_state_dict(self, state: dict):
        self.iteration, self.kl_ctl.value = state["iteration"], state["kl_coef"]
