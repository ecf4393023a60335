"""Check for nucleus (top-p) filtering, the last step before a token is sampled."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..sampling import filter_logits
from .harness import SEEDS, Checker, gen

NEG_INF = float("-inf")


def _nucleus(logits, top_p, rule: str = "reaches", scatter_back: bool = True, descending: bool = True,
             keep_first: bool = False):
    """The filtered logits under a keep rule on the sorted probabilities, for the mistakes' values:
    "reaches" (right: keep while the mass BEFORE the token is < top_p), "below" (keep while the mass
    INCLUDING the token is < top_p: drops the crossing token), "one_more" (keeps one token past it);
    keep_first: the most likely token is kept whatever the rule says."""
    sorted_logits, order = torch.sort(logits, descending=descending, dim=-1)
    probs = F.softmax(sorted_logits, dim=-1)
    including = probs.cumsum(-1)
    before = including - probs
    keep = {"reaches": before < top_p, "below": including < top_p,
            "one_more": F.pad(before, (1, 0))[..., :-1] < top_p}[rule]
    if keep_first:
        keep[..., 0] = True
    if scatter_back:
        keep = keep.scatter(-1, order, keep)
    return logits.masked_fill(~keep, NEG_INF)


def _top_p_mistakes(logits, top_p):
    right = filter_logits(logits, top_p=top_p)
    crossing = ("you dropped the token that crosses the threshold: keep the smallest set of most likely tokens whose "
                "mass REACHES top_p, i.e. keep a token when the mass of the tokens MORE likely than it is < top_p "
                "(cumsum − p < top_p, not cumsum < top_p)")
    return lambda: {
        crossing: _nucleus(logits, top_p, "below", keep_first=True),
        crossing + " (and when the most likely token alone reaches top_p, you dropped every token)":
            _nucleus(logits, top_p, "below"),
        "you kept one token too many: the token that crosses top_p is the last one kept":
            _nucleus(logits, top_p, "one_more"),
        "your keep/drop decision is in SORTED order but was applied in vocabulary order: scatter it back "
        "with the sort's indices": _nucleus(logits, top_p, scatter_back=False),
        "you sorted in ascending order: the nucleus is made of the MOST likely tokens":
            _nucleus(logits, top_p, descending=False),
        "you set the dropped logits to 0: they must be float('-inf') (probability exactly 0 after softmax); 0 is an "
        "ordinary logit":
            right.masked_fill(right == NEG_INF, 0.0),
        "you returned probabilities: return the filtered LOGITS (kept ones unchanged, dropped ones −inf)":
            F.softmax(right, dim=-1),
    }


def check_top_p_filter(fn):
    """fn(logits (..., V), top_p) -> logits with every token outside the nucleus set to −inf: sort by
    probability, keep the smallest prefix whose mass reaches top_p (the token that crosses it is kept)."""
    c = Checker("top_p_filter")
    for seed in SEEDS:
        for shape in ((4, 10), (3, 50), (2, 3, 7), (1, 5)):
            for top_p in (0.3, 0.6, 0.9, 1.0):
                g = gen(seed)
                logits = 2 * torch.randn(shape, generator=g)
                case = f"random seed={seed} shape={shape} top_p={top_p}"
                c.close(case, c.call(case, fn, logits, top_p), filter_logits(logits, top_p=top_p),
                        hint="kept logits unchanged, every other one −inf; a token is kept when the mass of the "
                             "tokens more likely than it is below top_p", mistakes=_top_p_mistakes(logits, top_p))
    logits = torch.tensor([[math.log(0.2), math.log(0.5), math.log(0.3)]])
    for top_p, keep, why in ((0.6, (False, True, True), "0.5 < 0.6, so 0.3 crosses the threshold and is kept"),
                             (0.85, (True, True, True), "0.5 + 0.3 = 0.8 < 0.85, so 0.2 is kept too"),
                             (0.4, (False, True, False), "0.5 alone reaches 0.4"),
                             (1e-6, (False, True, False), "the most likely token is always kept"),
                             (1.0, (True, True, True), "top_p = 1 keeps everything")):
        expected = logits.masked_fill(~torch.tensor([keep]), NEG_INF)
        c.close(f"hand-built: probabilities [0.2, 0.5, 0.3], top_p={top_p}: {why}",
                c.call("hand-built", fn, logits, top_p), expected, mistakes=_top_p_mistakes(logits, top_p))
    for seed in SEEDS[:2]:
        logits = 3 * torch.randn(4, 30, generator=gen(20 + seed))
        for top_p in (0.5, 0.9):
            case = f"the nucleus is the smallest set that reaches top_p (seed={seed}, top_p={top_p})"
            out = torch.as_tensor(c.call(case, fn, logits, top_p))
            probs = F.softmax(logits, -1)
            kept = out > NEG_INF
            mass = (probs * kept).sum(-1)
            smallest = torch.where(kept, probs, torch.ones_like(probs)).amin(-1)
            c.true(case + ": the kept mass reaches top_p", bool((mass >= top_p - 1e-6).all()),
                   f"kept mass per row {mass.tolist()}", hint="you dropped too much: keep the token that crosses top_p")
            c.true(case + ": without its least likely token it would not", bool((mass - smallest < top_p).all()),
                   f"kept mass per row {mass.tolist()}, least likely kept {smallest.tolist()}",
                   hint="you kept too much: stop at the first token whose cumulative mass reaches top_p")
            shifted = torch.as_tensor(c.call(case, fn, logits + 7 * torch.randn(4, 1, generator=gen(seed)), top_p))
            c.true(case + ": adding a constant to a row's logits keeps the same tokens",
                   torch.equal(shifted > NEG_INF, kept), "the kept set changed",
                   hint="decide on softmax probabilities, not on raw logit values")
    c.done()
