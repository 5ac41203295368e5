"""``minirlhf report``: run folders as one self-contained HTML page.

    minirlhf report --runs runs/ppo runs/grpo                # -> runs/ppo/report.html
    minirlhf report --runs runs/pipeline --out report.html   # a pipeline folder: results.md and every stage

The page has no network references (inline CSS, JavaScript and SVG only), so it opens from disk
anywhere. Per run folder it shows:

- the run's ``config.json`` (collapsed);
- curves from ``metrics.jsonl`` (read with ``minirlhf.logger.read_metrics``), one inline SVG chart
  per main metric against the step: reward/score, reward/mean, kl, eval/*, loss, loss/*, and the
  other standard keys of ``minirlhf.plotting.DEFAULT_KEYS`` that the run logged;
- the final metrics table (the last logged value of every numeric key, with its step);
- the sampled responses of ``samples.jsonl``, browsable by step, with every token coloured by the
  quantity chosen in a selector (advantage, kl, value, reward: red below zero, green above, on a
  scale of the largest |value| in the run) and its numbers shown on hover.

A folder that holds no run itself but run folders one or two levels down (a ``minirlhf pipeline``
folder: sft, rm, ppo, ..., or seed-N/...) shows its ``results.md`` and then each run it holds. A
missing file leaves its section out (a run without samples.jsonl has no samples section); a
missing run folder is an error. All text is HTML-escaped.

samples.jsonl, written by trainers with ``minirlhf.samples.sample_rows`` and ``write_samples``, is
one JSON object per line:

    {"step": int, "prompt": str, "response": str, "tokens": [str, ...], "score": float,
     "advantage": [float, ...], "kl": [float, ...], "value": [float, ...] or null, "reward": [float, ...]}

where every per-token list is aligned with "tokens" (or null), and null stands for a missing or
non-finite number (see ``minirlhf.samples``).
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from minirlhf.logger import METRICS_FILE, read_metrics
from minirlhf.plotting import DEFAULT_KEYS, metric_series, numeric_keys
from minirlhf.samples import QUANTITIES, SAMPLES_FILE, read_samples

__all__ = ["ReportConfig", "report", "build_report", "svg_line_chart", "chart_keys", "find_runs"]


@dataclass
class ReportConfig:
    runs: list[str] = field(default_factory=list, metadata={"help": "run folders (or pipeline folders) to show"})
    out: str = field(default="", metadata={"help": "the HTML file; empty: <first run folder>/report.html"})
    max_samples: int = field(default=400, metadata={"help": "per run, show at most the last N sampled responses"})
    max_charts: int = field(default=24, metadata={"help": "per run, at most this many metric charts"})
    keys: list[str] = field(default_factory=list,
                            metadata={"help": "metrics to chart; empty: the main ones the run logged"})


# ----------------------------------------------------------------------------
# what to show

_CHART_PREFIXES = ("reward/", "eval/", "eval_t1/", "loss/", "rewards/", "kl/")


def chart_keys(rows: Sequence[dict], wanted: Sequence[str] = (), limit: int = 24) -> list[str]:
    """The metrics to chart: `wanted` if given (those logged), else DEFAULT_KEYS, then every key under
    reward/, eval/, eval_t1/, loss/, rewards/, kl/ and the names starting with "kl", in that order."""
    have = numeric_keys(rows)
    if wanted:
        return [k for k in dict.fromkeys(wanted) if k in have][:limit]
    keys = [k for k in DEFAULT_KEYS if k in have]
    keys += [k for k in have if k.startswith(_CHART_PREFIXES) or k.startswith("kl")]
    return list(dict.fromkeys(keys))[:limit]


# a pipeline folder's stages, shown in the order they run (other folders follow, by name)
_STAGES = ("pretrain", "sft", "prefs", "collect", "rm", "ppo", "trpo", "grpo", "rloo", "dpo")


def _is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in (METRICS_FILE, "config.json", SAMPLES_FILE))


def find_runs(path: str | os.PathLike) -> list[Path]:
    """The run folders `path` stands for: itself if it holds a run, else the runs one or two levels down
    (a pipeline's stages in the order they run, then the rest by name). A missing folder, or one with no run in it, is an error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder")
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a folder (expected a run folder holding metrics.jsonl)")
    if _is_run(path):
        return [path]
    runs = [p for p in sorted(path.iterdir()) if p.is_dir() and _is_run(p)]
    runs += [q for p in sorted(path.iterdir()) if p.is_dir() and not _is_run(p)
             for q in sorted(p.iterdir()) if q.is_dir() and _is_run(q)]
    runs = sorted(runs, key=lambda p: (str(p.parent), _STAGES.index(p.name) if p.name in _STAGES else len(_STAGES), p.name))
    if not runs:
        raise ValueError(f"{path}: holds no run (no {METRICS_FILE}, config.json or {SAMPLES_FILE} in it "
                         "or in its subfolders)")
    return runs


# ----------------------------------------------------------------------------
# HTML pieces

def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(0.0 if abs(t) < 1e-12 * step else t)
        t += step
    return ticks


def svg_line_chart(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str = "step",
                   width: int = 340, height: int = 200) -> str:
    """One metric as an inline <svg> line chart (axes, ticks, the line, points when there are few)."""
    left, right, top, bottom = 52, 10, 24, 30
    pw, ph = width - left - right, height - top - bottom
    head = (f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_e(title)}"><title>{_e(title)}</title>'
            f'<text x="{left}" y="15" class="ct">{_e(title)}</text>')
    if not xs:
        return head + f'<text x="{left}" y="{top + ph / 2}" class="ax">no finite values</text></svg>'
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.05
        y0, y1 = y0 - pad, y1 + pad

    def px(x):
        return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [head, f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for t in _nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{py(t) + 3:.1f}" class="ax" text-anchor="end">{_e(_fmt(t))}</text>')
    for t in _nice_ticks(x0, x1):
        parts.append(f'<text x="{px(t):.1f}" y="{top + ph + 13}" class="ax" text-anchor="middle">{_e(_fmt(t))}</text>')
    parts.append(f'<text x="{left + pw}" y="{height - 3}" class="ax" text-anchor="end">{_e(xlabel)}</text>')
    points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    parts.append(f'<polyline points="{points}" class="line"/>')
    if len(xs) <= 40:
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.4" class="pt"><title>step {_e(_fmt(x))}: '
                  f'{_e(_fmt(y))}</title></circle>' for x, y in zip(xs, ys)]
    parts.append(f'<text x="{left + pw}" y="15" class="ax" text-anchor="end">last {_e(_fmt(ys[-1]))}</text>')
    return "".join(parts) + "</svg>"


