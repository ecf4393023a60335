"""Reward-model training: learns a known reward, one forward per response, normalisation, CLI, padding.

The synthetic task: strings over "abcd"; the true reward is the number of 'a's. A 2-layer, 32-wide
GPT-2 trunk (random init) must learn to count from comparisons alone.
"""
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from minirlhf import GPT, GPTConfig, RewardModel, Tokenizer
from minirlhf.cli import main
from minirlhf.data import Pair, Ranking
from minirlhf.errors import InputError
from minirlhf.reward import RewardConfig, encode_examples, forward_examples, train_reward_model
from minirlhf.reward_eval import reference_samples, score_sequences

FAST = dict(batch_size=32, lr=3e-3, eval_every=20, norm_samples=32, norm_max_new_tokens=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are fastest on one thread, and 2-thread runs crawl on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["abcd q:?"], 300, kind="char")


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory, tok):
    """A randomly initialised tiny GPT-2 with its tokenizer: the --init directory."""
    d = tmp_path_factory.mktemp("init")
    torch.manual_seed(0)
    GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=32)).save_pretrained(d, tok)
    return d


def rand_text(rng):
    return "".join(rng.choice("abcd") for _ in range(rng.randint(6, 16)))


def count_pairs(n, seed, prompt=""):
    """Pairs whose chosen text has strictly more 'a's than the rejected one."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        x, y = rand_text(rng), rand_text(rng)
        if x.count("a") != y.count("a"):
            out.append(Pair(prompt, *sorted([x, y], key=lambda s: -s.count("a"))))
    return out


def count_rankings(n, seed, K=4):
    rng = random.Random(seed)
    rankings = []
    for _ in range(n):
        responses = [rand_text(rng) for _ in range(K)]
        rankings.append(Ranking("q:", responses, [float(r.count("a")) for r in responses]))
    return rankings


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def heldout_accuracy(model, tok, pairs):
    examples, _ = encode_examples(pairs, tok, 32)
    with torch.no_grad():
        r = score_sequences(model.eval(), [s for e in examples for s in e.seqs], tok.pad_id).view(-1, 2)
    return (r[:, 0] > r[:, 1]).float().mean().item()


def test_learns_a_known_reward(init_dir, tok, tmp_path):
    config = RewardConfig(steps=80, **FAST)
    model = train_reward_model(count_pairs(600, seed=1), init_dir, tmp_path / "rm", config, tok,
                               show_progress=False)
    rows = metrics(tmp_path / "rm")
    assert [r["step"] for r in rows if "reward/loss" in r] == list(range(1, 81))
    assert rows[-2]["val/accuracy"] >= 0.95
    assert heldout_accuracy(model, tok, count_pairs(400, seed=2)) >= 0.95
    assert rows[-2]["reward/loss"] < rows[0]["reward/loss"]


def test_one_forward_per_response_not_per_pair(init_dir, tok, tmp_path, monkeypatch):
    """InstructGPT batching: B prompts x K responses = B*K sequences in ONE forward, not B*K(K-1)."""
    calls = []
    original = RewardModel.raw_scores

    def counting(self, input_ids, attention_mask=None):
        calls.append(tuple(input_ids.shape))
        return original(self, input_ids, attention_mask)

    monkeypatch.setattr(RewardModel, "raw_scores", counting)
    B, K = 3, 5
    config = RewardConfig(steps=1, batch_size=B, val_fraction=0.0, normalize=False, loss="ranking")
    train_reward_model(count_rankings(B, seed=3, K=K), init_dir, tmp_path / "rm", config, tok, show_progress=False)
    assert len(calls) == 1 and calls[0][0] == B * K          # 15 sequences, once
    assert calls[0][0] != B * K * (K - 1)                   # not 60: each pair scored apart


def test_batched_scores_equal_scores_alone(init_dir, tok):
    """Left padding + attention mask: a sequence's score does not depend on its batch-mates."""
    model = RewardModel.from_pretrained(init_dir, init_head=True).eval()
    examples, _ = encode_examples(count_rankings(4, seed=4, K=3), tok, 32)
    seqs = [s for e in examples for s in e.seqs]
    assert len({len(s) for s in seqs}) > 3                   # really different lengths, really padded
    with torch.no_grad():
        batched = score_sequences(model, seqs, tok.pad_id)
        alone = torch.cat([score_sequences(model, [s], tok.pad_id) for s in seqs])
        grouped = forward_examples(model, examples, tok.pad_id)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(grouped[0][0].flatten(), alone, atol=1e-5, rtol=0)
    assert grouped[0][1].tolist() == [e.ranks for e in examples]


