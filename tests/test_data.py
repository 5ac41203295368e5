"""JSONL schemas, validation errors with file:line:field, and collation checked by hand."""

import json
import os
import pickle

import pytest
import torch

from minirlhf.data import (
    STRENGTHS,
    DataError,
    batches,
    collate_preferences,
    collate_prompts,
    collate_sft,
    encode_sft,
    load_preferences,
    load_rankings,
    load_sft,
    load_unpaired,
    read_jsonl,
    write_jsonl,
)
from minirlhf.tokenizer import CharTokenizer, ChatTemplate, PlainTemplate

GOOD = {
    "sft": {"prompt": "p", "response": "r"},
    "preference": {"prompt": "p", "chosen": "c", "rejected": "r"},
    "ranking": {"prompt": "p", "responses": ["a", "b"]},
    "unpaired": {"prompt": "p", "completion": "c", "label": True},
}


def write_lines(path, lines):
    """Write lines given as str (UTF-8 encoded) or bytes (as they are), newline-terminated."""
    with open(path, "wb") as f:
        for line in lines:
            f.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
    return path


def j(obj):
    return json.dumps(obj, ensure_ascii=False)


# ---------------------------------------------------------------------------
# Good rows
# ---------------------------------------------------------------------------

def test_sft_layouts(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [
        j({"prompt": "Add 2 and 3.", "response": "5", "id": 17, "source": "x"}),
        "",
        j({"instruction": "Summarise.", "context": "A long text.", "response": "Short."}),
        j({"instruction": "Say hi.", "context": "", "response": "hi"}),
        j({"instruction": "Say yo.", "response": "yo", "category": "open_qa"}),
        "   \t",
        j({"prompt": "Q: 7-2=\nA:", "completion": " 5"}),
    ])
    rows, errors = read_jsonl(path, "sft")
    assert errors == []
    assert rows == [
        {"prompt": "Add 2 and 3.", "response": "5"},
        {"prompt": "Summarise.\n\nA long text.", "response": "Short."},
        {"prompt": "Say hi.", "response": "hi"},
        {"prompt": "Say yo.", "response": "yo"},
        {"prompt": "Q: 7-2=\nA:", "response": " 5"},
    ]
    assert load_sft(path) == rows


def test_preference_defaults_strengths_and_ties(tmp_path):
    path = write_lines(tmp_path / "pref.jsonl", [
        j({"prompt": "p", "chosen": "good", "rejected": "bad", "meta": {"rater": 3}}),
        j({"prompt": "p", "chosen": "good", "rejected": "bad", "prob": 0.75, "strength": 2.5}),
        j({"prompt": "p", "chosen": "good", "rejected": "bad", "prob": 0, "strength": "slight"}),
        j({"prompt": "p", "chosen": "good", "rejected": "bad", "prob": 1, "strength": "strong"}),
        j({"prompt": "p", "chosen": "good", "rejected": "bad", "strength": "very strong"}),
        j({"prompt": "p", "chosen": "a", "rejected": "b", "tie": True}),
        j({"prompt": "p", "chosen": "a", "rejected": "b", "tie": True, "prob": 0.5}),
        j({"prompt": "p", "chosen": "a", "rejected": "b", "tie": False, "prob": 0.2}),
    ])
    rows = load_preferences(path)
    got = [(r["prob"], r["strength"], r["tie"]) for r in rows]
    assert got == [(1.0, 1.0, False), (0.75, 2.5, False), (0.0, 1.0, False), (1.0, 2.0, False),
                   (1.0, 3.0, False), (0.5, 1.0, True), (0.5, 1.0, True), (0.2, 1.0, False)]
    assert STRENGTHS == {"slight": 1.0, "strong": 2.0, "very strong": 3.0}
    assert rows[0] == {"prompt": "p", "chosen": "good", "rejected": "bad", "prob": 1.0, "strength": 1.0, "tie": False}
    assert all(type(r["prob"]) is float and type(r["strength"]) is float for r in rows)


