"""Before/after of the sampler change (commit c7b39bc): the previous sampling.py against the current one.

    python benchmarks/ab_sampler_change.py [--threads N] [--repeats 7]

The previous version is read from git (`git show c7b39bc^:minirlhf/sampling.py`) and imported beside
the current one; both run in this process on the same model, interleaved (before, after, before, ...),
so that machine load hits them alike. Shapes and model as in bench_sampler.py.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench_sampler import PROMPT_LEN, SHAPES
from common import add_common_args, cpu_share, gpt, interleaved_medians, report, setup
from minirlhf import generate

BEFORE = "c7b39bc^"


def previous_sampling():
    """The sampling module as it was at BEFORE (its relative import made absolute)."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{BEFORE}:minirlhf/sampling.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sampling_before.py"
    path.write_text(source.replace("from .model import", "from minirlhf.model import"))
    spec = importlib.util.spec_from_file_location("sampling_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main():
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    device = setup(args)
    before = previous_sampling()
    model = gpt(device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    for B, N in SHAPES:
        prompts = torch.randint(4, model.config.vocab_size, (B, PROMPT_LEN)).tolist()
        seconds = interleaved_medians({"before": lambda: before.generate(model, prompts, N, generator=gen),
                                       "after": lambda: generate(model, prompts, N, generator=gen)},
                                      args.repeats, device)
        for name, s in seconds.items():
            report(f"sampler_b{B}_n{N}_{name}", B * N / s, "tokens/s")
        report(f"sampler_b{B}_n{N}_after_over_before", seconds["before"] / seconds["after"], "x", ".2f")
    print(f"# done, {cpu_share()}")


if __name__ == "__main__":
    main()
