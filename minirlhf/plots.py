"""Plots of metrics.jsonl with matplotlib, drawn on a bare `Figure` (no pyplot, no global backend
switch), so it works headless and in CI and leaves a notebook's own `plt.show()` alone.

matplotlib is imported on the first plot, not with this module: it costs about a second, which every
`minirlhf` command (and every rejected bad input) would otherwise pay before doing anything.
"""
from __future__ import annotations

from pathlib import Path


def figure(**kwargs):
    """A bare matplotlib `Figure(**kwargs)` (no pyplot): what every plot here, and every recipe's, draws on."""
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def plot_metrics(rows: list[dict], keys: list[str], path, x_key: str = "step", title: str = ""):
    """One small panel per metric key (rows that lack a key are skipped); saves a PNG at `path`."""
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig = figure(figsize=(4.2 * cols, 3 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r[x_key], r[key]) for r in rows if key in r and x_key in r and r[key] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return save_figure(fig, path, title)


def save_figure(fig, path, title: str = "") -> Path:
    """Title, tight layout, and a PNG at `path` (its folder made if needed)."""
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()) if title else None)  # room for the title
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return Path(path)


# Every plots/ folder is drawn from this one table, by plot_run: a trainer's (Run.finish), `minirlhf plot --run
# DIR`'s and the demo's, so a figure has the same name wherever it is found. A figure is drawn when the run
# logged its first metric; every other numeric metric of the run goes into OTHER.
FIGURES = {
    "lm_loss.png": ("language model: next-token loss", ["train/loss", "val/loss", "train/lr", "train/grad_norm"]),
    "reward_model.png": ("reward model: loss and accuracy", ["reward/loss", "val/loss", "reward/accuracy",
                                                            "val/accuracy", "reward/margin_mean", "reward/score_std"]),
    "rlhf.png": ("online RL: reward, KL", ["env/reward_mean", "objective/kl", "eval/judge_positive_rate",
                                            "objective/entropy", "eval/distinct_2", "objective/kl_coef",
                                            "tokens/response_len"]),
    "ppo_losses.png": ("PPO: losses and diagnostics", ["ppo/policy_loss", "ppo/value_loss", "ppo/approx_kl",
                                                       "ppo/clipfrac", "ppo/vf_clipfrac", "ppo/explained_variance"]),
}
OTHER = "other.png"
ONLY_IF_IT_MOVES = {"objective/kl_coef"}  # β is a flat line unless adaptive_kl: its panel would be wasted


def rlhf_title(logged: set[str]) -> str:
    """rlhf.png's title names the method that logged the run and says what its eval/ panels are."""
    method = next((m.upper() for m in ("ppo", "grpo", "rloo") if any(k.startswith(m + "/") for k in logged)),
                  "online RL")
    judged = "eval/judge_positive_rate" in logged
    return f"{method}: reward, KL" + (", judge (eval/*: the judge curve's own, smaller sample)" if judged else "")


def figures_for(rows: list[dict], x_key: str) -> dict[str, tuple[str, list[str]]]:
    """{file name: (title, keys)} of the figures a run's metrics rows get (the FIGURES rule above)."""
    logged = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    moves = lambda k: len({r[k] for r in rows if k in r}) > 1  # noqa: E731
    out, used = {}, {x_key}
    for name, (title, keys) in FIGURES.items():
        if keys[0] in logged:
            keys = [k for k in keys if k in logged and (k not in ONLY_IF_IT_MOVES or moves(k))]
            out[name] = (rlhf_title(logged) if name == "rlhf.png" else title, keys)
            used |= set(keys)
    rest = sorted(k for k in logged - used if k not in ONLY_IF_IT_MOVES or moves(k))
    if rest:
        out[OTHER] = ("other metrics", rest)
    return out


def plot_run(run_dir, rows: list[dict] | None = None) -> list[Path]:
    """Draw a run directory's metrics.jsonl (or `rows`) into run_dir/plots/, named by FIGURES."""
    from .tracking import read_metrics
    run_dir = Path(run_dir)
    rows = rows if rows is not None else read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        return []
    x_key = "iteration" if "iteration" in rows[0] else "step"
    out = []
    for name, (title, keys) in figures_for(rows, x_key).items():
        p = plot_metrics(rows, keys, run_dir / "plots" / name, x_key, title=title)
        if p:
            out.append(p)
    return out