def _final_metrics(rows: Sequence[dict]) -> list[tuple[str, object, object]]:
    """(key, last logged value, its step) for every key but step and time, in order of first appearance."""
    last: dict[str, tuple[object, object]] = {}
    for row in rows:
        for k, v in row.items():
            if k not in ("step",) and v is not None:
                last[k] = (v, row.get("step"))
    return [(k, v, s) for k, (v, s) in last.items()]


def _markdown(text: str) -> str:
    """results.md as HTML: its tables as <table>, the other lines as escaped paragraphs."""
    out, table = [], []

    def flush():
        if table:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            body = [r for r in cells if not all(set(c) <= set("-: ") for c in r)]
            if body:
                out.append('<table class="md"><tr>' + "".join(f"<th>{_e(c)}</th>" for c in body[0]) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in body[1:])
                           + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f'<p class="md">{_e(line.strip().lstrip("#").strip())}</p>')
    flush()
    return "\n".join(out)


def _token_span(tok: str, row: dict, i: int) -> str:
    attrs, tip = [], [f"token {tok!r} (#{i})"]
    for q in QUANTITIES:
        values = row.get(q)
        v = values[i] if isinstance(values, list) else None
        if v is not None:
            attrs.append(f'data-{q}="{v!r}"')
            tip.append(f"{q} {_fmt(float(v))}")
    return f'<span class="tok" {" ".join(attrs)} title="{_e(" | ".join(tip))}">{_e(tok)}</span>'