def test_ranking_rows(tmp_path):
    path = write_lines(tmp_path / "rank.jsonl", [
        j({"prompt": "p", "responses": ["best", "mid", "worst"], "id": "x"}),
        j({"prompt": "q", "responses": ["a", "b"]}),
    ])
    assert load_rankings(path) == [{"prompt": "p", "responses": ["best", "mid", "worst"]},
                                   {"prompt": "q", "responses": ["a", "b"]}]


def test_unpaired_rows(tmp_path):
    path = write_lines(tmp_path / "kto.jsonl", [
        j({"prompt": "2+2=", "completion": "4", "label": True, "id": 3}),
        "",
        j({"prompt": "2+2=", "completion": "5", "label": False}),
    ])
    rows, errors = read_jsonl(path, "unpaired")
    assert errors == []
    assert rows == [{"prompt": "2+2=", "completion": "4", "label": True},
                    {"prompt": "2+2=", "completion": "5", "label": False}]
    assert load_unpaired(path) == rows
    # label false is kept as False, not dropped as a missing default
    assert [type(r["label"]) for r in rows] == [bool, bool]


def test_crlf_bom_and_unicode(tmp_path):
    path = tmp_path / "x.jsonl"
    good = {"prompt": "héllo 日本 🙂", "response": "\u2028 ok"}
    path.write_bytes(b"\xef\xbb\xbf" + j(good).encode() + b"\r\n\r\n" + j(good).encode() + b"\r\n")
    rows, errors = read_jsonl(path, "sft")
    assert rows == [good, good] and errors == []


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert read_jsonl(path, "preference") == ([], [])


# ---------------------------------------------------------------------------
# Bad rows: each fails with its line number and field
# ---------------------------------------------------------------------------

P = {"prompt": "p", "chosen": "c", "rejected": "r"}

