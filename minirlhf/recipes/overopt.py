"""Reward over-optimisation (Gao et al. 2022, "Scaling laws for reward model overoptimization"), on the flagship.

    the demo's sft/ and reward/ ──PPO with a small KL coefficient, for long──▶ policy/
    every eval_every iterations: the reward model's score (the PROXY, what PPO climbs) and snownlp's judge
    (the stand-in for the GOLD reward, never seen in training), against d = √KL to sft
    ──▶ overopt.png, overopt.json

Gao et al. found that, measured against d = √KL(π ‖ π_init), the gold reward of RL follows
R(d) = d (α − β log d): it rises, peaks, and falls while the proxy keeps rising. The recipe fits that form to
both curves (least squares on R/d = α − β log d, linear in α and β) and draws the fits beside the points.

CPU: `minirlhf overopt` (the README gives the measured minutes); `--quick` toy size. GPU: `--device cuda`.
Honest limits: our "gold" is a Naive Bayes classifier trained on the same corpus as the proxy, so it shares the
proxy's blind spots; a judge that never turns is a finding too (the README says what this run showed).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..checkpoint import save_json
from ..config import validate
from ..plots import figure, save_figure
from ..ppo import train_ppo
from ..runtime import machine
from . import reviews
from .demo_config import DemoConfig, quick_config
from .demo_report import print_header
from .evaluator import Evaluator, eval_steps
from .shared_stages import check_out_dir, prepare
from .stages import StagedConfig


def _demo() -> DemoConfig:
    d = DemoConfig()
    return replace(d, ppo=replace(d.ppo, iterations=240, kl_coef=0.02))


@dataclass
class OveroptConfig(StagedConfig):
    seed: int = 0
    """Seed of every stage."""
    device: str = "cpu"
    """cpu or cuda, for every stage."""
    demo: DemoConfig = field(default_factory=_demo)
    """The demo's stages (--demo.<key>); its PPO runs long (240 iterations) with a small β (ppo.kl_coef=0.02)."""
    eval_every: int = 10
    """PPO iterations between evaluations (and a few log-spaced ones at the start, where KL moves fastest)."""
    eval_samples: int = 16
    """Samples per pool prompt at each evaluation."""

    def __post_init__(self):
        validate(self, positive=("eval_every", "eval_samples"))


def quick_overopt_config() -> OveroptConfig:
    q = quick_config()
    return OveroptConfig(demo=replace(q, ppo=replace(q.ppo, iterations=6, kl_coef=0.02)), eval_every=2,
                         eval_samples=2)


def fit_gao(d: list[float], r: list[float]) -> tuple[float, float] | None:
    """Least-squares (α, β) of R(d) = d (α − β log d) through the points with d > 0 (Gao et al. 2022's RL form):
    R/d = α − β log d is linear in (α, β). None when fewer than two points have d > 0."""
    pts = [(math.log(x), y / x) for x, y in zip(d, r) if x > 1e-6]
    if len(pts) < 2:
        return None
    A = torch.tensor([[1.0, -lx] for lx, _ in pts], dtype=torch.float64)
    b = torch.tensor([y for _, y in pts], dtype=torch.float64)
    alpha, beta = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1).tolist()
    return alpha, beta


def run_overoptimization(out_dir="runs/overopt", config: OveroptConfig = OveroptConfig(),
                         show_progress: bool = True) -> dict:
    """The long, weakly regularised PPO run; its curve against √KL, the fits, overopt.png and overopt.json."""
    out = Path(out_dir)
    check_out_dir(out, "run directory")
    t0 = time.time()
    demo = config.stage("demo")
    prep = prepare(out, demo, show_progress)
    evaluator = Evaluator(prep, demo, config.eval_samples)
    curve = [evaluator.start()]

    total = demo.ppo.iterations
    at = eval_steps(total, 5) | set(range(config.eval_every, total + 1, config.eval_every))  # + the first few

    def on_iteration(trainer, row):
        if row["iteration"] in at:
            curve.append(evaluator(trainer.policy, row["iteration"]))

    trainer = train_ppo(reviews.POOL, prep.sft_dir, prep.reward_dir, out / "policy", demo.stage("ppo"),
                        overwrite=True, show_progress=show_progress, on_iteration=on_iteration)
    samples = {}  # what the over-optimised policy writes, and what both judges make of it
    for name, policy in (("start", prep.sft), ("end", trainer.policy)):
        _, s, judged = evaluator.samples(policy, 2)
        samples[name] = [{"prompt": p, "response": r, "reward": round(x, 3), "judge": round(j, 3)}
                         for p, r, x, j in zip(s.prompts, s.responses, s.rewards, judged)]
    for p in curve:
        p["sqrt_kl"] = round(math.sqrt(max(0.0, p["kl"])), 4)  # max(0.0, -0.0) is 0.0; max(-0.0, 0.0) is -0.0
    d = [p["sqrt_kl"] for p in curve]
    fits = {name: fit_gao(d, [p[key] - curve[0][key] for p in curve])
            for name, key in (("proxy", "reward"), ("gold", "judge_positive_rate"))}
    report = {"curve": curve, "fits": {k: (None if v is None else {"alpha": v[0], "beta": v[1]}) for k, v in fits.items()},
              "samples": samples, "seconds": round(time.time() - t0, 1), "config": asdict(config),
              "machine": machine(config.demo.device)}
    save_json(out / "overopt.json", report)
    plot_overoptimization(curve, fits, out / "overopt.png")
    return report


def plot_overoptimization(curve: list[dict], fits: dict, path):
    """Proxy reward and gold (judge) rate against √KL, with Gao et al.'s fitted R(d) = d(α − β log d), and
    distinct-2: the diversity neither of them reads."""
    fig = figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    d = [p["sqrt_kl"] for p in curve]
    grid = [max(d) * i / 100 for i in range(1, 101)] if max(d) > 0 else []
    for ax, (name, key, title) in zip(axes, (("proxy", "reward", "proxy: reward-model score (optimised)"),
                                             ("gold", "judge_positive_rate", "gold stand-in: judge positive rate"),
                                             (None, "distinct_2", "distinct-2 of the responses"))):
        ax.plot(d, [p[key] for p in curve], "o-", ms=4, label="PPO, evaluated along training")
        if fits.get(name) is not None and grid:
            a, b = fits[name]
            ax.plot(grid, [curve[0][key] + x * (a - b * math.log(x)) for x in grid], "--",
                    label=f"fit d(α − β log d): α={a:.2f}, β={b:.2f}")
        ax.set_xlabel("√KL to the reference  (d, √nats)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, "Over-optimisation: the proxy climbs; does the gold?")


def print_overoptimization(report: dict, out) -> None:
    print_header(report, out, "overopt", report["config"]["demo"]["quick"])
    print(f"{'iteration':>9}  {'√KL':>5}  {'proxy reward':>12}  {'judge rate':>10}  {'distinct-2':>10}")
    for p in report["curve"]:
        print(f"{p['x']:>9}  {p['sqrt_kl']:>5.2f}  {p['reward']:>+12.3f}  {p['judge_positive_rate']:>10.3f}  "
              f"{p['distinct_2']:>10.3f}")
    for when in ("start", "end"):
        print(f"{when}: " + " / ".join(x["prompt"] + x["response"] for x in report["samples"][when][::2][:4]))
    print(f"figure: {Path(out) / 'overopt.png'}")
