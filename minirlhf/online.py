"""The online RL loop every algorithm (PPO, GRPO, RLOO) runs, its shared config fields, and the run around it.

    for each iteration (train_online):          draw prompts from the pool, then OnlineTrainer.step:
        1. rollout      sample responses, score them, the reference's logprobs      (rollout.collect)
                        (GRPO's dynamic sampling re-samples prompts whose group has equal rewards)
        2. advantages   the algorithm's: PPO shaping + GAE, GRPO's group z-score, RLOO's leave-one-out
        3. update       ppo_epochs × num_minibatches steps of the algorithm's loss  (minibatch_update)
        4. metrics      one row: reward, KL, β, entropy, length, the algorithm's stats, timings

`OnlineConfig` holds the fields the algorithms have in common (generation, optimisation, KL, the run);
`OnlineTrainer` the iteration and its plumbing; `train_online` the run around any of them: load the models,
loop, log, checkpoint, save. Each algorithm's file (ppo.py, grpo.py) adds its fields, advantages and loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .advantages import AdaptiveKLController, FixedKLController, kl_penalty
from .config import validate
from .diagnostics import DiagnosticsConfig, check_watch_settings
from .errors import InputError
from .model import GPT, RewardModel
from .ops import aggregation_count, all_ranks_sum, masked_mean
from .optim import clip_grad, lr_at, make_adamw, set_lr
from .rollout import Rollout, TextReward, collect, load_policy_and_reward, takes_text
from .run import Run
from .runtime import (PhaseTimer, average_gradients, dist_info, init_distributed, is_distributed, mean_across_ranks,
                      rank_seed, resolve_device, seed_everything, sync_params)
from .sampling import prompt_room
from .tracking import check_finite


@dataclass
class OnlineConfig:
    max_new_tokens: int = 24
    """Response length cap (tokens)."""
    temperature: float = 1.0
    """Sampling temperature; logprobs are always recomputed at the same temperature."""
    eos_id: int | None = None
    """EOS token id: responses stop there. None: fixed-length responses."""
    pad_id: int = 0
    """PAD token id (must differ from eos_id)."""
    batch_size: int = 64
    """Rollouts per iteration of a run (the run draws their prompts from the pool); a trainer's step
    itself samples for the prompts it is given."""
    ppo_epochs: int = 4
    """Passes of the clipped update over each rollout batch, a fresh permutation each (TRL's num_ppo_epochs;
    GRPO's μ, TRL's num_iterations)."""
    num_minibatches: int = 4
    """Minibatches per epoch (optimizer steps per epoch)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per minibatch (same result, less memory)."""
    lr: float = 1e-4
    """Adam learning rate (ε = 1e-5, as lm-human-preferences)."""
    lr_schedule: str = "linear"
    """'linear' decay to 0 over `iterations`, or 'constant'."""
    iterations: int = 100
    """Iterations of a run (`--iterations`); the linear LR decay spans them (0: constant)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    kl_coef: float = 0.1
    """β, the weight of the KL to the reference (initial β when adaptive_kl)."""
    adaptive_kl: bool = False
    """Ziegler's proportional controller towards kl_target."""
    kl_target: float = 6.0
    """Target KL (nats per sequence) for the adaptive controller."""
    kl_horizon: int = 10000
    """Controller horizon in samples."""
    kl_estimator: str = "k1"
    """How the per-token KL to the reference is estimated: k1, k2 or k3 (advantages.kl_penalty). PPO's
    shaping and RLOO's reward use k1 (lm-human-preferences, TRL); GRPO's loss term k3 (GRPOConfig)."""
    missing_eos_penalty: float | None = None
    """If set, the score of a response without EOS is replaced by this value."""
    seed: int = 0
    """Seed for prompt order, sampling and minibatch order."""
    device: str = "cpu"
    """cpu or cuda (bf16 autocast)."""
    compile: bool = False
    """Opt-in torch.compile of the update's forward (worth it on a GPU for larger models with fixed-length
    rollouts, benchmarks/RESULTS.md; each new sequence length recompiles, the first ones slowly)."""
    compile_sampler: bool = False
    """Opt-in torch.compile of the sampler's one-token step (sampling.generate(compile_step=True)): fewer, fused
    kernels per token, at tens of seconds of compiling in the first iterations (benchmarks/RESULTS.md)."""
    recompute_logprobs: bool = False
    """Take the rollout's logprobs, entropy (and shared-head values) from a second, full forward of the policy
    instead of from the sampler's own pass (rollout.collect). Equal up to float rounding (~1e-6 in fp32); under
    CUDA bf16 autocast the two round differently, so turn this on there if the first minibatch's ratio must be 1
    to the precision of one forward."""
    save_every: int = 0
    """Iterations between resumable checkpoints (0: only at the end)."""
    report_to: str = ""
    """Also write each metrics row to 'tensorboard' (event files in <out>/tensorboard) and/or 'wandb',
    comma-separated, under metrics.jsonl's names; metrics.jsonl is written regardless."""
    stop_on: str = ""
    """Stop the run when one of these health checks fires: rule names, comma-separated, or 'any' (README, "Why
    isn't it learning?"); '' only reports them."""
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    """The health checks' thresholds (--diagnostics.<key>, diagnostics.py); they never change what is trained."""

    algo = "online"  # a class attribute, not a setting: the algorithm's name, its metrics' prefix ("ppo/…")

    def __post_init__(self):
        validate(self, positive=("max_new_tokens", "temperature", "batch_size", "ppo_epochs", "num_minibatches",
                                 "gradient_accumulation_steps", "lr", "kl_target", "kl_horizon"),
                 non_negative=("iterations", "max_grad_norm", "kl_coef", "save_every"),
                 choices={"lr_schedule": ("linear", "constant"), "kl_estimator": ("k1", "k2", "k3")})
        check_watch_settings(self)
        if self.batch_size % (self.num_minibatches * self.gradient_accumulation_steps):
            raise InputError(f"--batch_size={self.batch_size} must divide into --num_minibatches="
                             f"{self.num_minibatches} × --gradient_accumulation_steps="
                             f"{self.gradient_accumulation_steps} equal parts")

    @property
    def samples_per_prompt(self) -> int:
        """Responses sampled for each prompt of an iteration: 1 (GRPO and RLOO sample a group)."""
        return 1

    @property
    def prompts_per_iteration(self) -> int:
        """Prompts a run draws for one iteration: batch_size / samples_per_prompt."""
        return self.batch_size // self.samples_per_prompt


