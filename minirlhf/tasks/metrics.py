"""ROUGE-L: longest-common-subsequence overlap between a candidate and a reference.

Lin, C.-Y. (2004). "ROUGE: A Package for Automatic Evaluation of Summaries", Sec. 3.1.
For a reference X of m words and a candidate Y of n words:

    R_lcs = LCS(X, Y) / m
    P_lcs = LCS(X, Y) / n
    F_lcs = (1 + beta^2) R_lcs P_lcs / (R_lcs + beta^2 P_lcs)

beta = 1 (the harmonic mean of P and R) is the usual choice in modern toolkits.
Words are whitespace tokens, compared exactly (pass lowercase=True to ignore case).
"""
from __future__ import annotations


def lcs_length(x: list[str], y: list[str]) -> int:
    """Length of the longest common subsequence of x and y by dynamic programming.

    c[i][j] = c[i-1][j-1] + 1            if x_i = y_j
            = max(c[i-1][j], c[i][j-1])  otherwise
    (Cormen et al., "Introduction to Algorithms", Sec. 15.4); O(|x| |y|) time, one row
    of memory.
    """
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0] * (len(y) + 1)
        for j, yj in enumerate(y, 1):
            cur[j] = prev[j - 1] + 1 if xi == yj else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str, beta: float = 1.0,
            lowercase: bool = False) -> dict[str, float]:
    """Sentence-level ROUGE-L (Lin, 2004): {"precision", "recall", "f"}.

    precision = LCS / |candidate|, recall = LCS / |reference| (in whitespace tokens),
    f = (1 + beta^2) P R / (R + beta^2 P); all zero when either side is empty or LCS = 0.
    """
    if not isinstance(candidate, str) or not isinstance(reference, str):
        raise TypeError(f"rouge_l: candidate and reference must be str, got "
                        f"{type(candidate).__name__} and {type(reference).__name__}")
    if beta <= 0:
        raise ValueError(f"beta: expected a positive number, got {beta!r}")
    if lowercase:
        candidate, reference = candidate.lower(), reference.lower()
    cand, ref = candidate.split(), reference.split()
    lcs = lcs_length(ref, cand) if cand and ref else 0
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f": 0.0}
    p, r = lcs / len(cand), lcs / len(ref)
    f = (1 + beta**2) * p * r / (r + beta**2 * p)
    return {"precision": p, "recall": r, "f": f}


def mean_rouge_l(candidates: list[str], references: list[str], beta: float = 1.0,
                 lowercase: bool = False) -> dict[str, float]:
    """Mean of the sentence-level rouge_l precision, recall and f over aligned pairs."""
    if len(candidates) != len(references):
        raise ValueError(f"mean_rouge_l: expected as many references as candidates, got "
                         f"{len(candidates)} candidates and {len(references)} references")
    if not candidates:
        raise ValueError("mean_rouge_l: expected at least one (candidate, reference) pair")
    scores = [rouge_l(c, r, beta, lowercase) for c, r in zip(candidates, references)]
    return {k: sum(s[k] for s in scores) / len(scores) for k in ("precision", "recall", "f")}
