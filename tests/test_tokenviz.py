"""The per-token renderer: escaping, one span per token, colours at the ends of the range, masked and NaN
tokens uncoloured, and matplotlib drawing on a bare Figure without pyplot."""
import contextlib
import io
import math
import os
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import pytest
import torch
from matplotlib.colors import to_hex, to_rgba

from minirlhf import Tokenizer
from minirlhf import tokenviz
from minirlhf.tokenviz import display_width, plot_tokens, render_tokens_html, token_strings

ROOT = Path(__file__).resolve().parents[1]


class TokenSpans(HTMLParser):
    """Rows of (text, style, title) of the <span class="tok"> elements, read back by a real HTML parser."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.current, self.depth = [], None, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            self.depth += 1
            if self.depth == 2:
                self.rows.append([])
        if tag == "span" and attrs.get("class") == "tok":
            self.current = [attrs.get("style", ""), attrs.get("title", ""), ""]

    def handle_endtag(self, tag):
        if tag == "div":
            self.depth -= 1
        if tag == "span" and self.current is not None:
            style, title, text = self.current
            self.rows[-1].append((text, style, title))
            self.current = None

    def handle_data(self, data):
        if self.current is not None:
            self.current[2] += data


def spans(html: str):
    parser = TokenSpans()
    parser.feed(html)
    return [row for row in parser.rows if row]


def background(style: str):
    found = [p.split(":", 1)[1] for p in style.split(";") if p.startswith("background-color:")]
    return found[0] if found else None


def test_text_is_escaped_and_read_back_unchanged():
    tokens = ["<b>", "&amp;", '"q"', "好", "'", " "]
    html = render_tokens_html(tokens, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], title="<script>alert(1)</script>",
                              label="a<b")
    assert "<b>" not in html and "<script>" not in html and "a<b" not in html
    assert "&lt;script&gt;" in html and "好" in html                  # CJK stays as it is, not as entities
    assert [text for text, _, _ in spans(html)[0]] == tokens          # the parser recovers every token exactly


def test_one_span_per_token_one_row_per_sequence():
    tokens = [["这", "部", "电", "影"], ["很", "<eos>"], []]
    values = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6], []]
    html = render_tokens_html(tokens, values)
    rows = spans(html)
    assert [[t for t, _, _ in r] for r in rows] == [tokens[0], tokens[1]]
    assert html.count('class="tok"') == 6
    assert html.count("<div>") == 3                                     # the empty sequence still gets its row
    assert rows[0][1][2] == "+0.200"                                    # the value is the tooltip


def test_newline_and_empty_tokens_stay_visible():
    rows = spans(render_tokens_html(["a\nb", ""], [0.0, 1.0]))
    assert [t for t, _, _ in rows[0]] == ["a↵b", "∅"]


def test_colours_at_vmin_and_vmax_and_clipped_beyond():
    cm = matplotlib.colormaps["viridis"]
    html = render_tokens_html(list("abcde"), [-5.0, -1.0, 0.0, 1.0, 7.0], cmap="viridis", vmin=-1, vmax=1)
    got = [background(style) for _, style, _ in spans(html)[0]]
    assert got == [to_hex(cm(0.0)), to_hex(cm(0.0)), to_hex(cm(0.5)), to_hex(cm(1.0)), to_hex(cm(1.0))]


def test_default_range_is_that_of_the_coloured_values():
    cm = matplotlib.colormaps["viridis"]
    html = render_tokens_html(list("abcd"), [2.0, 100.0, 4.0, 3.0], mask=[1, 0, 1, 1], cmap="viridis")
    got = [background(style) for _, style, _ in spans(html)[0]]
    assert got == [to_hex(cm(0.0)), None, to_hex(cm(1.0)), to_hex(cm(0.5))]   # the masked 100 sets nothing


def test_symmetric_range_puts_zero_in_the_middle():
    cm = matplotlib.colormaps["RdBu"]
    got = [background(s) for _, s, _ in spans(render_tokens_html(list("abc"), [-1.0, 0.0, 4.0], symmetric=True))[0]]
    assert got == [to_hex(cm(3 / 8)), to_hex(cm(0.5)), to_hex(cm(1.0))]           # range [-4, 4]


def test_masked_and_nan_tokens_are_uncoloured():
    values = torch.tensor([[0.5, float("nan"), -0.5, 2.0], [1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    rows = spans(render_tokens_html([list("abcd"), list("efgh")], values, mask=mask))
    coloured = [[background(style) is not None for _, style, _ in r] for r in rows]
    assert coloured == [[True, False, True, False], [False, True, True, True]]
    assert [title for _, _, title in rows[0]] == ["+0.500", "nan", "-0.500", "masked"]


def test_tensor_and_list_inputs_agree_and_mismatches_are_errors():
    values = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    tokens = [["a", "b", "c"], ["d", "e", "f"]]
    assert render_tokens_html(tokens, values) == render_tokens_html(tokens, values.tolist())
    with pytest.raises(ValueError, match="row 1"):
        render_tokens_html(tokens, [[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="2 token sequences"):
        render_tokens_html(tokens, [[1, 2, 3]])
    with pytest.raises(ValueError, match="token_strings"):
        render_tokens_html(torch.tensor([5, 6]), [1.0, 2.0])                # ids, not strings
    with pytest.raises(ValueError, match="token_strings"):
        render_tokens_html(["ab", ["c"]], [[1.0], [2.0]])                   # a string among the rows
    with pytest.raises(ValueError, match="vmin"):
        render_tokens_html(["a"], [0.0], vmin=1, vmax=0)


def test_token_strings_decode_one_id_at_a_time():
    tok = Tokenizer.train(["这部电影很好看", "不好"], vocab_size=300, kind="char")
    ids = [tok.bos_id] + tok.encode("电影很好") + [tok.eos_id]
    assert token_strings(tok, ids) == ["<bos>", "电", "影", "很", "好", "<eos>"]
    assert token_strings(tok, torch.tensor(ids)) == token_strings(tok, ids)


def test_display_width_counts_cjk_as_two_columns():
    assert [display_width(t) for t in ["好", "a", "好a", "", "ab"]] == [2, 1, 3, 1, 2]


def test_plot_tokens_on_a_bare_figure():
    from matplotlib.figure import Figure
    cm = matplotlib.colormaps["viridis"]
    fig = Figure(figsize=(6, 2))
    ax = fig.subplots()
    tokens = [["好", "a", "b"], ["c", "d"]]
    expect = contextlib.nullcontext() if _has_cjk_font() else pytest.warns(UserWarning, match="CJK font")
    with expect:
        plot_tokens(ax, tokens, [[0.0, 1.0, 2.0], [float("nan"), 3.0]], mask=[[1, 0, 1], [1, 1]], cmap="viridis",
                    vmin=0, vmax=2, wrap=3)
    assert [t.get_text() for t in ax.texts] == ["好", "a", "b", "c", "d"]
    colours = [p.get_facecolor() for p in ax.patches]
    assert colours == [to_rgba(cm(0.0)), to_rgba(cm(1.0)), to_rgba(cm(1.0))]   # 好, b, and d clipped at vmax
    widths = [round(p.get_width() + 0.1) for p in ax.patches]
    assert widths == [2, 1, 1]                                            # the CJK box is two columns wide
    lines = [round(t.get_position()[1] - 0.5) for t in ax.texts]
    assert lines == [0, 0, 1, 2, 2]                       # "b" would pass 3 columns: wrapped; a new row per sequence
    assert len(fig.axes) == 2                                             # the colorbar
    png = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                   # missing-glyph warnings, without a CJK font
        fig.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")


def test_no_cjk_font_warns_and_latin_text_does_not(monkeypatch):
    from matplotlib.figure import Figure
    monkeypatch.setattr(tokenviz, "CJK_FONTS", ("No Such Font",))
    ax = Figure().subplots()
    with pytest.warns(UserWarning, match="CJK font"):
        plot_tokens(ax, ["好"], [1.0], colorbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_tokens(Figure().subplots(), ["ok"], [1.0], colorbar=False)   # no wide character: no warning


def test_plot_tokens_needs_no_pyplot_and_no_gui():
    code = ("import io, sys; import matplotlib; from matplotlib.figure import Figure;"
            "from minirlhf.tokenviz import plot_tokens;"
            "ax = Figure().subplots(); plot_tokens(ax, ['a', 'b'], [0.0, 1.0]); ax.figure.savefig(io.BytesIO());"
            "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'bare')")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "bare"


def _has_cjk_font() -> bool:
    from matplotlib import font_manager
    return any(f.name in tokenviz.CJK_FONTS for f in font_manager.fontManager.ttflist)


def test_values_nan_everywhere_still_render():
    html = render_tokens_html(["a", "b"], [math.nan, math.nan])
    assert all(background(s) is None for _, s, _ in spans(html)[0])
