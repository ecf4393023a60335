"""Bad input, through the real command line: every case ends with exit status 2 and ONE line on stderr
(`file:line: ...` where a line is to blame), no traceback, nothing written, and every file that existed
before byte-identical afterwards.

The cases run as subprocesses of `python -m minirlhf`, a few at a time (most of each one's time is
importing torch), in one module-scoped fixture; each test then checks its own case."""
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from minirlhf import GPT, GPTConfig, RewardModel, Tokenizer
from minirlhf.data import load_prompts
from minirlhf.sft import PretrainConfig, pretrain

TEXTS = ["这家店的菜很好吃，服务也不错", "电影太长了，有点无聊", "质量很好，下次还来", "快递很慢，包装也破了"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))


def model_dir(path: Path, tok: Tokenizer, head: bool = False, n_embd: int = 16) -> Path:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=n_embd, block_size=32)
    (RewardModel(cfg) if head else GPT(cfg)).save_pretrained(path, tok)
    return path


def copy_with(src: Path, dst: Path, name: str, data: bytes | None = None, truncate: bool = False) -> Path:
    shutil.copytree(src, dst)
    f = dst / name
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2] if truncate else data)
    return dst


def build_world(w: Path) -> dict:
    """Every input file the cases use, good and bad. Returns the cases: name -> (argv, expected, file:line?)."""
    tok = Tokenizer.train(TEXTS, 300)
    other_tok = Tokenizer.train(["abcdefghijklmnopqrstuvwxyz"] * 3, 290)
    sft, rm = model_dir(w / "sft", tok), model_dir(w / "reward", tok, head=True)
    mismatched = model_dir(w / "mismatched", tok)
    other_tok.save(mismatched / "tokenizer.json")                         # tokenizer of 290, model of 300+
    other_rm = model_dir(w / "other_reward", other_tok, head=True)
    write(w / "texts.txt", "\n".join(TEXTS))
    write(w / "empty.txt", "\n  \n")
    tj = jsonl(w / "texts_badjson.jsonl", [{"text": "好"}, '{"text": "坏"'])
    tf = jsonl(w / "texts_nofield.jsonl", [{"text": "好"}, {"text": "坏"}, {"txt": "x"}])
    tt = jsonl(w / "texts_badtype.jsonl", [{"text": "好"}, {"text": 3}])
    write(w / "bad_tokenizer.json", "{not json")
    rk = jsonl(w / "rank_len.jsonl", [{"query": "q", "responses": ["a", "b"], "scores": [1, 0]},
                                      {"query": "q", "responses": ["a", "b", "c"], "scores": [1, 0]}])
    pj = jsonl(w / "pairs_badjson.jsonl", [{"prompt": "q", "chosen": "好", "rejected": "坏"}, "{oops}"])
    pairs = jsonl(w / "pairs.jsonl", [{"prompt": "q", "chosen": t, "rejected": t[::-1]} for t in TEXTS])
    prompts = jsonl(w / "prompts.jsonl", [{"prompt": t[:4]} for t in TEXTS])
    qj = jsonl(w / "prompts_badjson.jsonl", [{"prompt": "好"}, {"prompt": "坏"}, "not json"])
    qt = jsonl(w / "prompts_badtype.jsonl", [{"prompt": ["a list"]}])
    copy_with(sft, w / "garbage_config", "config.json", b"\x00garbage{{")
    copy_with(sft, w / "list_config", "config.json", b"[1, 2, 3]")
    cfg = json.loads((sft / "config.json").read_text())
    copy_with(sft, w / "indivisible_config", "config.json", json.dumps({**cfg, "n_head": 3}).encode())
    copy_with(sft, w / "string_config", "config.json", json.dumps({**cfg, "n_layer": "two"}).encode())
    copy_with(sft, w / "truncated_sft", "model.safetensors", truncate=True)
    copy_with(rm, w / "truncated_head", "reward_head.safetensors", truncate=True)
    run = w / "existing_run"
    pretrain(TEXTS, run, PretrainConfig(steps=2, save_every=1, vocab_size=300, n_layer=1, n_head=2, n_embd=16,
                                        block_size=32, batch_size=2, eval_every=100), show_progress=False)
    damaged = copy_with(run, w / "damaged_run", "checkpoints/step-2/model.safetensors", truncate=True)
    holder = w / "holder"
    holder.mkdir()
    write(holder / "texts.txt", "\n".join(TEXTS))
    (w / "not_a_run").mkdir()
    write(w / "not_a_run" / "notes.txt", "my notes")
    metrics_bad = w / "metrics_bad"
    metrics_bad.mkdir()
    write(metrics_bad / "metrics.jsonl", '{"step": 1}\n{"step": 2,\n')

    out = lambda name: w / f"out_{name}"  # noqa: E731  never created by a failing case
    pre = lambda name, *a: ["pretrain", "--out", out(name), "--steps", 2, *a]  # noqa: E731
    rew = lambda name, *a: ["reward", "--out", out(name), "--steps", 2, *a]  # noqa: E731
    ppo = lambda name, *a: ["ppo", "--out", out(name), "--iterations", 1, *a]  # noqa: E731
    return {
        # name: (argv, text that must appear, file:line prefix or None)
        "text missing": (pre("a", "--text", w / "nope.txt"), "file not found", None),
        "text empty": (pre("b", "--text", w / "empty.txt"), "no records", None),
        "text invalid json": (pre("c", "--text", tj), "invalid JSON", f"{tj}:2:"),
        "text missing field": (pre("d", "--text", tf), "missing field 'text'", f"{tf}:3:"),
        "text mistyped field": (pre("e", "--text", tt), "must be a string", f"{tt}:2:"),
        "unknown override": (pre("f", "--text", w / "texts.txt", "--n_layers=2"),
                             "unknown config key 'n_layers' (did you mean n_layer?); valid keys: steps", None),
        "mistyped override": (pre("g", "--text", w / "texts.txt", "--lr=fast"), "--lr: expected float", None),
        "inconsistent config": (pre("h", "--text", w / "texts.txt", "--n_embd=30", "--n_head=4"), "divisible", None),
        "bad tokenizer file": (pre("i", "--text", w / "texts.txt", "--tokenizer", w / "bad_tokenizer.json"),
                               "not a valid tokenizer.json", None),
        "missing flag": (["pretrain", "--text", w / "texts.txt"], "required: --out", None),
        "out holds a run": (["pretrain", "--text", w / "texts.txt", "--out", run], "already exists", None),
        "out holds an input": (["pretrain", "--text", holder / "texts.txt", "--out", holder, "--overwrite"],
                               "must not be or contain an input", None),
        "overwrite a non-run dir": (["pretrain", "--text", w / "texts.txt", "--out", w / "not_a_run", "--overwrite"],
                                    "only replaces a minirlhf output", None),
        "resume a non-run dir": (["pretrain", "--text", w / "texts.txt", "--out", w / "not_a_run", "--resume"],
                                 "holds no minirlhf run", None),
        "resume damaged checkpoint": (["pretrain", "--text", w / "texts.txt", "--out", damaged, "--resume",
                                       "--steps", 4], "model.safetensors", None),
        "resume other model size": (["pretrain", "--text", w / "texts.txt", "--out", run, "--resume", "--steps", 4,
                                     "--n_embd=32", "--allow-changed=n_embd"], "does not match the model", None),
        "ranking lengths differ": (rew("j", "--data", rk, "--init", sft), "3 responses but 2 scores", f"{rk}:2:"),
        "pairs invalid json": (rew("k", "--data", pj, "--init", sft), "invalid JSON", f"{pj}:2:"),
        "config.json garbage": (rew("l", "--data", pairs, "--init", w / "garbage_config"), "not valid JSON", None),
        "config.json a list": (rew("m", "--data", pairs, "--init", w / "list_config"), "expected a JSON object", None),
        "config.json n_head": (rew("n", "--data", pairs, "--init", w / "indivisible_config"), "divisible", None),
        "config.json types": (rew("o", "--data", pairs, "--init", w / "string_config"), "positive integer", None),
        "weights truncated": (rew("p", "--data", pairs, "--init", w / "truncated_sft"),
                              "not a readable safetensors file", None),
        "vocab mismatch": (rew("q", "--data", pairs, "--init", mismatched), "tokenizer has", None),
        "reward unknown key": (rew("r", "--data", pairs, "--init", sft, "--epochs=3"), "unknown config key 'epochs'; valid keys: steps,", None),
        "prompts missing": (ppo("s", "--prompts", w / "nope.jsonl", "--init", sft, "--reward", rm), "file not found",
                            None),
        "prompts invalid json": (ppo("t", "--prompts", qj, "--init", sft, "--reward", rm), "invalid JSON", f"{qj}:3:"),
        "prompt mistyped": (ppo("u", "--prompts", qt, "--init", sft, "--reward", rm), "must be a string", f"{qt}:1:"),
        "reward tokenizer differs": (ppo("v", "--prompts", prompts, "--init", sft, "--reward", other_rm), "tokens",
                                     None),
        "reward head truncated": (ppo("w", "--prompts", prompts, "--init", sft, "--reward", w / "truncated_head"),
                                  "reward_head.safetensors", None),
        "reward dir without head": (ppo("x", "--prompts", prompts, "--init", sft, "--reward", sft),
                                    "reward_head.safetensors: file not found", None),
        "no room for a prompt": (ppo("y", "--prompts", prompts, "--init", sft, "--reward", rm, "--max_new_tokens=40"),
                                 "leaves no room", None),
        "minibatches don't divide": (ppo("z", "--prompts", prompts, "--init", sft, "--reward", rm, "--batch_size=6",
                                         "--num_minibatches=4"), "must divide", None),
        "unknown estimator": (ppo("aa", "--prompts", prompts, "--init", sft, "--reward", rm, "--kl_estimator=k4"),
                              "one of k1, k2, k3", None),
        "out is init": (["ppo", "--prompts", prompts, "--init", sft, "--reward", rm, "--out", sft, "--overwrite"],
                        "must not be or contain an input", None),
        "overwrite with a bad init keeps the run": (["ppo", "--prompts", prompts, "--init", w / "truncated_sft",
                                                     "--reward", rm, "--out", run, "--overwrite"],
                                                    "not a readable safetensors file", None),
        "sample vocab mismatch": (["sample", "--model", mismatched, "--prompt", "好"], "tokenizer has", None),
        "sample truncated weights": (["sample", "--model", w / "truncated_sft", "--prompt", "好"],
                                     "not a readable safetensors file", None),
        "plot bad metrics line": (["plot", "--run", metrics_bad], "not valid JSON", f"{metrics_bad / 'metrics.jsonl'}:2:"),
    }


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    w = tmp_path_factory.mktemp("bad_input")
    cases = build_world(w)
    before = snapshot(w)

    def run(argv):
        return subprocess.run([sys.executable, "-m", "minirlhf", *map(str, argv)], capture_output=True, text=True,
                              env=ENV, timeout=300)
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(cases, pool.map(run, [argv for argv, _, _ in cases.values()])))
    return w, cases, done, before, snapshot(w)


