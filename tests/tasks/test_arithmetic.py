"""The arithmetic task, checked against direct definitions and exact counts."""
import math
import random

import pytest

from minirlhf.tasks.arithmetic import (ALPHABET, ArithmeticConfig, ArithmeticTask, answer,
                                       forgotten_answer, format_prompt, needs_carry_or_borrow,
                                       parse_answer, parse_prompt)


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask()


# ---- independent column arithmetic (digit strings, school method) ------------------------
def column_add(a: int, b: int, forget_units_carry: bool = False) -> tuple[int, bool]:
    """Right-to-left digit addition; returns (result, did the units column carry)."""
    da, db = str(a)[::-1], str(b)[::-1]
    out, carry, units_carry = [], 0, False
    for i in range(max(len(da), len(db))):
        s = (int(da[i]) if i < len(da) else 0) + (int(db[i]) if i < len(db) else 0) + carry
        out.append(s % 10)
        carry = s // 10
        if i == 0:
            units_carry = carry == 1
            if forget_units_carry:
                carry = 0
    if carry:
        out.append(carry)
    return int("".join(map(str, out[::-1]))), units_carry


def column_sub(a: int, b: int, forget_units_borrow: bool = False) -> tuple[int, bool]:
    """Right-to-left digit subtraction (a >= b); returns (result, did the units borrow)."""
    da, db = str(a)[::-1], str(b)[::-1]
    out, borrow, units_borrow = [], 0, False
    for i in range(len(da)):
        d = int(da[i]) - borrow - (int(db[i]) if i < len(db) else 0)
        borrow = 1 if d < 0 else 0
        out.append(d + 10 * borrow)
        if i == 0:
            units_borrow = borrow == 1
            if forget_units_borrow:
                borrow = 0
    return int("".join(map(str, out[::-1]))), units_borrow


def test_column_helpers_agree_with_python():
    for a in range(0, 200, 7):
        for b in range(0, 200, 3):
            assert column_add(a, b)[0] == a + b
            if a >= b:
                assert column_sub(a, b)[0] == a - b


