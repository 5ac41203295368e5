"""The jsonl task: your own demonstrations and prompts in any layout minirlhf.data reads, a held-out
split, and the three judges (heuristic, exact match against a reference, a reward model folder)."""
import json
import math

import pytest
import torch

from minirlhf.data import DataError
from minirlhf.tasks import get_task
from minirlhf.tasks.instruct import judge_score
from minirlhf.tasks.jsonl import normalize_answer


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


QA = [(f"What is {a} plus {b}?", f"{a + b}") for a in range(4) for b in range(5)]  # 20 distinct prompts


def test_the_three_sft_layouts_read_alike(tmp_path):
    plain = write(tmp_path / "a.jsonl", [{"prompt": "Name a color.", "response": "Blue."}, {"prompt": "Hi", "response": "Hello"}])
    dolly = write(tmp_path / "b.jsonl", [
        {"instruction": "Name a color.", "context": "", "response": "Blue.", "category": "open_qa"},
        {"instruction": "Summarise.", "context": "Rain falls.", "response": "It rains."}])
    completion = write(tmp_path / "c.jsonl", [{"prompt": "Name a color.", "completion": "Blue."}, {"prompt": "Hi", "completion": "Hello"}])
    rows = {name: get_task("jsonl", sft=path, holdout=0.5) for name, path in
            (("plain", plain), ("dolly", dolly), ("completion", completion))}
    every = lambda t: t.sft_rows("train") + t.sft_rows("test")  # noqa: E731
    assert sorted(map(str, every(rows["plain"]))) == sorted(map(str, every(rows["completion"])))
    assert {"prompt": "Summarise.\n\nRain falls.", "response": "It rains."} in every(rows["dolly"])
    assert {"prompt": "Name a color.", "response": "Blue."} in every(rows["dolly"])


def test_the_held_out_split_is_disjoint_repeatable_and_keeps_its_references(tmp_path):
    path = write(tmp_path / "qa.jsonl", [{"prompt": p, "response": r} for p, r in QA])
    t = get_task("jsonl", sft=path, holdout=0.25, judge="reference")
    train, test = t.prompts("train"), t.prompts("test")
    assert len(test) == 5 and len(train) == 15 and not set(train) & set(test)
    assert {r["prompt"] for r in t.sft_rows("train")} == set(train)
    assert [r["prompt"] for r in t.sft_rows("test")] == test
    assert all(t.reference(p) == dict(QA)[p] for p in test)
    assert get_task("jsonl", sft=path, holdout=0.25).prompts("test") == test  # the same seed, the same split
    assert get_task("jsonl", sft=path, holdout=0.25, seed=1).prompts("test") != test
    assert t.metric(test, [dict(QA)[p] for p in test]) == {"score": 1.0, "rouge_l": 1.0}


def test_prompt_files_give_the_splits_and_must_be_disjoint(tmp_path):
    sft = write(tmp_path / "sft.jsonl", [{"prompt": p, "response": r} for p, r in QA[:10]])
    train = write(tmp_path / "train.jsonl", [{"prompt": p} for p, _ in QA[:12]])  # two without demonstrations
    test = write(tmp_path / "test.jsonl", [{"instruction": p, "response": r} for p, r in QA[15:]]  # Dolly rows
                 + [{"prompt": "What is ten plus one?"}])  # no reference
    t = get_task("jsonl", sft=sft, train_prompts=train, test_prompts=test)
    assert t.prompts("train") == [p for p, _ in QA[:12]] and len(t.sft_rows("train")) == 10
    assert t.prompts("test")[-1] == "What is ten plus one?" and len(t.sft_rows("test")) == 5
    assert t.reference(QA[16][0]) == QA[16][1] and t.reference("What is ten plus one?") is None
    with pytest.raises(ValueError, match=r"test.jsonl: judge=reference needs a reference.*1 have none.*ten plus one"):
        get_task("jsonl", sft=sft, test_prompts=test, judge="reference")
    with pytest.raises(ValueError, match=r"train.jsonl: judge=reference .* 2 have none"):
        get_task("jsonl", sft=sft, train_prompts=train, test_prompts=write(tmp_path / "t2.jsonl", [{"prompt": "x", "reference": "y"}]),
                 judge="reference")
    clash = write(tmp_path / "clash.jsonl", [{"prompt": QA[3][0]}])
    with pytest.raises(ValueError, match=r"clash.jsonl: 1 held-out prompt\(s\) also occur in the training data"):
        get_task("jsonl", sft=sft, test_prompts=clash)


