"""Fuzzing read_jsonl(on_error="skip"): random bytes, random JSON values and single-fault
mutations of good rows, mixed with known-good rows at known line numbers.

Properties checked on every file:
- nothing but DataError is raised, and on_error="skip" raises nothing;
- every non-blank line gives exactly one outcome: a row, or one error naming that line;
- every known-good row comes back unaltered, in file order, equal to the canonical form
  computed here by hand; every known-bad line gives an error naming its line and field;
- on_error="raise" raises the error of the first bad line, or returns the same rows.
"""

import json
import os
import tempfile

from hypothesis import given, settings, strategies as st

from minirlhf.data import DataError, read_jsonl

text1 = st.text(min_size=1, max_size=12)

# ---------------------------------------------------------------------------
# Known-good rows and their canonical form (computed independently of the parser)
# ---------------------------------------------------------------------------

EXTRA = st.dictionaries(st.sampled_from(["id", "source", "meta", "lang"]),
                        st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=2)


@st.composite
def good_sft(draw):
    layout = draw(st.sampled_from(["prompt", "instruction", "completion"]))
    extra = draw(EXTRA)
    if layout == "prompt":
        p, r = draw(text1), draw(text1)
        return {**extra, "prompt": p, "response": r}, {"prompt": p, "response": r}
    if layout == "completion":
        p, r = draw(text1), draw(text1)
        return {**extra, "prompt": p, "completion": r}, {"prompt": p, "response": r}
    ins, ctx, r = draw(text1), draw(st.text(max_size=8)), draw(text1)
    obj = {**extra, "instruction": ins, "response": r}
    if ctx or draw(st.booleans()):
        obj["context"] = ctx
    return obj, {"prompt": ins + "\n\n" + ctx if ctx else ins, "response": r}


@st.composite
def good_preference(draw):
    p, c = draw(text1), draw(text1)
    r = draw(text1)
    if r == c:
        r += "!"
    obj = {**draw(EXTRA), "prompt": p, "chosen": c, "rejected": r}
    prob, strength, tie = 1.0, 1.0, False
    if draw(st.booleans()):
        prob = draw(st.floats(0, 1))
        obj["prob"] = prob
    if draw(st.booleans()):
        name = draw(st.sampled_from(["slight", "strong", "very strong", None]))
        if name is None:
            strength = draw(st.floats(min_value=1e-3, max_value=1e3))
            obj["strength"] = strength
        else:
            strength = {"slight": 1.0, "strong": 2.0, "very strong": 3.0}[name]
            obj["strength"] = name
    if draw(st.booleans()):
        tie = draw(st.booleans())
        obj["tie"] = tie
        if tie:
            prob = 0.5
            if "prob" in obj:
                obj["prob"] = 0.5
    return obj, {"prompt": p, "chosen": c, "rejected": r, "prob": prob, "strength": strength, "tie": tie}


@st.composite
def good_ranking(draw):
    p = draw(text1)
    responses = draw(st.lists(text1, min_size=2, max_size=4, unique=True))
    return {**draw(EXTRA), "prompt": p, "responses": responses}, {"prompt": p, "responses": responses}


GOOD = {"sft": good_sft(), "preference": good_preference(), "ranking": good_ranking()}

# ---------------------------------------------------------------------------
# Known-bad rows: one fault in a good row, with the field the error must name
# ---------------------------------------------------------------------------

not_a_string = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.lists(st.integers(), max_size=2), st.just(""))


@st.composite
def bad_row(draw, kind):
    obj, _ = draw(GOOD[kind])
    if kind == "sft":
        # Normalise to the plain layout, then break one field.
        obj = {"prompt": obj.get("prompt", "p"), "response": obj.get("response", "r")}
        field = draw(st.sampled_from(["prompt", "response"]))
    elif kind == "preference":
        field = draw(st.sampled_from(["prompt", "chosen", "rejected", "prob", "strength", "tie", "same"]))
        obj.pop("tie", None)
        obj.pop("prob", None)
        if field == "same":
            obj["rejected"] = obj["chosen"]
            return obj, "rejected"
        if field == "prob":
            obj["prob"] = draw(st.one_of(st.floats(1.0, 2.0, exclude_min=True),
                                         st.floats(-1.0, 0.0, exclude_max=True),
                                         st.floats(min_value=1.0, exclude_min=True, allow_infinity=False),
                                         st.floats(max_value=0.0, exclude_max=True, allow_infinity=False),
                                         st.integers().filter(lambda i: i not in (0, 1)),
                                         st.text(max_size=3), st.booleans(), st.none()))
            return obj, "prob"
        if field == "strength":
            obj["strength"] = draw(st.one_of(st.floats(max_value=0.0, allow_infinity=False),
                                             st.integers(max_value=0), st.sampled_from(["", "weak", "Strong"]),
                                             st.booleans(), st.none(), st.lists(st.integers(), max_size=1)))
            return obj, "strength"
        if field == "tie":
            obj["tie"] = draw(st.one_of(st.integers(), st.text(max_size=3), st.none()))
            return obj, "tie"
    else:
        field = draw(st.sampled_from(["prompt", "responses", "one", "dup", "empty"]))
        if field == "one":
            obj["responses"] = obj["responses"][:1]
            return obj, "responses"
        if field == "dup":
            obj["responses"] = obj["responses"] + [obj["responses"][0]]
            return obj, f"responses[{len(obj['responses']) - 1}]"
        if field == "empty":
            obj["responses"] = obj["responses"][:1] + [draw(not_a_string)]
            return obj, "responses[1]"
        if field == "responses":
            obj["responses"] = draw(st.one_of(st.none(), st.integers(), text1, st.just([])))
            return obj, "responses"
    # A required string field: missing or not a non-empty string.
    if draw(st.booleans()):
        del obj[field]
    else:
        obj[field] = draw(not_a_string)
    return obj, field


