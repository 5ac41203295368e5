"""The instruct task: shipped data, the heuristic judge's components by hand, the metric."""
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlhf.tasks.instruct import (JUDGE_WEIGHTS, InstructConfig, InstructTask, analogy_score,
                                     default_data_dir, engaging_score, judge_components,
                                     judge_score, length_score, on_topic, question_score,
                                     repetition, topic_of, topic_score, words)

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Explain rainbows to a 10-year-old."


@pytest.fixture(scope="module")
def task():
    return InstructTask()


def n_words(k: int, word: str = "w") -> str:
    """k distinct plain words (no engaging or analogy words): w0 w1 ... w{k-1}."""
    return " ".join(f"{word}{i}" for i in range(k))


# ---- shipped files ---------------------------------------------------------------------
def test_shipped_files_parse_and_have_sixteen_rows_a_topic():
    d = default_data_dir()
    assert d == ROOT / "minirlhf" / "tasks" / "data" / "instruct"
    sft = [json.loads(line) for line in (d / "sft.jsonl").read_text("utf-8").splitlines()]
    test = [json.loads(line) for line in (d / "test_prompts.jsonl").read_text("utf-8").splitlines()]
    assert len(sft) == 1600  # 100 topics x 16 demonstrations
    assert all(set(r) == {"prompt", "response"} and r["prompt"] and r["response"] for r in sft)
    assert len(test) >= 50
    assert all(set(r) == {"prompt", "topic", "reference"} for r in test)
    corpus = (d / "corpus.txt").read_bytes()
    assert 50_000 < len(corpus) < 1_000_000
    corpus.decode("utf-8")


def test_shipped_sft_rows_pass_the_data_validator():
    data = pytest.importorskip("minirlhf.data")
    rows = data.load_sft(default_data_dir() / "sft.jsonl")
    assert len(rows) == len(InstructTask().sft_rows())


def test_test_prompts_are_held_out_phrasings_of_trained_topics(task):
    """Held-out prompts ask about topics the demonstrations cover, in templates they never use."""
    train, test = task.prompts("train"), task.prompts("test")
    assert not set(train) & set(test)
    assert len(set(test)) == len(test) == 100
    explain = re.compile(r"Explain (.+) to a 10-year-old\.")
    train_topics = {m.group(1) for p in train if (m := explain.fullmatch(p))}
    assert train_topics == set(task.topics)
    assert {topic_of(p, task.topics) for p in test} == set(task.topics)
    for p in test:  # the held-out phrasing occurs in no training prompt
        phrasing = p.split(topic_of(p, task.topics))[0]
        assert not any(t.startswith(phrasing) for t in train), p
    train_words = {w for p in train for w in words(p)}
    for p in test:  # new phrasings, but in words that training prompts use
        assert set(words(p)) <= train_words, (p, set(words(p)) - train_words)
    per_topic = {}
    for p in train:
        per_topic.setdefault(topic_of(p, task.topics), set()).add(p)
    # 5 styles + 10 phrasings, the "Why ...?" question not always naming its topic
    assert all(len(v) >= 14 for k, v in per_topic.items() if k is not None)
    for p in train:  # every templated training prompt names a topic the metric knows
        if not p.startswith("Why"):  # (a topic's own "Why ...?" may not: "Why do things fall down?")
            assert topic_of(p, task.topics) is not None, p


# ---- the on-topic metric ----------------------------------------------------------------
TOPICS = {"rainbows": {"name": ["rainbows"], "facts": ["prism", "raindrop"]},
          "coral reefs": {"name": ["coral", "reefs"], "facts": ["skeletons"]},
          "the sky": {"name": ["sky"], "facts": ["scatters"]}}


def test_topic_of_reads_the_topic_out_of_the_prompt():
    assert topic_of("Teach me about rainbows, please.", TOPICS) == "rainbows"
    assert topic_of("Why is the sky blue?", TOPICS) == "the sky"
    assert topic_of("I want to learn about coral reefs.", TOPICS) == "coral reefs"
    assert topic_of("Tell me about snow.", TOPICS) is None


@pytest.mark.parametrize("response, expected", [
    ("A rainbow is an arc of colors.", 1.0),                  # names the topic (singular)
    ("Every raindrop bends the light.", 1.0),                  # one of its facts
    ("Think of a prism in the air.", 1.0),                     # another fact
    ("Coral reefs are built by tiny animals.", 0.0),           # another topic
    ("Skin is a strong where hot, feeling where a magn; the glass?", 0.0),  # word salad
    ("", 0.0),
])
def test_on_topic_by_name_by_fact_and_off_topic(response, expected):
    assert on_topic("Could you describe rainbows for a kid?", response, TOPICS) == expected


def test_on_topic_is_none_for_a_prompt_of_no_known_topic():
    assert on_topic("Tell me about snow.", "Snow is cold.", TOPICS) is None


