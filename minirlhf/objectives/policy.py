"""Policy-gradient objectives: log-probs, entropy, KL estimators, GAE, PPO, critics, group baselines.

Pure functions of tensors (torch and math only). Shapes: B batch, T response time steps,
V vocabulary. Masks are float or bool with 1 on valid (response) positions and 0 on padding;
the responses are right-padded, so the mask of a row is 1 on a prefix. In the losses' means a
fractional mask entry acts as a weight (the tests use this to take exact expectations).

Papers, in the order the functions appear:
- Schulman (2020), "Approximating KL divergence" (blog): the k1/k2/k3 estimators.
- Schulman, Moritz, Levine, Jordan, Abbeel (2016), "High-dimensional continuous control using
  generalized advantage estimation" (GAE).
- Schulman, Wolski, Dhariwal, Radford, Klimov (2017), "Proximal policy optimization algorithms" (PPO).
- Ziegler, Stiennon, Wu, Brown, Radford, Amodei, Christiano, Irving (2019), "Fine-tuning language
  models from human preferences" (adaptive KL controller); Ouyang et al. (2022) (InstructGPT).
- Shao et al. (2024), "DeepSeekMath" (GRPO); Liu et al. (2025), "Understanding R1-Zero-like
  training: a critical perspective" (Dr. GRPO).
- Kool, van Hoof, Welling (2019), "Buy 4 REINFORCE samples, get a baseline for free!";
  Ahmadian et al. (2024), "Back to basics: revisiting REINFORCE style optimization ..." (RLOO).
- Yu et al. (2025), "DAPO: An open-source LLM reinforcement learning system at scale" (clip-higher).
"""

from __future__ import annotations

from typing import Callable

import torch

from .stats import (
    as_mask,
    check_ndim,
    check_same_shape,
    explained_variance,
    masked_mean,
    masked_sum,
    masked_var,
    whiten,
)

Tensor = torch.Tensor

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "whiten",
    "explained_variance",
    "logprobs_from_logits",
    "entropy_from_logits",
    "kl_from_logits",
    "KL_ESTIMATORS",
    "kl_estimate",
    "grpo_kl_penalty",
    "gae",
    "LOSS_AGGREGATIONS",
    "aggregate_loss",
    "ppo_policy_loss",
    "ppo_penalty_loss",
    "AdaptiveKLPenalty",
    "AdaptiveKLController",
    "FixedKLController",
    "value_loss",
    "group_advantages",
    "rloo_advantages",
    "batch_normalized_advantages",
    "broadcast_to_tokens",
]


def _valid(mask: Tensor, like: Tensor) -> Tensor:
    """Bool tensor, True on valid positions (shape checked against `like`)."""
    return as_mask(mask, like) != 0


