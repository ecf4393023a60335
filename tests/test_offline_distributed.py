"""The offline trainers under torch.distributed (gloo, CPU): two processes with 4 DPO pairs (RRHF queries) each take
the steps one process takes with the 8 of the same shuffled order, so the weights end the same."""
import json
import os
import random

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port, write_tiny_policy

from minirlhf.data import Pair, Ranking
from minirlhf.dpo import DPOConfig, train_dpo
from minirlhf.rrhf import RRHFConfig, train_rrhf
from minirlhf.runtime import barrier, shutdown_distributed


def data(seed=0):
    rng = random.Random(seed)
    word = lambda alphabet: "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 6)))
    pairs = [Pair("q:", word("ac"), word("bd")) for _ in range(24)]
    rankings = [Ranking("q:", rs, [r.count("a") / len(r) for r in rs])
                for rs in ([word("abcd") for _ in range(rng.randint(2, 4))] for _ in range(24))]
    return pairs, rankings


def configs(batch_size):
    common = dict(steps=3, batch_size=batch_size, lr=3e-3, warmup_steps=0, val_fraction=0.0)
    return DPOConfig(**common), RRHFConfig(**common)


def run_both(init, out, batch_size):
    pairs, rankings = data()
    dpo, rrhf = configs(batch_size)
    a = train_dpo(pairs, init, out / "dpo", dpo, show_progress=False)
    b = train_rrhf(rankings, init, out / "rrhf", rrhf, show_progress=False)
    return a, b


def worker(rank: int, world: int, port: int, tmp: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pathlib import Path
    run_both(Path(tmp) / "init", Path(tmp) / "two", batch_size=4)   # train_offline joins the process group
    barrier()  # as the CLI does: no rank leaves the group while the other still writes (gloo aborts)
    shutdown_distributed()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offline_ddp")
    write_tiny_policy(tmp / "init", n_layer=1, n_embd=16)
    mp.spawn(worker, args=(2, free_port(), str(tmp)), nprocs=2, join=True)
    one = run_both(tmp / "init", tmp / "one", batch_size=8)
    half = run_both(tmp / "init", tmp / "half", batch_size=4)
    return tmp, one, half


@pytest.mark.parametrize("i, stage, loss", [(0, "dpo", "dpo/loss"), (1, "rrhf", "rrhf/loss")])
def test_two_processes_equal_one_with_the_concatenated_batch(runs, i, stage, loss):
    from minirlhf import GPT
    tmp, one, half = runs
    two = GPT.from_pretrained(tmp / "two" / stage)                   # written by rank 0
    for (name, p), q, h in zip(one[i].state_dict().items(), two.state_dict().values(), half[i].state_dict().values()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=name)
    moved = max((p - h).abs().max().item() for p, h in zip(one[i].parameters(), half[i].parameters()))
    assert moved > 1e-3                                               # half the batch alone is visibly different
    rows = lambda d: [json.loads(x) for x in (d / stage / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows(tmp / "one"), rows(tmp / "two")):            # metrics: the mean over the two ranks
        assert a[loss] == pytest.approx(b[loss], abs=1e-5)
