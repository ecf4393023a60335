"""One PPO iteration, timed and split: rollout (generate / policy forward / reference / scoring), update.

    python benchmarks/bench_ppo.py [--threads N] [--device cpu|cuda] [--repeats 5]
    python benchmarks/bench_ppo.py --device cuda --preset gpt2-124m [--compile]

Shape (--preset tiny): 64 rollouts × 48 new tokens from 8-token prompts (random ids), no EOS (every
response is 48 tokens), 1 PPO epoch × 4 minibatches of 16; policy, reference and reward model are all the
4-layer, 256-wide GPT-2 with vocab 4096 (random weights; the reward model is a RewardModel on its own
trunk); the value head shares the policy trunk (PPOConfig's default). `--device cuda` runs under bf16
autocast. --preset gpt2-124m: the 12-layer, 768-wide GPT-2 (vocab 4096), 256 rollouts × 192 new tokens
from 64-token prompts, 4 minibatches of 64 sequences (16k tokens each, as pretraining's 16 × 1024).
--batch, --prompt-len, --new-tokens and --minibatches override a preset; --compile sets PPOConfig.compile,
--compile-sampler sets PPOConfig.compile_sampler,
--value-model separate gives the critic its own trunk, --recompute-logprobs brings back the rollout's second
policy forward, and --against-recompute times that variant round-robin with the default and gives the speed-up.

Figures: the trainer's own time/* metrics (median over --repeats iterations after one warm-up
iteration), the update's achieved FLOP/s as a fraction of this machine's measured fp32 matmul peak
(common.matmul_peak_flops, 2048³, measured in the same run; on CUDA the measured bf16 8192³ rate), the
whole iteration against its compute floor (every FLOP of the iteration at that peak), and peak RSS.

FLOPs counted (B = 64 sequences of T = 56 tokens, P = 8 prompt, R = 48 response; N_trunk = matmul
parameters without the vocab matrix, V·d = the (tied) LM head; L, d as in common.py):
    forward over a sequence   B·[T·(2·N_trunk + 4·L·d·T) + R·2·V·d]   (LM head on the response only)
    policy forward, reference   one forward each (the policy's only with --recompute-logprobs: by default its
                              logprobs come from generation); scoring and a separate critic: the trunk only
    generation                B·[P·(2·N_trunk + 4·L·d·P) + Σ_t (2·N_trunk + 2·V·d + 4·L·d·(P+t))]
    update                    3 × the policy forward (forward + backward), summed over the minibatches
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import add_common_args, cpu_share, gpt, load_average, peak_flops, peak_rss_mib, report, setup, sync
from minirlhf import RewardModel
from minirlhf.ppo import PPOConfig, PPOTrainer

VOCAB = 4096
PRESETS = {  # name: (n_layer, n_head, n_embd, batch, prompt length, new tokens, minibatches)
    "tiny": (4, 4, 256, 64, 8, 48, 4),
    "gpt2-124m": (12, 12, 768, 256, 64, 192, 4),
}
B, P, R = PRESETS["tiny"][3:6]  # the default shape (bench_trl_rloo.py matches it)


def iteration_flops(model, B: int, P: int, R: int, recompute: bool = False, separate: bool = False) -> dict:
    """Compute each phase must do, by the formulas in the docstring. The policy forward is a second forward
    only with recompute_logprobs (else its logprobs come from generation); a separate critic adds its trunk's
    forward to the rollout and 3 × that to the update."""
    c = model.config
    L, d, T = c.n_layer, c.n_embd, P + R
    head = VOCAB * d
    trunk = model.num_params() - model.transformer.wpe.weight.numel() - head
    forward = B * (T * (2 * trunk + 4 * L * d * T) + R * 2 * head)
    critic = (forward - B * R * 2 * head) if separate else 0
    generate = B * (P * (2 * trunk + 4 * L * d * P)
                    + sum(2 * trunk + 2 * head + 4 * L * d * (P + t) for t in range(R)))
    return {"generate": generate, "policy_forward": forward * recompute + critic, "reference": forward,
            "scoring": forward - B * R * 2 * head, "update": 3 * (forward + critic)}


def build(seed: int, device, n_layer=4, n_head=4, n_embd=256, B=64, P=8, R=48):
    """(policy, reference, reward model, prompts): the benchmark's models and its B prompts."""
    shape = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=VOCAB, block_size=P + R)
    policy = gpt(**shape, seed=seed, device=device)
    ref = gpt(**shape, seed=seed, device=device)
    trunk = gpt(**shape, seed=seed + 1)
    reward = RewardModel(trunk.config, trunk).to(device).eval()
    prompts = torch.randint(4, VOCAB, (B, P), generator=torch.Generator().manual_seed(seed)).tolist()
    return policy, ref, reward, prompts


