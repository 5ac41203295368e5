"""JSONL data formats with validation, and collation into padded tensors.

Five kinds of file, one JSON object per line (blank lines are skipped):

``sft``         ``{"prompt": str, "response": str}``; also accepted:
                ``{"instruction": str, "context": str, "response": str}`` (Dolly layout;
                prompt = instruction + "\\n\\n" + context when context is non-empty, context
                may be absent or "") and ``{"prompt": str, "completion": str}``.
                Canonical row: ``{"prompt", "response"}``.
``preference``  ``{"prompt": str, "chosen": str, "rejected": str}`` plus optional
                ``"prob"``: P(chosen is preferred), a number in [0, 1], default 1.0;
                ``"strength"``: s > 0 in P(chosen > rejected) = sigmoid(s * (r_c - r_r)),
                a positive number or one of ``"slight"`` (1.0), ``"strong"`` (2.0),
                ``"very strong"`` (3.0), default 1.0 (Bradley and Terry, 1952, "Rank
                Analysis of Incomplete Block Designs", with the logit scaled by s);
                ``"tie"``: bool, default false; a tie is the soft label prob = 0.5 (if
                "prob" is also given it must be 0.5). ``chosen == rejected`` is a bad row:
                an identical pair teaches nothing. Canonical row:
                ``{"prompt", "chosen", "rejected", "prob": float, "strength": float, "tie": bool}``.
``ranking``     ``{"prompt": str, "responses": [best, ..., worst]}``: at least 2 distinct
                strings (the input of a Plackett-Luce loss). Canonical row:
                ``{"prompt", "responses": list[str]}``.
``unpaired``    ``{"prompt": str, "completion": str, "label": bool}``: one completion marked
                desirable (true) or undesirable (false), the data of KTO (Ethayarajh et al.,
                2024, "KTO: Model Alignment as Prospect Theoretic Optimization"). "label" is
                required. Canonical row: ``{"prompt", "completion", "label": bool}``.
``prompt``      a prompt to sample from, with an optional reference answer: ``{"prompt": str}``
                plus ``"reference"`` (or ``"response"`` / ``"completion"``), or a Dolly row
                ``{"instruction", "context", "response"}`` whose response is the reference.
                Canonical row: ``{"prompt", "reference": str or None}``.

Every string above must be non-empty and valid Unicode. Unknown extra keys are allowed
and ignored (public datasets carry ids, sources, ...); a known key with the wrong type is
an error, and so is JSON ``null`` where a value is expected. The JSON must be strict: no
NaN/Infinity, no duplicate keys.

A bad row raises (or, with ``on_error="skip"``, yields) a ``DataError`` such as
``data/x.jsonl:17: field "chosen": expected a non-empty string, got 3``.

Collation (token ids -> LongTensors). Sequences for teacher-forced training are RIGHT
padded; prompts that will be generated from are LEFT padded, so that every row's last
prompt token sits in the last column and new tokens are appended in one column for all rows.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings

import torch

from minirlhf.checkpoint import atomic_write

KINDS = ("sft", "preference", "ranking", "prompt", "unpaired")

# Named preference strengths s in sigmoid(s * (r_chosen - r_rejected)).
STRENGTHS = {"slight": 1.0, "strong": 2.0, "very strong": 3.0}

_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_WHITESPACE = b" \t\r\n"


class DataError(ValueError):
    """A bad row of data: where it is (``file`` and 1-based ``line``, or ``row``, its index
    in a list), which ``field``, and what was expected (``reason``).

    ``str(err)`` reads ``data/x.jsonl:17: field "chosen": expected a non-empty string, got 3``.
    """

    def __init__(self, reason: str, file=None, line=None, field=None, row=None):
        self.reason, self.file, self.line, self.field, self.row = reason, file, line, field, row
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(f"{self.file}:{self.line}" if self.line is not None else str(self.file))
        elif self.row is not None:
            parts.append(f"row {self.row}")
        if self.field is not None:
            parts.append(f'field "{self.field}"')
        parts.append(self.reason)
        return ": ".join(parts)

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.reason, self.file, self.line, self.field, self.row))


def _bad(field, reason) -> DataError:
    """A DataError from the validators; read_jsonl adds the file and line."""
    return DataError(reason, field=field)


# ---------------------------------------------------------------------------
# Field validators
# ---------------------------------------------------------------------------

def _show(value, limit: int = 60) -> str:
    """A value in JSON notation for an error message, shortened when long."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_unicode(value: str, field: str) -> str:
    """JSON escapes can smuggle in unpaired surrogates ("\\ud800"), which are not text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _bad(field, f"expected valid Unicode text, got an unpaired surrogate "
                          f"{value[e.start]!r} at character {e.start}") from None
    return value


def _string(obj: dict, field: str, required: bool = True, allow_empty: bool = False):
    if field not in obj:
        if required:
            raise _bad(field, "missing; expected a non-empty string")
        return None
    value = obj[field]
    if not isinstance(value, str) or (value == "" and not allow_empty):
        expected = "a string" if allow_empty else "a non-empty string"
        raise _bad(field, f"expected {expected}, got {_show(value)}")
    return _check_unicode(value, field)


def _prob(obj: dict) -> float:
    if "prob" not in obj:
        return 1.0
    v = obj["prob"]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad("prob", f"expected a number in [0, 1], got {_show(v)}")
    # Compare before converting: a huge JSON integer would overflow float().
    if not (0 <= v <= 1):
        raise _bad("prob", f"expected a number in [0, 1], got {_show(v)}")
    return float(v)


def _strength(obj: dict) -> float:
    if "strength" not in obj:
        return 1.0
    v = obj["strength"]
    if isinstance(v, str):
        if v not in STRENGTHS:
            raise _bad("strength", f"expected a positive number or one of "
                                   f"{', '.join(repr(k) for k in STRENGTHS)}, got {_show(v)}")
        return STRENGTHS[v]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad("strength", f"expected a positive number or one of "
                               f"{', '.join(repr(k) for k in STRENGTHS)}, got {_show(v)}")
    try:
        s = float(v)
    except OverflowError:
        s = math.inf
    if not (s > 0 and math.isfinite(s)):
        raise _bad("strength", f"expected a positive finite number, got {_show(v)}")
    return s


def _bool(obj: dict, field: str, default: bool) -> bool:
    if field not in obj:
        return default
    v = obj[field]
    if not isinstance(v, bool):
        raise _bad(field, f"expected true or false, got {_show(v)}")
    return v


# ---------------------------------------------------------------------------
# Row schemas: a JSON object -> one canonical dict (or a DataError naming the field)
# ---------------------------------------------------------------------------

def _check_object(obj) -> None:
    if not isinstance(obj, dict):
        raise _bad(None, f"expected a JSON object, got {_json_type(obj)} {_show(obj, 40)}")


def _row_prompt(obj: dict, plain_layout: str) -> str:
    """The prompt of a row in either layout: "prompt", or Dolly's "instruction" with its optional
    "context" after a blank line. ``plain_layout`` names the other layout in the error."""
    if "instruction" in obj:
        if "prompt" in obj:
            raise _bad("prompt", 'both "prompt" and "instruction" are given; expected one layout, '
                                 f'{plain_layout} or {{"instruction", "context", "response"}}')
        instruction = _string(obj, "instruction")
        context = _string(obj, "context", required=False, allow_empty=True)
        return instruction + ("\n\n" + context if context else "")
    return _string(obj, "prompt")


def parse_sft_row(obj: dict) -> dict:
    """Validate one SFT object (any of the three layouts) -> ``{"prompt", "response"}``."""
    _check_object(obj)
    prompt = _row_prompt(obj, '{"prompt", "response"}')
    if "completion" in obj:
        if "response" in obj:
            raise _bad("completion", 'both "response" and "completion" are given; expected one of them')
        response = _string(obj, "completion")
    else:
        response = _string(obj, "response")
    return {"prompt": prompt, "response": response}


def parse_preference_row(obj: dict) -> dict:
    """Validate one preference object -> ``{"prompt", "chosen", "rejected", "prob",
    "strength", "tie"}`` with the defaults of the module docstring filled in."""
    _check_object(obj)
    prompt = _string(obj, "prompt")
    chosen = _string(obj, "chosen")
    rejected = _string(obj, "rejected")
    if chosen == rejected:
        raise _bad("rejected", 'equal to "chosen"; a pair of identical responses teaches nothing')
    prob = _prob(obj)
    strength = _strength(obj)
    tie = _bool(obj, "tie", False)
    if tie:
        if "prob" in obj and prob != 0.5:
            raise _bad("prob", f'a tie ("tie": true) is prob 0.5, got {_show(obj["prob"])}')
        prob = 0.5
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "prob": prob, "strength": strength, "tie": tie}


def parse_ranking_row(obj: dict) -> dict:
    """Validate one ranking object -> ``{"prompt", "responses": [best, ..., worst]}``."""
    _check_object(obj)
    prompt = _string(obj, "prompt")
    if "responses" not in obj:
        raise _bad("responses", "missing; expected an array of at least 2 distinct non-empty strings")
    responses = obj["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise _bad("responses", f"expected an array of at least 2 distinct non-empty strings "
                                f"(best first), got {_show(responses)}")
    seen = {}
    for k, r in enumerate(responses):
        field = f"responses[{k}]"
        if not isinstance(r, str) or r == "":
            raise _bad(field, f"expected a non-empty string, got {_show(r)}")
        _check_unicode(r, field)
        if r in seen:
            raise _bad(field, f"duplicate of responses[{seen[r]}]; a ranking needs distinct responses")
        seen[r] = k
    return {"prompt": prompt, "responses": list(responses)}


def parse_prompt_row(obj: dict) -> dict:
    """Validate one prompt object -> ``{"prompt", "reference"}`` (the reference None when the row has
    none). The prompt as in ``parse_sft_row``; the reference from "reference", "response" or
    "completion", at most one of them."""
    _check_object(obj)
    prompt = _row_prompt(obj, '{"prompt", "reference"}')
    given = [k for k in ("reference", "response", "completion") if k in obj]
    if len(given) > 1:
        raise _bad(given[1], f'both "{given[0]}" and "{given[1]}" are given; expected at most one reference')
    reference = _string(obj, given[0]) if given else None
    return {"prompt": prompt, "reference": reference}


def parse_unpaired_row(obj: dict) -> dict:
    """Validate one unpaired (KTO) object -> ``{"prompt", "completion", "label"}``; label is true
    for a desirable completion and false for an undesirable one (Ethayarajh et al. 2024)."""
    _check_object(obj)
    prompt = _string(obj, "prompt")
    completion = _string(obj, "completion")
    if "label" not in obj:
        raise _bad("label", "missing; expected true (desirable) or false (undesirable)")
    return {"prompt": prompt, "completion": completion, "label": _bool(obj, "label", False)}


_PARSERS = {"sft": parse_sft_row, "preference": parse_preference_row, "ranking": parse_ranking_row,
            "prompt": parse_prompt_row, "unpaired": parse_unpaired_row}


# ---------------------------------------------------------------------------
# Reading and writing JSONL
# ---------------------------------------------------------------------------

def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _object_without_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {_show(key)}")
        obj[key] = value
    return obj


def _parse_line(raw: bytes, parse) -> dict:
    """One line of bytes -> one canonical row, or DataError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(None, f"invalid UTF-8 at byte {e.start} ({e.reason}); expected a UTF-8 encoded line") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant,
                         object_pairs_hook=_object_without_duplicate_keys)
    except json.JSONDecodeError as e:  # its own "line 1 column c" would mislead: one line is one row
        raise _bad(None, f"invalid JSON: {e.msg} at character {e.pos}") from None
    except (ValueError, RecursionError) as e:  # duplicate key, NaN, too deep, too many digits
        raise _bad(None, f"invalid JSON: {e}") from None
    return parse(obj)


