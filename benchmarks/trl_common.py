"""What the TRL comparisons share: our weights as transformers models, a word-level tokenizer, phase clocks
around TRL's own functions, and a callback that alternates TRL's iterations with minirlhf's.

Alternation: TRL's trainers own their loop (`trainer.train()`), so minirlhf cannot be interleaved from
outside. Instead `Alternate`, a TrainerCallback, runs one minirlhf iteration (each variant once) at the end
of every TRL iteration, timed apart: TRL₁ (warm-up) ours₁ TRL₂ ours₂ … ours_r TRL_{r+1}. A TRL iteration's
wall time runs from the moment the preceding minirlhf iteration returned to its own last optimizer step, so
neither side is charged the other's time, and load from other processes falls on both alike.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch

from bench_ppo import VOCAB, timed_step
from common import add_common_args, setup, sync


def start(doc: str):
    """Parse a TRL comparison's arguments (the common ones and --compile-sampler), set up the device and print
    the versions under test. Returns (args, device)."""
    parser = add_common_args(argparse.ArgumentParser(description=doc.splitlines()[0]))
    parser.add_argument("--compile-sampler", action="store_true",
                        help="also time minirlhf with PPOConfig.compile_sampler (its sampler's step compiled)")
    args = parser.parse_args()
    device = setup(args)
    import transformers
    import trl
    print(f"# trl {trl.__version__}, transformers {transformers.__version__}")
    return args, device


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
    """Our policy and reward model as transformers models (GPT2LMHeadModel, GPT2ForSequenceClassification),
    through their on-disk HF format, checked to give the same logits and scores. The policy is saved back
    under directory/policy with the tokenizer's ids, so a reference can be loaded from there."""
    from transformers import GPT2LMHeadModel
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    policy.save_pretrained(directory / "policy")
    hf_policy = GPT2LMHeadModel.from_pretrained(directory / "policy", **ids)
    hf_policy.generation_config.update(**ids)
    hf_policy.save_pretrained(directory / "policy")
    reward.gpt.save_pretrained(directory / "reward")
    hf_reward = hf_score_model(reward, directory, tokenizer)
    x = torch.randint(4, VOCAB, (2, 12))
    with torch.no_grad():
        assert torch.allclose(hf_policy(x).logits, policy.cpu()(x), atol=1e-4)
        assert torch.allclose(hf_reward(x).logits[:, 0], reward.cpu()(x), atol=1e-4)
    return hf_policy, hf_reward


def hf_score_model(reward, directory: Path, tokenizer):
    """A fresh GPT2ForSequenceClassification with our reward model's trunk (saved in directory/reward) and head
    (r = gain·(w·h + b) + bias; at init gain 1, b = bias = 0, and HF's score has no bias)."""
    from transformers import GPT2ForSequenceClassification
    model = GPT2ForSequenceClassification.from_pretrained(directory / "reward", num_labels=1,
                                                          pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        assert float(reward.head.bias) == 0 and float(reward.gain) == 1 and float(reward.bias) == 0
        model.score.weight.copy_(reward.head.weight)
    return model


class PhaseClock:
    """Seconds per phase per TRL iteration, from wrapping TRL's own functions (`wrap`)."""

    def __init__(self, device):
        self.device, self.iterations = device, [{}]

    def now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def wrap(self, owner, name: str, phase_of):
        """Time every call of owner.name under the phase `phase_of(*args, **kwargs)` names (None: not timed)."""
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            phase = phase_of(*args, **kwargs)
            if phase is None:
                return fn(*args, **kwargs)
            t0 = self.now()
            out = fn(*args, **kwargs)
            self.iterations[-1][phase] = self.iterations[-1].get(phase, 0.0) + self.now() - t0
            return out

        setattr(owner, name, timed)


class Alternate:
    """The TrainerCallback of the module docstring: after every `steps_per_iteration`-th optimizer step, one
    iteration of each minirlhf trainer in `ours` ({name: (trainer, prompts)}), except after the last."""

    def __init__(self, clock: PhaseClock, steps_per_iteration: int, iterations: int, ours: dict):
        self.clock, self.steps, self.iterations, self.ours = clock, steps_per_iteration, iterations, ours
        self.step, self.resumed = 0, None
        self.trl_walls: list[float] = []
        self.ours_samples = {name: [] for name in ours}

    def callback(self):
        from transformers import TrainerCallback
        outer = self

        class StepEnd(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                outer.step_end()
        return StepEnd()

    def step_end(self):
        self.step += 1
        if self.step % self.steps:
            return
        end = self.clock.now()
        if self.resumed is not None:
            self.trl_walls.append(end - self.resumed)
        if self.step // self.steps < self.iterations:
            for name, (trainer, prompts) in self.ours.items():
                self.ours_samples[name].append(timed_step(trainer, prompts))
        self.clock.iterations.append({})
        self.resumed = self.clock.now()

    def trl_medians(self) -> tuple[float, dict]:
        """Median TRL iteration (the first, a warm-up, left out) and the median of each phase."""
        phases = self.clock.iterations[1:len(self.trl_walls) + 1]
        med = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
        return statistics.median(self.trl_walls), med


def warm_up(ours: dict):
    """One untimed iteration of each minirlhf trainer (TRL's first iteration is its own warm-up)."""
    for trainer, prompts in ours.values():
        trainer.step(prompts)
