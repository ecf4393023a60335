"""GRPO and RLOO: PPO's clipped update without a critic; the baseline is the other samples of the same prompt.

One iteration of `GRPOTrainer.step(prompts)`:
    1. rollout     G responses to each prompt (rollout.collect, as PPO), scored by the reward model; with
                   dynamic_sampling, groups whose G rewards are equal are replaced by new prompts' (DAPO)
    2. advantages  one per response, from its group of G (advantages.py):
                     GRPO (Shao et al. 2024)     A_i = (r_i − mean_G r) / (std_G r + ε)
                     RLOO (Ahmadian et al. 2024) R_i = r_i − β Σ_t KL_t,  A_i = R_i − mean_{j≠i} R_j
    3. update      ppo_epochs × num_minibatches of PPO's clipped per-token objective, A_i broadcast over
                   the tokens of response i; GRPO adds β·KL_t (k3, a loss term with gradient):
                     loss = agg_t( −min(ρ_t A_i, clip(ρ_t, 1−ε, 1+ε_high) A_i) + β·k3_t − c_H·H_t )
                   (no KL term at β = 0, no entropy term at c_H = 0); ρ_t per token, or GSPO's one per response
The iteration itself is online.OnlineTrainer.step, as PPO's; this file is what GRPO and RLOO change: a group of
responses per prompt, advantages from the group, and (GRPO) the KL as a loss term.

The options of the GRPO family, each a GRPOConfig field under TRL's name (default: off, the plain GRPO above):
    loss_type                    grpo | bnpo | dr_grpo | dapo: how per-token terms are averaged (Dr. GRPO, DAPO)
    importance_sampling_level    token | sequence: GSPO's sequence-level ratio (Zheng et al. 2025)
    cliprange_high               DAPO's clip-higher ε_high (Yu et al. 2025)
    dynamic_sampling             DAPO: re-sample prompts whose group has equal rewards (max_resample_rounds)
    mask_truncated_completions   DAPO's overlong filtering: no loss on a response cut at max_new_tokens
    entropy_coef                 an entropy bonus −c_H·H in the loss (verl's entropy_coeff)
    ppo_epochs                   μ of the GRPO paper, TRL's num_iterations: passes over each rollout

Where the KL goes is the difference that matters. GRPO keeps the reward pure and pulls the policy back
with a k3 term in the loss (k3 = π_ref/π − log(π_ref/π) − 1 ≥ 0: an unbiased, low-variance estimate of
KL(π ‖ π_ref), whose gradient as a loss is that of KL(π_ref ‖ π); k1 as a loss has none, so it is refused). RLOO puts
β·KL (k1 by default) into the reward before the baseline, as PPO's shaping does, so the KL is traded
against the score sample by sample. No value head, no GAE: a response is one action with one advantage.

CPU: `minirlhf grpo --prompts p.jsonl --init runs/x/sft --reward runs/x/reward --out runs/x/grpo`
     (`--algo rloo` for RLOO). GPU: add `--device cuda`.
Metrics (prefix grpo/ or rloo/): as PPO's loss, policy_loss, clipfrac, approx_kl, ratio_mean, ratio_max,
first_ratio_mean, first_approx_kl, grad_norm; kl_loss (GRPO's KL term, before β); advantages_abs_mean;
zero_std_frac, the share of the iteration's first groups whose rewards were all equal (before any filtering);
with entropy_coef > 0, entropy (the aggregated entropy of the updated policy); with dynamic_sampling,
resample_rounds (extra rollout rounds), filtered_frac (share of all sampled groups left out of the batch) and
unfilled_frac (share of the batch's groups still of equal rewards because max_resample_rounds was reached).

Simplifications: groups are sampled together in one batch; without dynamic_sampling a group whose G rewards are
all equal gives zero advantage and no gradient (logged as `*/zero_std_frac`).
With one epoch and one minibatch the loss value is ≈ 0 every iteration while the gradient is not: at
ratio 1 the loss is −mean(A), and group-centred advantages average to about zero (see ppo_policy_loss).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .advantages import GROUP_SCALES, group_advantages, kl_penalty, rloo_advantages
from .config import keeps_old_names, validate
from .errors import InputError
from .losses import ppo_policy_loss
from .model import GPT
from .online import OnlineConfig, OnlineTrainer, train_online
from .ops import AGGREGATIONS, masked_aggregate
from .rollout import PolicyLogprobs, Rollout, sequence_logprobs
from .runtime import autocast

# TRL's loss_type -> the aggregation it is (ops.masked_aggregate); "dapo" also divides by the whole rollout's tokens
LOSS_TYPES = {"grpo": "sequence_mean", "bnpo": "token_mean", "dr_grpo": "dr_grpo", "dapo": "token_mean"}


@keeps_old_names
@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO's fields; the ones every online trainer shares are OnlineConfig's. `batch_size` counts responses:
    batch_size / group_size prompts per iteration."""
    group_size: int = 4
    """G, responses sampled per prompt (at least 2: the baseline of one sample is itself)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch (μ in the GRPO paper, TRL's num_iterations; 1 = every update is on-policy)."""
    kl_coef: float = 0.05
    """β: weight of the KL to the reference (GRPO: of the k3 loss term; RLOO: in the reward)."""
    kl_estimator: str = "k3"
    """GRPO's loss term: k3 (never negative; its gradient is that of KL(π_ref ‖ π)) or k2 (that of KL(π ‖ π_ref));
    k1 is refused, as a loss term its expected gradient is 0 (advantages.kl_penalty). RLOO's reward uses k1 by
    default (RLOOConfig)."""
    cliprange: float = 0.2
    """Lower (and, without cliprange_high, upper) ratio clip ε."""
    cliprange_high: float | None = None
    """Upper clip ε_high (DAPO's clip-higher, e.g. 0.28); None: symmetric."""
    scale_rewards: str = "group"
    """GRPO: divide by the group's std ('group'), the batch's ('batch') or not at all ('none', Dr. GRPO)."""
    loss_aggregation: str = "token_mean"
    """How per-token terms become the loss: token_mean (DAPO; as PPO here), sequence_mean (the original
    GRPO, length-biased) or dr_grpo (sum / (B · max_new_tokens)). loss_type names them as TRL does."""
    loss_type: str | None = None
    """TRL's name for the loss normalisation, instead of loss_aggregation (None: loss_aggregation's): grpo (mean
    per response, then over responses: the original GRPO, Shao et al. 2024), bnpo (token mean over the minibatch,
    exact under accumulation: TRL averages micro-batch means instead), dr_grpo (token sum / (B · max_new_tokens),
    Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training") or dapo (token sum / the real tokens of the
    whole rollout batch, the same divisor for every minibatch of the iteration: DAPO's token-level loss, Yu et al.
    2025, as TRL implements it; with num_minibatches=1 it is bnpo, with K minibatches a step's loss is about 1/K
    of bnpo's: Adam barely minds, max_grad_norm does). The logged loss is each micro-batch's own aggregate (for
    dapo, its token mean)."""
    importance_sampling_level: str = "token"
    """token: PPO's ratio per token; sequence: GSPO's (Zheng et al. 2025, "Group Sequence Policy Optimization")
    one ratio per response, exp(mean_t log π/π_old) over its real tokens, clipped as a whole (losses.ppo_policy_loss;
    the paper pairs it with loss_type=grpo and cliprange 3e-4 / cliprange_high 4e-4)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (Yu et al. 2025): leave out the groups whose G rewards are all equal (zero advantage,
    no signal) and sample new prompts' groups in their place, one per missing group per extra round (a run draws
    them from its pool), until the batch is full or max_resample_rounds is reached. Logs resample_rounds,
    filtered_frac and unfilled_frac; zero_std_frac stays the share before filtering."""
    max_resample_rounds: int = 3
    """Cap on dynamic sampling's extra rollout rounds per iteration. At the cap the batch is filled with groups
    of equal rewards (as plain GRPO would train: only their KL and entropy terms act), logged as unfilled_frac
    (verl stops with an error there instead)."""
    mask_truncated_completions: bool = False
    """DAPO's overlong filtering (Yu et al. 2025): a response that reached max_new_tokens without EOS gets no
    loss (its tokens are out of the loss mask and out of every normaliser) but still counts in its group's
    baseline; tokens/truncated_frac is the share left out. Needs an EOS token."""
    entropy_coef: float = 0.0
    """c_H of an entropy bonus: loss −= c_H · (the updated policy's per-token entropy at the sampling temperature,
    with gradient, aggregated like the loss); logged as entropy. 0: no term (verl's entropy_coeff; TRL has none).
    The update's forward then also computes the entropy and is not torch.compile'd."""

    algo = "grpo"  # a class attribute, not a setting: `minirlhf grpo --algo rloo` picks RLOOConfig
    renamed: ClassVar[dict[str, str]] = {"epochs": "ppo_epochs"}  # old names, still read (FutureWarning)
    # options added after recipes recorded their stages: in a stage's hash only away from their default (stages.py)
    added: ClassVar[tuple[str, ...]] = ("loss_type", "importance_sampling_level", "dynamic_sampling",
                                        "max_resample_rounds", "mask_truncated_completions", "entropy_coef")

    def __post_init__(self):
        super().__post_init__()
        validate(self, positive=("cliprange",), non_negative=("max_resample_rounds", "entropy_coef"),
                 choices={"scale_rewards": GROUP_SCALES, "loss_aggregation": AGGREGATIONS,
                          "loss_type": (None, *LOSS_TYPES), "importance_sampling_level": ("token", "sequence")})
        if self.loss_type is not None and self.loss_aggregation not in ("token_mean", LOSS_TYPES[self.loss_type]):
            raise InputError(f"--loss_type={self.loss_type} and --loss_aggregation={self.loss_aggregation} disagree "
                             f"(loss_type {self.loss_type} is {LOSS_TYPES[self.loss_type]}): set one of the two")
        if self.algo == "grpo" and self.kl_estimator == "k1":
            raise InputError("--kl_estimator=k1: as GRPO's loss term k1 = log π − log π_ref has zero expected "
                             "gradient (E_π[∇ log π] = 0), so it would not pull towards the reference at all; "
                             "use k3 (GRPO's, the gradient of KL(π_ref ‖ π)) or k2 (of KL(π ‖ π_ref)), or "
                             "--algo rloo, which puts k1 in the reward")
        if self.group_size < 2:
            raise InputError(f"--group_size={self.group_size}: {self.algo.upper()} needs at least 2 responses per "
                             f"prompt (the group baseline of one sample is the sample itself: every advantage is 0)")
        if self.batch_size % self.group_size:
            raise InputError(f"--batch_size={self.batch_size} must be a multiple of --group_size={self.group_size}")
        if self.cliprange_high is not None and not self.cliprange_high > 0:
            raise InputError(f"--cliprange_high must be > 0, got {self.cliprange_high}")

    @property
    def samples_per_prompt(self) -> int:
        return self.group_size


