"""KTO, ORPO and SimPO against closed forms, plain-Python formulas and an enumerable policy."""

import itertools
import math

import pytest
import torch

from minirlhf.objectives import kto_loss, kto_reference_point, orpo_log_odds, orpo_loss, simpo_loss

F64 = torch.float64


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- KTO


def test_kto_at_the_reference_loss_is_half_lambda_and_gradient_is_beta_over_4():
    beta, lam_d, lam_u = 0.3, 1.5, 0.7
    ref = torch.tensor([-3.0, -7.5, -1.0, -2.0], dtype=F64)
    desirable = torch.tensor([True, False, True, False])
    logp = ref.clone().requires_grad_(True)  # pi = pi_ref: r = 0
    losses, rewards = kto_loss(logp, ref, desirable, 0.0, beta, lam_d, lam_u)
    assert losses.tolist() == pytest.approx([lam_d / 2, lam_u / 2, lam_d / 2, lam_u / 2], abs=1e-15)
    assert rewards.tolist() == [0.0] * 4 and not rewards.requires_grad
    (grad,) = torch.autograd.grad(losses.sum(), logp)
    # d/dr lambda_D (1 - s(beta r)) = -lambda_D beta s'(0) = -lambda_D beta / 4; undesirable: +lambda_U beta / 4
    expected = [-lam_d * beta / 4, lam_u * beta / 4, -lam_d * beta / 4, lam_u * beta / 4]
    assert grad.tolist() == pytest.approx(expected, abs=1e-15)


def test_kto_formula_with_a_reference_point():
    g = torch.Generator().manual_seed(0)
    logp, ref = -5 * torch.rand(6, generator=g, dtype=F64), -5 * torch.rand(6, generator=g, dtype=F64)
    desirable = torch.tensor([True, True, False, False, True, False])
    beta, lam_d, lam_u, z0 = 0.5, 1.0, 1.33, 0.4
    losses, rewards = kto_loss(logp, ref, desirable, torch.tensor(z0, dtype=F64), beta, lam_d, lam_u)
    for k, (lp, rp, d) in enumerate(zip(logp.tolist(), ref.tolist(), desirable.tolist())):
        r = lp - rp
        v = lam_d * _sig(beta * (r - z0)) if d else lam_u * _sig(beta * (z0 - r))
        assert losses[k].item() == pytest.approx((lam_d if d else lam_u) - v, abs=1e-14)
        assert rewards[k].item() == pytest.approx(beta * r, abs=1e-14)
    # z0 is a constant: no gradient reaches it
    z = torch.tensor(z0, dtype=F64, requires_grad=True)
    out, _ = kto_loss(logp.clone().requires_grad_(True), ref, desirable, z, beta)
    assert torch.autograd.grad(out.sum(), z, allow_unused=True)[0] is None


def test_kto_reference_point_is_the_clamped_detached_mean():
    pol = torch.tensor([-1.0, -2.0, -4.0], dtype=F64, requires_grad=True)
    ref = torch.tensor([-1.5, -2.5, -3.5], dtype=F64)
    z0 = kto_reference_point(pol, ref)
    assert z0.item() == pytest.approx((0.5 + 0.5 - 0.5) / 3, abs=1e-15) and not z0.requires_grad
    assert kto_reference_point(ref, pol.detach()).item() == 0.0  # mean -1/6 clamps to 0


def test_kto_bad_inputs():
    x = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match="bool"):
        kto_loss(x, x, torch.tensor([1, 0]), 0.0)
    with pytest.raises(ValueError, match="beta"):
        kto_loss(x, x, torch.tensor([True, False]), 0.0, beta=0.0)
    with pytest.raises(ValueError, match="desirable has shape"):
        kto_loss(x, x, torch.tensor([True]), 0.0)
    with pytest.raises(ValueError, match="kl_ref"):
        kto_loss(x, x, torch.tensor([True, False]), math.inf)


# ----------------------------------------------------------------------------- ORPO


def _tree_policy(theta1, theta2):
    """A 2-token policy over a vocabulary of 3: p(y1) = softmax(theta1), p(y2|y1) = softmax(theta2[y1])."""
    return torch.log_softmax(theta1, 0), torch.log_softmax(theta2, 1)  # (3,), (3,3)


