"""`minirlhf arithmetic`: the splits keep held-out and harder problems out of training, the reward scores right,
wrong and malformed answers as TinyZero does, pass@k is Chen et al.'s estimator, and the recipe runs end to end
with cached stages."""
import itertools
import json

import pytest

from minirlhf.errors import InputError
from minirlhf.recipes import arithmetic as recipe
from minirlhf.recipes import arithmetic_task as task
from minirlhf.reward_fns import call_checked, check_signature, load_reward_fn
from tests.conftest import run_cli

# ---------------------------------------------------------------------------------------------- the splits

def digits(n: int) -> int:
    return len(str(n))


@pytest.mark.parametrize("seed", [0, 1])
def test_held_out_and_harder_problems_are_never_training_problems_in_either_order(seed):
    s = task.make_splits(3000, 300, 200, min_digits=1, train_digits=2, hard_digits=3, seed=seed)
    train = {p.key for p in s.train}
    assert len(s.train) == 3000 and len(s.heldout) == 300 and len(s.harder) == 200
    assert not train & {p.key for p in s.heldout}
    assert not train & {p.key for p in s.harder}
    assert not {task.Problem(p.b, p.a).key for p in s.heldout} & train      # b+a held out with a+b
    assert len({p.key for p in s.heldout}) == 300 and len({p.key for p in s.harder}) == 200   # no repeats
    assert all(max(digits(p.a), digits(p.b)) <= 2 for p in s.train + s.heldout)
    assert all(max(digits(p.a), digits(p.b)) == 3 for p in s.harder)       # more digits than any trained


def test_splits_are_seeded_and_the_default_run_s_are_disjoint():
    c = recipe.ArithmeticConfig()
    a, b = recipe.splits(c), recipe.splits(c)
    assert a.heldout == b.heldout and a.train[:50] == b.train[:50]
    assert not {p.key for p in a.train} & {p.key for p in a.heldout + a.harder}
    assert recipe.splits(recipe.ArithmeticConfig(seed=1)).heldout != a.heldout


def test_every_character_of_the_task_is_one_token(tmp_path):
    tok = recipe.make_init(tmp_path / "init", recipe.quick_arithmetic_config())
    assert [len(tok.encode(d)) for d in "0123456789"] == [1] * 10
    p = task.Problem(12, 345)
    assert len(tok.encode(p.prompt + p.answer)) == len(p.prompt + p.answer)
    assert tok.decode(tok.encode(p.answer)) == "<answer>357</answer>"
    assert not any(t.startswith("<0x") for t in tok.tok.encode(task.ALPHABET).tokens)   # no byte fallback


def test_the_teacher_s_slip_forgets_the_first_carry_and_only_that():
    assert task.Problem(58, 67).teacher_answer(True) == "<answer>115</answer>"    # 8+7 carries; 125 - 10
    assert task.Problem(95, 5).teacher_answer(True) == "<answer>90</answer>"      # 100 - 10
    assert task.Problem(150, 70).teacher_answer(True) == "<answer>120</answer>"   # the tens carry: 220 - 100
    assert task.Problem(12, 345).teacher_answer(True) == task.Problem(12, 345).answer  # no carry, no slip
    assert task.Problem(58, 67).teacher_answer(False) == "<answer>125</answer>"
    demos = recipe.demonstrations([task.Problem(58, 67)] * 2000, 0.3, seed=0)
    assert 0.25 < sum(d.response == "<answer>115</answer>" for d in demos) / 2000 < 0.35
    assert recipe.demonstrations([task.Problem(58, 67)] * 50, 0.0, seed=0)[0].response == "<answer>125</answer>"


# ---------------------------------------------------------------------------------------------- the reward

@pytest.mark.parametrize("response, expected", [
    ("<answer>357</answer>", 1.0),               # right
    ("<answer>358</answer>", 0.1),               # well-formed, wrong
    ("<answer>0357</answer>", 1.0),              # the same number
    ("357", 0.0),                                # no tag
    ("<answer>357", 0.0),                        # cut before the tag closed (hit the length limit)
    ("<answer>357</answer>9", 0.0),              # text after the answer
    ("<answer></answer>", 0.0),                  # no number
    ("<answer>3 57</answer>", 0.0),
    ("", 0.0),
])
def test_reward_on_hand_made_responses(response, expected):
    assert task.arithmetic_reward(["12+345="], [response]) == [expected]


def test_the_reward_is_a_reward_function_the_trainers_and_the_cli_accept():
    fn = load_reward_fn("minirlhf.recipes.arithmetic_task:arithmetic_reward")
    check_signature(fn, "arithmetic_reward")
    batch = {"prompts": ["1+2=", "99+1="], "responses": ["<answer>3</answer>", "<answer>10</answer>"],
             "prompt_ids": [[1], [1]], "response_ids": [[5], [5]]}
    assert call_checked(fn, "arithmetic_reward", batch) == [1.0, 0.1]


