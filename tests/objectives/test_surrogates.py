"""TRPO's surrogate and the REINFORCE loss against closed forms: hand-computed values, the softmax
policy gradient d log pi(a) / dz = e_a - pi, and exact expectations over every sample tuple."""

import itertools

import pytest
import torch

from minirlhf.objectives import reinforce_loss, rloo_advantages, trpo_surrogate

D = torch.float64
LOG2 = torch.log(torch.tensor(2.0, dtype=D))


def test_trpo_surrogate_is_the_masked_mean_of_ratio_times_advantage():
    # rho = 2 and 1/2 on the two valid tokens; the padding holds garbage
    old = torch.tensor([[-1.0, -2.0, 0.0]], dtype=D)
    logp = old + torch.stack([LOG2, -LOG2, torch.tensor(float("inf"), dtype=D)])[None]
    adv = torch.tensor([[3.0, -1.0, float("nan")]], dtype=D)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=D)
    assert trpo_surrogate(logp, old, adv, mask).item() == pytest.approx((2 * 3 + 0.5 * -1) / 2, abs=1e-12)


def test_trpo_surrogate_gradient_at_the_old_policy_is_the_policy_gradient():
    """At theta = theta_old, grad_z L = (1/M) sum_t m_t A_t (e_{a_t} - softmax(z_t))."""
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 4, 5
    z = torch.randn(B, T, V, dtype=D, generator=g, requires_grad=True)
    actions = torch.randint(0, V, (B, T), generator=g)
    adv = torch.randn(B, T, dtype=D, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=D)
    logp = torch.log_softmax(z, -1).gather(-1, actions[..., None]).squeeze(-1)  # (B,T)
    L = trpo_surrogate(logp, logp.detach(), adv, mask)
    assert L.item() == pytest.approx(((adv * mask).sum() / mask.sum()).item(), abs=1e-12)
    (grad,) = torch.autograd.grad(L, z)
    pi = torch.softmax(z.detach(), -1)
    onehot = torch.nn.functional.one_hot(actions, V).to(D)
    expected = (mask * adv)[..., None] * (onehot - pi) / mask.sum()
    assert torch.allclose(grad, expected, atol=1e-12)


def test_reinforce_loss_value_and_gradient_per_token():
    """loss = -(1/N) sum_i A_i sum_t m_it logp_it, so d loss / d logp_it = -A_i m_it / N (0 on padding)."""
    logp = torch.tensor([[-1.0, -0.5, float("-inf")], [-2.0, -0.25, -1.0]], dtype=D, requires_grad=True)
    adv = torch.tensor([2.0, -4.0], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=D)
    loss = reinforce_loss(logp, adv, mask)
    assert loss.item() == pytest.approx(-(2 * (-1.5) + (-4) * (-3.25)) / 2, abs=1e-12)
    loss.backward()
    assert torch.equal(logp.grad, torch.tensor([[-1.0, -1.0, 0.0], [2.0, 2.0, 2.0]], dtype=D))


def softmax_policy(V=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(V, dtype=D, generator=g)
    r = torch.randn(V, dtype=D, generator=g)
    return z, r


def true_gradient(z, r):
    """grad_z E_{a~softmax(z)}[r(a)] = pi * (r - pi . r)."""
    pi = torch.softmax(z, -1)
    return pi * (r - (pi * r).sum())


def test_reinforce_loss_with_importance_weights_is_the_exact_policy_gradient():
    """One sample of each action a with A_a = V pi(a) (r(a) - b) turns the sample mean into the expectation:
    -grad loss = sum_a pi(a) (r(a) - b) grad log pi(a) = grad E[r], for any constant baseline b."""
    z0, r = softmax_policy()
    V = z0.numel()
    for b in (0.0, 0.7, -3.0):
        z = z0.clone().requires_grad_(True)
        logp = torch.log_softmax(z, -1)[:, None]  # (V,1): sample a is action a, one token each
        pi = torch.softmax(z0, -1)
        adv = V * pi * (r - b)
        (grad,) = torch.autograd.grad(-reinforce_loss(logp, adv, torch.ones(V, 1, dtype=D)), z)
        assert torch.allclose(grad, true_gradient(z0, r), atol=1e-12)


@pytest.mark.parametrize("k", [2, 3])
def test_rloo_reinforce_gradient_is_unbiased_by_exact_enumeration(k):
    """E over k i.i.d. samples of -grad reinforce_loss(A = rloo_advantages) equals grad E[r]: the
    leave-one-out baseline of sample i uses only the other samples, so it adds no bias (Kool et al. 2019)."""
    z0, r = softmax_policy(V=3, seed=2)
    pi = torch.softmax(z0, -1)
    expected_grad = torch.zeros_like(z0)
    for actions in itertools.product(range(3), repeat=k):
        z = z0.clone().requires_grad_(True)
        a = torch.tensor(actions)
        logp = torch.log_softmax(z, -1)[a][:, None]  # (k,1)
        adv = rloo_advantages(r[a], k)
        (grad,) = torch.autograd.grad(-reinforce_loss(logp, adv, torch.ones(k, 1, dtype=D)), z)
        expected_grad += pi[a].prod() * grad
    assert torch.allclose(expected_grad, true_gradient(z0, r), atol=1e-12)


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="advantages"):
        reinforce_loss(torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages"):
        reinforce_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        reinforce_loss(torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 4))
    with pytest.raises(ValueError, match="logp"):
        reinforce_loss(torch.zeros(6), torch.zeros(6), torch.ones(6))
    with pytest.raises(ValueError, match="advantages"):
        trpo_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