def ppo_trainer(policy, ref, reward, prompts, seed: int, device, R: int = 48, minibatches: int = 4,
                compile: bool = False, **config) -> PPOTrainer:
    """The benchmark's PPOTrainer (1 epoch, no EOS); `config`: further PPOConfig fields (value_model="separate",
    recompute_logprobs=True, ...)."""
    return PPOTrainer(policy, ref, reward, PPOConfig(
        max_new_tokens=R, batch_size=len(prompts), ppo_epochs=1, num_minibatches=minibatches, eos_id=None,
        iterations=0, seed=seed, device=str(device), compile=compile, **config))


def timed_step(trainer: PPOTrainer, prompts) -> tuple[float, dict]:
    """(wall seconds, the trainer's time/* metrics) of one iteration."""
    t0 = time.perf_counter()
    row = trainer.step(prompts)
    sync(trainer.device)
    return time.perf_counter() - t0, {k: v for k, v in row.items() if k.startswith("time/")}


def medians(samples: list[tuple[float, dict]]) -> tuple[float, dict]:
    """Median wall seconds and median of each time/* metric over timed_step's results."""
    return (statistics.median(w for w, _ in samples),
            {k: statistics.median(t[k] for _, t in samples) for k in samples[0][1]})


def time_variants(variants: dict, prompts, repeats: int, warmup: int = 1) -> dict:
    """{name: (median wall, median time/*)} of the trainers in `variants` ({name: trainer}), their iterations
    run round-robin (A B A B ...) so that machine load falls on each alike."""
    samples = {name: [] for name in variants}
    for i in range(repeats + warmup):
        for name, trainer in variants.items():
            result = timed_step(trainer, prompts)
            if i >= warmup:
                samples[name].append(result)
    return {name: medians(s) for name, s in samples.items()}