@pytest.mark.parametrize("loss", ["ranking", "plackett_luce", "best_of_k"])
def test_rankings_train_above_chance(init_dir, tok, tmp_path, loss):
    config = RewardConfig(steps=40, loss=loss, val_fraction=0.2, **{**FAST, "eval_every": 40, "batch_size": 16})
    train_reward_model(count_rankings(200, seed=5), init_dir, tmp_path / "rm", config, tok, show_progress=False)
    last = [r for r in metrics(tmp_path / "rm") if "val/accuracy" in r][-1]
    assert last["val/accuracy"] > 0.75                       # chance is 0.5
    assert last["val/ranking_accuracy"] > 0.2                # chance is about 1/24 for 4 untied responses


def test_normalization_mean0_std1_and_survives_reload(init_dir, tok, tmp_path):
    reference = [rand_text(random.Random(i)) for i in range(40)]
    config = RewardConfig(steps=5, **FAST)
    train_reward_model(count_pairs(64, seed=6), init_dir, tmp_path / "rm", config, tok,
                       reference_texts=reference, show_progress=False)
    loaded = RewardModel.from_pretrained(tmp_path / "rm").eval()
    seqs = [[tok.bos_id] + tok.encode(t) + [tok.eos_id] for t in reference]
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first=True, padding_value=tok.pad_id)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    with torch.no_grad():
        scores = loaded(ids, mask)                           # right padding here: the mask decides
        raw = loaded.raw_scores(ids, mask)
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std(unbiased=False).item() - 1) < 1e-4
    norm = json.loads((tmp_path / "rm" / "normalization.json").read_text())
    assert norm["source"] == "reference_texts" and norm["n"] == 40
    assert norm["raw_mean"] == pytest.approx(raw.mean().item(), abs=1e-4)
    assert norm["raw_std"] == pytest.approx(raw.std(unbiased=False).item(), abs=1e-4)
    assert metrics(tmp_path / "rm")[-1]["norm/gain"] == pytest.approx(loaded.gain.item(), rel=1e-5)


def test_default_normalization_uses_init_policy_samples(init_dir, tok, tmp_path):
    config = RewardConfig(steps=3, **FAST)
    pairs = count_pairs(40, seed=7, prompt="q:")
    model = train_reward_model(pairs, init_dir, tmp_path / "rm", config, tok, show_progress=False)
    policy = GPT.from_pretrained(init_dir)
    seqs = reference_samples(policy, tok, ["q:"], 32, 8, config.seed, config.eval_batch_size)  # same draw
    assert all(s[:3] == [tok.bos_id] + tok.encode("q:") for s in seqs)
    with torch.no_grad():
        scores = torch.cat([model(*_left(s, tok)) for s in seqs])
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std(unbiased=False).item() - 1) < 1e-4


def _left(seq, tok):
    return torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long)


