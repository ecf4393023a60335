"""What every benchmark shares: flags, threads, a median timer, FLOP counts, peak RSS, the matmul peak.

Benchmarks print one figure per line, `name: value unit`, so RESULTS.md can quote them and a script can
grep them. They are not tests: nothing here asserts a speed.

FLOP counts (per token; N = parameters that take part in matmuls = all parameters minus the position
embedding, counting the tied wte/lm_head matrix once, as nanoGPT's MFU estimate does; L layers,
d = n_embd, T = context length the token attends over):

    forward            2·N + 4·L·d·T   (matmuls: 2 FLOPs per weight; attention: q·k and p·v, 2·2·d·T per layer)
    forward + backward 6·N + 12·L·d·T  (backward = twice the forward; PaLM appendix B, nanoGPT's estimate_mfu)

The attention term counts the full T×T score matrix even though causal attention needs half of it
(PaLM and nanoGPT count it so); at T ≤ 96 and d = 256 it is under 10% of the total either way.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import torch

from minirlhf import GPT, GPTConfig


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads (default: every core this process may use)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-gflops", type=float,
                        help="the peak to divide by (e.g. bench_peak.py's figure); default: measure it in this run")
    return parser


def peak_flops(args, device: torch.device) -> tuple[float, str]:
    """(FLOP/s, description) of the denominator of "fraction of peak": --peak-gflops, or measured now
    (fp32 2048³ on CPU, bf16 8192³ on CUDA, as bench_peak.py does)."""
    if args.peak_gflops:
        return args.peak_gflops * 1e9, "given by --peak-gflops"
    if device.type == "cuda":
        return matmul_peak_flops(device, 8192, torch.bfloat16), "measured bf16 8192³ matmul, this run"
    return matmul_peak_flops(device, 2048, torch.float32), "measured fp32 2048³ matmul, this run"


def setup(args) -> torch.device:
    """Apply --threads and --seed, print the machine line, return the device."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here; bf16 runs say so
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_model()
    print(f"# torch {torch.__version__}, {device.type} ({name}), threads {torch.get_num_threads()}, "
          f"python {platform.python_version()}, {load_average()}")
    return device


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def report(name: str, value: float, unit: str, fmt: str = ".1f"):
    print(f"{name}: {value:{fmt}} {unit}", flush=True)


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` calls, after `warmup` untimed calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(runners: dict, repeats: int, device: torch.device, warmup: int = 1) -> dict:
    """Median seconds of each runner, timed round-robin (A B C A B C ...) after `warmup` rounds.

    Round-robin rather than one after the other, so that load from other processes on a shared machine
    falls on every contender alike and the ratios stay fair even when the absolute figures wobble.
    """
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def load_average() -> str:
    """The 1-minute load average and the core count: a figure taken at load ≫ cores is suspect."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def cpu_share() -> str:
    """CPU seconds of this process / (wall seconds since start × torch threads), with the load average.

    PyTorch's threads spin while they wait, so an undisturbed compute-bound CPU run shows ~90-100%; a run
    during which other processes held the cores shows much less, and its figures should not be trusted.
    (Meaningless on CUDA, where the host mostly waits.)
    """
    cpu = sum(os.times()[:2]) - _START_CPU
    share = cpu / max(1e-9, (time.perf_counter() - _START) * torch.get_num_threads())
    return f"{load_average()}, cpu share {100 * share:.0f}%"


_START, _START_CPU = time.perf_counter(), sum(os.times()[:2])


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def gpt(n_layer=4, n_head=4, n_embd=256, vocab_size=4096, block_size=176, seed=0, device="cpu") -> GPT:
    """The benchmark model (default: 4×256 GPT-2, vocab 4096), randomly initialised, eval mode."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                       block_size=block_size)
    return GPT(config).to(device).eval()


def matmul_params(model: GPT) -> int:
    """N of the FLOP formulas: every parameter except the position embedding (tied wte counted once)."""
    return model.num_params() - model.transformer.wpe.weight.numel()


def forward_flops_per_token(model: GPT, context: float) -> float:
    c = model.config
    return 2 * matmul_params(model) + 4 * c.n_layer * c.n_embd * context


def train_flops_per_token(model: GPT, context: float) -> float:
    c = model.config
    return 6 * matmul_params(model) + 12 * c.n_layer * c.n_embd * context


def matmul_peak_flops(device: torch.device, n: int | None = None, dtype=torch.float32,
                      repeats: int = 5) -> float:
    """Measured dense matmul rate (FLOP/s) of an n×n×n product: the machine's practical peak.

    2·n³ FLOPs per product, median of `repeats` timed runs after a warm-up. On CPU at fp32 this is what
    MKL/oneDNN reaches with the current torch thread count; on CUDA, what cuBLAS reaches (TF32 off).
    """
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)  # random, never zeros
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1  # a CUDA product is ~ms: time a few back to back
    out = torch.empty(n, n, device=device, dtype=dtype)

    def run():
        for _ in range(inner):
            torch.mm(a, b, out=out)

    seconds = median_seconds(run, repeats, device, warmup=2)
    return inner * 2 * n**3 / seconds
