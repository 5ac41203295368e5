"""The DPO family against its formulas, and the population DPO optimum on a tabular bandit."""

import math

import pytest
import torch

from minirlhf.objectives import dpo_loss

from .newton import newton_minimise

F64 = torch.float64


def _logps(seed, B=5):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(B, generator=g, dtype=F64) * 20) for _ in range(4)]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_sigmoid_loss_is_log_two_when_policy_equals_reference(label_smoothing):
    pc, pr, _, _ = _logps(0)
    losses, cr, rr = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.3, label_smoothing=label_smoothing)
    assert losses.tolist() == pytest.approx([math.log(2)] * 5, abs=1e-15)
    assert cr.tolist() == [0.0] * 5 and rr.tolist() == [0.0] * 5


def test_sigmoid_ipo_and_hinge_formulas():
    pc, pr, rc, rr = _logps(1)
    beta = 0.2
    h = ((pc - rc) - (pr - rr)).tolist()
    sig = lambda x: 1 / (1 + math.exp(-x))
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
    assert losses.tolist() == pytest.approx([-math.log(sig(beta * x)) for x in h], abs=1e-12)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.1)
    assert losses.tolist() == pytest.approx([-0.9 * math.log(sig(beta * x)) - 0.1 * math.log(sig(-beta * x)) for x in h], abs=1e-12)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
    assert losses.tolist() == pytest.approx([(x - 1 / (2 * beta)) ** 2 for x in h], abs=1e-12)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")
    assert losses.tolist() == pytest.approx([max(0.0, 1 - beta * x) for x in h], abs=1e-12)


def test_implicit_rewards_are_beta_log_ratios_and_detached():
    pc, pr, rc, rr = _logps(2)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert torch.allclose(cr, 0.5 * (pc - rc).detach()) and torch.allclose(rj, 0.5 * (pr - rr).detach())
    assert not cr.requires_grad and not rj.requires_grad
    # while the loss does reach the policy: d/d pi_c of -log s(beta h) = -beta s(-beta h)
    (g,) = torch.autograd.grad(losses.sum(), pc)
    h = (pc - rc) - (pr - rr)
    assert torch.allclose(g, -0.5 * torch.sigmoid(-0.5 * h), atol=1e-12)


def test_conservative_dpo_optimum_is_the_smoothed_log_odds():
    # with labels flipped at rate eps, -(1-eps) log s(beta h) - eps log s(-beta h) is minimised at
    # beta h = log((1-eps)/eps): a finite margin, where plain DPO would push h to infinity
    beta, eps = 0.1, 0.1
    zero = torch.zeros(1, dtype=F64)
    f = lambda x: dpo_loss(x, zero, zero, zero, beta=beta, label_smoothing=eps)[0].sum()
    h = newton_minimise(f, torch.zeros(1, dtype=F64)).item()
    assert beta * h == pytest.approx(math.log(0.9 / 0.1), abs=1e-9)


def test_population_dpo_optimum_on_a_tabular_bandit_is_pi_ref_exp_r_over_beta():
    # K actions with rewards r and reference pi_ref; a prompt's two responses are drawn from pi_ref and
    # labelled by Bradley-Terry, so the ordered pair (a chosen, b rejected) has probability
    #     pi_ref(a) pi_ref(b) sigmoid(r_a - r_b).
    # The exact expected DPO loss sums -log sigmoid(beta h_ab) over all ordered pairs with these weights.
    # Per unordered pair it is pi_ref(a) pi_ref(b) times the cross-entropy between sigmoid(r_a - r_b) and
    # sigmoid(beta h_ab), minimised at beta h_ab = r_a - r_b, i.e. beta log(pi/pi_ref) = r + const:
    # pi* = pi_ref exp(r / beta) / Z. Every pair reaches its own minimum there, so this is the global one.
    g = torch.Generator().manual_seed(0)
    K, beta = 5, 0.5
    r = torch.randn(K, generator=g, dtype=F64)
    ref_logp = torch.log_softmax(torch.randn(K, generator=g, dtype=F64), 0)
    a, b = torch.meshgrid(torch.arange(K), torch.arange(K), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)  # all K*K ordered pairs (a == b pairs add a constant)
    weight = ref_logp[a].exp() * ref_logp[b].exp() * torch.sigmoid(r[a] - r[b])

    def expected_loss(theta):
        logp = torch.log_softmax(theta, 0)
        losses, _, _ = dpo_loss(logp[a], logp[b], ref_logp[a], ref_logp[b], beta=beta)
        return (weight * losses).sum()

    theta = newton_minimise(expected_loss, torch.zeros(K, dtype=F64))
    target = torch.softmax(ref_logp + r / beta, 0)
    # tolerance: Newton's method on this smooth convex problem gets to ~1e-15; we ask for 1e-9
    assert torch.allclose(torch.softmax(theta, 0), target, atol=1e-9)
