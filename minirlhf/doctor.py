"""`minirlhf doctor --run DIR`: the health checks of diagnostics.py replayed over a run's metrics.jsonl.

    DIR/metrics.jsonl (+ DIR/train_config.json)          one trainer's run (ppo, grpo, rloo, dpo, rrhf, sft, ...)
    DIR/demo.json and DIR/<stage>/metrics.jsonl           a recipe's run (demo, compare, overopt): every stage,
                                                          nested ones too (overopt's gold/lm/, ppo/n500/)

For each run: what looked healthy (each rule's value nearest its threshold), what fired, at which iteration or
step, the likely cause and what to try; and DIR/doctor.png, the panels of the metrics that the fired rules read
(or, on a healthy run, the main ones). The rules and thresholds are the ones the run watched itself with (its
train_config.json's `diagnostics`), so the report says what the live run said; a run still going is read as far
as it has logged.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

from .checkpoint import load_json
from .diagnostics import RULES, DiagnosticsConfig, Finding, Watch, prefix_of
from .errors import InputError
from .tracking import read_metrics

STAGE_ORDER = ("pretrain", "sft", "reward", "gold", "proxies", "policy", "ppo", "grpo", "rloo", "dpo", "rrhf")
HEALTHY_PANELS = ("env/reward_mean", "objective/kl", "objective/entropy", "tokens/response_len")


@dataclass
class Diagnosis:
    name: str               # the stage, or the run directory's own name
    metrics: Path
    rows: list
    watch: Watch

    @property
    def step_key(self) -> str:
        return "iteration" if self.rows and "iteration" in self.rows[0] else "step"

    @property
    def findings(self) -> list[Finding]:
        return list(self.watch.fired.values())


def run_dirs(run) -> list[tuple[str, Path]]:
    """(name, directory) of every run to diagnose under `run`: itself, or a recipe's stages in pipeline order,
    found at any depth (overopt's gold/lm/, proxies/n500/, ppo/n500/), each named by its path under `run`. A
    demo's own metrics.jsonl (PPO's rows with the judge curve) stands for its policy/."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"{run}: not a directory")
    recipe = (run / "demo.json").is_file()
    if (run / "metrics.jsonl").is_file() and not recipe:
        return [(run.name or str(run), run)]
    found = [(m.parent.relative_to(run).as_posix(), m.parent) for m in run.rglob("metrics.jsonl")
             if m.parent != run and len(m.parent.relative_to(run).parts) <= 3]

    def order(item):  # pipeline order, then natural order (n500 before n2000)
        top = item[0].split("/")[0]
        return (STAGE_ORDER.index(top) if top in STAGE_ORDER else len(STAGE_ORDER),
                [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", item[0])])

    found.sort(key=order)
    if recipe and (run / "metrics.jsonl").is_file():
        found = [(n, d) for n, d in found if n != "policy"]
        found.insert(sum(n in STAGE_ORDER[:3] for n, _ in found), ("policy", run))
    if not found:
        raise InputError(f"{run}: no metrics.jsonl here or in its stage directories; is it a minirlhf run?")
    return found


def settings_of(directory: Path) -> tuple[DiagnosticsConfig, dict]:
    """The thresholds and the context (reward_normalised) the run recorded in its train_config.json (a demo
    directory: its policy/'s); the defaults where it recorded none."""
    for path in (directory / "train_config.json", directory / "policy" / "train_config.json"):
        if path.is_file():
            record = load_json(path)
            given = record.get("diagnostics") or {}
            names = {f.name for f in fields(DiagnosticsConfig)}
            return (DiagnosticsConfig(**{k: v for k, v in given.items() if k in names}),
                    {"reward_normalised": bool(record.get("reward_normalised", False))})
    return DiagnosticsConfig(), {}


def diagnose(name: str, directory: Path) -> Diagnosis:
    rows = [r for r in read_metrics(directory / "metrics.jsonl") if isinstance(r, dict)]
    config, context = settings_of(directory)
    watch = Watch(config, context)
    for row in rows:
        watch.observe(row)
    return Diagnosis(name, directory / "metrics.jsonl", rows, watch)


def doctor(run) -> list[Diagnosis]:
    """Diagnose every run under `run` and draw DIR/doctor.png; -> the diagnoses (print_report prints them)."""
    diagnoses = [diagnose(n, d) for n, d in run_dirs(run)]
    plot_diagnoses(diagnoses, Path(run) / "doctor.png")
    return diagnoses


def describe(d: Diagnosis) -> str:
    p = prefix_of(d.rows) or "run"
    n = len([r for r in d.rows if d.step_key in r])
    return f"{d.name} ({p}, {n} {d.step_key}s logged, {d.metrics})"


def report_lines(d: Diagnosis) -> list[str]:
    c = d.watch.config
    lines = [describe(d)]
    fired = d.findings
    healthy = [r for r in RULES if r.name in d.watch.worst and r.name not in d.watch.fired]
    if healthy:
        lines.append("  healthy: " + "; ".join(f"{r.name} {d.watch.worst[r.name]:.3g} "
                                                f"({'<' if r.above else '>'} {r.limit(c):g})" for r in healthy))
    if not fired:
        lines.append("  nothing fired")
    for f in sorted(fired, key=lambda f: f.step):
        lines.append(f"  FIRED at {d.step_key} {f.step}: {f.rule.name}: {f.rule.what} is {f.value:.3g} "
                     f"(threshold {f.threshold:g})")
        lines.append(f"    likely: {f.rule.cause}")
        lines.append(f"    try: {f.rule.fix}")
    return lines


def print_report(diagnoses: list[Diagnosis], run) -> None:
    print(f"minirlhf doctor: {run}")
    for d in diagnoses:
        print("\n".join(report_lines(d)))
    n = sum(len(d.findings) for d in diagnoses)
    print(f"verdict: {'healthy' if n == 0 else f'{n} health check(s) fired'}; figure: {Path(run) / 'doctor.png'}")


def panels(d: Diagnosis) -> list[tuple[str, list[int]]]:
    """(metric, the steps at which a rule reading it fired) for the figure: the metrics the fired rules read, or
    on a healthy run the main ones that it logged."""
    logged = {k for r in d.rows for k in r}
    out: dict[str, list[int]] = {}
    for f in d.findings:
        for key in f.rule.reads.replace(" (grpo/, rloo/)", "").split(", "):
            key = key.split(" ")[0].replace("<trainer>", prefix_of(d.rows) or "")
            key = key if key in logged else f"{prefix_of(d.rows)}/{key.split('/', 1)[-1]}"
            if key in logged:
                out.setdefault(key, []).append(f.step)
    if not out:
        p = prefix_of(d.rows)
        for key in (*HEALTHY_PANELS, f"{p}/loss", "val/loss"):
            if key in logged:
                out[key] = []
    return list(out.items())


def plot_diagnoses(diagnoses: list[Diagnosis], path) -> Path | None:
    """One row of panels per diagnosed run; a dashed line where a rule fired."""
    from .plots import figure, save_figure
    grid = [(d, panels(d)) for d in diagnoses]
    grid = [(d, ps) for d, ps in grid if ps]
    if not grid:
        return None
    cols = max(len(ps) for _, ps in grid)
    fig = figure(figsize=(3.6 * cols, 2.8 * len(grid)))
    axes = fig.subplots(len(grid), cols, squeeze=False)
    for row_axes, (d, ps) in zip(axes, grid):
        for ax, (key, steps) in zip(row_axes, ps):
            pts = [(r[d.step_key], r[key]) for r in d.rows if isinstance(r.get(key), (int, float))
                   and d.step_key in r]
            ax.plot([x for x, _ in pts], [y for _, y in pts], color="tab:red" if steps else "tab:blue",
                    marker="o" if len(pts) < 20 else None, ms=3)            # a lone val/loss point shows
            for s in steps:
                ax.axvline(s, ls="--", color="tab:red", alpha=0.6)
            ax.set_title(f"{d.name}: {key}", fontsize=9)
            ax.set_xlabel(d.step_key, fontsize=8)
            ax.grid(alpha=0.3)
        for ax in row_axes[len(ps):]:
            ax.axis("off")
    fired = sum(len(d.findings) for d in diagnoses)
    return save_figure(fig, path, "minirlhf doctor: " + ("healthy" if not fired else f"{fired} check(s) fired "
                                                                                   "(dashed: where)"))


def as_json(diagnoses: list[Diagnosis]) -> str:
    """The report as JSON (for scripts and notebooks)."""
    return json.dumps([{"name": d.name, "fired": [{"step": f.step, **f.record()} for f in d.findings],
                        "worst": d.watch.worst} for d in diagnoses], ensure_ascii=False, indent=1)
