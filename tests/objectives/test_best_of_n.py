"""Best-of-n: the exact distribution against brute-force enumeration of all n-tuples, and the KL bound."""

import itertools
import math

import pytest
import torch

from minirlhf.objectives import best_of_n_distribution, best_of_n_kl, best_of_n_kl_bound

F64 = torch.float64


def brute_force(probs, rewards, n):
    """Enumerate every n-tuple of draws; the best reward wins, ties split uniformly over the tied draws."""
    K = len(probs)
    out = [0.0] * K
    for draws in itertools.product(range(K), repeat=n):
        p = math.prod(probs[i] for i in draws)
        best = max(rewards[i] for i in draws)
        winners = [i for i in draws if rewards[i] == best]  # positions, so repeats count
        for i in winners:
            out[i] += p / len(winners)
    return torch.tensor(out, dtype=F64)


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


CASES = [
    ([0.5, 0.3, 0.2], [0.0, 1.0, 2.0]),  # distinct rewards
    ([0.1, 0.2, 0.3, 0.4], [3.0, -1.0, 0.5, 2.0]),  # distinct, unsorted
    ([0.25, 0.25, 0.3, 0.2], [1.0, 1.0, 0.0, 2.0]),  # a tie
    ([0.4, 0.1, 0.2, 0.3], [1.0, 0.0, 1.0, 1.0]),  # a three-way tie at the top
    ([0.5, 0.0, 0.5], [0.0, 5.0, 1.0]),  # an impossible outcome with the best reward
]


@pytest.mark.parametrize("probs,rewards", CASES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_distribution_matches_enumeration(probs, rewards, n):
    got = best_of_n_distribution(torch.tensor(probs, dtype=F64), torch.tensor(rewards, dtype=F64), n)
    expected = brute_force(probs, rewards, n)
    assert torch.allclose(got, expected, atol=1e-14, rtol=0)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-14)
    assert best_of_n_kl(torch.tensor(probs, dtype=F64), torch.tensor(rewards, dtype=F64), n).item() == \
        pytest.approx(kl(expected.tolist(), probs), abs=1e-13)


def test_distinct_rewards_closed_form():
    """pi_bon(y) = F(r_y)^n - F(r_y^-)^n: with rewards in the order 0 < 1 < 2, F = 0.5, 0.8, 1."""
    got = best_of_n_distribution(torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([0.0, 1.0, 2.0], dtype=F64), 3)
    assert torch.allclose(got, torch.tensor([0.5 ** 3, 0.8 ** 3 - 0.5 ** 3, 1 - 0.8 ** 3], dtype=F64), atol=1e-15)


def test_n1_is_the_base_policy():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(7, generator=g, dtype=F64), 0)
    r = torch.randn(7, generator=g, dtype=F64)
    assert torch.allclose(best_of_n_distribution(p, r, 1), p, atol=1e-15)
    assert best_of_n_kl(p, r, 1).item() == pytest.approx(0.0, abs=1e-15)
    assert best_of_n_kl_bound(1).item() == 0.0


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16])
def test_kl_below_bound_random(n):
    g = torch.Generator().manual_seed(n)
    for _ in range(20):
        K = int(torch.randint(2, 12, (1,), generator=g))
        p = torch.softmax(2 * torch.randn(K, generator=g, dtype=F64), 0)
        r = torch.randint(0, 4, (K,), generator=g).to(F64)  # ties likely
        assert best_of_n_kl(p, r, n).item() <= best_of_n_kl_bound(n).item() + 1e-12


@pytest.mark.parametrize("n", [2, 4, 16])
def test_kl_approaches_bound_with_many_equal_outcomes(n):
    """K distinct rewards, pi uniform: the KL rises with K toward log n - (n-1)/n and stays below it."""
    bound = best_of_n_kl_bound(n).item()
    gaps = []
    for K in (4, 16, 64, 256, 1024, 8192):
        p = torch.full((K,), 1.0 / K, dtype=F64)
        gaps.append(bound - best_of_n_kl(p, torch.arange(K, dtype=F64), n).item())
    assert all(g > 0 for g in gaps)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 2e-3 * bound


def test_bound_values():
    assert best_of_n_kl_bound(2).item() == pytest.approx(math.log(2) - 0.5)
    assert torch.allclose(best_of_n_kl_bound(torch.tensor([1, 4])), torch.tensor([0.0, math.log(4) - 0.75], dtype=F64))
    with pytest.raises(ValueError):
        best_of_n_kl_bound(0)


def test_ties_act_as_one_merged_outcome():
    """Tie rule: a uniformly chosen tied draw. Tied outcomes share their class's best-of-n mass in proportion to
    pi, so the KL equals that of the merged distribution."""
    p = torch.tensor([0.1, 0.3, 0.2, 0.4], dtype=F64)
    r = torch.tensor([1.0, 2.0, 2.0, 0.0], dtype=F64)
    bon = best_of_n_distribution(p, r, 3)
    assert bon[1] / bon[2] == pytest.approx(0.3 / 0.2)
    merged_p = torch.tensor([0.1, 0.5, 0.4], dtype=F64)
    merged = best_of_n_distribution(merged_p, torch.tensor([1.0, 2.0, 0.0], dtype=F64), 3)
    assert (bon[1] + bon[2]).item() == pytest.approx(merged[1].item(), abs=1e-15)
    assert best_of_n_kl(p, r, 3).item() == pytest.approx(best_of_n_kl(merged_p, torch.tensor([1.0, 2.0, 0.0],
                                                                                             dtype=F64), 3).item())
    # all rewards equal: best-of-n is the base policy
    assert torch.allclose(best_of_n_distribution(p, torch.zeros(4, dtype=F64), 5), p, atol=1e-15)


def test_bad_input():
    p = torch.tensor([0.5, 0.5], dtype=F64)
    with pytest.raises(ValueError, match="n"):
        best_of_n_distribution(p, torch.zeros(2, dtype=F64), 0)
    with pytest.raises(ValueError, match="sum"):
        best_of_n_distribution(torch.tensor([0.5, 0.6], dtype=F64), torch.zeros(2, dtype=F64), 2)
    with pytest.raises(ValueError, match="shape"):
        best_of_n_distribution(p, torch.zeros(3, dtype=F64), 2)


def test_subset_mean_is_the_average_over_every_n_subset_of_the_best_ones_value():
    from minirlhf.objectives import best_of_n_subset_mean

    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(7, generator=g, dtype=torch.float64)
    values = torch.randn(7, generator=g, dtype=torch.float64)
    for n in range(1, 8):
        subsets = list(itertools.combinations(range(7), n))
        brute = sum(float(values[max(s, key=lambda i: float(rewards[i]))]) for s in subsets) / len(subsets)
        assert float(best_of_n_subset_mean(rewards, values, n)) == pytest.approx(brute, abs=1e-12)
    assert float(best_of_n_subset_mean(rewards, values, 1)) == pytest.approx(float(values.mean()))
    assert float(best_of_n_subset_mean(rewards, values, 7)) == pytest.approx(float(values[rewards.argmax()]))
    for bad in (0, 8, 2.0, True):
        with pytest.raises(ValueError, match="n: expected"):
            best_of_n_subset_mean(rewards, values, bad)
    with pytest.raises(ValueError, match="1-D"):
        best_of_n_subset_mean(rewards, values[:3], 2)