CASES = ["text missing", "text empty", "text invalid json", "text missing field", "text mistyped field",
         "unknown override", "mistyped override", "inconsistent config", "bad tokenizer file", "missing flag",
         "out holds a run", "out holds an input", "overwrite a non-run dir", "resume a non-run dir",
         "resume damaged checkpoint",
         "resume other model size", "ranking lengths differ", "pairs invalid json", "config.json garbage",
         "config.json a list", "config.json n_head", "config.json types", "weights truncated", "vocab mismatch",
         "reward unknown key", "prompts missing", "prompts invalid json", "prompt mistyped",
         "reward tokenizer differs", "reward head truncated", "reward dir without head", "no room for a prompt",
         "minibatches don't divide", "unknown estimator", "out is init", "overwrite with a bad init keeps the run",
         "sample vocab mismatch", "sample truncated weights", "plot bad metrics line"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_no_traceback(results, name):
    w, cases, done, _, _ = results
    r = done[name]
    _, expected, prefix = cases[name]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr
    assert len(lines) == 1, r.stderr
    assert expected in lines[0], lines[0]
    if prefix is not None:
        assert lines[0].startswith(prefix), lines[0]
    assert r.stdout == ""


def test_every_case_is_covered_and_nothing_is_written_or_changed(results):
    w, cases, _, before, after = results
    assert sorted(CASES) == sorted(cases)
    assert after == before                                      # byte-identical, and no new file anywhere
    assert not list(w.glob("out_*"))


# ---------------------------------------------------------------- too-long prompts: cut from the left, one warning

def test_too_long_prompts_keep_their_end_with_one_warning():
    tok = Tokenizer.train(TEXTS, 300)
    long = "".join(TEXTS)
    with pytest.warns(UserWarning) as record:
        out = tok.encode_prompts([long, "好", long], 8)
    assert len(record) == 1 and str(record[0].message) == \
        "prompt 1: 2 prompts longer than 8 tokens were cut to their last 8 (also prompt 3)"
    assert out[0] == ([tok.bos_id] + tok.encode(long))[-8:] and out[1] == [tok.bos_id] + tok.encode("好")


def test_a_cut_prompt_read_from_a_file_is_named_by_its_file_and_line(tmp_path):
    tok = Tokenizer.train(TEXTS, 300)
    long = "".join(TEXTS)
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in ["好", long, "", long, long, long, long])
                    .replace('{"prompt": ""}', ""), encoding="utf-8")         # a blank line 3: lines, not indices
    prompts = load_prompts(path)
    assert prompts == ["好", long, long, long, long, long] and prompts[1].where == f"{path}:2"
    with pytest.warns(UserWarning) as record:
        tok.encode_prompts(prompts[:2], 8)
    assert [str(r.message) for r in record] == [f"{path}:2: a prompt longer than 8 tokens was cut to its last 8"]
    with pytest.warns(UserWarning) as record:
        tok.encode_prompts(prompts, 8)
    assert [str(r.message) for r in record] == [
        f"{path}:2: 5 prompts longer than 8 tokens were cut to their last 8 (also {path}:4, {path}:5 and 2 more)"]


def test_sample_cuts_a_too_long_prompt_with_one_warning_line(tmp_path):
    tok = Tokenizer.train(TEXTS, 300)
    model_dir(tmp_path / "m", tok)
    r = subprocess.run([sys.executable, "-m", "minirlhf", "sample", "--model", str(tmp_path / "m"),
                        "--prompt", "".join(TEXTS), "--n", "2", "--max-new-tokens", "8"],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    n = len(tok.encode_prompt("".join(TEXTS)))
    assert r.stderr.strip().splitlines() == [f"warning: the prompt ({n} tokens) was cut to its last 24 to leave 8 new "
                                             f"tokens in the model's 32 positions (block_size)"]
    assert len(r.stdout.strip().splitlines()) == 2