def test_shipped_references_are_on_topic_and_other_topics_references_are_not(task):
    prompts = task.prompts("test")
    refs = [task.reference(p) for p in prompts]
    assert task.metric(prompts, refs)["on_topic"] == 1.0
    shifted = refs[1:] + refs[:1]  # each prompt answered with the next topic's reference
    # neighbouring topic sheets are related (clouds -> rain mentions clouds), so a few are on topic
    assert task.metric(prompts, shifted)["on_topic"] <= 0.2


def test_every_train_prompt_has_a_demonstration_and_test_prompts_a_reference(task):
    rows = task.sft_rows("train")
    assert set(task.prompts("train")) == {r["prompt"] for r in rows}
    assert all(task.reference(p) for p in task.prompts("test"))
    assert task.reference(task.prompts("train")[0]) is None
    assert [r["prompt"] for r in task.sft_rows("test")] == task.prompts("test")


def test_generator_reproduces_the_shipped_files():
    script = ROOT / "scripts" / "make_instruct_data.py"
    out = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_judge_scores_of_shipped_responses_spread_over_a_range(task):
    scores = [task.score(r["prompt"], r["response"]) for r in task.sft_rows("train")]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert min(scores) < 0.25 and max(scores) > 0.9
    assert statistics.pstdev(scores) > 0.2
    # mixed quality: clearly good, middling and poor responses all occur
    assert sum(s >= 0.8 for s in scores) >= 0.2 * len(scores)
    assert sum(s <= 0.45 for s in scores) >= 0.3 * len(scores)
    # the same prompt is demonstrated with different qualities
    by_prompt = {}
    for r, s in zip(task.sft_rows("train"), scores):
        by_prompt.setdefault(r["prompt"], []).append(s)
    assert sum(max(v) - min(v) > 0.2 for v in by_prompt.values() if len(v) > 1) >= 40


# ---- the judge's components on hand-written examples -----------------------------------
def test_question_component():
    assert question_score("The sky is blue. Have you ever seen a red sky?") == 1.0
    assert question_score("The sky is blue. Have you ever seen a red sky.") == 0.0
    assert question_score("The sky is blue. ??") == 0.0         # no words: not a question
    assert question_score("Why? Because.") == 0.0               # one word is too short


def test_a_question_asked_back_scores_higher():
    base = ("Rainbows are arcs of colors made when sunlight shines through raindrops, and each "
            "drop bends the light into red, orange, yellow, green, blue and violet bands")
    asked = base + ". Did anybody here see one?"
    plain = base + ". Somebody here saw one."
    assert judge_score(PROMPT, asked) > judge_score(PROMPT, plain)
    # closed form: the only differing components are question (weight 0.2) and repetition (0)
    ca, cp = judge_components(PROMPT, asked), judge_components(PROMPT, plain)
    assert ca["repetition"] == cp["repetition"] == 0.0
    assert ca["length"] == cp["length"] == 1.0
    assert ca["score"] - cp["score"] == pytest.approx(JUDGE_WEIGHTS["question"])


def test_engaging_component_counts_distinct_words():
    assert engaging_score("plain words only") == 0.0
    assert engaging_score("imagine that") == pytest.approx(1 / 3)
    assert engaging_score("imagine imagine imagine") == pytest.approx(1 / 3)
    assert engaging_score("Imagine you, wow") == 1.0
    assert engaging_score("imagine you wow fun cool") == 1.0


def test_analogy_component_matches_whole_words():
    assert analogy_score("It is like a fan.") == 1.0
    assert analogy_score("Think of a fan.") == 1.0
    assert analogy_score("Just as a fan turns.") == 1.0
    assert analogy_score("It is similar to a fan.") == 1.0
    assert analogy_score("It will likely rain.") == 0.0      # "likely" is not "like"
    assert analogy_score("I think often of rain.") == 0.0    # "think ... of" is not "think of"


@pytest.mark.parametrize("k, expected", [
    (0, 0.0), (5, 0.25), (10, 0.5), (19, 0.95), (20, 1.0), (40, 1.0), (60, 1.0),
    (75, 0.75), (90, 0.5), (120, 0.0), (200, 0.0),
])
def test_length_band(k, expected):
    assert length_score(n_words(k)) == pytest.approx(expected)


def test_topic_component():
    assert topic_score(PROMPT, "A rainbow has seven colors.") == 1.0   # plural ~ singular
    assert topic_score(PROMPT, "Clouds are made of water.") == 0.0
    assert topic_score("Why do volcanoes erupt?", "A volcano is a mountain.") == 1.0
    assert topic_score("Explain it to a 10-year-old.", "Anything.") == 1.0  # no topic words