def test_needs_carry_or_borrow_matches_column_arithmetic_by_enumeration():
    for a in range(200):
        for b in range(200):
            assert needs_carry_or_borrow(a, "+", b) == column_add(a, b)[1]
            # and the tens-digit form: a carry moves the tens of the sum
            assert needs_carry_or_borrow(a, "+", b) == ((a + b) // 10 != a // 10 + b // 10)
            if a >= b:
                assert needs_carry_or_borrow(a, "-", b) == column_sub(a, b)[1]
                assert needs_carry_or_borrow(a, "-", b) == ((a - b) // 10 != a // 10 - b // 10)


def test_forgotten_answer_is_column_arithmetic_without_the_units_carry():
    assert forgotten_answer(27, "+", 15) == 32 and forgotten_answer(42, "-", 15) == 37
    assert forgotten_answer(55, "+", 55) == 100 and forgotten_answer(99, "+", 1) == 90
    for a in range(200):
        for b in range(200):
            if needs_carry_or_borrow(a, "+", b):
                assert forgotten_answer(a, "+", b) == column_add(a, b, forget_units_carry=True)[0]
                assert forgotten_answer(a, "+", b) != a + b
            if a >= b and needs_carry_or_borrow(a, "-", b):
                assert forgotten_answer(a, "-", b) == column_sub(a, b, forget_units_borrow=True)[0]
                assert forgotten_answer(a, "-", b) >= 0
    with pytest.raises(ValueError, match="no carry"):
        forgotten_answer(21, "+", 13)


def test_question_set_size_is_the_closed_form():
    for n in (1, 9, 99):
        t = ArithmeticTask(max_operand=n)
        qs = t.all_questions()
        assert len(qs) == (n + 1) ** 2 + (n + 1) * (n + 2) // 2
        assert len(set(qs)) == len(qs)
        assert all(a >= b for a, op, b in qs if op == "-")
        assert max(max(a, b) for a, _, b in qs) == n


def test_split_is_disjoint_complete_and_deterministic(task):
    train, held = task.questions("train"), task.held_out_questions()
    n = len(task.all_questions())
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(task.all_questions())
    assert len(held) == round(0.1 * n)
    test = task.questions("test")
    assert len(test) == 300 and set(test) <= set(held)
    again = ArithmeticTask()
    assert again.questions("train") == train and again.questions("test") == test
    assert ArithmeticTask(seed=1).questions("test") != test
    assert not set(task.prompts("train")) & set(task.prompts("test"))


def test_max_test_cap_does_not_change_the_training_set(task):
    uncapped = ArithmeticTask(max_test=None)
    assert uncapped.questions("train") == task.questions("train")
    assert uncapped.questions("test") == task.held_out_questions()
    assert uncapped.sft_rows("train") == task.sft_rows("train")


def test_every_demonstration_is_correct_or_exactly_the_forgotten_answer(task):
    rows = task.sft_rows("train")
    assert len(rows) == 2 * len(task.questions("train"))
    for row in rows:
        a, op, b = parse_prompt(row["prompt"])
        assert row["response"] == " " + row["response"].strip()
        got = int(row["response"])
        if needs_carry_or_borrow(a, op, b):
            assert got in (a + b if op == "+" else a - b, forgotten_answer(a, op, b))
        else:  # questions without carry/borrow are always demonstrated correctly
            assert got == answer(a, op, b)


@pytest.mark.parametrize("rate", [0.7, 0.3, 0.0, 1.0])
def test_mistake_share_on_carry_questions_is_mistake_rate(rate):
    t = ArithmeticTask(mistake_rate=rate, max_operand=49)
    n = wrong = 0
    for row in t.sft_rows("train"):
        q = parse_prompt(row["prompt"])
        if needs_carry_or_borrow(*q):
            n += 1
            wrong += int(row["response"]) != answer(*q)
    # each carry demonstration is an independent Bernoulli(rate): 5 standard deviations
    assert n > 2000
    assert abs(wrong / n - rate) <= 5 * math.sqrt(rate * (1 - rate) / n) + 1e-12


def test_demonstrations_are_seeded():
    assert ArithmeticTask(seed=3).sft_rows() == ArithmeticTask(seed=3).sft_rows()
    assert ArithmeticTask(seed=3).sft_rows() != ArithmeticTask(seed=4).sft_rows()
    test_rows = ArithmeticTask().sft_rows("test")
    assert [r["prompt"] for r in test_rows[::2]] == ArithmeticTask().prompts("test")


@pytest.mark.parametrize("response, expected", [
    (" 42", 42), ("42", 42), (" 4", 4), (" 42x", 42), ("", None), (" ", None), ("x42", None),
    (" 42\nQ: 1+1=", 42), ("\n 42 ", 42), (" 4 2", 4), (" -42", None), (" 042", 42),
])
def test_parse_answer(response, expected):
    assert parse_answer(response) == expected


@pytest.mark.parametrize("response, expected", [
    (" 42", 1.0), ("42", 1.0), (" 4", 0.0), (" 42x", 1.0), ("", 0.0), (" 32", 0.0),
    (" 420", 0.0), (" 4 2", 0.0),
])
def test_score(task, response, expected):
    assert task.score("Q: 27+15=\nA:", response) == expected


def test_prompt_format_round_trip_and_errors(task):
    assert format_prompt(27, "+", 15) == "Q: 27+15=\nA:"
    assert parse_prompt("Q: 42-15=\nA:") == (42, "-", 15)
    assert task.reference("Q: 42-15=\nA:") == " 27"
    for bad in ("27+15=", "Q: 27*15=\nA:", "Q: 27+15=\nA: 42"):
        with pytest.raises(ValueError, match="prompt"):
            task.score(bad, " 42")


def test_ceiling_accuracy_by_direct_count(task):
    for split in ("train", "test"):
        qs = task.questions(split)
        direct = sum(column_add(a, b)[1] is False if op == "+" else column_sub(a, b)[1] is False
                     for a, op, b in qs) / len(qs)
        assert task.ceiling_accuracy(split) == pytest.approx(direct, abs=1e-12)


def test_ceiling_accuracy_over_all_questions_is_the_closed_form():
    # Addition over 0..99: units pairs (u, v) with u + v <= 9 number 55 of 100.
    # Subtraction over a >= b: a borrow needs u_a < u_b and tens t_a > t_b: 45 * 45 = 2025
    # of the 5050 questions, leaving 3025 without a borrow.
    for ops, expected in ((("+",), 55 / 100), (("-",), 3025 / 5050),
                          (("+", "-"), (5500 + 3025) / 15050)):
        t = ArithmeticTask(ops=ops, max_test=None)
        n_train, n_test = len(t.questions("train")), len(t.questions("test"))
        pooled = (t.ceiling_accuracy("train") * n_train + t.ceiling_accuracy("test") * n_test)
        assert pooled / (n_train + n_test) == pytest.approx(expected, abs=1e-12)


def test_metric(task):
    prompts = task.prompts("test")
    gold = [task.reference(p) for p in prompts]
    assert task.metric(prompts, gold)["accuracy"] == 1.0
    # the habit planted by the demonstrations: every carry/borrow question answered wrong
    habit = [" %d" % forgotten_answer(*parse_prompt(p)) if needs_carry_or_borrow(*parse_prompt(p))
             else g for p, g in zip(prompts, gold)]
    m = task.metric(prompts, habit)
    assert m["accuracy"] == pytest.approx(task.ceiling_accuracy("test"))
    assert m["accuracy/carry"] == 0.0 and m["accuracy/no_carry"] == 1.0
    with pytest.raises(ValueError, match="as many responses"):
        task.metric(prompts, gold[:-1])
    with pytest.raises(ValueError, match="at least one"):
        task.metric([], [])


def test_pretrain_text_holds_only_correct_training_facts(task):
    text = task.pretrain_text()
    assert set(text) <= set(ALPHABET)
    lines = text.splitlines()
    assert len(lines) == len(task.questions("train"))
    facts = set()
    for line in lines:
        lhs, rhs = line.split("=")
        op = "+" if "+" in lhs else "-"
        a, b = map(int, lhs.split(op))
        assert int(rhs) == (a + b if op == "+" else a - b)
        facts.add((a, op, b))
    assert facts == set(task.questions("train"))
    assert not facts & set(task.held_out_questions())
    assert len(ArithmeticTask(pretrain_repeats=3).pretrain_text().splitlines()) == 3 * len(lines)
    with_held = ArithmeticTask(pretrain_held_out=True).pretrain_text().splitlines()
    assert len(with_held) == len(task.all_questions())


def test_qa_pretrain_format_writes_gold_prompt_response_pairs(task):
    text = ArithmeticTask(pretrain_format="qa").pretrain_text()
    assert set(text) <= set(ALPHABET)
    lines = text.splitlines()
    assert len(lines) == 2 * len(task.questions("train"))
    seen = set()
    for q_line, a_line in zip(lines[::2], lines[1::2]):
        prompt = q_line + "\n" + a_line[:2]          # "Q: 27+15=" + "\n" + "A:"
        a, op, b = parse_prompt(prompt)
        assert a_line[2:] == " %d" % (a + b if op == "+" else a - b)
        seen.add((a, op, b))
    assert seen == set(task.questions("train"))
    with pytest.raises(ValueError, match="pretrain_format"):
        ArithmeticConfig(pretrain_format="csv")


def test_prompts_and_responses_use_the_alphabet(task):
    rows = task.sft_rows("train")[:500]
    assert all(set(r["prompt"] + r["response"]) <= set(ALPHABET) for r in rows)
    assert task.max_response_tokens == len(" 198") + 1
    assert ArithmeticTask(max_operand=9).max_response_tokens == len(" 18") + 1


@pytest.mark.parametrize("field, value", [
    ("max_operand", 0), ("ops", ("*",)), ("test_fraction", 1.0), ("max_test", 0),
    ("mistake_rate", 1.5), ("demos_per_question", 0), ("pretrain_repeats", 0),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ArithmeticConfig(**{field: value})


def test_unknown_config_field():
    with pytest.raises(ValueError, match="max_operan"):
        ArithmeticTask(max_operan=9)


def test_config_object_and_overrides():
    t = ArithmeticTask(ArithmeticConfig(max_operand=9), mistake_rate=0.0)
    assert t.config.max_operand == 9 and t.config.mistake_rate == 0.0
    assert all(r["response"] == t.reference(r["prompt"]) for r in t.sft_rows())


def test_tokenizer_round_trip(task):
    pytest.importorskip("minirlhf.tokenizer")
    tok = task.build_tokenizer()
    rng = random.Random(0)
    for row in rng.sample(task.sft_rows(), 50):
        text = row["prompt"] + row["response"]
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode(task.pretrain_text()[:200]) == task.build_tokenizer().encode(
        task.pretrain_text()[:200])
