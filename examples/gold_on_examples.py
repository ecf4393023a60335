"""What the sandbox's gold says of real reviews, of the reference's samples and of over-optimised loops.

The gold (minirlhf.gold.GoldReward) of a `minirlhf overopt` run, read term by term — sentiment σ(r̂), repetition,
the gold language model's NLL, fluency, gold — on five groups of texts:
  * real test-split reviews (positive, negative), which no stage trained on;
  * the reference policy's samples of the prompt pool (the run's overopt.json, `start_samples`);
  * the last samples of each of the run's PPO runs (overopt.json, `rl_samples`);
  * the loops that the earlier snownlp-judged run ended on (docs/overopt-snownlp/overopt.json), which that
    run's judge rated 1.00.

How to run (after `minirlhf overopt`, whose gold/ it loads):
    python examples/gold_on_examples.py --run runs/overopt
    python examples/gold_on_examples.py --run runs/overopt --show 3     # also 3 texts of each group
"""
import argparse
import json
from pathlib import Path

from minirlhf.gold import GoldReward
from minirlhf.recipes import reviews

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--run", default="runs/overopt", help="a minirlhf overopt run directory (its gold/ and overopt.json)")
parser.add_argument("--show", type=int, default=0, help="also print this many texts of each group")
parser.add_argument("--real", type=int, default=200, help="real test-split reviews of each polarity")
args = parser.parse_args()

run = Path(args.run)
gold = GoldReward.load(run / "gold")
report = json.loads((run / "overopt.json").read_text(encoding="utf-8"))
max_chars = report["config"]["demo"]["max_chars"]
data = reviews.load_reviews(report["config"]["seed"])
cut = lambda texts: [t[:max_chars] for t in texts[:args.real]]  # noqa: E731  (the gold's training cut)

groups = {  # name -> (prompts, responses): a real review split as the demo splits it, its first 5 characters
    "real positive reviews (test split)": [(t[:5], t[5:]) for t in cut(data.test_pos)],
    "real negative reviews (test split)": [(t[:5], t[5:]) for t in cut(data.test_neg)],
    "the reference's samples (sft)": [(s["prompt"], s["response"]) for s in report["start_samples"]],
}
for n_pairs, r in report["proxies"].items():
    groups[f"PPO's last samples, proxy N = {n_pairs}"] = [(s["prompt"], s["response"]) for s in r["rl_samples"]]
earlier = ROOT / "docs" / "overopt-snownlp" / "overopt.json"
if earlier.is_file():
    end = json.loads(earlier.read_text(encoding="utf-8"))["samples"]["end"]
    groups["the earlier run's loops (snownlp judge 1.00)"] = [(s["prompt"], s["response"]) for s in end]

print(f"gold of {run}: τ = {gold.tau:.3f}, ρ = {gold.rho}; means over each group")
print(f"{'group':46s} {'n':>4s} {'sentiment':>9s} {'rep':>5s} {'nll':>5s} {'fluency':>7s} {'gold':>6s}")
for name, pairs in groups.items():
    parts = gold.parts([p for p, _ in pairs], [r for _, r in pairs])
    mean = {k: sum(v) / len(v) for k, v in parts.items()}
    print(f"{name:46s} {len(pairs):4d} {mean['sentiment']:9.3f} {mean['repetition']:5.2f} {mean['nll']:5.2f} "
          f"{mean['fluency']:7.3f} {mean['gold']:6.3f}")
    for (p, r), g in list(zip(pairs, parts["gold"]))[:args.show]:
        print(f"    {g:.3f}  {p}{r}")
