"""Explain-it-to-a-child instructions with a programmatic heuristic judge.

The shipped data (minirlhf/tasks/data/instruct/, written by scripts/make_instruct_data.py):

    sft.jsonl           1,600 {"prompt", "response"} demonstrations on 100 topics (science,
                        nature, everyday things), 16 prompts each: 5 fixed styles ("Explain X
                        to a 10-year-old." twice, "What is X?", "Tell me about X.", "Can you
                        explain X in simple words?", a topic's own "Why ...?" question) and
                        10 phrasings drawn from a pool of 22, some after a lead-in ("Hi! ").
                        Responses are of MIXED quality on purpose: engaging (an analogy,
                        "imagine", a question asked back), dry and flat, too short, and
                        rambling too long. SFT learns the mixture; preference learning
                        against the judge below has something to improve.
    test_prompts.jsonl  100 held-out {"prompt", "topic", "reference"}: one per topic, in a
                        phrasing no training prompt uses ("Could you describe X for a
                        kid?", "I want to learn about X.", "Teach me about X, please."), so
                        the topics are seen and the phrasings are not (their words occur in
                        other training phrasings); "reference" is an engaging gold response.
    corpus.txt          plain English sentences about all 100 topics and every
                        demonstration as a "prompt response" paragraph, for pretraining.
    topics.json         each topic's name words and fact words (words of its sheet that
                        no other topic's sheet uses), read by `on_topic`.

on_topic(prompt, response) is 1 when the response names the prompt's topic or one of its
fact words (up to a plural ending), 0 otherwise; the task's metric reports its mean as
"on_topic" next to "judge_score", so the judge's score can be read against whether the
text is about the question at all.

The judge is a transparent stand-in for a human rater, in the spirit of the "simple
quality score" of the RLHF write-up this project follows (a question asked back, engaging
words, analogies, a moderate length), with a repetition penalty so that a policy cannot
game it by repeating "like like like". Every component is in [0, 1]:

    question    1 if the response asks a question (a sentence of >= 3 words ending in "?")
    engaging    min(1, distinct engaging words / 3), words from ENGAGING_WORDS
    analogy     1 if an analogy phrase ("like", "think of", "just as", ...) occurs
    length      1 for 20..60 words; n/20 below; 1 - (n-60)/60 above (0 from 120 words)
    topic       1 if a content word of the prompt occurs in the response
    repetition  share of word bigrams that repeat an earlier bigram (1 - distinct-2,
                Li et al., 2016)

    score = (sum_k JUDGE_WEIGHTS[k] * component_k) * (1 - repetition)

with JUDGE_WEIGHTS = question 0.2, engaging 0.2, analogy 0.2, length 0.25, topic 0.15
(summing to 1, so the score lies in [0, 1]).
"""
from __future__ import annotations

import json
import os
import re
from importlib import resources
from dataclasses import dataclass
from pathlib import Path

from minirlhf.tasks.base import Task, check_generations, check_split, config_from_kwargs

# ----------------------------------------------------------------------------------------
# the heuristic judge
# ----------------------------------------------------------------------------------------
ENGAGING_WORDS = frozenset({
    "imagine", "fun", "cool", "you", "your", "you're", "wow", "amazing", "awesome", "hey",
    "great", "exciting", "super", "picture", "guess", "wonder", "magic", "favorite",
})
ANALOGY_PHRASES = ("like", "similar to", "think of", "just as", "as if", "pretend")
JUDGE_WEIGHTS = {"question": 0.2, "engaging": 0.2, "analogy": 0.2, "length": 0.25, "topic": 0.15}
LENGTH_BAND = (20, 60)       # full length credit for this many words, both ends included
LENGTH_ZERO_AT = 120         # no length credit from this many words on
ENGAGING_FULL_AT = 3         # distinct engaging words that earn full engaging credit
QUESTION_MIN_WORDS = 3       # a question needs this many words ("??" is not a question)