def test_resume_gives_the_same_model(init_dir, tok, tmp_path, monkeypatch):
    import minirlhf.reward as reward
    config = RewardConfig(steps=6, save_every=3, **FAST)
    pairs = count_pairs(100, seed=8)
    straight = train_reward_model(pairs, init_dir, tmp_path / "a", config, tok, show_progress=False)
    original, calls = reward.batch_loss, []

    def dies_at_step_5(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(reward, "batch_loss", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(pairs, init_dir, tmp_path / "b", config, tok, show_progress=False)
    monkeypatch.setattr(reward, "batch_loss", original)
    resumed = train_reward_model(pairs, init_dir, tmp_path / "b", config, tok, resume=True, show_progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["step"] for r in metrics(tmp_path / "b")] == [r["step"] for r in metrics(tmp_path / "a")]


def test_bad_config_and_loss_data_mismatch(init_dir, tok, tmp_path):
    with pytest.raises(InputError, match="--loss must be one of"):
        RewardConfig(loss="hinge")
    with pytest.raises(InputError, match="--loss pairwise needs pairs"):
        train_reward_model(count_rankings(8, seed=9), init_dir, tmp_path / "rm", RewardConfig(loss="pairwise"), tok)
    assert not (tmp_path / "rm").exists()


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_end_to_end(init_dir, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", [vars(p) for p in count_pairs(40, seed=10, prompt="q:")])
    out = tmp_path / "rm"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "minirlhf", "reward", "--data", str(data), "--init", str(init_dir),
                        "--out", str(out), "--steps", "4", "--seed", "1", "--loss", "pairwise",
                        "--norm_samples=8", "--norm_max_new_tokens=4", "--eval_every=2"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "reward_head.safetensors", "metrics.jsonl",
                 "train_config.json", "normalization.json", "checkpoints/LATEST"):
        assert (out / name).exists(), name
    assert list((out / "plots").glob("*.png"))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4] and "val/accuracy" in rows[1] and "norm/gain" in rows[-1]
    assert json.loads((out / "train_config.json").read_text())["seed"] == 1
    assert RewardModel.from_pretrained(out).gain.item() != 1.0


def test_cli_malformed_line_writes_nothing(init_dir, tmp_path, capsys):
    rows = [vars(p) for p in count_pairs(3, seed=11)]
    data = write_jsonl(tmp_path / "bad.jsonl", [rows[0], rows[1], {"prompt": "q", "chosen": "a"}, rows[2]])
    out = tmp_path / "rm"
    assert main(["reward", "--data", str(data), "--init", str(init_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{data}:3: ") and "rejected" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_vocab_mismatch_and_unknown_key(init_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", [vars(p) for p in count_pairs(3, seed=12)])
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        (other / name).write_bytes((init_dir / name).read_bytes())
    Tokenizer.train(["abcdefghijk"], 300, kind="char").save(other / "tokenizer.json")
    assert main(["reward", "--data", str(data), "--init", str(other), "--out", str(tmp_path / "o")]) == 2
    assert "tokenizer has" in capsys.readouterr().err
    assert main(["reward", "--data", str(data), "--init", str(init_dir), "--out", str(tmp_path / "o"),
                 "--epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'epochs'" in err and "steps" in err
    assert not (tmp_path / "o").exists()


def test_sigmoid_rank_is_the_plain_sigmoid_over_every_untied_pair():
    """reward_loss('sigmoid_rank') on the losses.py worked example, by hand: -(σ(2) + σ(1) + σ(1)) / 3."""
    from minirlhf.reward import reward_loss
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    got = reward_loss("sigmoid_rank", torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[0, 2, 1]])).item()
    assert got == pytest.approx(-(sig(2) + 2 * sig(1)) / 3, abs=1e-6)


# ---------------------------------------------------------------- torchrun: sync_params sees the model on its device

class Synced(Exception):
    """Raised by the sync_params spy: the test has seen what it came for."""


def _trainers(init_dir, tok, out):
    """(module whose resolve_device and sync_params a trainer calls, the call) for each trainer we own."""
    from minirlhf.data import Demonstration
    from minirlhf.sft import PretrainConfig, SFTConfig, pretrain, train_sft
    return {
        "reward": ("minirlhf.reward", lambda: train_reward_model(count_pairs(8, seed=20), init_dir, out,
                                                               RewardConfig(**FAST), tok, show_progress=False)),
        "pretrain": ("minirlhf.sft", lambda: pretrain(["abcd q:"] * 8, out, PretrainConfig(
            n_layer=1, n_head=2, n_embd=16, block_size=16, steps=1), tok, show_progress=False)),
        "offline": ("minirlhf.offline", lambda: train_sft([Demonstration("q:", "ab")] * 4, init_dir, out,
                                                         SFTConfig(steps=1), show_progress=False)),
    }


@pytest.mark.parametrize("trainer", ["reward", "pretrain", "offline"])
def test_sync_params_gets_the_model_already_on_its_device(init_dir, tok, tmp_path, monkeypatch, trainer):
    """Under torchrun with --device cuda, nccl broadcasts CUDA tensors only: each trainer moves its model to the
    device BEFORE sync_params. The device "meta" stands in for CUDA on a CPU machine (a model still on the CPU
    shows "cpu" parameters); the spy stops the run at the broadcast."""
    import importlib
    name, run = _trainers(init_dir, tok, tmp_path / "out")[trainer]
    module = importlib.import_module(name)
    seen = []

    def spy(model):
        seen.append({p.device.type for p in model.parameters()})
        raise Synced

    monkeypatch.setattr(module, "resolve_device", lambda _: torch.device("meta"))
    monkeypatch.setattr(module, "sync_params", spy)
    with pytest.raises(Synced):
        run()
    assert seen == [{"meta"}]
