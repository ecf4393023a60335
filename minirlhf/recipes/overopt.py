"""Reward over-optimisation measured against a known gold (Gao et al. 2022, "Scaling Laws for Reward Model
Overoptimization"), on the flagship at laptop size.

    the demo's stages ──▶ gold/ (gold.GoldReward, never trained against) ──▶ proxies/n<N>/ for each N
    for each proxy:  best-of-n, n = 1 … 256, on one pool of sft's samples (no training; KL = log n − (n−1)/n)
                     PPO with a small KL coefficient, evaluated at log-spaced iterations
    at every point: the gold (mean ± standard error), the proxy, snownlp's judge, repetition, distinct-2,
    against d = √KL to sft ──▶ Gao et al.'s fits ──▶ overopt.png, overopt.json

Gao et al. found, against d = √KL(π ‖ π_init): best-of-n's gold follows R(d) = d(α − βd) and RL's
R(d) = d(α − β log d) — both rise, peak and fall while the proxy keeps rising — and that a proxy trained on
more comparisons peaks later and higher. Best-of-n is measured without sampling n afresh for every n: from
one pool of M samples a prompt, scaling_laws.best_of_n_expectation gives the exact expectation over all
n-subsets of the pool (their unbiased estimator).

CPU: `minirlhf overopt` (the README gives the measured minutes); `--quick` toy size. GPU: `--device cuda`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..checkpoint import load_json, save_json
from ..config import validate
from ..errors import InputError
from ..evaluation import best_of_n_kl_bound
from ..plots import figure, save_figure
from ..ppo import PPOConfig, train_ppo
from ..rollout import score
from ..runtime import machine
from ..sampling import sample_batches
from ..scaling_laws import best_of_n_expectation, fit_gao, gao_bon, gao_peak, gao_rl
from . import reviews
from .demo_config import DemoConfig, quick_config
from .demo_report import print_header
from .evaluator import Evaluator, eval_steps, gold_stats
from .sandbox import (GoldConfig, ProxyConfig, prepare_gold, prepare_proxies, proxy_accuracy, quick_gold_config,
                      quick_proxy_config)
from .shared_stages import prepare
from .stages import StagedConfig, check_out_dir, mark_done, stage_digest, stage_record


def _ppo() -> PPOConfig:
    return PPOConfig(iterations=100, batch_size=64, max_new_tokens=24, lr=2e-4, kl_coef=0.02)


@dataclass
class OveroptConfig(StagedConfig):
    seed: int = 0
    """Seed of every stage."""
    device: str = "cpu"
    """cpu or cuda, for every stage."""
    demo: DemoConfig = field(default_factory=DemoConfig)
    """The demo's stages (--demo.<key>): its sft/ is the reference policy every method starts from."""
    gold: GoldConfig = field(default_factory=GoldConfig)
    """The gold reward (--gold.<key>; sandbox.GoldConfig)."""
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    """The proxies, one per number of gold-labelled comparisons (--proxy.<key>; sandbox.ProxyConfig)."""
    ppo: PPOConfig = field(default_factory=_ppo)
    """PPO against each proxy (--ppo.<key>): 100 iterations at β = 0.02, weak enough to over-optimise."""
    best_of_n: str = "1,2,4,8,16,32,64,128,256"
    """The n of best-of-n, comma-separated."""
    pool: int = 512
    """Samples of sft per pool prompt that best-of-n chooses from (at least the largest n)."""
    eval_points: int = 10
    """Evaluations along each PPO run, log-spaced (KL moves fastest early), and sft's at KL 0."""
    eval_samples: int = 16
    """Samples per pool prompt at each PPO evaluation."""

    def __post_init__(self):
        validate(self, positive=("pool", "eval_points", "eval_samples"))
        try:
            ns = [int(n) for n in self.best_of_n.split(",")]
        except ValueError:
            raise InputError(f"--best_of_n must be comma-separated integers, got {self.best_of_n!r}") from None
        if not ns or min(ns) < 1 or max(ns) > self.pool:
            raise InputError(f"--best_of_n values must be in 1 … --pool={self.pool}, got {self.best_of_n!r}")
        if self.ppo.max_new_tokens != self.demo.ppo.max_new_tokens:
            raise InputError(f"--ppo.max_new_tokens={self.ppo.max_new_tokens} must equal --demo.ppo.max_new_tokens="
                             f"{self.demo.ppo.max_new_tokens}: the proxies are normalised on samples that long")

    def n_list(self) -> list[int]:
        return [int(n) for n in self.best_of_n.split(",")]


