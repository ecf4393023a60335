"""The arithmetic task: generated addition problems, a verifiable reward, and pass@k.

    a problem       prompt "12+345="   answer "<answer>357</answer>"   (TinyZero's answer tag)
    three splits    train (SFT and RL), held-out (same digits, never trained on), harder (more digits)
    the teacher     SFT's answers, a share of them with the first carry forgotten: 58+67 -> "115"
    the reward      1.0 correct, 0.1 well-formed but wrong, 0 malformed        (TinyZero's scores)
    pass@k          1 − C(n−c, k) / C(n, k) from n samples of which c are right  (Chen et al. 2021)

Splits. Each operand's number of digits is drawn uniformly from [min_digits, train_digits] (so "3+4" is as likely
a shape as "123+456"), then its value uniformly among the numbers of that many digits. The held-out problems are
drawn first; a training problem is then drawn until it is none of them, *in either order*: "345+12" is held out
with "12+345", since a model that learnt one has as good as learnt the other. The harder split has at least one
operand of more than train_digits digits (up to hard_digits), so it overlaps neither. All three are seeded.

The reward is a reward function in minirlhf's signature (reward_fns.py), reading the operands off the prompt
text, so it needs no table of answers. Where the papers differ, the choice made: the whole response must be the
tag and the number (`re.fullmatch`), where TinyZero takes the last <answer> anywhere in the text; a response cut
at the length limit is malformed (it never closed its tag).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import partial
from math import comb

import torch

from ..sampling import generate, sample_batches
from ..tokenizer import Tokenizer

OPEN, CLOSE = "<answer>", "</answer>"
ALPHABET = "0123456789+=" + "".join(sorted(set(OPEN + CLOSE)))  # every character the task ever writes
PROMPT = re.compile(r"(\d+)\+(\d+)=")
ANSWER = re.compile(re.escape(OPEN) + r"(\d+)" + re.escape(CLOSE))
FORMAT_SCORE, CORRECT_SCORE = 0.1, 1.0  # TinyZero's format_score and score


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        """The response SFT teaches: the sum inside the answer tag."""
        return f"{OPEN}{self.a + self.b}{CLOSE}"

    def teacher_answer(self, slip: bool) -> str:
        """The answer an imperfect teacher writes: with `slip`, it forgets its first carry (58+67: 8+7 carries
        a ten that it drops, writing 115 for 125), a+b − 10^(i+1) for the lowest digit i that carries; a problem
        without a carry it always gets right."""
        if not slip:
            return self.answer
        i, a, b = 0, self.a, self.b
        while a or b:
            if a % 10 + b % 10 >= 10:
                return f"{OPEN}{self.a + self.b - 10 ** (i + 1)}{CLOSE}"
            a, b, i = a // 10, b // 10, i + 1
        return self.answer

    @property
    def key(self) -> tuple[int, int]:
        """The same key for a+b and b+a: the splits keep both orders on one side."""
        return (min(self.a, self.b), max(self.a, self.b))


def random_operand(rng: random.Random, digits: int) -> int:
    """A number of exactly `digits` digits (1 digit: 0–9)."""
    return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits)


def random_problem(rng: random.Random, min_digits: int, max_digits: int, longer_than: int = 0) -> Problem:
    """Operand digit counts uniform in [min_digits, max_digits], at least one above `longer_than`."""
    while True:
        da, db = rng.randint(min_digits, max_digits), rng.randint(min_digits, max_digits)
        if max(da, db) > longer_than:
            return Problem(random_operand(rng, da), random_operand(rng, db))


@dataclass
class Splits:
    train: list[Problem]
    heldout: list[Problem]
    harder: list[Problem]


def make_splits(n_train: int, n_heldout: int, n_harder: int, min_digits: int, train_digits: int,
                hard_digits: int, seed: int) -> Splits:
    """The three splits (module docstring): held-out and harder problems are distinct, and no training problem is
    a held-out one in either order. Training problems may repeat (the small shapes, such as 1+1 digits, have only
    55 unordered problems); held-out ones never do."""
    rng = random.Random(seed)
    heldout, seen = [], set()
    while len(heldout) < n_heldout:
        p = random_problem(rng, min_digits, train_digits)
        if p.key not in seen:
            seen.add(p.key)
            heldout.append(p)
    train = []
    while len(train) < n_train:
        p = random_problem(rng, min_digits, train_digits)
        if p.key not in seen:
            train.append(p)
    harder, hard_seen = [], set()
    while len(harder) < n_harder:
        p = random_problem(rng, min_digits, hard_digits, longer_than=train_digits)
        if p.key not in hard_seen:
            hard_seen.add(p.key)
            harder.append(p)
    return Splits(train, heldout, harder)


def check_splits_possible(n_heldout: int, min_digits: int, train_digits: int):
    """Refuse (ValueError) a held-out split larger than half the unordered problems of its digit range."""
    top, bottom = 10 ** train_digits, 10 ** (min_digits - 1) if min_digits > 1 else 0
    unordered = (top - bottom) * (top - bottom + 1) // 2
    if n_heldout > unordered // 2:
        raise ValueError(f"{n_heldout} held-out problems of {min_digits}–{train_digits} digits: only "
                         f"{unordered} distinct problems exist, at most half of them can be held out")


# ---------------------------------------------------------------------------------------------- the reward

def parse_answer(response: str) -> int | None:
    """The number of a well-formed response "<answer>357</answer>", else None."""
    m = ANSWER.fullmatch(response.strip())
    return int(m.group(1)) if m else None


def true_sum(prompt: str) -> int | None:
    """a + b of a prompt "a+b=" (None if the prompt is not one)."""
    m = PROMPT.search(prompt)
    return int(m.group(1)) + int(m.group(2)) if m else None


def score(prompt: str, response: str) -> float:
    """1.0 for the right sum in the tag, 0.1 for a wrong one in the tag, 0 for anything else."""
    got, want = parse_answer(response), true_sum(prompt)
    if got is None:
        return 0.0
    return CORRECT_SCORE if got == want else FORMAT_SCORE


def arithmetic_reward(prompts, responses, prompt_ids=None, response_ids=None) -> list[float]:
    """The format + correctness reward, in minirlhf's reward-function signature (reward_fns.py):
    `--reward_fn minirlhf.recipes.arithmetic_task:arithmetic_reward` on the command line."""
    return [score(p, r) for p, r in zip(prompts, responses)]


# ---------------------------------------------------------------------------------------------- pass@k

def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code"): the chance
    that k of the n samples, drawn without replacement, hold at least one of the c right ones,

        pass@k = 1 − C(n−c, k) / C(n, k)

    computed as their numerically stable product 1 − Π_{i=n−c+1}^{n} (1 − k/i). Worked example: n = 4, c = 1,
    k = 2: C(3,2)/C(4,2) = 3/6, so pass@2 = 0.5 (half of the 6 pairs hold the right sample). Needs k ≤ n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_exact(n: int, c: int, k: int) -> float:
    """The same with exact binomials (for small n, and the tests)."""
    return 1.0 - comb(n - c, k) / comb(n, k)


# ---------------------------------------------------------------------------------------------- sampling and scoring

@torch.no_grad()
def sample_answers(model, tokenizer: Tokenizer, problems: list[Problem], n: int, max_new_tokens: int,
                   seed: int, greedy: bool = False, batch_size: int = 512) -> tuple[list[str], list[int]]:
    """n responses to each problem (problem-major), at temperature 1 or greedy (top-k 1), through the one chunked
    sampling path (sampling.sample_batches); and each one's length in tokens (EOS included, as the rollout's
    response mask counts them)."""
    sample = partial(generate, model, top_k=1 if greedy else 0)
    texts, lengths = [], []
    for _, out in sample_batches(model, tokenizer, [p.prompt for p in problems], n, max_new_tokens, seed=seed,
                                 batch_size=batch_size, sample=sample):
        P = out.sequences.shape[1] - out.response_mask.shape[1]
        responses = torch.where(out.response_mask.bool(), out.sequences[:, P:], tokenizer.pad_id)
        texts += tokenizer.decode_batch(responses.tolist())
        lengths += out.response_mask.sum(-1).long().tolist()
    return texts, lengths


def mean_or_none(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def sampled_stats(problems: list[Problem], n: int, texts: list[str], lengths: list[int],
                  ks=(1, 4, 16)) -> dict:
    """n samples a problem (problem-major) -> pass@k (mean over problems), pass@1's standard error over problems,
    the well-formed share, the share that is the teacher's slip (Problem.teacher_answer), the mean reward, and the
    mean length of right and of wrong samples (None where there are none)."""
    each = [p for p in problems for _ in range(n)]
    scores = [score(p.prompt, t) for p, t in zip(each, texts)]
    slips = [t.strip() == p.teacher_answer(True) != p.answer for p, t in zip(each, texts)]
    right = [s == CORRECT_SCORE for s in scores]
    per_problem = [sum(right[i * n:(i + 1) * n]) for i in range(len(problems))]
    out = {f"pass@{k}": sum(pass_at_k(n, c, k) for c in per_problem) / len(problems) for k in ks if k <= n}
    rates = [c / n for c in per_problem]
    mean = sum(rates) / len(rates)
    se = (sum((r - mean) ** 2 for r in rates) / max(len(rates) - 1, 1) / len(rates)) ** 0.5
    out.update({"pass@1_se": se}, format_rate=sum(s > 0 for s in scores) / len(scores),
               slip_rate=sum(slips) / len(slips), reward=sum(scores) / len(scores),
               length_right=mean_or_none([n_ for n_, r in zip(lengths, right) if r]),
               length_wrong=mean_or_none([n_ for n_, r in zip(lengths, right) if not r]))
    return out