def _samples_section(run: Path, run_id: str, max_samples: int) -> str:
    path = run / SAMPLES_FILE
    if not path.is_file():
        return ""
    rows, problems = read_samples(path)
    total = len(rows)
    rows = rows[-max_samples:] if max_samples > 0 else []
    have = [q for q in QUANTITIES if any(isinstance(r.get(q), list) for r in rows)]
    steps = sorted({r["step"] for r in rows})
    parts = [f'<h3>Sampled responses <span class="dim">({len(rows)} of {total} in {_e(SAMPLES_FILE)})</span></h3>']
    if problems:
        parts.append(f'<details class="warn"><summary>{len(problems)} line(s) skipped</summary><pre>'
                     + _e("\n".join(problems[:50])) + "</pre></details>")
    if not rows:
        return "\n".join(parts + ['<p class="dim">no usable rows</p>'])
    options = "".join(f'<option value="{q}">{q}</option>' for q in have) or '<option value="">(none)</option>'
    step_opts = '<option value="all">all steps</option>' + "".join(
        f'<option value="{s}"{" selected" if s == steps[-1] else ""}>step {s}</option>' for s in steps)
    parts.append(f'<div class="controls" data-run="{_e(run_id)}">colour tokens by '
                 f'<select class="qsel" aria-label="quantity">{options}</select> '
                 f'<select class="ssel" aria-label="step">{step_opts}</select> '
                 f'<span class="legend"></span></div>')
    parts.append('<div class="samples">')
    for r in rows:
        tokens = "".join(_token_span(t, r, i) for i, t in enumerate(r["tokens"]))
        score = r.get("score")
        score_txt = _fmt(float(score)) if isinstance(score, (int, float)) and not isinstance(score, bool) else "–"
        parts.append(f'<div class="sample" data-step="{r["step"]}"><div class="meta">step {r["step"]} · score '
                     f'{_e(score_txt)}</div><div class="prompt">{_e(r.get("prompt", ""))}</div>'
                     f'<div class="resp">{tokens}</div></div>')
    parts.append("</div>")
    return "\n".join(parts)