BAD = [
    # kind, line, field (None: the whole line), fragment of the reason
    ("sft", b'{"prompt": "p", "response": ', None, "invalid JSON"),
    ("sft", b"\xff\xfe{}", None, "invalid UTF-8"),
    ("sft", b'{"prompt": "\xe6\x97", "response": "r"}', None, "invalid UTF-8"),
    ("sft", b'["prompt", "response"]', None, "expected a JSON object, got array"),
    ("sft", b'"just a string"', None, "expected a JSON object, got string"),
    ("sft", b'{"prompt": "p", "response": "r", "prompt": "q"}', None, "duplicate key"),
    ("sft", j({"response": "r"}), "prompt", "missing"),
    ("sft", j({"prompt": "p"}), "response", "missing"),
    ("sft", j({"prompt": 3, "response": "r"}), "prompt", "expected a non-empty string, got 3"),
    ("sft", j({"prompt": "p", "response": ""}), "response", 'expected a non-empty string, got ""'),
    ("sft", j({"prompt": "p", "response": None}), "response", "got null"),
    ("sft", j({"prompt": "p", "response": ["r"]}), "response", 'got ["r"]'),
    ("sft", j({"instruction": "", "response": "r"}), "instruction", "non-empty"),
    ("sft", j({"instruction": "i", "context": 5, "response": "r"}), "context", "expected a string, got 5"),
    ("sft", j({"instruction": "i", "prompt": "p", "response": "r"}), "prompt", "both"),
    ("sft", j({"prompt": "p", "response": "r", "completion": "c"}), "completion", "both"),
    ("sft", j({"prompt": "p", "completion": ""}), "completion", "non-empty"),
    ("sft", b'{"prompt": "p", "response": "\\ud800"}', "response", "unpaired surrogate"),
    ("preference", j({"prompt": "p", "rejected": "r"}), "chosen", "missing"),
    ("preference", j({**P, "chosen": 3}), "chosen", "expected a non-empty string, got 3"),
    ("preference", j({**P, "rejected": ""}), "rejected", "non-empty"),
    ("preference", j({**P, "rejected": "c"}), "rejected", "equal to \"chosen\""),
    ("preference", j({**P, "prob": 1.5}), "prob", "expected a number in [0, 1], got 1.5"),
    ("preference", j({**P, "prob": -0.1}), "prob", "[0, 1]"),
    ("preference", j({**P, "prob": "0.5"}), "prob", "[0, 1]"),
    ("preference", j({**P, "prob": True}), "prob", "got true"),
    ("preference", b'{"prompt": "p", "chosen": "c", "rejected": "r", "prob": NaN}', None, "NaN"),
    ("preference", j({**P, "prob": 10 ** 400}), "prob", "[0, 1]"),
    ("preference", j({**P, "strength": 0}), "strength", "positive"),
    ("preference", j({**P, "strength": -2}), "strength", "positive"),
    ("preference", j({**P, "strength": 10 ** 400}), "strength", "finite"),
    ("preference", j({**P, "strength": "huge"}), "strength", "'very strong'"),
    ("preference", j({**P, "strength": None}), "strength", "got null"),
    ("preference", j({**P, "tie": "yes"}), "tie", "expected true or false"),
    ("preference", j({**P, "tie": True, "prob": 0.9}), "prob", "tie"),
    ("ranking", j({"prompt": "p", "responses": ["only"]}), "responses", "at least 2"),
    ("ranking", j({"prompt": "p", "responses": "ab"}), "responses", "array"),
    ("ranking", j({"prompt": "p"}), "responses", "missing"),
    ("ranking", j({"prompt": "p", "responses": ["a", "b", "a"]}), "responses[2]", "duplicate of responses[0]"),
    ("ranking", j({"prompt": "p", "responses": ["a", ""]}), "responses[1]", "non-empty"),
    ("ranking", j({"prompt": "p", "responses": ["a", 7]}), "responses[1]", "got 7"),
    ("ranking", j({"prompt": "", "responses": ["a", "b"]}), "prompt", "non-empty"),
    ("unpaired", j({"prompt": "p", "completion": "c"}), "label", "missing; expected true (desirable)"),
    ("unpaired", j({"prompt": "p", "completion": "c", "label": 1}), "label", "expected true or false, got 1"),
    ("unpaired", j({"prompt": "p", "completion": "c", "label": "true"}), "label", 'got "true"'),
    ("unpaired", j({"prompt": "p", "completion": "c", "label": None}), "label", "got null"),
    ("unpaired", j({"prompt": "p", "completion": "", "label": False}), "completion", "non-empty"),
    ("unpaired", j({"prompt": "p", "response": "c", "label": False}), "completion", "missing"),
    ("unpaired", j({"completion": "c", "label": False}), "prompt", "missing"),
    ("unpaired", j(["p", "c", True]), None, "expected a JSON object, got array"),
]


@pytest.mark.parametrize("kind,line,field,fragment", BAD)
def test_bad_row_names_line_and_field(tmp_path, kind, line, field, fragment):
    # Line 1 good, line 2 blank, line 3 bad, line 4 good.
    path = write_lines(tmp_path / "d.jsonl", [j(GOOD[kind]), "", line, j(GOOD[kind])])
    with pytest.raises(DataError) as e:
        read_jsonl(path, kind)
    err = e.value
    assert (err.file, err.line, err.field) == (str(path), 3, field)
    assert fragment in str(err)
    prefix = f"{path}:3: " + (f'field "{field}": ' if field else "")
    assert str(err).startswith(prefix)
    # Skipping keeps both good rows and reports exactly this line.
    rows, errors = read_jsonl(path, kind, on_error="skip")
    assert len(rows) == 2 and [x.line for x in errors] == [3]
    assert str(errors[0]) == str(err)


