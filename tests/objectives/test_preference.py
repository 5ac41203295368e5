"""Bradley-Terry, Davidson ties, Plackett-Luce, ECE and Fleiss' kappa against closed forms."""

import itertools
import math

import pytest
import torch

from minirlhf.objectives import (
    bradley_terry_loss,
    bradley_terry_prob,
    davidson_probs,
    davidson_tie_loss,
    expected_calibration_error,
    fleiss_kappa,
    plackett_luce_logprob,
    plackett_luce_loss,
)

from .newton import newton_minimise

F64 = torch.float64


def _scalar(x):
    return torch.tensor([float(x)], dtype=F64)


# ----------------------------------------------------------------------------- Bradley-Terry


def test_bt_loss_at_equal_rewards_is_log_two():
    r = torch.tensor([0.3, -1.0, 5.0], dtype=F64)
    assert bradley_terry_loss(r, r.clone()).item() == pytest.approx(math.log(2), abs=1e-15)
    assert bradley_terry_loss(r, r.clone(), prob=0.85).item() == pytest.approx(math.log(2), abs=1e-15)
    assert bradley_terry_prob(r, r.clone()).tolist() == [0.5, 0.5, 0.5]


def test_bt_loss_formula_hard_label():
    d = [2.0, -1.0, 0.5]
    chosen = torch.tensor(d, dtype=F64)
    loss = bradley_terry_loss(chosen, torch.zeros(3, dtype=F64))
    assert loss.item() == pytest.approx(sum(math.log(1 + math.exp(-x)) for x in d) / 3, abs=1e-14)


def _bt_minimiser(prob, strength=1.0, margin=0.0):
    f = lambda d: bradley_terry_loss(d, torch.zeros(1, dtype=F64), prob=prob, strength=strength, margin=margin)
    return newton_minimise(f, torch.zeros(1, dtype=F64)).item()


def test_soft_label_optimum_is_the_log_odds():
    # the cross-entropy -p log s(d) - (1-p) log s(-d) is minimised where s(d) = p: d* = log(p/(1-p))
    d_star = math.log(0.85 / 0.15)
    assert d_star == pytest.approx(1.7346, abs=1e-4)
    assert _bt_minimiser(0.85) == pytest.approx(d_star, abs=1e-10)
    # ... and the gradient vanishes there
    d = _scalar(d_star).requires_grad_(True)
    (g,) = torch.autograd.grad(bradley_terry_loss(d, torch.zeros(1, dtype=F64), prob=0.85), d)
    assert abs(g.item()) < 1e-15


def test_strength_scales_the_difference_and_margin_shifts_the_optimum():
    d = torch.tensor([0.7, -0.2], dtype=F64)
    z = torch.zeros(2, dtype=F64)
    assert bradley_terry_loss(d, z, prob=0.6, strength=2.5).item() == pytest.approx(
        bradley_terry_loss(2.5 * d, z, prob=0.6).item(), abs=1e-15
    )
    # optimum of s d - m = logit(p):  d* = (logit(p) + m) / s
    logit = math.log(0.85 / 0.15)
    assert _bt_minimiser(0.85, strength=2.0) == pytest.approx(logit / 2.0, abs=1e-10)
    assert _bt_minimiser(0.85, margin=1.0) == pytest.approx(logit + 1.0, abs=1e-10)
    assert _bt_minimiser(0.85, strength=2.0, margin=1.0) == pytest.approx((logit + 1.0) / 2.0, abs=1e-10)
    # Llama 2's hard-label margin loss: -log sigmoid(d - m)
    assert bradley_terry_loss(_scalar(0.3), _scalar(0.0), margin=1.0).item() == pytest.approx(
        math.log(1 + math.exp(0.7)), abs=1e-14
    )


def test_bt_loss_accepts_per_pair_probabilities():
    chosen, rejected = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.0, 0.0], dtype=F64)
    p = torch.tensor([0.9, 0.6], dtype=F64)
    s = lambda x: 1 / (1 + math.exp(-x))
    expected = (-(0.9 * math.log(s(1)) + 0.1 * math.log(s(-1))) - (0.6 * math.log(s(2)) + 0.4 * math.log(s(-2)))) / 2
    assert bradley_terry_loss(chosen, rejected, prob=p).item() == pytest.approx(expected, abs=1e-14)


# ----------------------------------------------------------------------------- Davidson


def test_davidson_probabilities_sum_to_one_and_match_the_formula():
    g = torch.Generator().manual_seed(0)
    r_w, r_l = torch.randn(50, generator=g, dtype=F64) * 3, torch.randn(50, generator=g, dtype=F64) * 3
    win, lose, tie = davidson_probs(r_w, r_l, log_nu=math.log(0.7))
    assert torch.allclose(win + lose + tie, torch.ones(50, dtype=F64), atol=1e-14)
    for i in range(5):
        pw, pl = math.exp(r_w[i].item()), math.exp(r_l[i].item())
        den = pw + pl + 0.7 * math.sqrt(pw * pl)
        assert (win[i].item(), lose[i].item(), tie[i].item()) == pytest.approx((pw / den, pl / den, 0.7 * math.sqrt(pw * pl) / den))


def test_davidson_nu_to_zero_is_bradley_terry_and_equal_strengths_give_nu_over_two_plus_nu():
    r_w, r_l = torch.tensor([1.0, -2.0, 30.0], dtype=F64), torch.tensor([0.0, 1.0, -30.0], dtype=F64)
    bt = bradley_terry_prob(r_w, r_l)
    win, lose, tie = davidson_probs(r_w, r_l, log_nu=-math.inf)  # nu = 0 exactly
    assert torch.allclose(win, bt, atol=1e-15) and (tie == 0).all()
    win, _, _ = davidson_probs(r_w, r_l, log_nu=-40.0)  # nu -> 0
    assert torch.allclose(win, bt, atol=1e-15)
    _, _, tie = davidson_probs(_scalar(0.4), _scalar(0.4), log_nu=math.log(0.5))
    assert tie.item() == pytest.approx(0.5 / 2.5, abs=1e-15)


