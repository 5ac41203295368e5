"""Preference collection: sample K responses per prompt from a policy, let a programmatic judge
compare every pair, and write the comparisons a reward model (or DPO) trains on.

This is step 2 of InstructGPT's recipe (Ouyang et al., 2022, section 3.4): "labelers rank K
outputs to a prompt; the ranking gives K(K-1)/2 comparisons". Here the labeler is a judge from
minirlhf.judges: the task's gold check, the instruct heuristic, or a panel of noisy annotators
over the task's check. Sampling runs at a temperature above 1 (default 1.2) so that the K samples of one
prompt differ often enough to be compared.

Output, in ``<out>/``:

    train.jsonl            preference rows from training prompts (the reward model's data)
    test.jsonl             preference rows from held-out prompts (its held-out pairs)
    train_rankings.jsonl   {"prompt", "responses": best first}: one response per distinct judge
                           score, for a Plackett-Luce loss (Plackett, 1975)
    <split>_samples.jsonl  every prompt with its K samples and their scores (for inspection)
    summary.json           counts per split: pairs, ties, skipped pairs, Fleiss' kappa, ...

A preference row is ``{"prompt", "chosen", "rejected", "prob", "strength", "tie"}`` as
minirlhf.data reads it; ``strength`` is written as its label ("slight", "strong", "very
strong") and ``votes`` (one label per annotator: "chosen", "rejected" or "tie") is added when
a panel of annotators judged the pair. Everything is deterministic given ``seed``.
"""
from __future__ import annotations

import hashlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from minirlhf.checkpoint import atomic_write_json
from minirlhf.config import save_config, to_dict
from minirlhf.data import STRENGTHS, parse_preference_row, parse_ranking_row, write_jsonl
from minirlhf.device import resolve_device, seed_everything, set_threads
from minirlhf.collection import sample_groups
from minirlhf.folders import check_input_kinds, plan_output
from minirlhf.judges import GoldJudge, HeuristicJudge, NoisyJudge, Preference, agreement_counts, preference_rows
from minirlhf.objectives.preference import fleiss_kappa
from minirlhf.saving import load_model
from minirlhf.trainers.common import TaskConfig, resolve_task

STRENGTH_LABELS = {value: label for label, value in STRENGTHS.items()}  # 1.0 -> "slight", ...


@dataclass
class CollectConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: str = field(default="runs/sft/model", metadata={"help": "model folder to sample from"})
    out: str = field(default="runs/prefs", metadata={"help": "folder for the JSONL files and summary.json"})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier collect output in --out, whole"})
    judge: Literal["gold", "heuristic", "noisy"] = field(
        default="gold", metadata={"help": "gold: the task's exact check; heuristic: a graded score (the instruct "
                                          "judge); noisy: a panel of annotators flipping the task judge's label"})
    flip_prob: float = field(default=0.2, metadata={"help": "noisy judge: chance that one annotator flips the label"})
    n_annotators: int = field(default=1, metadata={"help": "noisy judge: annotators per pair (prob = vote share)"})
    tie_policy: Literal["drop", "half"] = field(default="drop",
                                                metadata={"help": "ties: dropped, or kept as prob 0.5"})
    tie_margin: float = field(default=0.0, metadata={"help": "score gaps up to this are ties"})
    n_prompts: int = field(default=0, metadata={"help": "training prompts sampled (0: all)"})
    n_test_prompts: int = field(default=300, metadata={"help": "held-out prompts sampled (0: all)"})
    k: int = field(default=4, metadata={"help": "samples per prompt: K(K-1)/2 comparisons each"})
    temperature: float = field(default=1.2, metadata={"help": "sampling temperature (> 1 for diversity)"})
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = field(default=0, metadata={"help": "0: the task's suggestion"})
    correct_at: float = field(default=0.5, metadata={"help": "a sample counts as correct when its score >= this"})
    batch_size: int = field(default=512, metadata={"help": "rows generated at once"})
    seed: int = 0
    device: str = "auto"
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})


def split_seed(seed: int, split: str) -> int:
    """A seed of its own for each split, so that the held-out samples do not depend on how many
    training prompts came before them."""
    return int.from_bytes(hashlib.sha256(f"{seed}:collect:{split}".encode()).digest()[:8], "little") % 2**63


