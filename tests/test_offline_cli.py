"""`minirlhf dpo | rrhf | sft` end to end on tiny models, and their bad input: one line, exit status 2, nothing
written. The commands run as subprocesses, two at a time, in one module-scoped fixture (most of each one's
time is importing torch); each test then checks its own case."""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import write_tiny_policy

from minirlhf import GPT, Tokenizer

TEXTS = ["这部电影很好看", "这部电影很无聊", "刚收到货，感觉很好", "刚收到货，感觉很差"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("offline_cli")
    write_tiny_policy(w / "init", TEXTS, n_layer=1, n_embd=16, block_size=32)
    pairs = [{"prompt": "这部电影很", "chosen": "好看", "rejected": "无聊"},
             {"prompt": "刚收到货，感觉", "chosen": "很好", "rejected": "很差"}] * 3
    rankings = [{"query": "这部电影很", "responses": ["好看", "无聊", "一般"], "scores": [1, -1, 0],
                 "sources": ["provided", "provided", "sampled"]},
                {"query": "刚收到货，感觉", "responses": ["很好", "很差"], "scores": [2, 0]},      # all provided
                {"query": "这部电影很", "responses": ["好", "差"], "scores": [1, 0],
                 "sources": ["provided", "sampled"]}] * 2
    demos = [{"prompt": "这部电影很", "response": "好看"}, {"prompt": "刚收到货，感觉", "response": "很好"}] * 3
    files = {"pairs": jsonl(w / "pairs.jsonl", pairs), "rankings": jsonl(w / "rankings.jsonl", rankings),
             "demos": jsonl(w / "demos.jsonl", demos),
             "bad_pairs": jsonl(w / "bad_pairs.jsonl", [pairs[0], {"prompt": "x", "chosen": "好"}]),
             "bad_rankings": jsonl(w / "bad_rankings.jsonl", rankings[:2] + [{**rankings[0], "sources": ["me"] * 3}]),
             "bad_demos": jsonl(w / "bad_demos.jsonl", [demos[0], {"prompt": "x", "response": 3}])}
    small = ["--steps", "3", "--batch_size=2", "--eval_every=2", "--val_fraction=0.2"]
    cmd = lambda stage, data, out, *extra: [sys.executable, "-m", "minirlhf", stage, "--data", str(files[data]),
                                            "--init", str(w / "init"), "--out", str(w / out), *extra]
    cases = {
        "dpo": cmd("dpo", "pairs", "dpo", *small, "--seed", "3", "--beta=0.2"),
        "rrhf": cmd("rrhf", "rankings", "rrhf", *small, "--only_use_provide=true", "--save-every", "1"),
        "sft": cmd("sft", "demos", "sft", *small),
        "dpo bad line": cmd("dpo", "bad_pairs", "never1"),
        "rrhf bad line": cmd("rrhf", "bad_rankings", "never2"),
        "sft bad line": cmd("sft", "bad_demos", "never3"),
        "dpo unknown key": cmd("dpo", "pairs", "never4", "--gamma=1"),
        "dpo ipo on sums": cmd("dpo", "pairs", "never5", "--loss_type=ipo", "--average_logps=false"),
    }
    run = lambda argv: subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300)
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(cases, pool.map(run, cases.values())))
    return w, files, results


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("stage, keys", [("dpo", ["dpo/loss", "rewards/accuracy", "rewards/margin"]),
                                         ("rrhf", ["rrhf/loss", "rrhf/rank_loss", "rrhf/sft_loss", "rrhf/accuracy"]),
                                         ("sft", ["sft/loss", "sft/grad_norm"])])
def test_each_command_writes_a_model_directory(world, stage, keys):
    w, _, results = world
    r = results[stage]
    assert r.returncode == 0, r.stderr[-2000:]
    out = w / stage
    GPT.from_pretrained(out)
    Tokenizer.from_file(out / "tokenizer.json")
    metrics = rows(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(k in metrics[0] for k in keys)
    assert "val/loss" in metrics[1] and "val/loss" in metrics[2]
    assert list((out / "plots").glob("*.png")) and (out / "checkpoints").is_dir()


def test_flags_and_overrides_reach_the_config(world):
    w, _, results = world
    dpo = json.loads((w / "dpo" / "train_config.json").read_text())
    assert (dpo["seed"], dpo["beta"], dpo["steps"], dpo["batch_size"]) == (3, 0.2, 3, 2)
    rrhf = json.loads((w / "rrhf" / "train_config.json").read_text())
    assert rrhf["only_use_provide"] is True and rrhf["save_every"] == 1
    warnings = [line for line in results["rrhf"].stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: 2 of 6 queries have fewer than two provided responses and were dropped"]


@pytest.mark.parametrize("case, file, line, words", [
    ("dpo bad line", "bad_pairs", 2, "missing field 'rejected'"),
    ("rrhf bad line", "bad_rankings", 3, "'sources'[0] must be one of"),
    ("sft bad line", "bad_demos", 2, "field 'response' must be a string, got int"),
    ("dpo unknown key", None, None, "unknown config key 'gamma'"),
    ("dpo ipo on sums", None, None, "--loss_type=ipo needs per-token"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(world, case, file, line, words):
    w, files, results = world
    r = results[case]
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    if file is not None:
        assert r.stderr.startswith(f"{files[file]}:{line}: ")
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not list(w.glob("never*"))
