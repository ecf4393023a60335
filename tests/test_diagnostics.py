"""The health checks (diagnostics.py) and `minirlhf doctor`: each rule fires on a run built to break it, live in a
real tiny run where one can be broken that way, and stays silent on the demo's healthy run."""
import json
from pathlib import Path

import pytest
from conftest import run_cli, write_tiny_rl_dirs

from minirlhf.diagnostics import RULE_NAMES, DiagnosticsConfig, Watch
from minirlhf.doctor import doctor
from minirlhf.errors import InputError, TrainingDiverged
from minirlhf.grpo import RLOOConfig, train_grpo
from minirlhf.ppo import PPOConfig, train_ppo
from minirlhf.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["刚收到货，感觉很好", "这部电影很无聊", "说实话，真的很不错", "这次购物总的来说体验很差"]
PROMPTS = ["刚收到货，感觉", "这部电影很"]


def healthy(i: int, **change) -> dict:
    """Iteration i of a PPO run that learns calmly; `change` maps a metric to a function of i."""
    row = {"iteration": i, "env/reward_mean": 0.02 * i, "env/reward_std": 1.0, "objective/kl": 0.05 * i,
           "objective/entropy": 3.0 - 0.01 * i, "ppo/clipfrac": 0.05, "ppo/approx_kl": 0.005, "ppo/ratio_max": 1.5,
           "ppo/explained_variance": 0.5, "tokens/response_len": 20.0, "tokens/truncated_frac": 0.3,
           "ppo/policy_loss": -0.01}
    return {**row, **{k: f(i) for k, f in change.items()}}


def grpo_row(i, **change):
    row = {k.replace("ppo/", "grpo/"): v for k, v in healthy(i).items() if k != "ppo/explained_variance"}
    return {**row, "grpo/zero_std_frac": 0.1, "grpo/loss": 0.0, **{k: f(i) for k, f in change.items()}}


def step_row(i, **change):
    row = {"step": i, "dpo/loss": 0.69 - 0.004 * i}
    if i % 10 == 0:
        row["val/loss"] = 0.69 - 0.003 * i
    return {**row, **{k: f(i) for k, f in change.items()}}


BROKEN = {   # rule -> rows of a run broken in the way the rule is for
    "zero_std_groups": [grpo_row(i, **{"grpo/zero_std_frac": lambda i: 1.0}) for i in range(1, 11)],
    "truncated": [healthy(i, **{"tokens/truncated_frac": lambda i: 1.0}) for i in range(1, 11)],
    "clipfrac_high": [healthy(i, **{"ppo/clipfrac": lambda i: 0.5}) for i in range(1, 11)],
    "approx_kl_high": [healthy(i, **{"ppo/approx_kl": lambda i: 0.4}) for i in range(1, 11)],
    "ratio_outliers": [healthy(i, **{"ppo/ratio_max": lambda i: 1e8 if i == 7 else 7.0}) for i in range(1, 11)],
    "negative_kl": [healthy(i, **{"objective/kl": lambda i: -1.0}) for i in range(1, 11)],
    "entropy_collapse": [healthy(i, **{"objective/entropy": lambda i: 3.0 * 0.8 ** i}) for i in range(1, 31)],
    "entropy_explosion": [healthy(i, **{"objective/entropy": lambda i: 3.0 + 0.2 * i}) for i in range(1, 31)],
    "value_useless": [healthy(i, **{"ppo/explained_variance": lambda i: -0.5}) for i in range(1, 31)],
    "kl_racing": [healthy(i, **{"objective/kl": lambda i: 1.5 * i}) for i in range(1, 31)],
    "length_hacking": [healthy(i, **{"tokens/response_len": lambda i: 10 + i}) for i in range(1, 31)],
    "reward_off_normalisation": [healthy(i, **{"env/reward_mean": lambda i: 3.0}) for i in range(1, 11)],
    "eval_falls": [healthy(i, **{"eval/judge_positive_rate": lambda i: 0.9 - 0.02 * max(0, i - 10)})
                   if i % 5 == 0 else healthy(i) for i in range(1, 41)],
    "overfitting": [step_row(i, **({"val/loss": lambda i: 0.5 + 0.01 * max(0, i - 40)} if i % 10 == 0 else {}))
                    for i in range(1, 101)],
    "loss_flat": [step_row(i, **{"dpo/loss": lambda i: 0.6931}) for i in range(1, 101)],
}


