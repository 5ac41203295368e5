"""The KL-penalised RLHF reward, written out by hand."""
import math

import pytest
import torch

from minirlhf.objectives.rlhf import kl_penalized_rewards, last_valid_index


def test_rewards_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.3, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.2, -9.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    scores = torch.tensor([2.0, -1.0], dtype=torch.float64)
    rewards, kl = kl_penalized_rewards(scores, logp, ref, mask, kl_coef=0.1, kind="k1")
    # k1 = logp - ref: row 0 -> 0.5, -1.0, 0.0; row 1 -> 0.1 (then padding)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [0.1, 0.0, 0.0]], dtype=torch.float64))
    expected = torch.tensor([[-0.05, 0.1, 2.0], [-0.01 - 1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(rewards, expected)
    # The total reward of a sequence is score - beta * sum_t k1_t = score - beta * log(pi/pi_ref).
    total = rewards.sum(-1)
    assert math.isclose(total[0].item(), 2.0 - 0.1 * (-3.5 - (-3.0)))


def test_k3_penalty_is_never_a_bonus():
    torch.manual_seed(0)
    logp, ref = torch.randn(4, 6), torch.randn(4, 6)
    rewards, kl = kl_penalized_rewards(torch.zeros(4), logp, ref, torch.ones(4, 6), 0.5, "k3")
    assert (kl >= 0).all() and (rewards <= 0).all()


def test_empty_rows_are_refused():
    with pytest.raises(ValueError, match="at least one valid"):
        last_valid_index(torch.tensor([[1, 0], [0, 0]]))
    assert last_valid_index(torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist() == [1, 2]
