"""Policy-gradient variants of reasoning-model RL: GSPO's sequence-level ratio and clip, DAPO's dynamic
sampling filter and overlong reward shaping, REINFORCE++ advantages.

DAPO's other two pieces live in policy.py: clip-higher is ppo_policy_loss(..., clip_eps_high=...) and the
token-level policy-gradient loss is aggregate_loss(..., "token_mean").

Pure functions of tensors (torch only). Shapes: B sequences, T response tokens; masks (B,T) are 1 on
valid tokens, responses right-padded. Groups are consecutive blocks of group_size samples of one prompt.

Papers:
- Zheng, Liu, Li, et al. (2025), "Group sequence policy optimization" (GSPO).
- Yu, Zhang, Zhu, et al. (2025), "DAPO: An open-source LLM reinforcement learning system at scale".
- Hu (2025), "REINFORCE++: A simple and efficient approach for aligning large language models".
"""

from __future__ import annotations

import torch

from .policy import _grouped, _k3, _weights, _zero_invalid, group_advantages
from .rlhf import kl_penalized_rewards
from .stats import check_ndim, check_same_shape, masked_mean, whiten

Tensor = torch.Tensor

__all__ = [
    "gspo_sequence_ratio",
    "gspo_policy_loss",
    "gspo_token_ratio",
    "nonconstant_groups",
    "overlong_penalty",
    "reinforce_pp_advantages",
]


# ----------------------------------------------------------------------------
# GSPO (Zheng et al. 2025)


def gspo_sequence_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO's length-normalised sequence importance ratio (Zheng et al. 2025):

        s_i(theta) = ( pi_theta(y_i|x) / pi_old(y_i|x) )^(1/|y_i|)
                   = exp( 1/|y_i| sum_t log( pi_theta(y_i,t|x, y_i,<t) / pi_old(y_i,t|x, y_i,<t) ) )

    logp, old_logp, mask: (B,T), old_logp a constant -> (B,). Every row needs a valid token.
    """
    check_ndim("logp", logp, 2, "(B,T)")
    check_same_shape(logp=logp, old_logp=old_logp)
    w, valid = _weights(mask, logp)
    if bool((w.sum(-1) <= 0).any()):
        raise ValueError("mask: every row needs at least one valid token (|y_i| > 0)")
    log_ratio = _zero_invalid(logp - old_logp.detach(), valid)  # (B,T)
    return torch.exp(masked_mean(log_ratio, w, dim=-1))  # (B,)


def gspo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    seq_advantages: Tensor,
    mask: Tensor,
    clip_eps_low: float = 3e-4,
    clip_eps_high: float = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO loss, the negated objective of Zheng et al. 2025, eq. 5, clipped per SEQUENCE:

        J_GSPO = E[ 1/G sum_i min( s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i ) ]
        loss   = mean_i max( -A_i s_i, -A_i clip(s_i, 1 - eps_low, 1 + eps_high) )

    with s_i from gspo_sequence_ratio and A_i one advantage per sequence (e.g. group_advantages).
    Defaults are the paper's ranges (3e-4, 4e-4): s_i is a per-token geometric mean, so it moves far
    less than a token ratio. logp, old_logp, mask (B,T); seq_advantages (B,), a constant.
    stats (detached 0-dim): "clipfrac" (share of sequences where the clip zeroes the gradient),
    "approx_kl" (masked token mean of k3 = (rho - 1) - log rho, rho the token ratio), "ratio_mean" (mean s_i).
    """
    if not (clip_eps_low > 0 and clip_eps_high > 0):
        raise ValueError(f"clip_eps_low, clip_eps_high: expected > 0, got {clip_eps_low}, {clip_eps_high}")
    s = gspo_sequence_ratio(logp, old_logp, mask)  # (B,)
    check_ndim("seq_advantages", seq_advantages, 1, "(B,)")
    if seq_advantages.shape != s.shape:
        raise ValueError(f"seq_advantages: expected shape {tuple(s.shape)} (one per row of logp), "
                         f"got {tuple(seq_advantages.shape)}")
    adv = seq_advantages.detach().to(s.dtype)  # (B,)
    unclipped = -adv * s
    clipped = -adv * s.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        w, valid = _weights(mask, logp)
        log_ratio = _zero_invalid(logp - old_logp, valid)  # (B,T)
        stats = {
            "clipfrac": (clipped > unclipped).to(s.dtype).mean(),
            "approx_kl": masked_mean(_k3(log_ratio), w),
            "ratio_mean": s.mean(),
        }
    return loss, stats


