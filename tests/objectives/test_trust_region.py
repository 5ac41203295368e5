"""TRPO machinery against exact linear algebra: flat gradients, Hessian-vector products, conjugate
gradient, the softmax Fisher matrix, and the guarantees of the line-searched trust-region step."""

import pytest
import torch

from minirlhf.objectives import (
    conjugate_gradient,
    flat_grad,
    flat_params,
    hessian_vector_product,
    make_hvp,
    set_flat_params,
    trpo_step,
)

F64 = torch.float64


def test_flat_grad_of_a_known_function_with_an_unused_parameter():
    a = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    b = torch.tensor([[0.5, 0.5], [1.0, 2.0]], dtype=F64, requires_grad=True)
    unused = torch.zeros(3, dtype=F64, requires_grad=True)
    y = (a**2).sum() + 3 * b.sum()
    assert flat_grad(y, [a, b, unused]).tolist() == [2.0, -4.0, 3.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0]


def test_flat_params_round_trip():
    a = torch.randn(2, 3, dtype=F64, requires_grad=True)
    b = torch.randn(4, dtype=F64, requires_grad=True)
    flat = flat_params([a, b])
    assert flat.shape == (10,)
    set_flat_params([a, b], torch.arange(10, dtype=F64))
    assert a.tolist() == [[0, 1, 2], [3, 4, 5]] and b.tolist() == [6, 7, 8, 9]
    set_flat_params([a, b], flat)
    assert torch.equal(flat_params([a, b]), flat)


def _f(x):
    """A small non-quadratic function: sum sin(x) x^3 + logsumexp(x)."""
    return (torch.sin(x) * x**3).sum() + torch.logsumexp(x, 0)


def test_hvp_equals_the_autograd_hessian_times_v_with_damping_and_reuse():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, generator=g, dtype=F64)
    p1 = x0[:3].clone().requires_grad_(True)  # the variable split over two parameter tensors
    p2 = x0[3:].clone().requires_grad_(True)
    unused = torch.ones(2, dtype=F64, requires_grad=True)
    y = _f(torch.cat([p1, p2]))
    H = torch.autograd.functional.hessian(_f, x0)  # (5,5)
    H_full = torch.zeros(7, 7, dtype=F64)
    H_full[:5, :5] = H  # the unused parameter has zero rows and columns
    for trial in range(3):  # several products on one graph
        v = torch.randn(7, generator=g, dtype=F64)
        assert torch.allclose(hessian_vector_product(y, [p1, p2, unused], v), H_full @ v, atol=1e-12)
        assert torch.allclose(hessian_vector_product(y, [p1, p2, unused], v, damping=0.3), H_full @ v + 0.3 * v, atol=1e-12)
    hvp = make_hvp(y, [p1, p2, unused], damping=0.1)
    v = torch.randn(7, generator=g, dtype=F64)
    assert torch.allclose(hvp(v), H_full @ v + 0.1 * v, atol=1e-12)
    assert torch.allclose(hvp(2 * v), 2 * (H_full @ v + 0.1 * v), atol=1e-12)


def test_conjugate_gradient_is_exact_in_n_steps_on_an_spd_system():
    g = torch.Generator().manual_seed(1)
    n = 8
    M = torch.randn(n, n, generator=g, dtype=F64)
    A = M @ M.T + 0.5 * torch.eye(n, dtype=F64)
    b = torch.randn(n, generator=g, dtype=F64)
    x, info = conjugate_gradient(lambda v: A @ v, b, iters=n, residual_tol=0.0, return_info=True)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-8)
    assert info["iters"] == n and info["residual"] < 1e-6
    # the default 10 iterations on a 3x3 system stop early once the residual vanishes
    A3 = A[:3, :3]
    x3, info3 = conjugate_gradient(lambda v: A3 @ v, b[:3], return_info=True)
    assert torch.allclose(x3, torch.linalg.solve(A3, b[:3]), atol=1e-10)
    assert info3["iters"] <= 4


def _softmax_problem(seed, K=5):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g, dtype=F64).requires_grad_(True)
    A = torch.randn(K, generator=g, dtype=F64)
    p_old = torch.softmax(theta.detach(), 0)

    def surrogate():  # E_{a~old}[rho(a) A(a)]
        return (p_old * torch.softmax(theta, 0) / p_old * A).sum()

    def kl():  # KL(pi_old || pi_theta)
        return (p_old * (p_old.log() - torch.log_softmax(theta, 0))).sum()

    return theta, A, p_old, surrogate, kl


def test_hessian_of_kl_at_old_params_is_the_softmax_fisher():
    theta, _, p, _, kl = _softmax_problem(2)
    K = p.numel()
    hvp = make_hvp(kl(), [theta])
    H = torch.stack([hvp(e) for e in torch.eye(K, dtype=F64)], 1)
    assert torch.allclose(H, torch.diag(p) - torch.outer(p, p), atol=1e-12)


