"""The demo's report: its before/after evaluation (the reference policy vs the PPO policy, and the pretrained
model, on the prompt pool and on held-out review openings, judged as evaluator.py says) into report.json,
samples.md and plots/; and the printed summary, whose first lines (print_header) every recipe shares.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..checkpoint import load_json
from ..plots import plot_run
from ..runtime import describe_machine
from ..tracking import read_metrics
from . import reviews
from .demo_config import DemoConfig
from .evaluator import sample_and_judge


def build_report(out: Path, config: DemoConfig, data, tokenizer, sft, policy, rm, pretrained=None) -> dict:
    """Before (the reference policy, sft) vs after (the RL policy) on the pool and on held-out prompts, and the
    pretrained model before SFT when there is one; samples.md and plots/. KL is always to the reference."""
    heldout = reviews.opening_prompts(data.test_pos + data.test_neg, config.heldout_prompts, config.seed)
    models = {"pretrained": pretrained, "before": sft, "after": policy}
    models = {k: m for k, m in models.items() if m is not None}
    n_new = config.ppo.max_new_tokens
    res, done = {}, {}   # done: by model, so that one model under two names (no SFT stage) is evaluated once
    for name, model in models.items():
        if id(model) not in done:
            done[id(model)] = (
                sample_and_judge(model, sft, rm, tokenizer, reviews.POOL, config.eval_samples, n_new, 10_000),
                sample_and_judge(model, sft, rm, tokenizer, heldout, config.heldout_samples, n_new, 20_000))
        res[name, "pool"], res[name, "heldout"] = done[id(model)]
    pick = lambda split, key: {w: round(res[w, split][0][key], 4) for w in models}  # noqa: E731
    report = {
        "judge_positive_rate": pick("pool", "judge_positive_rate"),
        "reward": pick("pool", "reward"),
        "kl": {"after": round(res["after", "pool"][0]["kl"], 4)},
        "distinct_2": pick("pool", "distinct_2"),
        "heldout": {"prompts": heldout, "judge_positive_rate": pick("heldout", "judge_positive_rate"),
                    "judge_positive_rate_response": pick("heldout", "judge_positive_rate_response"),
                    "reward": pick("heldout", "reward"), "kl": {"after": round(res["after", "heldout"][0]["kl"], 4)},
                    "distinct_2": pick("heldout", "distinct_2")},
        "judge_positive_rate_response": pick("pool", "judge_positive_rate_response"),
        "judge_mean": pick("pool", "judge_mean"),
        "reward_model": load_json(out / "reward" / "test_accuracy.json"),
        "judge": "snownlp SnowNLP(prompt + response).sentiments > 0.5 (_response: the response alone)",
        "models": {"pretrained": "stage 1, before SFT", "before": "the reference policy (sft/, or the pretrained "
                   "model without the SFT stage)", "after": "the PPO policy (policy/)"},
        "config": asdict(config),
    }
    write_samples(out / "samples.md", res, reviews.POOL + heldout[:4])
    write_plots(out)
    return report


def write_samples(path: Path, res: dict, prompts: list[str], per_prompt: int = 3):
    """samples.md: a few samples of each prompt before and after PPO, with the judge's and the reward model's
    figures (`res`: build_report's sample_and_judge results by (model, split))."""
    lines = ["# Samples before and after PPO", "",
             "Same prompts; before is the reference policy (after SFT, when the demo ran it), after is the PPO policy; "
             "`judge` is snownlp's positive probability of prompt + response, `r` the reward model.", "",
             "| prompt | before | after |", "| --- | --- | --- |"]
    for prompt in prompts:
        cells = []
        for when in ("before", "after"):
            items = []
            for split in ("pool", "heldout"):
                stats, s, judged = res[when, split]
                items += [f"{r.replace('|', '｜')} (judge {j:.2f}, r {x:+.2f})"
                          for p, r, j, x in zip(s.prompts, s.responses, judged, s.rewards) if p == prompt]
            cells.append("<br>".join(items[:per_prompt]))
        lines.append(f"| {prompt} | {cells[0]} | {cells[1]} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plots(out: Path):
    """metrics.jsonl (PPO's rows with the judge curve merged in, by iteration) and its plots/."""
    rows = read_metrics(out / "policy" / "metrics.jsonl")
    curve_path = out / "policy" / "judge_curve.jsonl"
    curve = read_metrics(curve_path) if curve_path.exists() else []
    by_it = {r["iteration"]: dict(r) for r in rows}
    for c in curve:
        by_it.setdefault(c["iteration"], {"iteration": c["iteration"]}).update(c)
    merged = [by_it[k] for k in sorted(by_it)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged))
    plot_run(out, merged)  # what `minirlhf plot --run` draws; sft/plots and reward/plots hold the stages' own


def print_header(report: dict, out, command: str, quick: bool) -> None:
    """The first lines of every recipe's summary: where the run is, what machine its figures are from, and, for
    --quick, that they mean nothing."""
    print(f"\nrun directory: {out}")
    if report.get("machine"):
        print(f"measured on: {describe_machine(report['machine'])}")
    if quick:
        print(f"--quick is a toy-size smoke test: its numbers mean nothing; run `minirlhf {command}` for the real "
              "figures")


def print_report(report: dict, out) -> None:
    """The closing summary: the figures of each model (pretrained, sft, ppo) and the per-stage timing table."""
    print_header(report, out, "demo", report.get("config", {}).get("quick"))
    names = {"pretrained": "pretrained", "before": "sft" if "pretrained" in report["reward"] else "reference",
             "after": "ppo"}
    cols = [k for k in names if k in report["reward"]]
    row = lambda label, d, fmt: print(f"{label:<31}" + " -> ".join(format(d[k], fmt) for k in cols))  # noqa: E731
    print(f"{'':<31}" + " -> ".join(names[k] for k in cols))
    row("judge positive rate (pool)", report["judge_positive_rate"], ".3f")
    row("judge positive rate (held-out)", report["heldout"]["judge_positive_rate"], ".3f")
    row("  response alone (pool)", report["judge_positive_rate_response"], ".3f")
    if "judge_positive_rate_response" in report["heldout"]:
        row("  response alone (held-out)", report["heldout"]["judge_positive_rate_response"], ".3f")
    row("reward (pool)", report["reward"], "+.3f")
    row("distinct-2 (pool)", report["distinct_2"], ".3f")
    print(f"{'KL to reference (pool, nats)':<31}{report['kl']['after']:.3f}")
    print(f"{'reward model test accuracy':<31}{report['reward_model']['test_accuracy']:.3f}")
    if report.get("seconds"):
        print("\nstage        seconds   (as measured when each stage ran; a cached stage keeps its time)")
        for k, v in report["seconds"].items():
            print(f"{k:<12} {v:>7.1f}")
