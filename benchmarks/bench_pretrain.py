"""Pretraining throughput: tokens/s, achieved FLOP/s and its fraction of peak, peak memory.

    python benchmarks/bench_pretrain.py [--threads N]                         # CPU, 4×256, fp32
    python benchmarks/bench_pretrain.py --device cuda --preset gpt2-124m      # GPU, 12×768, bf16 autocast
    python benchmarks/bench_pretrain.py --device cuda --preset gpt2-124m --compile

One step is exactly what minirlhf.sft.pretrain does per step, minus data loading and logging:
lm_loss (forward, fp32 cross-entropy), backward, clip_grad (global norm 1.0), AdamW (make_adamw: fused
on CUDA). Batches are random token ids filling every position (no padding), so every position is a
trained token: tokens per step = batch · block_size.

Achieved FLOP/s = tokens/s × (6·N + 12·L·d·T) (common.py: N = parameters in matmuls, L layers, d width,
T = block_size). Fraction of peak: on CPU against this machine's fp32 2048³ matmul rate (--peak-gflops,
e.g. bench_peak.py's figure, else measured in the same run); on CUDA against the datasheet dense bf16
peak (--peak-tflops, default 989.4 = H100/H200 SXM) and against the measured bf16 8192³ matmul rate.
--compile wraps the model in torch.compile, as PretrainConfig.compile (`minirlhf pretrain --compile=true`) does.
"""
from __future__ import annotations

import argparse

import torch

from common import (add_common_args, cpu_share, gpt, median_seconds, peak_flops, peak_rss_mib, report, setup,
                    train_flops_per_token)
from minirlhf.optim import clip_grad, make_adamw
from minirlhf.runtime import autocast
from minirlhf.sft import lm_loss

PRESETS = {  # name: (n_layer, n_head, n_embd, block_size, batch_size)
    "tiny": (4, 4, 256, 96, 32),          # PretrainConfig's defaults
    "gpt2-124m": (12, 12, 768, 1024, 16),  # GPT-2 small's shape (vocab stays --vocab)
}


def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="CUDA: datasheet dense bf16 peak")
    args = parser.parse_args()
    device = setup(args)
    n_layer, n_head, n_embd, T, B = PRESETS[args.preset]
    B = args.batch_size or B
    model = gpt(n_layer, n_head, n_embd, args.vocab, T, args.seed, device).train()
    print(f"# model {n_layer}×{n_embd} ({n_head} heads), vocab {args.vocab}, "
          f"{model.num_params() / 1e6:.2f}M params, "
          f"batch {B} × {T} tokens, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}"
          f"{', torch.compile' if args.compile else ''}")
    optimizer = make_adamw(model, 1e-4, 0.1)
    forward = torch.compile(model) if args.compile else model
    ids = torch.randint(1, args.vocab, (B, T + 1), device=device)  # the model sees T tokens, predicts T

    def step():
        with autocast(device):
            loss = lm_loss(forward, ids, pad_id=0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad(model, 1.0)  # reads the norm back: one host sync per step, as in pretrain()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(step, args.steps, device, warmup=args.warmup)
    tokens_per_s = B * T / seconds
    flops = tokens_per_s * train_flops_per_token(model, T)
    report("pretrain_step", seconds * 1e3, "ms")
    report("pretrain_tokens_per_s", tokens_per_s, "tokens/s", ".0f")
    report("pretrain_achieved", flops / 1e9, "GFLOP/s")
    if device.type == "cuda":
        report("pretrain_peak_cuda_memory", torch.cuda.max_memory_allocated(device) / 2**20, "MiB", ".0f")
        report("pretrain_mfu_vs_datasheet_bf16", 100 * flops / (args.peak_tflops * 1e12),
               f"% of {args.peak_tflops} TFLOP/s")
        peak, how = peak_flops(args, device)
        report("pretrain_mfu_vs_measured_bf16_matmul", 100 * flops / peak,
               f"% of {peak / 1e12:.0f} TFLOP/s ({how})")
    else:
        peak, how = peak_flops(args, device)
        report("pretrain_fraction_of_measured_fp32_peak", 100 * flops / peak,
               f"% of {peak / 1e9:.0f} GFLOP/s ({how})")
    report("pretrain_peak_rss", peak_rss_mib(), "MiB", ".0f")
    print(f"# done, {cpu_share()}")


if __name__ == "__main__":
    main()
