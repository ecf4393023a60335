"""TRL's RLOOTrainer against minirlhf's PPOTrainer: same shape, same weights, same machine, same process.

    python -m venv /tmp/trl116 && /tmp/trl116/bin/pip install torch -e .[bench] trl==1.16.0
    /tmp/trl116/bin/python benchmarks/bench_trl_rloo.py [--threads N] [--device cpu|cuda] [--repeats 5]

(trl is a benchmark-only tool, never a minirlhf dependency: it lives in a venv of its own.)

TRL 1.16.0 has no PPOTrainer (it was removed from trl, and trl.experimental has none either; TRL 1.12's is
in bench_trl_ppo.py), so the closest like-for-like run is its RLOOTrainer, which shares PPO's skeleton:
sample, recompute the policy's logprobs, the reference's logprobs, a reward model's score, then a
clipped-ratio update.
Settings matched to bench_ppo.py:

  rollout        64 completions × 48 tokens per iteration: 16 prompts × num_generations 4
                 (RLOO needs ≥ 2 samples per prompt; minirlhf's PPO uses 64 distinct prompts).
                 Prompts: 8 random ids. min_new_tokens = 48, so EOS never ends a completion early.
  update         1 epoch (num_iterations 1) × 4 minibatches of 16: per_device_train_batch_size 16,
                 steps_per_generation 4, gradient_accumulation_steps 1
  models         the very weights of bench_ppo.py: policy and reference GPT2LMHeadModel (our
                 save_pretrained), reward GPT2ForSequenceClassification (our reward trunk + head)
  KL             beta 0.05 (RLOO's default), so the reference model runs as in PPO
  precision      fp32 on CPU (bf16=False, as minirlhf on CPU); bf16 on CUDA (both); no gradient
                 checkpointing (TRL's default turns it on; minirlhf has none)
  --compile-sampler  also times minirlhf with PPOConfig.compile_sampler ("ppo_compiled")

What differs and cannot be matched: RLOO has no value head (PPO's shared value head is a 256→1 linear,
negligible compute); TRL decodes completions to text and re-tokenises them for the reward model (a
word-level tokenizer "t4 … t4095" here, one word per id, so lengths are unchanged); TRL runs inside
transformers.Trainer (dataloader, accelerate, callbacks). Those are part of what using TRL costs.

Timing: TRL's iterations alternate with minirlhf's PPO iterations in this one process (trl_common.Alternate:
one minirlhf iteration after each TRL iteration, timed apart), medians over --repeats iterations after one
warm-up each; TRL's phases by wrapping the trainer's own methods (_generate, _get_per_token_logps_and_entropies
inside the rollout, _calculate_rewards).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench_ppo import B, R, build, medians, ppo_trainer
from common import cpu_share, load_average, report
from trl_common import Alternate, PhaseClock, hf_models, start, warm_up, word_tokenizer

NUM_GENERATIONS = 4
STEPS_PER_ITERATION = 4  # optimizer steps: 4 minibatches of 16


def rloo_trainer(policy, reward, prompts, iterations: int, seed: int, device, directory: Path):
    """TRL's RLOOTrainer on our weights, set up as the module docstring says."""
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer
    tokenizer = word_tokenizer()
    hf_policy, hf_reward = hf_models(policy, reward, directory, tokenizer)
    n_prompts = (B // NUM_GENERATIONS) * iterations
    # a trailing space, so prompt + completion text re-tokenises into the same words
    texts = [" ".join(f"t{i}" for i in prompts[j % len(prompts)]) + " " for j in range(n_prompts)]
    config = RLOOConfig(
        output_dir=str(directory / "out"), per_device_train_batch_size=B // STEPS_PER_ITERATION,
        steps_per_generation=STEPS_PER_ITERATION, num_generations=NUM_GENERATIONS, num_iterations=1,
        max_completion_length=R, temperature=1.0, top_k=0, top_p=1.0, generation_kwargs={"min_new_tokens": R},
        beta=0.05, learning_rate=1e-4, max_grad_norm=1.0, max_steps=STEPS_PER_ITERATION * iterations,
        bf16=device.type == "cuda", gradient_checkpointing=False, use_cpu=device.type == "cpu",
        logging_steps=10**6, report_to="none", save_strategy="no", disable_tqdm=True, seed=seed,
        shuffle_dataset=False, dataloader_num_workers=0, log_completions=False)
    return RLOOTrainer(model=hf_policy, reward_funcs=hf_reward, args=config,
                       train_dataset=Dataset.from_dict({"prompt": texts}), processing_class=tokenizer,
                       reward_processing_classes=tokenizer)


def clock_rloo(trainer, device) -> PhaseClock:
    """Phases of an RLOO iteration: the rollout whole, and inside it generation, the policy's and the
    reference's logprobs (the forwards under no_grad), the reward."""
    clock = PhaseClock(device)
    clock.wrap(trainer, "_generate_and_score_completions", lambda *a, **k: "rollout")
    clock.wrap(trainer, "_generate", lambda *a, **k: "generate")
    clock.wrap(trainer, "_get_per_token_logps_and_entropies", lambda model, *a, **k: (
        None if torch.is_grad_enabled() else "reference" if model is trainer.ref_model else "policy_forward"))
    clock.wrap(trainer, "_calculate_rewards", lambda *a, **k: "scoring")
    return clock


def main():
    args, device = start(__doc__)
    ours = {}
    for name, config in (("ppo", {}), ("ppo_compiled", dict(compile_sampler=True)))[:1 + args.compile_sampler]:
        policy, ref, reward, prompts = build(args.seed, device)
        ours[name] = (ppo_trainer(policy, ref, reward, prompts, args.seed, device, **config), prompts)
    warm_up(ours)
    policy, _, reward, prompts = build(args.seed, device)
    with tempfile.TemporaryDirectory() as d:
        trainer = rloo_trainer(policy, reward, prompts, args.repeats + 1, args.seed, device, Path(d))
        clock = clock_rloo(trainer, device)
        alternate = Alternate(clock, STEPS_PER_ITERATION, args.repeats + 1, ours)
        trainer.add_callback(alternate.callback())
        trainer.train()
    trl_s, trl_phases = alternate.trl_medians()
    trl_phases["update"] = trl_s - trl_phases["rollout"]
    print(f"# {B} rollouts × {R} tokens, 1 epoch × 4 minibatches, alternated; {load_average()}")
    for variant, samples in alternate.ours_samples.items():
        ours_s, ours_phases = medians(samples)
        report(f"minirlhf_{variant}_iteration", ours_s, "s", ".3f")
        for name in ("rollout", "generate", "policy_forward", "reference", "scoring", "update"):
            report(f"minirlhf_{variant}_{name}", ours_phases[f"time/{name}_s"], "s", ".3f")
        report(f"minirlhf_{variant}_speedup_vs_trl_rloo", trl_s / ours_s, "x", ".2f")
    report("trl_rloo_iteration", trl_s, "s", ".3f")
    for name in ("rollout", "generate", "policy_forward", "reference", "scoring", "update"):
        report(f"trl_rloo_{name}", trl_phases.get(name, float("nan")), "s", ".3f")
    print(f"# done, {cpu_share()}")


if __name__ == "__main__":
    main()
