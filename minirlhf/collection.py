"""Preference collection's shared pieces, used by ``minirlhf collect`` and by online DPO's rounds:
K samples per prompt through the one sampling path (``rollout.sample_responses``), the task's
judge, and every pair of a prompt's samples judged into preference rows (``judges.preference_rows``)."""
from __future__ import annotations

import torch

from minirlhf.judges import GoldJudge, HeuristicJudge, preference_rows
from minirlhf.rollout import sample_responses


def sample_groups(model, tokenizer, template, prompts: list[str], k: int, max_new_tokens: int, temperature: float,
                  generator: torch.Generator | None, batch_size: int = 512, top_k: int | None = None,
                  top_p: float | None = None) -> list[list[str]]:
    """K sampled responses per prompt, each prompt prefilled once (``GPT.generate(num_samples=K)``, token
    for token what sampling the prompt repeated K times gives); ``batch_size`` rows per generate call."""
    was_training = model.training
    model.eval()
    texts = sample_responses(model, tokenizer, template, prompts, max_new_tokens, temperature, generator,
                             num_samples=k, batch_size=batch_size, top_k=top_k, top_p=top_p)
    model.train(was_training)
    return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]


def task_judge(task, name: str = "auto"):
    """The task's programmatic judge: "gold" compares task.score as a gold check, "heuristic" as a
    graded score; "auto" takes gold where the task has reference answers."""
    if name == "auto":
        name = "gold" if task.reference(task.prompts("train")[0]) is not None else "heuristic"
    if name == "gold":
        return GoldJudge(task)
    if name == "heuristic":
        return HeuristicJudge(task)
    raise ValueError(f"judge: expected 'auto', 'gold' or 'heuristic', got {name!r}")


def judge_groups(prompts: list[str], groups: list[list[str]], judge, tie_policy: str = "drop"):
    """Every pair of each prompt's samples compared by ``judge``. Returns (rows, counts, scores, empty):
    the preference rows, the summed counts of ``preference_rows``, each sample's score, and the number
    of empty samples (an immediate EOS decodes to "", which a preference row cannot hold: such samples
    sit out the comparisons)."""
    rows, counts = [], {"pairs": 0, "skipped": 0, "ties": 0, "rows": 0}
    scores, empty = [], 0
    for p, group in zip(prompts, groups):
        scores += [judge.score(p, r) for r in group]
        kept = [r for r in group if r != ""]
        empty += len(group) - len(kept)
        new, c = preference_rows(p, kept, judge, tie_policy)
        rows += new
        for key in counts:
            counts[key] += c[key]
    return rows, counts, scores, empty
