"""`minirlhf demo --quick`: the whole flagship pipeline at toy size, its report, its cache, its seed."""
import json
import shutil
from dataclasses import fields, replace

import pytest
import torch
from conftest import run_cli

from minirlhf import Tokenizer
from minirlhf.recipes import reviews
from minirlhf.recipes.sentiment_zh import known_characters, quick_config, train_tokenizer
from minirlhf.tokenizer import BYTE_TOKENS

TINY = ["--pretrain.steps=10", "--reward.steps=5", "--ppo.iterations=2", "--eval_samples=2",
        "--heldout_prompts=2", "--heldout_samples=1", "--judge_every=0"]


def demo(out, *extra):
    return run_cli("demo", "--quick", "--out", out, *extra)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    r = demo(out)
    return out, r


def test_quick_demo_writes_the_run_directory(quick_run):
    out, r = quick_run
    report = json.loads((out / "report.json").read_text())
    for key in ("judge_positive_rate", "reward", "distinct_2"):
        assert set(report[key]) == {"pretrained", "before", "after"}   # before: the reference policy, after SFT
    assert "after" in report["kl"] and report["heldout"]["prompts"]
    assert {"pretrain", "sft", "reward", "ppo", "total"} <= set(report["seconds"])
    assert report["config"]["pretrain"]["n_layer"] == 1 and 0.0 <= report["reward_model"]["test_accuracy"] <= 1.0
    for stage in ("pretrain", "sft", "reward", "policy"):
        assert (out / stage / "config.json").exists() and (out / stage / "model.safetensors").exists()
        assert (out / stage / "tokenizer.json").exists()
    assert (out / "reward" / "reward_head.safetensors").exists() and (out / "policy" / "value_head.safetensors").exists()
    assert (out / "tokenizer.json").exists()
    assert "刚收到货，感觉" in (out / "samples.md").read_text(encoding="utf-8")
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"rlhf.png", "ppo_losses.png"}
    assert (out / "pretrain" / "plots" / "lm_loss.png").exists() and (out / "reward" / "plots" / "reward_model.png").exists()
    assert json.loads((out / "sft" / "train_config.json").read_text())["steps"] == 10   # SFT on demonstrations
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "env/reward_mean" in r] == [1, 2, 3, 4]
    assert "stage" in r.stdout and "total" in r.stdout  # the timing table
    assert r.stdout.splitlines()[:4] == ["training pretrain/", "training sft/", "training reward/", "training policy/"]
    assert "pretrained -> sft -> ppo" in r.stdout
    assert "  response alone (held-out)" in r.stdout                     # the console shows both splits
    machine = next(line for line in r.stdout.splitlines() if line.startswith("measured on: "))
    assert "torch threads" in machine and report["machine"]["torch"] == torch.__version__ in machine
    assert "--quick is a toy-size smoke test: its numbers mean nothing; run `minirlhf demo`" in r.stdout
    assert Tokenizer.from_file(out / "sft" / "tokenizer.json").tok.token_to_id("□") is not None  # the stand-in


def test_plot_command_draws_the_files_the_run_drew(quick_run, tmp_path):
    """One naming: `minirlhf plot --run DIR` redraws a demo directory's and each stage's plots/ under the names
    the demo and the trainers gave them."""
    out, _ = quick_run
    expected = {out: "rlhf.png", out / "pretrain": "lm_loss.png", out / "reward": "reward_model.png",
                out / "policy": "rlhf.png"}
    for run, figure in expected.items():
        copy = tmp_path / (run.name if run != out else "demo")
        copy.mkdir()
        shutil.copy(run / "metrics.jsonl", copy / "metrics.jsonl")
        run_cli("plot", "--run", copy)
        drew = sorted(p.name for p in (run / "plots").glob("*.png"))
        assert figure in drew and sorted(p.name for p in (copy / "plots").glob("*.png")) == drew


def test_rerun_skips_finished_stages_and_a_changed_stage_reruns_from_there(quick_run):
    out, _ = quick_run
    stages = ("pretrain", "sft", "reward", "policy")
    marks = {s: (out / s / "stage.json").stat().st_mtime_ns for s in stages}
    weights = {s: (out / s / "model.safetensors").read_bytes() for s in stages}
    r = demo(out)
    assert {s: (out / s / "stage.json").stat().st_mtime_ns for s in marks} == marks
    assert r.stdout.splitlines()[:4] == [f"reusing {s}/ (settings unchanged)" for s in stages]
    r = demo(out, "--ppo.kl_coef=0.3")  # a PPO field: pretraining and the reward model are reused
    assert (out / "sft" / "stage.json").stat().st_mtime_ns == marks["sft"]
    assert (out / "reward" / "model.safetensors").read_bytes() == weights["reward"]
    assert (out / "policy" / "stage.json").stat().st_mtime_ns != marks["policy"]
    assert json.loads((out / "report.json").read_text())["config"]["ppo"]["kl_coef"] == 0.3
    assert r.stdout.splitlines()[1:4] == ["reusing sft/ (settings unchanged)", "reusing reward/ (settings unchanged)",
                                          "re-training policy/ (settings changed: ppo.kl_coef=0.2 -> 0.3)"]
    r = demo(out, "--ppo.kl_coef=0.3", "--reward.lr=0.001")  # a reward field: the policy re-runs after it
    assert r.stdout.splitlines()[1:4] == ["reusing sft/ (settings unchanged)",
                                         "re-training reward/ (settings changed: reward.lr=0.0005 -> 0.001)",
                                         "re-training policy/ (reward/ re-ran, so its input changed)"]


def test_demo_texts_spell_every_character_as_one_token():
    """The demo's cure for `�` in samples: in every split, a character the char tokenizer lacks becomes the
    stand-in, so no text that the models learn from or are tested on holds a byte-fallback token."""
    config = quick_config()
    data = reviews.load_reviews(config.seed)
    tok = train_tokenizer([t[:config.max_chars] for t in data.train_pos + data.train_neg], config)
    byte_ids = {tok.tok.token_to_id(t) for t in BYTE_TOKENS}
    has_bytes = lambda texts: any(set(ids) & byte_ids for ids in tok.encode_batch(texts))  # noqa: E731
    mapped = known_characters(data, tok, config)
    for f in fields(data):
        raw, new = getattr(data, f.name), getattr(mapped, f.name)
        assert has_bytes(raw) and not has_bytes(new), f.name   # the raw corpus needs bytes at this vocabulary
        assert [len(t) for t in new] == [len(t) for t in raw]  # one character for one
    assert known_characters(data, tok, replace(config, stand_in="")) is data   # --stand_in= turns it off


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
    r = run_cli("demo", "--quick", "--out", tmp_path, check=False)
    assert r.returncode == 2 and "not a minirlhf demo run" in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1