class OnlineTrainer:
    """One iteration of every online RL trainer, and its plumbing (Adam with ε = 1e-5, linear LR decay, the KL
    coefficient and its controller, an own sampling seed per rank, phase timings).

    `step` is the iteration, the same for PPO, GRPO and RLOO. An algorithm (ppo.py, grpo.py) supplies only what
    differs: where it samples differently, `sample(prompts, more_prompts) -> (rollout, stats)`;
    `advantages(rollout, β) -> (per-token KL, *targets)`, `update(rollout, *targets)` (its `loss` on
    minibatches, through `optimize`), `advantage_stats` for the metrics, `loss_keys` (the loss terms that must
    stay finite), `modules()` (what a checkpoint holds) and, where it has more than the policy, `save`.
    """

    loss_keys: tuple[str, ...] = ()
    aggregation = "token_mean"  # how the loss averages per-token terms (ops.aggregation_count counts its units)
    denominator = "minibatch"   # whose count divides a minibatch's loss: its own, or the whole "rollout"'s (TRL's dapo)

    def __init__(self, model: torch.nn.Module, ref_policy, reward, config: OnlineConfig,
                 generator: torch.Generator | None = None):
        if config.eos_id is not None and config.eos_id == config.pad_id:
            raise ValueError("pad_id must differ from eos_id, or masking PAD also masks EOS")
        self.model = model       # the module the optimizer trains: the policy (and a value head)
        sync_params(model)       # torchrun: every rank starts from rank 0's weights
        model.eval()             # dropout off (gradients still flow): the first ratio is 1 (to rounding)
        self.freeze(ref_policy, reward)
        self.ref_policy, self.reward = ref_policy, reward
        self.config, self.prefix = config, config.algo
        self.device = next(self.model.parameters()).device
        # the update's forward; torch.compile'd on request, sharing its parameters with self.model
        self.train_forward = torch.compile(self.model) if config.compile else self.model
        self.optimizer = make_adamw(self.model, config.lr, weight_decay=0.0, eps=1e-5, betas=(0.9, 0.999))
        self.kl_ctl = (AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
                       if config.adaptive_kl else FixedKLController(config.kl_coef))
        self.generator = generator or torch.Generator().manual_seed(rank_seed(config.seed))  # own seed per rank
        self.iteration = 0
        self.timer = PhaseTimer(self.device)

    # ------------------------------------------------------------ one iteration
    def step(self, prompts: list[list[int]], more_prompts=None) -> dict:
        """One iteration on `prompts` (token ids, each sampled `samples_per_prompt` times) -> its row of metrics.
        more_prompts(n) -> n more prompts, for an algorithm that re-samples (GRPO's dynamic_sampling); a run
        passes draws from its pool, None re-draws from `prompts`."""
        self.begin_iteration()                                  # this iteration's learning rate
        with self.timer("time/rollout_s"):                      # 1. sample, score, reference logprobs
            ro, sample_stats = self.sample(prompts, more_prompts)
        self.check_reward(ro.scores)                            # a NaN score stops before any update
        kl_coef = self.kl_ctl.kl_coef
        kl, *targets = self.advantages(ro, kl_coef)             # 2. PPO: advantages, returns; GRPO/RLOO: advantages
        with self.timer("time/update_s"):                       # 3. ppo_epochs × num_minibatches optimizer steps
            stats = self.update(ro, *targets)
        kl_per_seq = kl.sum(-1).mean().item()
        self.end_iteration(kl_per_seq, len(ro.sequences))       # the KL controller sees this iteration's KL
        return self.metrics(ro, kl_per_seq, kl_coef,
                            {**self.advantage_stats(ro, kl, kl_coef, *targets), **sample_stats, **stats})

    def sample(self, prompts: list[list[int]], more_prompts=None) -> tuple[Rollout, dict]:
        """1. rollout: `samples_per_prompt` responses to each prompt, in order -> (the rollout, its stats: none)."""
        return self.rollout([p for p in prompts for _ in range(self.config.samples_per_prompt)]), {}

    def optimize(self, ro: Rollout, loss_of) -> dict:
        """`ppo_epochs` × `num_minibatches` optimizer steps over the rollout (minibatch_update, below) of
        `loss_of(minibatch, idx) -> (loss, stats)`, `idx` the minibatch's rows -> the mean of each stat over the
        micro-batches, and the first one's ratio and approximate KL (1 and 0 up to rounding: still on-policy).
        With `denominator = "rollout"` every minibatch's sum is divided by the whole rollout's count (TRL's dapo)."""
        c, p = self.config, self.prefix
        count = lambda mask: aggregation_count(mask, self.aggregation)  # noqa: E731
        stats = minibatch_update(
            self.model, self.optimizer, len(ro.sequences), lambda idx: loss_of(ro.minibatch(idx), idx),
            count_fn=lambda idx: count(ro.response_mask[idx]),
            total=count(ro.response_mask) if self.denominator == "rollout" else None,
            epochs=c.ppo_epochs, num_minibatches=c.num_minibatches, accumulation_steps=c.gradient_accumulation_steps,
            max_grad_norm=c.max_grad_norm, generator=self.generator, iteration=self.iteration + 1,
            guard=self.loss_keys, grad_norm_key=f"{p}/grad_norm")
        # each minibatch's stats, averaged over the update; a "_max" stat (ratio_max) is the largest of them
        reduced = {k: (torch.stack(v).float().max() if k.endswith("_max") else torch.stack(v).float().mean()).item()
                   for k, v in stats.items()}
        return reduced | {
            f"{p}/first_ratio_mean": stats[f"{p}/ratio_mean"][0].item(),
            f"{p}/first_approx_kl": stats[f"{p}/approx_kl"][0].item()}

    @property
    def guard_keys(self) -> tuple[str, ...]:
        """The metrics that must stay finite: the reward, the KL, the loss terms and the gradient norm."""
        return ("env/reward_mean", "objective/kl", *self.loss_keys, f"{self.prefix}/grad_norm")

    @property
    def policy(self) -> GPT:
        return self.model.policy

    def save(self, out_dir, tokenizer):
        self.policy.save_pretrained(out_dir, tokenizer)

    # ------------------------------------------------------------ the plumbing of an iteration
    @staticmethod
    def freeze(reference, reward):
        """The reference (and a reward model) never learn; every model runs with dropout off, so that the
        first minibatch of an update has ratio 1 up to float rounding (the trainer's own models are put in eval too)."""
        for m in (reference, reward):
            if isinstance(m, torch.nn.Module):
                m.eval()
        for p in reference.parameters():
            p.requires_grad_(False)

    def begin_iteration(self):
        """The learning rate of this iteration (linear decay over `iterations`) and fresh phase timings."""
        c = self.config
        if c.iterations and c.lr_schedule == "linear":
            set_lr(self.optimizer, lr_at(self.iteration, c.iterations, c.lr, schedule="linear", min_ratio=0.0))
        self.timer = PhaseTimer(self.device)

    def rollout(self, prompts: list[list[int]], value_fn=None) -> Rollout:
        """rollout.collect with this trainer's policy, reference, reward, generator and timer."""
        c = self.config
        if not all(isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p) for p in prompts):
            raise InputError(f"{type(self).__name__}.step takes prompts as token ids, [bos] + encode(prompt); "
                             f"got {type(prompts[0]).__name__}: encode texts with tokenizer.encode_prompts(texts)")
        return collect(self.policy, self.ref_policy, self.reward, prompts, c.max_new_tokens, c.temperature, c.eos_id,
                       c.pad_id, self.generator, c.missing_eos_penalty, value_fn=value_fn,
                       recompute_logprobs=c.recompute_logprobs, compile_step=c.compile_sampler, timer=self.timer)

    def sequence_kl(self, ro: Rollout, estimator: str = "k1") -> float:
        """Mean over responses of Σ_t KL_t to the reference (nats per response), by `estimator`."""
        return kl_penalty(ro.logprobs, ro.ref_logprobs, estimator, ro.response_mask).sum(-1).mean().item()

    def metrics(self, ro: Rollout, penalty_kl: float, kl_coef: float, stats: dict) -> dict:
        """The row every online trainer logs: reward; KL as objective/kl, always k1 summed over a response and
        averaged over responses, so that runs of every method and estimator compare (and, when the config's
        estimator is another, its value `penalty_kl` as objective/kl_<estimator>, the one the penalty and the
        controller use); β, entropy and response length, then the algorithm's own `stats`, then the timings."""
        m, est = ro.response_mask, self.config.kl_estimator
        kl = penalty_kl if est == "k1" else self.sequence_kl(ro, "k1")
        return {"iteration": self.iteration,
                "env/reward_mean": ro.scores.mean().item(), "env/reward_std": ro.scores.std().item(),
                "objective/kl": kl, **({} if est == "k1" else {f"objective/kl_{est}": penalty_kl}),
                "objective/kl_coef": kl_coef,
                "objective/entropy": masked_mean(ro.entropy, m).item(),
                **stats,
                "tokens/response_len": m.sum(-1).mean().item(),
                **({} if self.config.eos_id is None else {"tokens/truncated_frac": self.truncated_frac(ro)}),
                **self.timer.times}

    def truncated_frac(self, ro: Rollout) -> float:
        """Share of responses that reached max_new_tokens without producing EOS (cut, not finished)."""
        return 1.0 - self.finished(ro).float().mean().item()

    def finished(self, ro: Rollout) -> torch.Tensor:
        """(B,) bool: the response produced EOS (False for one cut at max_new_tokens)."""
        return ((ro.responses == self.config.eos_id) & ro.response_mask.bool()).any(-1)

    def check_reward(self, scores: torch.Tensor):
        """Stop before any update if a reward is NaN on any rank (all ranks stop together)."""
        reward_mean = mean_across_ranks({"r": scores.float().mean().item()})["r"]
        check_finite({"env/reward_mean": reward_mean}, self.iteration + 1, unit="iteration")

    def end_iteration(self, kl_per_seq: float, n_samples: int):
        """The KL controller sees the KL and the sample count of all ranks, so β stays equal on every rank."""
        self.kl_ctl.update(mean_across_ranks({"kl": kl_per_seq})["kl"], n_samples * dist_info()[1])
        self.iteration += 1

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "kl_coef": self.kl_ctl.kl_coef}

    def load_state_dict(self, state: dict):
        self.iteration, self.kl_ctl.kl_coef = state["iteration"], state["kl_coef"]


