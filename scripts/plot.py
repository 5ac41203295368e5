"""Plot run folders' metrics.jsonl as PNG curves, several runs overlaid, one panel per metric.

    python scripts/plot.py runs/ppo runs/trpo --keys reward/score kl eval/accuracy --x time --out curves.png
    python scripts/plot.py PPO=runs/ppo DPO=runs/dpo --x step --smooth 10
    python scripts/plot.py runs/ppo --list          # the numeric keys each run logged

A run is a folder holding metrics.jsonl (or the file itself), optionally as LABEL=PATH; without a
label the folder name is used. Without --keys the standard keys that some run logged are plotted
(see minirlhf.plotting.DEFAULT_KEYS). Keys a run lacks are skipped for that run, and keys no run
has are skipped and named. Needs matplotlib (`pip install -e .[plots]`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import minirlhf  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minirlhf.plotting import X_AXES, load_runs, numeric_keys, plot_runs, run_labels


def parse_runs(items: list[str]) -> dict[str, Path]:
    """["PPO=runs/ppo", "runs/dpo"] -> {"PPO": runs/ppo, "dpo": runs/dpo}."""
    labelled, unlabelled = {}, []
    for item in items:
        label, sep, path = item.partition("=")
        if sep and label and path and not Path(item).exists():
            labelled[label] = Path(path)
        else:
            unlabelled.append(item)
    runs = dict(labelled)
    for label, path in (run_labels(unlabelled) if unlabelled else {}).items():
        if label in runs:
            raise ValueError(f"runs: the label {label!r} is used twice; give one run a LABEL=PATH")
        runs[label] = path
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files), optionally LABEL=PATH")
    parser.add_argument("--keys", nargs="*", default=None,
                        help="metrics to plot, one panel each (default: the standard keys present)")
    parser.add_argument("--x", default="time", help=f"x axis: {' or '.join(X_AXES)} (or any numeric key); default time")
    parser.add_argument("--out", default="curves.png", help="image to write (.png, .pdf, .svg); default curves.png")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--smooth", type=int, default=0, help="moving-average window drawn over the raw curve (0: off)")
    parser.add_argument("--cols", type=int, default=None, help="panels per row (default: 1 to 3 by count)")
    parser.add_argument("--list", action="store_true", help="print each run's numeric keys and exit")
    args = parser.parse_args(argv)
    try:
        runs = parse_runs(args.runs)
        if args.list:
            for label, rows in load_runs(runs).items():
                print(f"{label} ({len(rows)} rows): {' '.join(numeric_keys(rows))}")
            return 0
        drawn = plot_runs(runs, keys=args.keys, x=args.x, out_path=args.out, title=args.title, smooth=args.smooth,
                          ncols=args.cols)
    except (ValueError, FileNotFoundError, ImportError) as e:
        parser.error(str(e))
    print(f"wrote {drawn['path']}: {', '.join(drawn['keys'])} against {args.x} for {', '.join(runs)}")
    if drawn["skipped"]:
        print(f"skipped (no run logged them): {', '.join(drawn['skipped'])}")
    for key, labels in drawn["missing"].items():
        print(f"{key}: not logged by {', '.join(labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
