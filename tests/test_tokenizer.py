import json

import pytest

from minirlhf import Tokenizer
from minirlhf.errors import InputError

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