def read_jsonl(path, kind: str, on_error: str = "raise"):
    """Read and validate a JSONL file of ``kind`` in ("sft", "preference", "ranking", "prompt", "unpaired").

    Returns ``(rows, errors)``: the canonical rows in file order and, with
    ``on_error="skip"``, one ``DataError`` per bad line (naming the line); with
    ``on_error="raise"`` (default) the first bad line raises its ``DataError`` and
    ``errors`` is always empty. Lines are read as bytes and decoded one by one, so an
    invalid UTF-8 line is one bad row, not a failed file. Lines holding only JSON
    whitespace are skipped. A UTF-8 byte-order mark at the start of the file is ignored.
    Line numbers are 1-based and count every line, blank ones included.
    """
    if kind not in _PARSERS:
        raise ValueError(f"read_jsonl: expected kind to be one of {list(KINDS)}, got {kind!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f'read_jsonl: expected on_error to be "raise" or "skip", got {on_error!r}')
    parse = _PARSERS[kind]
    file = os.fspath(path)
    rows, errors = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
            if not raw.strip(_JSON_WHITESPACE):
                continue
            try:
                rows.append(_parse_line(raw, parse))
            except DataError as e:
                err = DataError(e.reason, file=file, line=lineno, field=e.field)
                if on_error == "raise":
                    raise err from None
                errors.append(err)
    return rows, errors


def _load(path, kind, on_error):
    rows, errors = read_jsonl(path, kind, on_error=on_error)
    if errors:
        shown = "\n  ".join(str(e) for e in errors[:5])
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        warnings.warn(f"{os.fspath(path)}: skipped {len(errors)} bad line(s), kept {len(rows)}:\n  {shown}{more}",
                      stacklevel=3)
    return rows


def load_sft(path, on_error: str = "raise") -> list[dict]:
    """Rows of an SFT file. With ``on_error="skip"`` bad lines are dropped with a warning
    (use ``read_jsonl`` to get the errors themselves)."""
    return _load(path, "sft", on_error)


def load_preferences(path, on_error: str = "raise") -> list[dict]:
    """Rows of a preference file; see ``load_sft`` for ``on_error``."""
    return _load(path, "preference", on_error)


def load_rankings(path, on_error: str = "raise") -> list[dict]:
    """Rows of a ranking file; see ``load_sft`` for ``on_error``."""
    return _load(path, "ranking", on_error)


def load_prompts(path, on_error: str = "raise") -> list[dict]:
    """Rows of a prompt file, ``{"prompt", "reference"}``; see ``load_sft`` for ``on_error``."""
    return _load(path, "prompt", on_error)


def load_unpaired(path, on_error: str = "raise") -> list[dict]:
    """Rows of an unpaired (KTO) file, ``{"prompt", "completion", "label"}``; see ``load_sft`` for ``on_error``."""
    return _load(path, "unpaired", on_error)


def write_jsonl(path, rows) -> None:
    """Write ``rows`` (JSON-serialisable objects) one per line, UTF-8, atomically
    (``checkpoint.atomic_write``: a crash leaves the old file or the new one)."""
    lines = []
    for i, row in enumerate(rows):
        try:
            lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n")
        except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
            raise ValueError(f"write_jsonl: row {i} cannot be written as JSON: {e}") from None
    atomic_write(path, lambda f: f.writelines(lines))


# ---------------------------------------------------------------------------
# Encoding and truncation
# ---------------------------------------------------------------------------

def _check_max_len(max_len, name):
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2):
        raise ValueError(f"{name}: expected max_len to be an int >= 2 or None, got {max_len!r}")


