import os
import socket
import subprocess
import sys

import pytest
import torch

from minirlhf import GPT, GPTConfig

# Tests use tiny models, which one thread runs as fast as two; and a second thread that spin-waits for a
# busy core can make a 5 s test take 100 s on a loaded machine. Subprocesses (CLI tests) inherit this.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)



def free_port() -> int:
    """A free TCP port on localhost, for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args, check=True):
    """`python -m minirlhf ARGS` (each str()-ed) in a subprocess; with check, a non-zero exit fails the test with
    the tail of stderr."""
    r = subprocess.run([sys.executable, "-m", "minirlhf", *map(str, args)], capture_output=True, text=True)
    assert not check or r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture
def tiny_config():
    return GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=48)


@pytest.fixture
def tiny_gpt(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


def write_tiny_rl_dirs(tmp, texts, n_embd=16, block_size=24, prompts=None):
    """A random tiny policy (tmp/sft) and reward model (tmp/reward) sharing a char tokenizer trained on
    `texts`, and optionally tmp/prompts.jsonl: the inputs of a `minirlhf ppo` run."""
    import json

    from minirlhf import RewardModel, Tokenizer
    tok = Tokenizer.train(texts, 300)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=n_embd, block_size=block_size)
    GPT(cfg).save_pretrained(tmp / "sft", tok)
    RewardModel(cfg).save_pretrained(tmp / "reward", tok)
    if prompts is not None:
        (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n"
                                                   for p in prompts), encoding="utf-8")
    return tmp


def interrupt_run_at(monkeypatch, step: int):
    """Make every run stop, like a killed process, just before it logs `step` (its checkpoints are kept);
    returns a function that undoes it. The resume tests of the offline trainers use it."""
    from minirlhf.run import Run

    class Killed(Exception):
        pass

    log = Run.log

    def die(self, row, **postfix):
        if row.get(self.step_key) == step:
            raise Killed(f"killed at {self.step_key} {step}")
        log(self, row, **postfix)

    monkeypatch.setattr(Run, "log", die)
    return Killed, lambda: monkeypatch.setattr(Run, "log", log)


def no_time(rows):
    """Metric rows without their wall-clock entries (time/...), which differ between equal runs."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def check_resume_equals_an_unbroken_run(train, data, init_dir, tmp_path, config, monkeypatch, kill_at=5):
    """An offline trainer `train(data, init_dir, out_dir, config, ...)` run whole, and run again killed just before
    step `kill_at` is logged and resumed, must log the same metrics (time aside) and end with the same weights.
    Returns the whole run's metric rows."""
    from minirlhf.tracking import read_metrics
    full = train(data, init_dir, tmp_path / "full", config, show_progress=False)
    killed, undo = interrupt_run_at(monkeypatch, kill_at)
    with pytest.raises(killed):
        train(data, init_dir, tmp_path / "broken", config, show_progress=False)
    undo()
    resumed = train(data, init_dir, tmp_path / "broken", config, resume=True, show_progress=False)
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert no_time(read_metrics(tmp_path / "broken" / "metrics.jsonl")) == no_time(rows)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    return rows


def write_tiny_policy(directory, texts=("abcd q:?",), n_layer=2, n_embd=32, block_size=32):
    """A random tiny GPT-2 and its char tokenizer (trained on `texts`) saved in `directory`: an --init for
    the offline trainers. Returns the tokenizer."""
    from minirlhf import Tokenizer
    tok = Tokenizer.train(list(texts), 300, kind="char")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_layer=n_layer, n_head=2, n_embd=n_embd, block_size=block_size)
    GPT(cfg).save_pretrained(directory, tok)
    return tok


def check_online_resume(train, dirs, prompts, config):
    """An online run (train_ppo / train_grpo) killed at iteration 3 and resumed from its checkpoint ends with
    the metrics (timings aside) and the weights of the same run never stopped."""
    import json
    full = train(prompts, dirs / "sft", dirs / "reward", dirs / "full", config, show_progress=False)

    class Killed(Exception):
        pass

    def die_at_3(trainer, row):
        if row["iteration"] == 3:
            raise Killed

    with pytest.raises(Killed):
        train(prompts, dirs / "sft", dirs / "reward", dirs / "broken", config, show_progress=False,
              on_iteration=die_at_3)
    resumed = train(prompts, dirs / "sft", dirs / "reward", dirs / "broken", config, resume=True, show_progress=False)
    read = lambda d: [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")}  # noqa: E731
                      for x in (dirs / d / "metrics.jsonl").read_text().splitlines()]
    assert read("broken") == read("full")
    for p1, p2 in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p1, p2)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    """A random tiny GPT-2 and its char tokenizer: the --init of the offline trainers' tests."""
    d = tmp_path_factory.mktemp("init")
    write_tiny_policy(d)
    return d


@pytest.fixture(scope="module")
def tok(init_dir):
    from minirlhf import Tokenizer
    return Tokenizer.from_file(init_dir / "tokenizer.json")