def quick_overopt_config() -> OveroptConfig:
    """`--quick`: toy sizes, the same pipeline (what the tests run)."""
    q = quick_config()
    return OveroptConfig(demo=q, gold=quick_gold_config(), proxy=quick_proxy_config(),
                         ppo=replace(_ppo(), iterations=4, batch_size=16, max_new_tokens=q.ppo.max_new_tokens),
                         best_of_n="1,2,4,8", pool=8, eval_points=3, eval_samples=2)


# ---------------------------------------------------------------------------------------------- best-of-n

@torch.no_grad()
def best_of_n_curves(prep, demo: DemoConfig, gold, proxies: dict, config: OveroptConfig) -> dict:
    """For each proxy: best-of-n's expected gold, proxy, judge rate and repetition for every n, from one pool of
    sft's samples a prompt (shared by all proxies), with the gold's bootstrap standard error over the pool."""
    from .reviews import judge_positive
    pool: dict[str, list[str]] = {}
    batches = []   # the sampled token sequences, scored by each proxy as a rollout is (no EOS when cut)
    for chunk, g in sample_batches(prep.sft, prep.tokenizer, reviews.POOL, config.pool, demo.ppo.max_new_tokens,
                                   seed=Evaluator.SEED + 1, batch_size=512):
        batches.append((chunk, g))
        for p, r in zip(chunk, prep.tokenizer.decode_batch(g.responses.tolist())):
            pool.setdefault(p, []).append(r)
    values = {}
    for p, rs in pool.items():
        parts = gold.parts([p] * len(rs), rs)
        values[p] = {"gold": torch.tensor(parts["gold"]), "repetition": torch.tensor(parts["repetition"]),
                     "judge_positive_rate": (torch.tensor(judge_positive([p + r for r in rs])) > 0.5).float()}
    curves = {}
    for n_pairs, proxy in proxies.items():
        scores: dict[str, list[float]] = {}
        for chunk, g in batches:
            for p, x in zip(chunk, score(proxy, g.sequences, g.attention_mask, g.response_mask.float()).tolist()):
                scores.setdefault(p, []).append(x)
        scores = {p: torch.tensor(xs) for p, xs in scores.items()}
        curve = []
        for n in config.n_list():
            pt = {"x": n, "kl": round(best_of_n_kl_bound(n), 4)}
            for key in ("gold", "repetition", "judge_positive_rate"):
                pt[key] = round(mean(best_of_n_expectation(scores[p], values[p][key], n) for p in pool), 4)
            pt["reward"] = round(mean(best_of_n_expectation(scores[p], scores[p], n) for p in pool), 4)
            pt["gold_se"] = round(bootstrap_se(scores, {p: v["gold"] for p, v in values.items()}, n, config.seed), 4)
            curve.append(pt)
        curves[n_pairs] = curve
    return curves


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def bootstrap_se(scores: dict, values: dict, n: int, seed: int, draws: int = 30) -> float:
    """Standard error of the pool-averaged best-of-n expectation: its spread over pools resampled with
    replacement (each prompt's samples on their own)."""
    g = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(draws):
        per_prompt = []
        for p in scores:
            idx = torch.randint(len(scores[p]), (len(scores[p]),), generator=g)
            per_prompt.append(best_of_n_expectation(scores[p][idx], values[p][idx], n))
        estimates.append(mean(per_prompt))
    return torch.tensor(estimates, dtype=torch.float64).std().item()


# ---------------------------------------------------------------------------------------------- RL

def rl_curve(out: Path, prep, config: OveroptConfig, n_pairs: int, evaluator: Evaluator, upstream: str,
             show_progress: bool) -> dict:
    """PPO against proxy n<N> (or its cached curve, when nothing changed): evaluated at log-spaced iterations."""
    run_dir = out / "ppo" / f"n{n_pairs}"
    cfg = replace(config.ppo, seed=config.seed, device=config.device)
    settings = {"ppo": stage_record(cfg), "eval": [config.eval_points, config.eval_samples]}
    digest = stage_digest(upstream, settings)
    if not prep.stages.must_run(run_dir, digest, settings):
        return load_json(run_dir / "curve.json")
    t0 = time.time()
    curve = [evaluator.start()]
    at = eval_steps(cfg.iterations, config.eval_points)

    def on_iteration(trainer, row):
        if row["iteration"] in at:
            curve.append(evaluator(trainer.policy, row["iteration"]))

    trainer = train_ppo(reviews.POOL, prep.sft_dir, out / "proxies" / f"n{n_pairs}", run_dir, cfg, overwrite=True,
                        show_progress=show_progress, on_iteration=on_iteration)
    _, s, _ = evaluator.samples(trainer.policy, 2)
    last = [{"prompt": p, "response": r, "proxy": round(x, 3)} for p, r, x in zip(s.prompts, s.responses, s.rewards)]
    result = {"curve": curve, "samples": last, "seconds": round(time.time() - t0, 1)}
    save_json(run_dir / "curve.json", result)
    mark_done(run_dir, digest, result["seconds"], settings)
    return result


