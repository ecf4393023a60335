"""TRL's RLOOTrainer against minirlhf's PPOTrainer: same shape, same weights, same machine, same process.

    python -m venv --system-site-packages /tmp/trlvenv && /tmp/trlvenv/bin/pip install trl==1.16.0
    /tmp/trlvenv/bin/python benchmarks/bench_trl_rloo.py [--threads N] [--device cpu|cuda] [--repeats 5]

(trl is a benchmark-only tool, never a minirlhf dependency; a venv that sees the system packages adds
trl, accelerate and datasets without touching them.)

TRL 1.16.0 has no PPOTrainer (it was removed from trl, and trl.experimental has none either), so the
closest like-for-like run is its RLOOTrainer, which shares PPO's skeleton: sample, recompute the
policy's logprobs, the reference's logprobs, a reward model's score, then a clipped-ratio update.
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

What differs and cannot be matched: RLOO has no value head (PPO's shared value head is a 256→1 linear,
negligible compute); TRL decodes completions to text and re-tokenises them for the reward model (a
word-level tokenizer "t4 … t4095" here, one word per id, so lengths are unchanged); TRL runs inside
transformers.Trainer (dataloader, accelerate, callbacks). Those are part of what using TRL costs.

Timing: wall time between the end of the 4th optimizer step of one iteration and the next (callback),
median over --repeats iterations after one warm-up; phases by wrapping the trainer's own methods
(_generate, _get_per_token_logps_and_entropies inside the rollout, _calculate_rewards). minirlhf's
PPO is timed in the same process, before and after TRL, with bench_ppo.time_ppo.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_ppo import B, P, R, VOCAB, build, time_ppo
from common import add_common_args, cpu_share, load_average, report, setup

NUM_GENERATIONS = 4


def word_tokenizer():
    """A transformers tokenizer with one word per id: <pad> <bos> <eos> <unk>, then "t4" … "t4095"."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"t{i}" for i in range(4, VOCAB)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def hf_models(policy, reward, directory: Path, tokenizer):
    """Our policy and reward model as transformers models, through their on-disk HF format."""
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    policy.save_pretrained(directory / "policy")
    hf_policy = GPT2LMHeadModel.from_pretrained(directory / "policy", **ids)
    hf_policy.generation_config.update(**ids)
    hf_policy.save_pretrained(directory / "policy")  # TRL loads the reference from here, with these ids
    reward.gpt.save_pretrained(directory / "reward")
    hf_reward = GPT2ForSequenceClassification.from_pretrained(directory / "reward", num_labels=1, **ids)
    with torch.no_grad():  # r = gain·(w·h + b) + bias; at init gain 1, b = bias = 0, and HF's score has no bias
        assert float(reward.head.bias) == 0 and float(reward.gain) == 1 and float(reward.bias) == 0
        hf_reward.score.weight.copy_(reward.head.weight)
    x = torch.randint(4, VOCAB, (2, 12))
    with torch.no_grad():
        assert torch.allclose(hf_policy(x).logits, policy.cpu()(x), atol=1e-4)
        assert torch.allclose(hf_reward(x).logits[:, 0], reward.cpu()(x), atol=1e-4)
    return hf_policy, hf_reward