def test_davidson_is_invariant_to_shifting_all_rewards():
    r_w, r_l = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    a = torch.stack(davidson_probs(r_w, r_l, 0.3))
    b = torch.stack(davidson_probs(r_w + 123.0, r_l + 123.0, 0.3))
    assert torch.allclose(a, b, atol=1e-14)


def test_davidson_loss_and_the_maximum_likelihood_tie_parameter():
    # all pairs of equal strength, a share f of them ties: loss(nu) = log(2 + nu) - f log nu,
    # minimised at nu = 2 f / (1 - f)
    f = 0.3
    tie = torch.tensor([1.0] * 3 + [0.0] * 7, dtype=F64)
    z = torch.zeros(10, dtype=F64)
    nu = 0.9
    assert davidson_tie_loss(z, z, tie, math.log(nu)).item() == pytest.approx(math.log(2 + nu) - f * math.log(nu), abs=1e-14)
    log_nu = newton_minimise(lambda ln: davidson_tie_loss(z, z, tie, ln.reshape(())), torch.zeros(1, dtype=F64))
    assert math.exp(log_nu.item()) == pytest.approx(2 * f / (1 - f), abs=1e-10)


# ----------------------------------------------------------------------------- Plackett-Luce


def test_plackett_luce_with_two_items_is_bradley_terry():
    g = torch.Generator().manual_seed(1)
    c, r = torch.randn(8, generator=g, dtype=F64), torch.randn(8, generator=g, dtype=F64)
    assert plackett_luce_loss(torch.stack([c, r], 1)).item() == pytest.approx(bradley_terry_loss(c, r).item(), abs=1e-14)


def test_plackett_luce_probabilities_of_all_orderings_sum_to_one():
    s = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=F64)
    orders = list(itertools.permutations(range(4)))
    assert len(orders) == 24
    logps = plackett_luce_logprob(torch.stack([s[list(o)] for o in orders]))
    assert logps.exp().sum().item() == pytest.approx(1.0, abs=1e-14)
    # one ordering by the product formula prod_i pi_i / sum_{j>=i} pi_j
    pi = [math.exp(x) for x in (2.0, 0.5, 0.1, -1.0)]
    direct = math.prod(pi[i] / sum(pi[i:]) for i in range(4))
    assert plackett_luce_logprob(torch.tensor([[2.0, 0.5, 0.1, -1.0]], dtype=F64)).item() == pytest.approx(math.log(direct), abs=1e-14)


# ----------------------------------------------------------------------------- calibration and agreement


def test_ece_is_zero_for_an_exactly_calibrated_construction():
    # in each bin the predicted probability equals the observed frequency: 20 at 0.05 with 1 positive,
    # 4 at 0.25 with 1, 2 at 0.5 with 1, 5 at 0.8 with 4, 10 at 1.0 with 10
    groups = [(0.05, 20, 1), (0.25, 4, 1), (0.5, 2, 1), (0.8, 5, 4), (1.0, 10, 10)]
    probs, labels = [], []
    for p, n, pos in groups:
        probs += [p] * n
        labels += [1.0] * pos + [0.0] * (n - pos)
    ece = expected_calibration_error(torch.tensor(probs, dtype=F64), torch.tensor(labels, dtype=F64))
    assert ece.item() == pytest.approx(0.0, abs=1e-15)


def test_ece_of_known_miscalibrated_cases():
    # always 0.9 confident, right half the time: |0.5 - 0.9| = 0.4
    assert expected_calibration_error(torch.full((10,), 0.9, dtype=F64), torch.tensor([1.0, 0.0] * 5, dtype=F64)).item() == pytest.approx(0.4)
    # two bins by hand: bin (0.1,0.2]: conf 0.2, acc 0 ; bin (0.7,0.8]: conf 0.8, acc 0.5
    #   ECE = 2/4 * 0.2 + 2/4 * 0.3 = 0.25
    probs = torch.tensor([0.2, 0.2, 0.8, 0.8], dtype=F64)
    labels = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=F64)
    assert expected_calibration_error(probs, labels).item() == pytest.approx(0.25, abs=1e-15)
    # bins are (lo, hi]: 0.3 and 0.31 fall in different bins with 10 bins, in one bin with 2
    probs = torch.tensor([0.3, 0.31], dtype=F64)
    labels = torch.tensor([1.0, 0.0], dtype=F64)
    assert expected_calibration_error(probs, labels, n_bins=10).item() == pytest.approx((0.7 + 0.31) / 2)
    assert expected_calibration_error(probs, labels, n_bins=2).item() == pytest.approx(abs(1 - 0.61) / 2)


def test_fleiss_kappa_on_the_textbook_example():
    # Fleiss' kappa worked example (Wikipedia, "Fleiss' kappa"): 10 items, 14 raters, 5 categories;
    # P_bar = 0.378, P_e = 0.213, kappa = 0.210
    counts = torch.tensor([
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ])
    assert round(fleiss_kappa(counts).item(), 3) == 0.210


def test_fleiss_kappa_perfect_agreement_and_undefined_case():
    assert fleiss_kappa(torch.tensor([[3, 0], [0, 3], [3, 0]])).item() == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa(torch.tensor([[3, 0], [3, 0]])).item())
