"""Reward-model training: one scalar r(x, y) per prompt ⊕ response, learned from human comparisons.

    pairs / rankings ──[bos] prompt ⊕ response [eos]──▶ RewardModel (GPT-2 trunk, scalar head at the EOS)
        ──K scores per prompt──▶ pairwise / ranking / Plackett-Luce / best-of-K loss
        ──after training──▶ gain, bias so that scores of the initial policy's samples are N(0, 1)

CPU: `minirlhf reward --data prefs.jsonl --init runs/lm --out runs/rm` (the trunk starts from the
pretrained LM in --init; a few minutes for the default 4-layer model). GPU: add `--device cuda`
(bf16 autocast) and a bigger batch, e.g. `--batch_size=64`.

InstructGPT batching (Ouyang et al. 2022, sec. 3.5): the K responses of one prompt are one
row of a (B, K) reward tensor, so each response is scored by ONE forward pass and all of its
K-choose-2 comparisons are formed from those K scores: K forwards per prompt, not the K(K-1) of
shuffling the pairs apart (which also re-fits each response K-1 times an epoch and overfits). All
Σ K sequences of a minibatch go through the model together, left-padded, with an attention mask.

Choices and simplifications, said out loud:
  * A sequence is [bos] + encode(prompt) ⊕ encode(response) + [eos], prompt and response encoded apart
    (responses.encode_prompt_responses, also DPO's, RRHF's and SFT's): the very ids a rollout shows the
    reward model, its prompt's ids then the sampled ones. The score is read at the last real token (the
    EOS). An example longer than max_len loses its prompt's START first, as a rollout's prompt does; a
    response that still does not fit loses its end, and so its EOS, like a sample that hit its length
    limit. Cuts are counted and warned about.
  * Rankings {query, responses, scores}: highest score = rank 0; tied scores share a rank, and tied
    pairs are skipped by the ranking loss and by the accuracies. A pair is a ranking with K = 2.
  * loss "auto" is pairwise for pairs and ranking for rankings; best_of_k's best is rank 0 (the first
    one if several tie); `margin` applies to the pairwise loss only.
  * A minibatch may mix prompts with different K: the loss is computed per group of equal K and
    averaged over prompts.
  * Validation holds out whole examples; the same prompt on two lines can land on both sides.
  * The length is a number of optimizer steps; the data are reshuffled every epoch (an epoch is
    len(train) / batch_size steps; InstructGPT trains a single epoch to avoid overfitting).
  * Normalisation (Ziegler et al. 2019) is fitted once, after training, on samples of the initial
    policy (lm-human-preferences also fits it before; our losses never see normalised scores, so that
    would change nothing). Training uses raw scores; gain and bias apply whenever the model is called.
  * No dropout (the trunk loads with dropout 0), no gradient accumulation.
  * Under torchrun (runtime.py), rank r of N takes the r-th of N consecutive batches of the same
    shuffled order, so together they take the batch of size N·batch_size that one process would;
    gradients are averaged, metrics are means over ranks, validation and normalisation run on rank 0.

Metrics (metrics.jsonl, one row per step): reward/loss; reward/accuracy (share of the batch's untied
pairs scored in the right order); reward/ranking_accuracy (share of prompts whose every pair is right);
reward/margin_mean (mean r_better - r_worse); reward/score_mean, score_std (raw scores); reward/grad_norm,
lr, epoch; the same val/* on the held-out set every eval_every steps; a last row with norm/raw_mean,
raw_std, gain, bias (also in normalization.json).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import save_json
from .config import TrainConfig, keeps_old_names, validate
from .data import Pair, Ranking, train_val_split
from .errors import InputError
from .losses import best_of_k_loss, pairwise_loss, plackett_luce_loss, ranking_loss, sigmoid_rank_loss
from .model import RewardModel
from .ranks import scores_to_ranks
from .responses import Cuts, encode_prompt_responses
from .reward_eval import fit_reward_normalization, normalization_set, score_sequences, summarize
from .runtime import init_distributed, resolve_device, seed_everything, sync_params
from .run import Run
from .steps import StepObjective, train_steps
from .tokenizer import Tokenizer

LOSSES = ("auto", "pairwise", "ranking", "plackett_luce", "best_of_k", "sigmoid_rank")
SIGMOID_RANK_WARNING = ("--loss sigmoid_rank is the original Chinese rank-list example's plain-sigmoid loss, there "
                        "for teaching: it saturates (a confidently wrong pair gets no gradient); log σ (ranking, "
                        "pairwise) is the right loss")


@keeps_old_names
@dataclass
class RewardConfig(TrainConfig):
    """The reward model's fields; the step, optimiser and run fields are config.TrainConfig's."""
    loss: str = "auto"
    """pairwise (Stiennon 2020), ranking (InstructGPT: all K-choose-2 pairs), plackett_luce (NLL of the
    whole ranking), best_of_k (Ziegler 2019: softmax over K, best = rank 0), sigmoid_rank (-σ over the same
    pairs as ranking: the original Chinese rank-list example's, for teaching; it saturates, with a warning);
    auto = pairwise for pairs, ranking for rankings."""
    margin: float = 0.0
    """Pairwise loss only: -log σ(r_w - r_l - margin) asks for a gap of at least `margin` (Llama 2)."""
    steps: int = 300
    """Optimizer steps (--steps). Data are reshuffled each epoch of len(train)/batch_size steps."""
    batch_size: int = 16
    """Prompts per step; each brings all its K responses, so one forward sees Σ K sequences."""
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    val_fraction: float = 0.1
    """Share of examples (prompts) held out for validation loss and accuracies."""
    eval_batch_size: int = 64
    """Prompts per forward in validation; sequences per forward when scoring the normalisation set."""
    seed: int = 0
    """Seed for the head's initialisation, the split, data order and the normalisation samples."""
    max_len: int = 0
    """Longest sequence in tokens, [bos] and [eos] included; longer ones lose the prompt's start first, then the
    response's end (responses.join). 0: block_size."""
    normalize: bool = True
    """Fit gain and bias after training so that reference-set scores have mean 0 and std 1."""
    norm_samples: int = 256
    """Responses sampled from the initial policy (--init) on the training prompts for normalisation."""
    norm_max_new_tokens: int = 32
    """Length limit of those samples (cut to fit the context)."""

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        super().__post_init__()
        validate(self, positive=("norm_samples", "norm_max_new_tokens"), non_negative=("max_len",))


@dataclass
class Example:
    """One prompt's K candidate sequences (token ids) and their ranks (0 = best)."""
    prompt: str
    seqs: list[list[int]]
    ranks: list[int]


def encode_examples(examples: list, tokenizer: Tokenizer, max_len: int) -> tuple[list[Example], Cuts]:
    """Pairs/Rankings -> (Examples, what was cut): each response joined to its prompt by
    responses.encode_prompt_responses, the encoding a rollout presents to the reward model."""
    prompts, responses, ranks = [], [], []
    for ex in examples:
        if isinstance(ex, Pair):
            prompts.append(ex.prompt)
            responses.append([ex.chosen, ex.rejected])
            ranks.append([0, 1])
        elif isinstance(ex, Ranking):
            prompts.append(ex.query)
            responses.append(ex.responses)
            ranks.append(scores_to_ranks(ex.scores))
        else:
            raise TypeError(f"expected Pair or Ranking, got {type(ex).__name__}")
    joined, cuts = encode_prompt_responses(tokenizer, prompts, responses, max_len)
    return [Example(p, [j.ids for j in js], r) for p, js, r in zip(prompts, joined, ranks)], cuts


def resolve_loss(name: str, examples: list[Example]) -> str:
    """'auto' -> pairwise for all-K=2 data, ranking otherwise; pairwise on K > 2 is an error."""
    max_k = max(len(ex.seqs) for ex in examples)
    if name == "auto":
        return "pairwise" if max_k == 2 else "ranking"
    if name == "pairwise" and max_k > 2:
        raise InputError(f"--loss pairwise needs pairs (K = 2) but the data have rankings with K = {max_k}; "
                         f"use --loss ranking (all K-choose-2 pairs) or plackett_luce")
    return name


def forward_examples(model: RewardModel, batch: list[Example], pad_id: int):
    """Score every candidate of every example in one forward; return [(rewards (n, K), ranks (n, K))]
    per group of examples with equal K."""
    scores = score_sequences(model, [s for ex in batch for s in ex.seqs], pad_id)
    groups: dict[int, tuple[list, list]] = {}
    for ex, r in zip(batch, scores.split([len(ex.seqs) for ex in batch])):
        g = groups.setdefault(len(ex.seqs), ([], []))
        g[0].append(r)
        g[1].append(ex.ranks)
    return [(torch.stack(rs), torch.tensor(rk, device=scores.device)) for rs, rk in groups.values()]


def reward_loss(name: str, rewards: torch.Tensor, ranks: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """The configured loss on rewards (n, K) with ranks (n, K) -> scalar."""
    if name == "pairwise":
        order = ranks.argsort(dim=1, stable=True)               # better candidate first
        r, rk = rewards.gather(1, order), ranks.gather(1, order)
        keep = rk[:, 0] != rk[:, 1]                             # a tied pair says nothing
        if not keep.any():
            return rewards.sum() * 0.0
        return pairwise_loss(r[keep, 0], r[keep, 1], margin)
    if name == "ranking":
        return ranking_loss(rewards, ranks)
    if name == "plackett_luce":
        return plackett_luce_loss(rewards, ranks)
    if name == "best_of_k":
        return best_of_k_loss(rewards, ranks.argmin(1))         # argmin: the first of tied bests
    if name == "sigmoid_rank":
        return sigmoid_rank_loss(rewards, ranks)
    raise ValueError(f"unknown loss {name!r}")


def batch_loss(name: str, groups, margin: float) -> torch.Tensor:
    """Mean over prompts of the per-group losses."""
    n = sum(r.shape[0] for r, _ in groups)
    return sum(reward_loss(name, r, rk, margin) * r.shape[0] for r, rk in groups) / n


@torch.no_grad()
def validation_metrics(model: RewardModel, examples: list[Example], loss_name: str, margin: float, pad_id: int,
                       batch_size: int = 64) -> dict:
    """val/loss (mean over prompts), val/accuracy, val/ranking_accuracy, val/margin_mean (over every held-out
    pair at once, not averaged over batches)."""
    was_training = model.training
    model.eval()
    all_groups, loss_sum = [], 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        groups = forward_examples(model, chunk, pad_id)
        loss_sum += batch_loss(loss_name, groups, margin).item() * len(chunk)
        all_groups += groups
    model.train(was_training)
    return {"val/loss": loss_sum / len(examples), **summarize(all_groups, "val")}


class RewardTraining(StepObjective):
    """The reward model's objective for the step trainer (steps.py): ONE forward over a batch's Σ K sequences,
    the configured loss averaged over its prompts; at the end `normalize(model, run)`, if given, before the
    model directory is written."""
    name = "reward"

    def __init__(self, loss_name: str, margin: float, normalize=None):
        self.loss_name, self.margin, self.normalize = loss_name, margin, normalize

    def loss(self, model, batch, pad_id):
        groups = forward_examples(model, batch, pad_id)          # ONE forward, Σ K sequences
        loss = batch_loss(self.loss_name, groups, self.margin)
        scores = torch.cat([r.detach().flatten() for r, _ in groups])
        return loss, {"reward/loss": loss.detach(), **summarize([(r.detach(), k) for r, k in groups], "reward"),
                      "reward/score_mean": scores.mean(), "reward/score_std": scores.std(unbiased=False)}

    def validate(self, model, examples, pad_id, batch_size):
        return validation_metrics(model, examples, self.loss_name, self.margin, pad_id, batch_size)

    def postfix(self, row):
        return {"loss": f"{row['reward/loss']:.3f}", "acc": f"{row['reward/accuracy']:.2f}"}

    def save(self, model, run, tokenizer):
        if self.normalize is not None:
            self.normalize(model, run)
        model.save_pretrained(run.out, tokenizer)


def train_reward_model(examples: list, init_dir, out_dir, config: RewardConfig, tokenizer: Tokenizer,
                       resume: bool = False, overwrite: bool = False, reference_texts: list[str] | None = None,
                       norm_prompts: list[str] | None = None,
                       show_progress: bool = True) -> RewardModel:
    """Train a RewardModel on Pairs or Rankings, starting from the GPT-2 in `init_dir`; normalise it.

    The normalisation set is `reference_texts` (full texts, encoded like training sequences) if given,
    else `config.norm_samples` responses of the init policy on `norm_prompts` (default: the training
    prompts), scored as the very token sequences that were sampled, as a policy's rollouts will be: a
    response cut at norm_max_new_tokens keeps no EOS. Writes a
    self-contained directory: config.json, model.safetensors, tokenizer.json, reward_head.safetensors
    (head + gain/bias), normalization.json, metrics.jsonl, train_config.json, plots/, checkpoints/.
    """
    out = Path(out_dir)
    if not examples:
        raise InputError("no preference examples to train on")
    if out.resolve() == Path(init_dir).resolve():
        raise InputError(f"{out}: --out must differ from --init")
    if reference_texts is not None and not reference_texts:
        raise InputError("reference_texts is empty: nothing to normalise on")
    device = resolve_device(config.device)
    init_distributed(device)                                     # torchrun: see runtime.py
    seed_everything(config.seed)                                 # the fresh head's N(0, 1/sqrt(d+1)) init
    model = RewardModel.from_pretrained(init_dir, init_head=True).to(device)
    sync_params(model)                                           # on the device: nccl moves only CUDA tensors
    tokenizer.check_model(model.config, init_dir)
    block = model.config.block_size
    max_len = config.max_len or block
    if not 2 <= max_len <= block:
        raise InputError(f"--max_len={config.max_len} must be in [2, block_size={block}]")
    encoded, _ = encode_examples(examples, tokenizer, max_len)  # one warning if anything was cut
    train_ex, val_ex = train_val_split(encoded, config.val_fraction, config.seed)
    loss_name = resolve_loss(config.loss, train_ex + val_ex)
    if loss_name == "sigmoid_rank":
        warnings.warn(SIGMOID_RANK_WARNING)

    def normalize(trained: RewardModel, run: Run):  # rank 0, after training: the initial policy's scores -> N(0, 1)
        seqs, source = normalization_set(reference_texts, init_dir, norm_prompts or [e.prompt for e in train_ex],
                                         tokenizer, config, max_len, device)
        stats = fit_reward_normalization(trained, seqs, tokenizer.pad_id, config.eval_batch_size)
        save_json(out / "normalization.json", {"source": source, **stats})
        run.logger.log({"step": config.steps, **{f"norm/{k}": v for k, v in stats.items() if k != "n"}})

    run = Run(out, "reward", config.steps, resume, overwrite, inputs=(init_dir,), save_every=config.save_every,
              show_progress=show_progress)
    objective = RewardTraining(loss_name, config.margin, normalize if config.normalize else None)
    return train_steps(objective, model, tokenizer, run, config, train_ex, val_ex, loss=loss_name)