def _run_section(run: Path, run_id: str, cfg: ReportConfig) -> str:
    parts = [f'<section class="run" id="{_e(run_id)}"><h2>{_e(run)}</h2>']
    config = run / "config.json"
    if config.is_file():
        text = config.read_text(encoding="utf-8", errors="replace")
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except json.JSONDecodeError:
            pass
        parts.append(f"<details><summary>config.json</summary><pre>{_e(text)}</pre></details>")
    if (run / METRICS_FILE).is_file():
        rows = read_metrics(run)
        keys = chart_keys(rows, cfg.keys, cfg.max_charts)
        if keys:
            parts.append("<h3>Curves</h3><div class=\"charts\">")
            for key in keys:
                xs, ys = metric_series(rows, key, x="step")
                parts.append(svg_line_chart(xs, ys, key))
            parts.append("</div>")
        final = _final_metrics(rows)
        if final:
            parts.append('<h3>Final metrics</h3><table class="final"><tr><th>metric</th><th>value</th><th>step</th></tr>'
                         + "".join(f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v))}</td><td>{_e(_fmt(s))}</td></tr>"
                                   for k, v, s in final) + "</table>")
        if not rows:
            parts.append('<p class="dim">metrics.jsonl has no rows yet</p>')
    else:
        parts.append(f'<p class="dim">no {METRICS_FILE}</p>')
    parts.append(_samples_section(run, run_id, cfg.max_samples))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin:1.2em 0 .4em}.dim{color:#777;font-weight:normal}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:30em;font-size:12px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
th{background:#f0f0f0}.charts{display:flex;flex-wrap:wrap;gap:6px}
svg.chart{background:#fff;border:1px solid #e4e4e4}.chart .frame{fill:none;stroke:#bbb}
.chart .grid{stroke:#eee}.chart .line{fill:none;stroke:#1f77b4;stroke-width:1.6}.chart .pt{fill:#1f77b4}
.chart .ct{font-size:12px;font-weight:bold}.chart .ax{font-size:10px;fill:#555}
.controls{margin:.4em 0;position:sticky;top:0;background:#fff;padding:.3em 0;z-index:1}
.legend{margin-left:1em;font-size:12px}.legend .bar{display:inline-block;width:120px;height:10px;vertical-align:middle;
margin:0 4px;background:linear-gradient(to right,rgba(214,39,40,.85),rgba(255,255,255,0),rgba(44,160,44,.85))}
.sample{border:1px solid #e4e4e4;border-radius:4px;margin:.4em 0;padding:.4em .6em}
.sample .meta{font-size:12px;color:#666}.prompt{white-space:pre-wrap;color:#555;font-family:monospace}
.resp{white-space:pre-wrap;font-family:monospace;line-height:1.8}
.tok{border-radius:2px;padding:1px 0;outline:1px solid rgba(0,0,0,.06);cursor:default}
.tok:hover{outline:1px solid #000}.warn summary{color:#a60}
nav{display:flex;flex-wrap:wrap;gap:.3em 1em}
"""

_JS = r"""
(function(){
  function colour(v, scale){
    if(v === null || isNaN(v) || !scale) return "";
    var a = Math.min(1, Math.abs(v) / scale) * 0.85;
    return v < 0 ? "rgba(214,39,40," + a.toFixed(3) + ")" : "rgba(44,160,44," + a.toFixed(3) + ")";
  }
  function apply(ctrl){
    var q = ctrl.querySelector(".qsel").value, step = ctrl.querySelector(".ssel").value;
    var box = ctrl.nextElementSibling, scale = 0, shown = 0;
    box.querySelectorAll(".sample").forEach(function(s){
      var on = step === "all" || s.getAttribute("data-step") === step;
      s.style.display = on ? "" : "none"; if(on) shown++;
    });
    var toks = box.querySelectorAll(".tok");
    toks.forEach(function(t){ var v = parseFloat(t.getAttribute("data-" + q)); if(!isNaN(v)) scale = Math.max(scale, Math.abs(v)); });
    toks.forEach(function(t){
      var v = t.hasAttribute("data-" + q) ? parseFloat(t.getAttribute("data-" + q)) : null;
      t.style.backgroundColor = colour(v, scale);
    });
    ctrl.setAttribute("data-coloured-by", q);
    ctrl.querySelector(".legend").innerHTML = q ? (q + ": <span class=\"lo\">" + (-scale).toPrecision(3) +
      "</span><span class=\"bar\"></span><span class=\"hi\">+" + scale.toPrecision(3) + "</span> · " + shown +
      " response(s) shown · hover a token for its numbers") : "no per-token numbers";
  }
  document.querySelectorAll(".controls").forEach(function(ctrl){
    ctrl.querySelectorAll("select").forEach(function(sel){ sel.addEventListener("change", function(){ apply(ctrl); }); });
    apply(ctrl);
  });
  document.body.setAttribute("data-report-ready", "1");
})();
"""


def build_report(run_dirs: Sequence[str | os.PathLike], cfg: ReportConfig | None = None) -> str:
    """The HTML page for `run_dirs` (run folders or pipeline folders) as a string."""
    cfg = cfg or ReportConfig()
    if not run_dirs:
        raise ValueError("runs: expected at least one run folder (minirlhf report --runs DIR [DIR ...])")
    sections, nav, used = [], [], set()
    for given in run_dirs:
        given = Path(given)
        runs = find_runs(given)
        results = given / "results.md"
        if results.is_file():
            sections.append(f'<section class="results"><h2>{_e(results)}</h2>'
                            f'{_markdown(results.read_text(encoding="utf-8", errors="replace"))}</section>')
        for run in runs:
            run_id = "run-" + "".join(c if c.isalnum() else "-" for c in str(run)).strip("-")
            while run_id in used:
                run_id += "-"
            used.add(run_id)
            nav.append(f'<a href="#{_e(run_id)}">{_e(run)}</a>')
            sections.append(_run_section(run, run_id, cfg))
    title = "minirlhf report: " + ", ".join(str(p) for p in run_dirs)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n<h1>{_e(title)}</h1>\n"
            f"<nav>{''.join(nav)}</nav>\n" + "\n".join(sections) + f"\n<script>{_JS}</script>\n</body></html>\n")


def report(cfg: ReportConfig) -> dict:
    """Write the report of cfg.runs to cfg.out (default <first run folder>/report.html); returns {"path": ...}."""
    if cfg.max_samples < 0 or cfg.max_charts < 0:
        raise ValueError("max_samples and max_charts: expected >= 0")
    text = build_report(cfg.runs, cfg)
    out = Path(cfg.out) if cfg.out else Path(cfg.runs[0]) / "report.html"
    from minirlhf.checkpoint import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    print(f"minirlhf report: wrote {out}")
    return {"path": out}
