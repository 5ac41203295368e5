"""Metrics: one JSON object per step in `<run_dir>/metrics.jsonl`, a short console line, a progress bar.

Every trainer logs the same way:

    timer = Timer()
    with MetricsLogger(run_dir, total_steps=cfg.steps, desc="ppo", resume_step=start) as log:
        for step in range(start + 1, cfg.steps + 1):
            with timer("generation"):
                ...
            with timer("update"):
                ...
            log.log(step, {"loss": loss, "kl": kl, **timer.as_metrics()})
            timer.reset()

Each line of metrics.jsonl is `{"kl": ..., "loss": ..., "step": 12, "time": 3.41, ...}` with sorted keys;
"time" is wall seconds since the run started, carried across resumes. `read_metrics` reads it back.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import torch
from tqdm import tqdm

from minirlhf.checkpoint import atomic_write_text

__all__ = ["MetricsLogger", "read_metrics", "Timer", "CONSOLE_KEYS"]

METRICS_FILE = "metrics.jsonl"

# Shown on the console line, in this order, when present in a step's metrics.
CONSOLE_KEYS = (
    "loss", "reward/mean", "reward/score", "kl", "entropy", "clipfrac", "approx_kl", "step_frac",
    "explained_variance", "rewards/accuracies", "rewards/margins", "accuracy", "eval/loss",
    "eval/accuracy", "eval/judge_score", "lr",
)


def _scalar(key: str, value: Any) -> int | float | bool | str | None:
    """A metric value as a JSON-ready Python scalar: tensors and NumPy scalars become int/float/bool."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {key!r}: expected a scalar, got a tensor of shape {tuple(value.shape)}; "
                             "reduce it first (e.g. .mean())")
        return value.detach().item()
    if hasattr(value, "item") and getattr(value, "size", None) == 1:  # NumPy scalars and 1-element arrays
        return value.item()
    raise TypeError(f"metric {key!r}: expected a number, bool, str, None or 1-element tensor, "
                    f"got {type(value).__name__}")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def jsonl_values(lines: list[str]):
    """(line number, value, error) for each non-blank line of a JSONL file: value parsed and error None,
    or value None and the parser's message. A last line with no newline that does not parse (a write
    in progress, or cut short by a crash) is dropped."""
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield i + 1, json.loads(line), None
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and not line.endswith("\n"):
                return
            yield i + 1, None, e.msg


def _parse_lines(path: Path, lines: list[str]) -> list[dict]:
    """Parse JSONL lines; a truncated last line (a crash mid-write) is dropped, any other bad line is an error."""
    rows = []
    for n, row, error in jsonl_values(lines):
        if error is not None:
            raise ValueError(f"{path}:{n}: not a JSON object ({error})")
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{path}:{n}: expected a JSON object with an int field 'step'")
        rows.append(row)
    return rows


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics file (or of `<path>/metrics.jsonl` when `path` is a run directory), in order."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file")
    with open(path, encoding="utf-8", newline="") as f:
        return _parse_lines(path, f.readlines())


