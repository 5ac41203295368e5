"""The RLHF reward: a sequence score at the last token, minus a per-token KL penalty.

    R(x, y) = r_phi(x, y) - beta * log(pi(y|x) / pi_ref(y|x))       (Ziegler et al., 2019, eq. 2;
                                                                     Stiennon et al., 2020, eq. 1;
                                                                     Ouyang et al., 2022, eq. 2)

spread over the tokens of the response as the per-token rewards of an episode:

    r_t = -beta * k(t)                  for every response token t
    r_T = r_T + r_phi(x, y)             the score arrives with the last token (EOS)

where k(t) is a per-token estimate of the KL (``kl_estimate``: k1 = log pi - log pi_ref gives the
formula above exactly).
"""
from __future__ import annotations

from torch import Tensor

from .policy import kl_estimate


def last_valid_index(mask: Tensor) -> Tensor:
    """Index of the last 1 in each row of a right-padded (B,T) mask; (B,) long. Rows must not be empty."""
    lengths = mask.long().sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("mask: every row needs at least one valid position")
    return lengths - 1


def kl_penalized_rewards(scores: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float,
                         kind: str = "k1") -> tuple[Tensor, Tensor]:
    """Per-token rewards r_t = -beta k_t, with the sequence score added at the last valid token.

    scores (B,); logp, ref_logp, mask (B,T), right-padded. Returns (rewards, kl) with kl the
    per-token estimate (0 on padding), both (B,T) and detached.
    """
    if scores.dim() != 1 or scores.shape[0] != logp.shape[0]:
        raise ValueError(f"scores: expected shape ({logp.shape[0]},), got {tuple(scores.shape)}")
    m = mask.to(logp.dtype)
    kl = kl_estimate(logp.detach(), ref_logp.detach(), kind) * m  # (B,T)
    rewards = -kl_coef * kl  # (B,T)
    last = last_valid_index(mask)
    rewards = rewards.scatter_add(1, last[:, None], scores.detach().to(rewards.dtype)[:, None])
    return rewards, kl
