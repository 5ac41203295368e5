"""Sampled responses with per-token numbers: `<run>/samples.jsonl`, read by `minirlhf report`.

The format: one JSON object per line, appended as a run goes on (a resumed run may drop the rows
after its checkpoint with `drop_samples_after`):

    {"step": 12,                       # the trainer step (iteration) the response was sampled at
     "prompt": "Q: 27+15=\\nA:",       # the prompt text
     "response": "42",                 # the response text (as decoded, EOS not included)
     "tokens": ["4", "2", "<eos>"],    # the response's tokens as strings, one per scored position
     "score": 0.83,                    # the sequence-level score (reward model or verifier)
     "advantage": [0.1, 0.2, 0.3],     # per-token lists, aligned with "tokens"
     "kl": [0.01, 0.0, 0.02],          #   per-token KL estimate to the reference
     "value": [0.5, 0.6, 0.7],         #   critic values; null for critic-free trainers
     "reward": [-0.01, 0.0, 0.81]}     #   per-token reward (e.g. -beta*kl, plus the score at EOS)

Every per-token list is either null (or absent) or exactly as long as "tokens"; an entry that
was nan or inf is written as null. Keys other than these may be added and are kept by the reader.

    rows = sample_rows(prompts, responses, token_strings, scores, mask,
                       advantages=adv, kl=kl, values=values, rewards=rewards, max_rows=4)
    write_samples(run_dir / "samples.jsonl", step, rows)
    rows, skipped = read_samples(run_dir / "samples.jsonl")

Writing appends whole lines, each with one write and a flush; a line left half-written by a crash
is cut off before the next append, and the reader ignores it, so the file stays readable while
the run goes on and after it was killed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from minirlhf.logger import jsonl_values

__all__ = ["SAMPLES_FILE", "QUANTITIES", "sample_rows", "write_samples", "read_samples",
           "drop_samples_after", "token_strings"]

SAMPLES_FILE = "samples.jsonl"
QUANTITIES = ("advantage", "kl", "value", "reward")  # the per-token lists, in the report's selector order


def _number(x: Any) -> float | None:
    """A finite float rounded to 6 significant digits (small files), or None for nan / inf / None."""
    if x is None:
        return None
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def token_strings(tokenizer, ids: Iterable[int]) -> list[str]:
    """Each token id decoded on its own (a byte-level BPE piece may show as a replacement character)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def sample_rows(prompts: Sequence[str], responses: Sequence[str], tokens: Sequence[Sequence[str]],
                scores: torch.Tensor | Sequence[float], mask: torch.Tensor, advantages: torch.Tensor | None = None,
                kl: torch.Tensor | None = None, values: torch.Tensor | None = None,
                rewards: torch.Tensor | None = None, max_rows: int | None = None) -> list[dict]:
    """Rows of samples.jsonl (without "step") from a batch of B responses.

    prompts, responses  B strings
    tokens              B lists of token strings: the response positions where `mask` is 1, in order
    scores              (B,) sequence scores
    mask                (B, T) 1 on the response's valid positions
    advantages, kl, values, rewards   (B, T) per-token tensors, or None (written as null)
    max_rows            keep only the first max_rows responses (None: all)
    """
    B = len(prompts)
    if len(responses) != B or len(tokens) != B:
        raise ValueError(f"sample_rows: expected {B} responses and token lists, got {len(responses)} and {len(tokens)}")
    mask = torch.as_tensor(mask).detach().to("cpu")
    if mask.dim() != 2 or mask.shape[0] != B:
        raise ValueError(f"sample_rows: mask: expected shape ({B}, T), got {tuple(mask.shape)}")
    scores = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
    if scores.numel() != B:
        raise ValueError(f"sample_rows: scores: expected {B} values, got {scores.numel()}")
    per_token = {"advantage": advantages, "kl": kl, "value": values, "reward": rewards}
    for name, t in per_token.items():
        if t is not None:
            t = torch.as_tensor(t).detach().to("cpu", torch.float64)
            if t.shape != mask.shape:
                raise ValueError(f"sample_rows: {name}: expected shape {tuple(mask.shape)} (the mask's), "
                                 f"got {tuple(t.shape)}")
            per_token[name] = t
    rows = []
    for b in range(B if max_rows is None else min(B, max_rows)):
        valid = mask[b].bool()
        toks = [str(s) for s in tokens[b]]
        if len(toks) != int(valid.sum()):
            raise ValueError(f"sample_rows: row {b}: {len(toks)} token strings for {int(valid.sum())} valid positions")
        row = {"prompt": str(prompts[b]), "response": str(responses[b]), "tokens": toks,
               "score": _number(scores[b].item())}
        for name, t in per_token.items():
            row[name] = None if t is None else [_number(v) for v in t[b][valid].tolist()]
        rows.append(row)
    return rows


def _cut_partial_line(path: Path) -> None:
    """Truncate a last line that has no newline (a write cut short by a crash)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        block, end = 1 << 16, size
        while end > 0:  # find the last newline, reading backwards
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                return
            end = start
        f.truncate(0)


def write_samples(path: str | os.PathLike, step: int, rows: Iterable[dict]) -> int:
    """Append `rows` (from sample_rows) to the samples file at `path`, each with "step": step.

    Folders are created; a half-written last line left by a crash is cut off first. Non-finite
    numbers become null. Returns the number of rows written."""
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"write_samples: step: expected an int, got {type(step).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        if not isinstance(row, dict):
            raise TypeError(f"write_samples: expected dict rows, got {type(row).__name__}")
        row = {"step": step, **{k: v for k, v in row.items() if k != "step"}}
        lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n")
    if not lines:
        return 0
    _cut_partial_line(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
    return len(lines)


def _json_default(x):
    if isinstance(x, torch.Tensor):
        return x.tolist() if x.numel() != 1 else x.item()
    raise TypeError(f"write_samples: cannot write a {type(x).__name__} as JSON")


def _valid_row(row: Any) -> str | None:
    """None if `row` is a usable samples row, else what is wrong with it."""
    if not isinstance(row, dict):
        return "not a JSON object"
    if isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
        return "no int field 'step'"
    tokens = row.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return "'tokens' is not a list of strings"
    for name in QUANTITIES:
        v = row.get(name)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != len(tokens):
            return f"'{name}' is not a list as long as 'tokens' ({len(tokens)})"
        if not all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in v):
            return f"'{name}' holds something other than numbers and null"
    return None


def read_samples(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(rows, problems): the usable rows of a samples file (or `<path>/samples.jsonl`) in order, and a
    `file:line: what` note for each line skipped. A half-written last line is dropped silently."""
    path = Path(path)
    if path.is_dir():
        path = path / SAMPLES_FILE
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        lines = f.readlines()
    rows, problems = [], []
    for n, row, error in jsonl_values(lines):
        why = f"not JSON ({error})" if error is not None else _valid_row(row)
        if why:
            problems.append(f"{path}:{n}: {why}")
            continue
        rows.append(row)
    return rows, problems


def drop_samples_after(path: str | os.PathLike, step: int) -> None:
    """Keep only the rows with "step" <= step (a resumed run: rows logged after its checkpoint go)."""
    path = Path(path)
    if not path.exists():
        return
    from minirlhf.checkpoint import atomic_write_text

    with open(path, encoding="utf-8", newline="") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        if not line.endswith("\n"):
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            kept.append(line)  # not ours to judge; the reader reports it
            continue
        if not (isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step):
            kept.append(line)
    atomic_write_text(path, "".join(kept))