# Words of the prompt that say nothing about its topic.
_STOPWORDS = frozenset("""
a about an and are as at be because by can could do does for from happen happens how i in
is it its it's me more my of on or please simple simply so some tell that the their them
then there these they this to up us was we what when where which who why will with would
you your 10 10-year-old year old years ten kid kids child children explain explains words
word know work works make makes get gets out into have has did describe learn teach
""".split())

_WORD_RE = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: runs of letters/digits, inner ' and - kept ("you're")."""
    return _WORD_RE.findall(text.lower())


def question_score(response: str) -> float:
    """1.0 if some sentence of >= QUESTION_MIN_WORDS words ends with "?", else 0.0."""
    segments = re.findall(r"[^.!?]*\?", response)
    return 1.0 if any(len(words(s)) >= QUESTION_MIN_WORDS for s in segments) else 0.0


def engaging_score(response: str) -> float:
    """min(1, |distinct ENGAGING_WORDS in the response| / ENGAGING_FULL_AT).

    Distinct words, so repeating "fun fun fun" earns no more than one "fun"."""
    found = ENGAGING_WORDS.intersection(words(response))
    return min(1.0, len(found) / ENGAGING_FULL_AT)


def analogy_score(response: str) -> float:
    """1.0 if an ANALOGY_PHRASES phrase occurs as whole words, else 0.0."""
    text = " " + " ".join(words(response)) + " "
    return 1.0 if any(f" {phrase} " in text for phrase in ANALOGY_PHRASES) else 0.0


def length_score(response: str) -> float:
    """Piecewise-linear credit for the word count n:

        n / lo                              for n < lo          (lo = 20)
        1                                   for lo <= n <= hi   (hi = 60)
        max(0, 1 - (n - hi) / (zero - hi))  for n > hi          (zero = 120)
    """
    n = len(words(response))
    lo, hi = LENGTH_BAND
    if n < lo:
        return n / lo
    if n <= hi:
        return 1.0
    return max(0.0, 1.0 - (n - hi) / (LENGTH_ZERO_AT - hi))


def content_words(prompt: str) -> list[str]:
    """The words of a prompt that name its topic: all words minus _STOPWORDS."""
    return [w for w in words(prompt) if w not in _STOPWORDS]


def _same_word(a: str, b: str) -> bool:
    """Equal, or (both >= 4 letters) one a prefix of the other within 2 letters:
    rainbow ~ rainbows, volcano ~ volcanoes, house ~ houses."""
    if a == b:
        return True
    if min(len(a), len(b)) < 4 or abs(len(a) - len(b)) > 2:
        return False
    return a.startswith(b) or b.startswith(a)


def topic_score(prompt: str, response: str) -> float:
    """1.0 if some content word of the prompt occurs in the response (up to a plural
    ending), else 0.0; 1.0 when the prompt has no content words."""
    topic = content_words(prompt)
    if not topic:
        return 1.0
    said = set(words(response))
    return 1.0 if any(_same_word(t, w) for t in topic for w in said) else 0.0


def repetition(response: str) -> float:
    """Share of word bigrams that repeat an earlier bigram: 1 - distinct-2.

    distinct-n = |unique n-grams| / |n-grams| (Li, Galley, Brockett, Gao and Dolan, 2016,
    "A Diversity-Promoting Objective Function for Neural Conversation Models").
    0 for fewer than two words; "like like like like" -> 2/3.
    """
    w = words(response)
    bigrams = list(zip(w, w[1:]))
    if not bigrams:
        return 0.0
    return 1.0 - len(set(bigrams)) / len(bigrams)


def judge_components(prompt: str, response: str) -> dict[str, float]:
    """All judge components of one response, each in [0, 1], and the total "score"."""
    parts = {
        "question": question_score(response),
        "engaging": engaging_score(response),
        "analogy": analogy_score(response),
        "length": length_score(response),
        "topic": topic_score(prompt, response),
    }
    rep = repetition(response)
    score = sum(JUDGE_WEIGHTS[k] * v for k, v in parts.items()) * (1.0 - rep)
    return {**parts, "repetition": rep, "score": score}


