"""The reward-KL frontier and over-optimisation: each method at several strengths of its KL control.

    minirlhf frontier --from-dir runs/pipeline      reuse a pipeline's SFT model, reward model and pairs
    minirlhf frontier                               pretrain, SFT, collect and train the reward model first
    minirlhf frontier --quick                       the pipeline's --quick settings, two strengths a method
    minirlhf frontier --ppo 0.01 0.1 --methods ppo dpo --dpo 0.3 3     choose the methods and strengths

Every run starts from the same SFT model and learns from the same reward model (GRPO and RLOO too,
which the arithmetic pipeline trains on the exact check; ``--set grpo.reward=verifier`` puts that
back) or, for DPO, from the same preference pairs. The knob each method turns:

    ppo    kl.coef   beta of the KL penalty in the reward, held fixed (kl.adaptive off)
    trpo   max_kl    delta, the trust region of each step (its KL penalty keeps the recipe's setting)
    grpo   beta      coefficient of the k3 KL-to-reference loss term
    rloo   beta      coefficient of the sequence KL in the reward
    dpo    dpo.beta  beta of the DPO loss

Each final policy is evaluated by ``pipeline.compare`` on the same held-out prompts: gold reward
(the task's exact-match accuracy, greedy and at t=1), proxy reward (the reward model's normalised
score of a t=1 sample) and KL to the SFT model (sampled at t=1). ``frontier.md`` is the table,
``frontier.png`` gold and proxy reward against KL with one curve per method, ``frontier.json`` the
numbers.

Over-optimisation (Gao et al. 2022, "Scaling laws for reward model overoptimization"): gold and
proxy reward against KL along the PPO run with the smallest beta, from its own log (each iteration's
t=1 rollouts: ``train/<metric>``, ``reward/score`` and ``kl``, the k1 estimate of the sequence KL),
and for best-of-n from the SFT model, n = 1, 2, 4, ..., N: N samples per held-out prompt drawn once
and scored by the reward model; the gold and proxy reward of best-of-n are the unbiased
every-n-subset means of those samples (``objectives.best_of_n_subset_mean``), and its KL is
``objectives.best_of_n_kl`` applied to each prompt's empirical distribution of the N samples (their
distinct responses with frequency / N as probability): an estimate, exact for that empirical
distribution, which the true KL approaches as N grows. It is drawn beside log n - (n - 1)/n, which
Beirami et al. (2024) show is an upper bound. ``overoptimisation.png`` is the figure.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from minirlhf.checkpoint import atomic_write, atomic_write_text
from minirlhf.config import save_config

# method -> (the config key --set turns, what else --set fixes, the knob's name in tables and figures)
KNOBS = {
    "ppo": ("kl.coef", ["kl.adaptive=False"], "beta"),
    "trpo": ("max_kl", [], "delta"),
    "grpo": ("beta", [], "beta"),
    "rloo": ("beta", [], "beta"),
    "dpo": ("dpo.beta", [], "beta"),
}
METHODS = tuple(KNOBS)
STRENGTHS = {  # each method's default, in its middle: from loose to tight
    "ppo": [0.01, 0.03, 0.1, 0.3],
    "trpo": [0.003, 0.01, 0.03, 0.1],
    "grpo": [0.01, 0.04, 0.16, 0.64],
    "rloo": [0.01, 0.05, 0.2, 0.8],
    "dpo": [0.1, 0.3, 1.0, 3.0],
}


@dataclass
class FrontierConfig:
    from_dir: str = field(default="", metadata={
        "help": "a pipeline folder to start from (its sft/model, rm/model and prefs/); empty: run pretrain, "
                "sft, collect and rm into --out first"})
    out: str = field(default="runs/frontier", metadata={"help": "folder for every run, the table and the figures"})
    task: str = field(default="arithmetic", metadata={
        "help": "the pipeline task (with --from-dir: the one its pipeline.json records)"})
    task_args: list[str] = field(default_factory=list, metadata={"help": "task options as key=value"})
    quick: bool = field(default=False, metadata={
        "help": "the pipeline's --quick settings and two strengths a method (the loosest and the tightest)"})
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    ppo: list[float] = field(default_factory=lambda: list(STRENGTHS["ppo"]), metadata={"help": "PPO's fixed KL beta"})
    trpo: list[float] = field(default_factory=lambda: list(STRENGTHS["trpo"]), metadata={"help": "TRPO's delta (max_kl)"})
    grpo: list[float] = field(default_factory=lambda: list(STRENGTHS["grpo"]), metadata={"help": "GRPO's beta"})
    rloo: list[float] = field(default_factory=lambda: list(STRENGTHS["rloo"]), metadata={"help": "RLOO's beta"})
    dpo: list[float] = field(default_factory=lambda: list(STRENGTHS["dpo"]), metadata={"help": "DPO's beta"})
    set: list[str] = field(default_factory=list, metadata={
        "help": "stage options as stage.key=value, as in minirlhf pipeline (the swept knob wins over them)"})
    eval_prompts: int = field(default=300, metadata={"help": "held-out prompts in the evaluation"})
    overopt: bool = field(default=True, metadata={"help": "also best-of-n and the over-optimisation figure"})
    bon_prompts: int = field(default=100, metadata={"range": (1, False, None, False),
                                                    "help": "held-out prompts for best-of-n"})
    bon_samples: int = field(default=64, metadata={"range": (1, False, None, False),
                                                   "help": "N: samples per prompt; n = 1, 2, 4, ... up to N"})
    reuse: bool = field(default=False, metadata={"help": "keep runs in --out that have a model; run the rest"})
    overwrite: bool = field(default=False, metadata={"help": "replace runs an earlier frontier left in --out"})
    seed: int = 0
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    device: str = "auto"


def strengths(cfg: FrontierConfig, method: str) -> list[float]:
    """The strengths to run: ``--<method>``, or with --quick and the default list, its two ends."""
    values = list(getattr(cfg, method))
    if cfg.quick and values == STRENGTHS[method]:
        values = [values[0], values[-1]]
    return values


def label(method: str, strength: float) -> str:
    return f"{method}-{KNOBS[method][2]}{strength:g}"


def base_pipeline(cfg: FrontierConfig):
    """The PipelineConfig whose stage configs the frontier runs: with --from-dir, that folder (and the
    task its pipeline.json records), else --out, where the frontier trains the SFT and reward models."""
    from minirlhf.pipeline import PipelineConfig

    base = Path(cfg.from_dir or cfg.out)
    task, task_args, init = cfg.task, list(cfg.task_args), ""
    recorded = base / "pipeline.json"
    if cfg.from_dir and recorded.is_file():
        saved = json.loads(recorded.read_text())
        task, task_args, init = saved.get("task", task), list(saved.get("task_args", [])), saved.get("init", "")
    sets = ["grpo.reward=RM", "rloo.reward=RM"] + list(cfg.set)  # every RL method against the reward model
    return PipelineConfig(task=task, task_args=task_args, init=init, out=str(base), quick=cfg.quick, seed=cfg.seed,
                          threads=cfg.threads, device=cfg.device, algorithms=list(cfg.methods),
                          overwrite=cfg.overwrite, set=sets)


def sweep(cfg: FrontierConfig) -> list[tuple[str, float, str, object]]:
    """(method, strength, label, the stage config) of every run: the pipeline's config of the method
    with the knob set and its run folder in <out>/<method>/<label>."""
    from minirlhf.pipeline import stage_configs

    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    base = base_pipeline(cfg)
    runs = []
    for method in cfg.methods:
        values = strengths(cfg, method)
        if not values:
            raise ValueError(f"--{method}: expected at least one strength")
        if len(set(values)) != len(values):
            raise ValueError(f"--{method}: each strength once, got {values}")
        key, extra, _ = KNOBS[method]
        for s in values:
            name = label(method, s)
            sets = base.set + [f"{method}.{key}={s!r}", *(f"{method}.{e}" for e in extra),
                               f"{method}.run.out={str(Path(cfg.out) / method / name)!r}"]
            runs.append((method, s, name, stage_configs(replace(base, set=sets))[method]))
    return runs


# ---------------------------------------------------------------------------------------------
# Best-of-n from the SFT model, and PPO's run read back from its log
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def best_of_n_curve(sft_folder: str, rm_folder: str, n_prompts: int, n_samples: int, seed: int, device) -> list[dict]:
    """For n = 1, 2, 4, ..., N: best-of-n's gold reward (task metric), proxy reward (the reward model's
    normalised score) and KL to the SFT model, from N samples per held-out prompt at t=1 (the module's
    docstring says how each is estimated); ``kl_bound`` is log n - (n-1)/n. Means over prompts."""
    from minirlhf.objectives import best_of_n_kl, best_of_n_kl_bound, best_of_n_subset_mean
    from minirlhf.rollout import RewardModelScorer, sample
    from minirlhf.saving import load_model
    from minirlhf.tasks import task_from_record

    if n_samples < 1 or n_prompts < 1:
        raise ValueError(f"bon_samples and bon_prompts: expected >= 1, got {n_samples} and {n_prompts}")
    policy, tokenizer, template, meta = load_model(sft_folder, kind="gpt", device=device)
    policy.eval()
    task = task_from_record(meta["task"])
    template = template or task.template()
    scorer = RewardModelScorer(load_model(rm_folder, kind="reward", device=device)[0].eval(),
                               tokenizer=tokenizer, template=template)
    prompts = task.prompts("test")[:n_prompts]
    ns = [2 ** k for k in range(n_samples.bit_length()) if 2 ** k <= n_samples]
    gen = torch.Generator(device=device).manual_seed(seed)
    per_prompt = []  # (proxy (N,), gold (N,), distinct-response probabilities, their proxy) per prompt
    chunk = max(1, 1024 // n_samples)
    for i in range(0, len(prompts), chunk):
        r = sample(policy, tokenizer, template, prompts[i : i + chunk], task.max_response_tokens, 1.0, gen,
                   num_samples=n_samples)
        proxy = scorer(r).double().cpu()  # (B*N,)
        for b, prompt in enumerate(prompts[i : i + chunk]):
            rows = range(b * n_samples, (b + 1) * n_samples)
            gold = torch.tensor([task.score(prompt, r.responses[j]) for j in rows], dtype=torch.float64)
            counts: dict[tuple, list] = {}  # a distinct response (its text and whether it ended) -> [count, proxy]
            for j in rows:
                counts.setdefault((r.responses[j], bool(r.ended[j])), [0, float(proxy[j])])[0] += 1
            probs = torch.tensor([c for c, _ in counts.values()], dtype=torch.float64) / n_samples
            rewards = torch.tensor([s for _, s in counts.values()], dtype=torch.float64)
            per_prompt.append((proxy[b * n_samples : (b + 1) * n_samples], gold, probs, rewards))
    out = []
    for n in ns:
        m = len(per_prompt)
        out.append({
            "n": n,
            "kl": sum(float(best_of_n_kl(p, rw, n)) for _, _, p, rw in per_prompt) / m,
            "kl_bound": float(best_of_n_kl_bound(n)),
            "gold": sum(float(best_of_n_subset_mean(s, g, n)) for s, g, _, _ in per_prompt) / m,
            "proxy": sum(float(best_of_n_subset_mean(s, s, n)) for s, _, _, _ in per_prompt) / m,
            "distinct": sum(len(p) for _, _, p, _ in per_prompt) / m,
        })
    return out


def ppo_curve(run_folder: str | Path, metric_name: str) -> list[dict]:
    """PPO's own log: each iteration's KL (k1 estimate on its t=1 rollouts), gold (train/<metric> of the
    same rollouts) and proxy (reward/score); ``heldout`` where it evaluated (greedy eval/<metric>)."""
    from minirlhf.logger import read_metrics

    out = []
    for row in read_metrics(run_folder):
        if all(isinstance(row.get(k), (int, float)) for k in ("kl", "reward/score", f"train/{metric_name}")):
            point = {"step": row["step"], "kl": row["kl"], "gold": row[f"train/{metric_name}"],
                     "proxy": row["reward/score"]}
            if isinstance(row.get(f"eval/{metric_name}"), (int, float)):
                point["heldout"] = row[f"eval/{metric_name}"]
            out.append(point)
    return out


# ---------------------------------------------------------------------------------------------
# Tables and figures
# ---------------------------------------------------------------------------------------------


def frontier_table(rows: dict[str, dict], metric_name: str) -> str:
    """One Markdown row per run (and the SFT start): strength, gold, proxy, KL to SFT, time."""
    lines = [f"| run | method | strength | {metric_name} (greedy) | {metric_name} (t=1) | proxy reward | "
             f"KL to SFT | time (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        strength = f"{r['knob']} = {r['strength']:g}" if "strength" in r else "-"
        reward = f"{r['reward']:.3f}" if "reward" in r else "-"
        t = f"{r['time']:.0f}" if "time" in r else "-"
        lines.append(f"| {name} | {r.get('method', '-')} | {strength} | {r['accuracy']:.3f} | {r['accuracy_t1']:.3f} | "
                     f"{reward} | {r['kl_to_sft']:.3f} | {t} |")
    return "\n".join(lines)


def overopt_tables(bon: list[dict], ppo: list[dict], ppo_label: str, metric_name: str) -> str:
    parts = []
    if bon:
        lines = ["| n | KL estimate | log n - (n-1)/n | gold | proxy | distinct responses / prompt |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {b['n']} | {b['kl']:.3f} | {b['kl_bound']:.3f} | {b['gold']:.3f} | {b['proxy']:.3f} | "
                  f"{b['distinct']:.1f} |" for b in bon]
        parts.append("Best-of-n from the SFT model:\n\n" + "\n".join(lines))
    held = [p for p in ppo if "heldout" in p]
    if held:
        lines = [f"| iteration | KL (rollouts) | gold (rollouts, t=1) | proxy (rollouts) | held-out {metric_name} (greedy) |",
                 "|---|---|---|---|---|"]
        lines += [f"| {p['step']} | {p['kl']:.3f} | {p['gold']:.3f} | {p['proxy']:.3f} | {p['heldout']:.3f} |"
                  for p in held]
        parts.append(f"PPO ({ppo_label}) at its evaluations:\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def _moving_average(ys: list[float], window: int) -> list[float]:
    return [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]


def _kl_axis(ax, name: str) -> None:
    """A panel with KL to SFT on x: labels, title and grid shared by both figures."""
    ax.set_xlabel("KL to SFT (nats per response)", fontsize=9)
    ax.set_title(name, loc="left", fontsize=11, fontweight="bold")
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.tick_params(labelsize=8)


def _finish(fig, legend_ax, title: str, out_path: Path, legend_size: int) -> Path:
    legend_ax.legend(fontsize=legend_size, frameon=False)
    fig.suptitle(title, fontsize=12)
    atomic_write(out_path, lambda f: fig.savefig(f, format="png"))
    return out_path


def plot_frontier(rows: dict[str, dict], metric_name: str, out_path: Path, title: str) -> Path:
    """Gold (t=1) and proxy reward against KL to SFT: a curve per method through its strengths, from the SFT point."""
    from minirlhf.plotting import _import_matplotlib

    Figure, FigureCanvasAgg, _ = _import_matplotlib()
    fig = Figure(figsize=(10.0, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    sft = rows.get("sft")
    for ax, key, name in ((axes[0], "accuracy_t1", f"gold: {metric_name} (t=1)"),
                          (axes[1], "reward", "proxy: reward model score (t=1)")):
        for i, method in enumerate(METHODS):
            points = sorted((r["kl_to_sft"], r[key], r["strength"]) for r in rows.values()
                            if r.get("method") == method and key in r)
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], color=f"C{i}", marker="o", linewidth=1.6,
                    markersize=4, label=method)
            for x, y, s in points:
                ax.annotate(f"{s:g}", (x, y), fontsize=7, color=f"C{i}", xytext=(3, 3), textcoords="offset points")
        if sft is not None and key in sft:
            ax.plot([sft["kl_to_sft"]], [sft[key]], "k*", markersize=10, label="sft")
        _kl_axis(ax, name)
    return _finish(fig, axes[0], title, out_path, legend_size=8)


def plot_overoptimisation(bon: list[dict], ppo: list[dict], ppo_label: str, metric_name: str, out_path: Path,
                          title: str) -> Path:
    """Gold and proxy reward against KL: PPO's iterations (faint) and their moving average (in KL and
    reward alike, over max(5, iterations / 8) iterations); best-of-n at its estimated KL (solid) and
    at log n - (n-1)/n (dashed, the upper bound on its KL)."""
    from minirlhf.plotting import _import_matplotlib

    Figure, FigureCanvasAgg, _ = _import_matplotlib()
    fig = Figure(figsize=(10.0, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key, name in ((axes[0], "gold", f"gold: {metric_name} (t=1)"),
                          (axes[1], "proxy", "proxy: reward model score")):
        if ppo:
            xs, ys = [p["kl"] for p in ppo], [p[key] for p in ppo]
            window = max(5, len(ppo) // 8)  # one batch's KL and rewards are noisy: 80 iterations -> 10
            ax.plot(xs, ys, color="C0", alpha=0.25, linewidth=0.8, marker=".", markersize=3)
            ax.plot(_moving_average(xs, window), _moving_average(ys, window), color="C0", linewidth=1.8,
                    label=f"PPO ({ppo_label}), moving average of {window} iterations")
        if bon:
            ax.plot([b["kl"] for b in bon], [b[key] for b in bon], color="C3", marker="o", markersize=4,
                    linewidth=1.6, label="best-of-n, KL estimated from the samples")
            ax.plot([b["kl_bound"] for b in bon], [b[key] for b in bon], color="C3", marker="o", markersize=4,
                    markerfacecolor="none", linestyle="--", linewidth=1.0, alpha=0.7,
                    label="best-of-n at log n - (n-1)/n")
            for b in bon:
                ax.annotate(f"n={b['n']}", (b["kl"], b[key]), fontsize=7, color="C3", xytext=(3, -9),
                            textcoords="offset points")
        _kl_axis(ax, name)
    return _finish(fig, axes[0], title, out_path, legend_size=7)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def frontier(cfg: FrontierConfig) -> dict:
    from minirlhf.device import resolve_device, set_threads
    from minirlhf.pipeline import compare, run_stage, stage_configs
    from minirlhf.tasks import TASKS

    if cfg.threads > 0:
        set_threads(cfg.threads)
    runs = sweep(cfg)  # every config checked before anything runs
    base = base_pipeline(cfg)
    src, out = Path(base.out), Path(cfg.out)
    sft_model, rm_model = str(src / "sft" / "model"), str(src / "rm" / "model")
    if cfg.from_dir:
        for needed in (sft_model, rm_model):
            if not Path(needed).is_dir():
                raise FileNotFoundError(f"--from-dir {src}: no {needed} (expected a minirlhf pipeline folder)")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "frontier-config.json")
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    if not cfg.from_dir:  # the SFT start, the preference pairs and the reward model, as the pipeline makes them
        configs = stage_configs(replace(base, algorithms=[]))
        for stage in (["sft"] if base.init else ["pretrain", "sft"]) + ["collect", "rm"]:
            done = out / stage / "model" if stage != "collect" else out / "prefs" / "summary.json"
            if cfg.reuse and done.exists():
                print(f"=== {stage}: reusing {done}")
                continue
            _, times[stage] = run_stage(stage, configs[stage])
    for method, strength, name, config in runs:
        if cfg.reuse and (Path(config.run.out) / "model").is_dir():
            print(f"=== {name}: reusing {config.run.out}")
            continue
        print(f"\n##### {name}: {KNOBS[method][0]} = {strength:g} #####", flush=True)
        _, times[name] = run_stage(method, config)
    device = resolve_device(cfg.device)
    models = {"sft": sft_model, **{name: str(Path(c.run.out) / "model") for _, _, name, c in runs}}
    print(f"\n=== evaluating {len(models)} policies on {cfg.eval_prompts} held-out prompts", flush=True)
    rows = compare(models, sft_model, rm_model, cfg.eval_prompts, cfg.seed, device)
    for method, strength, name, _ in runs:
        rows[name].update(method=method, knob=KNOBS[method][2], strength=strength)
        if name in times:
            rows[name]["time"] = times[name]
    metric_name = TASKS[base.task].metric_name
    title = f"minirlhf frontier: {base.task}{' (quick)' if cfg.quick else ''}"
    text = (f"# {title}\n\nEvery run starts from {sft_model} and learns from {rm_model} (DPO from the "
            f"preference pairs). Gold is the task's {metric_name} on {cfg.eval_prompts} held-out prompts, "
            f"proxy the reward model's normalised score of one t=1 sample each, KL to SFT the sampled "
            f"sum over response tokens of KL(pi || pi_sft).\n\n{frontier_table(rows, metric_name)}\n")
    result = {"rows": rows, "times": times, "sft": sft_model, "rm": rm_model}
    if cfg.overopt:
        print(f"\n=== best-of-n: {cfg.bon_samples} samples on {cfg.bon_prompts} held-out prompts", flush=True)
        bon = best_of_n_curve(sft_model, rm_model, cfg.bon_prompts, cfg.bon_samples, cfg.seed, device)
        ppo_runs = [(s, name, c) for m, s, name, c in runs if m == "ppo"]
        ppo_label, ppo = "", []
        if ppo_runs:
            _, ppo_label, ppo_config = min(ppo_runs)
            ppo = ppo_curve(ppo_config.run.out, metric_name)
        result.update(best_of_n=bon, ppo_run=ppo_label, ppo_curve=ppo)
        text += ("\n## Over-optimisation\n\nGold and proxy reward against KL to SFT: best-of-n from the SFT model "
                 f"({cfg.bon_samples} samples per prompt on {cfg.bon_prompts} held-out prompts; gold and proxy "
                 "are the means over every n-subset of the samples, the KL is the exact best-of-n KL of each "
                 "prompt's empirical distribution of samples, an estimate, beside its upper bound "
                 "log n - (n-1)/n)" + (f", and PPO's rollouts along its run with the smallest beta ({ppo_label})"
                                       if ppo else "") + ".\n\n"
                 + overopt_tables(bon, ppo, ppo_label, metric_name) + "\n")
    try:
        plot_frontier(rows, metric_name, out / "frontier.png", title)
        text += "\n![gold and proxy reward against KL to SFT, one curve per method](frontier.png)\n"
        if cfg.overopt:
            plot_overoptimisation(result["best_of_n"], result["ppo_curve"], result["ppo_run"], metric_name,
                                  out / "overoptimisation.png", f"{title}: over-optimisation")
            text += "\n![gold and proxy reward against KL for PPO and best-of-n](overoptimisation.png)\n"
    except ImportError as e:  # matplotlib is an optional extra
        print(f"no plot: {e}")
    total = time.perf_counter() - t_start
    text += f"\nTotal time {total:.0f}s.\n"
    result["total"] = total
    atomic_write_text(out / "frontier.md", text)
    atomic_write_text(out / "frontier.json", json.dumps(result, indent=2))
    print("\n" + text)
    return result
