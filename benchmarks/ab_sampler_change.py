"""Before/after of a sampler change: minirlhf's generate() as it was at a git revision against the current one.

    python benchmarks/ab_sampler_change.py [--before REV] [--threads N] [--repeats 7] [--shape 1x128]

The whole package at REV (default 3babda6, the tree before issue 13's changes; c7b39bc^ before the first
sampler pass) is extracted from git under the name `minirlhf_before` and imported beside the current one;
the same weights are loaded into both models, the script checks that both sample the same tokens, and times
them in this process interleaved (before, after, before, ...), so that machine load hits them alike. Shapes
and model as in bench_sampler.py.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench_sampler import PROMPT_LEN, SHAPES
from common import add_common_args, cpu_share, gpt, interleaved_medians, report, setup
from minirlhf import generate


def package_at(rev: str):
    """minirlhf as it was at `rev`, imported as `minirlhf_before` (its imports are relative)."""
    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "archive", rev, "minirlhf"], cwd=root, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    (tmp / "minirlhf").rename(tmp / "minirlhf_before")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("minirlhf_before")


def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--before", default="3babda6", help="git revision of the 'before' side")
    parser.add_argument("--shape", action="append", help="BxN (repeatable; default: 64x48 and 1x128)")
    args = parser.parse_args()
    device = setup(args)
    before = package_at(args.before)
    model = gpt(device=device)
    old = before.GPT(before.GPTConfig(**{k: getattr(model.config, k) for k in
                                         ("vocab_size", "n_layer", "n_head", "n_embd", "block_size")})).to(device)
    old.load_state_dict(model.state_dict())
    old.eval()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    shapes = [tuple(map(int, sh.split("x"))) for sh in args.shape] if args.shape else SHAPES
    for B, N in shapes:
        prompts = torch.randint(4, model.config.vocab_size, (B, PROMPT_LEN)).tolist()
        a = before.generate(old, prompts, N, generator=torch.Generator(device=device).manual_seed(1))
        b = generate(model, prompts, N, generator=torch.Generator(device=device).manual_seed(1))
        print(f"# {B}x{N}: same tokens {torch.equal(a.sequences, b.sequences)}, "
              f"max |Δlogprob| {(a.logprobs - b.logprobs).abs().max().item():.1e}")
        seconds = interleaved_medians({"before": lambda: before.generate(old, prompts, N, generator=gen),
                                       "after": lambda: generate(model, prompts, N, generator=gen)},
                                      args.repeats, device)
        for name, s in seconds.items():
            report(f"sampler_b{B}_n{N}_{name}", B * N / s, "tokens/s")
        report(f"sampler_b{B}_n{N}_after_over_before", seconds["before"] / seconds["after"], "x", ".2f")
    print(f"# done, {cpu_share()}")


if __name__ == "__main__":
    main()