def make_judge(cfg: CollectConfig, task, seed: int = 0):
    """The judge named by cfg.judge. "gold" compares task.score with GoldJudge, "heuristic" with
    HeuristicJudge (for the instruct task that is its graded judge score); "noisy" puts a panel
    of cfg.n_annotators annotators, each flipping the label with cfg.flip_prob, over the gold one
    (its coin flips seeded with ``seed``)."""
    if cfg.judge == "gold":
        return GoldJudge(task, tie_margin=cfg.tie_margin)
    if cfg.judge == "heuristic":
        return HeuristicJudge(task, tie_margin=cfg.tie_margin)
    if cfg.judge == "noisy":
        return NoisyJudge(GoldJudge(task, tie_margin=cfg.tie_margin), cfg.flip_prob, cfg.n_annotators, seed=seed)
    raise ValueError(f"judge: expected 'gold', 'heuristic' or 'noisy', got {cfg.judge!r}")


class RecordingJudge:
    """Passes compare() on to a judge and keeps every Preference, for agreement statistics."""

    def __init__(self, judge):
        self.judge = judge
        self.preferences: list[Preference] = []

    def score(self, prompt: str, response: str) -> float:
        return self.judge.score(prompt, response)

    def compare(self, prompt: str, a: str, b: str) -> Preference:
        pref = self.judge.compare(prompt, a, b)
        self.preferences.append(pref)
        return pref


def choose_prompts(prompts: list[str], n: int, seed: int, split: str) -> list[str]:
    """``n`` prompts drawn without replacement by a generator seeded with (seed, split), kept in
    the task's order; all of them when n is 0 or at least their number."""
    if n <= 0 or n >= len(prompts):
        return list(prompts)
    picked = sorted(random.Random(f"{seed}:collect:{split}").sample(range(len(prompts)), n))
    return [prompts[i] for i in picked]


def judge_prompt(prompt: str, responses: list[str], judge, tie_policy: str = "drop"):
    """Every pair (i < j) of one prompt's K responses, compared by ``judge``.

    Returns (rows, counts, preferences), preferences being every judgment made. counts: "pairs" = K(K-1)/2; "empty" pairs with an empty response
    (no text to learn from: the policy stopped at once); "identical" pairs of equal texts; "ties"
    the judge's ties (dropped or kept by tie_policy); "rows" the rows written, so
    rows = pairs - empty - identical - (ties if dropped). Each row is minirlhf.data's preference
    row, with the strength as its label and, for a panel of annotators, the votes as
    "chosen" / "rejected" / "tie".
    """
    k = len(responses)
    non_empty = [r for r in responses if r != ""]
    recorder = RecordingJudge(judge)
    rows, counts = preference_rows(prompt, non_empty, recorder, tie_policy)
    # preference_rows compares the pairs i < j with different texts in order, and writes a row for
    # each judgment except dropped ties: walk the two lists together to attach each row's votes.
    rows_left = iter(rows)
    out = []
    for (a, b), pref in zip(_compared_pairs(non_empty), recorder.preferences):
        if pref.tie and tie_policy == "drop":
            continue
        row = dict(next(rows_left))
        chosen_is_a = pref.prob >= 0.5
        assert row["chosen"] == (a if chosen_is_a else b)
        row["strength"] = STRENGTH_LABELS.get(row["strength"], row["strength"])
        if len(pref.votes) > 1:
            row["votes"] = [_vote_label(v, chosen_is_a) for v in pref.votes]
        out.append(row)
    pairs = k * (k - 1) // 2
    stats = {"pairs": pairs, "empty": pairs - counts["pairs"], "identical": counts["skipped"],
             "ties": counts["ties"], "rows": len(out)}
    return out, stats, recorder.preferences


def _compared_pairs(responses: list[str]) -> list[tuple[str, str]]:
    """The (a, b) pairs preference_rows hands to the judge, in its order: i < j, texts differ."""
    return [(responses[i], responses[j]) for i in range(len(responses)) for j in range(i + 1, len(responses))
            if responses[i] != responses[j]]


def _vote_label(vote: str, chosen_is_a: bool) -> str:
    if vote == "tie":
        return "tie"
    return "chosen" if (vote == "a") == chosen_is_a else "rejected"