def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    for flag in ("batch", "prompt-len", "new-tokens", "minibatches"):
        parser.add_argument(f"--{flag}", type=int, help="override the preset's value")
    parser.add_argument("--compile", action="store_true", help="PPOConfig.compile: torch.compile the update")
    parser.add_argument("--value-model", choices=("shared", "separate"), default="shared", help="PPOConfig.value_model")
    parser.add_argument("--recompute-logprobs", action="store_true",
                        help="PPOConfig.recompute_logprobs: a second policy forward in the rollout")
    parser.add_argument("--compile-sampler", action="store_true",
                        help="PPOConfig.compile_sampler: torch.compile the sampler's one-token step")
    parser.add_argument("--against-recompute", action="store_true",
                        help="also time recompute_logprobs=True, round-robin with the default, and give the speed-up")
    parser.add_argument("--warmup", type=int, help="untimed iterations first (default 1, 3 with --compile)")
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="CUDA: datasheet dense bf16 peak")
    args = parser.parse_args()
    device = setup(args)
    n_layer, n_head, n_embd, B, P, R, M = PRESETS[args.preset]
    B, P, R, M = (args.batch or B, args.prompt_len or P, args.new_tokens or R, args.minibatches or M)
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 2 if args.compile_sampler else 1)
    variants = {"ppo": dict(recompute_logprobs=args.recompute_logprobs)}
    if args.against_recompute:
        variants = {"ppo": dict(recompute_logprobs=False), "ppo_recompute": dict(recompute_logprobs=True)}
    trainers = {}
    for name, extra in variants.items():
        policy, ref, reward, prompts = build(args.seed, device, n_layer, n_head, n_embd, B, P, R)
        trainers[name] = ppo_trainer(policy, ref, reward, prompts, args.seed, device, R, M, args.compile,
                                     value_model=args.value_model, compile_sampler=args.compile_sampler, **extra)
    results = time_variants(trainers, prompts, args.repeats, warmup)
    print(f"# PPO: {B} rollouts × {R} tokens (prompts {P}), 1 epoch × {M} minibatches, "
          f"{policy.num_params() / 1e6:.2f}M-param ({n_layer}×{n_embd}) policy, reference and reward model, "
          f"{args.value_model} value model{', torch.compile' if args.compile else ''}"
          f"{', compiled sampler' if args.compile_sampler else ''}")
    peak, peak_name = peak_flops(args, device)
    print(f"# peak: {peak / 1e9:.1f} GFLOP/s ({peak_name}), {load_average()}")
    for name, (iteration_s, med) in results.items():
        report_iteration(name, iteration_s, med, policy, B, P, R, peak, args, device,
                         trainers[name].config.recompute_logprobs)
    if args.against_recompute:
        report("ppo_speedup_vs_recompute", results["ppo_recompute"][0] / results["ppo"][0], "x", ".2f")
    if device.type == "cuda":
        report("ppo_peak_cuda_memory", torch.cuda.max_memory_allocated(device) / 2**20, "MiB", ".0f")
    report("ppo_peak_rss", peak_rss_mib(), "MiB", ".0f")
    print(f"# done, {cpu_share()}")


def report_iteration(name, iteration_s, med, policy, B, P, R, peak, args, device, recompute: bool):
    """One variant's figures: phases, fractions of peak, the compute floor."""
    phases = {"generate": med["time/generate_s"], "policy_forward": med["time/policy_forward_s"],
              "reference": med["time/reference_s"], "scoring": med["time/scoring_s"],
              "update": med["time/update_s"]}
    phases["other"] = iteration_s - med["time/rollout_s"] - med["time/update_s"]  # shaping, GAE, metrics
    report(f"{name}_iteration", iteration_s, "s", ".3f")
    report(f"{name}_rollout", med["time/rollout_s"], "s", ".3f")
    for phase, s in phases.items():
        report(f"{name}_{phase}", s, "s", ".3f")
    flops = iteration_flops(policy, B, P, R, recompute, args.value_model == "separate")
    report(f"{name}_update_achieved", flops["update"] / phases["update"] / 1e9, "GFLOP/s")
    report(f"{name}_update_fraction_of_peak", 100 * flops["update"] / phases["update"] / peak, "%")
    if device.type == "cuda":
        report(f"{name}_update_mfu_vs_datasheet_bf16",
               100 * flops["update"] / phases["update"] / (args.peak_tflops * 1e12), f"% of {args.peak_tflops} TFLOP/s")
    for phase in ("generate", "policy_forward", "reference", "scoring"):
        if flops[phase]:
            report(f"{name}_{phase}_fraction_of_peak", 100 * flops[phase] / phases[phase] / peak, "%")
    floor_s = sum(flops.values()) / peak
    report(f"{name}_iteration_compute_floor", floor_s * 1e3, "ms", ".2f")
    report(f"{name}_iteration_over_floor", iteration_s / floor_s, "x", ".1f")
    report(f"{name}_tokens_per_s", B * R / iteration_s, "response tokens/s")


if __name__ == "__main__":
    main()
