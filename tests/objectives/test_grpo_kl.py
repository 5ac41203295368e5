"""Which divergence does GRPO's k3 loss term actually descend? Exact enumeration on a categorical.

Setting: pi = softmax(theta) over K actions, a fixed pi_ref. Samples come from pi_old = pi (on-policy)
and the loss term is differentiated through log pi only, so its expected gradient is
    sum_a pi_old(a) * grad k(log pi(a), log pi_ref(a))   with pi_old held constant.
We compute that with autograd for k1, k2, k3 and compare with the exact gradients of
KL(pi || ref) and KL(ref || pi).
"""

import math

import pytest
import torch

from minirlhf.objectives import grpo_kl_penalty, kl_estimate

F64 = torch.float64


def _setup(seed, K=6):
    g = torch.Generator().manual_seed(seed)
    theta = (torch.randn(K, generator=g, dtype=F64) * 1.5).requires_grad_(True)
    ref_logp = torch.log_softmax(torch.randn(K, generator=g, dtype=F64) * 1.5, 0)
    return theta, ref_logp


def _grad(theta, f):
    logp = torch.log_softmax(theta, 0)
    (g,) = torch.autograd.grad(f(logp), theta)
    return g


def _expected_loss_grad(theta, ref_logp, term):
    # E_{a ~ pi_old}[grad term(a)], pi_old = pi detached: the sampled loss's expected gradient
    return _grad(theta, lambda logp: (logp.exp().detach() * term(logp, ref_logp)).sum())


def _forward_kl(logp, ref_logp):  # KL(pi || ref)
    return (logp.exp() * (logp - ref_logp)).sum()


def _reverse_kl(logp, ref_logp):  # KL(ref || pi)
    return (ref_logp.exp() * (ref_logp - logp)).sum()


@pytest.mark.parametrize("seed", range(4))
def test_grpo_k3_term_follows_the_reverse_kl_gradient(seed):
    theta, ref = _setup(seed)
    g_k3 = _expected_loss_grad(theta, ref, grpo_kl_penalty)
    g_reverse = _grad(theta, lambda logp: _reverse_kl(logp, ref))
    g_forward = _grad(theta, lambda logp: _forward_kl(logp, ref))
    assert torch.allclose(g_k3, g_reverse, atol=1e-12)
    assert (g_k3 - g_forward).abs().max() > 1e-2  # and it is NOT the gradient of KL(pi || ref)


@pytest.mark.parametrize("seed", range(4))
def test_k2_term_follows_the_forward_kl_gradient_and_k1_has_none(seed):
    theta, ref = _setup(seed)
    g_k2 = _expected_loss_grad(theta, ref, lambda lp, rl: kl_estimate(lp, rl, "k2"))
    g_k1 = _expected_loss_grad(theta, ref, lambda lp, rl: kl_estimate(lp, rl, "k1"))
    g_forward = _grad(theta, lambda logp: _forward_kl(logp, ref))
    assert torch.allclose(g_k2, g_forward, atol=1e-12)
    assert g_k1.abs().max() < 1e-12  # E_pi[grad log pi] = 0


def test_grpo_penalty_value_is_the_paper_formula_and_unbiased_for_forward_kl():
    theta, ref = _setup(7)
    logp = torch.log_softmax(theta, 0).detach()
    per_token = grpo_kl_penalty(logp, ref)
    for lp, rl, k in zip(logp.tolist(), ref.tolist(), per_token.tolist()):
        ratio = math.exp(rl - lp)  # pi_ref / pi_theta
        assert k == pytest.approx(ratio - math.log(ratio) - 1, abs=1e-12)
    # its value (not its gradient) estimates KL(pi || ref) without bias
    assert (logp.exp() * per_token).sum().item() == pytest.approx(_forward_kl(logp, ref).item(), abs=1e-12)