def _check_truncation(truncation, name):
    if truncation not in ("error", "left"):
        raise ValueError(f'{name}: expected truncation to be "error" or "left", got {truncation!r}')


def _row_field(row, i: int, field: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"expected a dict, got {type(row).__name__}", row=i)
    if field not in row:
        raise DataError("missing", row=i, field=field)
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {_show(value)}", row=i, field=field)
    return value


def _encode_row(tokenizer, template, prompt, response, i):
    try:
        return template.encode(tokenizer, prompt, response)
    except ValueError as e:  # e.g. a character outside a CharTokenizer's alphabet
        raise DataError(f"cannot encode: {e}", row=i) from None


def _n_prompt_droppable(ids, n_prompt, tokenizer) -> int:
    """How many prompt tokens left truncation may drop: all but BOS (kept when the
    sequence starts with it) and one real prompt token."""
    keep = 1 if ids and ids[0] == tokenizer.bos_id else 0
    return max(0, n_prompt - keep - 1)


def _drop_prompt_left(ids, n_prompt, k, tokenizer):
    """Drop ``k`` prompt tokens from the left, just after BOS."""
    keep = 1 if ids and ids[0] == tokenizer.bos_id else 0
    return ids[:keep] + ids[keep + k:], n_prompt - k


def _warn_truncation(name, n_rows, n_truncated, n_dropped, max_len, report):
    if report is not None:
        report.update(rows=n_rows, truncated_rows=n_truncated, dropped_prompt_tokens=n_dropped)
    if n_truncated:
        warnings.warn(f"{name}: dropped {n_dropped} prompt token(s) from the left in {n_truncated} of "
                      f"{n_rows} row(s) to fit max_len={max_len}", stacklevel=3)