@keeps_old_names
@dataclass
class RLOOConfig(GRPOConfig):
    """RLOO: the same fields; the KL goes into the reward (k1, as PPO's shaping) and the baseline is the
    leave-one-out mean, so `scale_rewards` is not used."""
    kl_estimator: str = "k1"
    """The per-token KL summed into each response's reward: k1 (the RLOO paper's, as PPO), k2 or k3."""

    algo = "rloo"


class GRPOTrainer(OnlineTrainer):
    """GRPO or RLOO (by `config.algo`) on a GPT policy against a RewardModel or any fn(sequences, mask):
    OnlineTrainer's iteration on groups of `group_size` responses, without a critic."""

    def __init__(self, policy: GPT, ref_policy: GPT, reward, config: GRPOConfig,
                 generator: torch.Generator | None = None):
        if config.mask_truncated_completions and config.eos_id is None:
            raise InputError("--mask_truncated_completions needs an EOS token (eos_id): without one every "
                             "response is cut at max_new_tokens, and all would be masked")
        super().__init__(PolicyLogprobs(policy), ref_policy, reward, config, generator)

    @property
    def loss_keys(self):
        return (f"{self.prefix}/loss",)

    @property
    def aggregation(self) -> str:
        """The ops.masked_aggregate the loss uses: loss_type's (TRL's names) if set, else loss_aggregation."""
        c = self.config
        return c.loss_aggregation if c.loss_type is None else LOSS_TYPES[c.loss_type]

    @property
    def denominator(self) -> str:
        """"rollout" for loss_type=dapo: every minibatch's token sum over the whole rollout's tokens."""
        return "rollout" if self.config.loss_type == "dapo" else "minibatch"

    def modules(self) -> dict:
        return {"policy": self.model}

    # ------------------------------------------------------------ 1. rollout, with DAPO's dynamic sampling
    def sample(self, prompts: list[list[int]], more_prompts=None) -> tuple[Rollout, dict]:
        """G responses to each prompt -> (rollout, its stats: zero_std_frac, and dynamic sampling's).

        dynamic_sampling (DAPO, Yu et al. 2025): a group whose G rewards are equal has zero advantage and gives no
        policy gradient, so it is left out (RLOO's filter, too, looks at the scores, not at their KL), and
        `more_prompts(m)` (default: draws from `prompts`) gives the m groups still missing, round after round, at
        most max_resample_rounds. The batch is then the informative groups first, in the order sampled, and only
        if the cap left room groups of equal rewards. Worked example, 4 prompts of which 2 have a constant
        reward, refills always informative: round 0 keeps 2 groups, round 1 samples 2 more: resample_rounds 1,
        filtered_frac 2/6, unfilled_frac 0, zero_std_frac 0.5.
        """
        c, G = self.config, self.config.group_size
        parts = [self.rollout([p for p in prompts for _ in range(G)])]
        stats = {f"{self.prefix}/zero_std_frac": equal_groups(parts[0].scores, G).float().mean().item()}
        if not c.dynamic_sampling:
            return parts[0], stats
        if more_prompts is None:
            more_prompts = lambda n: [prompts[i] for i in  # noqa: E731
                                      torch.randint(len(prompts), (n,), generator=self.generator).tolist()]
        missing = lambda: len(prompts) - sum(int((~equal_groups(r.scores, G)).sum()) for r in parts)  # noqa: E731
        while missing() > 0 and len(parts) <= c.max_resample_rounds:
            parts.append(self.rollout([p for p in more_prompts(missing()) for _ in range(G)]))
        ro = cat_rollouts(parts, c.pad_id)
        equal = equal_groups(ro.scores, G)                                   # (groups,) over every round
        groups = torch.cat([torch.nonzero(~equal), torch.nonzero(equal)]).flatten()[:len(prompts)]
        rows = (groups[:, None] * G + torch.arange(G, device=groups.device)).flatten()
        return ro.minibatch(rows), {**stats, f"{self.prefix}/resample_rounds": float(len(parts) - 1),
                                    f"{self.prefix}/filtered_frac": (len(equal) - len(groups)) / len(equal),
                                    f"{self.prefix}/unfilled_frac": equal[groups].float().mean().item()}

    # ------------------------------------------------------------ 2. advantages, one per response
    def advantages(self, ro: Rollout, kl_coef: float):
        """-> (per-token KL (B, N), advantages (B,)). RLOO subtracts β·Σ_t KL_t from each score first."""
        c = self.config
        kl = kl_penalty(ro.logprobs, ro.ref_logprobs, c.kl_estimator, ro.response_mask)
        if c.algo == "rloo":
            return kl, rloo_advantages(ro.scores - kl_coef * kl.sum(-1), c.group_size)
        return kl, group_advantages(ro.scores, c.group_size, c.scale_rewards)

    def advantage_stats(self, ro: Rollout, kl, kl_coef: float, advantages) -> dict:
        return {f"{self.prefix}/advantages_abs_mean": advantages.abs().mean().item()}  # zero_std_frac: sample's

    # ------------------------------------------------------------ 3. update
    def loss(self, mb: Rollout, advantages, kl_coef: float):
        c, how = self.config, self.aggregation
        with autocast(self.device):
            if c.entropy_coef > 0:  # the bonus needs the whole distribution: logprobs and entropy of one forward
                logprobs, entropy = sequence_logprobs(self.policy, mb.sequences, mb.attention_mask, mb.prompt_len,
                                                      c.temperature, with_entropy=True)
            else:
                logprobs = self.train_forward(mb.sequences, mb.attention_mask, mb.prompt_len, c.temperature)
        pg_loss, stats = ppo_policy_loss(logprobs, mb.logprobs, advantages, mb.response_mask, c.cliprange,
                                         cliprange_high=c.cliprange_high, aggregation=how, norm_len=c.max_new_tokens,
                                         importance_sampling_level=c.importance_sampling_level)
        loss = pg_loss  # β = 0: no KL term at all (not even a zero times a term that could be inf)
        out = {f"{self.prefix}/policy_loss": pg_loss.detach()}
        if c.algo == "grpo" and kl_coef > 0:  # the KL as a loss term, with gradient, aggregated like the policy term
            kl_loss = masked_aggregate(kl_penalty(logprobs, mb.ref_logprobs, c.kl_estimator, mb.response_mask),
                                       mb.response_mask, how, c.max_new_tokens)
            loss = pg_loss + kl_coef * kl_loss
            out[f"{self.prefix}/kl_loss"] = kl_loss.detach()
        if c.entropy_coef > 0:  # the entropy bonus, with gradient: higher entropy, lower loss
            entropy = masked_aggregate(entropy, mb.response_mask, how, c.max_new_tokens)
            loss = loss - c.entropy_coef * entropy
            out[f"{self.prefix}/entropy"] = entropy.detach()
        stats = {f"{self.prefix}/{k}": v for k, v in stats.items()}
        return loss, {f"{self.prefix}/loss": loss.detach(), **out, **stats}

    def update(self, ro: Rollout, advantages, kl_coef: float | None = None) -> dict:
        """ppo_epochs × num_minibatches optimizer steps of `loss` over the rollout (OnlineTrainer.optimize);
        kl_coef: β of GRPO's KL term, None for the controller's current β. Every pass keeps the rollout's
        logprobs as π_old, so from the second optimizer step on the ratio is exp(log π − log π_old) ≠ 1.
        mask_truncated_completions: the loss mask of a response without EOS is all 0 (DAPO's overlong filtering)."""
        kl_coef = self.kl_ctl.kl_coef if kl_coef is None else kl_coef
        if self.config.mask_truncated_completions:
            ro = replace(ro, response_mask=ro.response_mask * self.finished(ro)[:, None])
        return self.optimize(ro, lambda mb, idx: self.loss(mb, advantages[idx], kl_coef))