def gspo_token_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO-token's per-token ratio (Zheng et al. 2025), sg = stop-gradient:

        s_i,t(theta) = sg[s_i(theta)] * pi_theta(y_i,t|x, y_i,<t) / sg[pi_theta(y_i,t|x, y_i,<t)]

    Its value is s_i at every token and its gradient is s_i grad log pi(y_i,t), so with one advantage per
    sequence, clipping s_i,t per token and averaging 1/|y_i| sum_t per sequence reproduces GSPO exactly; it
    lets per-token advantages A_i,t be used. logp, old_logp, mask (B,T) -> (B,T), 0 on padding.
    """
    s = gspo_sequence_ratio(logp, old_logp, mask).detach()  # (B,)
    w, valid = _weights(mask, logp)
    token = torch.exp(_zero_invalid(logp - logp.detach(), valid))  # (B,T), value 1, gradient grad log pi
    return _zero_invalid(s[:, None] * token, valid)


# ----------------------------------------------------------------------------
# DAPO (Yu et al. 2025): dynamic sampling and overlong reward shaping


def nonconstant_groups(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO's dynamic-sampling filter (Yu et al. 2025, the constraint of the DAPO objective): keep a prompt's group only if

        0 < |{ o_i : is_equivalent(a, o_i) }| < G,

    i.e. the group is neither all right nor all wrong. For any reward: keep the groups whose rewards are
    not all equal; an all-equal group has zero group-normalised advantage and gives no gradient.
    rewards (N,) in consecutive groups of group_size -> bool (N/G,), True = keep.
    """
    g = _grouped(rewards, group_size, 2, "a group of one is always constant")  # (N/G, G)
    if bool(torch.isnan(g).any()):
        raise ValueError("rewards: got nan")
    return (g != g[:, :1]).any(dim=1)


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, overlong reward shaping), added to the task reward:

        R_length(y) = 0                                  |y| <= L_max - L_cache
                      ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max
                      -1                                 L_max < |y|

    L_max = max_len, L_cache = buffer (0 < buffer <= max_len). It is continuous: 0 at |y| = L_max - L_cache,
    -1 at |y| = L_max. lengths: any shape of response lengths -> float tensor of the same shape.
    """
    if not (isinstance(max_len, int) and max_len > 0):
        raise ValueError(f"max_len: expected a positive int, got {max_len!r}")
    if not (isinstance(buffer, int) and 0 < buffer <= max_len):
        raise ValueError(f"buffer: expected an int in (0, max_len = {max_len}], got {buffer!r}")
    if not isinstance(lengths, torch.Tensor):
        raise ValueError(f"lengths: expected a torch.Tensor, got {type(lengths).__name__}")
    L = lengths.to(lengths.dtype if lengths.is_floating_point() else torch.get_default_dtype())
    if bool((L < 0).any()) or bool(torch.isnan(L).any()):
        raise ValueError("lengths: expected lengths >= 0")
    expected = max_len - buffer
    ramp = (expected - L) / buffer
    return torch.where(L <= expected, torch.zeros_like(L), torch.where(L <= max_len, ramp, -torch.ones_like(L)))


# ----------------------------------------------------------------------------
# REINFORCE++ (Hu 2025)


def reinforce_pp_advantages(scores: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float,
                            group_size: int | None = None, kind: str = "k1", eps: float = 1e-8,
                            reduce=None) -> Tensor:
    """REINFORCE++ token advantages (Hu 2025): the KL-penalised return-to-go, whitened over the batch:

        r_t   = I(s_t = [EOS]) r(x, y) - beta KL_t,    KL_t = log pi_old(a_t|s_t) / pi_ref(a_t|s_t)  (k1)
        A_t   = sum_{i >= t} r_i = r(x, y) - beta sum_{i >= t} KL_i     (gamma = 1, no critic)
        A'_t  = (A_t - mean_batch A) / std_batch A                        over every valid token

    group_size given: the REINFORCE++-baseline variant, r(x, y) minus the mean score of its prompt's group
    (consecutive groups of group_size) before the return. beta = 0 leaves the KL out of the reward (to put
    it in the loss instead). kind picks the KL estimator (kl_estimate). scores (B,); logp (the sampling
    policy's), ref_logp, mask (B,T), right-padded -> (B,T), detached, 0 on padding. mean and std (unbiased)
    are those of this batch: under data parallelism pass ``reduce`` (the sum over processes,
    distributed.global_reduction) so they are the global batch's, as the paper's global normalisation requires.
    """
    check_ndim("logp", logp, 2, "(B,T)")
    w, valid = _weights(mask, logp)
    if valid.shape[1] > 1 and bool((~valid[:, :-1] & valid[:, 1:]).any()):
        raise ValueError("mask: expected right-padded rows (1 on a prefix of each row, then 0); found a 0 before a 1")
    if not beta >= 0:
        raise ValueError(f"beta: expected a KL coefficient >= 0, got {beta}")
    if group_size is not None:
        scores = group_advantages(scores, group_size, scale=False)  # (B,) r - group mean
    rewards, _ = kl_penalized_rewards(scores, logp, ref_logp, mask, beta, kind)  # (B,T)
    returns = _zero_invalid(rewards.flip(-1).cumsum(-1).flip(-1), valid)  # (B,T) return-to-go
    return whiten(returns, w, eps=eps, reduce=reduce)
