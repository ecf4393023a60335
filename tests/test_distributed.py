"""Data parallelism under torch.distributed (gloo, CPU): a 2-process step equals the 1-process step on the
concatenated batch, for the LM loss and for PPO's update (advantages whitened across ranks); and real
`torchrun --nproc_per_node 2 -m minirlhf ...` runs of pretrain and ppo write outputs that load."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port
from safetensors.torch import load_file, save_file

from minirlhf import GPT, GPTConfig, RewardModel, Tokenizer, ValueHead
from minirlhf.grpo import GRPOConfig, GRPOTrainer
from minirlhf.ops import AGGREGATIONS
from minirlhf.optim import clip_grad, make_adamw
from minirlhf.ppo import PPOConfig, PPOTrainer
from minirlhf.rollout import Rollout
from minirlhf.runtime import average_gradients, barrier, init_distributed, shutdown_distributed, sync_params
from minirlhf.sft import lm_loss

CFG = GPTConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=16, block_size=24)


def token_sum_reward(seq, rmask):
    """A dense toy reward: the sum of (token id mod 5) over the response."""
    return ((seq[:, -rmask.shape[1]:] % 5).float() * rmask).sum(-1)


def lm_step(rows: slice, init_seed: int) -> dict:
    """One AdamW step of the LM loss on rows `rows` of a fixed (8, 12) batch of equal-length texts."""
    torch.manual_seed(init_seed)
    model = GPT(CFG)
    sync_params(model)                          # ranks start from different inits: rank 0's must win
    optimizer = make_adamw(model, 1e-2, 0.1)
    ids = torch.randint(3, 20, (8, 12), generator=torch.Generator().manual_seed(0))[rows]
    lm_loss(model, ids, pad_id=0).backward()
    average_gradients(model)
    clip_grad(model, 1.0)
    optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def ppo_step(rows: slice) -> dict:
    """PPO's advantages and one update on rows `rows` of the same 8 rollouts (fixed-length responses)."""
    torch.manual_seed(0)
    policy, ref = GPT(CFG), GPT(CFG)
    ref.load_state_dict(policy.state_dict())
    config = PPOConfig(max_new_tokens=6, batch_size=8, num_minibatches=1, ppo_epochs=1, eos_id=None, pad_id=0,
                       lr=1e-2, iterations=0, vf_coef=0.5)
    trainer = PPOTrainer(policy, ref, token_sum_reward, config, generator=torch.Generator().manual_seed(0))
    ro = trainer.rollout([[1, 5], [1, 6, 4], [1, 7], [1, 8, 9]] * 2).minibatch(torch.arange(8)[rows])
    _, advantages, returns = trainer.advantages(ro, trainer.kl_ctl.kl_coef)
    trainer.update(ro, advantages, returns)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items() if k != "policy.lm_head.weight"}
    return {**state, "advantages": advantages, "scores": ro.scores}


def cut_to_lengths(ro, lengths):
    """The rollout with response i cut to lengths[i] tokens (the rest PAD and masked): responses of different
    lengths, as EOS gives, without relying on a random model to sample EOS."""
    keep = (torch.arange(ro.response_mask.shape[1]) < torch.tensor(lengths)[:, None]).float()
    seq = ro.sequences.clone()
    seq[:, ro.prompt_len:] = torch.where(keep.bool(), seq[:, ro.prompt_len:], torch.zeros_like(keep).long())
    attn = ro.attention_mask.clone()
    attn[:, ro.prompt_len:] = keep.long()
    return Rollout(seq, attn, keep, ro.prompt_len, ro.logprobs * keep, ro.ref_logprobs * keep,
                   None if ro.values is None else ro.values * keep, ro.scores, ro.entropy * keep)


