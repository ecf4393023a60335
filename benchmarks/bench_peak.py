"""This machine's measured dense-matmul peak: the denominator of every "fraction of peak" figure.

    python benchmarks/bench_peak.py [--threads N] [--device cpu|cuda]

CPU: fp32 n×n×n products at n = 1024, 2048, 4096 (the largest is the peak). CUDA: fp32 (TF32 off) and
bf16 at n = 8192. Each figure is the median of --repeats timed runs after a warm-up, 2·n³ FLOPs each.
"""
from __future__ import annotations

import argparse

import torch

from common import add_common_args, cpu_share, matmul_peak_flops, report, setup


def main():
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    device = setup(args)
    sizes = [8192] if device.type == "cuda" else [1024, 2048, 4096]
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        for n in sizes:
            rate = matmul_peak_flops(device, n, dtype, args.repeats)
            report(f"matmul_{name}_{n}", rate / 1e9, "GFLOP/s")
    print(f"# done, {cpu_share()}")


if __name__ == "__main__":
    main()