def ranking_row(prompt: str, responses: list[str], judge) -> dict | None:
    """{"prompt", "responses": best first} with one response per distinct judge score (the first
    sampled one), or None when fewer than two distinct scores occur: Plackett-Luce needs a strict
    order, and equal scores give none."""
    by_score: dict[float, str] = {}
    for r in responses:
        if r != "":
            by_score.setdefault(judge.score(prompt, r), r)
    if len(by_score) < 2:
        return None
    return {"prompt": prompt, "responses": [by_score[s] for s in sorted(by_score, reverse=True)]}


def panel_kappa(preferences: list[Preference]) -> float | None:
    """Fleiss' kappa (Fleiss, 1971) of the annotators' votes ("a", "b", "tie") over all compared
    pairs; None with a single annotator or nothing compared, or when undefined (every vote alike)."""
    if not preferences or len(preferences[0].votes) < 2:
        return None
    kappa = fleiss_kappa(torch.tensor(agreement_counts(preferences), dtype=torch.float64)).item()
    return None if math.isnan(kappa) else kappa


def collect_split(model, tokenizer, template, task, prompts: list[str], judge, cfg: CollectConfig,
                  generator: torch.Generator, max_new_tokens: int):
    """Sample, judge and rank one split. Returns (rows, rankings, samples, summary)."""
    responses = sample_groups(model, tokenizer, template, prompts, cfg.k, max_new_tokens, cfg.temperature,
                              generator, cfg.batch_size, cfg.top_k, cfg.top_p)
    rows, rankings, samples, preferences = [], [], [], []
    totals = {"pairs": 0, "empty": 0, "identical": 0, "ties": 0, "rows": 0}
    any_correct = any_wrong = distinct = 0
    n_empty_samples, score_sum = 0, 0.0
    for prompt, resp in zip(prompts, responses):
        prompt_rows, counts, prefs = judge_prompt(prompt, resp, judge, cfg.tie_policy)
        rows += prompt_rows
        preferences += prefs
        for key in totals:
            totals[key] += counts[key]
        scores = [task.score(prompt, r) for r in resp]
        samples.append({"prompt": prompt, "responses": resp, "scores": scores})
        ranking = ranking_row(prompt, resp, judge)
        if ranking is not None:
            rankings.append(ranking)
        any_correct += any(s >= cfg.correct_at for s in scores)
        any_wrong += any(s < cfg.correct_at for s in scores)
        distinct += len(set(resp))
        n_empty_samples += sum(r == "" for r in resp)
        score_sum += sum(scores)
    for row in rows:  # what load_preferences would refuse must never be written
        parse_preference_row(row)
    for ranking in rankings:
        parse_ranking_row(ranking)
    n = max(1, len(prompts))
    summary = dict(totals)
    summary.update({
        "prompts": len(prompts), "samples": len(prompts) * cfg.k, "rankings": len(rankings),
        "tie_rows": sum(r["tie"] for r in rows),
        "kappa": panel_kappa(preferences),
        "mean_score": score_sum / max(1, len(prompts) * cfg.k),
        "share_prompts_with_correct": any_correct / n,
        "share_prompts_with_wrong": any_wrong / n,
        "distinct_per_prompt": distinct / n,
        "share_empty_samples": n_empty_samples / max(1, len(prompts) * cfg.k),
        "binary_scores": all(sc in (0.0, 1.0) for sample in samples for sc in sample["scores"]),
    })
    return rows, rankings, samples, summary


def score_shares(summary: dict, correct_at: float) -> str:
    """The share of prompts with a good and with a poor sample, in the task's words: "correct / wrong"
    for a 0/1 check such as arithmetic, the threshold itself for a graded score such as the instruct judge."""
    good, poor = summary["share_prompts_with_correct"], summary["share_prompts_with_wrong"]
    if summary["binary_scores"]:
        return f"correct in {good:.0%} / wrong in {poor:.0%} of prompts"
    return f"a sample scoring >= {correct_at:g} in {good:.0%} / below it in {poor:.0%} of prompts"


