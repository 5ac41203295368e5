"""Preference collection: files the loaders accept, rows that match an independent enumeration of
the sampled pairs, vote shares and Fleiss' kappa against closed forms, determinism."""
import json

import pytest
import torch

from minirlhf.cli import main as cli_main
from minirlhf.data import load_preferences, load_rankings
from minirlhf.judges import NoisyJudge, ScoreJudge
from minirlhf.model import GPT, GPTConfig
from minirlhf.saving import save_model
from minirlhf.tasks import get_task
from minirlhf.tasks.arithmetic import ArithmeticTask
from minirlhf.trainers.collect import CollectConfig, collect, judge_prompt, panel_kappa

from tiny_configs import TASK

K = 4


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """An untrained one-layer GPT: its samples are varied nonsense, which is all collect needs."""
    task = get_task("arithmetic", max_operand=9, max_test=20)
    tok = task.build_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=1, n_head=2, n_embd=32))
    folder = tmp_path_factory.mktemp("policy") / "model"
    save_model(folder, model, tok, task.template(), meta={"task": {"name": TASK.name, "args": TASK.args}})
    return folder


def digit_score(prompt, response):
    """A graded stand-in score in [0, 1]: the number of digits in the response, a third each."""
    return min(1.0, sum(c.isdigit() for c in response) / 3)


def expected_strength(gap):
    """The documented strength labels: slight below 0.15, strong below 0.35, very strong from 0.35."""
    return "slight" if gap < 0.15 else "strong" if gap < 0.35 else "very strong"


def cfg_for(policy, out, **kw):
    base = dict(policy=str(policy), out=str(out), n_prompts=12, n_test_prompts=6, k=K, device="cpu", seed=3)
    base.update(kw)
    return CollectConfig(**base)


def test_rows_match_an_independent_enumeration_of_the_sampled_pairs(policy, tmp_path, monkeypatch):
    monkeypatch.setattr(ArithmeticTask, "score", lambda self, p, r: digit_score(p, r))
    summary = collect(cfg_for(policy, tmp_path, judge="heuristic"))
    task = get_task("arithmetic", max_operand=9, max_test=20)
    for split in ("train", "test"):
        samples = [json.loads(line) for line in open(tmp_path / f"{split}_samples.jsonl")]
        assert len(samples) == (12 if split == "train" else 6)
        assert all(s["prompt"] in task.prompts(split) for s in samples)
        expected, n = [], {"ties": 0, "identical": 0, "empty": 0}
        for s in samples:
            assert len(s["responses"]) == K
            resp = s["responses"]
            for i in range(K):
                for j in range(i + 1, K):
                    a, b = resp[i], resp[j]
                    if a == "" or b == "":
                        n["empty"] += 1
                    elif a == b:
                        n["identical"] += 1
                    elif digit_score(s["prompt"], a) == digit_score(s["prompt"], b):
                        n["ties"] += 1
                    else:
                        sa, sb = digit_score(s["prompt"], a), digit_score(s["prompt"], b)
                        chosen, rejected = (a, b) if sa > sb else (b, a)
                        expected.append({"prompt": s["prompt"], "chosen": chosen, "rejected": rejected,
                                         "prob": 1.0, "strength": expected_strength(abs(sa - sb)), "tie": False})
        written = [json.loads(line) for line in open(tmp_path / f"{split}.jsonl")]
        assert written == expected
        loaded = load_preferences(tmp_path / f"{split}.jsonl")  # the loader accepts every row
        assert len(loaded) == len(expected)
        assert [r["strength"] for r in loaded] == [{"slight": 1.0, "strong": 2.0, "very strong": 3.0}[e["strength"]]
                                                   for e in expected]
        got = summary[split]
        assert got["pairs"] == len(samples) * K * (K - 1) // 2
        assert got["rows"] == got["pairs"] - got["ties"] - got["identical"] - got["empty"] == len(expected)
        assert (got["ties"], got["identical"], got["empty"]) == (n["ties"], n["identical"], n["empty"])
    assert summary["train"]["rows"] > 0 and summary["train"]["ties"] > 0  # both branches exercised

    rankings = load_rankings(tmp_path / "train_rankings.jsonl")
    samples = [json.loads(line) for line in open(tmp_path / "train_samples.jsonl")]
    expected_rankings = []
    for s in samples:
        first_of_score = {}
        for r in s["responses"]:
            if r:
                first_of_score.setdefault(digit_score(s["prompt"], r), r)
        if len(first_of_score) >= 2:
            expected_rankings.append({"prompt": s["prompt"],
                                      "responses": [first_of_score[v] for v in sorted(first_of_score, reverse=True)]})
    assert rankings == expected_rankings and rankings
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["train"] == summary["train"] and on_disk["policy"] == str(policy)


def test_samples_are_diverse_and_the_run_is_deterministic_given_the_seed(policy, tmp_path):
    collect(cfg_for(policy, tmp_path / "a"))
    collect(cfg_for(policy, tmp_path / "b"))
    collect(cfg_for(policy, tmp_path / "c", seed=4))
    read = lambda name, f: (tmp_path / name / f).read_bytes()
    for f in ("train.jsonl", "test.jsonl", "train_samples.jsonl", "train_rankings.jsonl", "test_samples.jsonl"):
        assert read("a", f) == read("b", f)
    assert read("a", "train_samples.jsonl") != read("c", "train_samples.jsonl")
    samples = [json.loads(line) for line in open(tmp_path / "a" / "train_samples.jsonl")]
    assert sum(len(set(s["responses"])) for s in samples) > len(samples)  # K samples of a prompt differ
    # the held-out samples have a generator of their own: more training prompts leave them alone
    collect(cfg_for(policy, tmp_path / "d", n_prompts=5))
    assert read("a", "test_samples.jsonl") == read("d", "test_samples.jsonl")
    assert read("a", "train_samples.jsonl") != read("d", "train_samples.jsonl")


