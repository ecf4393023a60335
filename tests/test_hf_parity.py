"""Checkpoints move both ways between minirlhf and transformers' GPT2LMHeadModel (fp32, within 1e-4).

transformers is a test-only extra; these tests skip if it is not installed.
"""
import pytest
import torch

from minirlhf import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


def hf_model(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=80, n_positions=40, n_embd=48, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF zero-initialises biases; randomise everything so a transpose bug shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 80, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row
    return ids, mask


def test_transformers_directory_loads_with_same_logits(tmp_path):
    ref = hf_model()
    ref.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path).eval()
    ids, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=0)


def test_transformers_loads_our_directory_with_same_logits(tmp_path):
    torch.manual_seed(1)
    ours = GPT(GPTConfig(vocab_size=80, n_layer=2, n_head=4, n_embd=48, block_size=40)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours.save_pretrained(tmp_path)
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids, mask = inputs()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, ours(ids), atol=1e-4, rtol=0)
        hf = ref(ids, attention_mask=mask, position_ids=pos).logits
        torch.testing.assert_close(hf * mask[..., None], ours(ids, mask) * mask[..., None], atol=1e-4, rtol=0)


def test_hand_written_gpt2_tensors_without_prefix_load(tmp_path):
    """A GPT2Model-style file (no `transformer.` prefix, Conv1D layout, attn.bias buffers) loads too."""
    ref = hf_model(seed=2)
    from safetensors.torch import save_file
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in ref.state_dict().items()
             if k != "lm_head.weight"}
    state.update({f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 40, 40)) for i in range(2)})
    save_file(state, str(tmp_path / "model.safetensors"))
    ref.config.to_json_file(tmp_path / "config.json")
    ours = GPT.from_pretrained(tmp_path).eval()
    ids, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=0)