def _weights(mask: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(w, valid): the mask as float weights in like's dtype, and the bool tensor w != 0.

    A 0/1 mask gives plain masked means; fractional entries act as weights (e.g. the
    probabilities of an enumerated action set, which turn a masked mean into an exact expectation).
    """
    w = as_mask(mask, like)
    return w, w != 0


def _zero_invalid(x: Tensor, valid: Tensor) -> Tensor:
    """x with padding positions set to 0 (torch.where, so no nan/inf from padding reaches a gradient)."""
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


# ----------------------------------------------------------------------------
# distributions over the vocabulary


def _at_least_fp32(x: Tensor) -> Tensor:
    """x in float32 when it is in a lower precision (bf16/fp16 logits from an autocast forward pass):
    log-probs, their ratios and KLs need more than bf16's 8 bits of mantissa. float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """log pi(y_t | s_t) = log softmax(z_t / tau)[y_t] for the chosen tokens.

    logits (B,T,V), labels (B,T) -> (B,T). The sampler divides the logits by the temperature
    tau before the softmax, so the log-probs of the sampling policy (the PPO "old" log-probs)
    must use the same tau.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
        raise ValueError("logits: expected a tensor (..., V) of unnormalised scores")
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:-1]:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected shape {tuple(logits.shape[:-1])} (logits without the vocab dim), got {got}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels: expected integer token ids, got dtype {labels.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature} (greedy decoding has no log-probs)")
    V = logits.shape[-1]
    if bool(((labels < 0) | (labels >= V)).any()):  # one check (one device sync) on the happy path
        raise ValueError(
            f"labels: token ids must lie in [0, {V}); got min {int(labels.min())}, max {int(labels.max())} "
            f"(replace ignore-index values such as -100 by a valid id and mask those positions)"
        )
    z = _at_least_fp32(logits) / temperature  # (B,T,V)
    return z.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)  # (B,T)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H(pi(.|s_t)) = -sum_a pi(a|s_t) log pi(a|s_t), per position: (B,T,V) -> (B,T).

    Computed as log Z - sum_a p_a z_a via logsumexp, so it is stable for large logits, and
    -inf logits (masked-out tokens) contribute 0.
    """
    logp = torch.log_softmax(_at_least_fp32(logits), dim=-1)  # (B,T,V)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device))
    return -plogp.sum(-1)


def kl_from_logits(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p || q) = sum_a p(a) (log p(a) - log q(a)) per position, full distributions: (B,T,V) -> (B,T).

    TRPO (Schulman et al. 2015) uses it with p = the old policy and q = the new one.
    """
    check_same_shape(logits_p=logits_p, logits_q=logits_q)
    logp = torch.log_softmax(_at_least_fp32(logits_p), dim=-1)  # (B,T,V)
    logq = torch.log_softmax(_at_least_fp32(logits_q), dim=-1)
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros((), dtype=p.dtype, device=p.device))
    return terms.sum(-1)


# ----------------------------------------------------------------------------
# KL estimators from sampled tokens (Schulman 2020, "Approximating KL divergence")

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def _k3(log_r: Tensor) -> Tensor:
    """k3 = (r - 1) - log r from log r, via expm1 so it stays accurate (and >= 0) near r = 1."""
    return torch.expm1(log_r) - log_r


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-sample estimate of KL(pi || pi_ref) from actions x ~ pi (Schulman 2020).

    With log r = log pi_ref(x) - log pi(x):
        k1  = -log r                 unbiased, high variance, can be negative
        k2  = (log r)^2 / 2          biased (E_pi[k2] is the f-divergence with f(u) = (log u)^2/2,
                                     equal to KL to second order when pi is close to pi_ref), low variance
        k3  = (r - 1) - log r        unbiased (E_pi[r] = 1) and always >= 0
        abs = |log r|                biased, >= 0
    Same shape as the inputs.
    """
    check_same_shape(logp=logp, ref_logp=ref_logp)
    log_r = ref_logp - logp
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return _k3(log_r)
    if kind == "abs":
        return log_r.abs()
    raise ValueError(f"kind: unknown KL estimator {kind!r}; expected one of {', '.join(KL_ESTIMATORS)}")


def grpo_kl_penalty(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """The per-token KL term GRPO adds to its loss (Shao et al. 2024, DeepSeekMath, eq. 4):

        D_KL[pi_theta || pi_ref] ~= pi_ref(o_t)/pi_theta(o_t) - log(pi_ref(o_t)/pi_theta(o_t)) - 1,

    i.e. Schulman's k3 with r = pi_ref/pi_theta, evaluated on tokens o_t sampled from pi_old
    and differentiated through log pi_theta only (the samples are not re-weighted).

    Its VALUE is an unbiased estimate of KL(pi_theta || pi_ref) when pi_old = pi_theta. Its
    GRADIENT is not the gradient of that KL. Enumerating a categorical exactly (on-policy,
    pi_old = pi_theta), the expected gradient of this term is

        E_{a~pi}[grad (r - 1 - log r)] = sum_a (pi(a) - pi_ref(a)) grad log pi(a)
                                       = -sum_a pi_ref(a) grad log pi(a)
                                       = grad KL(pi_ref || pi_theta),

    the gradient of the REVERSE (mass-covering) KL, not of KL(pi_theta || pi_ref). By the same
    enumeration, 0.5 * (log r)^2 (k2) in the loss has expected gradient grad KL(pi_theta || pi_ref),
    and k1 = -log r has expected gradient 0. (tests/objectives/test_grpo_kl.py checks all three.)
    Same shape as the inputs.
    """
    return kl_estimate(logp, ref_logp, "k3")


# ----------------------------------------------------------------------------
# Generalized advantage estimation (Schulman et al. 2016)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE(gamma, lambda) advantages and value targets (Schulman et al. 2016, eq. 16).

        delta_t = r_t + gamma V(s_{t+1}) - V(s_t)
        A_t     = sum_l (gamma lambda)^l delta_{t+l} = delta_t + gamma lambda A_{t+1}
        R_t     = A_t + V(s_t)                       (the lambda-return, the critic's target)

    rewards, values, mask: (B,T), right-padded (the mask of each row is 1 on a prefix). The
    step after the last valid one is terminal: V = 0 there and no advantage flows back from it.
    Returns (advantages, returns), (B,T) each, detached, 0 where the mask is 0.
    lambda = 1 gives the Monte-Carlo return minus V; lambda = 0 gives the one-step TD error.
    """
    check_ndim("rewards", rewards, 2, "(B,T)")
    check_same_shape(rewards=rewards, values=values)
    valid = _valid(mask, rewards)
    if valid.shape[1] > 1 and bool((~valid[:, :-1] & valid[:, 1:]).any()):
        raise ValueError("mask: expected right-padded rows (1 on a prefix of each row, then 0); found a 0 before a 1")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma: expected a discount in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam: expected the GAE lambda in [0, 1], got {lam}")

    dtype = torch.promote_types(rewards.dtype, values.dtype)
    r = _zero_invalid(rewards.detach().to(dtype), valid)  # (B,T)
    v = _zero_invalid(values.detach().to(dtype), valid)  # (B,T)
    B, T = r.shape
    advantages = torch.zeros_like(r)  # (B,T)
    next_value = torch.zeros(B, dtype=dtype, device=r.device)  # V(s_{t+1}); 0 past the end
    next_adv = torch.zeros(B, dtype=dtype, device=r.device)  # A_{t+1}
    for t in reversed(range(T)):
        # past the last valid step r = v = 0, so delta = 0 and A = 0 there: the episode has ended
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = delta + gamma * lam * next_adv
        advantages[:, t] = next_adv
        next_value = v[:, t]
    advantages = _zero_invalid(advantages, valid)
    returns = _zero_invalid(advantages + v, valid)
    return advantages, returns


