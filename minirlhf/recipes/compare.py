"""The comparison no framework gives its users: PPO, GRPO, RLOO, DPO, RRHF and best-of-n on ONE task, from one
reference policy, against one reward model, under one seed, on one reward–KL frontier.

    the demo's sft/ and reward/ (the same stages, cached)
      ├─ online  ppo/ grpo/ rloo/   sample from the prompt pool, score with the reward model, update
      ├─ offline prefs: k samples of sft per prompt ranked by the reward model ──▶ dpo/ (best vs worst pairs),
      │                                                                          rrhf/ (all k, ranked)
      └─ best-of-n, n = 1 … 64: keep the reward model's best of n samples of sft (no training)
    at eval_points points along each method's training: samples of every pool prompt ──▶ the reward model's
    score, snownlp's judge positive rate, the gold reward (the sandbox's ground truth, gold/), KL to sft
    ──▶ frontier.png, compare.json, compare.md

The gold (sandbox.py, gold.GoldReward) is what a person would say: a positive review and readable text. It is
never trained against; the reward model is. So the third panel is the frontier the DPO paper's Fig. 2 draws
where the ground-truth reward is known: gold against KL, where reward hacking shows as a gold that falls while
the reward-model score still rises.

CPU: `minirlhf compare` (the README gives the measured minutes); `--quick` toy size. GPU: `--device cuda`.

What is and is not equal between the methods, said out loud:
  * Same reference (sft/), same reward model, same prompt pool, same sampling temperature (1), same response
    length cap, same evaluation samples (one seed for every point: common random numbers).
  * KL on the x axis is measured the same way for every trained policy: Σ_t log π − log π_sft over its own
    samples (k1, as PPO's objective/kl). For best-of-n it is the bound log n − (n−1)/n (evaluation.best_of_n).
  * Budgets are each method's usual shape, not identical: the online methods see `iterations × batch_size`
    fresh samples; DPO and RRHF see `preference_prompts × preference_k` samples of sft, drawn once.
  * Hyperparameters are the defaults below, tuned for none of the methods beyond making each one learn;
    a frontier is a picture of this run, not a ranking of the algorithms.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..checkpoint import load_json, save_json
from ..config import validate
from ..dpo import DPOConfig, train_dpo
from ..errors import InputError
from ..grpo import GRPOConfig, RLOOConfig, train_grpo
from ..plots import figure, save_figure
from ..ppo import train_ppo
from ..responses import make_preferences
from ..rrhf import RRHFConfig, train_rrhf
from ..runtime import machine
from . import reviews
from .demo_config import DemoConfig, quick_config
from .demo_report import print_header
from .evaluator import Evaluator, eval_steps
from .sandbox import GoldConfig, prepare_gold, quick_gold_config
from .shared_stages import Prepared, prepare
from .stages import StagedConfig, check_out_dir, mark_done, stage_digest, stage_record

METHODS = ("ppo", "grpo", "rloo", "dpo", "rrhf", "best_of_n")


def _grpo() -> GRPOConfig:
    return GRPOConfig(iterations=100, batch_size=64, group_size=4, max_new_tokens=24, lr=2e-4, kl_coef=0.1)


def _rloo() -> RLOOConfig:
    return RLOOConfig(iterations=100, batch_size=64, group_size=4, max_new_tokens=24, lr=2e-4, kl_coef=0.2)


def _dpo() -> DPOConfig:
    return DPOConfig(steps=120, batch_size=32, lr=2e-4, beta=0.1, val_fraction=0.05)


def _rrhf() -> RRHFConfig:
    return RRHFConfig(steps=120, batch_size=16, lr=2e-4, val_fraction=0.05)


@dataclass
class CompareConfig(StagedConfig):
    seed: int = 0
    """Seed of every stage and method."""
    device: str = "cpu"
    """cpu or cuda, for every stage and method."""
    demo: DemoConfig = field(default_factory=DemoConfig)
    """The demo's stages (--demo.<key>): its pretrain and reward stages are the shared reference and reward
    model, its ppo stage is the PPO here (--demo.ppo.<key>)."""
    grpo: GRPOConfig = field(default_factory=_grpo)
    """GRPO (--grpo.<key>): G = 4 responses per prompt, k3 KL loss term."""
    rloo: RLOOConfig = field(default_factory=_rloo)
    """RLOO (--rloo.<key>): leave-one-out baseline, k1 KL in the reward (β = 0.2, as the demo's PPO)."""
    dpo: DPOConfig = field(default_factory=_dpo)
    """DPO (--dpo.<key>) on best-vs-worst pairs of the preference samples."""
    rrhf: RRHFConfig = field(default_factory=_rrhf)
    """RRHF (--rrhf.<key>) on the ranked preference samples."""
    methods: str = ",".join(METHODS)
    """Comma-separated methods to run, from ppo, grpo, rloo, dpo, rrhf, best_of_n."""
    preference_prompts: int = 512
    """Draws from the prompt pool for the offline data (each gets preference_k samples of sft)."""
    preference_k: int = 4
    """Samples per draw, ranked by the reward model: DPO takes the best and the worst, RRHF all of them."""
    best_of_n: str = "1,2,4,8,16,32,64"
    """The n of best-of-n, comma-separated."""
    eval_points: int = 8
    """Evaluations along each method's training, log-spaced (most KL is spent early), and one of sft at KL 0."""
    eval_samples: int = 32
    """Samples per pool prompt at each evaluation."""
    with_gold: bool = True
    """Score every point by the gold reward too (its column and panel); false: no gold/ stage is trained."""
    gold: GoldConfig = field(default_factory=GoldConfig)
    """The gold reward (--gold.<key>), trained once as gold/ exactly as `minirlhf overopt` trains it (the same
    stage hash: an overopt run's gold/ copied in, or the same --out, is reused)."""

    def __post_init__(self):
        validate(self, positive=("preference_prompts", "preference_k", "eval_points", "eval_samples"))
        unknown = set(self.method_list()) - set(METHODS)
        if unknown:
            raise InputError(f"--methods: unknown {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
        if self.preference_k < 2:
            raise InputError(f"--preference_k must be at least 2 (a pair needs two samples), got {self.preference_k}")
        try:
            ns = [int(n) for n in self.best_of_n.split(",")]
        except ValueError:
            raise InputError(f"--best_of_n must be comma-separated integers, got {self.best_of_n!r}") from None
        if not ns or min(ns) < 1:
            raise InputError(f"--best_of_n values must be >= 1, got {self.best_of_n!r}")

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]


def quick_compare_config() -> CompareConfig:
    """`--quick`: toy sizes, the same pipeline (what the tests run)."""
    c = CompareConfig(demo=quick_config(), gold=quick_gold_config())
    small = dict(iterations=4, batch_size=16, max_new_tokens=8)
    return replace(c, grpo=replace(c.grpo, **small), rloo=replace(c.rloo, **small),
                   dpo=replace(c.dpo, steps=8, batch_size=8), rrhf=replace(c.rrhf, steps=8, batch_size=4),
                   preference_prompts=32, best_of_n="1,2,4", eval_points=2, eval_samples=2)


# ---------------------------------------------------------------------------------------------- the methods

def method_config(name: str, config: CompareConfig):
    """The trainer config method `name` runs with (the demo's ppo stage for ppo; None for best-of-n)."""
    if name == "best_of_n":
        return None
    return config.stage("demo").stage("ppo") if name == "ppo" else config.stage(name)


def method_settings(name: str, config: CompareConfig, gold_hash: str | None = None) -> dict:
    """What a method's stage hash covers (on top of the reward stage's): its config, its evaluation (with the gold
    stage's hash when the points are scored by the gold), its data."""
    cfg = method_config(name, config)
    settings = {"method": name, "config": stage_record(cfg) if cfg is not None else config.best_of_n,
                "eval": [config.eval_points, config.eval_samples],
                "preferences": [config.preference_prompts, config.preference_k] if name in ("dpo", "rrhf") else None}
    return settings if gold_hash is None else {**settings, "gold": gold_hash}


def run_method(name: str, out: Path, config: CompareConfig, prep: Prepared, evaluator: Evaluator, upstream: str,
               show_progress: bool, gold_hash: str | None = None) -> dict:
    """Train (or reuse, when its settings are unchanged) one method; its curve and seconds."""
    method_dir = out / name
    cfg = method_config(name, config)
    settings = method_settings(name, config, gold_hash)
    digest = stage_digest(upstream, settings)
    if not prep.stages.must_run(method_dir, digest, settings):
        return load_json(method_dir / "curve.json")
    t0 = time.time()
    if name == "best_of_n":
        curve = [evaluator.best_of_n(int(n)) for n in config.best_of_n.split(",")]
    elif name in ("ppo", "grpo", "rloo"):
        curve = [evaluator.start()]
        at = eval_steps(cfg.iterations, config.eval_points)

        def on_iteration(trainer, row):
            if row["iteration"] in at:
                curve.append(evaluator(trainer.policy, row["iteration"]))

        train = train_ppo if name == "ppo" else train_grpo
        train(reviews.POOL, prep.sft_dir, prep.reward_dir, method_dir, cfg, overwrite=True,
              show_progress=show_progress, on_iteration=on_iteration)
    else:
        curve = [evaluator.start()]
        pairs, rankings = preferences(out, config, prep)
        at = eval_steps(cfg.steps, config.eval_points)

        def on_step(model, row):
            if row["step"] in at:
                curve.append(evaluator(model, row["step"]))

        train = train_dpo if name == "dpo" else train_rrhf
        train(pairs if name == "dpo" else rankings, prep.sft_dir, method_dir, cfg, overwrite=True,
              show_progress=show_progress, on_step=on_step)
    result = {"curve": curve, "seconds": round(time.time() - t0, 1)}
    method_dir.mkdir(parents=True, exist_ok=True)
    save_json(method_dir / "curve.json", result)
    mark_done(method_dir, digest, result["seconds"], settings)
    return result


def preferences(out: Path, config: CompareConfig, prep: Prepared):
    """Pairs (best vs worst) and rankings (all k) from sft's samples ranked by the reward model, made once."""
    if prep.preferences is None:
        demo = config.stage("demo")
        draws = [reviews.POOL[i % len(reviews.POOL)] for i in range(config.preference_prompts)]
        prep.preferences = make_preferences(prep.sft, prep.rm, prep.tokenizer, draws, config.preference_k,
                                            demo.ppo.max_new_tokens, seed=config.seed + 7)
        pairs, rankings = prep.preferences
        save_json(out / "preferences.json", {"pairs": len(pairs), "rankings": len(rankings),
                                             "example_pair": asdict(pairs[0]) if pairs else None})
    return prep.preferences


# ---------------------------------------------------------------------------------------------- the run

def run_compare(out_dir="runs/compare", config: CompareConfig = CompareConfig(), show_progress: bool = True) -> dict:
    """Run every method (reusing what is cached); write compare.json, compare.md, frontier.png; return results."""
    out = Path(out_dir)
    check_out_dir(out, "compare run")
    t_start = time.time()
    prep = prepare(out, config.stage("demo"), show_progress)        # sft/ and reward/, as the demo makes them
    save_json(out / "compare_config.json", asdict(config))
    gold, gold_hash, t_gold = None, None, time.time()
    if config.with_gold:
        gold, gold_hash = prepare_gold(out, prep, config.stage("demo"), config.gold, show_progress)
    t_gold = time.time() - t_gold
    evaluator = Evaluator(prep, config.stage("demo"), config.eval_samples, gold=gold)
    results = {}
    for name in config.method_list():
        results[name] = run_method(name, out, config, prep, evaluator, prep.stages.hashes["reward"], show_progress,
                                   gold_hash)
    report = {"methods": results, "reward_model": prep.reward_model_accuracy,
              **({"gold": load_json(out / "gold" / "gold.json")} if gold is not None else {}),
              "seconds": {"reference_and_reward": round(sum(v for k, v in prep.seconds.items() if k != "data"), 1),
                          **({"gold": round(t_gold, 1)} if gold is not None else {}),
                          **{k: v["seconds"] for k, v in results.items()},
                          "this_invocation": round(time.time() - t_start, 1)},
              "config": asdict(config), "machine": machine(config.demo.device)}
    save_json(out / "compare.json", report)
    (out / "compare.md").write_text(table(results), encoding="utf-8")
    plot_frontier(results, out / "frontier.png")
    return report


def has_gold(results: dict) -> bool:
    return any("gold" in p for r in results.values() for p in r["curve"])


def table(results: dict) -> str:
    """Markdown: each method's last point (and sft, the start); the gold's mean ± standard error when scored."""
    first = next(iter(results.values()))["curve"][0] if results else None
    gold = has_gold(results)

    def g(p):
        return f" {p['gold']:.3f} ± {p['gold_se']:.3f} |" if gold else ""
    lines = ["| method | KL to sft (nats) | reward-model score |" + (" gold ± se |" if gold else "") +
             " judge positive rate | judge, response alone | distinct-2 | seconds |",
             "| --- | --- | --- |" + (" --- |" if gold else "") + " --- | --- | --- | --- |"]
    if first and first["x"] == 0:
        lines.append(f"| sft (start) | 0 | {first['reward']:+.3f} |{g(first)} {first['judge_positive_rate']:.3f} | "
                     f"{first['judge_positive_rate_response']:.3f} | {first['distinct_2']:.3f} | — |")
    for name, r in results.items():
        p = r["curve"][-1]
        label = f"best-of-{p['x']}" if name == "best_of_n" else name
        kl = f"≤ {p['kl']:.2f}" if name == "best_of_n" else f"{p['kl']:.2f}"
        lines.append(f"| {label} | {kl} | {p['reward']:+.3f} |{g(p)} {p['judge_positive_rate']:.3f} | "
                     f"{p['judge_positive_rate_response']:.3f} | {p['distinct_2']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_frontier(results: dict, path):
    """Reward-model score, judge positive rate and (when scored) the gold against KL to sft: one line per method,
    in training order; the gold with its standard error as a band."""
    panels = ["reward", "judge_positive_rate"] + (["gold"] if has_gold(results) else [])
    fig = figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels))
    for name, r in results.items():
        xs = [p["kl"] for p in r["curve"]]
        style = dict(marker="o", ms=4, lw=1.5, ls="--" if name == "best_of_n" else "-")
        label = "best-of-n (KL bound)" if name == "best_of_n" else name
        for ax, key in zip(axes, panels):
            line, = ax.plot(xs, [p[key] for p in r["curve"]], label=label, **style)
            if key == "gold":
                ax.fill_between(xs, [p["gold"] - p["gold_se"] for p in r["curve"]],
                                [p["gold"] + p["gold_se"] for p in r["curve"]], color=line.get_color(), alpha=0.15)
    titles = {"reward": "reward-model score (the proxy optimised)", "judge_positive_rate": "judge positive rate "
              "(snownlp)", "gold": "gold reward ± se (the ground truth, never trained against)"}
    for ax, title in zip(axes, (titles[k] for k in panels)):
        ax.set_xlabel("KL to the reference sft (nats per response)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, path, "One task, one reference, one reward model: the reward–KL frontier")


def print_compare(report: dict, out) -> None:
    print_header(report, out, "compare", report["config"]["demo"]["quick"])
    print(table(report["methods"]))
    print(f"frontier: {Path(out) / 'frontier.png'}")
