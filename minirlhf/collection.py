"""Preference collection's shared pieces, used by ``minirlhf collect`` and by online DPO's rounds:
K samples per prompt through the one sampling path (``rollout.sample_responses``), the task's
judge, every pair of a prompt's samples judged into preference rows (``judges.preference_rows``),
and one online round's pairs with their file (``round_pairs``, ``round_file``)."""
from __future__ import annotations

from pathlib import Path

import torch

from minirlhf.data import load_preferences, write_jsonl
from minirlhf.distributed import SINGLE, DistInfo, all_gather_objects
from minirlhf.judges import GoldJudge, HeuristicJudge, preference_rows
from minirlhf.rollout import sample, sample_responses


def sample_groups(model, tokenizer, template, prompts: list[str], k: int, max_new_tokens: int, temperature: float,
                  generator: torch.Generator | None, batch_size: int = 512, top_k: int | None = None,
                  top_p: float | None = None) -> list[list[str]]:
    """K sampled responses per prompt, each prompt prefilled once (``GPT.generate(num_samples=K)``, token
    for token what sampling the prompt repeated K times gives); ``batch_size`` rows per generate call."""
    texts = sample_responses(model, tokenizer, template, prompts, max_new_tokens, temperature, generator,
                             num_samples=k, batch_size=batch_size, top_k=top_k, top_p=top_p)
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


def round_seed(seed: int, round_index: int) -> int:
    return seed * 1_000_003 + round_index


def round_file(out, round_index: int) -> Path:
    """Where a run writes the pairs of an online round: ``<out>/rounds/round_NNN.jsonl``."""
    return Path(out) / "rounds" / f"round_{round_index:03d}.jsonl"


@torch.no_grad()
def sample_groups_sharded(model, tokenizer, template, prompts: list[str], k: int, max_new_tokens: int,
                          temperature: float, seed: int, d: DistInfo = SINGLE, batch_size: int = 128) -> list[list[str]]:
    """``k`` samples of each of this process's prompts (``prompts[rank::W]``) whose randomness does not
    depend on the number of processes: the global list is cut into the same generate calls whatever W,
    call c draws from a generator seeded by (seed, c) for every row of the call, and each process
    samples its rows of it with their draws (``rollout.sample``'s rows)."""
    per_call = max(1, batch_size // k)  # prompts per generate call
    device = next(model.parameters()).device
    groups = []
    for c, start in enumerate(range(0, len(prompts), per_call)):
        chunk = range(start, min(start + per_call, len(prompts)))
        mine = [i for i in chunk if i % d.world_size == d.rank]
        if not mine:
            continue
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + c)
        rows = torch.tensor([(i - start) * k + g for i in mine for g in range(k)], dtype=torch.long)
        texts = sample(model, tokenizer, template, [prompts[i] for i in mine], max_new_tokens, temperature, gen, k,
                       rows=rows, n_rows=len(chunk) * k).responses
        groups += [texts[j * k : (j + 1) * k] for j in range(len(mine))]
    return groups


@torch.no_grad()
def round_pairs(model, task, judge, tokenizer, template, n_prompts: int, k: int, temperature: float, tie_policy: str,
                seed: int, round_index: int, d: DistInfo = SINGLE) -> tuple[list, dict]:
    """An online round's pairs: ``k`` samples per prompt from the current policy, every pair judged.
    The prompts and the samples are drawn from generators seeded by (seed, round), the samples of each
    prompt the same whatever the number of processes (``sample_groups_sharded``). Distributed, each
    rank samples and judges its share of the prompts and every rank returns the pairs of all of them
    in the order of the prompts: the list one process would make. Returns (rows, round statistics)."""
    g = torch.Generator().manual_seed(round_seed(seed, round_index))
    train_prompts = task.prompts("train")
    n = min(n_prompts, len(train_prompts))
    prompts = [train_prompts[i] for i in torch.randperm(len(train_prompts), generator=g)[:n].tolist()]
    groups = sample_groups_sharded(model, tokenizer, template, prompts, k, task.max_response_tokens, temperature,
                                   round_seed(seed, round_index), d)
    mine = list(range(n))[d.rank :: d.world_size]
    per_prompt = []  # (global prompt index, its rows, counts, scores, empty samples)
    for i, group in zip(mine, groups):
        rows, counts, scores, empty = judge_groups([prompts[i]], [group], judge, tie_policy)
        per_prompt.append((i, rows, counts, scores, empty))
    if d.enabled:  # every rank's prompts, on every rank
        per_prompt = [item for part in all_gather_objects(per_prompt, d) for item in part]
    per_prompt.sort(key=lambda item: item[0])
    rows = [row for item in per_prompt for row in item[1]]
    counts = {key: sum(item[2][key] for item in per_prompt) for key in ("pairs", "skipped", "ties", "rows")}
    scores = [x for item in per_prompt for x in item[3]]
    empty = sum(item[4] for item in per_prompt)
    stats = {"round/pairs": counts["rows"], "round/ties": counts["ties"], "round/skipped": counts["skipped"],
             "round/empty_samples": empty, "round/score": sum(scores) / len(scores), "round/prompts": n}
    return rows, stats


def save_round(out, round_index: int, rows: list[dict]) -> None:
    path = round_file(out, round_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)


def load_round(out, round_index: int, step: int) -> list[dict]:
    """The pairs of a round, read back by a run resumed in its middle (they came from the policy at the
    start of the round, which the resumed run no longer has)."""
    path = round_file(out, round_index)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the pairs of round {round_index}, needed to resume at step {step}, are missing")
    return load_preferences(path)
