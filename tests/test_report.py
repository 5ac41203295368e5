"""minirlhf report: one offline HTML page from run folders; samples.jsonl written and read back."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minirlhf.report import ReportConfig, build_report, chart_keys, report
from minirlhf.samples import drop_samples_after, read_samples, sample_rows, write_samples

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "minirlhf.cli", "report", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)


def make_run(folder: Path, samples: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"ppo": {"clip_eps": 0.2}, "note": "a<b & c>d"}))
    rows = [{"step": s, "time": 0.5 * s, "reward/score": 0.1 * s, "kl": 0.01 * s, "loss": 1.0 / s,
             "eval/accuracy": 0.5 + 0.05 * s if s % 2 == 0 else None} for s in range(1, 5)]
    rows[-1]["loss/value"] = 0.3141
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if samples:
        mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
        adv = torch.tensor([[0.125, -0.5, 0.75, 9.0], [-0.25, 0.0625, 9.0, 9.0], [1.5, 9.0, 9.0, 9.0]])
        kl = torch.tensor([[0.01, 0.02, 0.03, 0.0], [0.04, 0.05, 0.0, 0.0], [0.06, 0.0, 0.0, 0.0]])
        values = torch.tensor([[0.2, 0.3, float("nan"), 0.0], [0.1, 0.1, 0.0, 0.0], [0.9, 0.0, 0.0, 0.0]])
        rewards = torch.tensor([[-0.001, -0.002, 0.997, 0.0], [0.0, -0.25, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
        rows = sample_rows(["Q: is 1<2?\nA:", "Q: a&b", "Q: <script>alert(1)</script>"],
                           ["yes<b>", "no", "ok"], [["ye", "s", "<b>"], ["n", "o"], ["ok"]],
                           torch.tensor([0.997, -0.25, 1.0]), mask, advantages=adv, kl=kl, values=values,
                           rewards=rewards)
        write_samples(folder / "samples.jsonl", 2, rows[:1])
        write_samples(folder / "samples.jsonl", 4, rows[1:])
    return folder


# ---------------------------------------------------------------- samples.jsonl


def test_sample_rows_align_tokens_and_write_nulls(tmp_path):
    run = make_run(tmp_path / "run")
    rows, problems = read_samples(run / "samples.jsonl")
    assert problems == [] and [r["step"] for r in rows] == [2, 4, 4]
    first = rows[0]
    assert first["tokens"] == ["ye", "s", "<b>"] and first["advantage"] == [0.125, -0.5, 0.75]
    assert first["value"] == [0.2, 0.3, None]  # nan -> null
    assert first["score"] == pytest.approx(0.997) and first["prompt"] == "Q: is 1<2?\nA:"
    assert all(len(r[q]) == len(r["tokens"]) for r in rows for q in ("advantage", "kl", "value", "reward"))
    line = (run / "samples.jsonl").read_text().splitlines()[0]
    assert line.startswith('{"step": 2, "prompt"')
    no_critic = sample_rows(["p"], ["r"], [["r"]], [0.5], torch.ones(1, 1), values=None)
    assert no_critic[0]["value"] is None and no_critic[0]["advantage"] is None
    with pytest.raises(ValueError, match="token strings"):
        sample_rows(["p"], ["r"], [["r", "x"]], [0.5], torch.ones(1, 1))
    with pytest.raises(ValueError, match="shape"):
        sample_rows(["p"], ["r"], [["r"]], [0.5], torch.ones(1, 1), kl=torch.ones(1, 2))


def test_half_written_last_line_is_ignored_then_cut_before_the_next_append(tmp_path):
    run = make_run(tmp_path / "run")
    path = run / "samples.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 6, "prompt": "cut sh')
    rows, problems = read_samples(path)
    assert len(rows) == 3 and problems == []
    write_samples(path, 8, [{"prompt": "p", "response": "r", "tokens": ["r"], "score": 1.0, "advantage": [0.5],
                             "kl": [0.0], "value": None, "reward": [1.0]}])
    rows, problems = read_samples(path)
    assert [r["step"] for r in rows] == [2, 4, 4, 8] and problems == []
    assert "cut sh" not in path.read_text()
    drop_samples_after(path, 2)
    assert [r["step"] for r in read_samples(path)[0]] == [2]


def test_bad_rows_are_skipped_with_their_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"step": 1, "tokens": ["a", "b"], "kl": [0.1]}\nnot json\n'
                    '{"step": 2, "prompt": "p", "tokens": ["a"], "kl": [0.1], "score": 0}\n')
    rows, problems = read_samples(path)
    assert [r["step"] for r in rows] == [2]
    assert len(problems) == 2 and f"{path}:1:" in problems[0] and f"{path}:2:" in problems[1]


# ---------------------------------------------------------------- the page


def test_cli_writes_a_self_contained_page(tmp_path):
    run = make_run(tmp_path / "run")
    done = _cli("--runs", run)
    assert done.returncode == 0, done.stderr
    page = (run / "report.html").read_text(encoding="utf-8")
    # tokens, escaped; no raw markup from the data
    assert '>ye</span>' in page and '>&lt;b&gt;</span>' in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "Q: a&amp;b" in page and "a&lt;b &amp; c&gt;d" in page
    # the numbers: per token (data attributes and hover text), final metrics
    assert 'data-advantage="0.125"' in page and 'data-advantage="-0.5"' in page and 'data-kl="0.03"' in page
    assert "advantage 0.125" in page and "reward 0.997" in page
    assert "<td>loss/value</td><td>0.3141</td><td>4</td>" in page
    assert "<td>eval/accuracy</td><td>0.7</td><td>4</td>" in page
    # the config, collapsed
    assert "<details><summary>config.json</summary>" in page and "clip_eps" in page
    # one SVG chart per main metric, inline
    for key in ("reward/score", "kl", "loss", "eval/accuracy", "loss/value"):
        assert f'aria-label="{key}"' in page, key
    assert page.count("<svg") == 5 and "<polyline" in page
    # a selector with the logged quantities, and the step browser
    assert re.search(r'<select class="qsel"[^>]*>.*value="advantage".*value="kl".*value="value".*value="reward"', page)
    assert '<option value="4" selected>step 4</option>' in page
    # offline: no external references at all
    assert not re.search(r"https?://", page)
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<img[^>]+src=|@import|url\(", page)


def test_out_option_several_runs_and_no_samples(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", samples=False)
    out = tmp_path / "sub" / "page.html"
    result = report(ReportConfig(runs=[str(a), str(b)], out=str(out)))
    assert result["path"] == out and out.is_file() and not (a / "report.html").exists()
    page = out.read_text()
    assert page.count('<section class="run"') == 2 and page.count("Sampled responses") == 1
    assert page.count('<div class="controls"') == 1


def test_missing_run_folder_is_a_clear_error(tmp_path):
    done = _cli("--runs", tmp_path / "nope")
    assert done.returncode == 1
    assert "minirlhf report: error:" in done.stderr and "nope" in done.stderr and "no such run folder" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _cli("--runs", empty)
    assert done.returncode == 1 and "holds no run" in done.stderr
    with pytest.raises(ValueError, match="at least one"):
        build_report([])


def test_pipeline_folder_shows_results_and_every_stage(tmp_path):
    pipe = tmp_path / "pipeline"
    make_run(pipe / "ppo")
    make_run(pipe / "sft", samples=False)
    (pipe / "results.md").write_text("# minirlhf pipeline\n\n| policy | accuracy |\n|---|---|\n| sft | 0.536 |\n"
                                     "| ppo | 0.764 |\n")
    page = build_report([pipe])
    assert "<th>policy</th><th>accuracy</th>" in page and "<td>ppo</td><td>0.764</td>" in page
    assert page.count('<section class="run"') == 2
    assert page.index("/sft</h2>") < page.index("/ppo</h2>")  # a pipeline's stages in the order they run


def test_chart_keys_pick_the_main_metrics():
    rows = [{"step": 1, "time": 1.0, "reward/score": 1, "kl": 0.1, "eval/accuracy": 0.5, "loss/policy": 0.2,
             "time/generation": 0.3, "lr": 1e-3, "kl_coef": 0.1}]
    assert chart_keys(rows) == ["reward/score", "kl", "eval/accuracy", "loss/policy", "kl_coef"]
    assert chart_keys(rows, ["lr", "missing"]) == ["lr"]


def test_positional_run_folder(tmp_path):
    run = make_run(tmp_path / "run")
    done = _cli(run)
    assert done.returncode == 0, done.stderr
    assert (run / "report.html").is_file()


# ---------------------------------------------------------------- in a real browser


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_page_renders_in_a_headless_browser(tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH (apt-get install -y chromium)")
    run = make_run(tmp_path / "run")
    report(ReportConfig(runs=[str(run)]))
    url = (run / "report.html").resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-sync", "--proxy-server=127.0.0.1:9",  # offline
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # the script ran: it marks the page, names the quantity on the controls and fills the legend
    assert 'data-report-ready="1"' in html
    assert 'data-coloured-by="advantage"' in html
    assert re.search(r'<span class="legend">advantage: <span class="lo">-1\.50</span>', html)
    assert "2 response(s) shown" in html  # the step browser starts at the last step, 4
    # token spans survive and are coloured (step 2's first token has advantage 0.125 > 0: green)
    spans = re.findall(r'<span class="tok"[^>]*>[^<]*</span>', html)
    assert len(spans) == 6 and any(">&lt;b&gt;</span>" in s for s in spans)
    assert all("background-color" in s for s in spans)
    assert re.search(r'data-advantage="0.125"[^>]*style="background-color: rgba\(44, 160, 44', html)
    shot = tmp_path / "report.png"
    done = subprocess.run(flags + ["--window-size=1200,1400", f"--screenshot={shot}", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    print(f"screenshot of the report: {shot}")
