"""Crash safety. A real `python -m minirlhf` process killed with SIGKILL at some moment after its first
checkpoint, then run again with --resume, ends with exactly the metrics (time/* aside) and the weights
of a run that was never killed (CPU, same seed). And a half-written checkpoint is never what a resume
loads: it falls back to the newest complete checkpoint (with a warning), or stops with one clear error
when none is left; a complete checkpoint with a damaged file is an error, never silently skipped."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_tiny_rl_dirs
import torch

from minirlhf.errors import InputError
from minirlhf.sft import PretrainConfig, pretrain
from minirlhf.trainstate import latest_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TEXTS = [f"今天天气{'很好' if i % 2 else '不错'}，我们去公园玩了{i % 7}次。" for i in range(40)]


def cli(*args):
    return [sys.executable, "-m", "minirlhf", *map(str, args)]


def rows(out: Path):
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def kill_after_first_checkpoint(proc: subprocess.Popen, out: Path, delay: float):
    """Wait for checkpoints/LATEST, wait `delay` more seconds, SIGKILL; the run must not have finished."""
    latest, deadline = out / "checkpoints" / "LATEST", time.time() + 120
    while not latest.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint after 120 s"
        time.sleep(0.002)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed: make it longer"


def killed_then_resumed_equals_unbroken(cmd, tmp: Path, total: int, delay: float):
    killed, unbroken = tmp / "killed", tmp / "unbroken"
    reference = subprocess.Popen(cmd(unbroken), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(cmd(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after_first_checkpoint(victim, killed, delay)
    logged = (killed / "metrics.jsonl").read_text(encoding="utf-8").count("\n")  # the last line may be cut
    assert logged < total  # it really died mid-run
    assert reference.wait() == 0, reference.stderr.read().decode()[-2000:]
    r = subprocess.run(cmd(killed) + ["--resume"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(rows(unbroken)) >= total
    assert rows(killed) == rows(unbroken)
    assert (killed / "model.safetensors").read_bytes() == (unbroken / "model.safetensors").read_bytes()
    return killed, unbroken


def test_pretrain_killed_with_sigkill_then_resumed_matches_an_unbroken_run(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    cmd = lambda out: cli("pretrain", "--text", tmp_path / "t.txt", "--out", out, "--steps", 60, "--save-every", 5,
                          "--seed", 3, "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32",
                          "--batch_size=4", "--vocab_size=300", "--eval_every=20", "--dropout=0.1")
    killed, _ = killed_then_resumed_equals_unbroken(cmd, tmp_path, 60, delay=random.Random(0).uniform(0, 0.05))
    assert "val/loss" in rows(killed)[-1]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return write_tiny_rl_dirs(tmp_path_factory.mktemp("kill_ppo"), TEXTS, prompts=[t[:5] for t in TEXTS[:6]])


def test_ppo_killed_with_sigkill_then_resumed_matches_an_unbroken_run(tiny_models, tmp_path):
    d = tiny_models
    cmd = lambda out: cli("ppo", "--prompts", d / "prompts.jsonl", "--init", d / "sft", "--reward", d / "reward",
                          "--out", out, "--iterations", 40, "--save-every", 4, "--seed", 5, "--batch_size=4",
                          "--num_minibatches=2", "--ppo_epochs=2", "--max_new_tokens=4", "--adaptive_kl=true",
                          "--kl_target=0.5", "--kl_horizon=40")
    killed, _ = killed_then_resumed_equals_unbroken(cmd, tmp_path, 40, delay=random.Random(1).uniform(0, 0.05))
    assert (killed / "value_head.safetensors").exists()
    assert len({r["objective/kl_coef"] for r in rows(killed)}) > 1  # the KL controller's state came back too


# ---------------------------------------------------------------- half-written checkpoints

@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """In-process runs here need no PNGs (matplotlib is most of a tiny run's time)."""
    import minirlhf.run
    monkeypatch.setattr(minirlhf.run, "plot_run", lambda *a, **k: [])


FAST = dict(vocab_size=300, n_layer=1, n_head=2, n_embd=16, block_size=32, batch_size=4, warmup_steps=1,
            eval_every=100, seed=1, save_every=2, steps=6)


@pytest.fixture
def run6(tmp_path):
    """A finished 6-step run: checkpoints step-4 and step-6 (the two newest are kept), LATEST -> step-6."""
    out = tmp_path / "run"
    model, _ = pretrain(TEXTS, out, PretrainConfig(**FAST), show_progress=False)
    ckpts = out / "checkpoints"
    assert (ckpts / "LATEST").read_text().strip() == "step-6"
    assert sorted(d.name for d in ckpts.iterdir()) == ["LATEST", "step-4", "step-6"]
    return out, model


def test_a_partial_directory_is_never_loaded(run6):
    out, _ = run6
    partial = out / "checkpoints" / ".step-8.partial"
    partial.mkdir()
    (partial / "state.json").write_text('{"step": 8}')
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(out) == out / "checkpoints" / "step-6"


@pytest.mark.parametrize("damage,fallback", [
    ("step-6 without state.json", "step-4"), ("step-6 state.json cut short", "step-4"),
    ("step-6 state.json of another step", "step-4"), ("LATEST names a missing dir", "step-6"),
    ("LATEST garbage", "step-6"), ("LATEST deleted", "step-6")])
def test_an_incomplete_checkpoint_falls_back_to_the_newest_complete_one(run6, damage, fallback):
    out, _ = run6
    ckpts = out / "checkpoints"
    state = ckpts / "step-6" / "state.json"
    if damage == "step-6 without state.json":
        state.unlink()
    elif damage == "step-6 state.json cut short":
        state.write_bytes(state.read_bytes()[:40])
    elif damage == "step-6 state.json of another step":
        state.write_text(state.read_text().replace('"step": 6', '"step": 4'))
    elif damage == "LATEST names a missing dir":
        (ckpts / "LATEST").write_text("step-8\n")
    elif damage == "LATEST garbage":
        (ckpts / "LATEST").write_text("../../../etc\n")
    else:
        (ckpts / "LATEST").unlink()
    with pytest.warns(UserWarning, match=f"newest complete checkpoint, {fallback}"):
        assert latest_checkpoint(out) == ckpts / fallback


def test_resuming_from_the_fallback_redoes_the_lost_steps_exactly(run6):
    out, finished = run6
    (out / "checkpoints" / "step-6" / "state.json").unlink()    # as if step 6 never finished saving
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 7, "train/lo')                          # and a row cut by the kill
    with pytest.warns(UserWarning, match="step-4"):
        resumed, _ = pretrain(TEXTS, out, PretrainConfig(**FAST), resume=True, show_progress=False)
    for a, b in zip(finished.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4, 5, 6]
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-6"
    assert latest_checkpoint(out) == out / "checkpoints" / "step-6"     # complete again


def test_no_complete_checkpoint_left_is_a_clear_error(run6):
    out, _ = run6
    for d in ("step-4", "step-6"):
        (out / "checkpoints" / d / "state.json").unlink()
    with pytest.raises(InputError, match="no complete checkpoint is left"):
        latest_checkpoint(out)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.safetensors", "rng.safetensors"])
def test_a_complete_but_damaged_checkpoint_is_an_error_and_nothing_changes(run6, victim):
    out, _ = run6
    f = out / "checkpoints" / "step-6" / victim
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])   # truncated on disk
    before = snapshot(out)
    with pytest.raises(InputError, match=victim):
        pretrain(TEXTS, out, PretrainConfig(**FAST), resume=True, show_progress=False)
    assert snapshot(out) == before
