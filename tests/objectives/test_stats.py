"""Masked statistics against direct computation on the valid entries only."""

import math
import statistics

import pytest
import torch

from minirlhf.objectives import explained_variance, masked_mean, masked_sum, masked_var, whiten

F64 = torch.float64


def _example():
    x = torch.tensor([[1.0, 2.0, 4.0, 7.0], [3.0, -1.0, float("nan"), float("inf")]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    valid = [1.0, 2.0, 4.0, 7.0, 3.0, -1.0]
    return x, mask, valid


def test_masked_reductions_equal_plain_statistics_of_the_valid_entries():
    x, mask, valid = _example()  # padding holds nan and inf: they must not leak
    assert masked_sum(x, mask).item() == pytest.approx(sum(valid), abs=1e-12)
    assert masked_mean(x, mask).item() == pytest.approx(statistics.fmean(valid), abs=1e-12)
    assert masked_var(x, mask).item() == pytest.approx(statistics.variance(valid), abs=1e-12)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(valid), abs=1e-12)
    # along a dimension: row 1 has only [3, -1]
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([3.5, 1.0], abs=1e-12)
    assert masked_var(x, mask, dim=1).tolist() == pytest.approx([statistics.variance([1, 2, 4, 7]), 8.0], abs=1e-12)


def test_masked_mean_with_float_weights_is_a_weighted_average():
    x = torch.tensor([1.0, 2.0, 10.0], dtype=F64)
    w = torch.tensor([0.25, 0.75, 0.0], dtype=F64)
    assert masked_mean(x, w).item() == pytest.approx(0.25 * 1 + 0.75 * 2, abs=1e-15)


def test_masked_mean_of_nothing_is_zero_and_gradient_skips_padding():
    x = torch.tensor([1.0, 5.0], dtype=F64, requires_grad=True)
    mask = torch.tensor([0.0, 0.0], dtype=F64)
    assert masked_mean(x, mask).item() == 0.0
    m = torch.tensor([1.0, 0.0], dtype=F64)
    (g,) = torch.autograd.grad(masked_mean(x * 3, m), x)
    assert g.tolist() == [3.0, 0.0]


def test_whiten_has_zero_mean_and_unit_variance_on_valid_entries():
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 5.0 * torch.randn(4, 9, generator=g, dtype=F64)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 2:] = False
    w = whiten(x, mask, eps=0.0)
    valid = w[mask].tolist()
    assert statistics.fmean(valid) == pytest.approx(0.0, abs=1e-12)
    assert statistics.variance(valid) == pytest.approx(1.0, abs=1e-12)  # unbiased, as torch.var
    assert (w[~mask] == 0).all()
    # with the default eps the variance is var / (var + eps): still 1 to ~1e-9 here
    assert statistics.variance(whiten(x, mask)[mask].tolist()) == pytest.approx(1.0, abs=1e-8)


def test_whiten_without_shift_keeps_the_mean():
    g = torch.Generator().manual_seed(1)
    x = 3.0 + 5.0 * torch.randn(50, generator=g, dtype=F64)
    w = whiten(x, shift_mean=False, eps=0.0)
    assert w.mean().item() == pytest.approx(x.mean().item(), abs=1e-12)
    assert w.var().item() == pytest.approx(1.0, abs=1e-12)


def test_explained_variance_closed_forms():
    g = torch.Generator().manual_seed(2)
    returns = torch.randn(3, 7, generator=g, dtype=F64)
    mask = torch.ones(3, 7)
    mask[2, 4:] = 0
    # a perfect critic, and one off by a constant (EV ignores a shift), explain everything
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0, abs=1e-12)
    assert explained_variance(returns + 2.5, returns, mask).item() == pytest.approx(1.0, abs=1e-12)
    # predicting a constant explains nothing: Var[R - c] = Var[R]
    assert explained_variance(torch.zeros_like(returns), returns, mask).item() == pytest.approx(0.0, abs=1e-12)
    # V = R/2: Var[R/2] / Var[R] = 1/4, so EV = 3/4
    assert explained_variance(returns / 2, returns, mask).item() == pytest.approx(0.75, abs=1e-12)
    # constant returns: undefined
    assert math.isnan(explained_variance(returns, torch.ones_like(returns)).item())
