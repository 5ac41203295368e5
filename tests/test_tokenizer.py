"""Tokenizers and templates, checked against hand-computed ids and exact round trips."""

import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from minirlhf.tokenizer import (
    SPECIALS,
    BPETokenizer,
    CharTokenizer,
    ChatTemplate,
    PlainTemplate,
    check_vocab_fits,
    get_template,
    load_tokenizer,
)

ARITH_TEXT = "Q: 0123456789+-=\nA:"
CORPUS = [
    "User: what is the capital of France?\n\nAssistant: Paris.",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "héllo wörld, naïve café — 日本語のテキスト 🙂🙃",
    "def f(x):\n\treturn x * 2  # comment\r\n",
    "Q: 7-2=\nA: 5",
] * 4


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=320)


# ---------------------------------------------------------------------------
# CharTokenizer
# ---------------------------------------------------------------------------

def test_char_ids_are_specials_then_sorted_alphabet():
    tok = CharTokenizer("cabbac")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    assert [tok.token_to_id(c) for c in "abc"] == [3, 4, 5]
    assert tok.vocab_size == 6
    assert tok.encode("cab", add_bos=True, add_eos=True) == [1, 5, 3, 4, 2]
    with pytest.raises(KeyError, match="'z'"):
        tok.token_to_id("z")


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=ARITH_TEXT))
def test_char_round_trip_on_its_alphabet(s):
    tok = CharTokenizer(ARITH_TEXT)
    ids = tok.encode(s)
    assert len(ids) == len(s)
    assert all(3 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s
    wrapped = tok.encode(s, add_bos=True, add_eos=True)
    assert wrapped == [tok.bos_id] + ids + [tok.eos_id]
    assert tok.decode(wrapped) == s
    assert tok.decode(wrapped, skip_special=False) == "<bos>" + s + "<eos>"


def test_char_unknown_character_error_names_char_position_and_alphabet():
    tok = CharTokenizer("ab ")
    with pytest.raises(ValueError) as e:
        tok.encode("ab a!b")
    msg = str(e.value)
    assert "'!'" in msg and "position 4" in msg and "' ab'" in msg


def test_char_special_names_in_text_are_plain_characters():
    tok = CharTokenizer("<>eos")
    ids = tok.encode("<eos>")
    assert len(ids) == 5 and tok.eos_id not in ids


def test_char_decode_rejects_out_of_range_ids():
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match="id 5 at position 1"):
        tok.decode([3, 5])
    with pytest.raises(ValueError, match="id -1"):
        tok.decode([-1])


def test_char_save_load_round_trip(tmp_path):
    text = "Hello, wörld! 🙂\n\t"
    tok = CharTokenizer(text)
    path = tmp_path / "char.json"
    tok.save(path)
    assert os.listdir(tmp_path) == ["char.json"]  # the temp file was renamed away
    assert json.loads(path.read_text())["type"] == "char"
    for loaded in (CharTokenizer.load(path), load_tokenizer(path)):
        assert isinstance(loaded, CharTokenizer)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode(text, True, True) == tok.encode(text, True, True)
        assert loaded.decode(tok.encode(text)) == text


def test_char_bad_specials():
    with pytest.raises(ValueError, match="at least 3"):
        CharTokenizer("ab", specials=("<pad>", "<eos>"))
    with pytest.raises(ValueError, match="single characters of the alphabet"):
        CharTokenizer("abc", specials=("a", "<bos>", "<eos>"))


# ---------------------------------------------------------------------------
# BPETokenizer
# ---------------------------------------------------------------------------

def test_bpe_specials_and_size(bpe):
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id) == (0, 1, 2)
    assert [bpe.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    assert 3 + 256 < bpe.vocab_size <= 320  # some merges were learned, no more than asked


def test_bpe_training_is_deterministic(bpe):
    again = BPETokenizer.train(CORPUS, vocab_size=320)
    assert again._tok.to_str() == bpe._tok.to_str()


def test_bpe_train_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(CORPUS, vocab_size=100)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trip_arbitrary_unicode(bpe, s):
    ids = bpe.encode(s)
    assert bpe.decode(ids) == s
    assert all(0 <= i < bpe.vocab_size for i in ids)
    # Special ids only ever come from add_bos / add_eos.
    assert not set(ids) & {0, 1, 2}
    wrapped = bpe.encode(s, add_bos=True, add_eos=True)
    assert wrapped == [1] + ids + [2]
    assert bpe.decode(wrapped) == s


@pytest.mark.parametrize("s", ["", " ", "  leading", "trailing  ", "\n\n", "<eos>", "<pad><bos>", "a\u2028b\x00c"])
def test_bpe_round_trip_edge_cases(bpe, s):
    ids = bpe.encode(s)
    assert bpe.decode(ids) == s
    assert bpe.eos_id not in ids and bpe.pad_id not in ids


def test_bpe_rejects_lone_surrogate(bpe):
    with pytest.raises(ValueError, match="not valid Unicode"):
        bpe.encode("ab\ud800")


def test_bpe_decode_rejects_out_of_range_ids(bpe):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe.decode([bpe.vocab_size])


def test_bpe_save_load_round_trip(bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    assert os.listdir(tmp_path) == ["tokenizer.json"]
    for loaded in (BPETokenizer.load(path), load_tokenizer(path)):
        assert isinstance(loaded, BPETokenizer)
        assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.vocab_size) == (0, 1, 2, bpe.vocab_size)
        for text in CORPUS[:5] + ["<eos> literally"]:
            assert loaded.encode(text, True, True) == bpe.encode(text, True, True)


def _gpt2_style_tokenizer_json(merges):
    """A tiny tokenizer.json laid out like GPT-2's: byte-level BPE, merges as "a b" strings,
    model without a "type" key, and <|endoftext|> as the only (added, special) token."""
    from tokenizers import pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for m in merges:
        a, b = m.split(" ")
        vocab[a + b] = len(vocab)
    eot = len(vocab)
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": eot, "special": True, "content": "<|endoftext|>", "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True},
        "model": {"dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "vocab": vocab, "merges": merges},
    }, vocab


