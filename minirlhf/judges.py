"""Programmatic preference judges: stand-ins for the human raters of RLHF.

A rater is shown a prompt and two responses A and B and fills in a comparison form
("A is much better / A is better / A is slightly better / about the same / ... B").
Here that form is a `Preference`:

    prob      P(A preferred): 1, 0 or 0.5 for a single judgment, or the share of
              annotators who preferred A (the soft label alpha of the uncertainty-aware
              Bradley-Terry loss -alpha log s(r_A - r_B) - (1 - alpha) log s(r_B - r_A))
    strength  "slight", "strong" or "very strong"; `strength_value` maps it to the
              factor s of P(A > B | s) = sigmoid(s (r_A - r_B)): 1, 2 and 3
    tie       the judgment favours neither response (prob = 0.5)
    votes     one label per annotator, "a", "b" or "tie", to measure agreement

Judges (all pure Python):

    GoldJudge(task)                   compares task.score (e.g. exact-match correctness)
    HeuristicJudge(task or fn)        compares a graded score (default: the instruct judge)
    NoisyJudge(base, flip_prob, n)    n annotators, each flipping the base label with
                                      probability flip_prob; flip_prob = 0.5 is a coin flip

`preference_rows` turns K sampled responses into the K(K-1)/2 pairwise preference rows a
reward model or DPO trains on; `agreement_counts` turns votes into the (items x categories)
count table of Fleiss' kappa (minirlhf.objectives.preference.fleiss_kappa).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

from minirlhf.data import STRENGTHS  # the one table of preference strengths

# |score(A) - score(B)| below the first threshold is a slight preference, below the second
# a strong one, and from the second on a very strong one (scores lie in [0, 1]).
STRENGTH_THRESHOLDS = (0.15, 0.35)
VOTE_CATEGORIES = ("a", "b", "tie")
TIE_POLICIES = ("drop", "half")


@dataclass(frozen=True)
class Preference:
    """One filled-in comparison form for the pair (A, B); see the module docstring."""

    prob: float
    strength: str = "slight"
    tie: bool = False
    votes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob: expected a probability in [0, 1], got {self.prob!r}")
        if self.strength not in STRENGTHS:
            raise ValueError(f"strength: expected one of {tuple(STRENGTHS)}, got {self.strength!r}")
        bad = [v for v in self.votes if v not in VOTE_CATEGORIES]
        if bad:
            raise ValueError(f"votes: expected labels in {VOTE_CATEGORIES}, got {bad[0]!r}")

    @property
    def strength_value(self) -> float:
        """The factor s of sigmoid(s (r_A - r_B)): slight 1, strong 2, very strong 3."""
        return STRENGTHS[self.strength]


@runtime_checkable
class Judge(Protocol):
    """Anything with score(prompt, response) -> float and compare(prompt, a, b) -> Preference."""

    def score(self, prompt: str, response: str) -> float: ...

    def compare(self, prompt: str, a: str, b: str) -> Preference: ...


def strength_from_gap(gap: float, thresholds: tuple[float, float] = STRENGTH_THRESHOLDS) -> str:
    """"slight" for |gap| < t1, "strong" for t1 <= |gap| < t2, "very strong" from t2 on."""
    gap = abs(gap)
    if gap < thresholds[0]:
        return "slight"
    if gap < thresholds[1]:
        return "strong"
    return "very strong"


class ScoreJudge:
    """A judge that prefers the response with the higher score.

    compare(prompt, a, b): with d = score(a) - score(b),
        |d| <= tie_margin  -> a tie, prob 0.5
        d > tie_margin     -> prob 1 (A preferred), strength_from_gap(d)
        d < -tie_margin    -> prob 0 (B preferred), strength_from_gap(d)
    """

    def __init__(self, score_fn: Callable[[str, str], float], tie_margin: float = 0.0,
                 thresholds: tuple[float, float] = STRENGTH_THRESHOLDS):
        if not callable(score_fn):
            raise TypeError(f"score_fn: expected a callable (prompt, response) -> float, "
                            f"got {type(score_fn).__name__}")
        if tie_margin < 0:
            raise ValueError(f"tie_margin: expected a number >= 0, got {tie_margin!r}")
        if not 0 <= thresholds[0] <= thresholds[1]:
            raise ValueError(f"thresholds: expected 0 <= t1 <= t2, got {thresholds!r}")
        self.score_fn = score_fn
        self.tie_margin = tie_margin
        self.thresholds = tuple(thresholds)

    def score(self, prompt: str, response: str) -> float:
        return float(self.score_fn(prompt, response))

    def compare(self, prompt: str, a: str, b: str) -> Preference:
        gap = self.score(prompt, a) - self.score(prompt, b)
        if abs(gap) <= self.tie_margin:
            return Preference(prob=0.5, strength="slight", tie=True, votes=("tie",))
        winner = "a" if gap > 0 else "b"
        return Preference(prob=1.0 if winner == "a" else 0.0,
                          strength=strength_from_gap(gap, self.thresholds), votes=(winner,))


class GoldJudge(ScoreJudge):
    """Compares a task's gold check (task.score): the correct answer beats a wrong one,
    equal scores are a tie. With 0/1 scores every decided pair is "very strong"."""

    def __init__(self, task, **kwargs):
        if not callable(getattr(task, "score", None)):
            raise TypeError(f"task: expected an object with score(prompt, response), "
                            f"got {type(task).__name__}")
        super().__init__(task.score, **kwargs)
        self.task = task


class HeuristicJudge(ScoreJudge):
    """Compares a graded score in [0, 1]: a task (its .score), a function
    (prompt, response) -> float, or by default the instruct task's heuristic judge.
    Strength from the score gap (STRENGTH_THRESHOLDS: slight below 0.15, strong below
    0.35, very strong from 0.35)."""

    def __init__(self, task_or_fn=None, **kwargs):
        if task_or_fn is None:
            from minirlhf.tasks.instruct import judge_score

            fn = judge_score
        elif callable(getattr(task_or_fn, "score", None)):
            fn = task_or_fn.score
        elif callable(task_or_fn):
            fn = task_or_fn
        else:
            raise TypeError(f"task_or_fn: expected a task, a callable (prompt, response) -> "
                            f"float or None, got {type(task_or_fn).__name__}")
        super().__init__(fn, **kwargs)


class NoisyJudge:
    """A panel of `n_annotators` noisy annotators over a base judge.

    Each annotator copies the base judge's label and flips it ("a" <-> "b") with
    probability flip_prob, independently (seeded). A tie of the base judge stays a tie
    for every annotator. prob = (votes for A) / n_annotators; the strength is the base
    judge's; tie when prob = 0.5 (the panel as a whole favours neither response).
    flip_prob = 0 reproduces the base judge, 1 inverts it, and 0.5 is a random judge.
    """

    def __init__(self, base: Judge, flip_prob: float, n_annotators: int = 1, seed: int = 0):
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob: expected a probability in [0, 1], got {flip_prob!r}")
        if not isinstance(n_annotators, int) or n_annotators < 1:
            raise ValueError(f"n_annotators: expected an integer >= 1, got {n_annotators!r}")
        self.base = base
        self.flip_prob = flip_prob
        self.n_annotators = n_annotators
        self.rng = random.Random(seed)

    def score(self, prompt: str, response: str) -> float:
        return self.base.score(prompt, response)

    def compare(self, prompt: str, a: str, b: str) -> Preference:
        base = self.base.compare(prompt, a, b)
        if base.tie:
            return Preference(prob=0.5, strength=base.strength, tie=True,
                              votes=("tie",) * self.n_annotators)
        label = "a" if base.prob > 0.5 else "b"
        flipped = "b" if label == "a" else "a"
        votes = tuple(flipped if self.rng.random() < self.flip_prob else label
                      for _ in range(self.n_annotators))
        prob = votes.count("a") / self.n_annotators
        return Preference(prob=prob, strength=base.strength, tie=prob == 0.5, votes=votes)


def agreement_counts(preferences: list[Preference],
                     categories: tuple[str, ...] = VOTE_CATEGORIES) -> list[list[int]]:
    """Per item, the number of annotators who chose each category: the N x k table n_ij of
    Fleiss' kappa (Fleiss, 1971). Every item needs the same number of votes."""
    if not preferences:
        raise ValueError("preferences: expected at least one Preference, got none")
    counts = []
    for i, pref in enumerate(preferences):
        if not pref.votes:
            raise ValueError(f"preferences[{i}].votes: expected at least one vote, got none")
        unknown = set(pref.votes) - set(categories)
        if unknown:
            raise ValueError(f"preferences[{i}].votes: label(s) {sorted(unknown)} not in "
                             f"categories {categories}")
        if len(pref.votes) != len(preferences[0].votes):
            raise ValueError(f"preferences[{i}].votes: expected {len(preferences[0].votes)} votes "
                             f"as for item 0 (Fleiss' kappa needs a fixed number of raters), "
                             f"got {len(pref.votes)}")
        counts.append([pref.votes.count(c) for c in categories])
    return counts


