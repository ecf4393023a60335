"""`minirlhf ppo` end to end on tiny models, and resume giving the same numbers as an unbroken run."""
import json
import subprocess
import sys

import pytest
from conftest import check_online_resume, write_tiny_rl_dirs

from minirlhf import GPT, Tokenizer, ValueHead
from minirlhf.ppo import PPOConfig
from minirlhf.ppo import train_ppo

TEXTS = ["刚收到货，感觉很好", "这部电影很无聊", "说实话，真的很不错", "这次购物总的来说体验很差"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return write_tiny_rl_dirs(tmp_path_factory.mktemp("ppo"), TEXTS, n_embd=32, block_size=32,
                              prompts=["刚收到货，感觉", "这部电影很"])


SMALL = ["--batch_size=8", "--num_minibatches=2", "--ppo_epochs=1", "--max_new_tokens=6"]


def test_cli_writes_a_self_contained_policy(dirs):
    out = dirs / "policy"
    r = subprocess.run([sys.executable, "-m", "minirlhf", "ppo", "--prompts", str(dirs / "prompts.jsonl"),
                        "--init", str(dirs / "sft"), "--reward", str(dirs / "reward"), "--out", str(out),
                        "--iterations", "2", *SMALL], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2]
    GPT.from_pretrained(out)
    ValueHead(32).load(out)
    Tokenizer.from_file(out / "tokenizer.json")
    assert list((out / "plots").glob("*.png"))


def test_cli_rejects_a_bad_prompt_file(dirs):
    bad = dirs / "bad.jsonl"
    bad.write_text('{"prompt": "好"}\n{"promt": "x"}\n', encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "minirlhf", "ppo", "--prompts", str(bad), "--init", str(dirs / "sft"),
                        "--reward", str(dirs / "reward"), "--out", str(dirs / "never")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"{bad}:2:") and len(r.stderr.strip().splitlines()) == 1
    assert not (dirs / "never").exists()


def test_interrupted_then_resumed_run_matches_an_unbroken_one(dirs):
    cfg = PPOConfig(iterations=4, save_every=2, batch_size=8, num_minibatches=2, ppo_epochs=1, max_new_tokens=6,
                    seed=3, adaptive_kl=True, kl_target=0.5, kl_horizon=50)
    check_online_resume(train_ppo, dirs, ["刚收到货，感觉", "这部电影很"], cfg)