def _too_long(length, n_prompt, max_len, droppable, truncation, i, what=""):
    label = f"{what} " if what else ""
    if truncation == "error":
        return DataError(f"{label}{length} tokens (prompt part {n_prompt} with BOS, response part "
                         f"{length - n_prompt} with EOS) exceed max_len={max_len}; raise max_len or pass "
                         f'truncation="left" to drop prompt tokens from the left', row=i)
    return DataError(f"{label}{length} tokens exceed max_len={max_len} even after dropping "
                     f"{droppable} prompt token(s): the response part alone ({length - n_prompt} tokens "
                     f"with EOS) plus BOS and one prompt token must fit", row=i)


def encode_sft(tokenizer, template, rows, max_len, truncation: str = "error", report: dict | None = None):
    """Encode SFT rows (dicts with "prompt" and "response") with ``template``.

    Returns a list of ``(ids, n_prompt)``: ``ids[:n_prompt]`` is BOS + the templated
    prompt, ``ids[n_prompt:]`` the response then EOS.

    ``max_len`` (or None for no limit) bounds ``len(ids)``, BOS and EOS included.
    ``truncation``:

    - ``"error"`` (default): a row longer than ``max_len`` raises a DataError naming the
      row and its prompt/response lengths.
    - ``"left"``: drop prompt tokens from the left, just after BOS, until the row fits.
      The response is never cut (its EOS is what teaches the model to stop); a row whose
      response part plus BOS and one prompt token exceeds ``max_len`` still raises. The
      number of truncated rows and dropped tokens is reported by a warning and, when a
      ``report`` dict is passed, in ``report["truncated_rows"]`` and
      ``report["dropped_prompt_tokens"]``.
    """
    _check_max_len(max_len, "encode_sft")
    _check_truncation(truncation, "encode_sft")
    out, n_truncated, n_dropped = [], 0, 0
    for i, row in enumerate(rows):
        prompt, response = _row_field(row, i, "prompt"), _row_field(row, i, "response")
        ids, n_prompt = _encode_row(tokenizer, template, prompt, response, i)
        if max_len is not None and len(ids) > max_len:
            k = len(ids) - max_len
            droppable = _n_prompt_droppable(ids, n_prompt, tokenizer)
            if truncation == "error" or k > droppable:
                raise _too_long(len(ids), n_prompt, max_len, droppable, truncation, i)
            ids, n_prompt = _drop_prompt_left(ids, n_prompt, k, tokenizer)
            n_truncated, n_dropped = n_truncated + 1, n_dropped + k
        out.append((ids, n_prompt))
    _warn_truncation("encode_sft", len(out), n_truncated, n_dropped, max_len, report)
    return out