def equal_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) scores, groups of G contiguous -> (B/G,) bool: the group's G rewards are all equal (zero std)."""
    groups = scores.view(-1, group_size)
    return groups.max(1).values == groups.min(1).values


def cat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Rollouts of different prompt lengths P and response lengths N as one batch: prompts left-padded to the
    longest P, responses right-padded to the longest N, with PAD and mask 0 (positions come from the attention
    mask, so extra padding changes no logprob)."""
    if len(parts) == 1:
        return parts[0]
    P, N = max(r.prompt_len for r in parts), max(r.response_mask.shape[1] for r in parts)

    def fit(r: Rollout) -> Rollout:
        left, right = P - r.prompt_len, N - r.response_mask.shape[1]
        resp = lambda x: None if x is None else torch.nn.functional.pad(x, (0, right))  # noqa: E731
        return Rollout(torch.nn.functional.pad(r.sequences, (left, right), value=pad_id),
                       torch.nn.functional.pad(r.attention_mask, (left, right)), resp(r.response_mask), P,
                       resp(r.logprobs), resp(r.ref_logprobs), resp(r.values), r.scores, resp(r.entropy))
    fitted = [fit(r) for r in parts]
    return Rollout(**{k: (torch.cat([getattr(f, k) for f in fitted]) if torch.is_tensor(v) else v)
                      for k, v in vars(fitted[0]).items()})


def train_grpo(prompts: list[str], init_dir, reward_dir, out_dir, config: GRPOConfig, **kwargs) -> GRPOTrainer:
    """The GRPO or RLOO run (online.train_online): `minirlhf grpo [--algo rloo]`. kwargs: resume, overwrite,
    reward_fn, show_progress, on_iteration. Returns the trainer; its .policy is the new policy."""
    return train_online(GRPOTrainer, config.algo, prompts, init_dir, reward_dir, out_dir, config, **kwargs)