# ----------------------------------------------------------------------------
# how per-token losses are reduced to one number

LOSS_AGGREGATIONS = ("token_mean", "seq_mean", "seq_sum_const")


def aggregate_loss(per_token: Tensor, mask: Tensor, mode: str = "token_mean", max_len: int | None = None) -> Tensor:
    """Reduce a per-token loss (B,T) to a scalar. With m the mask and |o_i| = sum_t m_it:

        token_mean     sum_it m_it l_it / sum_it m_it             every token weighs the same
                                                                  (PPO as in Ziegler et al. 2019; DESIGN default)
        seq_mean       1/B' sum_i (1/|o_i|) sum_t m_it l_it       every sequence weighs the same
                                                                  (GRPO, Shao et al. 2024, eq. 3); rows with no
                                                                  valid token are left out of the B' rows
        seq_sum_const  1/B sum_i (1/L) sum_t m_it l_it            a constant normaliser L = max_len
                                                                  (Dr. GRPO, Liu et al. 2025): no length bias

    For seq_sum_const, max_len defaults to the padded width T; pass the generation budget so the
    normaliser does not depend on how a batch happens to be padded.
    """
    check_ndim("per_token", per_token, 2, "(B,T)")
    w, valid = _weights(mask, per_token)
    x = _zero_invalid(per_token, valid)
    if mode == "token_mean":
        return masked_mean(x, w)
    if mode == "seq_mean":
        per_seq = masked_mean(x, w, dim=-1)  # (B,)
        has_tokens = w.sum(-1) > 0  # (B,)
        return masked_mean(per_seq, has_tokens)
    if mode == "seq_sum_const":
        L = per_token.shape[-1] if max_len is None else max_len
        if not (isinstance(L, int) and L > 0):
            raise ValueError(f"max_len: expected a positive int (the generation budget), got {max_len!r}")
        return (masked_sum(x, w, dim=-1) / L).mean()
    raise ValueError(f"loss_agg: unknown aggregation {mode!r}; expected one of {', '.join(LOSS_AGGREGATIONS)}")