def judge_score(prompt: str, response: str) -> float:
    """score = (sum_k JUDGE_WEIGHTS[k] * component_k) * (1 - repetition), in [0, 1]."""
    return judge_components(prompt, response)["score"]


def load_topics(path: Path) -> dict[str, dict[str, list[str]]]:
    """topics.json: {topic: {"name": [name words], "facts": [fact words]}}; {} when absent."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def topic_of(prompt: str, topics: dict[str, dict[str, list[str]]]) -> str | None:
    """The topic a prompt asks about: the topic whose name words all occur in the prompt (up
    to a plural ending), the one with the most name words when several do; None if none."""
    said = set(words(prompt))
    best, best_n = None, 0
    for topic, sheet in topics.items():
        name = sheet["name"]
        if name and len(name) > best_n and all(any(_same_word(n, w) for w in said) for n in name):
            best, best_n = topic, len(name)
    return best


def on_topic(prompt: str, response: str, topics: dict[str, dict[str, list[str]]]) -> float | None:
    """1.0 if the response is about the prompt's topic, else 0.0; None if the prompt has no
    known topic. About the topic = it names a word of the topic's name or one of the topic's
    fact words (words of its sheet that no other topic's sheet uses, see
    scripts/make_instruct_data.py), up to a plural ending."""
    topic = topic_of(prompt, topics)
    if topic is None:
        return None
    sheet = topics[topic]
    keys = [*sheet["name"], *sheet["facts"]]
    said = set(words(response))
    return 1.0 if any(_same_word(k, w) for k in keys for w in said) else 0.0


# ----------------------------------------------------------------------------------------
# the shipped data
# ----------------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """The data shipped inside the package (minirlhf/tasks/data/instruct, found through
    importlib.resources so an installed wheel reads it too), or $MINIRLHF_DATA/instruct when that
    is set."""
    root = os.environ.get("MINIRLHF_DATA")
    if root:
        return Path(root) / "instruct"
    return Path(str(resources.files("minirlhf.tasks") / "data" / "instruct"))


def read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """Read a JSONL file of objects whose `fields` are strings; errors name file:line."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found. The instruct task reads the data shipped in the package "
            f"(minirlhf/tasks/data/instruct); pass data_dir=... or set MINIRLHF_DATA to the data folder")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for field in fields:
                if not isinstance(row.get(field), str) or not row[field].strip():
                    raise ValueError(f"{path}:{lineno}: field {field!r}: expected a non-empty "
                                     f"string, got {row.get(field)!r}")
            rows.append(row)
    return rows


@dataclass
class InstructConfig:
    """Configuration of InstructTask; the defaults run.

    data_dir: folder with sft.jsonl, test_prompts.jsonl and corpus.txt (None: shipped data).
    vocab_size: size of the byte-level BPE vocabulary trained by build_tokenizer().
    max_response_tokens: suggested generation length in BPE tokens (about 1.85 tokens a
        word with the default vocabulary: the longest reference is 128 tokens before EOS;
        rambling demonstrations run longer and are cut, as they should be).
    """

    data_dir: str | None = None
    vocab_size: int = 1024
    max_response_tokens: int = 144

    def __post_init__(self):
        if not isinstance(self.vocab_size, int) or self.vocab_size < 259:
            raise ValueError(f"vocab_size: expected an integer >= 259 (3 specials + 256 bytes), "
                             f"got {self.vocab_size!r}")
        if not isinstance(self.max_response_tokens, int) or self.max_response_tokens < 1:
            raise ValueError(f"max_response_tokens: expected an integer >= 1, "
                             f"got {self.max_response_tokens!r}")


