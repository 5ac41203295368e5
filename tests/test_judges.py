"""Preference judges: gold, heuristic and noisy judges, ties, pairwise rows, agreement."""
import math

import pytest

from minirlhf.judges import (STRENGTHS, GoldJudge, HeuristicJudge, Judge, NoisyJudge, Preference,
                             ScoreJudge, agreement_counts, preference_rows, strength_from_gap)
from minirlhf.tasks.arithmetic import ArithmeticTask
from minirlhf.tasks.instruct import judge_score

Q = "Q: 27+15=\nA:"


def numeric_judge(**kwargs) -> ScoreJudge:
    """A judge whose score is the response read as a number: gaps are exact by design."""
    return HeuristicJudge(lambda prompt, response: float(response), **kwargs)


class Alternating:
    """A base judge that prefers A on even calls and B on odd calls (balanced labels)."""

    def __init__(self):
        self.calls = 0

    def score(self, prompt, response):
        return 0.0

    def compare(self, prompt, a, b):
        self.calls += 1
        label = "a" if self.calls % 2 else "b"
        return Preference(prob=1.0 if label == "a" else 0.0, strength="strong", votes=(label,))


# ---- gold judge --------------------------------------------------------------------------
def test_gold_judge_prefers_the_correct_answer():
    judge = GoldJudge(ArithmeticTask(max_operand=99))
    assert isinstance(judge, Judge)
    right_first = judge.compare(Q, " 42", " 32")
    assert right_first.prob == 1.0 and not right_first.tie and right_first.votes == ("a",)
    assert right_first.strength == "very strong" and right_first.strength_value == 3.0
    right_second = judge.compare(Q, " 32", " 42")
    assert right_second.prob == 0.0 and right_second.votes == ("b",)


def test_gold_judge_ties_on_equal_scores():
    judge = GoldJudge(ArithmeticTask())
    for a, b in ((" 32", " 31"), (" 42", "42"), (" 42", " 42x")):
        pref = judge.compare(Q, a, b)
        assert pref.tie and pref.prob == 0.5 and pref.votes == ("tie",)


def test_gold_judge_needs_a_task():
    with pytest.raises(TypeError, match="task"):
        GoldJudge(object())


# ---- heuristic judge and strengths -------------------------------------------------------
@pytest.mark.parametrize("gap, strength", [
    (0.01, "slight"), (0.1, "slight"), (0.149, "slight"), (0.15, "strong"), (0.3, "strong"),
    (0.35, "very strong"), (0.9, "very strong"), (-0.2, "strong"),
])
def test_strength_thresholds(gap, strength):
    assert strength_from_gap(gap) == strength


def test_heuristic_judge_strength_from_the_score_gap():
    judge = numeric_judge()
    for a, b, prob, strength in (("0.6", "0.5", 1.0, "slight"), ("0.5", "0.75", 0.0, "strong"),
                                 ("1.0", "0.25", 1.0, "very strong")):
        pref = judge.compare("p", a, b)
        assert (pref.prob, pref.strength, pref.tie) == (prob, strength, False)
        assert pref.strength_value == STRENGTHS[strength]
    assert STRENGTHS == {"slight": 1.0, "strong": 2.0, "very strong": 3.0}


def test_tie_margin():
    assert numeric_judge().compare("p", "0.5", "0.5").tie
    assert not numeric_judge().compare("p", "0.5", "0.51").tie
    assert numeric_judge(tie_margin=0.05).compare("p", "0.5", "0.54").tie
    assert not numeric_judge(tie_margin=0.05).compare("p", "0.5", "0.56").tie


def test_heuristic_judge_defaults_to_the_instruct_judge():
    prompt = "Explain rainbows to a 10-year-old."
    good = ("Hey there! Imagine every raindrop is a tiny prism that bends sunlight into a fan of "
            "colors, like a sprinkler of light. Rainbows show up when the sun is behind you. Have "
            "you ever seen a double rainbow?")
    dry = "A rainbow is colors in the sky."
    judge = HeuristicJudge()
    assert judge.score(prompt, good) == judge_score(prompt, good)
    pref = judge.compare(prompt, dry, good)
    assert pref.prob == 0.0
    assert pref.strength == strength_from_gap(judge_score(prompt, dry) - judge_score(prompt, good))
    with pytest.raises(TypeError, match="task_or_fn"):
        HeuristicJudge(3)