def test_error_message_format_exact(tmp_path):
    lines = [j(P)] * 16 + [j({**P, "chosen": 3})]
    path = write_lines(tmp_path / "x.jsonl", lines)
    with pytest.raises(DataError) as e:
        read_jsonl(path, "preference")
    assert str(e.value) == f'{path}:17: field "chosen": expected a non-empty string, got 3'
    assert isinstance(e.value, ValueError)
    again = pickle.loads(pickle.dumps(e.value))
    assert str(again) == str(e.value) and again.line == 17


def test_skip_collects_every_bad_row_in_order(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [j(P), b"{", j({**P, "prob": 2}), j(P), b"\xc3", "", j([1])])
    rows, errors = read_jsonl(path, "preference", on_error="skip")
    assert len(rows) == 2
    assert [(e.line, e.field) for e in errors] == [(2, None), (3, "prob"), (5, None), (7, None)]
    with pytest.warns(UserWarning, match="skipped 4 bad line"):
        assert len(load_preferences(path, on_error="skip")) == 2


def test_bad_arguments(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [j(P)])
    with pytest.raises(ValueError, match="kind"):
        read_jsonl(path, "pairs")
    with pytest.raises(ValueError, match="on_error"):
        read_jsonl(path, "preference", on_error="ignore")


# ---------------------------------------------------------------------------
# write_jsonl
# ---------------------------------------------------------------------------

def test_write_jsonl_round_trip(tmp_path):
    rows = [{"prompt": "héllo\n日本 🙂", "response": "\t\"quoted\""}, {"prompt": "a", "response": "b", "id": 3}]
    path = tmp_path / "out.jsonl"
    write_jsonl(path, rows)
    assert os.listdir(tmp_path) == ["out.jsonl"]
    assert path.read_bytes().count(b"\n") == 2
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows
    assert read_jsonl(path, "sft")[0] == [{"prompt": r["prompt"], "response": r["response"]} for r in rows]


def test_write_jsonl_bad_row_leaves_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])
    with pytest.raises(ValueError, match="row 1"):
        write_jsonl(path, [{"a": 2}, {"b": float("nan")}])
    with pytest.raises(ValueError, match="row 0"):
        write_jsonl(path, [{"b": object()}])
    assert path.read_text() == '{"a": 1}\n' and os.listdir(tmp_path) == ["out.jsonl"]


# ---------------------------------------------------------------------------
# Encoding and collation, by hand on a CharTokenizer: a=3, b=4, c=5; pad 0, bos 1, eos 2
# ---------------------------------------------------------------------------

@pytest.fixture
def tok():
    t = CharTokenizer("abc")
    assert [t.token_to_id(c) for c in "abc"] == [3, 4, 5]
    return t


def test_encode_and_collate_sft_by_hand(tok):
    rows = [{"prompt": "ab", "response": "c"}, {"prompt": "a", "response": "bca"}]
    encoded = encode_sft(tok, PlainTemplate(), rows, max_len=8)
    assert encoded == [([1, 3, 4, 5, 2], 3), ([1, 3, 4, 5, 3, 2], 2)]
    batch = collate_sft(encoded, tok.pad_id)
    assert batch["input_ids"].tolist() == [[1, 3, 4, 5, 2, 0], [1, 3, 4, 5, 3, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert batch["loss_mask"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert batch["n_prompt"].tolist() == [3, 2]
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "loss_mask"))
    # The targets the trainer scores, input_ids[:, 1:] under loss_mask[:, 1:], are the response + EOS.
    targets = batch["input_ids"][:, 1:]
    m = batch["loss_mask"][:, 1:].bool()
    assert [targets[b][m[b]].tolist() for b in range(2)] == [[5, 2], [4, 5, 3, 2]]


def test_collate_sft_loss_mask_with_pad_equal_to_eos(tok):
    # GPT-2 style: pad == eos. The mask comes from lengths, not from ids.
    batch = collate_sft([([1, 3, 2], 2), ([1, 3, 4, 4, 2], 2)], pad_id=2)
    assert batch["input_ids"].tolist() == [[1, 3, 2, 2, 2], [1, 3, 4, 4, 2]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 0, 0], [0, 0, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_collate_sft_rejects_bad_boundaries():
    with pytest.raises(ValueError, match="row 1"):
        collate_sft([([1, 3, 2], 2), ([1, 3], 2)], pad_id=0)
    with pytest.raises(ValueError, match="n_prompt=0"):
        collate_sft([([3, 2], 0)], pad_id=0)
    with pytest.raises(ValueError, match="at least one"):
        collate_sft([], pad_id=0)


def test_encode_sft_chat_template(tok):
    t = CharTokenizer("User: Assistant\nabc")
    (ids, n), = encode_sft(t, ChatTemplate(), [{"prompt": "ab", "response": "ca"}], max_len=None)
    assert t.decode(ids[:n]) == "User: ab\n\nAssistant: " and ids[0] == t.bos_id
    assert ids[n:] == [t.token_to_id("c"), t.token_to_id("a"), t.eos_id]


def test_encode_sft_truncation_error_names_row_and_lengths(tok):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "abcab", "response": "cc"}]
    with pytest.raises(DataError) as e:
        encode_sft(tok, PlainTemplate(), rows, max_len=6)
    assert e.value.row == 1
    msg = str(e.value)
    assert msg.startswith("row 1: ") and "9 tokens" in msg and "prompt part 6" in msg and "response part 3" in msg
    assert "max_len=6" in msg


