"""`minirlhf evaluate --run DIR` on a policy a trainer wrote (ppo, grpo/rloo, dpo, rrhf, sft): sample it and its
reference on the same prompts and report what evaluation.py measures.

    prompts ──sample_and_score(reference)──▶ reward, distinct-n          (KL 0: the baseline)
            ──sample_and_score(policy)─────▶ reward, KL to the reference, distinct-n, the samples
                                             ──▶ DIR/evaluation.json and a short table

What a trainer's run directory records about its inputs: train_config.json holds the settings and the trainer's
name ("trainer", and a "resumes" history, run.py), not the paths of its --init (the reference), its --reward or
its --prompts/--data. So they are given here: --ref (the run's --init), --reward and --prompts (JSONL
{"prompt": ...}, as `minirlhf ppo --prompts` reads them), each required, with one line saying which is missing,
rather than guessed. From the record come the defaults of what shapes the samples: max_new_tokens and
temperature of an online run (as in force at its end, resumes applied), else 24 tokens (at most half the
context) and temperature 1. Samples are plain (no top-k / top-p), as in training, so KL is the one PPO's
penalty estimates (k1 summed over the response, advantages.kl_penalty), at that temperature.

A demo directory (`minirlhf demo`) has its own evaluation, on its own prompts and judge (recipes/sentiment_zh
evaluate_saved_run, report.json); its policy/ is a ppo run like any other.
"""
from __future__ import annotations

from pathlib import Path

from .checkpoint import load_json, save_json
from .data import load_prompts
from .errors import InputError
from .evaluation import Samples, distinct_n, sample_and_score, summary
from .model import GPT, RewardModel
from .run import recorded_settings
from .runtime import machine, resolve_device
from .tokenizer import Tokenizer

POLICY_TRAINERS = ("ppo", "grpo", "rloo", "dpo", "rrhf", "sft", "pretrain")
"""The trainers whose run directory is a policy (a GPT-2 that writes); a reward run scores text instead."""


def read_run(run_dir) -> tuple[str, dict]:
    """(trainer, settings in force at the end) of a finished policy run; otherwise an InputError."""
    out = Path(run_dir)
    path = out / "train_config.json"
    if not path.is_file():
        raise InputError(f"{out}: not a minirlhf run (no train_config.json, written by every trainer, nor demo.json, "
                         f"by minirlhf demo)")
    record = load_json(path)
    trainer = record.get("trainer", "?")
    if trainer not in POLICY_TRAINERS:
        raise InputError(f"{out}: a {trainer} run, not a policy; evaluate takes the run of "
                         f"{', '.join(POLICY_TRAINERS)}")
    if not (out / "model.safetensors").is_file():
        raise InputError(f"{out}: the {trainer} run has not finished (no model.safetensors yet)")
    return trainer, recorded_settings(record, path)


def _load(directory, cls, tokenizer: Tokenizer, flag: str, device):
    """The model in `directory`, which must read the run's tokens: same vocabulary, and the same tokenizer.json
    when it has one."""
    model = cls.from_pretrained(directory).to(device).eval()
    tokenizer.check_model(model.config, f"{flag} {directory}")
    own = Path(directory) / "tokenizer.json"
    if own.is_file() and Tokenizer.from_file(own).tok.to_str() != tokenizer.tok.to_str():
        raise InputError(f"{flag} {directory}: trained with another tokenizer than the run's")
    return model


def _stats(s: Samples) -> dict:
    return {**summary(s), "distinct_1": distinct_n(s.responses, 1)}