def test_preference_validation():
    with pytest.raises(ValueError, match="prob"):
        Preference(prob=1.5)
    with pytest.raises(ValueError, match="strength"):
        Preference(prob=1.0, strength="huge")
    with pytest.raises(ValueError, match="votes"):
        Preference(prob=1.0, votes=("c",))


# ---- noisy judge -------------------------------------------------------------------------
def test_noisy_judge_with_flip_prob_0_equals_the_base():
    base = numeric_judge()
    noisy = NoisyJudge(base, flip_prob=0.0, n_annotators=1)
    for a, b in (("0.9", "0.1"), ("0.2", "0.3"), ("0.5", "0.5")):
        assert noisy.compare("p", a, b) == base.compare("p", a, b)


def test_noisy_judge_with_flip_prob_1_inverts_the_base():
    base = numeric_judge()
    noisy = NoisyJudge(base, flip_prob=1.0, n_annotators=3)
    for a, b in (("0.9", "0.1"), ("0.2", "0.3")):
        want = base.compare("p", a, b)
        got = noisy.compare("p", a, b)
        assert got.prob == 1.0 - want.prob and got.strength == want.strength
        assert len(got.votes) == 3 and len(set(got.votes)) == 1
    tie = noisy.compare("p", "0.5", "0.5")     # a tie stays a tie
    assert tie.tie and tie.prob == 0.5 and tie.votes == ("tie",) * 3


def test_noisy_prob_is_the_vote_share_and_flips_are_binomial():
    n_annotators, n_items, q = 5, 2000, 0.3
    noisy = NoisyJudge(numeric_judge(), flip_prob=q, n_annotators=n_annotators, seed=7)
    flips = 0
    for _ in range(n_items):
        pref = noisy.compare("p", "0.9", "0.1")       # the base prefers A
        assert len(pref.votes) == n_annotators
        assert pref.prob == pref.votes.count("a") / n_annotators
        assert pref.tie == (pref.prob == 0.5)
        flips += pref.votes.count("b")
    n = n_annotators * n_items
    assert abs(flips / n - q) <= 5 * math.sqrt(q * (1 - q) / n)


def test_noisy_judge_is_seeded():
    def run(seed):
        j = NoisyJudge(numeric_judge(), flip_prob=0.4, n_annotators=4, seed=seed)
        return [j.compare("p", "0.9", "0.1") for _ in range(50)]

    assert run(1) == run(1) and run(1) != run(2)
    with pytest.raises(ValueError, match="flip_prob"):
        NoisyJudge(numeric_judge(), flip_prob=-0.1)
    with pytest.raises(ValueError, match="n_annotators"):
        NoisyJudge(numeric_judge(), flip_prob=0.1, n_annotators=0)


def test_even_split_of_annotators_is_a_tie():
    # two annotators, one flips: prob 1/2 and the panel favours neither response
    j = NoisyJudge(numeric_judge(), flip_prob=0.5, n_annotators=2, seed=0)
    splits = [p for p in (j.compare("p", "0.9", "0.1") for _ in range(200)) if len(set(p.votes)) == 2]
    assert splits and all(p.tie and p.prob == 0.5 for p in splits)


# ---- agreement ---------------------------------------------------------------------------
def test_agreement_counts_table():
    prefs = [Preference(prob=1.0, votes=("a", "a", "b")), Preference(prob=0.5, tie=True, votes=("tie",) * 3),
             Preference(prob=0.0, votes=("b", "b", "b"))]
    assert agreement_counts(prefs) == [[2, 1, 0], [0, 0, 3], [0, 3, 0]]
    assert agreement_counts(prefs[:1], categories=("b", "a", "tie")) == [[1, 2, 0]]
    with pytest.raises(ValueError, match="fixed number of raters"):
        agreement_counts(prefs + [Preference(prob=1.0, votes=("a",))])
    with pytest.raises(ValueError, match="at least one vote"):
        agreement_counts([Preference(prob=1.0)])
    with pytest.raises(ValueError, match="not in categories"):
        agreement_counts(prefs[1:2], categories=("a", "b"))