def test_encode_sft_left_truncation_by_hand(tok):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "abcab", "response": "cc"}]
    report = {}
    with pytest.warns(UserWarning, match="dropped 3 prompt token"):
        encoded = encode_sft(tok, PlainTemplate(), rows, max_len=6, truncation="left", report=report)
    # Row 1: [bos a b c a b | c c eos] -> drop 3 after BOS: [bos a b | c c eos]
    assert encoded == [([1, 3, 4, 2], 2), ([1, 3, 4, 5, 5, 2], 3)]
    assert report == {"rows": 2, "truncated_rows": 1, "dropped_prompt_tokens": 3}


def test_encode_sft_left_truncation_never_cuts_the_response(tok):
    # BOS + 1 prompt token + "ccc" + EOS = 6 > 5: cannot fit without cutting the response.
    with pytest.raises(DataError, match="response part alone"):
        encode_sft(tok, PlainTemplate(), [{"prompt": "ab", "response": "ccc"}], max_len=5, truncation="left")
    with pytest.warns(UserWarning, match="dropped 1 prompt token"):
        encoded = encode_sft(tok, PlainTemplate(), [{"prompt": "ab", "response": "ccc"}], max_len=6,
                             truncation="left")
    assert encoded == [([1, 4, 5, 5, 5, 2], 2)]


def test_encode_sft_bad_inputs(tok):
    with pytest.raises(DataError, match='row 0: field "response": missing'):
        encode_sft(tok, PlainTemplate(), [{"prompt": "a"}], max_len=4)
    with pytest.raises(DataError, match="row 0: cannot encode.*'z'"):
        encode_sft(tok, PlainTemplate(), [{"prompt": "z", "response": "a"}], max_len=4)
    with pytest.raises(ValueError, match="truncation"):
        encode_sft(tok, PlainTemplate(), [{"prompt": "a", "response": "a"}], max_len=4, truncation="right")
    with pytest.raises(ValueError, match="max_len"):
        encode_sft(tok, PlainTemplate(), [{"prompt": "a", "response": "a"}], max_len=0)