def preference_rows(prompt: str, responses: list[str], judge: Judge,
                    tie_policy: str = "drop") -> tuple[list[dict], dict[str, int]]:
    """Compare every pair (i < j) of K responses to one prompt.

    Returns (rows, counts). Each row is {"prompt", "chosen", "rejected", "prob", "strength",
    "tie"} (the canonical preference row of minirlhf.data) with chosen the response the
    judgment favours, prob = P(chosen preferred) >= 0.5 and strength the float factor
    (1, 2, 3). Identical responses are skipped (a pair of equal
    texts says nothing); ties are dropped (tie_policy="drop") or kept as prob 0.5
    (tie_policy="half", chosen = the earlier response). counts has "pairs" = K(K-1)/2,
    "skipped", "ties" and "rows", with rows = pairs - skipped - (ties if dropped).
    """
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy: expected one of {TIE_POLICIES}, got {tie_policy!r}")
    if not isinstance(responses, (list, tuple)) or not all(isinstance(r, str) for r in responses):
        raise TypeError("responses: expected a list of str")
    rows = []
    counts = {"pairs": 0, "skipped": 0, "ties": 0, "rows": 0}
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            counts["pairs"] += 1
            a, b = responses[i], responses[j]
            if a == b:
                counts["skipped"] += 1
                continue
            pref = judge.compare(prompt, a, b)
            if pref.tie:
                counts["ties"] += 1
                if tie_policy == "drop":
                    continue
            if pref.prob >= 0.5:
                chosen, rejected, prob = a, b, pref.prob
            else:
                chosen, rejected, prob = b, a, 1.0 - pref.prob
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                         "prob": prob, "strength": pref.strength_value, "tie": pref.tie})
    counts["rows"] = len(rows)
    return rows, counts
