"""Two-operand addition and subtraction with a verifiable answer, and a planted bad habit.

Prompts and responses (the plain template appends EOS):

    prompt   "Q: 27+15=\\nA:"        response " 42"
    prompt   "Q: 42-15=\\nA:"        response " 27"       (a >= b: no negative answers)

Operands run over 0..max_operand, so the whole question set is enumerable:
(n+1)^2 additions and (n+1)(n+2)/2 subtractions for n = max_operand (15,050 for n = 99).

Why this task is interesting for RLHF. The pretraining text holds only correct facts
("27+15=42"), so the base model learns arithmetic. The SFT demonstrations then plant a
habit that maximum likelihood cannot average out: on a question whose units column needs
a carry (27+15) or a borrow (42-15), a demonstration forgets it (27+15 -> 32, 42-15 -> 37)
with probability `mistake_rate` (default 0.7), and is correct otherwise. With
mistake_rate > 0.5 the most likely answer after SFT is the wrong one, so greedy decoding
gets every carry/borrow question wrong, while sampling still finds the right answer about
(1 - mistake_rate) of the time. That is exactly the situation where a verifiable reward
(`score`) plus PPO / GRPO / DPO can improve on SFT; `ceiling_accuracy(split)` is the share
of questions without carry/borrow: the best greedy SFT accuracy in this regime.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from minirlhf.tasks.base import Task, check_generations, check_split, config_from_kwargs

OPS = ("+", "-")
PRETRAIN_FORMATS = ("plain", "qa")
# Every character the prompts, responses and pretraining text use, in sorted order.
ALPHABET = "".join(sorted(set("0123456789+-=:QA \n")))

_PROMPT_RE = re.compile(r"Q: (\d+)([+-])(\d+)=\nA:")
_ANSWER_RE = re.compile(r"\d+")


# ----------------------------------------------------------------------------------------
# the arithmetic itself
# ----------------------------------------------------------------------------------------
def _check_question(a: int, op: str, b: int) -> None:
    if op not in OPS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    if not (isinstance(a, int) and isinstance(b, int)) or a < 0 or b < 0:
        raise ValueError(f"operands: expected non-negative integers, got a={a!r}, b={b!r}")


def answer(a: int, op: str, b: int) -> int:
    """The correct answer: a + b or a - b."""
    _check_question(a, op, b)
    return a + b if op == "+" else a - b


def needs_carry_or_borrow(a: int, op: str, b: int) -> bool:
    """Does the units column need a carry (addition) or a borrow (subtraction)?

    carry  (a + b):  (a mod 10) + (b mod 10) >= 10
    borrow (a - b):  (a mod 10) <  (b mod 10)
    """
    _check_question(a, op, b)
    if op == "+":
        return a % 10 + b % 10 >= 10
    return a % 10 < b % 10


def forgotten_answer(a: int, op: str, b: int) -> int:
    """The answer of someone who forgets the units column's carry or borrow.

    Column addition writes (a0 + b0) - 10 in the units and should carry 1 into the tens;
    forgetting it loses exactly ten:        27 + 15 -> 42 - 10 = 32.
    Column subtraction writes (a0 + 10) - b0 in the units and should take 1 from the tens;
    forgetting it leaves ten too many:      42 - 15 -> 27 + 10 = 37.
    Only the units column is affected; any later carry (55 + 55 -> 100) is done right.
    """
    if not needs_carry_or_borrow(a, op, b):
        raise ValueError(f"{a}{op}{b} needs no carry or borrow; there is nothing to forget")
    return answer(a, op, b) - 10 if op == "+" else answer(a, op, b) + 10


def format_prompt(a: int, op: str, b: int) -> str:
    """"Q: {a}{op}{b}=\\nA:"."""
    _check_question(a, op, b)
    return f"Q: {a}{op}{b}=\nA:"


def parse_prompt(prompt: str) -> tuple[int, str, int]:
    """Inverse of format_prompt: "Q: 27+15=\\nA:" -> (27, "+", 15)."""
    m = _PROMPT_RE.fullmatch(prompt)
    if m is None:
        raise ValueError(f"prompt: expected the form 'Q: {{a}}+{{b}}=\\nA:' or "
                         f"'Q: {{a}}-{{b}}=\\nA:', got {prompt!r}")
    return int(m.group(1)), m.group(2), int(m.group(3))


def format_response(value: int) -> str:
    """" {value}": a leading space, then the digits."""
    return f" {value}"


def parse_answer(response: str) -> int | None:
    """Read the answer from a generated response.

    Leading whitespace is skipped, then the maximal run of digits is read; reading stops at
    the first character that cannot be part of the answer. " 42" -> 42, "42" -> 42,
    " 42x" -> 42, " 42\\nQ: 1+1=" -> 42; no digits first ("", " x42") -> None.
    """
    m = _ANSWER_RE.match(response.lstrip())
    return int(m.group(0)) if m else None


def fact_line(a: int, op: str, b: int, fmt: str = "plain") -> str:
    """A correct fact: "27+15=42" (fmt="plain") or "Q: 27+15=\\nA: 42" (fmt="qa")."""
    if fmt == "plain":
        return f"{a}{op}{b}={answer(a, op, b)}"
    if fmt == "qa":
        return format_prompt(a, op, b) + format_response(answer(a, op, b))
    raise ValueError(f"pretrain_format: expected one of {PRETRAIN_FORMATS}, got {fmt!r}")


# ----------------------------------------------------------------------------------------
# the task
# ----------------------------------------------------------------------------------------
@dataclass
class ArithmeticConfig:
    """Configuration of ArithmeticTask; the defaults run.

    max_operand: operands range over 0..max_operand (both ends included).
    ops: which operations to ask, a subset of ("+", "-").
    test_fraction: share of all questions held out from training (and from pretraining).
    max_test: cap on the size of the evaluated held-out set (None: no cap). The cap only
        shortens evaluation; held-out questions beyond it are still kept out of training,
        so changing max_test never changes the training data.
    mistake_rate: probability that a demonstration of a carry/borrow question forgets it.
    demos_per_question: demonstrations per question, each drawn independently.
    pretrain_repeats: passes over the training facts in pretrain_text(), each reshuffled.
    pretrain_held_out: also write the held-out questions' facts into the pretraining text.
    pretrain_format: "plain" writes facts as "27+15=42"; "qa" writes them in the prompt
        format, "Q: 27+15=\nA: 42", so the base model already knows the question layout
        (about 2.2x the characters).
    seed: seeds the split, the demonstrations and the order of the pretraining text.
    """

    max_operand: int = 99
    ops: tuple[str, ...] = OPS
    test_fraction: float = 0.1
    max_test: int | None = 300
    mistake_rate: float = 0.7
    demos_per_question: int = 2
    pretrain_repeats: int = 1
    pretrain_held_out: bool = False
    pretrain_format: str = "plain"
    seed: int = 0

    def __post_init__(self):
        self.ops = tuple(self.ops)
        if not isinstance(self.max_operand, int) or self.max_operand < 1:
            raise ValueError(f"max_operand: expected an integer >= 1, got {self.max_operand!r}")
        if not self.ops or any(op not in OPS for op in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops: expected a non-empty subset of {OPS}, got {self.ops!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction: expected a number in (0, 1), got {self.test_fraction!r}")
        if self.max_test is not None and (not isinstance(self.max_test, int) or self.max_test < 1):
            raise ValueError(f"max_test: expected None or an integer >= 1, got {self.max_test!r}")
        if not 0.0 <= self.mistake_rate <= 1.0:
            raise ValueError(f"mistake_rate: expected a probability in [0, 1], got {self.mistake_rate!r}")
        if not isinstance(self.demos_per_question, int) or self.demos_per_question < 1:
            raise ValueError(f"demos_per_question: expected an integer >= 1, "
                             f"got {self.demos_per_question!r}")
        if not isinstance(self.pretrain_repeats, int) or self.pretrain_repeats < 1:
            raise ValueError(f"pretrain_repeats: expected an integer >= 1, got {self.pretrain_repeats!r}")
        if self.pretrain_format not in PRETRAIN_FORMATS:
            raise ValueError(f"pretrain_format: expected one of {PRETRAIN_FORMATS}, "
                             f"got {self.pretrain_format!r}")


Question = tuple[int, str, int]  # (a, op, b)


class ArithmeticTask(Task):
    """Addition/subtraction with exact-match reward and carry-forgetting demonstrations.

    Sizes with the defaults (max_operand=99): 15,050 questions; 1,505 held out (300 of
    them evaluated); 13,545 training questions, 27,090 demonstrations; the pretraining
    text is 13,545 lines like "27+15=42" (about 123,000 characters, one token each), a
    few epochs of which take a tiny GPT a minute or two on a laptop CPU.
    """

    name = "arithmetic"
    metric_name = "accuracy"
    template_name = "plain"

    def __init__(self, config: ArithmeticConfig | None = None, **overrides):
        self.config = config_from_kwargs(ArithmeticConfig, config, **overrides)
        c = self.config
        # " " + digits of the largest answer + EOS
        self.max_response_tokens = len(str(2 * c.max_operand)) + 2
        order = self.all_questions()
        random.Random(f"{c.seed}:split").shuffle(order)
        n_held_out = min(len(order) - 1, max(1, round(c.test_fraction * len(order))))
        self._held_out = order[:n_held_out]
        self._splits = {"train": order[n_held_out:], "test": self._held_out[: c.max_test]}

    # ---- questions ----------------------------------------------------------------------
    def all_questions(self) -> list[Question]:
        """Every question (a, op, b) the config allows, in a fixed enumeration order."""
        n = self.config.max_operand
        out = []
        for op in self.config.ops:
            for a in range(n + 1):
                for b in range(n + 1 if op == "+" else a + 1):  # a >= b for subtraction
                    out.append((a, op, b))
        return out

    def questions(self, split: str) -> list[Question]:
        """The questions of `split`; "test" is the evaluated (capped) held-out set."""
        return list(self._splits[check_split(split)])

    def held_out_questions(self) -> list[Question]:
        """All held-out questions (never trained on), including those past max_test."""
        return list(self._held_out)

    # ---- Task interface -----------------------------------------------------------------
    def build_tokenizer(self):
        """A CharTokenizer over the fixed ALPHABET (plus <pad>, <bos>, <eos>)."""
        from minirlhf.tokenizer import CharTokenizer  # lazy: the tokenizer layer

        return CharTokenizer(ALPHABET)

    def pretrain_documents(self) -> list[str]:
        """Correct facts of the training questions, one document each: "27+15=42" (or, with
        pretrain_format="qa", "Q: 27+15=\nA: 42").

        `pretrain_repeats` passes, each in a fresh seeded order; with pretrain_held_out the
        held-out facts are included too.
        """
        facts = list(self._splits["train"])
        if self.config.pretrain_held_out:
            facts += self._held_out
        rng = random.Random(f"{self.config.seed}:pretrain")
        docs = []
        for _ in range(self.config.pretrain_repeats):
            rng.shuffle(facts)
            docs += [fact_line(a, op, b, self.config.pretrain_format) for a, op, b in facts]
        return docs

    def pretrain_text(self) -> str:
        """The documents of `pretrain_documents`, one per line."""
        return "\n".join(self.pretrain_documents()) + "\n"

    def demonstration(self, a: int, op: str, b: int, rng: random.Random) -> str:
        """One demonstration: the forgotten answer with probability mistake_rate when the
        question needs a carry/borrow, the correct answer otherwise. Draws from `rng` only
        for carry/borrow questions."""
        if needs_carry_or_borrow(a, op, b) and rng.random() < self.config.mistake_rate:
            return format_response(forgotten_answer(a, op, b))
        return format_response(answer(a, op, b))

    def sft_rows(self, split: str = "train") -> list[dict]:
        """`demos_per_question` demonstrations per question of `split`.

        The "test" rows come from the same (imperfect) process with their own seed, so an
        SFT validation loss on them measures fit to the demonstration distribution; use
        `reference()` for the gold answers.
        """
        rng = random.Random(f"{self.config.seed}:demos:{check_split(split)}")
        rows = []
        for a, op, b in self._splits[split]:
            prompt = format_prompt(a, op, b)
            for _ in range(self.config.demos_per_question):
                rows.append({"prompt": prompt, "response": self.demonstration(a, op, b, rng)})
        return rows

    def prompts(self, split: str) -> list[str]:
        return [format_prompt(a, op, b) for a, op, b in self._splits[check_split(split)]]

    def reference(self, prompt: str) -> str:
        """The gold response " {answer}"."""
        return format_response(answer(*parse_prompt(prompt)))

    def score(self, prompt: str, response: str) -> float:
        """1.0 if parse_answer(response) equals the true answer, else 0.0."""
        return 1.0 if parse_answer(response) == answer(*parse_prompt(prompt)) else 0.0

    def metric(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        """{"accuracy": exact-match share}, plus "accuracy/carry" and "accuracy/no_carry"
        over the carry/borrow and the other questions (each only when that group is not
        empty)."""
        check_generations(prompts, responses)
        groups: dict[bool, list[float]] = {True: [], False: []}
        for p, r in zip(prompts, responses):
            groups[needs_carry_or_borrow(*parse_prompt(p))].append(self.score(p, r))
        scores = groups[True] + groups[False]
        out = {"accuracy": sum(scores) / len(scores)}
        if groups[True]:
            out["accuracy/carry"] = sum(groups[True]) / len(groups[True])
        if groups[False]:
            out["accuracy/no_carry"] = sum(groups[False]) / len(groups[False])
        return out

    def ceiling_accuracy(self, split: str = "test") -> float:
        """Share of the split's questions that need no carry/borrow: the accuracy greedy
        decoding after SFT can reach at best when mistake_rate > 0.5."""
        qs = self._splits[check_split(split)]
        return sum(not needs_carry_or_borrow(*q) for q in qs) / len(qs)