def test_repetition_is_penalised():
    assert repetition("like like like like") == pytest.approx(2 / 3)   # 3 bigrams, 1 distinct
    assert repetition(n_words(30)) == 0.0
    assert repetition("one") == 0.0
    good = ("Hey there! Imagine sunlight is like a bag of colored marbles, and every raindrop "
            "is a tiny prism that sorts them into red, orange, yellow, green, blue and violet. "
            "Have you ever seen a double rainbow?")
    assert judge_components(PROMPT, good)["repetition"] == 0.0
    looped = " ".join([good] * 3)
    spam = "imagine you like rainbows? " * 12
    assert judge_score(PROMPT, looped) < judge_score(PROMPT, good)
    assert judge_score(PROMPT, spam) < 0.2
    # closed form: score = weighted sum * (1 - repetition)
    c = judge_components(PROMPT, spam)
    weighted = sum(JUDGE_WEIGHTS[k] * c[k] for k in JUDGE_WEIGHTS)
    assert c["score"] == pytest.approx(weighted * (1 - c["repetition"]))


def test_hand_computed_total_score():
    response = "Imagine a rainbow is like a fan of colors in the sky. " + n_words(10)
    # 22 words: length 1; engaging: "imagine" -> 1/3; analogy 1; question 0; topic 1;
    # bigrams all distinct -> repetition 0
    expected = 0.2 * 0 + 0.2 * (1 / 3) + 0.2 * 1 + 0.25 * 1 + 0.15 * 1
    assert judge_score(PROMPT, response) == pytest.approx(expected)


def test_engaging_beats_dry_beats_short():
    engaging = ("Hey there! Imagine every raindrop is a tiny prism, bending sunlight into a fan "
                "of colors, like a sprinkler of light. A rainbow forms when the sun is behind "
                "you. Have you ever spotted a double rainbow?")
    dry = ("A rainbow is an arc of colors that forms when sunlight shines through drops of "
           "rain. Each raindrop bends the sunlight and splits it into seven colors.")
    short = "Colors in the sky."
    assert judge_score(PROMPT, engaging) > judge_score(PROMPT, dry) > judge_score(PROMPT, short)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.text(max_size=80))
def test_score_lies_in_unit_interval(response, prompt):
    c = judge_components(prompt, response)
    for key in (*JUDGE_WEIGHTS, "repetition", "score"):
        assert 0.0 <= c[key] <= 1.0


def test_weights_sum_to_one():
    assert sum(JUDGE_WEIGHTS.values()) == pytest.approx(1.0)


# ---- metric, config, tokenizer ---------------------------------------------------------
def test_metric_is_the_mean_of_the_components(task):
    prompts = task.prompts("train")[:3]
    responses = ["Colors in the sky.", "Hey! Imagine it is like fun. Do you see?", n_words(70)]
    m = task.metric(prompts, responses)
    comps = [judge_components(p, r) for p, r in zip(prompts, responses)]
    assert m["judge_score"] == pytest.approx(sum(c["score"] for c in comps) / 3)
    for key in (*JUDGE_WEIGHTS, "repetition"):
        assert m[f"judge/{key}"] == pytest.approx(sum(c[key] for c in comps) / 3)
    assert "rouge_l" not in m   # training prompts have no references
    test_prompts = task.prompts("test")[:4]
    m = task.metric(test_prompts, [task.reference(p) for p in test_prompts])
    assert m["rouge_l"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="as many responses"):
        task.metric(prompts, responses[:2])


def test_config_errors_and_data_dir(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        InstructConfig(vocab_size=10)
    with pytest.raises(ValueError, match="InstructConfig: unknown field"):
        InstructTask(vocab=512)
    with pytest.raises(FileNotFoundError, match="sft.jsonl"):
        InstructTask(data_dir=str(tmp_path))
    (tmp_path / "sft.jsonl").write_text('{"prompt": "Tell me about x.", "response": "X."}\n'
                                        '{"prompt": "Tell me about y."}\n')
    (tmp_path / "test_prompts.jsonl").write_text('{"prompt": "a", "reference": "b"}\n')
    with pytest.raises(ValueError, match=r"sft.jsonl:2: field 'response'"):
        InstructTask(data_dir=str(tmp_path))
    (tmp_path / "sft.jsonl").write_text('{"prompt": "a", "response": "X."}\n')
    with pytest.raises(ValueError, match="disjoint"):
        InstructTask(data_dir=str(tmp_path))


def test_bpe_tokenizer_is_deterministic_and_round_trips(task):
    pytest.importorskip("minirlhf.tokenizer")
    tok_a, tok_b = task.build_tokenizer(), task.build_tokenizer()
    assert tok_a.vocab_size == 1024
    for r in task.sft_rows("train")[:40] + task.sft_rows("test")[:10]:
        text = f"User: {r['prompt']}\n\nAssistant: {r['response']}"
        ids = tok_a.encode(text)
        assert ids == tok_b.encode(text)
        assert tok_a.decode(ids) == text
    small = InstructTask(vocab_size=512).build_tokenizer()
    assert small.vocab_size == 512


def test_template_is_chat(task):
    pytest.importorskip("minirlhf.tokenizer")
    assert task.template().prompt_text("Hi?") == "User: Hi?\n\nAssistant: "
