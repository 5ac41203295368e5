"""PPO losses, loss aggregation, KL coefficient controllers and the critic loss, against hand-derived values."""

import math

import pytest
import torch

from minirlhf.objectives import (
    AdaptiveKLController,
    AdaptiveKLPenalty,
    FixedKLController,
    aggregate_loss,
    kl_from_logits,
    ppo_penalty_loss,
    ppo_policy_loss,
    value_loss,
)

F64 = torch.float64
EPS = 0.2

# one row of tokens covering every regime of the clipped objective, plus one padding token:
#                A      rho    regime
CASES = [(+1.0, 1.5),  # A>0, rho>1+eps: clipped, gradient 0
         (+2.0, 0.5),  # A>0, rho<1-eps: unclipped (min picks rho*A), gradient -A rho / N
         (-1.0, 0.5),  # A<0, rho<1-eps: clipped, gradient 0
         (-3.0, 1.5),  # A<0, rho>1+eps: unclipped, gradient -A rho / N
         (+1.5, 1.1),  # inside the trust region: gradient -A rho / N
         (0.0, 1.5)]   # A=0: both terms are 0, nothing clipped
CLIPPED = [True, False, True, False, False, False]


def _batch():
    A = torch.tensor([[a for a, _ in CASES] + [100.0]], dtype=F64)
    rho = torch.tensor([[r for _, r in CASES] + [7.0]], dtype=F64)
    old_logp = torch.full_like(rho, -2.0)
    logp = (old_logp + rho.log()).requires_grad_(True)
    mask = torch.tensor([[1] * len(CASES) + [0]])
    return logp, old_logp, A, mask


def test_clip_gradient_is_zero_in_clipped_regions_and_minus_a_rho_over_n_elsewhere():
    logp, old_logp, A, mask = _batch()
    loss, _ = ppo_policy_loss(logp, old_logp, A, mask, clip_eps=EPS)
    (grad,) = torch.autograd.grad(loss, logp)
    N = len(CASES)
    for i, ((a, rho), clipped) in enumerate(zip(CASES, CLIPPED)):
        # d/d logp of -A*rho is -A*rho (rho = exp(logp - old_logp)); the mean divides by N
        expected = 0.0 if clipped else -a * rho / N
        assert grad[0, i].item() == pytest.approx(expected, abs=1e-12), (a, rho)
    assert grad[0, N].item() == 0.0  # padding


def test_clip_loss_value_and_clipfrac_by_hand():
    logp, old_logp, A, mask = _batch()
    loss, stats = ppo_policy_loss(logp, old_logp, A, mask, clip_eps=EPS)
    per_token = [max(-a * r, -a * min(max(r, 1 - EPS), 1 + EPS)) for a, r in CASES]
    assert loss.item() == pytest.approx(sum(per_token) / len(CASES), abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(sum(CLIPPED) / len(CASES), abs=1e-12)  # 2 of 6
    approx_kl = sum((r - 1) - math.log(r) for _, r in CASES) / len(CASES)
    assert stats["approx_kl"].item() == pytest.approx(approx_kl, abs=1e-12)
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_loss_is_minus_mean_advantage_at_rho_one():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 5, generator=g, dtype=F64)
    logp = torch.randn(3, 5, generator=g, dtype=F64)
    mask = torch.ones(3, 5)
    mask[2, 3:] = 0
    loss, stats = ppo_policy_loss(logp, logp.clone(), A, mask)
    assert loss.item() == pytest.approx(-A[mask.bool()].mean().item(), abs=1e-12)
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0


def test_aggregation_modes_by_hand():
    # row 0 has one valid token (1), row 1 has three (2, 4, 6)
    per_token = torch.tensor([[1.0, 99.0, 99.0], [2.0, 4.0, 6.0]], dtype=F64)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    assert aggregate_loss(per_token, mask, "token_mean").item() == pytest.approx(13 / 4)
    assert aggregate_loss(per_token, mask, "seq_mean").item() == pytest.approx((1 + 4) / 2)
    assert aggregate_loss(per_token, mask, "seq_sum_const", max_len=4).item() == pytest.approx((1 / 4 + 12 / 4) / 2)
    assert aggregate_loss(per_token, mask, "seq_sum_const").item() == pytest.approx((1 / 3 + 12 / 3) / 2)  # L = T


def test_ppo_policy_loss_passes_the_aggregation_through():
    logp, old_logp, A, mask = _batch()
    logp2 = torch.cat([logp, logp], 0).detach()  # two rows; the mask gives them different lengths
    old2 = torch.cat([old_logp, old_logp], 0)
    A2 = torch.cat([A, A], 0)
    mask2 = torch.zeros_like(logp2)
    mask2[0, : len(CASES)] = 1
    mask2[1, :3] = 1
    rho = (logp2 - old2).exp()
    per_token = torch.maximum(-A2 * rho, -A2 * rho.clamp(1 - EPS, 1 + EPS))
    for mode in ("token_mean", "seq_mean", "seq_sum_const"):
        loss, _ = ppo_policy_loss(logp2, old2, A2, mask2, clip_eps=EPS, loss_agg=mode, max_len=16)
        assert loss.item() == pytest.approx(aggregate_loss(per_token, mask2, mode, max_len=16).item(), abs=1e-12)


