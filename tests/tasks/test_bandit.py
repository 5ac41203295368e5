"""The bandit task: one-token arms, seeded rewards, a non-uniform corpus, options through --task.args."""
import math
from collections import Counter

import pytest

from minirlhf.tasks import BanditTask, get_task
from minirlhf.tasks import parse_task_args


def test_shape_of_the_task():
    t = get_task("bandit", **parse_task_args(["arms=6", "prompts=4", "test_prompts=2", "seed=3"]))
    assert isinstance(t, BanditTask) and t.arms == list("abcdef")
    assert t.prompts("train") == ["0:", "1:", "2:", "3:"] and t.prompts("test") == ["4:", "5:"]
    tok = t.build_tokenizer()
    for arm in t.arms:  # an arm is one token, then EOS
        ids, n_prompt = t.template().encode(tok, "0:", arm)
        assert len(ids) == n_prompt + 2 and ids[-1] == tok.eos_id
    assert t.max_response_tokens == 2


def test_rewards_are_seeded_and_scored_only_for_an_exact_arm():
    a, b, c = get_task("bandit", seed=1), get_task("bandit", seed=1), get_task("bandit", seed=2)
    assert [a.rewards(p) for p in a.contexts()] == [b.rewards(p) for p in b.contexts()]
    assert a.rewards("0:") != c.rewards("0:")
    r = a.rewards("1:")
    assert all(0.0 <= x <= 1.0 for x in r)
    assert [a.score("1:", arm) for arm in a.arms] == r
    for bad in ("", "ab", "z", " a"):
        assert a.score("1:", bad) == 0.0
    best = a.reference("1:")
    assert a.score("1:", best) == max(r)
    m = a.metric(["1:", "1:", "1:"], [best, "zz", a.arms[0]])
    assert m["reward"] == pytest.approx((max(r) + r[0]) / 3) and m["valid"] == pytest.approx(2 / 3)
    assert m["best_arm"] == pytest.approx((1 + (a.arms[0] == best)) / 3)


def test_corpus_and_demonstrations_follow_the_non_uniform_weights():
    t = get_task("bandit", docs_per_prompt=4000, demos_per_prompt=4000)
    docs = Counter(t.pretrain_documents())
    demos = Counter((r["prompt"], r["response"]) for r in t.sft_rows("train"))
    for p in t.prompts("train"):
        w = t.arm_weights(p)
        assert math.isclose(sum(w), 1.0) and max(w) - min(w) > 0.25  # clearly not uniform
        for arm, wa in zip(t.arms, w):
            assert docs[p + arm] / 4000 == pytest.approx(wa, abs=0.03)
            assert demos[(p, arm)] / 4000 == pytest.approx(wa, abs=0.03)
    assert all(r["prompt"] in t.prompts("test") for r in t.sft_rows("test"))


def test_preference_rows_cover_every_pair_with_bradley_terry_labels():
    t = get_task("bandit")
    rows = t.preference_rows("0:", 4000)
    r = dict(zip(t.arms, t.rewards("0:")))
    wins = Counter((x["chosen"], x["rejected"]) for x in rows)
    for i, a in enumerate(t.arms):
        for b in t.arms[i + 1:]:
            assert wins[(a, b)] + wins[(b, a)] == 4000
            assert wins[(a, b)] / 4000 == pytest.approx(1 / (1 + math.exp(-(r[a] - r[b]))), abs=0.03)


def test_bad_options_are_named():
    for kw, word in ((dict(arms=1), "arms"), (dict(arms=9), "arms"), (dict(prompts=8, test_prompts=3), "contexts"),
                     (dict(ref_spread=-1), "ref_spread")):
        with pytest.raises(ValueError, match=word):
            get_task("bandit", **kw)
    with pytest.raises(ValueError, match="prompt"):
        get_task("bandit").rewards("9:")
