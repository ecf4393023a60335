"""Numerical guards (a NaN or inf stops training at the step that produced it, BEFORE optimizer.step,
keeping the last good checkpoint) and security (loading any checkpoint directory never unpickles)."""
import json
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_tiny_rl_dirs
import torch

import minirlhf
from minirlhf import GPT, GPTConfig, RewardModel, Tokenizer, ValueHead
from minirlhf.errors import InputError
from minirlhf.ppo import PPOConfig, PPOTrainer
from minirlhf.ppo import train_ppo
from minirlhf.reward import RewardConfig, train_reward_model
from minirlhf.data import Pair
from minirlhf.sft import PretrainConfig, pretrain
from minirlhf.tracking import TrainingDiverged
from minirlhf.trainstate import latest_checkpoint

TEXTS = [f"今天天气{'很好' if i % 2 else '不错'}，我们去公园玩了{i % 7}次。" for i in range(30)]
CFG = GPTConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=16, block_size=24)
TINY = dict(vocab_size=300, n_layer=1, n_head=2, n_embd=16, block_size=32, batch_size=4, eval_every=100)


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def trainer_with(reward):
    torch.manual_seed(0)
    policy, ref = GPT(CFG), GPT(CFG)
    ref.load_state_dict(policy.state_dict())
    return PPOTrainer(policy, ref, reward, PPOConfig(max_new_tokens=4, batch_size=8, num_minibatches=2, ppo_epochs=1,
                                                     eos_id=2, pad_id=0, iterations=0))


def test_training_diverged_is_not_an_input_error():
    assert not issubclass(TrainingDiverged, InputError)   # bad input exits 2, a diverged run 3


def test_ppo_nan_reward_stops_before_any_update():
    trainer = trainer_with(lambda seq, mask: torch.full((seq.shape[0],), float("nan")))
    before = params(trainer.model)
    with pytest.raises(TrainingDiverged, match=r"^iteration 1: env/reward_mean is nan"):
        trainer.step([[1, 5]] * 8)
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer.model)))
    assert not trainer.optimizer.state                      # optimizer.step() never ran


def test_ppo_nan_loss_or_gradient_stops_inside_update_before_optimizer_step():
    trainer = trainer_with(lambda seq, mask: torch.ones(seq.shape[0]))
    trainer.step([[1, 5]] * 8)                              # one good iteration
    good = params(trainer.model)
    ro = trainer.rollout([[1, 5]] * 8)
    _, advantages, returns = trainer.advantages(ro, trainer.kl_ctl.kl_coef)
    advantages[:, 1] = float("nan")                          # e.g. an overflow upstream (every minibatch)
    with pytest.raises(TrainingDiverged, match=r"^iteration 2: ppo/(grad_norm|policy_loss) is nan"):
        trainer.update(ro, advantages, returns)
    assert all(torch.equal(a, b) for a, b in zip(good, params(trainer.model)))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return write_tiny_rl_dirs(tmp_path_factory.mktemp("guards"), TEXTS)


def test_train_ppo_nan_reward_keeps_the_last_good_checkpoint(dirs, tmp_path):
    calls = []

    def reward_nan_at_iteration_3(seq, mask):
        calls.append(1)
        return torch.full((seq.shape[0],), float("nan") if len(calls) == 3 else 1.0)
    cfg = PPOConfig(iterations=5, save_every=1, batch_size=4, num_minibatches=2, ppo_epochs=1, max_new_tokens=4)
    with pytest.raises(TrainingDiverged, match="iteration 3: env/reward_mean is nan"):
        train_ppo(["今天", "我们"], dirs / "sft", None, tmp_path / "p", cfg, reward_fn=reward_nan_at_iteration_3,
                  show_progress=False)
    assert latest_checkpoint(tmp_path / "p").name == "step-2"
    rows = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]