def _check_config(cfg: CollectConfig) -> None:
    if cfg.k < 2:
        raise ValueError(f"k: expected at least 2 samples per prompt (a pair to compare), got {cfg.k}")
    if not cfg.temperature > 0:
        raise ValueError(f"temperature: expected > 0 (0 is greedy: all K samples alike), got {cfg.temperature}")
    if cfg.n_annotators < 1:
        raise ValueError(f"n_annotators: expected an integer >= 1, got {cfg.n_annotators}")
    if cfg.n_annotators > 1 and cfg.judge != "noisy":
        raise ValueError(f"n_annotators: a panel of {cfg.n_annotators} annotators needs judge 'noisy' "
                         f"(the {cfg.judge!r} judge is deterministic), got judge {cfg.judge!r}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {cfg.batch_size}")


def collect(cfg: CollectConfig) -> dict:
    """Sample ``k`` responses per prompt from ``cfg.policy`` on training and held-out prompts, judge
    every pair, and write the preference files and summary.json to ``cfg.out``; returns the summary."""
    _check_config(cfg)
    config = to_dict(cfg)
    check_input_kinds("collect", config)
    plan = plan_output(cfg.out, config, "collect", overwrite=cfg.overwrite, out_option="--out",
                       resume_option="--resume", overwrite_option="--overwrite")
    if cfg.threads > 0:
        set_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model, tokenizer, template, meta = load_model(cfg.policy, kind="gpt", device=device)
    task, task_record = resolve_task(cfg.task, meta)
    template = template or task.template()
    if tokenizer is None:
        raise ValueError(f"{cfg.policy}: the model folder has no tokenizer.json")
    model.eval()
    max_new = cfg.max_new_tokens or task.max_response_tokens
    out = Path(cfg.out)
    plan.prepare()  # the policy has loaded: only now is an earlier output replaced
    save_config(cfg, out / "config.json")

    t0 = time.perf_counter()
    summary = {"policy": str(cfg.policy), "task": task_record, "judge": cfg.judge, "k": cfg.k,
               "temperature": cfg.temperature, "tie_policy": cfg.tie_policy, "seed": cfg.seed}
    for split, n in (("train", cfg.n_prompts), ("test", cfg.n_test_prompts)):
        prompts = choose_prompts(task.prompts(split), n, cfg.seed, split)
        longest = max(len(template.encode(tokenizer, p)[0]) for p in prompts)
        room = model.config.block_size - longest
        if room < 1:
            raise ValueError(f"{split} prompts: the longest is {longest} tokens, which leaves no room in the "
                             f"policy's block_size {model.config.block_size}")
        if max_new > room:
            print(f"[collect] max_new_tokens {max_new} -> {room} to fit block_size {model.config.block_size}",
                  file=sys.stderr)
        seed = split_seed(cfg.seed, split)
        generator = torch.Generator(device=device).manual_seed(seed)
        rows, rankings, samples, split_summary = collect_split(model, tokenizer, template, task, prompts,
                                                               make_judge(cfg, task, seed), cfg, generator,
                                                               min(max_new, room))
        write_jsonl(out / f"{split}.jsonl", rows)
        write_jsonl(out / f"{split}_samples.jsonl", samples)
        if split == "train":
            write_jsonl(out / "train_rankings.jsonl", rankings)
        summary[split] = split_summary
        kappa = split_summary["kappa"]
        print(f"[collect] {split}: {split_summary['prompts']} prompts x {cfg.k} samples -> "
              f"{split_summary['rows']} rows from {split_summary['pairs']} pairs "
              f"({split_summary['ties']} ties{' dropped' if cfg.tie_policy == 'drop' else ' kept'}, "
              f"{split_summary['identical']} identical and {split_summary['empty']} empty skipped); "
              f"{split_summary['rankings']} rankings; {score_shares(split_summary, cfg.correct_at)}; "
              f"{split_summary['distinct_per_prompt']:.2f} distinct samples per prompt"
              + (f"; Fleiss' kappa {kappa:.3f}" if kappa is not None else ""))
    summary["time"] = time.perf_counter() - t0
    atomic_write_json(out / "summary.json", summary, indent=2)
    print(f"[collect] wrote {out}/train.jsonl, test.jsonl, train_rankings.jsonl and summary.json "
          f"in {summary['time']:.0f}s")
    return summary
