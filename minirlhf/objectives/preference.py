"""Preference models and losses: Bradley-Terry, Davidson ties, Plackett-Luce, the DPO family,
and two diagnostics for preference data (calibration error, inter-annotator agreement).

Pure functions of tensors (torch and math only). `chosen` / `rejected` are scalar scores
(rewards) per pair, shape (B,); DPO takes log-probabilities summed over response tokens, (B,).

Papers:
- Bradley & Terry (1952), "Rank analysis of incomplete block designs: I. The method of paired comparisons".
- Davidson (1970), "On extending the Bradley-Terry model to accommodate ties in paired comparison experiments".
- Luce (1959), "Individual choice behavior"; Plackett (1975), "The analysis of permutations".
- Touvron et al. (2023), "Llama 2" (the margin in the reward-model loss).
- Rafailov et al. (2023), "Direct preference optimization" (DPO); Mitchell (2023), "A note on DPO with
  noisy preferences & relationship to IPO" (conservative DPO / label smoothing); Azar et al. (2023),
  "A general theoretical paradigm to understand learning from human preferences" (IPO);
  Zhao et al. (2023), "SLiC-HF" (hinge loss).
- Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela (2024), "KTO: Model alignment as prospect theoretic
  optimization" (KTO, unpaired desirable / undesirable completions).
- Hong, Lee, Thorne (2024), "ORPO: Monolithic preference optimization without reference model".
- Meng, Xia, Chen (2024), "SimPO: Simple preference optimization with a reference-free reward".
- Guo, Pleiss, Sun, Weinberger (2017), "On calibration of modern neural networks" (ECE).
- Fleiss (1971), "Measuring nominal scale agreement among many raters" (Fleiss' kappa).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .stats import check_ndim, check_same_shape

Tensor = torch.Tensor

__all__ = [
    "bradley_terry_logit",
    "bradley_terry_prob",
    "bradley_terry_loss",
    "davidson_log_probs",
    "davidson_probs",
    "davidson_tie_loss",
    "plackett_luce_logprob",
    "plackett_luce_loss",
    "DPO_LOSS_TYPES",
    "dpo_loss",
    "kto_reference_point",
    "kto_loss",
    "orpo_log_odds",
    "orpo_loss",
    "simpo_loss",
    "expected_calibration_error",
    "fleiss_kappa",
]


def _coef(name: str, value, like: Tensor, low: float | None = None, high: float | None = None,
          strict_low: bool = False) -> Tensor:
    """A scalar or per-pair (B,) coefficient as a tensor in like's dtype, range-checked."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() != 0 and t.shape != like.shape:
        raise ValueError(f"{name}: expected a scalar or a tensor of shape {tuple(like.shape)}, got shape {tuple(t.shape)}")
    if torch.isnan(t).any():
        raise ValueError(f"{name}: got nan")
    if low is not None and bool((t <= low).any() if strict_low else (t < low).any()):
        raise ValueError(f"{name}: expected values {'>' if strict_low else '>='} {low}, got min {t.min().item():g}")
    if high is not None and bool((t > high).any()):
        raise ValueError(f"{name}: expected values <= {high}, got max {t.max().item():g}")
    return t


def _pair(chosen: Tensor, rejected: Tensor, names=("chosen", "rejected")) -> None:
    check_ndim(names[0], chosen, 1, "(B,)")
    check_same_shape(**{names[0]: chosen, names[1]: rejected})


# ----------------------------------------------------------------------------
# Bradley-Terry (1952)


def bradley_terry_logit(chosen: Tensor, rejected: Tensor, strength=1.0, margin=0.0) -> Tensor:
    """The logit of P(chosen > rejected): z = s (r_c - r_r) - m, shape (B,).

    Bradley-Terry with pi = exp(r): P(c > r) = pi_c / (pi_c + pi_r) = sigmoid(r_c - r_r). The
    strength s scales the reward difference (a temperature: s = 1/T); the margin m is subtracted
    on the chosen side as in Llama 2 (Touvron et al. 2023, eq. 2): the chosen response must beat
    the rejected one by m before the model calls them even.
    """
    _pair(chosen, rejected)
    s = _coef("strength", strength, chosen, low=0.0, strict_low=True)
    m = _coef("margin", margin, chosen)
    return s * (chosen - rejected) - m


