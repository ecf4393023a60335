"""TRL's PPOTrainer (trl 1.12, trl.experimental.ppo) against minirlhf's PPOTrainer: same shape, same weights,
same machine, same process, iterations alternated.

    python -m venv /tmp/trl112 && /tmp/trl112/bin/pip install torch -e .[bench] trl==1.12.0
    /tmp/trl112/bin/python benchmarks/bench_trl_ppo.py [--threads N] [--device cpu|cuda] [--repeats 5]

(trl is a benchmark-only tool, never a minirlhf dependency: it lives in a venv of its own. trl 1.16 removed
PPOTrainer; bench_trl_rloo.py compares with its RLOOTrainer.)

TRL's PPO (Huang et al. 2024, "The N+ implementation details of RLHF with PPO") and minirlhf's share the
algorithm: sample, the reference's logprobs, a critic's values, a reward model's score at the last token, KL
shaping, GAE, whitened advantages, then clipped policy and value losses. Settings matched to bench_ppo.py:

  rollout        64 prompts × 48 tokens per iteration (local_rollout_forward_batch_size 64: one chunk);
                 prompts 8 random ids; no stop token, so every response is 48 tokens (as eos_id=None)
  update         1 epoch (num_ppo_epochs 1) × 4 minibatches of 16 (num_mini_batches 4,
                 per_device_train_batch_size 64, gradient_accumulation_steps 1): 4 optimizer steps
  models         the very weights of bench_ppo.py: policy and reference GPT2LMHeadModel (our save_pretrained);
                 reward and value model GPT2ForSequenceClassification on our reward trunk and head
  critic         TRL's PPO always has a separate value model, initialised here from the reward model as
                 minirlhf's value_model="separate" is: that is the like-for-like run ("ppo_separate"). minirlhf's
                 default, a value head on the policy trunk ("ppo_shared"), is timed too.
  KL, precision  kl_coef 0.05, temperature 1; fp32 on CPU, bf16 on CUDA (both); no gradient checkpointing
  --compile-sampler  adds "ppo_separate_compiled": PPOConfig.compile_sampler, the sampler's step compiled

Both take the policy's logprobs from generation (TRL stacks generate()'s (B, N, V) scores; minirlhf keeps
one number per token): neither runs a second policy forward in the rollout. What differs: TRL computes the
policy's logits over every position in the update (minirlhf only over the response), and runs inside
accelerate and transformers' callbacks; those are part of what using TRL costs.

Timing: TRL's iterations alternate with minirlhf's (trl_common.Alternate), medians over --repeats iterations
after one warm-up each; TRL's phases by wrapping its module's own functions (batch_generation; forward under
no_grad: the reference; get_reward: the value model, then the reward model).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench_ppo import B, P, R, build, medians, ppo_trainer
from common import cpu_share, load_average, report
from trl_common import Alternate, PhaseClock, hf_models, hf_score_model, start, warm_up, word_tokenizer

PHASES = ("generate", "reference", "value", "scoring")


def trl_ppo_trainer(policy, reward, prompts, iterations: int, seed: int, device, directory: Path):
    """TRL's experimental PPOTrainer on our weights, set up as the module docstring says."""
    from datasets import Dataset
    from transformers import GPT2LMHeadModel
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    tokenizer = word_tokenizer()
    hf_policy, hf_reward = hf_models(policy, reward, directory, tokenizer)
    hf_ref = GPT2LMHeadModel.from_pretrained(directory / "policy")
    hf_value = hf_score_model(reward, directory, tokenizer)
    dataset = Dataset.from_dict({"input_ids": [p for _ in range(iterations) for p in prompts]})
    config = PPOConfig(
        output_dir=str(directory / "out"), per_device_train_batch_size=B, gradient_accumulation_steps=1,
        num_mini_batches=4, num_ppo_epochs=1, total_episodes=B * iterations, local_rollout_forward_batch_size=B,
        response_length=R, temperature=1.0, stop_token=None, kl_coef=0.05, learning_rate=1e-4, max_grad_norm=1.0,
        num_sample_generations=0, bf16=device.type == "cuda", gradient_checkpointing=False,
        use_cpu=device.type == "cpu", logging_steps=10**6, report_to="none", save_strategy="no", disable_tqdm=True,
        seed=seed, dataloader_num_workers=0)
    return PPOTrainer(args=config, processing_class=tokenizer, model=hf_policy, ref_model=hf_ref,
                      reward_model=hf_reward, value_model=hf_value, train_dataset=dataset, eval_dataset=dataset)


def clock_trl_ppo(device) -> PhaseClock:
    """Phases of a TRL PPO iteration, from the functions its trainer module calls: generation, the
    reference's forward (the only one under no_grad), and get_reward (the value model first, then the reward
    model, once per rollout chunk)."""
    from trl.experimental.ppo import ppo_trainer as module
    clock = PhaseClock(device)
    calls = []

    def reward_phase(*args, **kwargs):
        calls.append(None)
        return ("value", "scoring")[(len(calls) - 1) % 2]

    clock.wrap(module, "batch_generation", lambda *a, **k: "generate")
    clock.wrap(module, "forward", lambda *a, **k: None if torch.is_grad_enabled() else "reference")
    clock.wrap(module, "get_reward", reward_phase)
    return clock


def main():
    args, device = start(__doc__)
    variants = {"ppo_separate": dict(value_model="separate"), "ppo_shared": dict(value_model="shared")}
    if args.compile_sampler:
        variants["ppo_separate_compiled"] = dict(value_model="separate", compile_sampler=True)
    ours = {}
    for name, config in variants.items():
        policy, ref, reward, prompts = build(args.seed, device)
        ours[name] = (ppo_trainer(policy, ref, reward, prompts, args.seed, device, **config), prompts)
    warm_up(ours)
    policy, _, reward, prompts = build(args.seed, device)
    with tempfile.TemporaryDirectory() as d:
        clock = clock_trl_ppo(device)
        trainer = trl_ppo_trainer(policy, reward, prompts, args.repeats + 1, args.seed, device, Path(d))
        alternate = Alternate(clock, 1, args.repeats + 1, ours)
        trainer.add_callback(alternate.callback())
        trainer.train()
    trl_s, trl_phases = alternate.trl_medians()
    trl_phases["update"] = trl_s - sum(trl_phases[k] for k in PHASES)  # with GAE and metrics

    print(f"# {B} rollouts × {R} tokens (prompts {P}), 1 epoch × 4 minibatches, alternated; {load_average()}")
    for name, samples in alternate.ours_samples.items():
        ours_s, phases = medians(samples)
        report(f"minirlhf_{name}_iteration", ours_s, "s", ".3f")
        for phase in ("generate", "policy_forward", "reference", "scoring", "update"):
            report(f"minirlhf_{name}_{phase}", phases[f"time/{phase}_s"], "s", ".3f")
        report(f"minirlhf_{name}_speedup_vs_trl_ppo", trl_s / ours_s, "x", ".2f")
    report("trl_ppo_iteration", trl_s, "s", ".3f")
    for phase in (*PHASES, "update"):
        report(f"trl_ppo_{phase}", trl_phases.get(phase, float("nan")), "s", ".3f")
    print(f"# done, {cpu_share()}")


if __name__ == "__main__":
    main()
