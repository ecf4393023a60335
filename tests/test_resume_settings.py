"""`--resume` continues the run it names with the run's own settings ("What a new user trips on, round 2",
item 1). A setting given again with another value is refused in one line, exit status 2, nothing in --out
changed, unless `--allow-changed` names it; the length may grow; a setting not repeated is the run's, not the
default (the issue's save_every 10 that became 0); the run says where it resumes from; train_config.json keeps
the settings the run started with and records each resume. Runs go through `minirlhf.cli.main` in this
process (tiny models, a few iterations), so most of a test's time is training, not importing torch."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_rl_dirs

from minirlhf.cli import main
from minirlhf.errors import InputError
from minirlhf.run import recorded_settings

TEXTS = ["这家店的菜很好吃", "电影太长了，有点无聊", "质量很好，下次还来", "快递很慢，包装也破了"] * 3


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """No PNGs: matplotlib would be most of a tiny run's time."""
    import minirlhf.run
    monkeypatch.setattr(minirlhf.run, "plot_run", lambda *a, **k: [])


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = write_tiny_rl_dirs(tmp_path_factory.mktemp("resume_settings"), TEXTS, prompts=[t[:3] for t in TEXTS])
    (w / "text.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    jsonl(w / "pairs.jsonl", [{"prompt": t[:2], "chosen": t[2:], "rejected": t[:1:-1]} for t in TEXTS])
    jsonl(w / "rankings.jsonl", [{"query": t[:2], "responses": [t[2:], t[:1:-1]], "scores": [1, 0]} for t in TEXTS])
    jsonl(w / "demos.jsonl", [{"prompt": t[:2], "response": t[2:]} for t in TEXTS])
    return w


def ppo(w: Path, out: Path, *extra) -> list[str]:
    return ["ppo", "--prompts", w / "prompts.jsonl", "--init", w / "sft", "--reward", w / "reward", "--out", out,
            *extra]


# the run being resumed: 4 iterations, a checkpoint every 2, and settings that are none of the defaults
PPO_RUN = ["--iterations", 4, "--save-every", 2, "--seed", 1, "--batch_size=4", "--num_minibatches=2",
           "--ppo_epochs=1", "--max_new_tokens=4", "--lr_schedule=constant", "--kl_coef=0.05"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ppo_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo") / "run"
    assert main([str(a) for a in ppo(world, out, *PPO_RUN)]) == 0
    return out


@pytest.fixture
def run_copy(ppo_run, tmp_path):
    """A copy of the finished 4-iteration run, for a test to resume (and change)."""
    return Path(shutil.copytree(ppo_run, tmp_path / "run"))


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def record(out: Path) -> dict:
    return json.loads((out / "train_config.json").read_text(encoding="utf-8"))


def rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")}
            for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def checkpoints(out: Path) -> list[str]:
    return sorted(d.name for d in (out / "checkpoints").iterdir() if d.name != "LATEST")


def test_a_changed_setting_is_refused_in_one_line_and_nothing_in_out_changes(world, run_copy, capsys):
    before = snapshot(run_copy)
    code, _, err = cli(capsys, *ppo(world, run_copy, "--resume", "--iterations", 6, "--batch_size=2", "--lr=0.01"))
    assert code == 2
    assert err.strip().splitlines() == [
        f"{run_copy / 'train_config.json'}: --batch_size=2 differs from the run's 4, --lr=0.01 differs from the "
        f"run's 0.0001; pass --allow-changed=batch_size,lr to change them on resume"]
    assert snapshot(run_copy) == before


def test_a_shorter_run_is_a_changed_setting(world, run_copy, capsys):
    before = snapshot(run_copy)
    code, _, err = cli(capsys, *ppo(world, run_copy, "--resume", "--iterations", 3))
    assert code == 2 and "--iterations=3 differs from the run's 4; pass --allow-changed=iterations" in err
    code, _, err = cli(capsys, *ppo(world, run_copy, "--resume", "--iterations", 3, "--allow-changed=iterations"))
    assert code == 2 and "already at iteration 4, past --iterations 3" in err   # the checkpoint is further on
    assert snapshot(run_copy) == before


def test_resume_alone_continues_the_same_run(world, ppo_run, run_copy, tmp_path, capsys):
    """Only the length is given: every other setting (save_every 2, batch_size 4, the constant schedule...) is
    the run's, so 4 iterations resumed to 8 are the 8 iterations of a run never stopped, weights included."""
    code, out, _ = cli(capsys, *ppo(world, run_copy, "--resume", "--iterations", 8))
    assert code == 0
    assert f"ppo: resuming from iteration 4 of 8 ({run_copy / 'checkpoints' / 'step-4'}); iterations 4 -> 8" in out
    unbroken = tmp_path / "unbroken"
    assert main([str(a) for a in ppo(world, unbroken, *PPO_RUN[2:], "--iterations", 8)]) == 0
    assert rows(run_copy) == rows(unbroken)
    assert (run_copy / "model.safetensors").read_bytes() == (unbroken / "model.safetensors").read_bytes()
    assert checkpoints(run_copy) == ["step-6", "step-8"]     # save_every 2 kept (0 would leave step-4, step-8)
    rec = record(run_copy)
    assert rec["iterations"] == 4 and rec["save_every"] == 2 and rec["trainer"] == "ppo"   # as it started
    assert rec["resumes"] == [{"iteration": 4, "changed": {"iterations": {"from": 4, "to": 8}}}]
    assert recorded_settings(rec, "x")["iterations"] == 8


def test_allow_changed_goes_through_and_the_history_records_it(world, run_copy, capsys):
    code, out, _ = cli(capsys, *ppo(world, run_copy, "--resume", "--iterations", 6, "--lr=0.01", "--save-every", 3,
                                    "--allow-changed=lr"))
    assert code == 0, capsys.readouterr().err
    assert "ppo: resuming from iteration 4 of 6" in out and "lr 0.0001 -> 0.01" in out
    assert [r["iteration"] for r in rows(run_copy)] == [1, 2, 3, 4, 5, 6]
    rec = record(run_copy)
    assert rec["lr"] == 0.0001 and rec["iterations"] == 4     # the top level stays what iterations 1-4 ran with
    assert rec["resumes"] == [{"iteration": 4, "changed": {"iterations": {"from": 4, "to": 6},
                                                           "lr": {"from": 0.0001, "to": 0.01},
                                                           "save_every": {"from": 2, "to": 3}}}]
    # resumed again with nothing given: the settings now in force are the changed ones, and nothing new changed
    code, out, _ = cli(capsys, *ppo(world, run_copy, "--resume", "--iterations", 7))
    assert code == 0 and out.splitlines()[0].endswith("step-6); iterations 6 -> 7")
    assert record(run_copy)["resumes"][1] == {"iteration": 6, "changed": {"iterations": {"from": 6, "to": 7}}}


def test_resuming_again_from_the_same_step_replaces_that_resume(world, run_copy, capsys):
    """A resume killed before its first checkpoint resumes from the same step again: one entry for that step,
    whose changes are measured from the settings before it."""
    assert cli(capsys, *ppo(world, run_copy, "--resume", "--lr=0.01", "--allow-changed=lr"))[0] == 0
    assert cli(capsys, *ppo(world, run_copy, "--resume", "--kl_coef=0.1", "--allow-changed=kl_coef"))[0] == 0
    assert record(run_copy)["resumes"] == [{"iteration": 4, "changed": {"lr": {"from": 0.0001, "to": 0.01},
                                                                        "kl_coef": {"from": 0.05, "to": 0.1}}}]


def test_free_settings_change_without_the_flag_and_are_recorded(world, run_copy, capsys):
    code, _, err = cli(capsys, *ppo(world, run_copy, "--resume", "--device", "cpu", "--gradient_accumulation_steps=2"))
    assert code == 0, err
    assert record(run_copy)["resumes"] == [
        {"iteration": 4, "changed": {"gradient_accumulation_steps": {"from": 1, "to": 2}}}]


@pytest.mark.parametrize("argv,message", [
    (["--allow-changed=lr"], "--allow-changed only applies with --resume"),
    (["--resume", "--allow-changed=lr,learning_rate"], "--allow-changed: unknown setting 'learning_rate'")])
def test_a_bad_allow_changed_is_one_line(world, tmp_path, capsys, argv, message):
    out = tmp_path / "new"
    code, _, err = cli(capsys, *ppo(world, out, *argv))
    assert code == 2 and err.strip().splitlines()[0].startswith(message) and not out.exists()


def test_a_run_of_another_trainer_is_refused(world, run_copy, capsys):
    before = snapshot(run_copy)
    code, _, err = cli(capsys, "grpo", "--algo", "rloo", "--prompts", world / "prompts.jsonl", "--init",
                       world / "sft", "--reward", world / "reward", "--out", run_copy, "--resume")
    assert code == 2 and "a ppo run, not rloo; resume it with minirlhf ppo" in err
    assert snapshot(run_copy) == before


OTHERS = {  # every other trainer with --resume: its inputs and small settings (W: the world dir), its step key
    "pretrain": (["--text", "W/text.txt", "--n_layer=1", "--n_embd=16", "--block_size=24", "--vocab_size=300",
                  "--batch_size=2", "--eval_every=1"], "step"),
    "sft": (["--data", "W/demos.jsonl", "--init", "W/sft", "--batch_size=2", "--eval_every=1"], "step"),
    "dpo": (["--data", "W/pairs.jsonl", "--init", "W/sft", "--batch_size=2", "--eval_every=1"], "step"),
    "rrhf": (["--data", "W/rankings.jsonl", "--init", "W/sft", "--batch_size=2", "--eval_every=1"], "step"),
    "reward": (["--data", "W/pairs.jsonl", "--init", "W/sft", "--batch_size=2", "--eval_every=1",
                "--normalize=false"], "step"),
    "grpo": (["--prompts", "W/prompts.jsonl", "--init", "W/sft", "--reward", "W/reward", "--batch_size=4",
              "--group_size=2", "--num_minibatches=1", "--max_new_tokens=4"], "iteration"),
}


@pytest.mark.parametrize("trainer", OTHERS)
def test_every_trainer_keeps_its_settings_on_resume(world, tmp_path, capsys, trainer):
    flags, key = OTHERS[trainer]
    out = tmp_path / trainer
    base = [trainer, *(f.replace("W/", f"{world}/") for f in flags), "--out", out]
    length = "--iterations" if key == "iteration" else "--steps"
    assert cli(capsys, *base, length, 2, "--save-every", 1, "--lr=0.001")[0] == 0
    assert cli(capsys, *base, "--resume", "--lr=0.01")[1:] == ("", f"{out / 'train_config.json'}: --lr=0.01 differs "
                                                               f"from the run's 0.001; pass --allow-changed=lr to "
                                                               f"change it on resume\n")
    code, said, err = cli(capsys, *base, "--resume", length, 4)  # no --save-every, no --lr
    assert code == 0, err
    assert f"resuming from {key} 2 of 4" in said
    assert checkpoints(out) == ["step-3", "step-4"]          # --save-every 1 kept (0 would leave step-2, step-4)
    assert [r[key] for r in rows(out) if key in r] == [1, 2, 3, 4]
    rec = record(out)
    assert rec["lr"] == 0.001 and rec["resumes"] == [{key: 2, "changed": {length[2:]: {"from": 2, "to": 4}}}]


def test_a_changed_lr_takes_effect_under_a_constant_schedule(tmp_path):
    """The optimizer's hyperparameters come from the config, its moments from the checkpoint."""
    from minirlhf.trainstate import load_checkpoint, save_checkpoint
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 1, {"model": model}, opt, {}, {})
    resumed = torch.optim.AdamW(model.parameters(), lr=1e-2)
    load_checkpoint(tmp_path / "checkpoints" / "step-1", {"model": model}, resumed, {})
    assert resumed.param_groups[0]["lr"] == 1e-2
    assert torch.equal(resumed.state[model.weight]["exp_avg"], opt.state[model.weight]["exp_avg"])


def test_a_malformed_history_is_an_input_error():
    with pytest.raises(InputError, match="malformed 'resumes' entry"):
        recorded_settings({"lr": 1, "resumes": [{"iteration": 4}]}, "x.json", "iteration", before=8)
