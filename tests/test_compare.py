"""`minirlhf compare --quick`: every method on the flagship task at toy size, its table, figure and cache."""
import json

import pytest
from conftest import run_cli

from minirlhf.errors import InputError
from minirlhf.recipes.compare import METHODS, CompareConfig, quick_compare_config, table

TINY = ["--gold.lm.steps=4", "--gold.rm.steps=2", "--demo.pretrain.steps=10", "--demo.reward.steps=5", "--demo.ppo.iterations=2", "--grpo.iterations=2",
        "--rloo.iterations=2", "--dpo.steps=2", "--rrhf.steps=2", "--preference_prompts=8", "--best_of_n=1,2",
        "--eval_points=1", "--eval_samples=1"]


def compare(out, *extra):
    return run_cli("compare", "--quick", "--out", out, *TINY, *extra)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    return out, compare(out)


def test_every_method_gets_a_curve_from_the_same_start(quick_run):
    out, r = quick_run
    report = json.loads((out / "compare.json").read_text())
    assert list(report["methods"]) == list(METHODS)
    start = report["methods"]["ppo"]["curve"][0]
    for name in ("ppo", "grpo", "rloo", "dpo", "rrhf"):
        curve = report["methods"][name]["curve"]
        assert curve[0] == start and curve[0]["x"] == 0 and len(curve) >= 2   # sft, evaluated once, same seed
        assert curve[-1]["x"] == 2                                             # the last iteration / step
        for p in curve:
            assert 0 <= p["judge_positive_rate"] <= 1 and p["kl"] == p["kl"]
            assert 0 <= p["gold"] <= 1 and p["gold_se"] >= 0                  # the ground truth, every point
    bon = report["methods"]["best_of_n"]["curve"]
    assert [p["x"] for p in bon] == [1, 2] and bon[0]["kl"] == 0.0 and bon[1]["kl"] > 0
    assert (out / "frontier.png").stat().st_size > 0
    assert "| best-of-2 | ≤ " in (out / "compare.md").read_text(encoding="utf-8")
    assert "| gold ± se |" in (out / "compare.md").read_text(encoding="utf-8") and "tau" in report["gold"]
    assert json.loads((out / "preferences.json").read_text())["pairs"] > 0
    assert "| dpo |" in r.stdout and "frontier:" in r.stdout
    assert "--quick is a toy-size smoke test: its numbers mean nothing; run `minirlhf compare`" in r.stdout


def test_rerun_reuses_every_method_and_a_changed_one_reruns_alone(quick_run):
    out, _ = quick_run
    r = compare(out)
    assert all(f"reusing {m}/ (settings unchanged)" in r.stdout for m in ("sft", "reward", "gold", *METHODS))
    r = compare(out, "--rloo.kl_coef=0.1")
    assert "re-training rloo/ (settings changed: config.kl_coef=0.2 -> 0.1)" in r.stdout
    assert all(f"reusing {m}/" in r.stdout for m in ("sft", "reward", "ppo", "grpo", "dpo", "rrhf"))


def test_bad_settings_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match="unknown nope"):
        CompareConfig(methods="ppo,nope")
    with pytest.raises(InputError, match="preference_k must be at least 2"):
        CompareConfig(preference_k=1)
    r = run_cli("compare", "--quick", "--out", tmp_path / "x", "--grpo.group_size=1", check=False)
    assert r.returncode == 2 and "needs at least 2 responses per prompt" in r.stderr
    assert not (tmp_path / "x").exists()
    r = run_cli("compare", "--quick", "--out", tmp_path / "x", "--grpo.seed=3", check=False)
    assert r.returncode == 2 and "top-level --seed" in r.stderr


def test_table_marks_best_of_n_kl_as_a_bound():
    pt = dict(reward=0.5, kl=0.2, judge_positive_rate=0.9, judge_positive_rate_response=0.8, distinct_2=0.5)
    text = table({"ppo": {"curve": [{"x": 0, **pt}, {"x": 3, **pt}], "seconds": 1.0},
                  "best_of_n": {"curve": [{"x": 4, **pt}], "seconds": 2.0}})
    assert "| sft (start) | 0 |" in text and "| ppo | 0.20 |" in text and "| best-of-4 | ≤ 0.20 |" in text
    assert "gold" not in text                                            # --with_gold=false: no gold column
    text = table({"ppo": {"curve": [{"x": 0, **pt, "gold": 0.61, "gold_se": 0.02}], "seconds": 1.0}})
    assert "| gold ± se |" in text and "| sft (start) | 0 | +0.500 | 0.610 ± 0.020 | 0.900 |" in text


def test_without_the_gold_a_method_keeps_its_stage_hash():
    from minirlhf.recipes.compare import method_settings
    c = CompareConfig()
    assert "gold" not in method_settings("ppo", c) and method_settings("ppo", c, "abc")["gold"] == "abc"


def test_quick_preset_is_small():
    c = quick_compare_config()
    assert c.demo.quick and c.grpo.iterations <= 4 and c.dpo.steps <= 8


def test_evaluation_steps_are_log_spaced_and_end_at_the_last():
    from minirlhf.recipes.compare import eval_steps
    assert sorted(eval_steps(100, 8)) == [1, 2, 4, 7, 14, 27, 52, 100]
    assert eval_steps(2, 1) == {2} and sorted(eval_steps(5, 2)) == [1, 5]
