"""The plumbing every check shares: a Checker that counts cases and explains failures, and the random
inputs (padding masks, garbage under the padding) the cases are built from.

A failure raises AssertionError naming the exercise and the case, with the expected and the actual
values and a HINT. When the student's output is exactly what a known mistake gives (each check lists
the mistakes students make, computed on the same inputs), the hint names that mistake; otherwise it
says what the case tests. When the student's function crashes, the failure shows where: the frames of the
traceback in the student's own code (file:line and the line), not the checker's, torch's or Python's.
"""
from __future__ import annotations

import os
import sysconfig
import traceback

import torch

# Where code that is not the student's lives: minirlhf (the checker, and any function of minirlhf the student
# calls), torch, and Python's own library and site-packages.
NOT_STUDENT_CODE = tuple(sorted({os.path.join(os.path.normcase(os.path.realpath(d)), "") for d in (
    os.path.dirname(os.path.dirname(__file__)), os.path.dirname(torch.__file__),
    *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")))}))
MAX_FRAMES = 3             # the innermost frames of the student's code that a crash shows

SEEDS = (0, 1, 2)
SHAPES = ((3, 5), (5, 9), (1, 1))  # (B, T); the single token last: on it, fewer mistakes can be told apart


ROWS, COLUMNS = 8, 12      # how much of a tensor a failure message shows


def _numbers(values, width: int = 0) -> str:
    return ", ".join(f"{v:.4g}".rjust(width) for v in values)


def show(t) -> str:
    """A tensor as a short string for failure messages: a 0-D or 1-D one on one line (at most 24 numbers),
    one of 2 or more dimensions with its shape and then row by row (the rows along the last dimension, each
    after its index, at most ROWS rows of COLUMNS numbers, the columns aligned)."""
    if not torch.is_tensor(t):
        return repr(t)
    t = t.detach().float()
    if t.dim() < 2:
        flat = t.flatten()
        body = _numbers(flat[:24].tolist()) + (", ..." if flat.numel() > 24 else "")
        return f"shape {tuple(t.shape)}: [{body}]"
    rows = t.reshape(-1, t.shape[-1])[:ROWS, :COLUMNS]
    width = max(len(f"{v:.4g}") for v in rows.flatten().tolist())
    index = [str([int(i) for i in torch.unravel_index(torch.tensor(r), t.shape[:-1])]) for r in range(len(rows))]
    more = ", ..." if t.shape[-1] > COLUMNS else ""
    lines = [f"shape {tuple(t.shape)}:"]
    lines += [f"    {i:>{len(index[-1])}s} [{_numbers(row, width)}{more}]" for i, row in zip(index, rows.tolist())]
    hidden = t[..., 0].numel() - len(rows)
    if hidden:
        lines.append(f"    ... ({hidden} more rows)")
    return "\n".join(lines)


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def student_frames(tb) -> list[traceback.FrameSummary]:
    """The frames of traceback `tb` in the student's code (not in NOT_STUDENT_CODE), outermost first. A frame
    of code without a file (`<string>`, `<stdin>`) counts as theirs."""
    return [f for f in traceback.extract_tb(tb)
            if not os.path.isabs(f.filename) or not _real(f.filename).startswith(NOT_STUDENT_CODE)]


def where(error: BaseException) -> str:
    """Where in the student's code `error` was raised: `file:line, in function` and the line of code of each
    of the innermost MAX_FRAMES frames (the file relative to the working directory when it is inside it);
    "" when no frame of the traceback is theirs."""
    here = os.path.join(_real(os.getcwd()), "")
    lines = []
    for f in student_frames(error.__traceback__)[-MAX_FRAMES:]:
        path = os.path.relpath(f.filename) if os.path.isabs(f.filename) and _real(f.filename).startswith(here) \
            else f.filename
        lines.append(f"\n  at {path}:{f.lineno}, in {f.name}" + (f"\n      {f.line.strip()}" if f.line else ""))
    return "".join(lines)


def _as_float(t) -> torch.Tensor | None:
    if torch.is_tensor(t):
        return t.detach().float()
    if isinstance(t, (int, float)):
        return torch.tensor(float(t))
    return None


def explains(got: torch.Tensor, mistake, atol: float, rtol: float) -> bool:
    """True when `got` is (close to) the value the mistake gives on the same inputs."""
    mistake = _as_float(mistake)
    return mistake is not None and mistake.shape == got.shape and torch.allclose(got, mistake, atol=atol, rtol=rtol)


class Checker:
    """Counts the checks of one exercise; the first failure raises AssertionError with the case name."""

    def __init__(self, exercise: str):
        self.exercise, self.n = exercise, 0

    def fail(self, case: str, why: str, hint: str = ""):
        raise AssertionError(f"{self.exercise} — case '{case}': {why}" + (f"\n  HINT: {hint}" if hint else ""))

    def call(self, case: str, fn, *args, **kwargs):
        """fn(*args); a stub (NotImplementedError), any other exception (shown with the lines of the
        student's code it came from), or an input tensor written in place becomes a failure of `case`."""
        before = [a.detach().clone() if torch.is_tensor(a) else None for a in args]
        try:
            out = fn(*args, **kwargs)
        except NotImplementedError as e:    # the stub's message names the exercise (perhaps another one)
            raise AssertionError(f"{self.exercise}: not implemented yet (your function raised NotImplementedError"
                                 f"{': ' if str(e) else ''}{e}): write its body, then check it again") from None
        except Exception as e:
            raise AssertionError(f"{self.exercise} — case '{case}': your function raised "
                                 f"{type(e).__name__}: {e}{where(e)}") from e
        self.true(case + ": the inputs are not modified in place",
                  all(b is None or torch.equal(a, b) for a, b in zip(args, before)),
                  "your function wrote into a tensor it was given",
                  hint="build new tensors (x = x * mask), never write into the inputs (x *= mask, x[i] += ...)")
        return out

    def close(self, case: str, got, expected, atol: float = 1e-5, rtol: float = 1e-4, hint: str = "",
              mistakes=None):
        """got ≈ expected (same shape, NaN nowhere). `mistakes`: a function returning {what the mistake is:
        the value it gives}, evaluated on failure only; a mistake that explains `got` becomes the hint."""
        self.n += 1
        got_f = _as_float(got)
        if got_f is None:
            self.fail(case, f"expected a tensor, got {type(got).__name__}")
        expected = torch.as_tensor(expected, dtype=torch.float32)
        if got_f.shape != expected.shape:
            self.fail(case, f"expected shape {tuple(expected.shape)}, got shape {tuple(got_f.shape)}", hint)
        if torch.allclose(got_f, expected, atol=atol, rtol=rtol):
            return
        named = [what for what, value in (mistakes() if mistakes else {}).items()
                 if explains(got_f, value, atol, rtol)]
        if named:
            hint = "this is exactly what you get when " + "; or when ".join(named)
        elif torch.isnan(got_f).any() and not torch.isnan(expected).any():
            hint = "your output has NaN where a number is expected. " + hint
        diff = (got_f - expected).abs().nan_to_num(float("inf"))   # −inf − (−inf) is NaN: no difference
        diff = torch.where(torch.isclose(got_f, expected, atol=atol, rtol=rtol), torch.zeros_like(diff), diff)
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
        at = f" (largest difference at index {where})" if where else ""
        self.fail(case, f"values differ{at}\n  expected {show(expected)}\n  got      {show(got_f)}", hint)

    def true(self, case: str, condition: bool, why: str, hint: str = ""):
        self.n += 1
        if not condition:
            self.fail(case, why, hint)

    def done(self):
        print(f"✔ {self.exercise}: all {self.n} checks passed")


def first(out):
    """The first output of a function that may return (main, extras...)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def right_mask(B: int, T: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) float mask, 1 on a prefix of random length 1..T (row 0 always full: a response without EOS)."""
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    return (torch.arange(T)[None, :] < lengths[:, None]).float()


def left_mask(B: int, T: int, g: torch.Generator) -> torch.Tensor:
    return right_mask(B, T, g).flip(1)


def scattered_mask(B: int, T: int, g: torch.Generator) -> torch.Tensor:
    """Random holes anywhere, at least one real entry per row."""
    m = (torch.rand(B, T, generator=g) < 0.6).float()
    m[torch.arange(B), torch.randint(0, T, (B,), generator=g)] = 1.0
    return m


MASKS = (("right", right_mask), ("left", left_mask), ("scattered", scattered_mask))


def with_garbage(x: torch.Tensor, mask: torch.Tensor, g: torch.Generator, scale: float = 10.0) -> torch.Tensor:
    """x with every padded entry replaced by large random numbers: what is under the padding must not matter."""
    junk = scale * torch.randn(x.shape, generator=g)
    return torch.where(mask.bool(), x, junk)


def pad_right(x: torch.Tensor, n: int, value) -> torch.Tensor:
    return torch.cat([x, torch.full((x.shape[0], n), float(value))], 1)


def pad_left(x: torch.Tensor, n: int, value) -> torch.Tensor:
    return torch.cat([torch.full((x.shape[0], n), float(value)), x], 1)


PADS = (("right", pad_right), ("left", pad_left))
