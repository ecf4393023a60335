import json
from collections import Counter

import pytest

from minirlhf import Tokenizer
from minirlhf.errors import InputError
from minirlhf.tokenizer import BYTE_TOKENS

TEXTS = ["刚收到货，感觉很好！物流也快。", "这部电影很无聊，浪费时间。", "说实话，真的很不错 👍\n下次还来", "mixed English 和中文 123"]


@pytest.mark.parametrize("kind,size", [("char", 320), ("bpe", 400)])
def test_round_trip_including_unseen_characters(kind, size):
    tok = Tokenizer.train(TEXTS, size, kind=kind)
    for text in TEXTS + ["从没见过的字：龘齉", "  spaces  \t tabs"]:
        assert tok.decode(tok.encode(text)) == text


def test_char_kind_is_one_token_per_character():
    tok = Tokenizer.train(TEXTS, 320, kind="char")
    assert len(tok.encode("刚收到货，感觉")) == 7


def test_specials_distinct_and_not_added_by_encode():
    tok = Tokenizer.train(TEXTS, 320)
    assert len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
    ids = tok.encode("这部电影很")
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == "这部电影很"


def test_save_load_is_a_standard_tokenizer_json(tmp_path):
    tok = Tokenizer.train(TEXTS, 320)
    tok.save(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["model"]["type"] == "BPE" and {t["content"] for t in data["added_tokens"]} == {"<pad>", "<bos>", "<eos>"}
    again = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert again.encode(TEXTS[0]) == tok.encode(TEXTS[0]) and again.vocab_size == tok.vocab_size


def test_transformers_reads_our_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.train(TEXTS, 320)
    tok.save(tmp_path / "tokenizer.json")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert hf.encode(TEXTS[1], add_special_tokens=False) == tok.encode(TEXTS[1])


def test_bad_tokenizer_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        Tokenizer.from_file(tmp_path / "bad.json")


# ---------------------------------------------------------------- byte fallback, U+FFFD and the stand-in

RARE_TEXTS = ["好好好好不错不错", "好不错，还行", "秉承齉龘的精神", "👍好"]  # 秉 齉 龘 👍 seen once each


def byte_ids(tok):
    return {tok.tok.token_to_id(t) for t in BYTE_TOKENS}


def test_byte_tokens_out_of_order_decode_to_replacement_characters():
    """The cause of `�` in samples: byte tokens that do not spell a character (a lone lead byte, or one
    followed by a character token) decode to U+FFFD; the three bytes of a character in order decode to it."""
    tok = Tokenizer.train(RARE_TEXTS, 262)                 # room for 3 characters: 龘 falls back to bytes
    e9, bc, be = (tok.tok.token_to_id(f"<0x{b:02X}>") for b in "龘".encode())
    good = tok.encode("好")
    assert tok.encode("龘") == [e9, bc, be] and tok.decode([e9, bc, be]) == "龘"
    assert "\ufffd" in tok.decode([e9]) and "\ufffd" in tok.decode([e9] + good) and "\ufffd" in tok.decode([bc, be])


def test_stand_in_keeps_one_slot_and_replace_unknown_leaves_no_byte_token():
    size = 3 + 256 + 4                                      # 3 frequent characters + □
    tok = Tokenizer.train(RARE_TEXTS, size, stand_in="□")
    assert tok.vocab_size == size and tok.tok.token_to_id("□") is not None
    counts = Counter(ch for t in RARE_TEXTS for ch in t)
    kept = {ch for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]}   # the naive rule
    mapped = tok.replace_unknown(RARE_TEXTS)
    assert mapped == ["".join(ch if ch in kept else "□" for ch in t) for t in RARE_TEXTS]
    assert any(set(tok.encode(t)) & byte_ids(tok) for t in RARE_TEXTS)        # the raw texts need bytes
    assert not any(set(tok.encode(t)) & byte_ids(tok) for t in mapped)        # the mapped ones never do
    for text in RARE_TEXTS + mapped + ["从没见过的字：龘齉", ""]:
        assert tok.decode(tok.encode(text)) == text                          # still lossless for every string
    assert tok.replace_unknown(mapped) == mapped                               # idempotent


def test_stand_in_misuse_is_a_value_error():
    with pytest.raises(ValueError, match="stand_in"):
        Tokenizer.train(RARE_TEXTS, 300).replace_unknown(RARE_TEXTS)          # trained without one
    with pytest.raises(ValueError, match="char kind"):
        Tokenizer.train(RARE_TEXTS, 400, kind="bpe", stand_in="□")
    with pytest.raises(ValueError, match="one character"):
        Tokenizer.train(RARE_TEXTS, 300, stand_in="<unk>")