def fired(rows, context=None, **config):
    watch = Watch(DiagnosticsConfig(**config), context or {"reward_normalised": True})
    out = [f.rule.name for row in rows for f in watch.observe(row)]
    assert len(out) == len(set(out)), "a rule fired twice"
    return out


def test_every_rule_has_a_broken_run():
    assert set(BROKEN) == set(RULE_NAMES)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_each_rule_fires_on_its_broken_run_and_only_it(rule):
    assert fired(BROKEN[rule]) == [rule]


def test_a_healthy_run_fires_nothing_and_a_threshold_moves_the_line():
    assert fired([healthy(i) for i in range(1, 101)]) == []
    assert fired([grpo_row(i) for i in range(1, 101)]) == []
    assert fired(BROKEN["clipfrac_high"], clipfrac_max=0.6) == []
    assert fired([step_row(i, **{"dpo/loss": lambda i: 0.69 + 0.01 * (-1) ** i}) for i in range(1, 101)]) == []
    assert fired(BROKEN["reward_off_normalisation"], context={"reward_normalised": False}) == []  # a reward fn


def test_settings_are_checked():
    with pytest.raises(InputError, match="--stop_on: unknown rule 'clipfrac'"):
        PPOConfig(stop_on="clipfrac")
    with pytest.raises(InputError, match="--report_to: unknown 'tensorbord'"):
        PPOConfig(report_to="tensorbord")
    with pytest.raises(InputError, match="--diagnostics.window must be >= 1"):
        PPOConfig(diagnostics=DiagnosticsConfig(window=0))


# ---------------------------------------------------------------------------------------------- real tiny runs

@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return write_tiny_rl_dirs(tmp_path_factory.mktemp("diag"), TEXTS, n_embd=32, block_size=32, prompts=PROMPTS)


def records(out):
    return [(r["iteration"], d["rule"]) for r in read_metrics(out / "metrics.jsonl") for d in r.get("diagnostics", [])]


def test_a_reward_constant_per_group_fires_zero_std_groups_live_and_in_metrics(dirs, capsys):
    cfg = RLOOConfig(iterations=6, batch_size=8, group_size=4, num_minibatches=1, max_new_tokens=4, seed=0)
    train_grpo(PROMPTS, dirs / "sft", None, dirs / "const", cfg, reward_fn=lambda prompts, responses: [1.0] *
               len(responses), show_progress=False)
    assert ("zero_std_groups" in {rule for _, rule in records(dirs / "const")})
    assert capsys.readouterr().err.count("zero_std_groups: share of groups") == 1     # said once
    assert "zero_std_groups" in [f.rule.name for f in doctor(dirs / "const")[0].findings]


def test_a_max_new_tokens_that_truncates_everything_fires_truncated(dirs):
    cfg = PPOConfig(iterations=6, batch_size=8, num_minibatches=2, ppo_epochs=1, max_new_tokens=1, seed=0)
    train_ppo(PROMPTS, dirs / "sft", dirs / "reward", dirs / "short", cfg, show_progress=False)
    assert [rule for _, rule in records(dirs / "short")] == ["truncated"]
    rows = read_metrics(dirs / "short" / "metrics.jsonl")
    assert all(r["tokens/truncated_frac"] == 1.0 for r in rows)      # 1 token, and a random model's is not EOS


def test_a_learning_rate_that_blows_the_ratio_up_fires_ratio_outliers_and_stop_on_stops(dirs):
    cfg = PPOConfig(iterations=6, batch_size=8, num_minibatches=4, ppo_epochs=4, max_new_tokens=6, seed=0, lr=0.3,
                    max_grad_norm=0.0, stop_on="ratio_outliers")
    with pytest.raises(TrainingDiverged, match="health check ratio_outliers fired and --stop_on names it"):
        train_ppo(PROMPTS, dirs / "sft", dirs / "reward", dirs / "blown", cfg, show_progress=False)
    assert "ratio_outliers" in {rule for _, rule in records(dirs / "blown")}