# ---------------------------------------------------------------------------------------------- the run

def with_sqrt_kl(curve: list[dict]) -> list[dict]:
    for p in curve:
        p["sqrt_kl"] = round(math.sqrt(max(0.0, p["kl"])), 4)  # max(0.0, -0.0) is 0.0; max(-0.0, 0.0) is -0.0
    return curve


def fits(curve: list[dict], form: str) -> dict:
    """Gao et al.'s form fitted to the gold's and the proxy's gain over the curve's start, with each one's peak."""
    d = [p["sqrt_kl"] for p in curve]
    out = {}
    for key in ("gold", "reward"):
        ab = fit_gao(d, [p[key] - curve[0][key] for p in curve], form)
        out["proxy" if key == "reward" else key] = None if ab is None else {
            "alpha": ab[0], "beta": ab[1], "peak_sqrt_kl": gao_peak(ab[0], ab[1], form)}
    return out


def turn(curve: list[dict]) -> dict:
    """Where the measured gold peaked, and how far it fell by the end, in the points' standard errors."""
    best = max(curve, key=lambda p: p["gold"])
    last = curve[-1]
    se = math.sqrt(best["gold_se"] ** 2 + last["gold_se"] ** 2)
    drop = best["gold"] - last["gold"]
    return {"peak_x": best["x"], "peak_sqrt_kl": best["sqrt_kl"], "peak_gold": best["gold"],
            "peak_gold_se": best["gold_se"], "final_gold": last["gold"], "final_gold_se": last["gold_se"],
            "drop": round(drop, 4), "drop_in_se": round(drop / se, 1) if se > 0 else None,
            "proxy_at_peak": best["reward"], "final_proxy": last["reward"]}


def run_overoptimization(out_dir="runs/overopt", config: OveroptConfig = OveroptConfig(),
                         show_progress: bool = True) -> dict:
    """The gold, the proxies, best-of-n and PPO against each proxy; overopt.json and overopt.png."""
    out = Path(out_dir)
    check_out_dir(out, "run directory")
    t0 = time.time()
    demo = config.stage("demo")
    prep = prepare(out, demo, show_progress)
    gold, gold_hash = prepare_gold(out, prep, demo, config.gold, show_progress)
    proxies = prepare_proxies(out, prep, demo, gold, gold_hash, config.proxy, show_progress)
    seconds = {"stages": round(time.time() - t0, 1)}
    t1 = time.time()
    bon = best_of_n_curves(prep, demo, gold, proxies, config)
    seconds["best_of_n"] = round(time.time() - t1, 1)
    rl, upstream = {}, stage_digest(gold_hash, {"overopt": "ppo against each proxy"})
    for n_pairs, proxy in proxies.items():
        evaluator = Evaluator(prep, demo, config.eval_samples, reward=proxy, gold=gold)
        rl[n_pairs] = rl_curve(out, prep, config, n_pairs, evaluator,
                               stage_digest(upstream, {"proxy": load_json(out / "proxies" / f"n{n_pairs}" /
                                                                          "stage.json")["hash"]}), show_progress)
        seconds[f"ppo_n{n_pairs}"] = rl[n_pairs]["seconds"]
    proxies_report = {}
    for n_pairs in proxies:
        b, r = with_sqrt_kl(bon[n_pairs]), with_sqrt_kl(rl[n_pairs]["curve"])
        proxies_report[str(n_pairs)] = {
            "gold_agreement": proxy_accuracy(out, n_pairs), "best_of_n": b, "rl": r,
            "fits": {"best_of_n": fits(b, "bon"), "rl": fits(r, "rl")},
            "turn": {"best_of_n": turn(b), "rl": turn(r)}, "rl_samples": rl[n_pairs]["samples"]}
    _, start, _ = Evaluator(prep, demo, 2, gold=gold).samples(prep.sft, 2)
    report = {"gold": {**load_json(out / "gold" / "gold.json"),
                       "real_review_accuracy": load_json(out / "gold" / "test_accuracy.json")},
              "proxies": proxies_report,
              "start_samples": [{"prompt": p, "response": r} for p, r in zip(start.prompts, start.responses)],
              "start_gold": gold_stats(gold, start.prompts, start.responses),
              "seconds": {**seconds, "this_invocation": round(time.time() - t0, 1)}, "config": asdict(config),
              "machine": machine(config.demo.device)}
    save_json(out / "overopt.json", report)
    plot_overoptimization(proxies_report, out / "overopt.png")
    return report