def test_penalty_loss_on_an_enumerated_categorical_is_beta_times_the_exact_kl():
    # weights = pi_old over all actions turn the masked mean into E_{a~pi_old}; with A = 0 the loss is
    # beta * E_old[(rho - 1) - log rho] = beta * KL(pi_old || pi) exactly, gradient included.
    g = torch.Generator().manual_seed(1)
    old_logits = torch.randn(1, 1, 6, generator=g, dtype=F64)
    logits = (old_logits + 0.3 * torch.randn(1, 1, 6, generator=g, dtype=F64)).requires_grad_(True)
    old_logp = torch.log_softmax(old_logits, -1)[0]  # (1,6): the 6 actions laid out as 6 "tokens"
    logp = torch.log_softmax(logits, -1)[0]
    beta = 0.7
    loss, stats = ppo_penalty_loss(logp, old_logp, torch.zeros_like(logp), old_logp.exp(), beta=beta)
    exact = kl_from_logits(old_logits, logits)[0, 0]
    assert loss.item() == pytest.approx(beta * exact.item(), abs=1e-12)
    assert stats["kl"].item() == pytest.approx(exact.item(), abs=1e-12)
    (g_loss,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (g_exact,) = torch.autograd.grad(beta * exact, logits)
    assert torch.allclose(g_loss, g_exact, atol=1e-12)


def test_penalty_loss_with_a_given_kl_tensor_and_at_rho_one():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(2, 4, generator=g, dtype=F64)
    kl = torch.rand(2, 4, generator=g, dtype=F64)
    old_logp = -torch.rand(2, 4, generator=g, dtype=F64)
    logp = old_logp.clone().requires_grad_(True)
    mask = torch.ones(2, 4)
    loss, stats = ppo_penalty_loss(logp, old_logp, A, mask, beta=0.5, kl=kl)
    assert loss.item() == pytest.approx((-A + 0.5 * kl).mean().item(), abs=1e-12)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(grad, -A / 8, atol=1e-12)  # the given kl is a constant here
    assert stats["approx_kl"].item() == 0.0


def test_adaptive_kl_penalty_follows_the_ppo_paper_rule():
    c = AdaptiveKLPenalty(init_beta=1.0, kl_target=0.01)
    assert c.update(0.01 / 1.5 - 1e-6) == 0.5  # too little KL: halve
    assert c.update(0.01) == 0.5  # inside [d/1.5, 1.5 d]: unchanged
    assert c.update(0.01 / 1.5) == 0.5  # boundaries are not strict violations
    assert c.update(0.015) == 0.5
    assert c.update(0.0151) == 1.0  # too much KL: double
    assert c.update(1.0) == 2.0


def test_adaptive_kl_controller_formula_of_ziegler_et_al():
    # beta <- beta (1 + clip(KL/target - 1, -0.2, 0.2) * n_steps / horizon)
    c = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    assert c.update(12.0, n_steps=256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10_000))  # error clipped at +0.2
    b = c.value
    assert c.update(6.6, n_steps=256) == pytest.approx(b * (1 + 0.1 * 256 / 10_000))  # KL 10% over target
    b = c.value
    assert c.update(6.0, n_steps=256) == pytest.approx(b)  # on target: no change
    assert c.update(0.0, n_steps=256) == pytest.approx(b * (1 - 0.2 * 256 / 10_000))  # clipped at -0.2
    assert c.value < b


def test_controllers_resume_from_state_dict():
    a = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    for kl in (10.0, 8.0, 3.0):
        a.update(kl, n_steps=64)
    b = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    b.load_state_dict(a.state_dict())
    assert b.value == a.value
    assert b.update(9.0, 64) == a.update(9.0, 64)
    p = AdaptiveKLPenalty(1.0, 0.01)
    p.update(1.0)
    q = AdaptiveKLPenalty(1.0, 0.01)
    q.load_state_dict(p.state_dict())
    assert q.value == p.value == 2.0
    f = FixedKLController(0.05)
    assert f.update(100.0, 1000) == 0.05 and f.state_dict() == {"value": 0.05}


def test_value_loss_by_hand_clipped_and_unclipped():
    # V = (1, 2, 3), V_old = (1.5, 1.5, 1.5), R = (2, 0, 3.5), plus one padding entry
    #   unclipped errors (V-R)^2:                  1, 4, 0.25          -> 0.5 * 5.25 / 3 = 0.875
    #   V_clip = V_old + clamp(V - V_old, +-0.2):  1.3, 1.7, 1.7
    #   clipped errors:                            0.49, 2.89, 3.24
    #   max per entry:                             1, 4, 3.24          -> 0.5 * 8.24 / 3
    values = torch.tensor([[1.0, 2.0, 3.0, 50.0]], dtype=F64)
    old = torch.tensor([[1.5, 1.5, 1.5, 0.0]], dtype=F64)
    returns = torch.tensor([[2.0, 0.0, 3.5, -50.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0]])
    assert value_loss(values, old, returns, mask).item() == pytest.approx(0.875, abs=1e-12)
    assert value_loss(values, old, returns, mask, clip_eps=0.2).item() == pytest.approx(0.5 * 8.24 / 3, abs=1e-12)
