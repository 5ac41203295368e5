"""Curves from metrics.jsonl: a real PNG with every run drawn, missing keys skipped and reported, clear errors."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from minirlhf.logger import MetricsLogger
from minirlhf.plotting import DEFAULT_KEYS, metric_series, numeric_keys, plot_runs, run_labels

ROOT = Path(__file__).resolve().parents[1]


def _write_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    return folder


def _ppo_like(n=60, scale=1.0):
    rows = []
    for step in range(1, n + 1):
        row = {"step": step, "time": 0.5 * step, "reward/score": scale * (1 - math.exp(-step / 15)), "kl": 0.01 * step}
        if step % 10 == 0:
            row["eval/accuracy"] = 0.1 + 0.008 * step
        rows.append(row)
    return rows


def _dpo_like(n=40):
    return [{"step": s, "time": 0.3 * s, "loss": 1 / (1 + s / 10), "rewards/accuracies": 0.5 + 0.01 * s}
            for s in range(1, n + 1)]


def _count_color(img, rgb, tol=0.06):
    """Pixels within tol of the colour (RGB in [0, 1])."""
    import numpy as np

    diff = np.abs(img[..., :3] - np.array(rgb)[None, None, :]).max(-1)
    return int((diff < tol).sum())


def test_plot_runs_writes_a_png_with_every_run_drawn(tmp_path):
    mpl_image = pytest.importorskip("matplotlib.image")
    a = _write_run(tmp_path / "ppo", _ppo_like())
    b = _write_run(tmp_path / "trpo", _ppo_like(scale=0.5))
    out = tmp_path / "figs" / "curves.png"  # the folder does not exist yet
    drawn = plot_runs({"PPO": a, "TRPO": b}, keys=["reward/score", "kl"], x="time", out_path=out)
    assert drawn["path"] == out and drawn["keys"] == ["reward/score", "kl"] and drawn["skipped"] == []
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    img = mpl_image.imread(out)  # (H, W, 4) floats in [0, 1]
    assert img.shape[0] > 200 and img.shape[1] > 400
    assert img[..., :3].std() > 0.01  # not a blank canvas
    # the first two colours of the cycle, C0 (#1f77b4) and C1 (#ff7f0e), are both on the canvas
    assert _count_color(img, (0x1F / 255, 0x77 / 255, 0xB4 / 255)) > 100
    assert _count_color(img, (0xFF / 255, 0x7F / 255, 0x0E / 255)) > 100
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no temporary left behind


def test_a_label_with_several_seeds_draws_them_all_in_one_colour(tmp_path):
    mpl_image = pytest.importorskip("matplotlib.image")
    seeds = [_write_run(tmp_path / f"s{i}" / "ppo", _ppo_like(scale=0.5 + 0.25 * i)) for i in range(3)]
    out = tmp_path / "seeds.png"
    drawn = plot_runs({"PPO": seeds}, keys=["reward/score"], x="time", out_path=out)
    assert drawn["keys"] == ["reward/score"]
    img = mpl_image.imread(out)
    assert _count_color(img, (0x1F / 255, 0x77 / 255, 0xB4 / 255), tol=0.2) > 100  # C0: the label's colour
    assert _count_color(img, (0xFF / 255, 0x7F / 255, 0x0E / 255)) == 0  # no second colour for a second seed
    with pytest.raises(FileNotFoundError, match="PPO #1"):
        plot_runs({"PPO": [seeds[0], tmp_path / "nowhere"]}, keys=["kl"], out_path=out)
    with pytest.raises(ValueError, match="no run folder"):
        plot_runs({"PPO": []}, keys=["kl"], out_path=out)


def test_keys_missing_from_some_or_all_runs_are_skipped_and_reported(tmp_path):
    pytest.importorskip("matplotlib")
    a = _write_run(tmp_path / "ppo", _ppo_like())
    b = _write_run(tmp_path / "dpo", _dpo_like())
    keys = ["reward/score", "rewards/accuracies", "not/a/metric", "eval/accuracy"]
    drawn = plot_runs({"ppo": a, "dpo": b}, keys=keys, x="step", out_path=tmp_path / "c.png")
    assert drawn["keys"] == ["reward/score", "rewards/accuracies", "eval/accuracy"]
    assert drawn["skipped"] == ["not/a/metric"]
    assert drawn["missing"] == {"reward/score": ["dpo"], "rewards/accuracies": ["ppo"], "eval/accuracy": ["dpo"]}
    assert (tmp_path / "c.png").stat().st_size > 5_000


def test_no_plottable_key_is_a_clear_error(tmp_path):
    a = _write_run(tmp_path / "ppo", _ppo_like())
    have = "kl, reward/score, eval/accuracy"  # in order of first appearance (the file's keys are sorted)
    with pytest.raises(ValueError, match=rf"keys: none of \['nope'\] was logged by any run; the runs have: {have}"):
        plot_runs({"ppo": a}, keys=["nope"], out_path=tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"x: no run logged a number for 'wallclock'"):
        plot_runs({"ppo": a}, keys=["kl"], x="wallclock", out_path=tmp_path / "c.png")
    with pytest.raises(FileNotFoundError, match=r"run 'gone': no metrics.jsonl"):
        plot_runs({"gone": tmp_path / "nowhere"}, out_path=tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_default_keys_are_the_standard_ones_present(tmp_path):
    pytest.importorskip("matplotlib")
    a = _write_run(tmp_path / "ppo", _ppo_like())
    b = _write_run(tmp_path / "dpo", _dpo_like())
    drawn = plot_runs({"ppo": a, "dpo": b}, out_path=tmp_path / "c.png")
    logged = {"reward/score", "kl", "eval/accuracy", "loss", "rewards/accuracies"}
    assert drawn["keys"] == [k for k in DEFAULT_KEYS if k in logged]
    # a run with none of the standard keys: every numeric key is plotted
    c = _write_run(tmp_path / "custom", [{"step": s, "time": s, "my/metric": s * s, "note": "x"} for s in range(5)])
    assert plot_runs({"c": c}, out_path=tmp_path / "d.png")["keys"] == ["my/metric"]


def test_series_keep_only_finite_numbers_and_runs_written_by_the_logger(tmp_path):
    with MetricsLogger(tmp_path / "run", console=False) as log:
        for step in range(1, 7):
            metrics = {"loss": 1.0 / step, "phase": "warmup", "flag": True}
            if step % 3 == 0:
                metrics["eval/accuracy"] = step / 10
            if step == 4:
                metrics["loss"] = float("nan")  # a diverged step is left out of the curve
            log.log(step, metrics)
    from minirlhf.logger import read_metrics

    rows = read_metrics(tmp_path / "run")
    assert numeric_keys(rows) == ["loss", "eval/accuracy"]  # not step/time, not str, not bool
    xs, ys = metric_series(rows, "loss", x="step")
    assert xs == [1, 2, 3, 5, 6] and ys == pytest.approx([1, 1 / 2, 1 / 3, 1 / 5, 1 / 6])
    assert metric_series(rows, "eval/accuracy", x="step") == ([3.0, 6.0], [0.3, 0.6])


def test_run_labels_are_folder_names_made_unique():
    assert list(run_labels(["runs/ppo", "runs/dpo"])) == ["ppo", "dpo"]
    assert list(run_labels(["a/seed0/ppo", "b/seed0/ppo"])) == ["a/seed0/ppo", "b/seed0/ppo"]
    assert list(run_labels(["x/a/ppo", "x/b/ppo"])) == ["a/ppo", "b/ppo"]
    with pytest.raises(ValueError, match="given twice"):
        run_labels(["runs/ppo", "runs/ppo"])


def test_missing_matplotlib_gives_an_install_hint(tmp_path, monkeypatch):
    a = _write_run(tmp_path / "ppo", _ppo_like())
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.lines", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of a None entry fails, as when not installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[plots\]"):
        plot_runs({"ppo": a}, out_path=tmp_path / "c.png")


def _script():
    spec = importlib.util.spec_from_file_location("plot_script", ROOT / "scripts" / "plot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_plots_labelled_runs_and_lists_keys(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    script = _script()
    a = _write_run(tmp_path / "ppo", _ppo_like())
    b = _write_run(tmp_path / "dpo", _dpo_like())
    out = tmp_path / "curves.png"
    assert script.main([f"PPO={a}", str(b), "--keys", "reward/score", "kl", "loss", "absent", "--x", "step",
                        "--out", str(out), "--smooth", "5", "--title", "test"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: reward/score, kl, loss against step for PPO, dpo" in printed
    assert "skipped (no run logged them): absent" in printed and "loss: not logged by PPO" in printed
    assert out.stat().st_size > 5_000
    assert script.main([str(a), "--list"]) == 0
    assert "ppo (60 rows): kl reward/score eval/accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        script.main([str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
