"""Direct Preference Optimization (Rafailov et al. 2023): train the policy on preference pairs, no reward
model and no sampling.

    pairs (prompt, chosen y_w, rejected y_l) ──responses.py──▶ [bos] prompt ⊕ response [eos] for each
        ──ONE forward of the policy over the 2B sequences──▶ log π(y_w | x), log π(y_l | x)   (summed over
          the response's tokens; the per-token mean with average_logps, and always for IPO)
        ──minus the same under π_ref (precomputed once, before training)──▶ Δ
        ──losses.dpo_loss──▶ −log σ(β Δ) (sigmoid), relu(1 − β Δ) (hinge), (Δ − 1/(2β))² (ipo)

CPU: `minirlhf dpo --data pairs.jsonl --init runs/lm --out runs/dpo --steps 100` (the policy and the
reference both start from the pretrained LM in --init; a step is one forward and backward over 2 × batch_size
sequences). GPU: add `--device cuda` (bf16 autocast) and a bigger batch, e.g. `--batch_size=64`. Several
processes: `torchrun --nproc_per_node 2 -m minirlhf dpo ...` (offline.py).

Choices and simplifications, said out loud:
  * Reference log-probabilities are computed once, before the first step, by the --init policy itself
    (`precompute_ref`, the default): no second model is ever held in memory. `--precompute_ref=false` keeps
    a frozen copy and runs it on every batch instead; the two give the same run (tested).
  * Step-0 invariant (dropout is off): the policy is the reference, so Δ = 0, dpo/loss = log 2 = 0.6931 for
    sigmoid, and every implicit reward is 0 (tested). A first row without it means a bug in the masks.
  * The implicit rewards β log(π/π_ref) of chosen and rejected are logged as rewards/chosen and
    rewards/rejected (TRL's names). Only their difference, rewards/margin = β Δ, is optimised: the chosen
    reward falling while the margin grows is expected (both log-probabilities often fall, the rejected one
    faster), not a bug. rewards/accuracy is the share of pairs with chosen reward > rejected (ties count
    as wrong, so it is 0 at step 0).
  * IPO (Azar et al. 2023) regresses Δ onto 1/(2β), a target sized for per-token-averaged log-probabilities,
    so loss_type=ipo always uses average_logps (as TRL does); asking for summed ones is an error.
  * reference_free=True: Δ = log π(y_w) − log π(y_l) (an implicit uniform reference); no reference is
    computed and rewards are β log π(y).
  * Full-text pairs {chosen, rejected} (no prompt) are scored as responses to [bos] alone: every token counts.
  * The chosen and rejected of a pair share their prompt; a long pair loses the prompt's start first, the
    same for both (responses.join).

Metrics (metrics.jsonl, one row per step): dpo/loss; rewards/chosen, rewards/rejected, rewards/accuracy,
rewards/margin (batch means); logps/chosen, logps/rejected (the policy's sequence log-probabilities that
the loss used: sums, or per-token means with average_logps); dpo/grad_norm, dpo/lr, dpo/epoch; every
eval_every steps val/loss and val/rewards/*, val/logps/* on the held-out pairs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .config import keeps_old_names, validate
from .data import Pair
from .errors import InputError
from .losses import dpo_loss
from .model import GPT
from .offline import Objective, OfflineConfig, train_offline
from .preference_losses import DPO_LOSS_TYPES
from .responses import Joined, batched_response_logps, encode_prompt_responses, response_logps


@keeps_old_names
@dataclass
class DPOConfig(OfflineConfig):
    beta: float = 0.1
    """β, the strength of the KL anchor to the reference: the implicit reward is β log(π/π_ref)."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO), hinge (SLiC-HF: relu(1 − βΔ)) or ipo (IPO: (Δ − 1/(2β))², on per-token means)."""
    label_smoothing: float = 0.0
    """sigmoid only: the conservative DPO of labels flipped with this probability (cDPO), in [0, 0.5)."""
    reference_free: bool = False
    """Use a uniform reference: Δ = log π(y_w) − log π(y_l); no reference log-probabilities at all."""
    average_logps: bool | None = None
    """Sequence log-probability as the per-token mean over the response (RLAIF-V's dpo_use_average) instead
    of the sum. None: the sum, or the mean for ipo (which requires it)."""
    precompute_ref: bool = True
    """Compute the reference log-probabilities once, before training, with the --init policy (no second
    model in memory); false: a frozen copy of --init scores every batch."""

    def __post_init__(self):
        super().__post_init__()
        validate(self, positive=("beta",), choices={"loss_type": DPO_LOSS_TYPES})
        if not 0 <= self.label_smoothing < 0.5:
            raise InputError(f"--label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise InputError(f"--label_smoothing applies to --loss_type=sigmoid only, got {self.loss_type}")
        if self.loss_type == "ipo" and self.average_logps is False:
            raise InputError("--loss_type=ipo needs per-token-averaged log-probabilities; drop --average_logps=false")

    @property
    def length_penalty(self) -> float:
        """sequence_scores' exponent: 1 (per-token mean) with average_logps or ipo, else 0 (the sum)."""
        average = self.loss_type == "ipo" if self.average_logps is None else self.average_logps
        return 1.0 if average else 0.0


@dataclass
class PairExample:
    """A pair's two sequences and, once `prepare` has run, their reference log-probabilities."""
    chosen: Joined
    rejected: Joined
    ref_chosen: float | None = None
    ref_rejected: float | None = None


def encode_pairs(pairs: list[Pair], tokenizer, max_len: int) -> list[PairExample]:
    """Pairs -> PairExamples: the prompt encoded once, the two responses apart from it (responses.py)."""
    for p in pairs:
        if not isinstance(p, Pair):
            raise InputError(f"DPO trains on pairs {{prompt, chosen, rejected}}, got a {type(p).__name__}")
    joined, _ = encode_prompt_responses(tokenizer, [p.prompt for p in pairs],
                                        [[p.chosen, p.rejected] for p in pairs], max_len)
    return [PairExample(c, r) for c, r in joined]


def pair_logps(model: GPT, batch: list[PairExample], pad_id: int, length_penalty: float):
    """(log π(y_w | x), log π(y_l | x)), each (B,), from ONE forward over the 2B concatenated sequences."""
    logps = response_logps(model, [e.chosen for e in batch] + [e.rejected for e in batch], pad_id, length_penalty)
    return logps.split(len(batch))


class DPO(Objective):
    name = "dpo"

    def __init__(self, config: DPOConfig):
        self.config = config
        self.ref: GPT | None = None            # a live reference, only with precompute_ref=False

    def encode(self, examples, tokenizer, max_len):
        return encode_pairs(examples, tokenizer, max_len)

    def prepare(self, model, train, val, pad_id):
        """Reference log-probabilities: precomputed by `model` (still the --init policy), or a frozen copy."""
        if self.config.reference_free:
            return
        if not self.config.precompute_ref:
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
            return
        examples = train + val
        logps = batched_response_logps(model, [e.chosen for e in examples] + [e.rejected for e in examples],
                                       pad_id, self.config.length_penalty, self.config.eval_batch_size)
        for e, c, r in zip(examples, logps[:len(examples)].tolist(), logps[len(examples):].tolist()):
            e.ref_chosen, e.ref_rejected = c, r

    def reference_logps(self, batch, pad_id, device):
        """(log π_ref(y_w | x), log π_ref(y_l | x)) of a batch; (None, None) when reference_free."""
        if self.config.reference_free:
            return None, None
        if self.ref is not None:
            with torch.no_grad():
                return pair_logps(self.ref, batch, pad_id, self.config.length_penalty)
        return (torch.tensor([e.ref_chosen for e in batch], device=device),
                torch.tensor([e.ref_rejected for e in batch], device=device))

    def loss(self, model, batch, pad_id):
        c = self.config
        policy_chosen, policy_rejected = pair_logps(model, batch, pad_id, c.length_penalty)
        ref_chosen, ref_rejected = self.reference_logps(batch, pad_id, policy_chosen.device)
        losses, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                                            c.beta, c.reference_free, c.loss_type, c.label_smoothing)
        loss = losses.mean()
        return loss, {"dpo/loss": loss.detach(), "rewards/chosen": chosen_rewards.mean(),
                      "rewards/rejected": rejected_rewards.mean(),
                      "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
                      "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
                      "logps/chosen": policy_chosen.detach().mean(), "logps/rejected": policy_rejected.detach().mean()}


def train_dpo(pairs: list[Pair], init_dir, out_dir, config: DPOConfig, resume: bool = False,
              overwrite: bool = False, show_progress: bool = True, on_step=None) -> GPT:
    """DPO-train the GPT-2 in `init_dir` (also the reference) on `pairs`; write a self-contained model directory
    (config.json, model.safetensors, tokenizer.json, train_config.json, metrics.jsonl, plots/, checkpoints/)."""
    return train_offline(DPO(config), pairs, init_dir, out_dir, config, resume, overwrite, show_progress, on_step,
                         length_penalty=config.length_penalty)
