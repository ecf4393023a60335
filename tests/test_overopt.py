"""`minirlhf overopt --quick`: the gold, proxies on gold labels, best-of-n and PPO against each proxy, Gao et al.'s
fits, and the figure (the fits themselves: tests/test_scaling_laws.py)."""
import json
import math

import pytest
import torch
from conftest import run_cli

from minirlhf.evaluation import best_of_n_kl_bound
from minirlhf.recipes.overopt import turn


def test_turn_measures_the_peak_and_the_drop_in_standard_errors():
    curve = [{"x": 0, "sqrt_kl": 0.0, "gold": 0.5, "gold_se": 0.01, "reward": 0.0},
             {"x": 1, "sqrt_kl": 1.0, "gold": 0.7, "gold_se": 0.03, "reward": 1.0},
             {"x": 2, "sqrt_kl": 2.0, "gold": 0.3, "gold_se": 0.04, "reward": 2.0}]
    t = turn(curve)
    assert (t["peak_x"], t["peak_gold"], t["final_gold"]) == (1, 0.7, 0.3)
    assert t["drop"] == pytest.approx(0.4) and t["drop_in_se"] == pytest.approx(0.4 / 0.05, abs=0.05)


def test_quick_run_writes_its_curves_fits_and_figure(tmp_path):
    out = tmp_path / "run"
    r = run_cli("overopt", "--quick", "--out", out, "--demo.pretrain.steps=10", "--demo.reward.steps=5",
                "--gold.lm.steps=6", "--gold.rm.steps=4", "--ppo.iterations=3", "--eval_samples=1")
    report = json.loads((out / "overopt.json").read_text())
    assert list(report["proxies"]) == ["16", "64"]
    for n, proxy in report["proxies"].items():
        assert proxy["gold_agreement"]["n"] == int(n) and 0 <= proxy["gold_agreement"]["agreement_with_gold"] <= 1
        bon, rl = proxy["best_of_n"], proxy["rl"]
        assert [p["x"] for p in bon] == [1, 2, 4, 8]
        assert all(p["kl"] == pytest.approx(best_of_n_kl_bound(p["x"]), abs=1e-4) for p in bon)
        assert bon[-1]["reward"] >= bon[0]["reward"]          # the best of 8 scores no lower than one sample
        assert [p["x"] for p in rl] == [0, 1, 2, 3]
        assert all(p["sqrt_kl"] == pytest.approx(math.sqrt(max(p["kl"], 0)), abs=1e-4) for p in rl)
        assert all(0 <= p["gold"] <= 1 and p["gold_se"] >= 0 for p in bon + rl)
        assert set(proxy["fits"]) == {"best_of_n", "rl"} and set(proxy["fits"]["rl"]) == {"gold", "proxy"}
    assert (out / "overopt.png").stat().st_size > 0
    assert (out / "gold" / "gold.json").is_file() and (out / "proxies" / "n16" / "stage.json").is_file()
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("N "))
    table = lines[header:header + 1 + 2 * len(report["proxies"])]
    assert len({len(line) for line in table}) == 1, table           # the columns line up
    assert "--quick is a toy-size smoke test" in r.stdout
    assert "measured on: " in r.stdout and report["machine"]["torch"] == torch.__version__
    again = run_cli("overopt", "--quick", "--out", out, "--demo.pretrain.steps=10", "--demo.reward.steps=5",
                    "--gold.lm.steps=6", "--gold.rm.steps=4", "--ppo.iterations=3", "--eval_samples=1")
    assert "reusing gold/" in again.stdout and "reusing n64/" in again.stdout and "reusing n16/" in again.stdout
