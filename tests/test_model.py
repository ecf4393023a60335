import pytest
import torch

from minirlhf import GPT, GPTConfig, RewardModel, ValueHead
from minirlhf.errors import InputError
from minirlhf.model import position_ids_from_mask


def pad_left(ids, n, pad=0):
    B = ids.shape[0]
    return (torch.cat([torch.full((B, n), pad), ids], 1),
            torch.cat([torch.zeros(B, n, dtype=torch.long), torch.ones_like(ids)], 1))


def test_positions_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


@pytest.mark.parametrize("n_pad", [1, 5])
def test_left_padding_changes_no_logit(tiny_gpt, n_pad):
    ids = torch.randint(3, 64, (2, 9))
    plain = tiny_gpt(ids)
    padded_ids, mask = pad_left(ids, n_pad)
    padded = tiny_gpt(padded_ids, mask)
    torch.testing.assert_close(padded[:, n_pad:], plain, atol=1e-5, rtol=0)
    assert torch.isfinite(padded).all()  # pad queries must not produce NaN


def test_mixed_padding_in_one_batch_matches_each_row_alone(tiny_gpt):
    a, b = torch.randint(3, 64, (1, 7)), torch.randint(3, 64, (1, 4))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    both = tiny_gpt(ids, mask)
    torch.testing.assert_close(both[0], tiny_gpt(a)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1, 3:], tiny_gpt(b)[0], atol=1e-5, rtol=0)


def test_causal_future_tokens_do_not_change_past_logits(tiny_gpt):
    ids = torch.randint(3, 64, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 64
    torch.testing.assert_close(tiny_gpt(ids)[:, :6], tiny_gpt(changed)[:, :6])


def test_tied_embeddings_and_gpt2_names(tiny_gpt):
    assert tiny_gpt.lm_head.weight is tiny_gpt.transformer.wte.weight
    names = dict(tiny_gpt.named_parameters())
    assert "transformer.h.0.attn.c_attn.weight" in names and "transformer.h.1.mlp.c_fc.bias" in names


def test_save_load_same_logits(tiny_gpt, tmp_path):
    tiny_gpt.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    loaded = GPT.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (2, 12))
    torch.testing.assert_close(loaded(ids), tiny_gpt(ids), atol=0, rtol=0)


def test_value_head_starts_at_zero(tiny_gpt, tmp_path):
    head = ValueHead(tiny_gpt.config.n_embd)
    values = head(tiny_gpt.hidden_states(torch.randint(0, 64, (2, 5))))
    assert values.shape == (2, 5) and torch.all(values == 0)
    torch.nn.init.normal_(head.v.weight)
    head.save(tmp_path)
    torch.testing.assert_close(ValueHead(32).load(tmp_path).v.weight, head.v.weight)


def test_reward_reads_last_real_token_not_pad(tiny_config):
    torch.manual_seed(1)
    rm = RewardModel(tiny_config).eval()
    ids = torch.randint(3, 64, (1, 8))
    alone = rm(ids)
    # left pad (prompt side) and right pad (after EOS) around the same tokens
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.tensor([[0] * 3 + [1] * 8 + [0] * 4])
    torch.testing.assert_close(rm(padded, mask), alone, atol=1e-5, rtol=0)
    # and it is the *last* real token that matters: changing a pad changes nothing
    padded[0, -1] = 7
    torch.testing.assert_close(rm(padded, mask), alone, atol=1e-5, rtol=0)


def test_reward_normalisation_and_round_trip(tiny_config, tmp_path):
    torch.manual_seed(2)
    rm = RewardModel(tiny_config).eval()
    ids = torch.randint(3, 64, (16, 6))
    with torch.no_grad():
        rm.fit_normalization(rm.raw_scores(ids))
        s = rm(ids)
    assert abs(s.mean().item()) < 1e-5 and abs(s.std(unbiased=False).item() - 1) < 1e-4
    rm.save_pretrained(tmp_path)
    again = RewardModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(ids), s, atol=1e-6, rtol=0)


def test_reward_head_init_scale(tiny_config):
    torch.manual_seed(3)
    big = RewardModel(GPTConfig(vocab_size=8, n_layer=1, n_head=1, n_embd=1023, block_size=4))
    assert abs(big.head.weight.std().item() - 1 / 32) < 3e-3 and torch.all(big.head.bias == 0)


def test_corrupt_or_mismatched_checkpoint_is_one_line_error(tiny_gpt, tmp_path):
    tiny_gpt.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="model.safetensors"):
        GPT.from_pretrained(tmp_path)
    with pytest.raises(InputError, match="not found"):
        GPT.from_pretrained(tmp_path / "nope")


def test_block_size_is_enforced(tiny_gpt):
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt(torch.zeros(1, 49, dtype=torch.long))


def test_saved_files_get_a_normal_files_mode(tiny_gpt, tmp_path):
    """Atomic writes go through mkstemp (mode 0600): the final file must be readable like any other."""
    import os
    tiny_gpt.save_pretrained(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