# ----------------------------------------------------------------------------
# PPO (Schulman et al. 2017)


def _ratio_inputs(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor):
    """The shared prologue of the PPO losses: (w, valid, log rho, A), padding zeroed.

    log rho = log pi - log pi_old with pi_old and A treated as constants; on padding both are
    set to 0 (rho = 1), so whatever the padding holds never reaches a gradient.
    """
    check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages)
    w, valid = _weights(mask, logp)
    log_ratio = _zero_invalid(logp - old_logp.detach(), valid)  # (B,T)
    adv = _zero_invalid(advantages.detach().to(logp.dtype), valid)  # (B,T)
    return w, valid, log_ratio, adv


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    loss_agg: str = "token_mean",
    max_len: int | None = None,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-Clip loss, the negated clipped surrogate of Schulman et al. 2017, eq. 7:

        L^CLIP = E_t[ min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) ],  rho_t = pi(a_t|s_t)/pi_old(a_t|s_t)
        loss   = aggregate_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))

    logp, old_logp, advantages, mask: (B,T). old_logp and advantages are treated as constants.
    loss_agg picks the reduction (see aggregate_loss; default the masked token mean).

    clip_eps_high: DAPO's clip-higher (Yu et al. 2025): clip(rho, 1 - eps_low, 1 + eps_high) with
    eps_low = clip_eps; the paper uses 0.2 and 0.28, so low-probability tokens with A > 0 can grow
    further. None (default) is the symmetric clip, eps_high = clip_eps.

    stats (detached 0-dim tensors; call float() to log them):
        clipfrac   share of valid tokens where the clipped term is taken and differs from the
                   unclipped one, i.e. where the clip zeroes the gradient
                   (A > 0 and rho > 1 + eps_high, or A < 0 and rho < 1 - eps)
        approx_kl  masked mean of k3 = (rho - 1) - log rho, an estimate of KL(pi_old || pi)
        ratio_mean masked mean of rho
    """
    if not clip_eps > 0:
        raise ValueError(f"clip_eps: expected > 0, got {clip_eps}")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if not eps_high > 0:
        raise ValueError(f"clip_eps_high: expected > 0 or None, got {clip_eps_high}")
    w, _, log_ratio, adv = _ratio_inputs(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio)  # (B,T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)  # (B,T)
    loss = aggregate_loss(per_token, w, loss_agg, max_len)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), w),
            "approx_kl": masked_mean(_k3(log_ratio), w),
            "ratio_mean": masked_mean(ratio, w),
        }
    return loss, stats


def ppo_penalty_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    beta: float,
    kl: Tensor | None = None,
    loss_agg: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO with an adaptive KL penalty instead of the clip (Schulman et al. 2017, section 4, eq. 8):

        L^KLPEN = E_t[ rho_t A_t - beta KL[pi_old(.|s_t), pi(.|s_t)] ]
        loss    = aggregate_t ( -rho_t A_t + beta kl_t )

    kl_t is, by default, k3 on the sampled token with r = rho_t = pi/pi_old:
    (rho_t - 1) - log rho_t. Since the tokens come from pi_old, E_old[(rho - 1) - log rho] equals
    KL(pi_old || pi) exactly as a function of theta, so its gradient is the true gradient too.
    Pass `kl` (B,T), e.g. kl_from_logits(old_logits, logits), to use the full-distribution KL.
    Pair it with AdaptiveKLPenalty to adapt beta. stats (detached 0-dim tensors): "kl" (the mean
    penalty KL used), "approx_kl" (k3 mean), "ratio_mean".
    """
    if kl is not None:
        check_same_shape(logp=logp, kl=kl)
    if not beta >= 0:
        raise ValueError(f"beta: expected a KL coefficient >= 0, got {beta}")
    w, valid, log_ratio, adv = _ratio_inputs(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio)  # (B,T)
    k3 = _k3(log_ratio)  # (B,T), KL(pi_old || pi) estimate per token (r = rho)
    kl_tok = k3 if kl is None else _zero_invalid(kl, valid)
    per_token = -adv * ratio + beta * kl_tok
    loss = aggregate_loss(per_token, w, loss_agg, max_len)
    with torch.no_grad():
        stats = {
            "kl": masked_mean(kl_tok, w),
            "approx_kl": masked_mean(k3, w),
            "ratio_mean": masked_mean(ratio, w),
        }
    return loss, stats


