"""ROUGE-L against hand-computed LCS values and brute-force enumeration."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlhf.tasks.metrics import lcs_length, mean_rouge_l, rouge_l


def brute_force_lcs(x, y) -> int:
    """Longest subsequence of x (by enumerating all of them) that is also one of y."""
    def is_subsequence(s, t):
        it = iter(t)
        return all(c in it for c in s)

    for k in range(len(x), 0, -1):
        if any(is_subsequence(sub, y) for sub in itertools.combinations(x, k)):
            return k
    return 0


def test_identical_is_one_and_disjoint_is_zero():
    assert rouge_l("the cat sat", "the cat sat") == {"precision": 1.0, "recall": 1.0, "f": 1.0}
    assert rouge_l("the cat sat", "a dog ran") == {"precision": 0.0, "recall": 0.0, "f": 0.0}
    assert rouge_l("", "a dog ran")["f"] == 0.0 and rouge_l("a", "")["f"] == 0.0


def test_lin_2004_example():
    # Lin (2004), Sec. 3.1: reference S1 against candidates S2 and S3.
    s1 = "police killed the gunman"
    s2 = "police kill the gunman"     # LCS "police the gunman" = 3
    s3 = "the gunman kill police"     # LCS "the gunman" = 2
    assert rouge_l(s2, s1) == pytest.approx({"precision": 3 / 4, "recall": 3 / 4, "f": 3 / 4})
    assert rouge_l(s3, s1) == pytest.approx({"precision": 2 / 4, "recall": 2 / 4, "f": 2 / 4})


def test_clrs_lcs_example():
    # Cormen et al., Sec. 15.4: X = ABCBDAB, Y = BDCABA, LCS = BCBA of length 4.
    x, y = list("ABCBDAB"), list("BDCABA")
    assert lcs_length(x, y) == 4 == lcs_length(y, x)
    r = rouge_l(" ".join(y), " ".join(x))   # candidate Y (6 words), reference X (7 words)
    p, rec = 4 / 6, 4 / 7
    assert r == pytest.approx({"precision": p, "recall": rec, "f": 2 * p * rec / (p + rec)})


def test_beta_weights_recall():
    r = rouge_l("a b c d", "a b")               # LCS 2: P = 1/2, R = 1
    assert r["f"] == pytest.approx(2 / 3)
    big = rouge_l("a b c d", "a b", beta=1e6)   # F -> R as beta -> infinity
    assert big["f"] == pytest.approx(1.0, abs=1e-6)
    beta2 = rouge_l("a b c d", "a b", beta=2.0)
    assert beta2["f"] == pytest.approx(5 * 0.5 * 1 / (1 + 4 * 0.5))
    with pytest.raises(ValueError, match="beta"):
        rouge_l("a", "a", beta=0)


def test_whitespace_tokens_and_case():
    assert rouge_l("The  cat\nsat", "the cat sat")["f"] == pytest.approx(2 / 3)
    assert rouge_l("The cat sat", "the cat sat", lowercase=True)["f"] == 1.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from("abc"), max_size=8), st.lists(st.sampled_from("abc"), max_size=8))
def test_lcs_matches_brute_force(x, y):
    assert lcs_length(x, y) == brute_force_lcs(x, y)


def test_mean_rouge_l():
    m = mean_rouge_l(["a b", "x y"], ["a b", "a b"])
    assert m == pytest.approx({"precision": 0.5, "recall": 0.5, "f": 0.5})
    with pytest.raises(ValueError, match="as many references"):
        mean_rouge_l(["a"], [])
    with pytest.raises(ValueError, match="at least one"):
        mean_rouge_l([], [])