def bradley_terry_prob(chosen: Tensor, rejected: Tensor, strength=1.0, margin=0.0) -> Tensor:
    """P(chosen > rejected) = sigmoid(s (r_c - r_r) - m) (Bradley & Terry 1952); (B,)."""
    return torch.sigmoid(bradley_terry_logit(chosen, rejected, strength, margin))


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, prob=1.0, strength=1.0, margin=0.0) -> Tensor:
    """Bradley-Terry negative log-likelihood with soft labels, averaged over pairs:

        z    = s (r_c - r_r) - m
        loss = mean[ -p log sigmoid(z) - (1 - p) log sigmoid(-z) ]

    p = prob is the probability that `chosen` is really preferred (1 for a hard label; e.g. the
    share of annotators who agree); it is the cross-entropy between p and the model's
    P(c > r) = sigmoid(z). The margin enters the logit once, on the chosen side (Llama 2):
    with p = 1 the loss is -log sigmoid(r_c - r_r - m); with soft p the minimiser is
    s (r_c - r_r) = logit(p) + m. prob, strength, margin: scalars or (B,) tensors.
    """
    z = bradley_terry_logit(chosen, rejected, strength, margin)  # (B,)
    p = _coef("prob", prob, chosen, low=0.0, high=1.0)
    return (-(p * F.logsigmoid(z) + (1.0 - p) * F.logsigmoid(-z))).mean()


# ----------------------------------------------------------------------------
# Davidson (1970): Bradley-Terry with ties


def davidson_log_probs(r_w: Tensor, r_l: Tensor, log_nu) -> tuple[Tensor, Tensor, Tensor]:
    """log P(w beats l), log P(l beats w), log P(tie) under Davidson's (1970) tie model, (B,) each.

    With strengths pi = exp(r) and tie parameter nu >= 0 (log_nu = log nu):

        P(w > l) = pi_w / D,   P(l > w) = pi_l / D,   P(tie) = nu sqrt(pi_w pi_l) / D,
        D = pi_w + pi_l + nu sqrt(pi_w pi_l)

    so the three sum to 1, nu = 0 is Bradley-Terry, and P(tie) = nu / (2 + nu) for equal strengths.
    Relation to the simpler form P(tie) = nu / (pi_w + pi_l + nu) quoted in tutorials: that form
    uses a constant tie weight nu where Davidson uses nu times the geometric mean of the two
    strengths. Davidson's form depends on r only through r_w - r_l, so adding a constant to all
    rewards (which a Bradley-Terry reward is only defined up to) leaves every probability
    unchanged; the constant-nu form does not have that property. Computed in log space
    (logsumexp), so it is stable for large rewards.
    """
    _pair(r_w, r_l, ("r_w", "r_l"))
    log_nu = torch.as_tensor(log_nu, dtype=r_w.dtype, device=r_w.device)
    if log_nu.dim() != 0 and log_nu.shape != r_w.shape:
        raise ValueError(f"log_nu: expected a scalar or shape {tuple(r_w.shape)}, got {tuple(log_nu.shape)}")
    log_tie = log_nu + 0.5 * (r_w + r_l)  # log(nu sqrt(pi_w pi_l)), (B,)
    log_d = torch.logsumexp(torch.stack(torch.broadcast_tensors(r_w, r_l, log_tie), dim=-1), dim=-1)  # (B,)
    return r_w - log_d, r_l - log_d, log_tie - log_d