# ---------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------

def collate_sft(encoded, pad_id: int) -> dict:
    """Right-pad ``(ids, n_prompt)`` pairs into a batch.

    Returns LongTensors, each (B, T) with T the longest row:

    - ``input_ids``: the ids, then ``pad_id``;
    - ``attention_mask``: 1 on real tokens, 0 on padding;
    - ``loss_mask``: 1 on the response tokens (the final EOS included), 0 on prompt and
      padding: the tokens to be PREDICTED. A trainer scores ``logits[:, :-1]`` against
      ``input_ids[:, 1:]`` and weights with ``loss_mask[:, 1:]``;
    - ``n_prompt`` (B,): each row's prompt length.
    """
    encoded = list(encoded)
    if not encoded:
        raise ValueError("collate_sft: expected at least one (ids, n_prompt) pair, got none")
    lengths = []
    for b, item in enumerate(encoded):
        ids, n_prompt = item
        if not 1 <= n_prompt < len(ids):
            raise ValueError(f"collate_sft: row {b}: expected 1 <= n_prompt < len(ids) (a prompt token to "
                             f"predict from and at least one response token), got n_prompt={n_prompt}, "
                             f"len(ids)={len(ids)}")
        lengths.append(len(ids))
    B, T = len(encoded), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)    # (B, T)
    attention_mask = torch.zeros((B, T), dtype=torch.long)      # (B, T)
    loss_mask = torch.zeros((B, T), dtype=torch.long)           # (B, T)
    for b, (ids, n_prompt) in enumerate(encoded):
        L = len(ids)
        input_ids[b, :L] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, :L] = 1
        loss_mask[b, n_prompt:L] = 1
    n_prompt = torch.tensor([n for _, n in encoded], dtype=torch.long)  # (B,)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
            "n_prompt": n_prompt}