def test_collate_preferences_layout_by_hand(tok):
    rows = [
        {"prompt": "a", "chosen": "b", "rejected": "cc", "prob": 0.75, "strength": 2.0},
        {"prompt": "ab", "chosen": "ca", "rejected": "b"},
    ]
    batch = collate_preferences(tok, PlainTemplate(), rows, max_len=8)
    # chosen 0: [1 3 | 4 2], chosen 1: [1 3 4 | 5 3 2], rejected 0: [1 3 | 5 5 2], rejected 1: [1 3 4 | 4 2]
    assert batch["input_ids"].tolist() == [
        [1, 3, 4, 2, 0, 0],
        [1, 3, 4, 5, 3, 2],
        [1, 3, 5, 5, 2, 0],
        [1, 3, 4, 4, 2, 0],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]]
    assert batch["loss_mask"].tolist() == [
        [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0]]
    assert batch["prob"].tolist() == [0.75, 1.0] and batch["strength"].tolist() == [2.0, 1.0]
    assert batch["prob"].dtype == torch.get_default_dtype()


def test_collate_preferences_truncates_both_prompts_alike(tok):
    rows = [{"prompt": "abcab", "chosen": "c", "rejected": "aa"}]
    with pytest.raises(DataError, match="row 0: rejected: 9 tokens"):
        collate_preferences(tok, PlainTemplate(), rows, max_len=6)
    with pytest.warns(UserWarning):
        batch = collate_preferences(tok, PlainTemplate(), rows, max_len=6, truncation="left")
    # Longest is rejected, [bos a b c a b | a a eos] (9): drop 3 prompt tokens from BOTH.
    assert batch["input_ids"].tolist() == [[1, 3, 4, 5, 2, 0], [1, 3, 4, 3, 3, 2]]
    assert batch["loss_mask"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]


def test_collate_prompts_left_padding_by_hand(tok):
    batch = collate_prompts(tok, PlainTemplate(), ["ab", "a", {"prompt": "cab"}])
    assert batch["input_ids"].tolist() == [[0, 1, 3, 4], [0, 0, 1, 3], [1, 5, 3, 4]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]
    with pytest.raises(DataError, match="row 2: prompt of 4 tokens"):
        collate_prompts(tok, PlainTemplate(), ["ab", "a", "cab"], max_len=3)
    with pytest.warns(UserWarning):
        batch = collate_prompts(tok, PlainTemplate(), ["ab", "a", "cab"], max_len=3, truncation="left")
    assert batch["input_ids"].tolist() == [[1, 3, 4], [0, 1, 3], [1, 3, 4]]


def test_collate_prompts_chat_template_last_column_is_prompt_end():
    t = CharTokenizer("User: Assistant\nabc")
    batch = collate_prompts(t, ChatTemplate(), ["a", "abc"])
    assert (batch["input_ids"][:, -1] == t.token_to_id(" ")).all()
    for b, p in enumerate(["a", "abc"]):
        real = batch["input_ids"][b][batch["attention_mask"][b].bool()].tolist()
        assert real == t.encode(ChatTemplate().prompt_text(p), add_bos=True)


def test_batches():
    a = batches(10, 3, torch.Generator().manual_seed(0))
    b = batches(10, 3, torch.Generator().manual_seed(0))
    assert a == b
    assert [len(x) for x in a] == [3, 3, 3, 1]
    assert sorted(i for x in a for i in x) == list(range(10))
    assert a == [x.tolist() for x in torch.randperm(10, generator=torch.Generator().manual_seed(0)).split(3)]
    assert [len(x) for x in batches(10, 3, torch.Generator().manual_seed(0), drop_last=True)] == [3, 3, 3]
    assert batches(0, 4, torch.Generator()) == []
    with pytest.raises(ValueError, match="batch_size"):
        batches(10, 0, torch.Generator())


def test_parse_row_functions_raise_data_error_with_field():
    from minirlhf.data import parse_preference_row, parse_ranking_row, parse_sft_row

    assert parse_sft_row({"prompt": "p", "completion": "c"}) == {"prompt": "p", "response": "c"}
    with pytest.raises(DataError) as e:
        parse_preference_row({**P, "prob": 3})
    assert (e.value.field, e.value.line, e.value.file) == ("prob", None, None)
    assert str(e.value) == 'field "prob": expected a number in [0, 1], got 3'
    with pytest.raises(DataError, match="expected a JSON object, got array"):
        parse_ranking_row(["a", "b"])
