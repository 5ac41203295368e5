"""Policy-gradient objectives without a clip: TRPO's importance-sampled surrogate and the
REINFORCE loss with a sequence-level advantage (RLOO).

Pure functions of tensors (torch only). Shapes: N (or B) sequences, T response tokens. Masks are
float or bool, 1 on the response tokens (right-padded rows); padding never reaches a value or a
gradient, whatever it holds.

Papers:
- Schulman, Levine, Moritz, Jordan, Abbeel (2015), "Trust region policy optimization" (TRPO).
- Williams (1992), "Simple statistical gradient-following algorithms for connectionist
  reinforcement learning" (REINFORCE).
- Kool, van Hoof, Welling (2019), "Buy 4 REINFORCE samples, get a baseline for free!";
  Ahmadian et al. (2024), "Back to basics: revisiting REINFORCE style optimization for learning
  from human feedback in LLMs" (RLOO).
"""

from __future__ import annotations

import torch

from .policy import ppo_penalty_loss
from .stats import check_ndim, masked_sum

Tensor = torch.Tensor

__all__ = ["trpo_surrogate", "reinforce_loss"]


def trpo_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """TRPO's surrogate objective, to MAXIMISE (Schulman et al. 2015, eq. 14, sample-based form):

        L(theta) = E_t[ pi_theta(a_t|s_t) / pi_theta_old(a_t|s_t) * A_t ]
                 = masked mean over tokens of rho_t A_t

    logp, old_logp, advantages, mask: (B,T); old_logp and advantages are constants. At
    theta = theta_old it equals the mean advantage and its gradient is the policy gradient
    E_t[A_t grad log pi(a_t|s_t)]. It is the negated PPO KL-penalty loss with beta = 0 (Schulman
    et al. 2017, eq. 8), which is how it is computed here. Returns a scalar.
    """
    loss, _ = ppo_penalty_loss(logp, old_logp, advantages, mask, beta=0.0)
    return -loss


def reinforce_loss(logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE with one advantage per sequence (Williams 1992; RLOO: Ahmadian et al. 2024, eq. 8
    with Kool et al. 2019's leave-one-out baseline):

        loss = -1/N sum_i A_i log pi_theta(y_i | x_i),   log pi_theta(y_i | x_i) = sum_t m_it log pi_theta(y_it | x_i, y_i,<t)

    Its gradient, -1/N sum_i A_i grad log pi(y_i|x_i), is an unbiased estimate of -grad E[R] when the
    y_i are sampled from pi_theta itself and the baseline in A_i does not depend on y_i: an on-policy
    loss, with no ratio and no clip. logp, mask: (N,T); advantages (N,), a constant. Returns a scalar.
    """
    check_ndim("logp", logp, 2, "(N,T)")
    check_ndim("advantages", advantages, 1, "(N,)")
    if advantages.shape[0] != logp.shape[0]:
        raise ValueError(f"advantages: expected one per sequence, shape ({logp.shape[0]},), got {tuple(advantages.shape)}")
    seq_logp = masked_sum(logp, mask, dim=-1)  # (N,); masked_sum checks the mask's shape
    return -(advantages.detach().to(logp.dtype) * seq_logp).mean()
