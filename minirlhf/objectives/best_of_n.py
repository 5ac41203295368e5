"""Best-of-n sampling as a policy: its exact distribution over a finite set of outcomes and its KL to the base.

Best-of-n (rejection sampling against a reward model; Nakano et al. 2021, Stiennon et al. 2020) draws
y_1, ..., y_n i.i.d. from a base policy pi and returns the draw with the highest reward r(y).
On a finite set of outcomes its distribution, and so KL(pi_bon || pi), can be computed exactly,
which is what the functions here do. They take tensors and return tensors (torch only).
"""

from __future__ import annotations

import torch

__all__ = ["best_of_n_kl_bound", "best_of_n_distribution", "best_of_n_kl", "best_of_n_subset_mean"]


def best_of_n_kl_bound(n) -> torch.Tensor:
    """The commonly quoted KL of the best-of-n policy to the base policy:

        KL_bon = log n - (n - 1) / n

    (Stiennon et al. 2020, "Learning to summarize from human feedback"; Hilton's note on the KL
    of best-of-n). It is exact when the reward of a draw has no atoms (a continuous
    distribution of r(y): then F(r(Y)) is uniform and the best-of-n density is n F^(n-1) times the
    base density). Beirami et al. (2024), "Theoretical guarantees on the best-of-n alignment policy",
    show it is an upper bound in general: on a finite outcome set KL(pi_bon || pi) <= log n - (n-1)/n,
    strictly below it for n > 1, approaching it as the outcomes get many and individually unlikely.
    `n` (an int >= 1, or a tensor of them) -> float64 tensor of the same shape.
    """
    n_t = torch.as_tensor(n, dtype=torch.float64)
    if bool((n_t < 1).any()) or bool((n_t != n_t.round()).any()):
        raise ValueError(f"n: expected integers >= 1, got {n}")
    return torch.log(n_t) - (n_t - 1) / n_t


def _check(probs: torch.Tensor, rewards: torch.Tensor, n) -> None:
    if probs.dim() != 1 or rewards.shape != probs.shape:
        raise ValueError(f"probs and rewards: expected two 1-D tensors of one length K, got shapes "
                         f"{tuple(probs.shape)} and {tuple(rewards.shape)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
        raise ValueError("probs: expected finite, non-negative probabilities")
    total = probs.sum().item()
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"probs: expected probabilities summing to 1, got a sum of {total}")
    if bool(torch.isnan(rewards).any()):
        raise ValueError("rewards: nan is not a reward")


def best_of_n_distribution(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """The exact distribution of the best-of-n policy: pi_bon(y) for each of K outcomes.

    probs (K,) the base policy pi over the outcomes; rewards (K,) their rewards r(y); n >= 1 draws.
    With F(t) = P_pi(r(Y) <= t) and F(t^-) = P_pi(r(Y) < t), the largest of n i.i.d. rewards equals t
    with probability F(t)^n - F(t^-)^n. For distinct rewards that is the outcome's own probability
    (Beirami et al. 2024):

        pi_bon(y) = F(r(y))^n - F(r(y)^-)^n.

    Tie rule: when several draws share the highest reward, the returned draw is one of them chosen
    uniformly at random (any rule that picks a position without looking at which outcome sits
    there gives the same answer). Given that the best reward is t, the draws with reward t are
    i.i.d. from pi restricted to the tie class C(t) = {y': r(y') = t}, so

        pi_bon(y) = pi(y) / pi(C(r(y))) * (F(r(y))^n - F(r(y)^-)^n),

    i.e. the tied outcomes act as one merged outcome whose mass is split in proportion to pi.
    Outcomes with pi(y) = 0 get 0. Returns a (K,) tensor in the dtype of probs (which sums to 1).
    """
    probs = torch.as_tensor(probs)
    rewards = torch.as_tensor(rewards, device=probs.device)
    _check(probs, rewards, n)
    order = torch.argsort(rewards, stable=True)
    sorted_r, sorted_p = rewards[order], probs[order]
    _, inverse = torch.unique_consecutive(sorted_r, return_inverse=True)  # tie class of each sorted outcome
    G = int(inverse.max().item()) + 1
    class_mass = torch.zeros(G, dtype=probs.dtype, device=probs.device).index_add_(0, inverse, sorted_p)  # (G,)
    F_le = torch.cumsum(class_mass, 0).clamp(max=1.0)  # F(t) at each class's reward t
    F_lt = torch.cat([F_le.new_zeros(1), F_le[:-1]])  # F(t^-)
    best_mass = F_le ** n - F_lt ** n  # P(max of n rewards = t), (G,)
    share = torch.where(class_mass[inverse] > 0, sorted_p / class_mass[inverse].clamp(min=1e-300),
                        torch.zeros_like(sorted_p))
    out = torch.empty_like(probs)
    out[order] = share * best_mass[inverse]
    return out


def best_of_n_kl(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """KL(pi_bon || pi) = sum_y pi_bon(y) log(pi_bon(y) / pi(y)), exactly, from best_of_n_distribution.

    0 at n = 1; at most best_of_n_kl_bound(n) = log n - (n-1)/n (Beirami et al. 2024).
    Ties (see best_of_n_distribution) give the KL of the merged outcomes, since pi_bon / pi is
    constant on a tie class. Returns a scalar tensor.
    """
    probs = torch.as_tensor(probs)
    bon = best_of_n_distribution(probs, rewards, n)
    return (torch.xlogy(bon, bon) - torch.xlogy(bon, probs)).sum()


def best_of_n_subset_mean(rewards: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """From N samples y_1..y_N of one prompt, the mean over all C(N, n) subsets of n of them of the
    ``values`` of the subset's highest-``rewards`` sample: an unbiased estimate of E[v(best of n draws)]
    for n <= N, with less variance than one subset (e.g. the first n).

    With the samples sorted by reward, r_(1) <= ... <= r_(N), the k-th is the best of a uniformly
    random n-subset with probability C(k-1, n-1) / C(N, n), so the estimate is

        sum_k C(k-1, n-1) / C(N, n) * v_(k).

    Ties in reward are broken by position (the sort is stable), so a tie of equal rewards with
    different values gives one of the tie-breaking rules' answers. rewards, values (N,); n in 1..N.
    Returns a float64 scalar tensor; n = 1 is the plain mean of ``values``, n = N its value at the
    highest reward.
    """
    rewards, values = torch.as_tensor(rewards), torch.as_tensor(values)
    if rewards.dim() != 1 or values.shape != rewards.shape:
        raise ValueError(f"rewards and values: expected two 1-D tensors of one length N, got shapes "
                         f"{tuple(rewards.shape)} and {tuple(values.shape)}")
    N = rewards.numel()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= N:
        raise ValueError(f"n: expected an int in 1..{N} (the number of samples), got {n!r}")
    order = torch.argsort(rewards, stable=True)
    k = torch.arange(1, N + 1, dtype=torch.float64)  # rank of each sorted sample
    # log C(k-1, n-1) - log C(N, n) by lgamma; C(k-1, n-1) = 0 for k < n
    log_c = lambda a, b: torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)  # noqa: E731
    n_t = torch.tensor(float(n), dtype=torch.float64)
    weights = torch.where(k >= n, torch.exp(log_c((k - 1).clamp(min=n - 1), n_t - 1)
                                            - log_c(torch.tensor(float(N), dtype=torch.float64), n_t)),
                          torch.zeros_like(k))
    return (weights * values[order].to(torch.float64)).sum()