# ---------------------------------------------------------------------------
# Junk: random bytes and random JSON values
# ---------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.one_of(st.text(max_size=8),
                                                         st.sampled_from(["prompt", "response", "chosen",
                                                                          "rejected", "responses", "prob"])),
                                               children, max_size=4)),
    max_leaves=10,
)


@st.composite
def line(draw, kind):
    """-> (bytes without a newline, label, expected) where label is one of
    "good" (expected = canonical row), "bad" (expected = field), "junk" (expected = None)."""
    choice = draw(st.sampled_from(["good", "good", "bad", "bytes", "json", "blank"]))
    ascii_only = draw(st.booleans())
    if choice == "good":
        obj, canonical = draw(GOOD[kind])
        return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8"), "good", canonical
    if choice == "bad":
        obj, field = draw(bad_row(kind))
        return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8"), "bad", field
    if choice == "blank":
        return draw(st.text(alphabet=" \t\r", max_size=3)).encode(), "blank", None
    if choice == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b""), "junk", None
    value = draw(json_values)
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        json.dumps(value, allow_nan=False)
        strict = True
    except ValueError:  # NaN / Infinity somewhere: not strict JSON
        strict = False
    return raw, ("nonobject" if strict and not isinstance(value, dict) else "junk"), None


@st.composite
def files(draw):
    kind = draw(st.sampled_from(["sft", "preference", "ranking"]))
    lines = draw(st.lists(line(kind), min_size=1, max_size=15))
    return kind, lines


def _is_blank(raw: bytes, lineno: int) -> bool:
    """Only JSON whitespace (after the byte-order mark a file may start with)."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.strip(b" \t\r\n") == b""


@settings(max_examples=120, deadline=None)
@given(files())
def test_read_jsonl_skip_accounts_for_every_line(kind_and_lines):
    kind, lines = kind_and_lines
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz.jsonl")
        with open(path, "wb") as f:
            f.write(b"".join(raw + b"\n" for raw, _, _ in lines))
        rows, errors = read_jsonl(path, kind, on_error="skip")

        assert all(isinstance(e, DataError) and e.file == path for e in errors)
        error_at = {e.line: e for e in errors}
        assert len(error_at) == len(errors), "two errors for one line"

        pending = iter(rows)
        n_outcomes = 0
        for lineno, (raw, label, expected) in enumerate(lines, start=1):
            if label == "blank" or (label == "junk" and _is_blank(raw, lineno)):
                assert lineno not in error_at
                continue
            n_outcomes += 1
            err = error_at.get(lineno)
            if err is not None:
                assert f"{path}:{lineno}: " in str(err)
                assert label != "good", f"good line {lineno} rejected: {err}"
                if label == "bad":
                    assert err.field == expected and f'field "{expected}"' in str(err)
                if label == "nonobject":
                    assert err.field is None and "expected a JSON object" in str(err)
                continue
            row = next(pending)  # this line's row, in file order
            assert label not in ("bad", "nonobject"), f"bad line {lineno} accepted as {row!r}"
            if label == "good":
                assert row == expected
            else:  # junk that happens to be a valid row: its fields come from the line
                obj = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
                if "instruction" in obj:
                    assert row["prompt"].startswith(obj["instruction"])
                else:
                    assert row["prompt"] == obj["prompt"]
        assert next(pending, None) is None, "more rows than lines"
        assert n_outcomes == len(rows) + len(errors)

        # on_error="raise" agrees: the first bad line raises, or the same rows come back.
        if errors:
            first = min(error_at)
            try:
                read_jsonl(path, kind)
            except DataError as e:
                assert e.line == first and str(e) == str(error_at[first])
            else:
                raise AssertionError("on_error='raise' did not raise")
        else:
            assert read_jsonl(path, kind) == (rows, [])