def collate_preferences(tokenizer, template, rows, max_len, truncation: str = "error",
                        report: dict | None = None, share_prompt: bool = False) -> dict:
    """Encode and right-pad preference rows for one concatenated forward pass.

    Returns ``input_ids``, ``attention_mask``, ``loss_mask``, ``n_prompt`` as in
    ``collate_sft`` with 2B rows: the B chosen sequences, then the B rejected ones (row b
    and row B + b share a prompt); and ``prob`` (B,), ``strength`` (B,) as floats of the
    default dtype (defaults 1.0 when a row lacks them).

    ``max_len`` and ``truncation`` as in ``encode_sft``; with ``"left"``, chosen and
    rejected lose the SAME prompt tokens, so both are scored on one context.

    ``share_prompt``: also ``shared``, the same pairs laid out one pair a row, the prompt once
    (``share_prompts``), for a forward pass over fewer positions.
    """
    _check_max_len(max_len, "collate_preferences")
    _check_truncation(truncation, "collate_preferences")
    rows = list(rows)
    if not rows:
        raise ValueError("collate_preferences: expected at least one row, got none")
    chosen, rejected, probs, strengths = [], [], [], []
    n_truncated = n_dropped = 0
    for i, row in enumerate(rows):
        prompt = _row_field(row, i, "prompt")
        c_ids, c_n = _encode_row(tokenizer, template, prompt, _row_field(row, i, "chosen"), i)
        r_ids, r_n = _encode_row(tokenizer, template, prompt, _row_field(row, i, "rejected"), i)
        longest = max(len(c_ids), len(r_ids))
        if max_len is not None and longest > max_len:
            k = longest - max_len
            droppable = _n_prompt_droppable(c_ids, c_n, tokenizer)
            if truncation == "error" or k > droppable:
                worse, n = (c_ids, c_n) if len(c_ids) >= len(r_ids) else (r_ids, r_n)
                what = "chosen:" if worse is c_ids else "rejected:"
                raise _too_long(len(worse), n, max_len, droppable, truncation, i, what)
            c_ids, c_n = _drop_prompt_left(c_ids, c_n, k, tokenizer)
            r_ids, r_n = _drop_prompt_left(r_ids, r_n, k, tokenizer)
            n_truncated, n_dropped = n_truncated + 1, n_dropped + k
        chosen.append((c_ids, c_n))
        rejected.append((r_ids, r_n))
        for field, default, out in (("prob", 1.0, probs), ("strength", 1.0, strengths)):
            value = row.get(field, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"expected a number, got {_show(value)} (rows from load_preferences "
                                f"have it as a float)", row=i, field=field)
            out.append(float(value))
    _warn_truncation("collate_preferences", len(rows), n_truncated, n_dropped, max_len, report)
    batch = collate_sft(chosen + rejected, tokenizer.pad_id)
    dtype = torch.get_default_dtype()
    batch["prob"] = torch.tensor(probs, dtype=dtype)           # (B,)
    batch["strength"] = torch.tensor(strengths, dtype=dtype)   # (B,)
    if share_prompt:
        batch["shared"] = share_prompts(chosen, rejected, tokenizer.pad_id)
    return batch


