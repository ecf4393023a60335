"""The Dr. GRPO length bias, looked for on `minirlhf arithmetic` (Liu et al. 2025, "Understanding R1-Zero-Like
Training: A Critical Perspective").

Liu et al. found two biases in GRPO's loss. Averaging each response's token losses (loss_type=grpo, the
per-sequence mean) gives a wrong answer of L tokens a penalty of 1/L per token, so a longer wrong answer is
penalised less and wrong answers drift longer; dividing by the group's std weights prompts that are almost
always or almost never answered right the most. Dr. GRPO (loss_type=dr_grpo, scale_rewards=none) removes both.
This script trains GRPO from the same SFT model three ways and draws the length of wrong (and right) answers and
the held-out accuracy over training:

    grpo      loss_type=grpo,    scale_rewards=group    the original GRPO: both biases
    bnpo      loss_type=bnpo,    scale_rewards=group    the recipe's default (token mean over the batch)
    dr_grpo   loss_type=dr_grpo, scale_rewards=none     Dr. GRPO

How to run (after `minirlhf arithmetic`, whose init/ and sft/ it copies, so that every variant starts from the
same model; each variant's GRPO then takes about a minute on 2 cores):
    python examples/dr_grpo_length_bias.py --run runs/arithmetic --out runs/dr_grpo
Writes OUT/<variant>/ (each an arithmetic run with GRPO only), OUT/length_bias.json and OUT/length_bias.png.
"""
import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from minirlhf.config import from_dict
from minirlhf.plots import figure, save_figure
from minirlhf.recipes.arithmetic import ArithmeticConfig, run_arithmetic

VARIANTS = {"grpo": dict(loss_type="grpo", scale_rewards="group"),
            "bnpo": dict(loss_type="bnpo", scale_rewards="group"),
            "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none")}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--run", default="runs/arithmetic", help="a finished `minirlhf arithmetic` run (its init/, sft/)")
parser.add_argument("--out", default="runs/dr_grpo", help="where the variants' runs, the json and the figure go")
args = parser.parse_args()

run, out = Path(args.run), Path(args.out)
base = from_dict(ArithmeticConfig, json.loads((run / "arithmetic_config.json").read_text()))
curves = {}
for name, options in VARIANTS.items():
    variant = out / name
    for stage in ("init", "sft"):                    # the same starting model: the stage cache reuses the copies
        if not (variant / stage).exists():
            shutil.copytree(run / stage, variant / stage)
    (variant / "arithmetic_config.json").write_text((run / "arithmetic_config.json").read_text())
    config = replace(base, methods="grpo", grpo=replace(base.grpo, loss_aggregation="token_mean", **options))
    report = run_arithmetic(variant, config)
    curves[name] = {"options": options, "curve": report["curves"]["grpo"],
                    "after": {k: v for k, v in report["evaluation"]["grpo"]["heldout"].items() if k != "examples"}}

(out / "length_bias.json").write_text(json.dumps(curves, indent=1))
fig = figure(figsize=(14, 4))
axes = fig.subplots(1, 3)
for name, r in curves.items():
    its = [p["iteration"] for p in r["curve"]]
    for ax, key in zip(axes, ("heldout/length_wrong", "heldout/length_right", "heldout/pass@1")):
        ax.plot(its, [p[key] for p in r["curve"]], "o-", ms=3, label=name)
for ax, title in zip(axes, ("length of WRONG held-out answers (tokens)", "length of right held-out answers",
                            "held-out accuracy (sampled, T = 1)")):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("GRPO iteration")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
save_figure(fig, out / "length_bias.png", "The Dr. GRPO length bias, looked for: GRPO's loss normalisations")
print(f"{'variant':8s} {'wrong len start → end':>22s} {'right len start → end':>22s} {'held-out pass@1':>16s}")
for name, r in curves.items():
    c = r["curve"]
    print(f"{name:8s} {c[0]['heldout/length_wrong']:10.2f} → {c[-1]['heldout/length_wrong']:.2f} "
          f"{c[0]['heldout/length_right']:13.2f} → {c[-1]['heldout/length_right']:.2f} {r['after']['pass@1']:16.3f}")
print(f"figure: {out / 'length_bias.png'}")