# ---------------------------------------------------------------------------------------------- pass@k

def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of the C(n, k) ways to pick k of n samples (the first c right) holding a right one."""
    picks = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in pick) for pick in picks) / len(picks)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_is_the_chance_that_k_of_n_samples_hold_a_right_one(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            want = brute_force_pass_at_k(n, c, k)
            assert task.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
            assert task.pass_at_k_exact(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)


def test_pass_at_k_worked_example_and_edges():
    assert task.pass_at_k(4, 1, 2) == pytest.approx(0.5)     # 3 of the 6 pairs hold the right sample
    assert task.pass_at_k(16, 3, 1) == pytest.approx(3 / 16)  # pass@1 is the share right
    assert task.pass_at_k(16, 0, 16) == 0.0 and task.pass_at_k(16, 1, 16) == 1.0
    assert task.pass_at_k(200, 10, 16) == pytest.approx(task.pass_at_k_exact(200, 10, 16), abs=1e-12)
    with pytest.raises(ValueError):
        task.pass_at_k(4, 1, 5)


def test_sampled_stats_on_hand_made_samples():
    problems = [task.Problem(1, 2), task.Problem(3, 4)]
    texts = ["<answer>3</answer>", "<answer>4</answer>", "7", "<answer>7</answer>"]   # 2 samples a problem
    lengths = [19, 19, 2, 19]
    s = task.sampled_stats(problems, 2, texts, lengths, ks=(1, 2))
    assert s["pass@1"] == pytest.approx(0.5) and s["pass@2"] == pytest.approx(1.0)
    assert s["format_rate"] == pytest.approx(0.75)
    assert s["length_right"] == pytest.approx(19) and s["length_wrong"] == pytest.approx(10.5)
    assert s["reward"] == pytest.approx((1 + 0.1 + 0 + 1) / 4)


# ---------------------------------------------------------------------------------------------- the config

@pytest.mark.parametrize("overrides, message", [
    (dict(train_digits=4, hard_digits=4), "--hard_digits"),
    (dict(methods="grpo,dpo"), "--methods"),
    (dict(heldout_problems=40, train_digits=1), "--heldout_problems"),
    (dict(block_size=20), "--block_size"),
    (dict(eval_samples=0), "--eval_samples"),
])
def test_bad_settings_are_one_line_input_errors(overrides, message):
    with pytest.raises(InputError, match=message) as e:
        recipe.ArithmeticConfig(**overrides)
    assert "\n" not in str(e.value)


def test_bad_settings_on_the_command_line_exit_2_with_one_line(tmp_path):
    r = run_cli("arithmetic", "--quick", "--out", tmp_path / "run", "--hard_digits=1", check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = run_cli("arithmetic", "--quick", "--out", tmp_path / "other", check=False)
    assert r.returncode == 2 and "not a minirlhf arithmetic run" in r.stderr
    assert [f.name for f in (tmp_path / "other").iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------------------------------------- end to end

def test_quick_run_end_to_end_and_a_rerun_reuses_its_stages(tmp_path):
    out = tmp_path / "run"
    r = run_cli("arithmetic", "--quick", "--out", out)
    assert "training sft/" in r.stdout and "| sft | heldout |" in r.stdout
    report = json.loads((out / "arithmetic.json").read_text())
    assert {"task", "evaluation", "curves", "seconds", "config", "machine"} <= set(report)
    assert set(report["evaluation"]) == {"sft", "grpo", "rloo", "ppo"}
    for model in report["evaluation"].values():
        for split in ("heldout", "harder"):
            assert {"greedy_accuracy", "pass@1", "pass@4", "pass@16", "format_rate", "reward", "length_right",
                    "length_wrong"} <= set(model[split])
            assert 0 <= model[split]["pass@1"] <= model[split]["pass@4"] <= model[split]["pass@16"] <= 1
    iterations = report["config"]["grpo"]["iterations"]
    assert [p["iteration"] for p in report["curves"]["grpo"]] == list(range(0, iterations + 1, 2))
    assert (out / "arithmetic.md").read_text().startswith("| model | split |")
    assert (out / "arithmetic.png").stat().st_size > 0
    assert (out / "grpo" / "metrics.jsonl").is_file()

    r = run_cli("arithmetic", "--quick", "--out", out)
    assert "training" not in r.stdout
    for stage in ("init", "sft", "grpo", "rloo", "ppo"):
        assert f"reusing {stage}/" in r.stdout
    again = json.loads((out / "arithmetic.json").read_text())
    assert again["evaluation"] == report["evaluation"]            # same models, same seeds, same figures

    r = run_cli("arithmetic", "--quick", "--out", out, "--methods=grpo", "--grpo.lr=1e-4")
    assert "reusing sft/" in r.stdout and "re-training grpo/ (settings changed: config.lr=" in r.stdout
