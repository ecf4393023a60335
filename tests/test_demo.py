"""`minirlhf demo --quick`: the whole flagship pipeline at toy size, its report, its cache, its seed."""
import json
import subprocess
import sys

import pytest

TINY = ["--pretrain.steps=10", "--reward.steps=5", "--ppo.iterations=2", "--eval_samples=2",
        "--heldout_prompts=2", "--heldout_samples=1", "--judge_every=0"]


def demo(out, *extra):
    r = subprocess.run([sys.executable, "-m", "minirlhf", "demo", "--quick", "--out", str(out), *extra],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    r = demo(out)
    return out, r


def test_quick_demo_writes_the_run_directory(quick_run):
    out, r = quick_run
    report = json.loads((out / "report.json").read_text())
    for key in ("judge_positive_rate", "reward", "distinct_2"):
        assert set(report[key]) == {"before", "after"}
    assert "after" in report["kl"] and report["heldout"]["prompts"]
    assert {"pretrain", "reward", "ppo", "total"} <= set(report["seconds"])
    assert report["config"]["pretrain"]["n_layer"] == 1 and 0.0 <= report["reward_model"]["test_accuracy"] <= 1.0
    for stage in ("sft", "reward", "policy"):
        assert (out / stage / "config.json").exists() and (out / stage / "model.safetensors").exists()
        assert (out / stage / "tokenizer.json").exists()
    assert (out / "reward" / "reward_head.safetensors").exists() and (out / "policy" / "value_head.safetensors").exists()
    assert (out / "tokenizer.json").exists()
    assert "刚收到货，感觉" in (out / "samples.md").read_text(encoding="utf-8")
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"rlhf.png", "ppo_losses.png", "sft.png", "reward.png"}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "env/reward_mean" in r] == [1, 2, 3, 4]
    assert "stage" in r.stdout and "total" in r.stdout  # the timing table


def test_rerun_skips_finished_stages_and_a_changed_stage_reruns_from_there(quick_run):
    out, _ = quick_run
    marks = {s: (out / s / "stage.json").stat().st_mtime_ns for s in ("sft", "reward", "policy")}
    weights = {s: (out / s / "model.safetensors").read_bytes() for s in ("sft", "reward", "policy")}
    demo(out)
    assert {s: (out / s / "stage.json").stat().st_mtime_ns for s in marks} == marks
    demo(out, "--ppo.kl_coef=0.2")  # a PPO field: pretraining and the reward model are reused
    assert (out / "sft" / "stage.json").stat().st_mtime_ns == marks["sft"]
    assert (out / "reward" / "model.safetensors").read_bytes() == weights["reward"]
    assert (out / "policy" / "stage.json").stat().st_mtime_ns != marks["policy"]
    assert json.loads((out / "report.json").read_text())["config"]["ppo"]["kl_coef"] == 0.2


def test_same_seed_same_report(tmp_path):
    reports = []
    for name in ("a", "b"):
        demo(tmp_path / name, *TINY)
        report = json.loads((tmp_path / name / "report.json").read_text())
        report.pop("seconds")
        reports.append(report)
    assert reports[0] == reports[1]


def test_refuses_a_directory_that_is_not_a_demo_run(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "minirlhf", "demo", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a minirlhf demo run" in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1