def test_pretrain_that_blows_up_stops_with_the_step_and_keeps_finite_checkpoints(tmp_path):
    config = PretrainConfig(steps=8, save_every=1, lr=1e30, warmup_steps=0, **TINY)
    with pytest.raises(TrainingDiverged, match=r"^step \d: train/(loss|grad_norm) is (nan|inf)") as e:
        pretrain(TEXTS, tmp_path / "lm", config, show_progress=False)
    bad_step = int(re.match(r"step (\d)", str(e.value)).group(1))
    ckpt = latest_checkpoint(tmp_path / "lm")
    assert ckpt.name == f"step-{bad_step - 1}"                   # the last good one, nothing after
    from safetensors.torch import load_file
    assert all(torch.isfinite(t).all() for t in load_file(ckpt / "model.safetensors").values())


def test_reward_nan_loss_stops_before_the_step(dirs, tmp_path, monkeypatch):
    import minirlhf.reward as reward
    original, calls = reward.batch_loss, []

    def nan_at_step_2(*args):
        calls.append(1)
        loss = original(*args)
        return loss * float("nan") if len(calls) == 2 else loss
    monkeypatch.setattr(reward, "batch_loss", nan_at_step_2)
    pairs = [Pair("", t, t[::-1]) for t in TEXTS]
    tok = Tokenizer.from_file(dirs / "sft" / "tokenizer.json")
    with pytest.raises(TrainingDiverged, match="step 2: reward/loss is nan"):
        train_reward_model(pairs, dirs / "sft", tmp_path / "rm", RewardConfig(steps=4, save_every=1, batch_size=4), tok,
                           show_progress=False)
    assert latest_checkpoint(tmp_path / "rm").name == "step-1"


def test_cli_divergence_is_one_line_exit_3(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "minirlhf", "pretrain", "--text", str(tmp_path / "t.txt"), "--out",
                        str(tmp_path / "lm"), "--steps", "8", "--save-every", "1", "--lr=1e30", "--warmup_steps=0",
                        *[f"--{k}={v}" for k, v in TINY.items()]], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 3 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]          # after the progress bar: the one message
    assert re.match(r"step \d: train/(loss|grad_norm) is (nan|inf); stopping \(the last good checkpoint is kept\)$",
                    last), last


# ---------------------------------------------------------------- no pickle, anywhere

def test_no_pickle_in_the_source():
    root = Path(minirlhf.__file__).parent
    pattern = re.compile(r"\b(import pickle|pickle\.|torch\.save|torch\.load|cloudpickle|dill)\b")
    hits = [f"{p}:{i}" for p in root.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line) and not line.lstrip().startswith("#")]
    assert not hits


def test_loading_checkpoints_never_unpickles(dirs, tmp_path, monkeypatch):
    import minirlhf.run
    for module in (minirlhf.run,):      # plots are beside the point here, and slow
        monkeypatch.setattr(module, "plot_run", lambda *a, **k: [])
    # Write a pretrain run, a reward model and a PPO run (with checkpoints) first...
    pretrain(TEXTS, tmp_path / "lm", PretrainConfig(steps=2, save_every=1, **TINY), show_progress=False)
    ppo_cfg = PPOConfig(iterations=2, save_every=1, batch_size=4, num_minibatches=2, ppo_epochs=1, max_new_tokens=4)
    train_ppo(["今天"], dirs / "sft", dirs / "reward", tmp_path / "ppo", ppo_cfg, show_progress=False)

    # ...then make every unpickling entry point explode, and load and resume all of it.
    def boom(*a, **k):
        raise AssertionError("pickle was used")
    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                      (torch.serialization, "load")]:
        monkeypatch.setattr(mod, name, boom)
    GPT.from_pretrained(tmp_path / "lm")
    RewardModel.from_pretrained(dirs / "reward")
    ValueHead(16).load(tmp_path / "ppo")
    Tokenizer.from_file(tmp_path / "lm" / "tokenizer.json")
    model, _ = pretrain(TEXTS, tmp_path / "lm", PretrainConfig(steps=3, save_every=1, **TINY), resume=True,
                        show_progress=False)
    ppo_cfg = PPOConfig(iterations=3, save_every=1, batch_size=4, num_minibatches=2, ppo_epochs=1, max_new_tokens=4)
    trainer = train_ppo(["今天"], dirs / "sft", dirs / "reward", tmp_path / "ppo", ppo_cfg, resume=True,
                        show_progress=False)
    assert trainer.iteration == 3 and all(math.isfinite(p.sum().item()) for p in model.parameters())