def test_counts_with_empty_identical_and_tied_responses_and_both_tie_policies():
    judge = ScoreJudge(lambda p, r: float(len(r)))
    responses = ["1", "22", "33", "22", ""]  # K = 5: 10 pairs
    # pairs: 4 with the empty response; ("22", "22") identical; ("22", "33") and ("33", "22") ties;
    # ("1", x) for x in "22", "33", "22": 3 decided.
    for policy, n_rows in (("drop", 3), ("half", 5)):
        rows, counts, prefs = judge_prompt("p", responses, judge, policy)
        assert counts == {"pairs": 10, "empty": 4, "identical": 1, "ties": 2, "rows": n_rows}
        assert len(prefs) == 10 - 4 - 1
        ties = [r for r in rows if r["tie"]]
        assert [(r["chosen"], r["rejected"]) for r in ties] == ([("22", "33"), ("33", "22")] if policy == "half" else [])
        assert all(r["prob"] == 0.5 for r in ties)
        decided = [r for r in rows if not r["tie"]]
        assert [(r["chosen"], r["rejected"], r["prob"], r["strength"]) for r in decided] == \
            [("22", "1", 1.0, "very strong"), ("33", "1", 1.0, "very strong"), ("22", "1", 1.0, "very strong")]


def balanced_panel(flip_prob, n_annotators, n_items=2000, seed=0):
    """n_items pairs; the base judge prefers the first response for even items and the second for
    odd ones, so each category gets half the base labels."""
    base = ScoreJudge(lambda p, r: float(len(r)) * (1 if int(p) % 2 == 0 else -1))
    judge = NoisyJudge(base, flip_prob, n_annotators, seed=seed)
    rows, prefs = [], []
    for i in range(n_items):
        r, _, p = judge_prompt(str(i), ["xx", "y"], judge, "half")
        rows += r
        prefs += p
    return rows, prefs


@pytest.mark.parametrize("flip_prob", [0.0, 0.2, 0.5])
def test_noisy_panel_prob_is_the_vote_share_and_kappa_matches_its_closed_form(flip_prob):
    n = 5
    rows, prefs = balanced_panel(flip_prob, n)
    assert len(rows) == len(prefs) == 2000  # n odd: no panel tie
    for row in rows:
        assert len(row["votes"]) == n
        assert row["prob"] == row["votes"].count("chosen") / n >= 0.5
    kappa = panel_kappa(prefs)
    assert -1.0 <= kappa <= 1.0
    # Each annotator keeps the base label with prob 1 - f, independently. Two annotators agree with
    # probability (1-f)^2 + f^2 (the expected P_i); the categories are balanced, so P_e = 1/2 and
    # kappa = ((1-f)^2 + f^2 - 1/2) / (1/2) = (1 - 2f)^2.
    assert kappa == pytest.approx((1 - 2 * flip_prob) ** 2, abs=0.04)
    if flip_prob == 0.0:
        assert kappa == 1.0 and all(r["prob"] == 1.0 for r in rows)


def test_kappa_is_reported_for_a_panel_and_absent_for_one_judge(policy, tmp_path, monkeypatch):
    monkeypatch.setattr(ArithmeticTask, "score", lambda self, p, r: digit_score(p, r))
    summary = collect(cfg_for(policy, tmp_path / "one", judge="noisy", n_annotators=1))
    assert summary["train"]["kappa"] is None  # one annotator: no agreement to measure
    summary = collect(cfg_for(policy, tmp_path / "panel", judge="noisy", n_annotators=4, flip_prob=0.3,
                              tie_policy="half"))
    assert -1.0 <= summary["train"]["kappa"] < 1.0
    rows = [json.loads(line) for line in open(tmp_path / "panel" / "train.jsonl")]
    assert rows and any(0.5 < r["prob"] < 1.0 for r in rows)
    for row in rows:
        # the vote share; a tie vote counts half (the base judge's ties are every annotator's)
        assert row["prob"] == (row["votes"].count("chosen") + row["votes"].count("tie") / 2) / 4
        assert row["tie"] == (row["prob"] == 0.5)
    assert len(load_preferences(tmp_path / "panel" / "train.jsonl")) == len(rows)


@pytest.mark.parametrize("bad, field", [(dict(k=1), "k"), (dict(temperature=0.0), "temperature"),
                                        (dict(judge="gold", n_annotators=3), "n_annotators")])
def test_bad_settings_are_refused_by_name(policy, tmp_path, bad, field):
    with pytest.raises(ValueError, match=field):
        collect(cfg_for(policy, tmp_path, **bad))


def test_the_collect_command(policy, tmp_path):
    out = tmp_path / "cli"
    assert cli_main(["collect", "--policy", str(policy), "--out", str(out), "--n-prompts", "5",
                     "--n-test-prompts", "3", "--k", "3", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["prompts"] == 5 and summary["test"]["pairs"] == 3 * 3


def test_the_summary_line_speaks_of_correct_answers_only_for_a_0_1_check():
    from minirlhf.trainers.collect import score_shares

    shares = {"share_prompts_with_correct": 0.25, "share_prompts_with_wrong": 1.0}
    assert score_shares({**shares, "binary_scores": True}, 0.5) == "correct in 25% / wrong in 100% of prompts"
    graded = score_shares({**shares, "binary_scores": False}, 0.5)
    assert graded == "a sample scoring >= 0.5 in 25% / below it in 100% of prompts"
    assert "correct" not in graded and "wrong" not in graded
