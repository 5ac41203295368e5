"""Curves from run folders: every run's metrics.jsonl as one figure, one panel per metric.

    from minirlhf.plotting import plot_runs
    plot_runs({"PPO": "runs/ppo", "DPO": "runs/dpo"}, keys=["reward/score", "kl", "eval/accuracy"],
              x="time", out_path="curves.png")

Each run is a line of its own colour in every panel it has data for (a label may name a list of
folders, one per seed: they share the label's colour and legend entry); a run that never logged a
key is simply absent from that panel, and a key no run logged gets no panel. Metrics logged only
now and then (evaluations every N steps) are drawn with markers. `keys=None` plots the standard
keys (DEFAULT_KEYS) that some run has.

matplotlib is an optional extra (`pip install -e .[plots]`); it is imported only when a figure
is drawn, always on the non-interactive Agg canvas (no display needed, no global pyplot state).
The command-line front end is scripts/plot.py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from minirlhf.logger import read_metrics

__all__ = ["DEFAULT_KEYS", "X_AXES", "load_runs", "numeric_keys", "metric_series", "plot_runs", "run_labels"]

# Plotted by default when present, in this order: the headline quantities of every trainer.
DEFAULT_KEYS = (
    "reward/score", "reward/mean", "kl", "eval/accuracy", "eval/judge_score", "rewards/accuracies",
    "rewards/margins", "loss", "eval/loss", "entropy", "clipfrac", "explained_variance",
)
X_AXES = {"time": "wall time (s)", "step": "step"}
_NOT_METRICS = ("step", "time")
_SPARSE = 40  # a series with at most this many points gets markers


def run_labels(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """{label: path} with each run labelled by its folder name; clashing names keep more of the path."""
    paths = [Path(p) for p in paths]
    for depth in range(1, max((len(p.parts) for p in paths), default=1) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return dict(zip(labels, paths))
    raise ValueError(f"run_dirs: the same run folder is given twice: {[str(p) for p in paths]}")


def load_runs(run_dirs: Mapping[str, str | os.PathLike]) -> dict[str, list[dict]]:
    """{label: rows of <run>/metrics.jsonl}; a missing or empty file is an error that names the run."""
    if not run_dirs:
        raise ValueError("run_dirs: expected at least one run folder")
    runs = {}
    for label, path in run_dirs.items():
        try:
            rows = read_metrics(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"run {label!r}: no metrics.jsonl at {path}") from None
        if not rows:
            raise ValueError(f"run {label!r}: {path} has no metrics rows yet")
        runs[label] = rows
    return runs


def _number(value) -> float | None:
    """A finite metric value as float; None for absent, non-numeric (str, bool, null) or nan/inf values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def numeric_keys(rows: Sequence[dict]) -> list[str]:
    """The metric keys with at least one finite number in `rows`, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k not in _NOT_METRICS and k not in seen and _number(v) is not None:
                seen[k] = None
    return list(seen)


def metric_series(rows: Sequence[dict], key: str, x: str = "time") -> tuple[list[float], list[float]]:
    """(xs, ys) over the rows that have both a number for `key` and for `x`, in logged order."""
    xs, ys = [], []
    for row in rows:
        xv, yv = _number(row.get(x)), _number(row.get(key))
        if xv is not None and yv is not None:
            xs.append(xv)
            ys.append(yv)
    return xs, ys


def _moving_average(ys: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` points (fewer at the start)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def _import_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib, an optional extra: pip install -e .[plots] "
                          "(or pip install matplotlib)") from None
    return Figure, FigureCanvasAgg, Line2D


def plot_runs(
    run_dirs: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]],
    keys: Sequence[str] | None = None,
    x: str = "time",
    out_path: str | os.PathLike = "curves.png",
    title: str | None = None,
    smooth: int = 0,
    ncols: int | None = None,
) -> dict:
    """Draw every run's curves for `keys` against `x` into one image; returns what was drawn.

    run_dirs  {label: run folder (or metrics.jsonl path), or a list of them (seeds of one method,
              drawn in one colour)}; labels name the lines in the legend
    keys      metric names, one panel each; None: the DEFAULT_KEYS that some run logged (or, if
              none of those, every numeric key). Keys no run logged are skipped and reported.
    x         "time" (wall seconds) or "step" (any numeric key works)
    out_path  the image (.png; .pdf and .svg also work), written atomically; folders are created
    smooth    > 1: also draw a trailing moving average over that many points, over a faint raw line
    Returns {"path": Path, "keys": [plotted keys], "skipped": [keys no run has],
    "missing": {key: [runs without it]}}.
    """
    if not isinstance(smooth, int) or smooth < 0:
        raise ValueError(f"smooth: expected an int >= 0 (the moving-average window), got {smooth!r}")
    groups = {label: [path] if isinstance(path, (str, os.PathLike)) else list(path)
              for label, path in run_dirs.items()}
    if any(not paths for paths in groups.values()):
        raise ValueError(f"run_dirs: a label with no run folder: {[k for k, v in groups.items() if not v]}")
    members = {(label, i): path for label, paths in groups.items() for i, path in enumerate(paths)}
    loaded = load_runs({f"{label} #{i}" if len(groups[label]) > 1 else label: path
                        for (label, i), path in members.items()})
    group_rows = {label: [] for label in groups}  # {label: [rows of each of its runs]}
    for (label, _), rows in zip(members, loaded.values()):
        group_rows[label].append(rows)
    runs = {label: [row for rows in seqs for row in rows] for label, seqs in group_rows.items()}
    if not any(_number(row.get(x)) is not None for rows in runs.values() for row in rows):
        raise ValueError(f"x: no run logged a number for {x!r}; expected one of {', '.join(X_AXES)} or a metric key")
    available = {label: set(numeric_keys(rows)) for label, rows in runs.items()}
    everything = [k for rows in runs.values() for k in numeric_keys(rows)]
    everything = list(dict.fromkeys(everything))
    if keys is None or len(keys) == 0:
        wanted = [k for k in DEFAULT_KEYS if k in everything] or everything
    else:
        wanted = list(dict.fromkeys(keys))
    plotted = [k for k in wanted if k != x and any(k in a for a in available.values())]
    skipped = [k for k in wanted if k not in plotted]
    if not plotted:
        have = ", ".join(everything) or "nothing"
        raise ValueError(f"keys: none of {wanted} was logged by any run; the runs have: {have}")
    missing = {k: [label for label, a in available.items() if k not in a] for k in plotted}
    missing = {k: v for k, v in missing.items() if v}

    Figure, FigureCanvasAgg, Line2D = _import_matplotlib()
    n = len(plotted)
    ncols = ncols or (1 if n == 1 else 2 if n in (2, 4) else 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.8 * ncols, 3.2 * nrows + 0.5 + (0.3 if title else 0.0)), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = {label: f"C{i % 10}" for i, label in enumerate(runs)}  # one colour per run, in every panel
    for ax, key in zip(axes.flat, plotted):
        for label, seqs in group_rows.items():
            for rows in seqs:
                xs, ys = metric_series(rows, key, x)
                if not xs:
                    continue
                color = colors[label]
                if smooth > 1 and len(ys) > smooth:
                    ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1.0)
                    ax.plot(xs, _moving_average(ys, smooth), color=color, linewidth=1.8)
                else:
                    marker = "o" if len(xs) <= _SPARSE else None
                    ax.plot(xs, ys, color=color, linewidth=1.6, marker=marker, markersize=3.5,
                            alpha=1.0 if len(seqs) == 1 else 0.7)
        ax.set_title(key, loc="left", fontsize=11, fontweight="bold")
        if key in missing:
            ax.set_title("not logged by " + ", ".join(missing[key]), loc="right", fontsize=8, color="0.45")
        ax.set_xlabel(X_AXES.get(x, x), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3, linewidth=0.6)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[label], linewidth=2.2) for label in runs]
    # the title heads the shared legend (a suptitle would collide with a legend placed outside the axes)
    legend = dict(ncol=min(len(runs), 6), frameon=False, fontsize=10, title=title, title_fontsize=13)
    try:
        fig.legend(handles, list(runs), loc="outside upper center", **legend)  # matplotlib >= 3.7
    except ValueError:
        fig.legend(handles, list(runs), loc="upper center", **legend)

    from minirlhf.checkpoint import atomic_write

    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".").lower() or "png"
    atomic_write(out_path, lambda f: fig.savefig(f, format=fmt))
    return {"path": out_path, "keys": plotted, "skipped": skipped, "missing": missing}