def test_agreement_of_noisy_annotators_matches_the_closed_form_kappa():
    """With balanced base labels and independent flips with probability q, two annotators
    agree with probability (1-q)^2 + q^2 and chance agreement is 1/2, so Fleiss' kappa is
    ((1-q)^2 + q^2 - 1/2) / (1/2) = (1 - 2q)^2."""
    torch = pytest.importorskip("torch")
    preference = pytest.importorskip("minirlhf.objectives.preference")
    for q, n_items in ((0.0, 200), (0.2, 4000), (0.5, 4000)):
        judge = NoisyJudge(Alternating(), flip_prob=q, n_annotators=4, seed=3)
        prefs = [judge.compare("p", "x", "y") for _ in range(n_items)]
        counts = torch.tensor(agreement_counts(prefs, categories=("a", "b")))
        kappa = preference.fleiss_kappa(counts).item()
        assert kappa == pytest.approx((1 - 2 * q) ** 2, abs=0.04)


# ---- pairwise preference rows ------------------------------------------------------------
def test_preference_rows_compares_every_pair():
    responses = ["0.1", "0.5", "0.9", "0.3"]
    rows, counts = preference_rows("p", responses, numeric_judge())
    k = len(responses)
    assert counts == {"pairs": k * (k - 1) // 2, "skipped": 0, "ties": 0, "rows": 6}
    assert len(rows) == 6
    for row in rows:
        assert float(row["chosen"]) > float(row["rejected"])
        assert row["prob"] == 1.0 and row["tie"] is False and row["prompt"] == "p"
        assert row["strength"] == STRENGTHS[strength_from_gap(float(row["chosen"]) - float(row["rejected"]))]
    assert {(r["chosen"], r["rejected"]) for r in rows} == {
        (a, b) for a in responses for b in responses if float(a) > float(b)}


def test_preference_rows_ties_and_identical_responses():
    # "0.5" twice (identical: skipped), "0.50" equal score but different text (a tie)
    responses = ["0.5", "0.5", "0.50", "0.9"]
    dropped, c = preference_rows("p", responses, numeric_judge(), tie_policy="drop")
    assert c == {"pairs": 6, "skipped": 1, "ties": 2, "rows": 3}
    assert len(dropped) == c["pairs"] - c["skipped"] - c["ties"]
    halves, c2 = preference_rows("p", responses, numeric_judge(), tie_policy="half")
    assert c2 == {"pairs": 6, "skipped": 1, "ties": 2, "rows": 5}
    ties = [r for r in halves if r["tie"]]
    assert len(ties) == 2 and all(r["prob"] == 0.5 for r in ties)
    assert all(r["chosen"] != r["rejected"] for r in halves)
    with pytest.raises(ValueError, match="tie_policy"):
        preference_rows("p", responses, numeric_judge(), tie_policy="coin")


def test_preference_rows_orient_soft_labels_toward_the_majority():
    noisy = NoisyJudge(numeric_judge(), flip_prob=0.3, n_annotators=5, seed=0)
    rows, counts = preference_rows("p", [str(i / 10) for i in range(8)], noisy, tie_policy="drop")
    assert counts["rows"] == len(rows) == 28     # 5 annotators: never an even split
    assert all(0.5 < r["prob"] <= 1.0 for r in rows)
    assert any(r["prob"] < 1.0 for r in rows)


def test_preference_rows_with_the_gold_judge_on_sampled_answers():
    judge = GoldJudge(ArithmeticTask())
    rows, counts = preference_rows(Q, [" 42", " 32", " 42", " 41", "42"], judge)
    # 10 pairs: (" 42", " 42") is identical and skipped; the ties are the two correct-vs-
    # correct pairs (" 42", "42") and the wrong-vs-wrong pair (" 32", " 41"); 6 rows remain
    assert counts == {"pairs": 10, "skipped": 1, "ties": 3, "rows": 6}
    assert all(judge.score(Q, r["chosen"]) == 1.0 and judge.score(Q, r["rejected"]) == 0.0
               for r in rows)


def test_rows_pass_the_data_validator():
    data = pytest.importorskip("minirlhf.data")
    rows, _ = preference_rows("p", ["0.1", "0.5", "0.5 ", "0.9"], numeric_judge(), tie_policy="half")
    for row in rows:
        assert data.parse_preference_row(row) == row