def test_the_cli_stops_with_status_3_and_doctor_reads_the_run(dirs):
    args = ["ppo", "--prompts", dirs / "prompts.jsonl", "--init", dirs / "sft", "--reward", dirs / "reward",
            "--iterations", "3", "--batch_size=8", "--num_minibatches=2", "--ppo_epochs=1", "--max_new_tokens=1",
            "--stop_on", "truncated,clipfrac_high", "--diagnostics.window=2"]
    r = run_cli(*args, "--out", dirs / "cli", check=False)
    assert r.returncode == 3 and "health check truncated fired" in r.stderr.strip().splitlines()[-1]
    r = run_cli("doctor", "--run", dirs / "cli")
    assert "FIRED at iteration 2: truncated" in r.stdout and (dirs / "cli" / "doctor.png").is_file()
    assert "healthy:" in r.stdout and "verdict: 1 health check(s) fired" in r.stdout


def test_doctor_on_a_directory_without_metrics_is_one_line_and_status_2(tmp_path):
    r = run_cli("doctor", "--run", tmp_path, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no metrics.jsonl" in r.stderr
    r = run_cli("doctor", "--run", tmp_path / "missing", check=False)
    assert r.returncode == 2 and "not a directory" in r.stderr


def test_the_demos_healthy_run_reports_healthy(tmp_path):
    """docs/demo/metrics.jsonl is the committed demo run's (README): every rule silent."""
    (tmp_path / "demo.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text((ROOT / "docs" / "demo" / "metrics.jsonl").read_text())
    (d,) = doctor(tmp_path)
    assert d.findings == [], [f.message for f in d.findings]
    assert len(d.watch.worst) >= 8                       # most rules had something to judge


def test_tensorboard_files_hold_the_metrics(dirs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = PPOConfig(iterations=3, batch_size=8, num_minibatches=2, ppo_epochs=1, max_new_tokens=4, seed=0,
                    report_to="tensorboard")
    train_ppo(PROMPTS, dirs / "sft", dirs / "reward", dirs / "tb", cfg, show_progress=False)
    rows = read_metrics(dirs / "tb" / "metrics.jsonl")
    events = EventAccumulator(str(dirs / "tb" / "tensorboard")).Reload()
    numeric = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "iteration"}
    assert set(events.Tags()["scalars"]) == numeric
    for key in ("env/reward_mean", "objective/kl", "ppo/clipfrac"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(r["iteration"], pytest.approx(r[key], rel=1e-6, abs=1e-7)) for r in rows]
    assert json.loads((dirs / "tb" / "train_config.json").read_text())["report_to"] == "tensorboard"


def test_doctor_finds_a_recipes_nested_stages_in_pipeline_order(tmp_path):
    """An overopt run's layout: demo stages at the top, gold/lm/, gold/rm/, proxies/n<N>/, ppo/n<N>/ below."""
    (tmp_path / "demo.json").write_text("{}")
    layout = {"ppo/n16": [healthy(i) for i in range(1, 31)], "pretrain": [step_row(i) for i in range(1, 51)],
              "gold/lm": [step_row(i) for i in range(1, 51)], "proxies/n16": BROKEN["loss_flat"],
              "ppo/n4": [healthy(i) for i in range(1, 31)]}
    for name, rows in layout.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    diagnoses = doctor(tmp_path)
    assert [d.name for d in diagnoses] == ["pretrain", "gold/lm", "proxies/n16", "ppo/n4", "ppo/n16"]
    assert [[f.rule.name for f in d.findings] for d in diagnoses] == [[], [], ["loss_flat"], [], []]



def test_the_watchs_indexed_rows_read_as_the_plain_rows_do():
    """Rows keeps each metric's finite values as rows arrive; a rule reads the same series as from a plain list."""
    from minirlhf.diagnostics import Rows, indexed, series
    plain = [{"a": 1.0, "b": float("nan")}, {"b": 2.0}, {"a": 3, "b": True, "c": "x"}, {"a": float("inf")}]
    rows = Rows()
    for r in plain:
        rows.append(r)
    for key in ("a", "b", "c", "missing"):
        assert series(rows, key) == series(plain, key) and indexed(rows, key) == indexed(plain, key)
    assert series(rows, "a") == [1.0, 3] and indexed(rows, "b") == [(1, 2.0)] and list(rows) == plain
