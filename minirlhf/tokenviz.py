"""Colour each token of a sequence by a number: its logprob, KL to the reference, advantage or reward.

    html = render_tokens_html(tokens, values, mask=response_mask, title="advantage", symmetric=True)
    IPython.display.display(IPython.display.HTML(html))     # in a notebook
    plot_tokens(ax, tokens, values, mask=response_mask)     # the same on a matplotlib Axes

`tokens` is one sequence of token strings (`token_strings(tokenizer, ids)` makes it from ids) or a list of
sequences (one row each); `values` and the optional `mask` have the same shape (lists, tensors or arrays).
A masked token (mask 0: a prompt or a pad) and a token whose value is NaN are drawn without colour, so
they can stay in place as context. Colours run from `cmap`'s low end at `vmin` to its high end at `vmax`
(values beyond are clipped); by default these are the smallest and largest coloured value, and with
`symmetric=True` they are ±max|value|, so 0 sits at the middle of a diverging map (right for KL and
advantages, whose sign matters). Text is HTML-escaped; whitespace is kept and a newline shows as ↵.

matplotlib is imported on the first call, as in plots.py. It ships no CJK font: `plot_tokens` uses one if
the system has one (fonts-noto-cjk, WenQuanYi, SimHei, ...) and otherwise warns that Chinese
characters will be boxes; the HTML renderer has no such problem (the browser picks the font).
"""
from __future__ import annotations

import html
import math
import unicodedata
import warnings

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Hiragino Sans GB", "Heiti SC",
             "Noto Sans CJK JP", "Arial Unicode MS")
UNCOLOURED_TEXT = "#888888"   # masked and NaN tokens: grey text, no background


def token_strings(tokenizer, ids) -> list[str]:
    """Each id decoded on its own, special tokens included (`<eos>`): the strings to colour."""
    return [tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]


def _as_list(x) -> list:
    if hasattr(x, "detach"):                      # a torch tensor
        x = x.detach().cpu()
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _rows(tokens, values, mask) -> list[tuple[list[str], list[float], list[bool]]]:
    """One (tokens, values, coloured?) triple per sequence; a single sequence becomes one row."""
    tokens = list(tokens)
    single = all(isinstance(t, str) for t in tokens)
    if not single and not all(isinstance(t, (list, tuple)) for t in tokens):
        raise ValueError("tokens must be a list of strings or a list of lists of strings "
                         "(token_strings(tokenizer, ids) makes them from ids)")
    token_rows = [tokens] if single else [list(t) for t in tokens]
    value_rows = _as_list(values)
    mask_rows = None if mask is None else _as_list(mask)
    if single:
        value_rows = [value_rows]
        mask_rows = None if mask_rows is None else [mask_rows]
    if len(value_rows) != len(token_rows) or (mask_rows is not None and len(mask_rows) != len(token_rows)):
        raise ValueError(f"{len(token_rows)} token sequences but {len(value_rows)} rows of values"
                         + ("" if mask_rows is None else f" and {len(mask_rows)} rows of mask"))
    rows = []
    for i, (toks, vals) in enumerate(zip(token_rows, value_rows)):
        if not all(isinstance(t, str) for t in toks):
            raise ValueError(f"row {i}: tokens must be strings (token_strings(tokenizer, ids) makes them)")
        keep = [True] * len(toks) if mask_rows is None else [bool(m) for m in mask_rows[i]]
        if len(vals) != len(toks) or len(keep) != len(toks):
            raise ValueError(f"row {i}: {len(toks)} tokens, {len(vals)} values, {len(keep)} mask entries")
        try:
            vals = [float(v) for v in vals]
        except (TypeError, ValueError):
            raise ValueError(f"row {i}: values must be numbers, one per token") from None
        rows.append((toks, vals, [k and not math.isnan(v) for k, v in zip(keep, vals)]))
    return rows


def _value_range(rows, vmin=None, vmax=None, symmetric=False) -> tuple[float, float]:
    """vmin, vmax: the given ones, else the extremes (±max|v| if symmetric) of the coloured, finite values."""
    vals = [v for _, vs, cs in rows for v, c in zip(vs, cs) if c and math.isfinite(v)]
    if symmetric:
        lim = max((abs(v) for v in vals), default=1.0)
        lo, hi = -lim, lim
    else:
        lo, hi = min(vals, default=0.0), max(vals, default=1.0)
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if hi < lo:
        raise ValueError(f"vmin={lo} is above vmax={hi}")
    return lo, hi


def _unit(v: float, lo: float, hi: float) -> float:
    """Where v sits in [lo, hi], clipped to [0, 1] (the middle when lo == hi)."""
    return 0.5 if hi == lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)


def _colormap(cmap):
    import matplotlib
    return matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap


def _text_colour(rgba) -> str:
    """Black on light backgrounds, white on dark ones (relative luminance, ITU-R BT.709)."""
    r, g, b = rgba[:3]
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "#ffffff"


def _shown(token: str) -> str:
    """What is displayed for a token: newlines and tabs made visible, an empty token as ∅."""
    return token.replace("\n", "↵").replace("\t", "⇥") or "∅"


