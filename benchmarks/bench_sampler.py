"""Sampling speed: minirlhf.generate() against a naive uncached loop and transformers' generate().

    pip install -e .[bench]          # transformers, for the comparison only
    python benchmarks/bench_sampler.py [--threads N] [--device cpu|cuda] [--repeats 5] [--shape 64x48] [--no-hf]
                                       [--compile] [--no-naive]

Model: GPT-2, 4 layers, 4 heads, 256 wide, vocab 4096, block_size 176, random weights. The very same
weights go to transformers (our save_pretrained, their GPT2LMHeadModel.from_pretrained), and the script
checks that both give the same logits before timing anything.

Work: 8-token prompts (random ids), pure sampling (temperature 1, top_k 0, top_p 1) and no EOS, so every
run makes every token. transformers gets min_new_tokens = max_new_tokens (so EOS cannot be sampled; its
eos id is vocab-1), an attention_mask and a pad_token_id. Shapes: batch 64 × 48 new tokens (an RLHF
rollout) and batch 1 × 128 new tokens (a chat). Figure: new tokens per second = B·N / median seconds,
the contenders timed round-robin (common.interleaved_medians) so machine load hits them alike.

  minirlhf   generate(): prefill, then one cached step per token
  naive      the whole sequence through the model for every new token (no KV cache)
  hf         transformers GPT2LMHeadModel.generate(do_sample=True), its own KV cache
  compiled   (--compile) generate(compile_step=True): decode_step torch.compile'd; compiled before timing

On CUDA all three run under bf16 autocast (runtime.autocast), since generate() always does there; on CPU
all three are fp32.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from common import add_common_args, cpu_share, gpt, interleaved_medians, report, setup
from minirlhf import generate
from minirlhf.runtime import autocast
from minirlhf.sampling import left_pad, sample_next

SHAPES = [(64, 48), (1, 128)]  # (batch, new tokens)
PROMPT_LEN = 8


@torch.no_grad()
def naive_generate(model, prompts, max_new_tokens, generator):
    """No cache: re-run the full (B, P+t) sequence every step and sample from the last position."""
    ids, mask = left_pad(prompts, 0, model.lm_head.weight.device)
    for _ in range(max_new_tokens):
        with autocast(ids.device):
            logits = model(ids, mask)[:, -1]
        tok, _ = sample_next(logits, 1.0, 0, 1.0, generator)
        ids = torch.cat([ids, tok[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids


def load_hf(model, device):
    """Our weights, saved in HF GPT-2 format, loaded by transformers; checked to give the same logits."""
    import transformers
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        hf = transformers.GPT2LMHeadModel.from_pretrained(d).to(device).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), device=device)
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)).abs().max().item()
    if diff > 1e-3:
        raise SystemExit(f"transformers and minirlhf disagree on the same weights: max |Δlogit| = {diff}")
    print(f"# transformers {transformers.__version__} loaded the same weights (max |Δlogit| {diff:.1e}), "
          f"attention: {hf.config._attn_implementation}")
    return hf


def hf_runner(hf, prompts, max_new_tokens, device):
    ids, mask = left_pad(prompts, 0, device)
    eos = hf.config.vocab_size - 1

    def run():
        with torch.no_grad(), autocast(device):
            out = hf.generate(ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                              max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                              eos_token_id=eos, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + max_new_tokens
    return run


def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    parser.add_argument("--no-naive", action="store_true", help="skip the uncached loop")
    parser.add_argument("--shape", action="append", help="BxN, e.g. 64x48 (repeatable; default: 64x48 and 1x128)")
    parser.add_argument("--compile", action="store_true", help="also time generate(compile_step=True)")
    args = parser.parse_args()
    device = setup(args)
    model = gpt(device=device)
    hf = None if args.no_hf else load_hf(model, device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    shapes = [tuple(map(int, sh.split("x"))) for sh in args.shape] if args.shape else SHAPES
    for B, N in shapes:
        prompts = torch.randint(4, model.config.vocab_size, (B, PROMPT_LEN)).tolist()
        runners = {"minirlhf": lambda: generate(model, prompts, N, generator=gen)}
        if args.compile:
            runners["compiled"] = lambda: generate(model, prompts, N, generator=gen, compile_step=True)
            t0 = time.perf_counter()
            for _ in range(2):  # the first length compiles, the second recompiles with dynamic shapes
                runners["compiled"]()
            print(f"# compiled the step in {time.perf_counter() - t0:.1f} s")
        if not args.no_naive:
            runners["naive"] = lambda: naive_generate(model, prompts, N, gen)
        if hf is not None:
            runners["hf"] = hf_runner(hf, prompts, N, device)
        seconds = interleaved_medians(runners, args.repeats, device)
        rate = {name: B * N / s for name, s in seconds.items()}
        for name in runners:
            report(f"sampler_b{B}_n{N}_{name}", rate[name], "tokens/s")
        for other in ("naive", "hf"):
            if other in rate:
                report(f"sampler_b{B}_n{N}_speedup_vs_{other}", rate["minirlhf"] / rate[other], "x", ".2f")
                if "compiled" in rate:
                    report(f"sampler_b{B}_n{N}_compiled_speedup_vs_{other}", rate["compiled"] / rate[other], "x",
                           ".2f")
    print(f"# done, {cpu_share()}")


if __name__ == "__main__":
    main()