# --------------------------------------------------------------------------------------------------
# The update: epochs × minibatches × micro-batches of an algorithm's loss
# --------------------------------------------------------------------------------------------------

def minibatch_update(model: torch.nn.Module, optimizer, batch_size: int, loss_fn, epochs: int,
                     num_minibatches: int, accumulation_steps: int, max_grad_norm: float,
                     generator: torch.Generator, iteration: int, guard: tuple[str, ...] = (),
                     grad_norm_key: str = "grad_norm", count_fn=None, total=None) -> dict[str, list]:
    """epochs × num_minibatches optimizer steps over one batch of `batch_size` rows (a rollout, say).

        for each epoch:    a fresh random permutation of the rows
          for each minibatch of batch_size / num_minibatches rows:
            for each of its accumulation_steps micro-batches k:  (w_k · loss_fn(rows_k)).backward()
            average gradients over ranks, clip, check for NaN, optimizer.step()

    loss_fn(idx) -> (loss, stats): the loss over the rows `idx` as a mean in its own units (with gradient), and a
    dict of detached 0-dim tensors. count_fn(idx) -> how many of those units the rows hold: real tokens for a
    token mean, sequences for a per-sequence mean (ops.aggregation_count); None counts rows.

    Accumulation and data parallelism change memory, not the update: w_k = n_k / (N / world), with n_k the
    micro-batch's count and N the whole minibatch's over every rank. Then Σ_k w_k · mean_k = Σ_k sum_k / (N/world)
    on each rank, and the ranks' average gradient is that of sum / N over the whole minibatch: the gradient of
    one pass over the concatenated minibatch. The plain 1/accumulation_steps weight is that only when every
    micro-batch holds as many units: with responses of different lengths, the mean of micro-batch token means
    is not the minibatch's token mean (TRL's "dapo" loss normalises by the global token count for this reason).

    total: this rank's count of the whole batch (summed over ranks, as the counts are): then N is that same
    number for every minibatch instead of each one's own, w_k = n_k / (total / world). TRL's "dapo": every
    minibatch's token sum is divided by the tokens of the whole rollout batch. Worked example, 2 minibatches of
    3 and 1 tokens: their own N gives the two steps sum/3 and sum/1, total = 4 gives sum/4 and sum/4.

    Before each step the gradient norm and the `guard` stats of the last micro-batch must be finite, or
    TrainingDiverged names `iteration` and the step never happens. Returns every stat per micro-batch (each
    micro-batch's own mean), and `grad_norm_key` per optimizer step, in the order they came.
    """
    if batch_size % (num_minibatches * accumulation_steps):
        raise ValueError(f"batch of {batch_size} does not split into {num_minibatches} minibatches × "
                         f"{accumulation_steps} micro-batches")
    device = next(model.parameters()).device
    count_fn = count_fn or (lambda idx: torch.tensor(float(len(idx)), device=device))
    world = torch.distributed.get_world_size() if is_distributed() else 1
    fixed = None if total is None else all_ranks_sum(torch.as_tensor(total, dtype=torch.float32, device=device))
    mb_size = batch_size // num_minibatches
    micro = mb_size // accumulation_steps
    stats: dict[str, list] = {}
    for _ in range(epochs):
        perm = torch.randperm(batch_size, generator=generator).to(device)
        for start in range(0, batch_size, mb_size):
            optimizer.zero_grad(set_to_none=True)
            parts = [perm[m:m + micro] for m in range(start, start + mb_size, micro)]
            counts = torch.stack([torch.as_tensor(count_fn(idx), dtype=torch.float32, device=device) for idx in parts])
            per_rank = (all_ranks_sum(counts.sum()) if fixed is None else fixed).clamp(min=1.0) / world  # N / world
            for idx, n in zip(parts, counts):
                loss, s = loss_fn(idx)
                (loss * (n / per_rank)).backward()
                for k, v in s.items():
                    stats.setdefault(k, []).append(v)
            average_gradients(model)  # torchrun: the mean gradient over ranks
            grad_norm = clip_grad(model, max_grad_norm)
            check_finite({grad_norm_key: grad_norm, **{k: s[k].item() for k in guard}}, iteration, unit="iteration")
            stats.setdefault(grad_norm_key, []).append(torch.tensor(grad_norm))
            optimizer.step()  # only now: a NaN above never reaches the weights
    return stats