def davidson_probs(r_w: Tensor, r_l: Tensor, log_nu) -> tuple[Tensor, Tensor, Tensor]:
    """(P(w beats l), P(l beats w), P(tie)) of Davidson (1970); see davidson_log_probs."""
    lw, ll, lt = davidson_log_probs(r_w, r_l, log_nu)
    return lw.exp(), ll.exp(), lt.exp()


def davidson_tie_loss(r_w: Tensor, r_l: Tensor, tie: Tensor, log_nu) -> Tensor:
    """-log P(observed outcome) under Davidson (1970), averaged over pairs:

        loss = mean[ -(1 - t) log P(w > l) - t log P(tie) ]

    tie (B,) is 1 (or True) where annotators called the pair a tie and 0 where w won; for a tie
    the order of w and l does not matter (P(tie) is symmetric). Fractional t mixes the two.
    log_nu may be a learnable 0-dim tensor.
    """
    log_win, _, log_tie = davidson_log_probs(r_w, r_l, log_nu)
    t = _coef("tie", tie, r_w, low=0.0, high=1.0)
    return (-((1.0 - t) * log_win + t * log_tie)).mean()


# ----------------------------------------------------------------------------
# Plackett-Luce (Luce 1959; Plackett 1975)


def plackett_luce_logprob(scores: Tensor) -> Tensor:
    """log P(ranking) of K items listed best first, under Plackett-Luce with pi = exp(s):

        P(y_1 > ... > y_K) = prod_i pi_i / sum_{j >= i} pi_j
        log P = sum_i [ s_i - logsumexp(s_i, ..., s_K) ]

    scores (B,K) -> (B,). With K = 2 this is log sigmoid(s_1 - s_2), Bradley-Terry.
    """
    check_ndim("scores", scores, 2, "(B,K) ordered best first")
    if scores.shape[1] < 1:
        raise ValueError("scores: expected at least one item per ranking (K >= 1)")
    tail_lse = torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)  # (B,K): logsumexp(s_i..s_K)
    return (scores - tail_lse).sum(-1)


def plackett_luce_loss(scores: Tensor) -> Tensor:
    """Negative log-likelihood of the given rankings, mean over the batch: -mean_b log P(ranking_b)."""
    return -plackett_luce_logprob(scores).mean()