class _KLCoefficient:
    """A KL coefficient beta with .value, .update(current_kl, n_steps) and a resumable state."""

    value: float

    def update(self, current_kl: float, n_steps: int = 1) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def state_dict(self) -> dict[str, float]:
        return {"value": float(self.value)}

    def load_state_dict(self, state: dict) -> None:
        if "value" not in state:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict with key 'value', got keys {sorted(state)}")
        self.value = float(state["value"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(value={self.value:.6g})"


class FixedKLController(_KLCoefficient):
    """A constant KL coefficient beta (Ziegler et al. 2019): update() leaves it unchanged."""

    def __init__(self, kl_coef: float):
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef: expected >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int = 1) -> float:
        return self.value


class AdaptiveKLController(_KLCoefficient):
    """Adaptive KL coefficient of Ziegler et al. 2019, as in their code (lm-human-preferences):

        e_t       = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta_t+1  = beta_t (1 + e_t n_steps / horizon)

    (the paper writes K_beta e_t with K_beta = 0.1; the code uses n_steps / horizon, the number
    of samples this update covers over a horizon of samples). beta grows when the measured
    KL(pi || pi_ref) is above target and shrinks when below, by at most 20% of n_steps/horizon.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if not init_kl_coef >= 0:
            raise ValueError(f"init_kl_coef: expected >= 0, got {init_kl_coef}")
        if not target > 0:
            raise ValueError(f"target: expected a target KL > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon: expected > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int = 1) -> float:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value


class AdaptiveKLPenalty(_KLCoefficient):
    """The PPO paper's rule for the penalty coefficient (Schulman et al. 2017, section 4):

        d = E_t[KL[pi_old(.|s_t), pi(.|s_t)]] after the policy update
        if d < d_targ / 1.5: beta <- beta / 2
        if d > d_targ * 1.5: beta <- beta * 2

    `n_steps` is accepted for a common interface with AdaptiveKLController and ignored: the rule
    acts once per policy update.
    """

    def __init__(self, init_beta: float = 1.0, kl_target: float = 0.01):
        if not init_beta > 0:
            raise ValueError(f"init_beta: expected > 0, got {init_beta}")
        if not kl_target > 0:
            raise ValueError(f"kl_target: expected > 0, got {kl_target}")
        self.value = float(init_beta)
        self.kl_target = float(kl_target)

    def update(self, current_kl: float, n_steps: int = 1) -> float:
        d = float(current_kl)
        if d < self.kl_target / 1.5:
            self.value /= 2.0
        elif d > self.kl_target * 1.5:
            self.value *= 2.0
        return self.value


# ----------------------------------------------------------------------------
# critic


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float | None = None
) -> Tensor:
    """Critic regression loss, 0.5 * masked mean of the squared error to the returns:

        unclipped:  0.5 E_t[(V(s_t) - R_t)^2]
        clipped:    0.5 E_t[max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)]

    The clipped form is the value clipping of OpenAI's PPO implementations (baselines ppo2, also
    used by Ziegler et al. 2019); it is not in the PPO paper. values, old_values, returns, mask: (B,T).
    old_values and returns are constants. Returns a scalar.
    """
    check_same_shape(values=values, old_values=old_values, returns=returns)
    w, valid = _weights(mask, values)
    v = _zero_invalid(values, valid)
    target = _zero_invalid(returns.detach().to(values.dtype), valid)
    err = (v - target) ** 2  # (B,T)
    if clip_eps is not None:
        if not clip_eps > 0:
            raise ValueError(f"clip_eps: expected > 0 or None, got {clip_eps}")
        v_old = _zero_invalid(old_values.detach().to(values.dtype), valid)
        v_clipped = v_old + (v - v_old).clamp(-clip_eps, clip_eps)
        err = torch.maximum(err, (v_clipped - target) ** 2)
    return 0.5 * masked_mean(err, w)


# ----------------------------------------------------------------------------
# critic-free baselines: GRPO, RLOO, batch normalisation


def _grouped(rewards: Tensor, group_size: int, min_size: int, why: str) -> Tensor:
    """rewards (N,) viewed as (N/G, G), with the checks every group baseline shares."""
    check_ndim("rewards", rewards, 1, "(N,)")
    if not isinstance(group_size, int) or group_size < min_size:
        raise ValueError(f"group_size: expected an int >= {min_size} ({why}), got {group_size!r}")
    N = rewards.shape[0]
    if N % group_size != 0:
        raise ValueError(
            f"rewards: N = {N} is not a multiple of group_size = {group_size}; expected consecutive "
            f"groups of {group_size} samples per prompt"
        )
    return rewards.reshape(N // group_size, group_size)  # (N/G, G)


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6, scale: bool = True) -> Tensor:
    """GRPO outcome advantages (Shao et al. 2024, section 4.1.2):

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

    rewards (N,) hold N/G consecutive groups of G = group_size samples of one prompt; std is
    torch.std (unbiased, 1/(G-1)). scale=False only subtracts the group mean, the Dr. GRPO
    advantage (Liu et al. 2025), which removes the per-question difficulty weighting. -> (N,)
    """
    g = _grouped(rewards, group_size, 2 if scale else 1, "the group std needs two samples" if scale else "samples per prompt")
    centred = g - g.mean(dim=1, keepdim=True)  # (N/G, G)
    if scale:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024):

        A_i = r_i - 1/(G-1) sum_{j != i} r_j = G/(G-1) (r_i - mean(r_group))

    an unbiased baseline for sample i, built from the other G - 1 samples of the same prompt. -> (N,)
    """
    g = _grouped(rewards, group_size, 2, "leave-one-out needs another sample")
    G = group_size
    others_mean = (g.sum(dim=1, keepdim=True) - g) / (G - 1)  # (N/G, G)
    return (g - others_mean).reshape(-1)