def test_cg_natural_gradient_equals_the_pseudo_inverse_fisher_times_g():
    # F = diag(p) - p p^T is singular: F 1 = 0 (adding a constant to all logits changes nothing).
    # g = p * (A - p.A) sums to 0, so it lies in range(F); CG started at 0 stays in the Krylov space
    # of g, inside range(F), and (no damping) converges to the minimum-norm solution F^+ g, which is
    # orthogonal to the ones direction. With damping d it solves (F + d I) x = g exactly.
    theta, A, p, surrogate, kl = _softmax_problem(3)
    K = p.numel()
    F = torch.diag(p) - torch.outer(p, p)
    g = flat_grad(surrogate(), [theta])
    assert torch.allclose(g, p * (A - (p * A).sum()), atol=1e-14)
    x = conjugate_gradient(make_hvp(kl(), [theta]), g, iters=K, residual_tol=0.0)
    assert torch.allclose(x, torch.linalg.pinv(F, hermitian=True) @ g, atol=1e-8)
    assert abs(x.sum().item()) < 1e-8
    xd = conjugate_gradient(make_hvp(kl(), [theta], damping=0.1), g, iters=K, residual_tol=0.0)
    assert torch.allclose(xd, torch.linalg.solve(F + 0.1 * torch.eye(K, dtype=F64), g), atol=1e-8)


def _tabular_problem(seed, S=3, K=4):
    g = torch.Generator().manual_seed(seed)
    theta = (2.0 * torch.randn(S, K, generator=g, dtype=F64)).requires_grad_(True)
    A = 3.0 * torch.randn(S, K, generator=g, dtype=F64)
    old_logp = torch.log_softmax(theta.detach(), -1)

    def surrogate():  # mean over states of E_{a~old}[rho A]
        logp = torch.log_softmax(theta, -1)
        return (old_logp.exp() * torch.exp(logp - old_logp) * A).sum(-1).mean()

    def kl():  # mean over states of KL(pi_old || pi_theta)
        return (old_logp.exp() * (old_logp - torch.log_softmax(theta, -1))).sum(-1).mean()

    return theta, surrogate, kl


def test_trpo_step_never_exceeds_max_kl_and_never_accepts_a_worse_surrogate():
    backtracked = 0
    for seed in range(16):
        for max_kl in (0.01, 0.1, 1.0):
            theta, surrogate, kl = _tabular_problem(seed)
            before = surrogate().item()
            info = trpo_step([theta], surrogate, kl, max_kl, damping=0.1 if seed % 2 else 1e-3)
            after, kl_now = surrogate().item(), kl().item()
            assert kl_now <= max_kl
            assert info["kl"] == pytest.approx(kl_now, abs=1e-14)
            assert info["improvement"] == pytest.approx(after - before, abs=1e-14)
            if info["step_frac"] > 0:
                assert after > before
                assert info["step_frac"] == pytest.approx(0.8 ** info["backtracks"])
            else:
                assert after == before
            backtracked += info["backtracks"] > 0 and info["step_frac"] > 0
    assert backtracked >= 3  # the quadratic KL model was too optimistic in some problems: the search shrank the step


def test_full_step_lands_on_the_kl_boundary_of_the_quadratic_model():
    # for a small max_kl the quadratic model 1/2 s^T F s is accurate: a step c*s has KL ~ c^2 max_kl,
    # and the surrogate gains ~ c g^T s. (The true KL of the full step may sit a hair above max_kl,
    # in which case one backtrack is taken.)
    for seed in range(3):
        theta, surrogate, kl = _tabular_problem(seed)
        info = trpo_step([theta], surrogate, kl, max_kl=1e-4, damping=1e-6, cg_iters=20)
        c = info["step_frac"]
        assert c in (1.0, 0.8)
        assert info["kl"] == pytest.approx(1e-4 * c**2, rel=0.05)
        assert info["improvement"] == pytest.approx(c * info["expected_improvement"], rel=0.05)


def test_params_are_restored_exactly_when_no_step_is_acceptable():
    # a surrogate that rises along g at theta_old but falls for every tried step length:
    #   L(theta) = g0 . (theta - theta0) - C |theta - theta0|^2 with C huge
    theta, _, kl = _tabular_problem(5)
    theta0 = theta.detach().clone()
    g0 = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=F64)

    def surrogate():
        d = theta - theta0
        return (g0 * d).sum() - 1e6 * (d**2).sum()

    info = trpo_step([theta], surrogate, kl, max_kl=0.01)
    assert info["step_frac"] == 0.0 and info["backtracks"] == 10
    assert info["kl"] == 0.0 and info["improvement"] == 0.0
    assert torch.equal(theta.detach(), theta0)  # bit for bit


def test_params_are_restored_when_every_step_breaks_the_kl_limit():
    theta, surrogate, kl_exact = _tabular_problem(6)
    theta0 = theta.detach().clone()

    def kl():  # KL with a wall: same quadratic model at theta_old, but every tried step is over the limit
        return kl_exact() + 1e12 * ((theta - theta0) ** 2).sum() ** 2

    info = trpo_step([theta], surrogate, kl, max_kl=0.01)
    assert info["step_frac"] == 0.0
    assert torch.equal(theta.detach(), theta0)


def test_zero_gradient_means_no_step():
    theta = torch.zeros(4, dtype=F64, requires_grad=True)
    info = trpo_step([theta], lambda: (theta * 0).sum(), lambda: (theta**2).sum(), max_kl=0.01)
    assert info["step_frac"] == 0.0 and torch.equal(theta.detach(), torch.zeros(4, dtype=F64))