# ----------------------------------------------------------------------------
# the DPO family

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing=0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Direct preference losses on log-probs summed over response tokens, (B,) each.

        h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l)

        sigmoid  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
                 DPO (Rafailov et al. 2023, eq. 7) at eps = 0; eps = label_smoothing > 0 is
                 conservative DPO (Mitchell 2023): each label is flipped with probability eps.
        ipo      (h - 1/(2 beta))^2          IPO (Azar et al. 2023, with tau = beta)
        hinge    max(0, 1 - beta h)          SLiC-HF's rank calibration loss (Zhao et al. 2023, delta = 1)

    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)), the implicit rewards
    beta log pi(y)/pi_ref(y) (the implicit reward of Rafailov et al. 2023), detached. Average the losses
    yourself (DPO uses the mean). The optimum of the population DPO loss under Bradley-Terry
    labels sigmoid(r_w - r_l) is pi*(y) proportional to pi_ref(y) exp(r(y)/beta).
    """
    check_ndim("policy_chosen_logps", policy_chosen_logps, 1, "(B,)")
    check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type: unknown DPO loss {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta: expected > 0, got {beta}")
    eps = _coef("label_smoothing", label_smoothing, policy_chosen_logps, low=0.0, high=1.0)
    if loss_type != "sigmoid" and bool((eps != 0).any()):
        raise ValueError(f"label_smoothing: only loss_type='sigmoid' (conservative DPO) uses it; got {loss_type!r}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps.detach()  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps.detach()  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "sigmoid":
        losses = -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1.0 - beta * h)
    return losses, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach()


# ----------------------------------------------------------------------------
# KTO (Ethayarajh et al. 2024): unpaired desirable / undesirable completions


def kto_reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z_0 = KL(pi_theta(y'|x) || pi_ref(y'|x)), estimated on the batch
    (Ethayarajh et al. 2024; as in ContextualAI/HALOs' and TRL's KTO losses):

        z_hat_0 = max(0, 1/m sum_i log pi_theta(y_j|x_i) / pi_ref(y_j|x_i)),   j != i

    from MISMATCHED pairs: each prompt x_i with the completion y_j of another example of the batch
    (TRL shifts the completions by one), so the estimate is about the policy, not about how well it fits
    the labelled y_i. Clamped at 0 (a KL is >= 0) and detached: no gradient flows through z_0. Under data
    parallelism average the log-ratio over all ranks before clamping. (m,) each -> 0-dim tensor.
    """
    check_ndim("policy_kl_logps", policy_kl_logps, 1, "(m,)")
    check_same_shape(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    if policy_kl_logps.numel() == 0:
        raise ValueError("policy_kl_logps: expected at least one mismatched pair")
    return (policy_kl_logps - ref_kl_logps).detach().mean().clamp_min(0.0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl_ref,
    beta: float = 0.1,
    lambda_d: float = 1.0,
    lambda_u: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The Kahneman-Tversky optimisation loss (Ethayarajh et al. 2024), per example:

        r_theta(x, y) = log pi_theta(y|x) / pi_ref(y|x)
        v(x, y) = lambda_D sigmoid(beta (r_theta(x, y) - z_0))   if y is desirable
                  lambda_U sigmoid(beta (z_0 - r_theta(x, y)))   if y is undesirable
        L_KTO   = E_{x,y}[ lambda_y - v(x, y) ]

    policy_logps, ref_logps: log-probs summed over the completion tokens, (B,); desirable: bool (B,);
    kl_ref: z_0 (see kto_reference_point), a float, 0-dim or (B,) tensor, treated as a constant.
    The paper recommends lambda_D n_D / (lambda_U n_U) in [1, 4/3] (n_D, n_U: desirable and undesirable
    counts). Returns (losses (B,), rewards (B,) = beta r_theta, detached); average the losses yourself.
    At pi = pi_ref with z_0 = 0 every loss is lambda_y / 2, and d loss / d log pi = -lambda_D beta / 4
    (desirable) or +lambda_U beta / 4 (undesirable).
    """
    check_ndim("policy_logps", policy_logps, 1, "(B,)")
    check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable: expected a bool tensor (True = desirable), got dtype {desirable.dtype}")
    for name, value in (("beta", beta), ("lambda_d", lambda_d), ("lambda_u", lambda_u)):
        if not value > 0:
            raise ValueError(f"{name}: expected > 0, got {value}")
    z0 = _coef("kl_ref", kl_ref, policy_logps).detach()
    if not bool(torch.isfinite(z0).all()):
        raise ValueError("kl_ref: expected a finite reference point")
    r = policy_logps - ref_logps.detach()  # (B,)
    v = torch.where(desirable, lambda_d * torch.sigmoid(beta * (r - z0)), lambda_u * torch.sigmoid(beta * (z0 - r)))
    lam = torch.where(desirable, torch.full_like(r, lambda_d), torch.full_like(r, lambda_u))  # (B,)
    return lam - v, (beta * r).detach()


# ----------------------------------------------------------------------------
# ORPO (Hong et al. 2024): odds ratio on length-normalised probabilities, no reference model


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate everywhere (Maechler 2012): log(-expm1(x)) near 0,
    log1p(-exp(x)) far from it."""
    near = x > -math.log(2.0)
    safe_near = torch.where(near, x, torch.full_like(x, -1.0))  # keeps the unused branch finite
    safe_far = torch.where(near, torch.full_like(x, -1.0), x)
    return torch.where(near, torch.log(-torch.expm1(safe_near)), torch.log1p(-torch.exp(safe_far)))


def orpo_log_odds(logps_mean: Tensor) -> Tensor:
    """log odds_theta(y|x) = log P - log(1 - P), P = exp(1/m sum_t log P_theta(y_t|x, y_<t))
    (Hong et al. 2024: P is the length-normalised, i.e. per-token geometric mean, probability).
    logps_mean (B,) must be <= 0; 0 (P = 1) gives +inf. Computed without forming 1 - P."""
    if bool((logps_mean > 0).any()) or bool(torch.isnan(logps_mean).any()):
        raise ValueError("logps_mean: expected mean token log-probs <= 0 (log of a probability)")
    return logps_mean - _log1mexp(logps_mean)


def orpo_loss(chosen_logps_mean: Tensor, rejected_logps_mean: Tensor, nll_chosen, lam: float = 0.1
              ) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO's objective (Hong et al. 2024, eqs. 6-7: L_ORPO and L_OR):

        odds_theta(y|x) = P_theta(y|x) / (1 - P_theta(y|x))
        L_OR   = -log sigmoid( log( odds_theta(y_w|x) / odds_theta(y_l|x) ) )
        L_ORPO = E[ L_SFT + lambda L_OR ]

    chosen_logps_mean, rejected_logps_mean: mean token log-probs of y_w and y_l, (B,); nll_chosen: the
    SFT negative log-likelihood of y_w, (B,) or a scalar (e.g. next_token_loss on the chosen tokens).
    Returns (losses (B,) = L_SFT + lam L_OR, or_term (B,) = L_OR, log_odds_ratio (B,), detached).
    """
    _pair(chosen_logps_mean, rejected_logps_mean, ("chosen_logps_mean", "rejected_logps_mean"))
    if not lam >= 0:
        raise ValueError(f"lam: expected >= 0, got {lam}")
    nll = torch.as_tensor(nll_chosen, dtype=chosen_logps_mean.dtype, device=chosen_logps_mean.device)
    if nll.dim() != 0 and nll.shape != chosen_logps_mean.shape:
        raise ValueError(f"nll_chosen: expected a scalar or shape {tuple(chosen_logps_mean.shape)}, got {tuple(nll.shape)}")
    log_odds_ratio = orpo_log_odds(chosen_logps_mean) - orpo_log_odds(rejected_logps_mean)  # (B,)
    or_term = -F.logsigmoid(log_odds_ratio)  # (B,)
    return nll + lam * or_term, or_term, log_odds_ratio.detach()


# ----------------------------------------------------------------------------
# SimPO (Meng et al. 2024): length-normalised reward, target margin, no reference model


def simpo_loss(chosen_logps_sum: Tensor, rejected_logps_sum: Tensor, chosen_len, rejected_len,
               beta: float = 2.0, gamma: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO (Meng et al. 2024):

        r_SimPO(x, y) = beta / |y| log pi_theta(y|x)
        L_SimPO = -log sigmoid( beta/|y_w| log pi_theta(y_w|x) - beta/|y_l| log pi_theta(y_l|x) - gamma )

    chosen_logps_sum, rejected_logps_sum: log-probs summed over the response tokens, (B,);
    chosen_len, rejected_len: the token counts |y| (> 0), (B,) tensors or scalars; gamma is the target
    reward margin in reward units: the paper's gamma, as TRL's CPO simpo_gamma (TRL subtracts simpo_gamma / beta
    inside beta(...)); princeton-nlp/SimPO's gamma_beta_ratio is gamma / beta. Returns
    (losses (B,), chosen_rewards (B,), rejected_rewards (B,)), the rewards detached.
    """
    _pair(chosen_logps_sum, rejected_logps_sum, ("chosen_logps_sum", "rejected_logps_sum"))
    if not beta > 0:
        raise ValueError(f"beta: expected > 0, got {beta}")
    len_w = _coef("chosen_len", chosen_len, chosen_logps_sum, low=0.0, strict_low=True)
    len_l = _coef("rejected_len", rejected_len, chosen_logps_sum, low=0.0, strict_low=True)
    gamma_t = _coef("gamma", gamma, chosen_logps_sum)
    chosen_rewards = beta * chosen_logps_sum / len_w  # (B,)
    rejected_rewards = beta * rejected_logps_sum / len_l  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma_t)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


# ----------------------------------------------------------------------------
# diagnostics


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Expected calibration error of predicted probabilities P(label = 1) (Guo et al. 2017):

        ECE = sum_m |B_m|/n |acc(B_m) - conf(B_m)|
            = 1/n sum_m | sum_{i in B_m} y_i - sum_{i in B_m} p_i |

    with n_bins equal-width bins B_m = ((m-1)/M, m/M] (0 goes to the first bin), conf the mean
    predicted probability in the bin and acc the mean label (labels in {0, 1}, or soft labels in
    [0, 1]). For a reward model, probs = sigmoid(r_c - r_r) and labels = 1 where `chosen` was
    really preferred. probs, labels: same shape. Returns a 0-dim tensor.
    """
    check_same_shape(probs=probs, labels=labels)
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive int, got {n_bins!r}")
    dtype = probs.dtype if probs.is_floating_point() else torch.float64
    p = probs.detach().reshape(-1).to(dtype)  # (n,)
    y = labels.detach().reshape(-1).to(dtype)  # (n,)
    if p.numel() == 0:
        raise ValueError("probs: expected at least one prediction")
    if bool(((p < 0) | (p > 1) | torch.isnan(p)).any()):
        raise ValueError("probs: expected probabilities in [0, 1]")
    if bool(((y < 0) | (y > 1) | torch.isnan(y)).any()):
        raise ValueError("labels: expected labels in [0, 1] (0/1 or soft)")
    inner_edges = torch.arange(1, n_bins, dtype=dtype, device=p.device) / n_bins  # (M-1,)
    bin_index = torch.searchsorted(inner_edges, p, right=False)  # (n,), bins (lo, hi]
    gap = torch.zeros(n_bins, dtype=dtype, device=p.device).index_add_(0, bin_index, y - p)  # (M,)
    return gap.abs().sum() / p.numel()


def fleiss_kappa(counts: Tensor) -> Tensor:
    """Fleiss' kappa (Fleiss 1971) for N items each rated by the same number n of annotators:

        p_j   = 1/(N n) sum_i n_ij                        share of all votes in category j
        P_i   = (sum_j n_ij^2 - n) / (n (n - 1))          agreement on item i
        P_bar = 1/N sum_i P_i,   P_e = sum_j p_j^2
        kappa = (P_bar - P_e) / (1 - P_e)

    counts (N, k): n_ij = number of annotators who put item i in category j. 1 is perfect
    agreement, 0 is chance level. nan when P_e = 1 (every vote in one category: undefined).
    Returns a 0-dim float64 tensor.
    """
    check_ndim("counts", counts, 2, "(N items, k categories)")
    c = counts.detach().to(torch.float64)
    if bool((c < 0).any()) or bool((c != c.round()).any()):
        raise ValueError("counts: expected non-negative whole numbers of votes")
    N = c.shape[0]
    n_per_item = c.sum(1)  # (N,)
    if N == 0:
        raise ValueError("counts: expected at least one item")
    n = n_per_item[0].item()
    if bool((n_per_item != n).any()):
        raise ValueError(
            f"counts: every item needs the same number of annotators; row sums range from "
            f"{n_per_item.min().item():g} to {n_per_item.max().item():g}"
        )
    if n < 2:
        raise ValueError(f"counts: expected at least 2 annotators per item, got {n:g}")
    p_j = c.sum(0) / (N * n)  # (k,)
    P_i = ((c**2).sum(1) - n) / (n * (n - 1))  # (N,)
    P_bar = P_i.mean()
    P_e = (p_j**2).sum()
    if P_e.item() == 1.0:
        return torch.tensor(math.nan, dtype=torch.float64)
    return (P_bar - P_e) / (1.0 - P_e)