def grpo_step(rows: slice, aggregation: str) -> dict:
    """GRPO's advantages (scaled by the batch's std) and one update, 2 micro-batches, on rows `rows` of the same
    8 rollouts (two groups of 4), whose responses have 8 different lengths."""
    torch.manual_seed(0)
    policy, ref = GPT(CFG), GPT(CFG)
    ref.load_state_dict(policy.state_dict())
    config = GRPOConfig(max_new_tokens=6, batch_size=8, group_size=4, num_minibatches=1, eos_id=None, pad_id=0,
                        lr=1e-2, iterations=0, scale_rewards="batch", loss_aggregation=aggregation,
                        gradient_accumulation_steps=2 if rows.stop - rows.start == 4 else 4)
    trainer = GRPOTrainer(policy, ref, token_sum_reward, config, generator=torch.Generator().manual_seed(0))
    ro = trainer.rollout([[1, 5]] * 4 + [[1, 6, 4]] * 4)
    ro = cut_to_lengths(ro, [6, 1, 4, 2, 5, 3, 6, 1]).minibatch(torch.arange(8)[rows])
    ro.scores = token_sum_reward(ro.sequences, ro.response_mask)
    _, advantages = trainer.advantages(ro, trainer.kl_ctl.kl_coef)
    trainer.update(ro, advantages, trainer.kl_ctl.kl_coef)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items() if k != "policy.lm_head.weight"}
    return {**state, "advantages": advantages, "scores": ro.scores}


def worker(rank: int, world: int, port: int, tmp: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))
    half = slice(rank * 4, rank * 4 + 4)
    save_file(lm_step(half, init_seed=100 + rank), f"{tmp}/lm{rank}.safetensors")
    save_file(ppo_step(half), f"{tmp}/ppo{rank}.safetensors")
    for agg in AGGREGATIONS:
        save_file(grpo_step(half, agg), f"{tmp}/grpo_{agg}{rank}.safetensors")
    barrier()  # as the CLI does: no rank leaves the group while the other still writes (gloo aborts)
    shutdown_distributed()
    if rank == 0:  # the 1-process reference on the whole batch, same process, same thread count
        save_file(lm_step(slice(0, 8), init_seed=100), f"{tmp}/lm_ref.safetensors")
        save_file(ppo_step(slice(0, 8)), f"{tmp}/ppo_ref.safetensors")
        for agg in AGGREGATIONS:
            save_file(grpo_step(slice(0, 8), agg), f"{tmp}/grpo_{agg}_ref.safetensors")


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(2, free_port(), str(tmp)), nprocs=2, join=True)
    names = ["lm0", "lm1", "lm_ref", "ppo0", "ppo1", "ppo_ref"]
    names += [f"grpo_{agg}{part}" for agg in AGGREGATIONS for part in ("0", "1", "_ref")]
    return {name: load_file(tmp / f"{name}.safetensors") for name in names}


def test_two_process_lm_step_equals_one_process_step_on_the_whole_batch(two_process_results):
    r = two_process_results
    for k, ref in r["lm_ref"].items():
        assert torch.equal(r["lm0"][k], r["lm1"][k]), k           # ranks stay identical
        torch.testing.assert_close(r["lm0"][k], ref, atol=1e-5, rtol=0, msg=k)
    moved = max((r["lm_ref"][k] - lm_step(slice(0, 4), 100)[k]).abs().max().item() for k in r["lm_ref"])
    assert moved > 1e-3  # a half-batch step alone is visibly different: the test can tell