def test_load_gpt2_style_tokenizer_json(tmp_path):
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a"]
    d, vocab = _gpt2_style_tokenizer_json(merges)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    for tok in (BPETokenizer.load(path), load_tokenizer(path)):
        eot = 256 + len(merges)
        # bos = eos = pad = <|endoftext|>; the vocabulary does not grow.
        assert tok.eos_id == tok.bos_id == tok.pad_id == eot == tok.token_to_id("<|endoftext|>")
        assert tok.vocab_size == eot + 1
        # " the a" -> "Ġthe", "Ġa" by the merges above (hand-applied).
        assert tok.encode(" the a") == [vocab["Ġthe"], vocab["Ġa"]]
        assert tok.encode("x", add_bos=True, add_eos=True) == [eot, vocab["x"], eot]
        # Exact round trip: the decoder's add_prefix_space must not eat or add spaces.
        for s in [" the a", "  two spaces", "the end ", "é日🙂\n"]:
            assert tok.decode(tok.encode(s)) == s
        # The special's name in user text stays text.
        ids = tok.encode("a<|endoftext|>b")
        assert eot not in ids and tok.decode(ids) == "a<|endoftext|>b"
        assert tok.decode([vocab["x"], eot]) == "x"
        assert tok.decode([vocab["x"], eot], skip_special=False) == "x<|endoftext|>"


def test_load_tokenizer_json_without_eos_needs_a_name(tmp_path):
    d, _ = _gpt2_style_tokenizer_json(["h e"])
    d["added_tokens"][0]["content"] = "<|stop|>"
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ValueError, match="no end-of-sequence token"):
        BPETokenizer.load(path)
    tok = BPETokenizer.load(path, eos_token="<|stop|>")
    assert tok.eos_id == tok.pad_id == tok.bos_id == 257


def test_load_tokenizer_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="expected a CharTokenizer file"):
        load_tokenizer(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        load_tokenizer(path)


# ---------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------

def test_plain_template_ids_by_hand():
    tok = CharTokenizer(ARITH_TEXT)
    prompt, response = "Q: 7-2=\nA:", " 5"
    ids, n_prompt = PlainTemplate().encode(tok, prompt, response)
    expected = [tok.bos_id] + [tok.token_to_id(c) for c in prompt] + [tok.token_to_id(c) for c in response] + [tok.eos_id]
    assert ids == expected
    assert n_prompt == 1 + len(prompt)
    ids_p, n_p = PlainTemplate().encode(tok, prompt)
    assert ids_p == expected[:n_prompt] and n_p == len(ids_p)


def test_chat_template_text_and_boundary_char():
    tok = CharTokenizer("User: Assistant\nhiyo")
    t = ChatTemplate()
    assert t.prompt_text("hi") == "User: hi\n\nAssistant: "
    ids, n = t.encode(tok, "hi", "yo")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert n == 1 + len("User: hi\n\nAssistant: ")
    assert tok.decode(ids[:n]) == "User: hi\n\nAssistant: "
    assert tok.decode(ids[n:]) == "yo" and ids[n:] == [tok.token_to_id("y"), tok.token_to_id("o"), tok.eos_id]


@settings(max_examples=100, deadline=None)
@given(prompt=st.text(min_size=1), response=st.text(min_size=1))
def test_chat_template_boundary_bpe(bpe, prompt, response):
    t = ChatTemplate()
    ids, n = t.encode(bpe, prompt, response)
    assert ids[0] == bpe.bos_id and ids[-1] == bpe.eos_id
    assert bpe.decode(ids[:n]) == t.prompt_text(prompt)
    assert bpe.decode(ids[n:]) == response
    assert ids[n:-1] == bpe.encode(response)
    no_special, n2 = t.encode(bpe, prompt, response, add_bos=False, add_eos=False)
    assert no_special == ids[1:-1] and n2 == n - 1


def test_custom_chat_template_and_serialisation():
    t = ChatTemplate(user="### Human: ", assistant="\n### Bot:")
    assert t.prompt_text("x") == "### Human: x\n### Bot:"
    assert get_template(t.to_dict()) == t
    assert get_template(json.loads(json.dumps(ChatTemplate().to_dict()))) == ChatTemplate()
    assert get_template("plain") == PlainTemplate() and get_template(PlainTemplate().to_dict()) == PlainTemplate()
    assert get_template("chat") == ChatTemplate()
    with pytest.raises(ValueError, match="expected one of"):
        get_template("alpaca")
    with pytest.raises(ValueError, match="unknown field"):
        get_template({"name": "plain", "user": "x"})


def test_template_type_errors():
    tok = CharTokenizer("ab")
    with pytest.raises(TypeError, match="prompt"):
        PlainTemplate().encode(tok, 3, "a")
    with pytest.raises(TypeError, match="response"):
        PlainTemplate().encode(tok, "a", ["b"])


# ---------------------------------------------------------------------------
# check_vocab_fits
# ---------------------------------------------------------------------------

def test_check_vocab_fits():
    tok = CharTokenizer("abcde")  # 3 + 5 = 8 ids
    check_vocab_fits(tok, 8)
    check_vocab_fits(tok, 64)
    with pytest.raises(ValueError, match=r"8 token ids.*vocab_size is 7"):
        check_vocab_fits(tok, 7)
    with pytest.raises(ValueError, match="positive int"):
        check_vocab_fits(tok, 0)