def train_online(trainer_cls, name: str, prompts: list[str], init_dir, reward_dir, out_dir, config: OnlineConfig,
                 resume: bool = False, overwrite: bool = False, reward_fn=None, show_progress: bool = True,
                 on_iteration=None):
    """Run `config.iterations` iterations of `trainer_cls` from the policy in `init_dir` against the reward
    model in `reward_dir`, or (reward_dir=None) a reward function; returns the trainer.

    `reward_fn` is either `fn(prompts, responses) -> one number each`, on strings (its first parameter named
    `prompts`, as TRL's reward functions: rollout.TextReward), or `fn(sequences, response_mask) -> (B,)` on the
    rollout's tensors (left-padded prompt ⊕ right-padded response ids, and the response's mask).

    `on_iteration(trainer, row)` is called after each logged iteration (the demo's judge curve uses it).
    The output directory is a self-contained policy: config.json + model.safetensors (HF GPT-2 format),
    tokenizer.json, the algorithm's extra heads, metrics.jsonl (a row per iteration), plots/, checkpoints/.
    """
    if not prompts:
        raise InputError("no prompts to train on")
    if (reward_dir is None) == (reward_fn is None):
        raise InputError("give the run a reward model directory or a reward_fn, one of the two"
                         + (" (not both: the model would be loaded and never used)" if reward_fn else ""))
    device = resolve_device(config.device)
    init_distributed(device)
    run = Run(out_dir, name, config.iterations, resume, overwrite, inputs=(init_dir, reward_dir),
              step_key="iteration", save_every=config.save_every, show_progress=show_progress)
    seed_everything(rank_seed(config.seed))
    tokenizer, policy, ref, reward = load_policy_and_reward(init_dir, reward_dir, device)
    config = replace(config, eos_id=tokenizer.eos_id if config.eos_id is None else config.eos_id,
                     pad_id=tokenizer.pad_id)
    if config.eos_id == config.pad_id:
        raise InputError(f"--eos_id={config.eos_id} is the tokenizer's PAD id; EOS must differ from PAD")
    room = prompt_room(config.max_new_tokens, policy, reward)
    if room < 1:
        raise InputError(f"--max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the "
                         f"models' context of {room + config.max_new_tokens} tokens")
    pool = tokenizer.encode_prompts(prompts, room)
    if reward_fn is not None and takes_text(reward_fn):
        reward_fn = TextReward(reward_fn, tokenizer)
    trainer = trainer_cls(policy, ref, reward_fn or reward, config)
    start, extra = run.restore(trainer.modules(), trainer.optimizer, {name: trainer.generator})
    if extra:
        trainer.load_state_dict(extra)
    # what the health checks cannot read off the rows: is the reward a normalised reward model (mean 0, std 1 on
    # the reference's samples)?
    normalised = reward_fn is None and isinstance(reward, RewardModel) and bool(reward.gain != 1 or reward.bias != 0)
    run.begin(config, start=start, reward_normalised=normalised)

    def draw(n: int) -> list[list[int]]:  # n prompts from the pool, uniformly, with the trainer's generator
        return [pool[i] for i in torch.randint(len(pool), (n,), generator=trainer.generator).tolist()]

    for it in range(start, config.iterations):
        row = mean_across_ranks(trainer.step(draw(config.prompts_per_iteration), more_prompts=draw))
        check_finite(row, it + 1, trainer.guard_keys, unit="iteration")
        run.log(row, reward=f"{row['env/reward_mean']:.3f}", kl=f"{row['objective/kl']:.2f}")
        if on_iteration is not None:
            on_iteration(trainer, row)
        run.maybe_checkpoint(it + 1, trainer.state_dict())
    run.finish(lambda: trainer.save(run.out, tokenizer), trainer.state_dict())
    return trainer