def test_two_process_ppo_update_equals_one_process_update(two_process_results):
    r = two_process_results
    ref = r["ppo_ref"]
    # the same 8 rollouts, split 4 + 4: scores match and advantages are whitened with the global mean/std
    torch.testing.assert_close(torch.cat([r["ppo0"]["scores"], r["ppo1"]["scores"]]), ref["scores"])
    assert ref["scores"].std() > 0
    adv = torch.cat([r["ppo0"]["advantages"], r["ppo1"]["advantages"]])
    torch.testing.assert_close(adv, ref["advantages"], atol=1e-5, rtol=0)
    assert r["ppo0"]["advantages"].mean().abs() > 1e-3       # each half alone is not whitened to mean 0
    for k in ref:
        if k not in ("advantages", "scores"):
            assert torch.equal(r["ppo0"][k], r["ppo1"][k]), k
            torch.testing.assert_close(r["ppo0"][k], ref[k], atol=1e-5, rtol=0, msg=k)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_two_process_grpo_update_with_uneven_lengths_equals_one_process_update(two_process_results, aggregation):
    """Rank 0's 4 responses hold 13 tokens, rank 1's 15: the token mean is over all 28 on both ranks (and the
    batch std of scale_rewards="batch" over all 8 rewards), so 2 ranks × 2 micro-batches = 1 rank × 4."""
    r = {part: two_process_results[f"grpo_{aggregation}{part}"] for part in ("0", "1", "_ref")}
    ref = r["_ref"]
    torch.testing.assert_close(torch.cat([r["0"]["scores"], r["1"]["scores"]]), ref["scores"])
    adv = torch.cat([r["0"]["advantages"], r["1"]["advantages"]])
    torch.testing.assert_close(adv, ref["advantages"], atol=1e-6, rtol=0)
    by_hand = ref["scores"].view(2, 4)
    by_hand = ((by_hand - by_hand.mean(1, keepdim=True)) / (ref["scores"].std() + 1e-4)).flatten()
    torch.testing.assert_close(ref["advantages"], by_hand, atol=1e-6, rtol=0)      # the whole batch's std
    assert (r["0"]["scores"].std() - ref["scores"].std()).abs() > 1e-3       # a rank's own std would differ
    for k in ref:
        if k not in ("advantages", "scores"):
            assert torch.equal(r["0"][k], r["1"][k]), k
            torch.testing.assert_close(r["0"][k], ref[k], atol=1e-5, rtol=0, msg=k)  # as the PPO test: Adam turns rounding into 1e-6


# ---------------------------------------------------------------- the real command under torchrun

TEXTS = [f"今天天气{'很好' if i % 2 else '不错'}，我们去公园玩了{i % 7}次。" for i in range(30)]


def torchrun(*args):
    torchrun_bin = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun_bin, "--standalone", "--nproc_per_node", "2", "-m", "minirlhf", *map(str, args)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_torchrun_pretrain_then_ppo_write_outputs_that_load(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    lm = tmp_path / "lm"
    r = torchrun("pretrain", "--text", tmp_path / "t.txt", "--out", lm, "--steps", 4, "--save-every", 2,
                 "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32", "--batch_size=4", "--vocab_size=300",
                 "--eval_every=2")
    assert r.stdout.count("saved model to") == 1                        # rank 0 speaks for both
    GPT.from_pretrained(lm)
    rows = [json.loads(x) for x in (lm / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and "val/loss" in rows[1]
    rng = load_file(lm / "checkpoints" / "step-4" / "rng.safetensors")
    assert not torch.equal(rng["rank0.gen.data"], rng["rank1.gen.data"])   # each rank has its own sampler

    tok = Tokenizer.from_file(lm / "tokenizer.json")
    RewardModel.from_pretrained(lm, init_head=True).save_pretrained(tmp_path / "rm", tok)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": t[:4]}, ensure_ascii=False) + "\n"
                                              for t in TEXTS[:4]), encoding="utf-8")
    policy = tmp_path / "policy"
    torchrun("ppo", "--prompts", tmp_path / "p.jsonl", "--init", lm, "--reward", tmp_path / "rm", "--out", policy,
             "--iterations", 2, "--batch_size=4", "--num_minibatches=2", "--max_new_tokens=4", "--adaptive_kl=true")
    GPT.from_pretrained(policy)
    ValueHead(16).load(policy)
    rows = [json.loads(x) for x in (policy / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2]
    state = json.loads((policy / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["world_size"] == 2 and state["extra"]["kl_coef"] != 0.1   # the controller moved, on all ranks