def share_prompts(chosen, rejected, pad_id: int) -> dict:
    """One row per pair, the prompt x once: ``x y_w y_l``, right-padded (prefix sharing; Wang et al.,
    2024, "Accelerating Direct Preference Optimization with Prefix Sharing").

    ``chosen``, ``rejected``: the pairs' ``(ids, n_prompt)``, the same prompt ids in both. The
    rejected response sits after the chosen one but takes the positions it would have on its own
    (n_prompt, n_prompt + 1, ...) and sees the prompt and itself only, never y_w: with the mask
    ``allowed`` every token of the row has the hidden state it has in its own sequence, for
    |x| + |y_w| + |y_l| positions a pair instead of 2 |x| + |y_w| + |y_l|. Returns (B rows, T the
    longest):

    - ``input_ids`` (B,T), ``positions`` (B,T) (0 on padding);
    - ``segment`` (B,T): 0 on the prompt, 1 on y_w, 2 on y_l, -1 on padding;
    - ``allowed`` (B,1,T,T) bool: query i sees key j when j <= i, j is real, and j is in the prompt
      or in i's own segment; a padding query sees itself only (its softmax is never empty);
    - ``predictor`` (B,T): the column whose logits predict the token at t, t - 1 inside a
      segment and the last prompt token for each response's first token (0 on the prompt and padding);
    - ``chosen_last``, ``rejected_last`` (B,): the columns of each response's last token (its EOS).
    """
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError(f"share_prompts: expected as many chosen as rejected sequences (at least one), "
                         f"got {len(chosen)} and {len(rejected)}")
    rows = []
    for b, ((c_ids, c_n), (r_ids, r_n)) in enumerate(zip(chosen, rejected)):
        if c_n != r_n or c_ids[:c_n] != r_ids[:r_n]:
            raise ValueError(f"share_prompts: pair {b}: the chosen and rejected sequences start with different "
                             f"prompts ({c_n} and {r_n} tokens)")
        if not 1 <= c_n < min(len(c_ids), len(r_ids)):
            raise ValueError(f"share_prompts: pair {b}: expected a prompt token and a response token in both "
                             f"sequences, got n_prompt={c_n}, lengths {len(c_ids)} and {len(r_ids)}")
        rows.append((c_ids, r_ids[r_n:], c_n))
    B, T = len(rows), max(len(c) + len(r) for c, r, _ in rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    positions = torch.zeros((B, T), dtype=torch.long)
    segment = torch.full((B, T), -1, dtype=torch.long)
    predictor = torch.zeros((B, T), dtype=torch.long)
    chosen_last, rejected_last = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    for b, (c_ids, r_resp, n) in enumerate(rows):
        Lc, Lr = len(c_ids), len(r_resp)
        input_ids[b, :Lc + Lr] = torch.tensor(c_ids + r_resp, dtype=torch.long)
        positions[b, :Lc] = torch.arange(Lc)
        positions[b, Lc:Lc + Lr] = torch.arange(n, n + Lr)
        segment[b, :n], segment[b, n:Lc], segment[b, Lc:Lc + Lr] = 0, 1, 2
        predictor[b, n:Lc + Lr] = torch.arange(n - 1, Lc + Lr - 1)
        predictor[b, Lc] = n - 1  # y_l's first token follows the prompt, not y_w
        chosen_last[b], rejected_last[b] = Lc - 1, Lc + Lr - 1
    q, k = segment[:, :, None], segment[:, None, :]  # (B,T,1), (B,1,T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal & (q >= 0) & (k >= 0) & ((k == 0) | (k == q)) | torch.eye(T, dtype=torch.bool)
    return {"input_ids": input_ids, "positions": positions, "segment": segment, "allowed": allowed[:, None],
            "predictor": predictor, "chosen_last": chosen_last, "rejected_last": rejected_last}


def collate_prompts(tokenizer, template, prompts, max_len=None, truncation: str = "error") -> dict:
    """Encode prompts (strings, or rows with a "prompt" key) for generation, LEFT padded.

    Returns ``input_ids`` (B, T) with ``pad_id`` on the left and ``attention_mask`` (B, T),
    1 on real tokens; every row's last prompt token is in column T-1. With ``max_len``,
    a longer prompt raises (``truncation="error"``) or loses tokens from the left just
    after BOS (``"left"``, reported as in ``encode_sft``).
    """
    _check_max_len(max_len, "collate_prompts")
    _check_truncation(truncation, "collate_prompts")
    if isinstance(prompts, str):
        raise TypeError("collate_prompts: expected a list of prompts, got a single str")
    encoded, n_truncated, n_dropped = [], 0, 0
    for i, p in enumerate(prompts):
        prompt = _row_field(p, i, "prompt") if isinstance(p, dict) else p
        if not isinstance(prompt, str):
            raise DataError(f"expected a prompt string, got {type(prompt).__name__}", row=i)
        ids, n_prompt = _encode_row(tokenizer, template, prompt, None, i)
        if max_len is not None and len(ids) > max_len:
            k = len(ids) - max_len
            droppable = _n_prompt_droppable(ids, n_prompt, tokenizer)
            if truncation == "error" or k > droppable:
                raise DataError(f"prompt of {len(ids)} tokens (BOS included) exceeds max_len={max_len}"
                                + ('; pass truncation="left" to drop tokens from the left'
                                   if truncation == "error" else ""), row=i)
            ids, n_prompt = _drop_prompt_left(ids, n_prompt, k, tokenizer)
            n_truncated, n_dropped = n_truncated + 1, n_dropped + k
        encoded.append(ids)
    if not encoded:
        raise ValueError("collate_prompts: expected at least one prompt, got none")
    _warn_truncation("collate_prompts", len(encoded), n_truncated, n_dropped, max_len, None)
    B, T = len(encoded), max(len(ids) for ids in encoded)
    input_ids = torch.full((B, T), tokenizer.pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((B, T), dtype=torch.long)              # (B, T)
    for b, ids in enumerate(encoded):
        L = len(ids)
        input_ids[b, T - L:] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, T - L:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def batches(n: int, batch_size: int, generator=None, drop_last: bool = False) -> list[list[int]]:
    """Shuffle ``range(n)`` with ``torch.randperm(n, generator=generator)`` and cut it into
    lists of ``batch_size`` indices (the last one shorter unless ``drop_last``). The same
    generator state gives the same batches; ``generator=None`` uses torch's global RNG."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"batches: expected n to be an int >= 0, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batches: expected batch_size to be an int >= 1, got {batch_size!r}")
    order = torch.randperm(n, generator=generator).tolist()
    out = [order[k:k + batch_size] for k in range(0, n, batch_size)]
    if drop_last and out and len(out[-1]) < batch_size:
        out.pop()
    return out


# ---------------------------------------------------------------------------
# Training data with its bad rows skipped and listed
# ---------------------------------------------------------------------------

def _row_lines(path, errors) -> list[int]:
    """The 1-based line of each row ``read_jsonl`` returned (non-blank lines less the skipped bad ones)."""
    bad = {e.line for e in errors}
    lines = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
            if raw.strip(_JSON_WHITESPACE) and lineno not in bad:
                lines.append(lineno)
    return lines


def usable_rows(path, kind: str, tokenizer, template, max_len, truncation: str = "error",
                on_bad_row: str = "skip", name: str = "data", option: str = "--data") -> tuple[list[dict], int]:
    """The rows of a JSONL file of ``kind`` ("sft", "preference" or "ranking") that parse and encode
    within ``max_len``, and how many were skipped. Each bad row is named ``file:line`` and listed (the
    first five) on stderr; with ``on_bad_row="raise"`` the first one raises. A missing file, or one
    with no usable row, is a DataError."""
    if on_bad_row not in ("skip", "raise"):
        raise ValueError(f'on_bad_row: expected "skip" or "raise", got {on_bad_row!r}')
    file = os.fspath(path)
    if not os.path.isfile(file):
        raise DataError(f"no such file; {option} takes a {kind} JSONL file", file=file)
    rows, bad = read_jsonl(path, kind, on_error="raise" if on_bad_row == "raise" else "skip")
    lines = _row_lines(path, bad)
    kept, checked = [], {}  # a row repeated in the file (K samples of a confident policy) is encoded once
    for row, line in zip(rows, lines):
        key = _row_key(row)
        if key not in checked:
            checked[key] = _encoding_error(row, kind, tokenizer, template, max_len, truncation)
        e = checked[key]
        if e is not None:
            err = DataError(e.reason, file=file, line=line, field=e.field)
            if on_bad_row == "raise":
                raise err from None
            bad.append(err)
            continue
        kept.append(row)
    if bad:
        bad.sort(key=lambda e: e.line or 0)
        shown = "\n  ".join(str(e) for e in bad[:5])
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        print(f"[{name}] {file}: skipped {len(bad)} bad row(s), kept {len(kept)} (--on-bad-row raise stops at "
              f"the first):\n  {shown}{more}", file=sys.stderr)
    if not kept:
        raise DataError(f"no usable {kind} rows ({len(bad)} bad, see above); {option} needs at least one",
                        file=file)
    return kept, len(bad)


def _encoding_error(row: dict, kind: str, tokenizer, template, max_len, truncation: str) -> DataError | None:
    """Why a parsed row of ``kind`` cannot be encoded within ``max_len``, or None when it can."""
    try:
        with warnings.catch_warnings():  # truncation is reported when batches are built
            warnings.simplefilter("ignore")
            if kind == "sft":
                encode_sft(tokenizer, template, [row], max_len, truncation)
            elif kind == "ranking":
                encode_sft(tokenizer, template, row_sequences(row), max_len, truncation)
            else:
                collate_preferences(tokenizer, template, [row], max_len, truncation)
    except DataError as e:
        return e
    return None


def row_sequences(row: dict) -> list[dict]:
    """The (prompt, response) sequences of a preference or ranking row, as SFT rows."""
    responses = row["responses"] if "responses" in row else [row["chosen"], row["rejected"]]
    return [{"prompt": row["prompt"], "response": r} for r in responses]


def _row_key(row: dict) -> str:
    """A row's identity: every field, in sorted-key JSON (two rows with equal fields have equal keys)."""
    return json.dumps(row, sort_keys=True, default=str)


def unique_rows(rows: list[dict]) -> list[dict]:
    """The rows with exact repeats (every field equal) dropped, first occurrences in order."""
    seen, out = set(), []
    for row in rows:
        key = _row_key(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def step_batch(encoded, order: torch.Tensor, step: int, batch_size: int, seed: int) -> list:
    """The rows of optimizer step ``step`` (1-based) of ``encoded`` (demonstrations, pairs, indices):
    epoch e walks a permutation seeded by (seed, e), so the data position is a function of the step
    and a resumed run sees the same batches. Returns (rows, order); pass order back on the next call."""
    per_epoch = max(1, len(encoded) // batch_size)
    epoch, k = divmod(step - 1, per_epoch)
    if order is None or order[0] != epoch:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = (epoch, torch.randperm(len(encoded), generator=g))
    idx = order[1][k * batch_size : (k + 1) * batch_size].tolist()
    return [encoded[i] for i in idx], order
