"""Plots of metrics.jsonl with matplotlib, drawn on a bare `Figure` (no pyplot, no global backend
switch), so it works headless and in CI and leaves a notebook's own `plt.show()` alone.

matplotlib is imported on the first plot, not with this module: it costs about a second, which every
`minirlhf` command (and every rejected bad input) would otherwise pay before doing anything.
"""
from __future__ import annotations

from pathlib import Path


def _figure(**kwargs):
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def plot_metrics(rows: list[dict], keys: list[str], path, x_key: str = "step", title: str = ""):
    """One small panel per metric key (rows that lack a key are skipped); saves a PNG at `path`."""
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig = _figure(figsize=(4.2 * cols, 3 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r[x_key], r[key]) for r in rows if key in r and x_key in r and r[key] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_run(run_dir, rows: list[dict] | None = None) -> list[Path]:
    """Plot every numeric metric of a run directory's metrics.jsonl into run_dir/plots/."""
    from .tracking import read_metrics
    run_dir = Path(run_dir)
    rows = rows if rows is not None else read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        return []
    x_key = "iteration" if "iteration" in rows[0] else "step"
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != x_key})
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.split("/")[0] if "/" in k else "misc", []).append(k)
    out = []
    for group, ks in groups.items():
        p = plot_metrics(rows, ks, run_dir / "plots" / f"{group}.png", x_key, title=f"{run_dir.name}: {group}")
        if p:
            out.append(p)
    return out
