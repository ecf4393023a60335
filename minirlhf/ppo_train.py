"""The PPO run: load the models, loop `PPOTrainer.step` over a prompt pool, log, checkpoint, save.

CPU: `minirlhf ppo --prompts prompts.jsonl --init runs/x/sft --reward runs/x/reward --out runs/x/policy`
GPU: add `--device cuda`. Config: `--key=value` for any PPOConfig field (`minirlhf ppo --help`).
Several processes: `torchrun --nproc_per_node 2 -m minirlhf ppo ...` (each rank draws `batch_size`
prompts and rollouts from its own seed; metrics are averaged over ranks; rank 0 writes).

The output directory is a self-contained policy: config.json + model.safetensors (HF GPT-2 format),
tokenizer.json, value_head.safetensors (and critic/ when value_model=separate), metrics.jsonl with one
row per iteration, plots/, and checkpoints/ for --resume.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .checkpoint import save_json
from .errors import InputError
from .model import GPT, RewardModel
from .plots import plot_run
from .ppo import PPOConfig, PPOTrainer
from .runtime import init_distributed, is_main_process, mean_across_ranks, rank_seed, resolve_device, seed_everything
from .tokenizer import Tokenizer
from .tracking import MetricsLogger, check_finite, progress
from .trainstate import check_out_dir, load_checkpoint, save_checkpoint, start_out_dir, truncate_metrics


def encode_prompts(tokenizer: Tokenizer, prompts: list[str], max_len: int) -> list[list[int]]:
    """[bos] + encode(prompt), keeping the last `max_len` tokens of a prompt that is too long (one warning).

    The end is kept because it is what the response continues (`minirlhf sample` does the same).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1 (room for [bos]), got {max_len}")
    encoded = [[tokenizer.bos_id] + ids for ids in tokenizer.encode_batch(prompts)]
    too_long = sum(len(p) > max_len for p in encoded)
    if too_long:
        warnings.warn(f"{too_long} prompt(s) longer than {max_len} tokens were cut to their last {max_len}")
    return [p[-max_len:] for p in encoded]


def load_policy_and_reward(init_dir, reward_dir, device):
    """(tokenizer, policy, frozen reference, reward model), checking that they share one vocabulary."""
    tokenizer = Tokenizer.from_file(Path(init_dir) / "tokenizer.json")
    policy = GPT.from_pretrained(init_dir).to(device)
    ref = GPT.from_pretrained(init_dir).to(device)
    reward = RewardModel.from_pretrained(reward_dir).to(device)
    for name, cfg in (("--init", policy.config), ("--reward", reward.config)):
        if cfg.vocab_size != tokenizer.vocab_size:
            raise InputError(f"{name}: model has {cfg.vocab_size} tokens but {init_dir}/tokenizer.json has "
                             f"{tokenizer.vocab_size}")
    reward_tok = Path(reward_dir) / "tokenizer.json"
    if reward_tok.exists() and Tokenizer.from_file(reward_tok).tok.to_str() != tokenizer.tok.to_str():
        raise InputError(f"{reward_tok}: the reward model was trained with a different tokenizer than {init_dir}")
    return tokenizer, policy, ref, reward


def save_policy(trainer: PPOTrainer, out_dir, tokenizer: Tokenizer):
    out = Path(out_dir)
    trainer.model.policy.save_pretrained(out, tokenizer)
    trainer.model.value_head.save(out)
    if trainer.model.critic is not None:
        trainer.model.critic.save_pretrained(out / "critic")


def train_ppo(prompts: list[str], init_dir, reward_dir, out_dir, config: PPOConfig, resume: bool = False,
              overwrite: bool = False, reward_fn=None, show_progress: bool = True, on_iteration=None):
    """Run `config.iterations` PPO iterations; returns the trainer (its .model.policy is the new policy).

    `reward_fn` replaces the reward model with any callable fn(sequences, response_mask) -> scores.
    `on_iteration(trainer, row)` is called after each logged iteration (used by the demo's evaluations).
    """
    out = Path(out_dir)
    if not prompts:
        raise InputError("no prompts to train on")
    device = resolve_device(config.device)
    init_distributed(device)
    ckpt = check_out_dir(out, resume, overwrite, inputs=(init_dir, reward_dir))  # changes nothing yet
    seed_everything(rank_seed(config.seed))
    tokenizer, policy, ref, reward = load_policy_and_reward(init_dir, reward_dir, device)
    config = replace(config, eos_id=tokenizer.eos_id if config.eos_id is None else config.eos_id,
                     pad_id=tokenizer.pad_id)
    if config.eos_id == config.pad_id:
        raise InputError(f"--eos_id={config.eos_id} is the tokenizer's PAD id; EOS must differ from PAD")
    context = min(policy.config.block_size, reward.config.block_size)
    if context - config.max_new_tokens < 1:
        raise InputError(f"--max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the "
                         f"models' context of {context} tokens")
    pool = encode_prompts(tokenizer, prompts, context - config.max_new_tokens)
    trainer = PPOTrainer(policy, ref, reward_fn or reward, config)
    modules = {"actor_critic": trainer.model}
    start = 0
    if ckpt is not None:  # read (and checked) before anything is written
        start, extra = load_checkpoint(ckpt, modules, trainer.optimizer, {"ppo": trainer.generator})
        trainer.load_state_dict(extra)
    start_out_dir(out, resume, overwrite)  # --overwrite empties out_dir only now, after every input loaded
    if is_main_process():
        save_json(out / "train_config.json", asdict(config))
    truncate_metrics(out / "metrics.jsonl", "iteration", start)
    logger = MetricsLogger(out / "metrics.jsonl", enabled=is_main_process())
    bar = progress(config.iterations, start, "ppo", show_progress and is_main_process())
    for it in range(start, config.iterations):
        idx = torch.randint(len(pool), (config.batch_size,), generator=trainer.generator).tolist()
        row = mean_across_ranks(trainer.step([pool[i] for i in idx]))
        check_finite(row, it + 1, ["env/reward_mean", "objective/kl", "ppo/policy_loss", "ppo/value_loss",
                                   "ppo/grad_norm"], unit="iteration")
        logger.log(row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['env/reward_mean']:.3f}", kl=f"{row['objective/kl']:.2f}")
        if on_iteration is not None:
            on_iteration(trainer, row)
        if config.save_every and (it + 1) % config.save_every == 0:
            save_checkpoint(out, it + 1, modules, trainer.optimizer, {"ppo": trainer.generator},
                            trainer.state_dict())
    bar.close()
    if is_main_process():
        save_policy(trainer, out, tokenizer)
    save_checkpoint(out, config.iterations, modules, trainer.optimizer, {"ppo": trainer.generator},
                    trainer.state_dict())
    if is_main_process():
        plot_run(out)
    return trainer
