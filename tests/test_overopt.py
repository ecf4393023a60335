"""`minirlhf overopt --quick`: the long low-KL PPO run's curve against √KL, and Gao et al.'s fit."""
import json
import math

import pytest
import torch
from conftest import run_cli

from minirlhf.recipes.overopt import fit_gao


def test_fit_recovers_alpha_and_beta_of_gaos_rl_form():
    d = [0.0, 0.3, 0.7, 1.1, 1.6, 2.2]
    r = [0.0 if x == 0 else x * (1.3 - 0.45 * math.log(x)) for x in d]
    alpha, beta = fit_gao(d, r)
    assert alpha == pytest.approx(1.3, abs=1e-9) and beta == pytest.approx(0.45, abs=1e-9)
    assert fit_gao([0.0, 0.5], [0.0, 0.2]) is None            # one point with d > 0 fits nothing


def test_quick_run_writes_its_curve_and_figure(tmp_path):
    out = tmp_path / "run"
    r = run_cli("overopt", "--quick", "--out", out, "--demo.pretrain.steps=10", "--demo.reward.steps=5",
                "--demo.ppo.iterations=4", "--eval_every=2", "--eval_samples=1")
    report = json.loads((out / "overopt.json").read_text())
    assert [p["x"] for p in report["curve"]] == [0, 1, 2, 3, 4]   # every 2nd, and log-spaced at the start
    assert all(p["sqrt_kl"] == pytest.approx(math.sqrt(max(p["kl"], 0)), abs=1e-4) for p in report["curve"])
    assert set(report["fits"]) == {"proxy", "gold"}
    assert (out / "overopt.png").stat().st_size > 0
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("iteration"))
    table = lines[header:header + 1 + len(report["curve"])]
    assert len({len(line) for line in table}) == 1, table           # the columns line up
    assert "-0.00" not in r.stdout and "--quick is a toy-size smoke test" in r.stdout
    assert "measured on: " in r.stdout and report["machine"]["torch"] == torch.__version__
