"""SFT on {prompt, response} demonstrations: the loss is the mean NLL of response tokens only (against a loop),
it does not depend on the logits at prompt or padding positions at all (their gradient is exactly zero), and a
tiny run lowers it.

With causal attention the prompt's tokens DO shape the response's logits (they are its context), so the test is
not "a prompt token's embedding gets no gradient": it is that the outputs at the positions that predict prompt
tokens (and pads) are not in the loss. Unmasking the prompt would fail both of the middle tests.
"""
import json

import pytest
import torch

from minirlhf import GPT
from minirlhf.data import Demonstration
from minirlhf.responses import collate_responses, encode_prompt_responses
from minirlhf.sft import SFTConfig, response_nll, train_sft

DEMOS = [Demonstration("q:dddd", "ab"), Demonstration("q:", "abab"), Demonstration("q:cc?", "a")]


def batch_of(tok, demos):
    joined, _ = encode_prompt_responses(tok, [d.prompt for d in demos], [[d.response] for d in demos], 32)
    return collate_responses([j for (j,) in joined], tok.pad_id)


class Perturbed(torch.nn.Module):
    """The model, with `noise` added to its logits where `where` (B, T) is True; keeps the logits' grad."""

    def __init__(self, model, where, noise):
        super().__init__()
        self.model, self.where, self.noise = model, where, noise

    def forward(self, ids, mask=None):
        self.logits = self.model(ids, mask)
        self.logits.retain_grad()
        return self.logits + self.noise * self.where[..., None]


def test_loss_is_the_mean_nll_of_response_tokens(init_dir, tok):
    model = GPT.from_pretrained(init_dir).eval()
    terms = []
    with torch.no_grad():
        for d in DEMOS:
            p, r = [tok.bos_id] + tok.encode(d.prompt), tok.encode(d.response) + [tok.eos_id]
            logp = torch.log_softmax(model(torch.tensor([p + r]))[0].double(), -1)
            terms += [-logp[len(p) + t - 1, i].item() for t, i in enumerate(r)]
        got = response_nll(model, batch_of(tok, DEMOS)).item()
    assert got == pytest.approx(sum(terms) / len(terms), abs=1e-5) and len(terms) == 3 + 5 + 2


def test_logits_at_prompt_and_pad_positions_do_not_enter_the_loss(init_dir, tok):
    model = GPT.from_pretrained(init_dir).eval()
    batch = batch_of(tok, DEMOS)
    B, T = batch.input_ids.shape
    predicts_response = torch.zeros(B, T, dtype=torch.bool)
    predicts_response[:, :-1] = batch.response_mask.bool()        # the column t logits predict token t + 1
    other = ~predicts_response                                     # prompt-predicting columns, pads, the last one
    assert other[:, :2].all() and (other & batch.attention_mask.bool()).sum() >= B * 3   # each prompt: [bos] q :
    noise = 100 * torch.randn(B, T, model.config.vocab_size, generator=torch.Generator().manual_seed(0))
    clean = response_nll(Perturbed(model, torch.zeros_like(other), noise), batch)
    spy = Perturbed(model, other, noise)
    noisy = response_nll(spy, batch)
    assert noisy.item() == clean.item()                            # bit for bit: those logits are not read
    noisy.backward()
    grad = spy.logits.grad.abs().sum(-1)                           # (B, T)
    assert (grad[other] == 0).all()                                # a prompt token's prediction: no gradient
    assert (grad[predicts_response] > 0).all()                     # every response token's: some


def test_a_tiny_run_lowers_the_response_loss(init_dir, tmp_path):
    demos = [Demonstration("q:" + "d" * (i % 5), "ab" * (1 + i % 3)) for i in range(40)]
    model = train_sft(demos, init_dir, tmp_path / "out", SFTConfig(steps=30, batch_size=8, lr=3e-3, val_fraction=0.1),
                      show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31)) and "val/loss" in rows[-1]
    assert rows[-1]["val/loss"] < 0.5 * rows[0]["sft/loss"]
    reloaded = GPT.from_pretrained(tmp_path / "out")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reloaded.parameters()))
