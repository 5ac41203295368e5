"""Critic-free baselines (GRPO group normalisation, RLOO, batch normalisation) against direct computation."""

import statistics

import pytest
import torch

from minirlhf.objectives import batch_normalized_advantages, broadcast_to_tokens, group_advantages, rloo_advantages

F64 = torch.float64


def _rewards(n=12, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64) * 3 + 1


def test_group_advantages_are_zero_mean_unit_std_per_group():
    r, G = _rewards(12), 4
    adv = group_advantages(r, G, eps=0.0)
    for k in range(0, 12, G):
        group = r[k : k + G].tolist()
        mean, std = statistics.fmean(group), statistics.stdev(group)  # stdev: unbiased, as torch.std
        assert adv[k : k + G].tolist() == pytest.approx([(x - mean) / std for x in group], abs=1e-12)
        assert statistics.fmean(adv[k : k + G].tolist()) == pytest.approx(0.0, abs=1e-12)
        assert statistics.stdev(adv[k : k + G].tolist()) == pytest.approx(1.0, abs=1e-12)


def test_group_advantages_eps_and_unscaled():
    r, G = _rewards(6, seed=1), 3
    adv = group_advantages(r, G, eps=0.5)
    group = r[:3].tolist()
    mean, std = statistics.fmean(group), statistics.stdev(group)
    assert adv[:3].tolist() == pytest.approx([(x - mean) / (std + 0.5) for x in group], abs=1e-12)
    assert group_advantages(r, G, scale=False)[:3].tolist() == pytest.approx([x - mean for x in group], abs=1e-12)
    # a group where every sample got the same reward carries no signal
    same = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0], dtype=F64)
    assert group_advantages(same, 3)[:3].tolist() == [0.0, 0.0, 0.0]


def test_rloo_is_reward_minus_the_mean_of_the_others():
    r, G = _rewards(12, seed=2), 4
    adv = rloo_advantages(r, G)
    for i in range(12):
        k = i - i % G
        others = [r[j].item() for j in range(k, k + G) if j != i]
        assert adv[i].item() == pytest.approx(r[i].item() - statistics.fmean(others), abs=1e-12)
    # the known identity RLOO = G/(G-1) (r - group mean)
    assert torch.allclose(adv, G / (G - 1) * group_advantages(r, G, scale=False), atol=1e-12)


def test_batch_normalized_advantages_and_broadcast():
    r = _rewards(5, seed=3)
    vals = r.tolist()
    mean, std = statistics.fmean(vals), statistics.stdev(vals)
    assert batch_normalized_advantages(r, eps=0.0).tolist() == pytest.approx([(x - mean) / std for x in vals], abs=1e-12)
    pstd = statistics.pstdev(vals)
    assert batch_normalized_advantages(r, eps=0.0, unbiased=False).tolist() == pytest.approx(
        [(x - mean) / pstd for x in vals], abs=1e-12
    )
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0], dtype=F64), mask)
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]
