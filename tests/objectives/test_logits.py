"""Log-probs, entropy and full-distribution KL against direct sums over the probabilities."""

import math

import pytest
import torch

from minirlhf.objectives import entropy_from_logits, kl_from_logits, logprobs_from_logits

F64 = torch.float64


def _softmax(row, tau=1.0):
    m = max(row)
    e = [math.exp((z - m) / tau) for z in row]
    s = sum(e)
    return [x / s for x in e]


def _logits(seed, shape=(2, 3, 5)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2


@pytest.mark.parametrize("tau", [1.0, 0.7, 2.0])
def test_logprobs_are_log_softmax_at_the_labels(tau):
    logits = _logits(0)
    labels = torch.tensor([[0, 4, 2], [1, 1, 3]])
    out = logprobs_from_logits(logits, labels, temperature=tau)
    assert out.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            p = _softmax(logits[b, t].tolist(), tau)
            assert out[b, t].item() == pytest.approx(math.log(p[labels[b, t]]), abs=1e-12)


def test_entropy_is_minus_sum_p_log_p():
    logits = _logits(1)
    h = entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            p = _softmax(logits[b, t].tolist())
            assert h[b, t].item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-12)
    # uniform over V has entropy log V, a point mass has 0
    assert entropy_from_logits(torch.zeros(1, 1, 7, dtype=F64)).item() == pytest.approx(math.log(7), abs=1e-12)
    assert entropy_from_logits(torch.tensor([[[0.0, -math.inf, -math.inf]]], dtype=F64)).item() == 0.0


def test_entropy_and_kl_are_stable_for_huge_logits():
    logits = _logits(2)
    shifted = logits + 1e4  # softmax is shift invariant; a naive exp would overflow
    assert torch.allclose(entropy_from_logits(shifted), entropy_from_logits(logits), atol=1e-9)
    assert torch.allclose(kl_from_logits(shifted, logits - 1e4), kl_from_logits(logits, logits), atol=1e-9)
    # masked-out tokens (-inf logits) have probability 0 and contribute nothing
    masked = torch.tensor([[[1.0, 2.0, -math.inf]]], dtype=F64)
    assert entropy_from_logits(masked).item() == pytest.approx(entropy_from_logits(masked[..., :2]).item(), abs=1e-12)


def test_kl_from_logits_is_sum_p_log_p_over_q():
    lp, lq = _logits(3), _logits(4)
    kl = kl_from_logits(lp, lq)
    for b in range(2):
        for t in range(3):
            p, q = _softmax(lp[b, t].tolist()), _softmax(lq[b, t].tolist())
            assert kl[b, t].item() == pytest.approx(sum(a * math.log(a / c) for a, c in zip(p, q)), abs=1e-12)
    assert (kl > 0).all()
    assert kl_from_logits(lp, lp).abs().max().item() < 1e-12


def test_bfloat16_logits_are_computed_on_in_float32():
    """Logits from a bf16 autocast pass: the log-probs, entropies and KLs of the distributions those
    bf16 values define, exactly (float32 arithmetic, against a float64 direct sum), not rounded to bf16's
    8-bit mantissa (which is off by ~0.03 for log-probs near -10)."""
    logits = (_logits(5, (2, 3, 50)) * 4).to(torch.bfloat16)
    other = (_logits(6, (2, 3, 50)) * 4).to(torch.bfloat16)
    labels = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(7))
    exact = torch.log_softmax(logits.double() / 0.7, -1).gather(-1, labels[..., None]).squeeze(-1)
    out = logprobs_from_logits(logits, labels, temperature=0.7)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-5)
    lp = torch.log_softmax(logits.double(), -1)
    torch.testing.assert_close(entropy_from_logits(logits).double(), -(lp.exp() * lp).sum(-1), rtol=0, atol=1e-5)
    lq = torch.log_softmax(other.double(), -1)
    torch.testing.assert_close(kl_from_logits(logits, other).double(), (lp.exp() * (lp - lq)).sum(-1), rtol=0,
                               atol=1e-5)
    assert logprobs_from_logits(logits.double(), labels).dtype == F64  # float64 stays float64
