"""Data loaders: every bad input is an InputError that says file:line: what; good input round-trips."""
import json

import pytest

from minirlhf.data import (Demonstration, Pair, Ranking, load_demonstrations, load_pairs, load_preferences,
                           load_prompts, load_rankings, load_texts, train_val_split)
from minirlhf.errors import InputError


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jl(*objs):
    return [json.dumps(o, ensure_ascii=False) for o in objs]


def raises_at(loader, path, line, *words):
    with pytest.raises(InputError) as e:
        loader(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    for w in words:
        assert w in msg, msg
    return msg


# ---------------------------------------------------------------------------- good input


def test_chinese_round_trip(tmp_path):
    pairs = [{"prompt": "这部电影很", "chosen": "好看，推荐！", "rejected": "无聊。"},
             {"chosen": "刚收到货，感觉很好", "rejected": "刚收到货，感觉很差"}]
    path = write(tmp_path, "pairs.jsonl", jl(*pairs))
    got = load_pairs(path)
    assert got == [Pair("这部电影很", "好看，推荐！", "无聊。"), Pair("", "刚收到货，感觉很好", "刚收到货，感觉很差")]
    assert load_preferences(path) == got

    txt = write(tmp_path, "texts.txt", ["第一篇文档。", "", "   ", "第二篇 文档"])
    assert load_texts(txt) == ["第一篇文档。", "第二篇 文档"]
    assert load_texts(write(tmp_path, "t.jsonl", jl({"text": "你好"}, {"text": "世界"}))) == ["你好", "世界"]
    assert load_prompts(write(tmp_path, "p.jsonl", jl({"prompt": "说实话，真的很", "id": 3}))) == ["说实话，真的很"]


def test_rankings_and_detection(tmp_path):
    rec = {"query": "Q", "responses": ["a", "b", "c"], "scores": [1, -0.5, 2.25]}
    path = write(tmp_path, "r.jsonl", jl(rec, rec) + [""])       # a trailing blank line is fine
    expected = [Ranking("Q", ["a", "b", "c"], [1.0, -0.5, 2.25])] * 2
    assert load_rankings(path) == expected
    assert load_preferences(path) == expected


def test_bom_and_crlf(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"prompt": "你好"}\r\n{"prompt": "x"}\r\n'.encode("utf-8"))
    assert load_prompts(path) == ["你好", "x"]


# ---------------------------------------------------------------------------- errors


def test_missing_and_empty_files(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputError, match="file not found") as e:
        load_pairs(missing)
    assert str(e.value) == f"{missing}: file not found"
    for content in ["", "\n\n  \n"]:
        empty = tmp_path / "empty.jsonl"
        empty.write_text(content, encoding="utf-8")
        with pytest.raises(InputError) as e:
            load_prompts(empty)
        assert str(e.value) == f"{empty}: no records"


def test_invalid_json_and_non_object(tmp_path):
    good = json.dumps({"prompt": "a"})
    path = write(tmp_path, "bad.jsonl", [good, "", '{"prompt": "b",}'])
    raises_at(load_prompts, path, 3, "invalid JSON")                # blank line 2 still counts
    raises_at(load_prompts, write(tmp_path, "list.jsonl", [good, "[1, 2]"]), 2, "JSON object", "list")


def test_missing_field_and_wrong_types(tmp_path):
    ok = {"prompt": "p", "chosen": "c", "rejected": "r"}
    raises_at(load_pairs, write(tmp_path, "a.jsonl", jl(ok, {"prompt": "p", "chosen": "c"})), 2,
              "missing field 'rejected'")
    msg = raises_at(load_pairs, write(tmp_path, "b.jsonl", jl({**ok, "chosen": 3})), 1)
    assert msg.endswith("field 'chosen' must be a string, got int")
    raises_at(load_pairs, write(tmp_path, "c.jsonl", jl({**ok, "prompt": None})), 1, "'prompt'", "null")
    raises_at(load_pairs, write(tmp_path, "d.jsonl", jl(ok, ok, {**ok, "rejected": "  "})), 3,
              "'rejected' is empty")
    raises_at(load_prompts, write(tmp_path, "e.jsonl", jl({"prompt": ""})), 1, "'prompt' is empty")
    raises_at(load_texts, write(tmp_path, "f.jsonl", jl({"text": ["x"]})), 1, "'text'", "list")


def test_ranking_errors(tmp_path):
    ok = {"query": "q", "responses": ["a", "b"], "scores": [0.1, 0.2]}
    cases = [
        ({**ok, "scores": [0.1]}, "2 responses but 1 scores"),
        ({**ok, "responses": ["a"], "scores": [1.0]}, "at least 2 responses"),
        ({**ok, "scores": [0.1, float("nan")]}, "'scores'[1] must be finite"),
        ({**ok, "scores": [float("inf"), 0.0]}, "'scores'[0] must be finite"),
        ({**ok, "scores": [0.1, "0.2"]}, "'scores'[1] must be a number, got string"),
        ({**ok, "scores": [True, 0.2]}, "'scores'[0] must be a number, got bool"),
        ({**ok, "responses": ["a", 7]}, "'responses'[1] must be a string, got int"),
        ({**ok, "responses": ["a", ""]}, "'responses'[1] is empty"),
        ({**ok, "responses": "ab"}, "'responses' must be a list, got string"),
        ({"query": "q", "responses": ["a", "b"]}, "missing field 'scores'"),
    ]
    for k, (bad, words) in enumerate(cases):
        path = write(tmp_path, f"r{k}.jsonl", jl(ok, bad))      # json.dumps writes NaN/Infinity
        raises_at(load_rankings, path, 2, words)
        raises_at(load_preferences, path, 2, words)


def test_ranking_sources(tmp_path):
    ok = {"query": "q", "responses": ["a", "b"], "scores": [0.1, 0.2]}
    path = write(tmp_path, "s.jsonl", jl({**ok, "sources": ["provided", "sampled"]}, ok))
    assert load_rankings(path) == [Ranking("q", ["a", "b"], [0.1, 0.2], ["provided", "sampled"]),
                                   Ranking("q", ["a", "b"], [0.1, 0.2], None)]
    cases = [({**ok, "sources": ["provided"]}, "2 responses but 1 sources"),
             ({**ok, "sources": "sampled"}, "'sources' must be a list, got string"),
             ({**ok, "sources": ["provided", "human"]}, "'sources'[1] must be one of 'provided', 'sampled'")]
    for k, (bad, words) in enumerate(cases):
        raises_at(load_rankings, write(tmp_path, f"s{k}.jsonl", jl(ok, bad)), 2, words)


def test_demonstrations(tmp_path):
    path = write(tmp_path, "d.jsonl", jl({"prompt": "这部电影很", "response": "好看"}, {"prompt": "", "response": "全文"}))
    assert load_demonstrations(path) == [Demonstration("这部电影很", "好看"), Demonstration("", "全文")]
    ok = {"prompt": "p", "response": "r"}
    raises_at(load_demonstrations, write(tmp_path, "e1.jsonl", jl(ok, {"prompt": "p"})), 2, "missing field 'response'")
    raises_at(load_demonstrations, write(tmp_path, "e2.jsonl", jl({"response": "r"})), 1, "missing field 'prompt'")
    raises_at(load_demonstrations, write(tmp_path, "e3.jsonl", jl(ok, ok, {**ok, "response": " "})), 3,
              "'response' is empty")
    raises_at(load_demonstrations, write(tmp_path, "e4.jsonl", jl({**ok, "prompt": 1})), 1, "'prompt' must be a string")


def test_preferences_detection_errors(tmp_path):
    raises_at(load_preferences, write(tmp_path, "x.jsonl", jl({"prompt": "p", "answer": "a"})), 1,
              "expected a pair")
    pair = {"prompt": "p", "chosen": "c", "rejected": "r"}
    ranking = {"query": "q", "responses": ["a", "b"], "scores": [1, 2]}
    raises_at(load_preferences, write(tmp_path, "mix.jsonl", jl(pair, ranking)), 2, "missing field 'chosen'")


def test_txt_not_utf8(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("ok\n".encode() + "café\n".encode("latin-1"))
    raises_at(load_texts, path, 2, "UTF-8")


# ---------------------------------------------------------------------------- split


def test_split_deterministic_disjoint_and_complete():
    items = [f"item{i}" for i in range(50)]
    train, val = train_val_split(items, 0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert set(train).isdisjoint(val) and sorted(train + val) == sorted(items)
    assert train_val_split(items, 0.2, seed=0) == (train, val)
    assert train_val_split(items, 0.2, seed=1)[1] != val
    assert val == sorted(val, key=items.index)                     # input order kept
    assert train_val_split(items, 0.0, seed=0) == (items, [])
    assert len(train_val_split(items[:3], 0.01, seed=0)[1]) == 1  # at least one held out
    assert train_val_split(items[:1], 0.5, seed=0) == (items[:1], [])  # ...but one to train on
    with pytest.raises(ValueError):
        train_val_split(items, 1.0, seed=0)


# ------------------------------------------------- other people's formats: TRL's names, chat format, other files

def test_trl_completion_is_accepted_for_response(tmp_path):
    path = write(tmp_path, "c.jsonl", jl({"prompt": "这部电影很", "completion": "好看"},
                                        {"prompt": "", "response": "全文", "completion": "ignored"}))
    assert load_demonstrations(path) == [Demonstration("这部电影很", "好看"), Demonstration("", "全文")]
    raises_at(load_demonstrations, write(tmp_path, "c1.jsonl", jl({"prompt": "p", "completion": " "})), 1,
              "'completion' is empty")


def test_chat_format_is_refused_saying_it_is_not_supported(tmp_path):
    chat = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}]
    raises_at(load_demonstrations, write(tmp_path, "m.jsonl", jl({"messages": chat})), 1,
              "'messages' record is chat format, which minirlhf does not support")
    raises_at(load_demonstrations, write(tmp_path, "m1.jsonl", jl({"prompt": chat[:1], "completion": chat[1:]})), 1,
              "field 'prompt' is in chat format", "does not support: give it as one string")
    raises_at(load_pairs, write(tmp_path, "m2.jsonl", jl({"chosen": chat, "rejected": chat})), 1,
              "field 'chosen' is in chat format")


def test_texts_in_another_format_are_refused_naming_the_two_accepted(tmp_path):
    for name in ("texts.csv", "texts"):
        path = write(tmp_path, name, "text\n你好\n")
        with pytest.raises(InputError) as e:
            load_texts(path)
        assert str(e.value).startswith(f"{path}: a text file must be .txt (one document a line) or .jsonl"), e.value
    assert load_texts(write(tmp_path, "t.ndjson", jl({"text": "你好"}))) == ["你好"]
