"""The step trainer (steps.py) on its own: how batches are drawn, how validation averages, and the loop's contract
(row keys in order, validation steps, on_step, save, resume) on a one-weight model that must learn w = 2."""
import json

import pytest
import torch

from minirlhf import Tokenizer
from minirlhf.config import TrainConfig
from minirlhf.data import batch_indices
from minirlhf.errors import TrainingDiverged
from minirlhf.run import Run
from minirlhf.steps import EpochBatches, RandomBatches, StepObjective, train_steps, validation_means


def test_epoch_batches_of_two_ranks_are_one_process_batch_of_twice_the_size(monkeypatch):
    single = [EpochBatches(10, 6, seed=3).indices(s) for s in range(4)]
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append([EpochBatches(10, 3, seed=3).indices(s) for s in range(4)])
    assert [a + b for a, b in zip(*per_rank)] == single
    assert EpochBatches(10, 3, seed=3).epoch(4) == 3.0   # 5 steps x 3 examples x 2 ranks / 10


def test_epoch_batches_visit_every_example_once_an_epoch_and_cap_the_batch():
    b = EpochBatches(6, 4, seed=0)
    assert sorted(b.indices(0) + b.indices(1)[:2]) == list(range(6))
    assert EpochBatches(3, 16, seed=0).batch_size == 3 and EpochBatches(3, 16, seed=0).epoch(0) == 1.0
    assert b.indices(5) == batch_indices(5, 6, 4, 0) and b.generators == {}


def test_random_batches_draw_from_their_checkpointed_generator():
    g = torch.Generator().manual_seed(1)
    b = RandomBatches(5, 8, g)
    assert b.generators == {"data": g} and b.epoch(3) is None
    assert b.indices(0) == torch.randint(5, (8,), generator=torch.Generator().manual_seed(1)).tolist()
    assert b.indices(0) != b.indices(0)       # each call draws anew (the step number is not used)


class Toy(StepObjective):
    """Learn y = 2x with y_hat = w·x: loss mean (w x − 2 x)²; examples are floats x."""
    name = "toy"

    def loss(self, model, batch, pad_id):
        x = torch.tensor(batch)[:, None]
        loss = ((model(x) - 2 * x) ** 2).mean()
        return loss, {"toy/loss": loss.detach(), "x/mean": x.mean()}

    def save(self, model, run, tokenizer):
        (run.out / "w.json").write_text(json.dumps(model.weight.item()))


def test_validation_means_weigh_batches_by_their_size_and_drop_the_prefix():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    out = validation_means(Toy(), model, xs, 0, batch_size=2)     # batches of 2, 2 and 1
    assert out.keys() == {"val/loss", "val/x/mean"}
    assert out["val/x/mean"] == pytest.approx(3.0)
    assert out["val/loss"] == pytest.approx((4 * (1 + 4) / 2 * 2 + 4 * (9 + 16) / 2 * 2 + 4 * 25) / 5)


def _toy_run(out, steps=8, resume=False, on_step=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    config = TrainConfig(steps=steps, batch_size=3, lr=0.1, warmup_steps=0, eval_every=3, save_every=2, val_fraction=0.2)
    run = Run(out, "toy", steps, resume=resume, save_every=2, show_progress=False)
    tok = Tokenizer.train(["ab"], 300)
    return train_steps(Toy(), model, tok, run, config, [0.5, 1.0, 1.5, 2.0, 2.5], [1.0, 3.0], on_step, extra=7)


def test_the_loop_logs_its_rows_in_order_validates_on_schedule_and_saves(tmp_path):
    seen = []
    model = _toy_run(tmp_path / "run", on_step=lambda m, row: seen.append(row["step"]))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert list(rows[0]) == ["step", "toy/loss", "x/mean", "toy/grad_norm", "toy/lr", "toy/epoch", "time/elapsed_s"]
    assert [r["step"] for r in rows if "val/loss" in r] == [3, 6, 8] and seen == list(range(1, 9))
    assert rows[-1]["toy/loss"] < rows[0]["toy/loss"] and not model.training
    assert json.loads((tmp_path / "run" / "w.json").read_text()) == model.weight.item()
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["extra"] == 7


def test_a_nan_loss_stops_before_the_optimizer_step(tmp_path):
    class Bad(Toy):
        def loss(self, model, batch, pad_id):
            loss, stats = super().loss(model, batch, pad_id)
            return loss * float("nan"), {**stats, "toy/loss": loss.detach() * float("nan")}
    model = torch.nn.Linear(1, 1, bias=False)
    before = model.weight.detach().clone()
    run = Run(tmp_path / "bad", "toy", 4, show_progress=False)
    with pytest.raises(TrainingDiverged, match="step 1: toy/loss is nan"):
        train_steps(Bad(), model, Tokenizer.train(["ab"], 300), run, TrainConfig(steps=4, batch_size=2), [1.0, 2.0], [])
    assert torch.equal(model.weight, before)
