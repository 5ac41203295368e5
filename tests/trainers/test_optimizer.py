"""make_optimizer: two AdamW steps equal the closed form of Loshchilov & Hutter (2019, Algorithm 2),
computed here by hand, with weight decay on matrices only, on PyTorch's per-op path and on its fused kernel."""
import math

import pytest
import torch

from minirlhf.trainers.common import OptimConfig, make_optimizer


def adamw_by_hand(p, grads, lr, wd, b1, b2, eps):
    """p_t = p_{t-1} (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps), bias-corrected moments."""
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
    return p


@pytest.mark.parametrize("fused", [False, True])
def test_two_steps_equal_the_closed_form_with_decay_on_matrices_only(fused):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    cfg = OptimConfig(lr=0.05, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, fused=fused)
    opt = make_optimizer([w, b], cfg)
    assert all(bool(g["fused"]) == fused for g in opt.param_groups)
    w0, b0 = w.detach().clone(), b.detach().clone()
    gw = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]
    gb = [torch.randn(4, dtype=torch.float64) for _ in range(2)]
    for t in range(2):
        w.grad, b.grad = gw[t].clone(), gb[t].clone()
        opt.step()
    assert torch.allclose(w, adamw_by_hand(w0, gw, 0.05, 0.1, 0.9, 0.95, 1e-8), rtol=0, atol=1e-12)
    assert torch.allclose(b, adamw_by_hand(b0, gb, 0.05, 0.0, 0.9, 0.95, 1e-8), rtol=0, atol=1e-12)
    # the first step moves each coordinate by about lr (m_hat / sqrt(v_hat) = g / |g|), decay aside
    assert math.isclose(float((b0 - adamw_by_hand(b0, gb[:1], 0.05, 0.0, 0.9, 0.95, 1e-8)).abs().max()), 0.05,
                        rel_tol=1e-6)