def evaluate_policy_run(run_dir, prompts_file, ref_dir, reward_dir, n: int = 8, max_new_tokens: int | None = None,
                        temperature: float | None = None, seed: int = 0, device: str = "cpu") -> dict:
    """Sample `n` responses per prompt of `prompts_file` from the run's policy and from `ref_dir`, score them with
    the reward model in `reward_dir`; write DIR/evaluation.json and return its contents."""
    out = Path(run_dir)
    trainer, settings = read_run(out)
    missing = [f"--{k} {what}" for k, v, what in (("ref", ref_dir, "DIR (the run's --init)"),
                                                  ("reward", reward_dir, "DIR (a reward model)"),
                                                  ("prompts", prompts_file, "FILE (JSONL {\"prompt\": ...})")) if not v]
    if missing:
        raise InputError(f"{out}: a {trainer} run records its settings, not where its reference, reward model and "
                         f"prompts are; give {', '.join(missing)}")
    if n < 1 or (max_new_tokens is not None and max_new_tokens < 1) or (temperature is not None and temperature <= 0):
        raise InputError(f"evaluate needs --n >= 1, --max-new-tokens >= 1 and --temperature > 0; got {n}, "
                         f"{max_new_tokens}, {temperature}")
    prompts = load_prompts(prompts_file)
    dev = resolve_device(device)
    tokenizer = Tokenizer.from_file(out / "tokenizer.json")
    policy = _load(out, GPT, tokenizer, "--run", dev)
    ref = _load(ref_dir, GPT, tokenizer, "--ref", dev)
    rm = _load(reward_dir, RewardModel, tokenizer, "--reward", dev)
    block = policy.config.block_size
    for flag, model in (("--ref", ref), ("--reward", rm)):
        if model.config.block_size < block:
            raise InputError(f"{flag}: a context of {model.config.block_size} tokens, shorter than the policy's "
                             f"{block}")
    max_new_tokens = max_new_tokens or settings.get("max_new_tokens") or min(24, block // 2)
    temperature = temperature or settings.get("temperature") or 1.0
    if max_new_tokens >= block:
        raise InputError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the policy's context of "
                         f"{block} tokens")
    # the same seed for both: the reference is the baseline (its KL to itself is 0 up to float rounding)
    before, after = (sample_and_score(model, ref, rm, tokenizer, prompts, n, max_new_tokens, temperature, seed)
                     for model in (ref, policy))
    report = {
        "run": str(out), "trainer": trainer, "reference": str(ref_dir), "reward_model": str(reward_dir),
        "prompts": str(prompts_file),
        "settings": {"prompts": len(prompts), "samples_per_prompt": n, "max_new_tokens": max_new_tokens,
                     "temperature": temperature, "seed": seed},
        "reference_policy": _stats(before), "policy": _stats(after),
        "samples": [{"prompt": p, "response": r, "reward": x, "kl": k}
                    for p, r, x, k in zip(after.prompts, after.responses, after.rewards, after.kl)],
        "machine": machine(device),
    }
    save_json(out / "evaluation.json", report)
    return report


def print_evaluation(report: dict, per_prompt: int = 1, max_prompts: int = 8) -> None:
    """The table (reference -> policy) and a few of the policy's samples."""
    from .recipes.demo_report import print_header
    print_header(report, report["run"], "evaluate", quick=False)
    s = report["settings"]
    print(f"a {report['trainer']} run; reference {report['reference']}, reward model {report['reward_model']}")
    print(f"prompts: {report['prompts']} ({s['prompts']} × {s['samples_per_prompt']} samples, up to "
          f"{s['max_new_tokens']} new tokens, temperature {s['temperature']}, seed {s['seed']})\n")
    before, after = report["reference_policy"], report["policy"]
    print(f"{'':<28}reference -> policy")
    for label, key, fmt in (("reward (mean)", "reward", "+.3f"), ("KL to reference (nats)", "kl", ".3f"),
                            ("distinct-1", "distinct_1", ".3f"), ("distinct-2", "distinct_2", ".3f")):
        show = lambda v: format(round(v, 3) + 0.0, fmt)  # noqa: E731  (+ 0.0: never "-0.000")
        print(f"{label:<28}{show(before[key]):>9} -> {show(after[key])}")
    print("\nsamples of the policy (prompt | response; r: reward, kl: nats to the reference)")
    shown: dict[str, int] = {}
    for x in report["samples"]:
        if shown.get(x["prompt"], 0) < per_prompt and (x["prompt"] in shown or len(shown) < max_prompts):
            shown[x["prompt"]] = shown.get(x["prompt"], 0) + 1
            print(f"  {x['prompt']} | {x['response']}  (r {x['reward']:+.2f}, kl {x['kl']:.2f})")
    print(f"\nwrote {Path(report['run']) / 'evaluation.json'} (every sample, and these figures)")