def test_bad_rows_and_files_are_named(tmp_path):
    bad = write(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, "", {"prompt": "c", "response": 3}])
    with pytest.raises(DataError, match=r'bad.jsonl:3: field "response": expected a non-empty string, got 3'):
        get_task("jsonl", sft=bad)
    good = write(tmp_path / "good.jsonl", [{"prompt": p, "response": r} for p, r in QA])
    badp = write(tmp_path / "badp.jsonl", [{"prompt": "x"}, "{not json"])
    with pytest.raises(DataError, match=r"badp.jsonl:2: invalid JSON"):
        get_task("jsonl", sft=good, test_prompts=badp)
    two = write(tmp_path / "two.jsonl", [{"prompt": "x", "reference": "a", "response": "b"}])
    with pytest.raises(DataError, match=r'two.jsonl:1: field "response": both "reference" and "response"'):
        get_task("jsonl", sft=good, test_prompts=two)
    with pytest.raises(FileNotFoundError, match=r"nope.jsonl: not found \(task option sft=PATH"):
        get_task("jsonl", sft=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="judge: expected one of heuristic, reference, rm:PATH"):
        get_task("jsonl", sft=good, judge="gpt4")


def test_max_rows_and_max_prompt_chars_trim_the_data(tmp_path):
    rows = [{"prompt": p, "response": r} for p, r in QA] + [{"prompt": "x" * 500, "response": "long"}]
    path = write(tmp_path / "qa.jsonl", rows)
    t = get_task("jsonl", sft=path, max_prompt_chars=100)
    assert all(len(p) <= 100 for p in t.prompts("train") + t.prompts("test"))
    t = get_task("jsonl", sft=path, max_response_chars=1)
    assert {r["response"] for r in t.sft_rows("train")} <= set("0123456789")
    t = get_task("jsonl", sft=path, max_rows=10)
    assert len(t.prompts("train")) + len(t.prompts("test")) == 10


def test_reference_judge_ignores_case_spacing_and_a_final_stop():
    assert normalize_answer("  The capital is  PARIS. ") == normalize_answer("the capital is paris") == "the capital is paris"
    assert normalize_answer("Paris?!") == "paris" and normalize_answer("4.5") == "4.5"


def test_reference_judge_accepts_any_reference_and_heuristic_is_the_instruct_judge(tmp_path):
    path = write(tmp_path / "qa.jsonl", [{"prompt": "Name a primary color.", "response": "Red"},
                                         {"prompt": "Name a primary color.", "response": "Blue"}]
                 + [{"prompt": p, "response": r} for p, r in QA])
    t = get_task("jsonl", sft=path, judge="reference", test_prompts=write(tmp_path / "t.jsonl", [{"prompt": "Q?", "reference": "A"}]))
    p = "Name a primary color."
    assert t.score(p, "red.") == t.score(p, " BLUE ") == 1.0 and t.score(p, "Green") == 0.0
    h = get_task("jsonl", sft=path)
    answer = "Imagine red paint, like a fire truck! Isn't red a fun color for you to picture?"
    assert h.score(p, answer) == judge_score(p, answer) > 0.3
    m = h.metric([p, p], [answer, "red"])
    assert m["score"] == pytest.approx((judge_score(p, answer) + judge_score(p, "red")) / 2) and "judge/topic" in m


def test_reward_model_judge_is_the_sigmoid_of_the_normalised_reward(tmp_path):
    from minirlhf.heads import RewardModel
    from minirlhf.model import GPT, GPTConfig
    from minirlhf.saving import save_model
    from minirlhf.tokenizer import CharTokenizer, PlainTemplate

    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz ?.")
    torch.manual_seed(0)
    rm = RewardModel(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16)))
    rm.reward_mean.fill_(0.3)
    rm.reward_std.fill_(0.5)
    save_model(tmp_path / "rm", rm, tok, "plain")
    path = write(tmp_path / "s.jsonl", [{"prompt": "what is a cat?", "response": "a pet."},
                                        {"prompt": "why?", "response": "because."}])
    t = get_task("jsonl", sft=path, judge=f"rm:{tmp_path / 'rm'}", holdout=0.5)
    pairs = [("what is a cat?", "a small pet."), ("why?", "no"), ("why?", "because it is " * 4)]  # the last one is cut
    for p, r in pairs:
        ids, _ = PlainTemplate().encode(tok, p, r)  # BOS prompt response EOS, as the reward model was trained
        ids = ids[:1] + ids[len(ids) - 48 + 1:] if len(ids) > 48 else ids
        with torch.no_grad():
            raw = float(rm.score(torch.tensor([ids])))
        want = 1 / (1 + math.exp(-(raw - 0.3) / 0.5))
        assert t.score(p, r) == pytest.approx(want, abs=1e-6)
    m = t.metric([p for p, _ in pairs], [r for _, r in pairs])
    assert m["score"] == pytest.approx(sum(t.score(p, r) for p, r in pairs) / 3, abs=1e-6) and "reward" in m