class Timer:
    """Wraps trainer methods and a step-end callback into per-phase and per-iteration seconds."""

    def __init__(self, device):
        self.device, self.in_rollout, self.forwards = device, False, []
        self.phases: list[dict] = []
        self.step_ends: list[float] = []

    def now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def wrap(self, obj, name, phase=None):
        fn = getattr(obj, name)

        @functools.wraps(fn)
        def timed(*a, **k):
            t0 = self.now()
            out = fn(*a, **k)
            dt = self.now() - t0
            if name == "_generate_and_score_completions":
                self.phases[-1]["rollout"] = dt
            elif self.in_rollout or phase != "forward":
                key = phase if phase != "forward" else ("policy_forward", "reference")[len(self.forwards) % 2]
                self.phases[-1][key] = self.phases[-1].get(key, 0.0) + dt
                if phase == "forward":
                    self.forwards.append(dt)
            return out

        if name == "_generate_and_score_completions":
            def rollout(*a, **k):
                self.phases.append({})
                self.in_rollout, self.forwards = True, []
                try:
                    return timed(*a, **k)
                finally:
                    self.in_rollout = False
            setattr(obj, name, rollout)
        else:
            setattr(obj, name, timed)

    def callback(self):
        from transformers import TrainerCallback
        timer = self

        class StepEnd(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                timer.step_ends.append(timer.now())
        return StepEnd()


def time_trl(policy, reward, prompts, repeats: int, seed: int, device) -> tuple[float, dict]:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer
    tokenizer = word_tokenizer()
    steps_per_iteration = 4
    with tempfile.TemporaryDirectory() as d:
        hf_policy, hf_reward = hf_models(policy, reward, Path(d), tokenizer)
        n_prompts = (B // NUM_GENERATIONS) * (repeats + 1)
        # a trailing space, so prompt + completion text re-tokenises into the same words
        texts = [" ".join(f"t{i}" for i in prompts[j % len(prompts)]) + " " for j in range(n_prompts)]
        config = RLOOConfig(
            output_dir=str(Path(d) / "out"), per_device_train_batch_size=B // steps_per_iteration,
            steps_per_generation=steps_per_iteration, num_generations=NUM_GENERATIONS, num_iterations=1,
            max_completion_length=R, temperature=1.0, top_k=0, top_p=1.0, generation_kwargs={"min_new_tokens": R},
            beta=0.05, learning_rate=1e-4, max_grad_norm=1.0, max_steps=steps_per_iteration * (repeats + 1),
            bf16=device.type == "cuda", gradient_checkpointing=False, use_cpu=device.type == "cpu",
            logging_steps=10**6, report_to="none", save_strategy="no", disable_tqdm=True, seed=seed,
            shuffle_dataset=False, dataloader_num_workers=0, log_completions=False)
        trainer = RLOOTrainer(model=hf_policy, reward_funcs=hf_reward, args=config,
                              train_dataset=Dataset.from_dict({"prompt": texts}), processing_class=tokenizer,
                              reward_processing_classes=tokenizer)
        timer = Timer(device)
        trainer.add_callback(timer.callback())
        timer.wrap(trainer, "_generate_and_score_completions")
        timer.wrap(trainer, "_generate", "generate")
        timer.wrap(trainer, "_get_per_token_logps_and_entropies", "forward")
        timer.wrap(trainer, "_calculate_rewards", "scoring")
        trainer.train()
    ends = timer.step_ends[steps_per_iteration - 1::steps_per_iteration]
    walls = [b - a for a, b in zip(ends, ends[1:])]
    phases = timer.phases[1:]
    med = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    med["update"] = statistics.median(w - p["rollout"] for w, p in zip(walls, phases))
    return statistics.median(walls), med


def main():
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    device = setup(args)
    import transformers
    import trl
    print(f"# trl {trl.__version__}, transformers {transformers.__version__}")

    ours = []
    for _ in range(2):  # before and after TRL, so drifting machine load falls on both
        policy, ref, reward, prompts = build(args.seed, device)
        ours.append(time_ppo(policy, ref, reward, prompts, args.repeats, args.seed, device))
        if not len(ours) - 1:
            policy, _, reward, prompts = build(args.seed, device)
            trl_s, trl_phases = time_trl(policy, reward, prompts, args.repeats, args.seed, device)
    ours_s = statistics.median([ours[0][0], ours[1][0]])
    ours_phases = {k: statistics.median([ours[0][1][k], ours[1][1][k]]) for k in ours[0][1]}

    print(f"# {B} rollouts × {R} tokens, 1 epoch × 4 minibatches; {load_average()}")
    report("minirlhf_ppo_iteration", ours_s, "s", ".3f")
    for name in ("rollout", "generate", "policy_forward", "reference", "scoring", "update"):
        report(f"minirlhf_ppo_{name}", ours_phases[f"time/{name}_s"], "s", ".3f")
    report("trl_rloo_iteration", trl_s, "s", ".3f")
    for name in ("rollout", "generate", "policy_forward", "reference", "scoring", "update"):
        report(f"trl_rloo_{name}", trl_phases.get(name, float("nan")), "s", ".3f")
    report("minirlhf_speedup_vs_trl_rloo", trl_s / ours_s, "x", ".2f")
    print(f"# done, {cpu_share()}")


if __name__ == "__main__":
    main()
