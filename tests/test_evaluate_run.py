"""`minirlhf evaluate --run DIR` on a trainer's policy run (not a demo directory): a tiny PPO run, evaluated
against its reference and reward model on the prompts given, reports reward, KL and distinct-n for the reference
and the policy, prints samples and writes DIR/evaluation.json; what the run does not record must be given."""
import json

import pytest
from conftest import run_cli, write_tiny_rl_dirs

TEXTS = ["刚收到货，感觉很好", "这部电影很无聊", "说实话，真的很不错", "这次购物总的来说体验很差"]
PROMPTS = ["刚收到货，感觉", "这部电影很"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = write_tiny_rl_dirs(tmp_path_factory.mktemp("evaluate"), TEXTS, n_embd=32, block_size=32, prompts=PROMPTS)
    # β = 0 and a large step: the policy moves well away from the reference in 4 iterations
    run_cli("ppo", "--prompts", w / "prompts.jsonl", "--init", w / "sft", "--reward", w / "reward",
            "--out", w / "policy", "--iterations", 4, "--batch_size=8", "--num_minibatches=2", "--ppo_epochs=2",
            "--max_new_tokens=6", "--lr=0.01", "--kl_coef=0")
    return w


def test_evaluate_reports_reward_kl_distinct_and_samples_of_a_ppo_run(world):
    w = world
    r = run_cli("evaluate", "--run", w / "policy", "--ref", w / "sft", "--reward", w / "reward",
                "--prompts", w / "prompts.jsonl", "--n", 8)
    report = json.loads((w / "policy" / "evaluation.json").read_text(encoding="utf-8"))
    before, after = report["reference_policy"], report["policy"]
    assert report["trainer"] == "ppo" and report["settings"]["max_new_tokens"] == 6   # the run's own length
    assert before["n"] == after["n"] == len(report["samples"]) == 2 * 8
    assert abs(before["kl"]) < 1e-4             # the reference against itself: 0 up to float rounding
    assert after["kl"] > 0.1                    # KL >= 0, and this policy has moved
    assert after["reward"] > before["reward"]   # ... towards the reward model's liking
    for stats in (before, after):
        assert 0 <= stats["distinct_1"] <= 1 and 0 <= stats["distinct_2"] <= 1
    assert {s["prompt"] for s in report["samples"]} == set(PROMPTS)
    assert sum(s["reward"] for s in report["samples"]) / 16 == pytest.approx(after["reward"])
    lines = r.stdout.splitlines()
    assert any(x.startswith("KL to reference (nats)") and x.endswith(f"-> {after['kl']:.3f}") for x in lines)
    assert any(x.startswith("reward (mean)") for x in lines) and any(x.startswith("distinct-2") for x in lines)
    assert sum(x.startswith(f"  {p} | ") for x in lines for p in PROMPTS) == 2        # a sample a prompt
    assert lines[-1].startswith(f"wrote {w / 'policy' / 'evaluation.json'}")


def test_evaluate_asks_for_what_the_run_does_not_record(world):
    w = world
    r = run_cli("evaluate", "--run", w / "policy", "--reward", w / "reward", check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "give --ref DIR (the run's --init), --prompts FILE" in r.stderr and "--reward DIR" not in r.stderr


def test_evaluate_refuses_a_reward_model_run(world, tmp_path):
    w = world
    (tmp_path / "train_config.json").write_text('{"steps": 1, "trainer": "reward"}')
    r = run_cli("evaluate", "--run", tmp_path, "--ref", w / "sft", "--reward", w / "reward",
                "--prompts", w / "prompts.jsonl", check=False)
    assert r.returncode == 2 and "a reward run, not a policy" in r.stderr
