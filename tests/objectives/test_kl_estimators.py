"""KL estimators (Schulman 2020) on an enumerated categorical: expectations taken exactly, sum_x pi(x) k(x)."""

import math

import pytest
import torch

from minirlhf.objectives import kl_estimate

F64 = torch.float64


def _expect(pi, ref, kind):
    """E_{x~pi}[k(x)] by enumeration."""
    return (pi * kl_estimate(pi.log(), ref.log(), kind)).sum().item()


def _kl(pi, ref):
    return sum(p * math.log(p / q) for p, q in zip(pi.tolist(), ref.tolist()))


def _random_pair(seed, K=6):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(K, generator=g, dtype=F64), 0), torch.softmax(torch.randn(K, generator=g, dtype=F64), 0)


@pytest.mark.parametrize("seed", range(5))
def test_k1_and_k3_are_unbiased_for_kl_pi_ref(seed):
    pi, ref = _random_pair(seed)
    kl = _kl(pi, ref)
    assert _expect(pi, ref, "k1") == pytest.approx(kl, abs=1e-12)
    assert _expect(pi, ref, "k3") == pytest.approx(kl, abs=1e-12)


def test_per_sample_formulas():
    logp = torch.tensor([-1.0, -2.0, -0.5], dtype=F64)
    ref = torch.tensor([-1.5, -1.0, -0.5], dtype=F64)
    log_r = [-0.5, 1.0, 0.0]
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([-x for x in log_r])
    assert kl_estimate(logp, ref, "k2").tolist() == pytest.approx([x * x / 2 for x in log_r])
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx([math.exp(x) - 1 - x for x in log_r])
    assert kl_estimate(logp, ref, "abs").tolist() == pytest.approx([abs(x) for x in log_r])


def test_k3_is_never_negative_while_k1_can_be():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(10_000, generator=g, dtype=F64) * 5
    ref = torch.randn(10_000, generator=g, dtype=F64) * 5
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    # near r = 1 too, where (r - 1) - log r would cancel catastrophically without expm1
    tiny = torch.tensor([1e-9, -1e-9, 1e-12], dtype=F64)
    assert (kl_estimate(torch.zeros(3, dtype=F64), tiny, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k1") < 0).any()


def test_k2_is_not_kl_in_general():
    # pi = (1/2, 1/2), ref = (0.9, 0.1), worked by hand:
    #   KL(pi||ref)  = 1/2 ln(0.5/0.9) + 1/2 ln(0.5/0.1)        = 0.5108...
    #   E_pi[k2]     = 1/4 (ln 1.8)^2 + 1/4 (ln 0.2)^2           = 0.7340...  (> KL here)
    #   E_pi[|log r|] = 1/2 ln 1.8 + 1/2 ln 5                    = ln 3 = 1.0986...
    pi = torch.tensor([0.5, 0.5], dtype=F64)
    ref = torch.tensor([0.9, 0.1], dtype=F64)
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    k2 = 0.25 * math.log(1.8) ** 2 + 0.25 * math.log(0.2) ** 2
    assert _expect(pi, ref, "k2") == pytest.approx(k2, abs=1e-12)
    assert _expect(pi, ref, "k2") - kl == pytest.approx(0.2232, abs=1e-4)
    assert _expect(pi, ref, "abs") == pytest.approx(math.log(3), abs=1e-12)


def test_k2_equals_kl_to_second_order_for_close_distributions():
    # ref = softmax(theta + eps u): KL and E[k2] share the quadratic term (1/2 eps^2 u^T F u),
    # so their gap shrinks like eps^3: halving eps divides it by about 8 (exactly 8 in the limit;
    # the eps^4 term still shows at these sizes, hence the 10% tolerance).
    g = torch.Generator().manual_seed(3)
    theta, u = torch.randn(5, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64)
    pi = torch.softmax(theta, 0)
    gaps, kls = [], []
    for eps in (0.004, 0.002, 0.001):
        ref = torch.softmax(theta + eps * u, 0)
        kls.append(_kl(pi, ref))
        gaps.append(abs(_expect(pi, ref, "k2") - kls[-1]))
    assert gaps[0] / gaps[1] == pytest.approx(8.0, rel=0.1)
    assert gaps[1] / gaps[2] == pytest.approx(8.0, rel=0.1)
    assert gaps[2] / kls[2] < 1e-2
