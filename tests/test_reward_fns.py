"""Reward functions as code (reward_fns.py): loading `module:function` and `file.py:function`, the one signature
and its checks, weighted sums, the ids TextReward hands over, and `--reward_fn` on the real command line."""
import json
import math
import sys

import pytest
import torch
from conftest import run_cli, write_tiny_rl_dirs

from minirlhf import GPT, Tokenizer, ValueHead
from minirlhf.errors import InputError
from minirlhf.reward_fns import call_checked, combine, load_reward_fn, parse_weights
from minirlhf.rollout import TextReward

TEXTS = ["今天天气很好", "我们喜欢这部电影", "真的很不错", "不好不好"]
GOOD = "def count_hao(prompts, responses):\n    return [r.count('好') for r in responses]\n"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def batch(n=2):
    return {"prompts": [f"p{i}" for i in range(n)], "responses": [f"r{i}" for i in range(n)],
            "prompt_ids": [[1, 2 + i] for i in range(n)], "response_ids": [[5 + i, 3] for i in range(n)]}


@pytest.fixture
def importable(tmp_path, monkeypatch):
    """tmp_path as the current directory, and sys.path and sys.modules as they were once the test is done."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


# ---------------------------------------------------------------- loading

def test_loads_a_function_from_a_file_path(tmp_path):
    path = write(tmp_path / "my_rewards.py", GOOD)
    fn = load_reward_fn(f"{path}:count_hao")
    assert fn(["q"], ["好好", "不"]) == [2, 0]


def test_loads_a_function_from_a_module_in_the_current_directory(importable):
    write(importable / "rewards_in_cwd.py", GOOD)
    fn = load_reward_fn("rewards_in_cwd:count_hao")
    assert fn.__module__ == "rewards_in_cwd" and fn(["q"], ["好"]) == [1]


@pytest.mark.parametrize("spec, message", [
    ("count_hao", "expected module:function or path/file.py:function"),
    ("nowhere/missing.py:count_hao", "nowhere/missing.py: file not found"),
    ("no_such_module_for_minirlhf:count_hao", "no module named 'no_such_module_for_minirlhf'"),
    ("my_rewards:nope", "my_rewards has no function 'nope'"),
])
def test_a_bad_spec_is_one_line_naming_it(importable, spec, message):
    write(importable / "my_rewards.py", GOOD)
    with pytest.raises(InputError, match=f"^--reward_fn {spec}: .*{message}"):
        load_reward_fn(spec)


@pytest.mark.parametrize("body, line, error", [
    ("import math\n\nx = 1 / 0\n", 3, "ZeroDivisionError"),
    ("\nimport json\njson.loads('{oops')\n", 3, "JSONDecodeError"),              # raised inside a library
    ("import not_installed_for_minirlhf\n", 1, "ModuleNotFoundError"),          # the file's import, not the spec's
    ("def f(:\n", 1, "SyntaxError"),
])
def test_a_module_whose_import_fails_is_named_by_its_file_and_line(importable, body, line, error):
    path = write(importable / "broken_rewards.py", body)
    for spec in (f"{path}:f", "broken_rewards:f"):
        with pytest.raises(InputError, match=f"importing it failed at {path}:{line}: {error}"):
            load_reward_fn(spec)


# ---------------------------------------------------------------- the signature

@pytest.mark.parametrize("source", [
    "def f(responses, prompts): return [0] * len(responses)",                  # prompts not first
    "def f(prompts, responses, scale): return [0] * len(responses)",           # a parameter no one passes
    "def f(prompts, responses, /): return [0] * len(responses)",               # not by keyword
    "def f(**kwargs): return [0]",
])
def test_a_wrong_signature_is_refused(tmp_path, source):
    path = write(tmp_path / "sig.py", source + "\n")
    with pytest.raises(InputError, match=rf"reward function {path}:f\(.*\): expected \(prompts, responses, "):
        load_reward_fn(f"{path}:f")


def test_names_it_needs_in_any_order_and_defaults_are_accepted(tmp_path):
    path = write(tmp_path / "ok.py", "def f(prompts, response_ids, scale=10):\n"
                                     "    return [scale * len(r) for r in response_ids]\n")
    fn = load_reward_fn(f"{path}:f")
    assert call_checked(fn, "f", batch()) == [20.0, 20.0]    # by keyword: response_ids, not responses, and scale kept


# ---------------------------------------------------------------- the scores

@pytest.mark.parametrize("scores, message", [
    ([1.0], "returned 1 scores for 2 responses"),
    ([0.5, math.nan], r"returned nan for response 1 \('r1'\): every score must be finite"),
    (3.0, "returned float, not one number a response"),
    (["good", "bad"], "returned list, not one number a response"),
])
def test_a_wrong_score_is_an_input_error_naming_the_function(scores, message):
    def bad(prompts, responses):
        return scores
    with pytest.raises(InputError, match=f"^reward function rewards.py:bad {message}"):
        call_checked(bad, "rewards.py:bad", batch())


def test_combine_is_the_weighted_sum():
    def length(prompts, responses):
        return [len(r) for r in responses]                      # 2, 2

    def last_id(prompts, response_ids):
        return [ids[0] for ids in response_ids]                 # 5, 6
    both = combine([length, last_id], ["length", "last_id"], parse_weights("0.5,-2", 2))
    assert call_checked(both, "both", batch()) == [0.5 * 2 - 2 * 5, 0.5 * 2 - 2 * 6]
    assert both(**batch()) == [-9.0, -11.0]
    assert combine([length, last_id])(**batch()) == [7.0, 8.0]  # 1 each by default


def test_weights_must_be_numbers_one_a_function():
    with pytest.raises(InputError, match="expected numbers separated by commas"):
        parse_weights("0.5;1", 2)
    with pytest.raises(InputError, match="--reward_weights 1,2,3: 3 weights for 2 --reward_fn"):
        parse_weights("1,2,3", 2)


def test_trl_names_and_kwargs_receive_the_right_values():
    got = {}

    def trl_style(prompts, completions, completion_ids, **kwargs):
        got.update(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        return [0.0] * len(completions)
    b = batch()
    call_checked(trl_style, "trl_style", b)
    assert got == {**b, "completions": b["responses"], "completion_ids": b["response_ids"]}


def test_text_reward_passes_prompt_ids_unpadded_and_response_ids_cut_at_the_response():
    tok = Tokenizer.train(TEXTS, 300)
    p1, p2 = (tok.encode_prompts([p])[0] for p in ("今天", "我们喜欢"))
    r1, r2 = tok.encode("很好"), tok.encode("不")
    P, N = max(len(p1), len(p2)), len(r1) + 2
    seq = torch.full((2, P + N), tok.pad_id)
    seq[0, P - len(p1):P], seq[1, P - len(p2):P] = torch.tensor(p1), torch.tensor(p2)   # left-padded prompts
    seq[0, P:P + len(r1) + 1] = torch.tensor(r1 + [tok.eos_id])
    seq[1, P:P + len(r2) + 1] = torch.tensor(r2 + [tok.eos_id])
    seq[1, P + len(r2) + 1] = 7                                          # garbage after EOS, masked out
    mask = torch.zeros(2, N)
    mask[0, :len(r1) + 1], mask[1, :len(r2) + 1] = 1, 1
    got = {}

    def spy(prompts, responses, prompt_ids, response_ids):
        got.update(prompts=prompts, responses=responses, prompt_ids=prompt_ids, response_ids=response_ids)
        return [len(ids) for ids in response_ids]
    scores = TextReward(spy, tok)(seq, mask)
    assert got == {"prompts": ["今天", "我们喜欢"], "responses": ["很好", "不"], "prompt_ids": [p1, p2],
                   "response_ids": [r1 + [tok.eos_id], r2 + [tok.eos_id]]}
    assert scores.tolist() == [len(r1) + 1, len(r2) + 1]


# ---------------------------------------------------------------- the command line

REWARDS = (
    "import math\n\n"
    "def one(prompts, responses):\n    return [1.0] * len(responses)\n\n"
    "def two_ids(prompts, response_ids):\n    return [2.0 for ids in response_ids]\n\n"
    "def swapped(responses, prompts):\n    return [0.0] * len(responses)\n\n"
    "def nan(prompts, responses):\n    return [math.nan] * len(responses)\n")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    d = write_tiny_rl_dirs(tmp_path_factory.mktemp("reward_fns"), TEXTS, prompts=["今天", "我们"])
    write(d / "rewards.py", REWARDS)
    write(d / "broken.py", "import not_installed_for_minirlhf\n")
    return d


def online(dirs, command, out, *flags):
    return [command, "--prompts", dirs / "prompts.jsonl", "--init", dirs / "sft", "--out", out,
            "--iterations", 1, "--max_new_tokens=6", "--num_minibatches=1", *flags]


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_cli_trains_on_weighted_reward_functions(dirs):
    rewards = dirs / "rewards.py"
    run_cli(*online(dirs, "grpo", dirs / "grpo", "--batch_size=8", "--group_size=4", "--reward_fn", f"{rewards}:one",
                    "--reward_fn", f"{rewards}:two_ids", "--reward_weights", "0.5,2"))
    assert rows(dirs / "grpo")[0]["env/reward_mean"] == pytest.approx(0.5 * 1 + 2 * 2)
    GPT.from_pretrained(dirs / "grpo")


def test_ppo_cli_trains_on_a_reward_function(dirs):
    run_cli(*online(dirs, "ppo", dirs / "ppo", "--batch_size=4", "--ppo_epochs=1",
                    "--reward_fn", f"{dirs / 'rewards.py'}:one"))
    assert rows(dirs / "ppo")[0]["env/reward_mean"] == pytest.approx(1.0)
    GPT.from_pretrained(dirs / "ppo")
    ValueHead(16).load(dirs / "ppo")


@pytest.mark.parametrize("flags, message", [
    (["--reward", "{d}/reward", "--reward_fn", "{d}/rewards.py:one"], "give --reward DIR (a reward model) or"),
    ([], "give --reward DIR (a reward model) or --reward_fn module:function (reward functions), one of the two"),
    (["--reward", "{d}/reward", "--reward_weights", "1"], "--reward_weights weighs --reward_fn functions"),
    (["--reward_fn", "{d}/broken.py:f"], "importing it failed at {d}/broken.py:1: ModuleNotFoundError"),
    (["--reward_fn", "{d}/rewards.py:swapped"], "reward function {d}/rewards.py:swapped(responses, prompts): expected"),
    (["--reward_fn", "{d}/rewards.py:nan"], "reward function {d}/rewards.py:nan returned nan for response 0"),
])
def test_cli_refuses_bad_reward_flags_with_one_line_and_status_2(dirs, tmp_path, flags, message):
    flags = [f.format(d=dirs) for f in flags]
    r = run_cli(*online(dirs, "grpo", tmp_path / "out", "--batch_size=4", "--group_size=2", *flags), check=False)
    *bars, last = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert message.format(d=dirs) in last and all(b.startswith("grpo:") for b in bars)   # NaN: after the bar
    assert (tmp_path / "out").exists() == ("returned nan" in message)                  # the others: before a run


def test_best_of_n_cli_keeps_the_reward_functions_best_and_takes_a_reward_model(dirs, tmp_path):
    length = tmp_path / "length.py"
    write(length, "def longest(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    out = tmp_path / "bon.jsonl"
    r = run_cli("best-of-n", "--model", dirs / "sft", "--prompts", dirs / "prompts.jsonl", "--reward_fn",
                f"{length}:longest", "--n", "8", "--max-new-tokens", "6", "--out", out)
    kept = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [k["prompt"] for k in kept] == ["今天", "我们"] and all(k["n"] == 8 for k in kept)
    assert all(k["score"] == len(k["response"]) for k in kept)
    one = run_cli("best-of-n", "--model", dirs / "sft", "--prompts", dirs / "prompts.jsonl", "--reward_fn",
                  f"{length}:longest", "--n", "1", "--max-new-tokens", "6")
    single = [json.loads(x) for x in one.stdout.splitlines()]
    assert all(b["score"] >= s["score"] for b, s in zip(kept, single))        # the best of 8 is at least one draw
    assert "best-of-8 of 2 prompts" in r.stderr and "KL to the model ≤ 1.204 nats" in r.stderr
    r = run_cli("best-of-n", "--model", dirs / "sft", "--prompts", dirs / "prompts.jsonl", "--reward", dirs / "reward",
                "--n", "4", "--max-new-tokens", "4")
    assert len(r.stdout.splitlines()) == 2
    bad = run_cli("best-of-n", "--model", dirs / "sft", "--prompts", dirs / "prompts.jsonl", check=False)
    assert bad.returncode == 2 and "give --reward DIR" in bad.stderr and "Traceback" not in bad.stderr
