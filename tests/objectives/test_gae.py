"""GAE (Schulman et al. 2016) against hand computation and its two limits."""

import pytest
import torch

from minirlhf.objectives import gae

F64 = torch.float64


def test_three_step_example_by_hand():
    # gamma = 0.9, lambda = 0.8, r = (1, 0, 2), V = (0.5, 1.0, 1.5); the step after t=2 is terminal.
    #   delta_2 = 2 + 0.9*0   - 1.5 = 0.5
    #   delta_1 = 0 + 0.9*1.5 - 1.0 = 0.35
    #   delta_0 = 1 + 0.9*1.0 - 0.5 = 1.4
    #   A_2 = 0.5
    #   A_1 = 0.35 + 0.72*0.5  = 0.71
    #   A_0 = 1.4  + 0.72*0.71 = 1.9112
    #   returns = A + V = (2.4112, 1.71, 2.0)
    r = torch.tensor([[1.0, 0.0, 2.0]], dtype=F64)
    v = torch.tensor([[0.5, 1.0, 1.5]], dtype=F64)
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([1.9112, 0.71, 0.5], abs=1e-12)
    assert ret[0].tolist() == pytest.approx([2.4112, 1.71, 2.0], abs=1e-12)


def _random(seed, B=3, T=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, generator=g, dtype=F64), torch.randn(B, T, generator=g, dtype=F64)


def test_lambda_one_gamma_one_is_reverse_cumulative_reward_minus_value():
    r, v = _random(0)
    adv, ret = gae(r, v, torch.ones_like(r), gamma=1.0, lam=1.0)
    reward_to_go = r.flip(1).cumsum(1).flip(1)
    assert torch.allclose(adv, reward_to_go - v, atol=1e-12)
    assert torch.allclose(ret, reward_to_go, atol=1e-12)


def test_lambda_one_is_the_discounted_monte_carlo_return_minus_value():
    r, v = _random(1)
    gamma = 0.7
    T = r.shape[1]
    adv, _ = gae(r, v, torch.ones_like(r), gamma=gamma, lam=1.0)
    for t in range(T):
        G = sum(gamma ** (k - t) * r[:, k] for k in range(t, T))
        assert torch.allclose(adv[:, t], G - v[:, t], atol=1e-12)


def test_lambda_zero_is_the_one_step_td_error():
    r, v = _random(2)
    gamma = 0.9
    adv, ret = gae(r, v, torch.ones_like(r), gamma=gamma, lam=0.0)
    v_next = torch.cat([v[:, 1:], torch.zeros(v.shape[0], 1, dtype=F64)], dim=1)  # terminal after T
    assert torch.allclose(adv, r + gamma * v_next - v, atol=1e-12)
    assert torch.allclose(ret, r + gamma * v_next, atol=1e-12)


def test_rows_of_different_lengths_match_each_row_alone_and_padding_is_zero():
    r, v = _random(3, B=3, T=6)
    lengths = [6, 4, 1]
    mask = torch.zeros(3, 6)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    r_pad, v_pad = r.clone(), v.clone()
    r_pad[mask == 0] = 1e6  # garbage in the padding must not leak into the valid steps
    v_pad[mask == 0] = float("nan")
    adv, ret = gae(r_pad, v_pad, mask, gamma=0.95, lam=0.9)
    for b, n in enumerate(lengths):
        a_alone, ret_alone = gae(r[b : b + 1, :n], v[b : b + 1, :n], torch.ones(1, n), gamma=0.95, lam=0.9)
        assert torch.allclose(adv[b, :n], a_alone[0], atol=1e-12)
        assert torch.allclose(ret[b, :n], ret_alone[0], atol=1e-12)
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()
    # returns = advantages + values on every valid step
    valid = mask.bool()
    assert torch.allclose(ret[valid], (adv + v)[valid], atol=1e-12)


def test_sparse_terminal_reward_decays_by_gamma_lambda():
    # the LM setting: one reward at the last token, V = 0: A_t = (gamma*lam)^(T-1-t) * R
    T, R, gamma, lam = 5, 2.0, 0.9, 0.5
    r = torch.zeros(1, T, dtype=F64)
    r[0, -1] = R
    adv, _ = gae(r, torch.zeros_like(r), torch.ones_like(r), gamma, lam)
    assert adv[0].tolist() == pytest.approx([(gamma * lam) ** (T - 1 - t) * R for t in range(T)], abs=1e-12)


def test_outputs_are_detached():
    r, v = _random(4)
    v.requires_grad_(True)
    adv, ret = gae(r, v, torch.ones_like(r), 0.99, 0.95)
    assert not adv.requires_grad and not ret.requires_grad