def test_orpo_odds_ratio_against_enumerated_sequence_probabilities():
    g = torch.Generator().manual_seed(1)
    theta1 = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    theta2 = torch.randn(3, 3, generator=g, dtype=F64, requires_grad=True)
    lam, nll = 0.25, torch.tensor(1.7, dtype=F64)
    for (w1, w2), (l1, l2) in itertools.permutations(itertools.product(range(3), range(3)), 2):
        lp1, lp2 = _tree_policy(theta1, theta2)
        mean_w = (lp1[w1] + lp2[w1, w2]) / 2  # mean token log-prob
        mean_l = (lp1[l1] + lp2[l1, l2]) / 2
        loss, or_term, lor = orpo_loss(mean_w[None], mean_l[None], nll, lam)
        # written out: P = (p(y))^(1/|y|) from the sequence probability, odds = P / (1 - P)
        p1, p2 = torch.softmax(theta1, 0), torch.softmax(theta2, 1)
        P_w, P_l = (p1[w1] * p2[w1, w2]).sqrt(), (p1[l1] * p2[l1, l2]).sqrt()
        odds_w, odds_l = P_w / (1 - P_w), P_l / (1 - P_l)
        expected = torch.log1p(odds_l / odds_w)  # -log sigmoid(log(odds_w/odds_l)) = log(1 + odds_l/odds_w)
        assert or_term.item() == pytest.approx(expected.item(), rel=1e-12)
        assert lor.item() == pytest.approx(math.log(odds_w.item() / odds_l.item()), abs=1e-12)
        assert loss.item() == pytest.approx(1.7 + lam * expected.item(), rel=1e-12)
        if (w1, w2, l1, l2) == (0, 1, 2, 2):  # one gradient check through the whole chain
            ga = torch.autograd.grad(or_term.sum(), (theta1, theta2))
            gb = torch.autograd.grad(expected, (theta1, theta2))
            for a, b in zip(ga, gb):
                assert torch.allclose(a, b, atol=1e-12)


def test_orpo_log_odds_is_accurate_near_zero_and_far_from_it():
    x = torch.tensor([-1e-12, -1e-6, -0.3, -0.7, -5.0, -60.0], dtype=F64)
    expected = [v - math.log(-math.expm1(v)) for v in x.tolist()]
    assert orpo_log_odds(x).tolist() == pytest.approx(expected, rel=1e-14)
    assert orpo_log_odds(torch.tensor([0.0], dtype=F64)).item() == math.inf  # P = 1: infinite odds
    with pytest.raises(ValueError, match="<= 0"):
        orpo_log_odds(torch.tensor([0.1], dtype=F64))


def test_orpo_equal_probabilities_give_log2_and_nll_per_pair():
    m = torch.tensor([-0.4, -2.0], dtype=F64)
    loss, or_term, lor = orpo_loss(m, m.clone(), torch.tensor([1.0, 3.0], dtype=F64), lam=0.5)
    assert or_term.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-15) and lor.tolist() == [0.0, 0.0]
    assert loss.tolist() == pytest.approx([1.0 + 0.5 * math.log(2), 3.0 + 0.5 * math.log(2)], abs=1e-15)
    with pytest.raises(ValueError, match="nll_chosen"):
        orpo_loss(m, m, torch.zeros(3, dtype=F64))


# ----------------------------------------------------------------------------- SimPO


def test_simpo_formula():
    cw, cl = torch.tensor([-4.0, -10.0], dtype=F64), torch.tensor([-9.0, -3.0], dtype=F64)
    lw, ll = torch.tensor([2.0, 5.0], dtype=F64), torch.tensor([3.0, 1.0], dtype=F64)
    beta, gamma = 2.0, 0.5
    losses, rc, rr = simpo_loss(cw, cl, lw, ll, beta, gamma)
    for k in range(2):
        z = beta * cw[k].item() / lw[k].item() - beta * cl[k].item() / ll[k].item() - gamma
        assert losses[k].item() == pytest.approx(math.log1p(math.exp(-z)), abs=1e-14)
        assert rc[k].item() == pytest.approx(beta * cw[k].item() / lw[k].item(), abs=1e-15)
    # equal rewards: loss = -log sigmoid(-gamma) = log(1 + e^gamma)
    losses, _, _ = simpo_loss(cw, cw.clone(), lw, lw.clone(), beta, gamma)
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(gamma))] * 2, abs=1e-15)


def test_simpo_reward_is_length_normalised():
    # a response of 3 tokens with per-token log-probs t, and the same response repeated twice (6 tokens)
    t = torch.tensor([-0.5, -1.25, -2.0], dtype=F64)
    short, long = t.sum()[None], torch.cat([t, t]).sum()[None]
    rej = torch.tensor([-4.0], dtype=F64)
    l1, r1, _ = simpo_loss(short, rej, 3, 2, beta=2.0, gamma=0.3)
    l2, r2, _ = simpo_loss(long, rej, 6, 2, beta=2.0, gamma=0.3)
    assert r1.item() == r2.item() == pytest.approx(2.0 * t.mean().item(), abs=1e-15)
    assert l1.item() == l2.item()
    with pytest.raises(ValueError, match="chosen_len"):
        simpo_loss(short, rej, 0, 2)