def render_tokens_html(tokens, values, mask=None, cmap="RdBu", vmin=None, vmax=None, symmetric=False,
                       title: str | None = None, label: str = "value", fmt: str = "{:+.3f}") -> str:
    """An HTML fragment: one line per sequence, one inline-styled <span class="tok"> per token (its value in
    the tooltip), a colour legend from vmin to vmax. Nothing outside the fragment is styled."""
    from matplotlib.colors import to_hex
    rows = _rows(tokens, values, mask)
    lo, hi = _value_range(rows, vmin, vmax, symmetric)
    cm = _colormap(cmap)
    span = "padding:0 1px;border-radius:2px;white-space:pre"
    parts = ['<div class="minirlhf-tokens" style="font-family:monospace;line-height:1.9">']
    if title:
        parts.append(f'<div style="font-weight:bold">{html.escape(title)}</div>')
    for toks, vals, coloured in rows:
        parts.append('<div>')
        for tok, v, c in zip(toks, vals, coloured):
            text = html.escape(_shown(tok))
            if c:
                rgba = cm(_unit(v, lo, hi))
                parts.append(f'<span class="tok" title="{html.escape(fmt.format(v))}" style="{span};'
                             f'background-color:{to_hex(rgba)};color:{_text_colour(rgba)}">{text}</span>')
            else:
                tip = "masked" if not math.isnan(v) else "nan"
                parts.append(f'<span class="tok" title="{tip}" style="{span};color:{UNCOLOURED_TEXT}">{text}</span>')
        parts.append('</div>')
    stops = ", ".join(to_hex(cm(i / 10)) for i in range(11))
    parts.append(f'<div style="font-size:smaller">{html.escape(label)}: {html.escape(fmt.format(lo))} '
                 f'<span style="display:inline-block;width:120px;height:0.8em;vertical-align:middle;'
                 f'background:linear-gradient(to right, {stops})"></span> {html.escape(fmt.format(hi))}'
                 f' &nbsp; <span style="color:{UNCOLOURED_TEXT}">grey: masked or NaN</span></div>')
    parts.append('</div>')
    return "".join(parts)


def display_width(token: str) -> int:
    """Columns a token takes in a monospaced layout: 2 for a wide (CJK) character, 1 for others, at least 1."""
    return max(1, sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in _shown(token)))


def _font_families(tokens: list[str]) -> list[str]:
    """Installed CJK fonts first (matplotlib >= 3.6 falls back glyph by glyph along the list), then sans-serif."""
    from matplotlib import font_manager
    installed = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [f for f in CJK_FONTS if f in installed]
    if not cjk and any(display_width(t) > len(_shown(t)) for t in tokens):
        warnings.warn("no CJK font is installed, so matplotlib draws these characters as boxes: install one "
                      "(e.g. apt install fonts-noto-cjk) or use render_tokens_html", stacklevel=3)
    return cjk + ["sans-serif"]


def plot_tokens(ax, tokens, values, mask=None, cmap="RdBu", vmin=None, vmax=None, symmetric=False,
                title: str | None = None, label: str = "value", wrap: int = 48, fontsize: float | None = None,
                colorbar: bool = True):
    """Draw the tokens on `ax` as coloured boxes, left to right, a new line per sequence and every `wrap`
    columns (display_width), with a colorbar; masked and NaN tokens have no box. Returns `ax`.

    Works on a bare matplotlib Figure (no pyplot, no GUI backend). `fontsize` defaults to what fits a
    column of the Axes as it is sized now.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle
    rows = _rows(tokens, values, mask)
    lo, hi = _value_range(rows, vmin, vmax, symmetric)
    cm = _colormap(cmap)
    family = _font_families([t for toks, _, _ in rows for t in toks])
    lines, x, y = 0, 0, 0
    placed = []                                          # (x, y, width, token, value, coloured)
    for toks, vals, coloured in rows:
        for tok, v, c in zip(toks, vals, coloured):
            w = display_width(tok)
            if x > 0 and x + w > wrap:
                x, y = 0, y + 1
            placed.append((x, y, w, tok, v, c))
            x += w
        lines, x, y = y + 1, 0, y + 1
    width = max([p[0] + p[2] for p in placed], default=1)
    if fontsize is None:           # a CJK glyph (1 em) fits its 2 columns; a Latin one (~0.6 em) its 1
        bbox = ax.get_window_extent()
        col_pt = bbox.width / width * 72 / ax.figure.dpi
        line_pt = bbox.height / max(lines, 1) * 72 / ax.figure.dpi
        fontsize = max(4.0, min(1.2 * col_pt, 0.5 * line_pt))
    for px, py, w, tok, v, c in placed:
        if c:
            rgba = cm(_unit(v, lo, hi))
            ax.add_patch(Rectangle((px + 0.05, py + 0.1), w - 0.1, 0.8, facecolor=rgba, edgecolor="none"))
        ax.text(px + w / 2, py + 0.5, _shown(tok), ha="center", va="center", fontsize=fontsize, family=family,
                color=_text_colour(cm(_unit(v, lo, hi))) if c else UNCOLOURED_TEXT)
    ax.set_xlim(0, width)
    ax.set_ylim(max(lines, 1), 0)
    ax.axis("off")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(ScalarMappable(Normalize(lo, hi), cm), ax=ax, label=label)
    return ax