def plot_overoptimization(proxies: dict, path):
    """Rows: the gold, the proxy; columns: best-of-n, PPO. One colour per proxy size N, the measured points with
    the gold's standard error, and Gao et al.'s fitted form (dotted) of each."""
    fig = figure(figsize=(12, 8))
    axes = fig.subplots(2, 2)
    for i, (n_pairs, r) in enumerate(proxies.items()):
        color = f"C{i}"
        for col, (method, form, fn) in enumerate((("best_of_n", "bon", gao_bon), ("rl", "rl", gao_rl))):
            curve = r[method]
            d = [p["sqrt_kl"] for p in curve]
            grid = [max(d) * k / 100 for k in range(1, 101)] if max(d) > 0 else []
            for row, key, fit_key in ((0, "gold", "gold"), (1, "reward", "proxy")):
                ax = axes[row][col]
                ys = [p[key] for p in curve]
                if key == "gold":
                    ax.errorbar(d, ys, yerr=[p["gold_se"] for p in curve], fmt="o-", ms=3, color=color,
                                capsize=2, label=f"N = {n_pairs} comparisons")
                else:
                    ax.plot(d, ys, "o-", ms=3, color=color, label=f"N = {n_pairs}")
                f = r["fits"][method][fit_key]
                if f is not None and grid:
                    ax.plot(grid, [curve[0][key] + fn(x, f["alpha"], f["beta"]) for x in grid], ":", color=color)
    titles = (("gold, best-of-n (n = 1 … 256)", "gold, PPO against the proxy"),
              ("proxy, best-of-n", "proxy (what PPO climbs)"))
    for row in range(2):
        for col in range(2):
            ax = axes[row][col]
            ax.set_title(titles[row][col], fontsize=10)
            ax.set_xlabel("d = √KL to the reference (√nats)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel("gold reward (0 … 1)")
    axes[1][0].set_ylabel("proxy score (normalised on sft's samples)")
    return save_figure(fig, path, "Over-optimisation against a known gold: the proxy climbs, the gold turns "
                                  "(dotted: Gao et al.'s fits)")


def print_overoptimization(report: dict, out) -> None:
    print_header(report, out, "overopt", report["config"]["demo"]["quick"])
    g = report["gold"]
    print(f"gold: τ = {g['tau']:.3f}, ρ = {g['rho']}; its sentiment model ranks {g['real_review_accuracy']['test_accuracy']:.3f} "
          f"of held-out real review pairs right; sft's gold {report['start_gold'].get('gold', float('nan')):.3f}")
    print(f"{'N':>6}  {'agree':>5}  {'method':<9}  {'peak √KL':>8}  {'peak gold':>14}  {'final gold':>14}  "
          f"{'drop/se':>7}  {'final proxy':>11}")
    for n_pairs, r in report["proxies"].items():
        for method in ("best_of_n", "rl"):
            t = r["turn"][method]
            drop = "—" if t["drop_in_se"] is None else f"{t['drop_in_se']:.1f}"
            print(f"{n_pairs:>6}  {r['gold_agreement']['agreement_with_gold']:>5.2f}  {method:<9}  "
                  f"{t['peak_sqrt_kl']:>8.2f}  {t['peak_gold']:>7.3f} ±{t['peak_gold_se']:.3f}  "
                  f"{t['final_gold']:>7.3f} ±{t['final_gold_se']:.3f}  {drop:>7}  {t['final_proxy']:>+11.3f}")
    last = next(reversed(report["proxies"].values()))["rl_samples"]
    print("sft: " + " / ".join(x["prompt"] + x["response"] for x in report["start_samples"][::2][:4]))
    print("PPO's last (largest N): " + " / ".join(x["prompt"] + x["response"] for x in last[::2][:4]))
    print(f"figure: {Path(out) / 'overopt.png'}")
