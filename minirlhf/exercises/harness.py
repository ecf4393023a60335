"""The plumbing every check shares: a Checker that counts cases and explains failures, and the random
inputs (padding masks, garbage under the padding) the cases are built from.

A failure raises AssertionError naming the exercise and the case, with the expected and the actual
values and a HINT. When the student's output is exactly what a known mistake gives (each check lists
the mistakes students make, computed on the same inputs), the hint names that mistake; otherwise it
says what the case tests.
"""
from __future__ import annotations

import torch

SEEDS = (0, 1, 2)
SHAPES = ((3, 5), (5, 9), (1, 1))  # (B, T); the single token last: on it, fewer mistakes can be told apart


def show(t) -> str:
    """A tensor as a short string (at most 24 numbers), for failure messages."""
    if not torch.is_tensor(t):
        return repr(t)
    flat = t.detach().float().flatten()
    body = ", ".join(f"{v:.4g}" for v in flat[:24].tolist()) + (", ..." if flat.numel() > 24 else "")
    return f"shape {tuple(t.shape)}: [{body}]"


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
        """fn(*args); a stub (NotImplementedError), any other exception, or an input tensor written in
        place becomes a failure of `case`."""
        before = [a.detach().clone() if torch.is_tensor(a) else None for a in args]
        try:
            out = fn(*args, **kwargs)
        except NotImplementedError:
            raise AssertionError(f"{self.exercise}: not implemented yet (your function raised "
                                 f"NotImplementedError): write its body, then check it again") from None
        except Exception as e:
            raise AssertionError(f"{self.exercise} — case '{case}': your function raised "
                                 f"{type(e).__name__}: {e}") from e
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
