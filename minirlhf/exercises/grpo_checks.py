"""Check for GRPO's group advantage (Shao et al. 2024), with and without the std (Dr. GRPO, Liu et al. 2025):
each response scored against the other responses to the same prompt, no critic."""
from __future__ import annotations

import torch

from ..advantages import group_advantages as ref_group_advantages
from .harness import SEEDS, Checker, gen

EPS = 1e-4
SCALES = ("group", "none")


def _mistakes(rewards, G, scale):
    grouped = rewards.view(-1, G)
    centred = grouped - grouped.mean(1, keepdim=True)
    by_column = rewards.view(G, -1)                                    # the groups read across the batch
    wrong_layout = (by_column - by_column.mean(0, keepdim=True)).t().reshape(-1)
    if scale == "group":
        wrong_layout = ((by_column - by_column.mean(0, keepdim=True)) / (by_column.std(0, keepdim=True) + EPS)
                        ).t().reshape(-1)
    out = {
        "you took the mean of the whole batch: the baseline is the mean of the prompt's OWN group of G "
        "(rewards.view(-1, G).mean(1))": (rewards - rewards.mean()) / ((rewards.std() + EPS) if scale == "group"
                                                                       else 1),
        "you read the groups down the columns (view(G, -1)): the G responses of one prompt are CONTIGUOUS, "
        "rows of view(-1, G)": wrong_layout,
    }
    if scale == "group":
        out["you divided by the population std (unbiased=False): GRPO, as TRL, uses the unbiased one, "
            "torch.std's default (Bessel's n − 1)"] = (centred / (grouped.std(1, unbiased=False, keepdim=True) + EPS)
                                                       ).reshape(-1)
        out["you divided by the batch's std: scale='group' divides by each group's own std"] = \
            (centred / (rewards.std() + EPS)).reshape(-1)
        out["you left out ε = 1e-4: (r − mean) / (std + 1e-4)"] = (centred / grouped.std(1, keepdim=True)).reshape(-1)
    else:
        out["you divided by the std: scale='none' (Dr. GRPO) only subtracts the group mean"] = \
            (centred / (grouped.std(1, keepdim=True) + EPS)).reshape(-1)
    return lambda: out


def check_group_advantages(fn):
    """fn(rewards (B,), group_size G, scale "group" | "none") -> advantages (B,): the G rewards of a prompt are
    contiguous; A_i = (r_i − mean_group r) / (std_group r + 1e-4) with the unbiased std ("group", GRPO), or
    r_i − mean_group r ("none", Dr. GRPO)."""
    c = Checker("group_advantages")
    for scale in SCALES:
        for seed in SEEDS:
            for prompts, G in ((3, 4), (5, 2), (1, 8), (4, 3)):
                g = gen(seed)
                rewards = torch.randn(prompts * G, generator=g)
                case = f"{scale}: random seed={seed} prompts={prompts} G={G}"
                c.close(case, c.call(case, fn, rewards, G, scale), ref_group_advantages(rewards, G, scale),
                        mistakes=_mistakes(rewards, G, scale),
                        hint="rewards.view(-1, G): one row per prompt; subtract the row's mean" +
                             ("; divide by the row's unbiased std + 1e-4" if scale == "group" else ""))
    worked = torch.tensor([1.0, 0.0, 0.0, 1.0])
    c.close("worked example, rewards [1, 0, 0, 1], G = 4, 'group': mean 0.5, std √(1/3) = 0.5774",
            c.call("worked", fn, worked, 4, "group"), torch.tensor([0.8659, -0.8659, -0.8659, 0.8659]), atol=1e-4,
            mistakes=_mistakes(worked, 4, "group"))
    c.close("worked example, rewards [1, 0, 0, 1], G = 4, 'none'", c.call("worked", fn, worked, 4, "none"),
            torch.tensor([0.5, -0.5, -0.5, 0.5]), mistakes=_mistakes(worked, 4, "none"))
    equal = torch.tensor([1.0, 1.0, 1.0, 0.2, 0.7, 0.4])
    for scale in SCALES:
        got = c.call("equal rewards", fn, equal, 3, scale)
        c.close(f"{scale}: a group whose rewards are all equal (1, 1, 1) gets advantage 0, not NaN: no signal",
                got, ref_group_advantages(equal, 3, scale), mistakes=_mistakes(equal, 3, scale),
                hint="its std is 0: the ε = 1e-4 keeps (r − mean) / (std + ε) = 0 / 1e-4 = 0")
    g = gen(9)
    rewards = torch.randn(12, generator=g)
    base = c.call("invariance", fn, rewards, 4, "group")
    c.close("'group': adding 5 to one prompt's rewards changes nothing (the baseline moves with them)",
            c.call("invariance", fn, rewards + torch.tensor([5.0] * 4 + [0.0] * 8), 4, "group"), base, atol=1e-4,
            hint="subtract each group's own mean, not the batch's")
    c.close("'group': multiplying one prompt's rewards by 10 changes nothing (its std scales with them)",
            c.call("invariance", fn, rewards * torch.tensor([10.0] * 4 + [1.0] * 8), 4, "group"), base, atol=1e-3,
            hint="divide by each group's own std")
    c.close("'none': multiplying every reward by 10 multiplies every advantage by 10 (no std to cancel it)",
            c.call("invariance", fn, 10 * rewards, 4, "none"), 10 * ref_group_advantages(rewards, 4, "none"),
            hint="scale='none' only centres each group")
    c.done()