class InstructTask(Task):
    """Child-friendly explanations, scored by the heuristic judge (`judge_score`)."""

    name = "instruct"
    metric_name = "judge_score"
    template_name = "chat"

    def __init__(self, config: InstructConfig | None = None, **overrides):
        self.config = config_from_kwargs(InstructConfig, config, **overrides)
        self.max_response_tokens = self.config.max_response_tokens
        self.data_dir = Path(self.config.data_dir) if self.config.data_dir else default_data_dir()
        self._sft = read_jsonl(self.data_dir / "sft.jsonl", ("prompt", "response"))
        self._test = read_jsonl(self.data_dir / "test_prompts.jsonl", ("prompt", "reference"))
        self._references = {r["prompt"]: r["reference"] for r in self._test}
        self.topics = load_topics(self.data_dir / "topics.json")
        train = set(r["prompt"] for r in self._sft)
        overlap = train.intersection(self._references)
        if overlap:
            raise ValueError(f"{self.data_dir}: {len(overlap)} test prompt(s) also occur in "
                             f"sft.jsonl, e.g. {sorted(overlap)[0]!r}; the splits must be disjoint")

    # ---- Task interface -----------------------------------------------------------------
    def build_tokenizer(self):
        """Byte-level BPE (minirlhf.tokenizer.BPETokenizer) trained on the corpus and the
        chat-formatted demonstrations; deterministic, and well under a second to train."""
        from minirlhf.tokenizer import BPETokenizer  # lazy: the tokenizer layer

        texts = self.pretrain_text().splitlines()
        texts += [f"User: {r['prompt']}\n\nAssistant: {r['response']}" for r in self._sft]
        return BPETokenizer.train(texts, self.config.vocab_size)

    def pretrain_text(self) -> str:
        """The contents of corpus.txt."""
        path = self.data_dir / "corpus.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; pass data_dir=... or set MINIRLHF_DATA")
        return path.read_text(encoding="utf-8")

    def sft_rows(self, split: str = "train") -> list[dict]:
        """"train": the mixed-quality demonstrations of sft.jsonl; "test": the held-out
        prompts with their engaging references as responses."""
        if check_split(split) == "train":
            return [{"prompt": r["prompt"], "response": r["response"]} for r in self._sft]
        return [{"prompt": r["prompt"], "response": r["reference"]} for r in self._test]

    def prompts(self, split: str) -> list[str]:
        """"train": the distinct prompts of sft.jsonl (first-seen order); "test": the
        held-out prompts (trained topics in phrasings no training prompt uses)."""
        if check_split(split) == "train":
            return list(dict.fromkeys(r["prompt"] for r in self._sft))
        return [r["prompt"] for r in self._test]

    def reference(self, prompt: str) -> str | None:
        """The engaging gold response of a held-out prompt; None for other prompts."""
        return self._references.get(prompt)

    def score(self, prompt: str, response: str) -> float:
        """The heuristic judge score in [0, 1] (see the module docstring)."""
        return judge_score(prompt, response)

    def components(self, prompt: str, response: str) -> dict[str, float]:
        """The judge's components and total score of one response."""
        return judge_components(prompt, response)

    def metric(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        """{"judge_score": mean score, "judge/<component>": mean of each component,
        "on_topic": share of responses on their prompt's topic (`on_topic`, over the prompts
        whose topic topics.json knows)}, plus
        "rouge_l" (mean ROUGE-L F against the references) when every prompt has one."""
        check_generations(prompts, responses)
        rows = [judge_components(p, r) for p, r in zip(prompts, responses)]
        n = len(rows)
        out = {"judge_score": sum(r["score"] for r in rows) / n}
        for key in (*JUDGE_WEIGHTS, "repetition"):
            out[f"judge/{key}"] = sum(r[key] for r in rows) / n
        flags = [on_topic(p, r, self.topics) for p, r in zip(prompts, responses)]
        flags = [f for f in flags if f is not None]
        if flags:
            out["on_topic"] = sum(flags) / len(flags)
        refs = [self.reference(p) for p in prompts]
        if all(ref is not None for ref in refs):
            from minirlhf.tasks.metrics import mean_rouge_l

            out["rouge_l"] = mean_rouge_l(responses, refs)["f"]
        return out