def batch_normalized_advantages(rewards: Tensor, eps: float = 1e-6, unbiased: bool = True,
                                reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """A_i = (R_i - mean_batch R) / (std_batch R + eps), the REINFORCE-with-baseline advantage of the
    critic-free toy PPO (one sequence-level advantage per sample; spread it over tokens with
    broadcast_to_tokens). std as torch.std (unbiased) unless unbiased=False. rewards (N,) -> (N,)

    ``reduce`` sums a tensor over the other pieces of the batch (the processes of a distributed
    run), so mean and std are those of the whole batch; None: this piece is the batch.
    """
    check_ndim("rewards", rewards, 1, "(N,)")
    if reduce is None:
        if rewards.shape[0] < 2:
            raise ValueError(f"rewards: expected at least 2 samples to normalise over, got {rewards.shape[0]}")
        return (rewards - rewards.mean()) / (rewards.std(unbiased=unbiased) + eps)
    total, n = reduce(torch.stack([rewards.sum(), torch.tensor(float(rewards.shape[0]), dtype=rewards.dtype,
                                                                device=rewards.device)])).unbind()
    if bool(n < 2):
        raise ValueError(f"rewards: expected at least 2 samples to normalise over, got {float(n):g}")
    mean = total / n
    var = reduce(((rewards - mean) ** 2).sum()) / (n - 1 if unbiased else n)
    return (rewards - mean) / (var.sqrt() + eps)


def broadcast_to_tokens(seq_values: Tensor, mask: Tensor) -> Tensor:
    """Copy one value per sequence onto each of its valid tokens: (B,), (B,T) -> (B,T), 0 on padding."""
    check_ndim("seq_values", seq_values, 1, "(B,)")
    check_ndim("mask", mask, 2, "(B,T)")
    if mask.shape[0] != seq_values.shape[0]:
        raise ValueError(f"mask has {mask.shape[0]} rows but seq_values has {seq_values.shape[0]} entries; expected equal")
    x = seq_values[:, None].expand(mask.shape)  # (B,T)
    return _zero_invalid(x, _valid(mask, x))