class MetricsLogger:
    """Append one JSON object per `log(step, metrics)` call to `<run_dir>/metrics.jsonl`.

    - Each row holds the metrics (tensors and NumPy scalars converted to Python numbers), plus
      "step" and "time" (wall seconds since the run started); keys are sorted, and every line is
      flushed as it is written, so the file can be read while the run goes on.
    - Every `every` steps (and at `total_steps`), a short console line shows the `console_keys`
      present (default `CONSOLE_KEYS`), e.g. `step 40/200 | loss 0.6931 | kl 0.0123`.
    - With `total_steps`, a tqdm bar on stderr follows the latest logged step (off when stderr
      is not a terminal; the console lines still show).
    - `enabled=False` (ranks other than 0) does nothing at all: no file, no output.
    - A new run (`resume_step=None`) starts a fresh metrics.jsonl. A resumed run passes the step
      of the checkpoint it resumes from: rows with step > resume_step (logged after that checkpoint,
      before the crash) are removed, so the finished log equals an uninterrupted run's, and "time"
      continues from the last row kept.
    """

    def __init__(self, run_dir: str | os.PathLike, total_steps: int | None = None, desc: str = "",
                 console: bool = True, every: int = 1, enabled: bool = True, resume_step: int | None = None,
                 console_keys: Iterable[str] | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.time):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every: expected a positive int, got {every!r}")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 0):
            raise ValueError(f"total_steps: expected a non-negative int or None, got {total_steps!r}")
        if resume_step is not None and (isinstance(resume_step, bool) or not isinstance(resume_step, int)):
            raise ValueError(f"resume_step: expected an int or None, got {resume_step!r}")
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.total_steps = total_steps
        self.console = console
        self.every = every
        self.console_keys = tuple(CONSOLE_KEYS if console_keys is None else console_keys)
        self.stream = stream
        self.clock = clock
        self._file = None
        self._bar = None
        self._closed = False
        if not enabled:
            return

        self.path.parent.mkdir(parents=True, exist_ok=True)
        elapsed_before = 0.0
        if resume_step is None or not self.path.exists():
            self.path.write_text("", encoding="utf-8")
        else:
            kept = [row for row in read_metrics(self.path) if row["step"] <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))
            if kept and isinstance(kept[-1].get("time"), (int, float)):
                elapsed_before = float(kept[-1]["time"])
        self._start = clock() - elapsed_before
        self._file = open(self.path, "a", encoding="utf-8")
        if total_steps is not None:
            initial = min(max(resume_step or 0, 0), total_steps)
            self._bar = tqdm(total=total_steps, initial=initial, desc=desc or None, file=sys.stderr,
                             disable=None, dynamic_ncols=True, leave=True)

    def log(self, step: int, metrics: dict[str, Any]) -> dict | None:
        """Write one row; returns it (None when disabled)."""
        if not self.enabled:
            return None
        if self._closed:
            raise RuntimeError(f"{self.path}: log() after close()")
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step: expected an int, got {type(step).__name__}")
        row = {}
        for key, value in metrics.items():
            if not isinstance(key, str):
                raise TypeError(f"metric names must be str, got {key!r}")
            if key in ("step", "time"):
                raise ValueError(f"metric {key!r}: the name is reserved; the logger writes it itself")
            row[key] = _scalar(key, value)
        row["step"] = step
        row["time"] = round(self.clock() - self._start, 6)
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()

        if self._bar is not None and step > self._bar.n:
            self._bar.update(min(step, self.total_steps) - self._bar.n)
        if self.console and (step % self.every == 0 or step == self.total_steps):
            self._print(self.console_line(row))
        return row

    def console_line(self, row: dict) -> str:
        """`step 12/100 | loss 0.5 | kl 0.0031`: the step and the console keys present in `row`."""
        total = f"/{self.total_steps}" if self.total_steps is not None else ""
        parts = [f"step {row['step']}{total}"]
        parts += [f"{key} {_format(row[key])}" for key in self.console_keys if key in row]
        return " | ".join(parts)

    def _print(self, line: str) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line, file=stream)  # keeps the bar below the printed lines
        else:
            print(line, file=stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Timer:
    """Wall seconds accumulated per named phase.

        timer = Timer()
        with timer("generation"):
            ...
        timer.as_metrics()  # {"time/generation": 1.73}

    Phases may nest or repeat; each `with` adds its duration to its own name, also when the
    block raises.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.totals: dict[str, float] = {}

    def __call__(self, name: str) -> "_Phase":
        if not isinstance(name, str) or not name:
            raise ValueError(f"phase name: expected a non-empty str, got {name!r}")
        return _Phase(self, name)

    def as_metrics(self, prefix: str = "time/") -> dict[str, float]:
        return {prefix + name: seconds for name, seconds in self.totals.items()}

    def reset(self) -> None:
        self.totals.clear()


class _Phase:
    def __init__(self, timer: Timer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = self.timer.clock()

    def __exit__(self, *exc) -> None:
        seconds = self.timer.clock() - self.start
        self.timer.totals[self.name] = self.timer.totals.get(self.name, 0.0) + seconds
