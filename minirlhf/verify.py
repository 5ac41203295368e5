"""``minirlhf verify``: every objective of minirlhf against an answer computed another way.

    minirlhf verify                          every row, as a table; exit code 1 if any row fails
    minirlhf verify --only gae kl/           rows whose name contains "gae" or "kl/"
    minirlhf verify --explain                the table, then each row's formula and source
    minirlhf verify --json verify.json       also write the rows as JSON
    minirlhf verify --seed 3 --tol-scale 10  other random problems; looser tolerances
    minirlhf verify --trainers               also every trainer, run whole on the bandit task, against
                                             its exact optimum (minirlhf.verify_trainers; about a minute)

Each row is one small function returning (measured, expected, tolerance). "measured" always
comes from the project's own code in minirlhf.objectives; "expected" never does: it is a
closed form worked out by hand, an exact expectation by enumerating a categorical, a
torch.linalg solve, an autograd Hessian, or a plain-Python loop over the definition. The
problems are tabular bandits and tiny categoricals in float64, so the expectations are exact
and the suite runs in seconds on one CPU core.

A row compares in one of three ways (its "expected" column shows which):

    ==   error = |measured - expected|          e.g. E[k1] against KL(pi || pi_ref)
    <=   error = max(0, measured - expected)    e.g. the KL of a TRPO step against delta
    >=   error = max(0, expected - measured)    e.g. min k3 >= 0

and passes when error <= tolerance * tol_scale (a nan never passes; a row that raises fails
and shows the exception). Rows whose values are vectors report the largest entry-wise
difference as "measured" and 0 as "expected".

Tolerances: 1e-12 where both sides are exact float64 arithmetic on numbers of order 1 (a
few hundred roundings of 1e-16); the iterative rows (PPO / policy-gradient / Newton runs on a
bandit) state the distance their fixed number of steps reaches, with a margin, in the row's
docstring.

run_checks() returns the rows for programs (and tests); format_table() prints them.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable, Iterable

import torch

from minirlhf.objectives import (
    best_of_n_distribution,
    best_of_n_kl,
    bradley_terry_loss,
    conjugate_gradient,
    davidson_probs,
    dpo_loss,
    entropy_from_logits,
    gae,
    group_advantages,
    grpo_kl_penalty,
    hessian_vector_product,
    gspo_policy_loss,
    gspo_sequence_ratio,
    kl_estimate,
    kto_loss,
    kto_reference_point,
    make_hvp,
    nonconstant_groups,
    orpo_log_odds,
    orpo_loss,
    overlong_penalty,
    plackett_luce_logprob,
    plackett_luce_loss,
    ppo_penalty_loss,
    ppo_policy_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    simpo_loss,
    trpo_step,
    value_loss,
)

__all__ = ["VerifyConfig", "Check", "RowResult", "CHECKS", "GROUPS", "select_checks", "run_checks",
           "format_table", "verify", "verify_cli"]

F64 = torch.float64
COMPARES = ("==", "<=", ">=")


# ----------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Check:
    """One row: `fn(seed) -> (measured, expected, tolerance)`, compared with `compare`.

    name is "group/what" (the --only filter matches it); claim is the one-line statement the row
    checks; fn's docstring holds the formula and its source.
    """

    name: str
    claim: str
    fn: Callable[[int], tuple[float, float, float]]
    compare: str = "=="

    @property
    def group(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def doc(self) -> str:
        lines = (self.fn.__doc__ or "").strip("\n").splitlines()
        indent = min((len(s) - len(s.lstrip()) for s in lines[1:] if s.strip()), default=0)
        return "\n".join([lines[0].strip()] + [s[indent:] for s in lines[1:]]).strip() if lines else ""


CHECKS: list[Check] = []

# group -> heading (the papers the group's formulas come from)
GROUPS = {
    "gae": "GAE: Schulman, Moritz, Levine, Jordan, Abbeel (2016), eq. 16",
    "kl": "KL estimators: Schulman (2020), 'Approximating KL divergence'",
    "ppo": "PPO: Schulman, Wolski, Dhariwal, Radford, Klimov (2017); KL-regularised optimum: Ziegler et al. (2019)",
    "dpo": "DPO: Rafailov et al. (2023); cDPO: Mitchell (2023); IPO: Azar et al. (2023); hinge: Zhao et al. (2023)",
    "bt": "Bradley & Terry (1952); Plackett (1975), Luce (1959); Davidson (1970)",
    "trpo": "TRPO: Schulman et al. (2015); Pearlmutter (1994); Hestenes & Stiefel (1952)",
    "grpo": "GRPO: Shao et al. (2024), DeepSeekMath; RLOO: Kool et al. (2019), Ahmadian et al. (2024)",
    "bon": "Best-of-n: Stiennon et al. (2020); Beirami et al. (2024), 'Theoretical guarantees on the best-of-n alignment policy'",
    "bandit": "Learned policies on a bandit, exact expected gradients: the enumerated optimum",
    "kto": "KTO: Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela (2024)",
    "orpo": "ORPO: Hong, Lee, Thorne (2024)",
    "simpo": "SimPO: Meng, Xia, Chen (2024)",
    "gspo": "GSPO: Zheng et al. (2025), 'Group Sequence Policy Optimization'",
    "dapo": "DAPO: Yu et al. (2025): clip-higher, dynamic sampling, overlong reward shaping",
    "reinforce++": "REINFORCE++: Hu (2025)",
}


def check(name: str, claim: str, compare: str = "=="):
    """Register `fn(seed) -> (measured, expected, tolerance)` as the row `name`."""
    if compare not in COMPARES:
        raise ValueError(f"compare: expected one of {', '.join(COMPARES)}, got {compare!r}")
    if name.split("/", 1)[0] not in GROUPS:
        raise ValueError(f"name: {name!r} must start with a known group: {', '.join(GROUPS)}")

    def register(fn):
        CHECKS.append(Check(name, claim, fn, compare))
        return fn

    return register


# ----------------------------------------------------------------------------
# small independent helpers (plain torch / Python: none of them calls an objective)


def _gen(seed: int, salt: int) -> torch.Generator:
    """A generator for one row: different rows draw different problems from the same --seed."""
    return torch.Generator().manual_seed(1_000_003 * seed + salt)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


def _tv(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total variation distance 1/2 sum_a |p(a) - q(a)|."""
    return 0.5 * (p.detach() - q.detach()).abs().sum().item()


def _categorical(g: torch.Generator, K: int, scale: float = 1.0) -> torch.Tensor:
    return torch.softmax(scale * torch.randn(K, generator=g, dtype=F64), 0)  # (K,)


def _kl_exact(p: Iterable[float], q: Iterable[float]) -> float:
    """KL(p || q) = sum_x p(x) log(p(x)/q(x)), in plain Python."""
    return math.fsum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _newton_minimise(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, iters: int = 50,
                     tol: float = 1e-13) -> torch.Tensor:
    """Newton's method with autograd Hessians (pseudo-inverse for flat directions such as a constant
    added to all softmax logits). On the smooth convex problems here it reaches ~1e-15."""
    x = x0.detach().clone().to(F64)
    for _ in range(iters):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(xg), xg)
        if grad.abs().max().item() < tol:
            break
        H = torch.autograd.functional.hessian(f, x).reshape(x.numel(), x.numel())
        x = x - (torch.linalg.pinv(H, hermitian=True) @ grad.reshape(-1)).reshape(x.shape)
    return x


def _bandit(seed: int, salt: int, K: int = 6):
    """A K-armed bandit: rewards r (K,) and a reference policy's log-probs (K,)."""
    g = _gen(seed, salt)
    r = torch.randn(K, generator=g, dtype=F64)  # (K,)
    ref_logp = torch.log_softmax(torch.randn(K, generator=g, dtype=F64), 0)  # (K,)
    return r, ref_logp


def _kl_regularised_optimum(r: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """argmax_pi E_pi[r] - beta KL(pi || pi_ref) = pi_ref exp(r/beta) / Z (Ziegler et al. 2019;
    Rafailov et al. 2023, eq. 4): the Gibbs policy."""
    return torch.softmax(ref_logp + r / beta, 0)


def _reverse_kl_regularised_optimum(r: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """argmax_pi E_pi[r] - beta KL(pi_ref || pi).

    The objective is concave in pi; on the simplex its stationarity condition
    r(a) + beta pi_ref(a)/pi(a) = lambda gives pi(a) = beta pi_ref(a) / (lambda - r(a)), with the
    multiplier lambda > max r fixed by sum_a pi(a) = 1. The sum falls strictly from +inf to 0 as
    lambda goes from max r to +inf, so bisection finds the unique root.
    """
    ref = ref_logp.exp().tolist()
    rs = r.tolist()
    total = lambda lam: math.fsum(beta * q / (lam - x) for q, x in zip(ref, rs))
    lo, hi = max(rs), max(rs) + beta  # total(hi) <= sum(ref) = 1 < total(lo+)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if total(mid) > 1.0 else (lo, mid)
    lam = 0.5 * (lo + hi)
    return torch.tensor([beta * q / (lam - x) for q, x in zip(ref, rs)], dtype=F64)


# ============================================================================
# GAE (Schulman et al. 2016)


@check("gae/hand-example", "3-step example worked by hand (gamma=0.9, lambda=0.8): max |A - A_hand|")
def _gae_hand(seed):
    """delta_t = r_t + gamma V(s_t+1) - V(s_t);  A_t = delta_t + gamma lambda A_t+1;  R_t = A_t + V(s_t).

    r = (1, 0, 2), V = (0.5, 1, 1.5), gamma = 0.9, lambda = 0.8, terminal after t = 2:
        delta = (1.4, 0.35, 0.5)
        A     = (1.4 + 0.72 * 0.71, 0.35 + 0.72 * 0.5, 0.5) = (1.9112, 0.71, 0.5)
        R     = A + V = (2.4112, 1.71, 2.0)
    Schulman et al. (2016), eq. 16. (Does not depend on the seed.)
    """
    r = torch.tensor([[1.0, 0.0, 2.0]], dtype=F64)  # (1,3)
    v = torch.tensor([[0.5, 1.0, 1.5]], dtype=F64)
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.8)
    hand = torch.tensor([[1.9112, 0.71, 0.5, 2.4112, 1.71, 2.0]], dtype=F64)
    return _max_abs(torch.cat([adv, ret], 1), hand), 0.0, 1e-12


def _ragged(seed, salt, B=3, T=6):
    g = _gen(seed, salt)
    r = torch.randn(B, T, generator=g, dtype=F64)  # (B,T)
    v = torch.randn(B, T, generator=g, dtype=F64)  # (B,T)
    lengths = [T, T - 2, 1]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=F64)  # right-padded (B,T)
    return r, v, mask, lengths


@check("gae/lambda1-gamma1", "lambda=1, gamma=1: A_t = sum_{k>=t} r_k - V(s_t), ragged rows: max |diff|")
def _gae_reward_to_go(seed):
    """With gamma = lambda = 1 the deltas telescope: A_t = sum_{k=t}^{T-1} r_k - V(s_t), the
    reward-to-go minus the value (Schulman et al. 2016, eq. 18, the lambda = 1 case). Rows of
    lengths T, T-2, 1; the expected value loops over each row's valid steps only, so garbage in
    the padding (set to 1e6 here) must not reach it.
    """
    r, v, mask, lengths = _ragged(seed, 1)
    r_pad = torch.where(mask > 0, r, torch.full_like(r, 1e6))
    adv, _ = gae(r_pad, v, mask, gamma=1.0, lam=1.0)
    expected = torch.zeros_like(r)
    for b, n in enumerate(lengths):
        for t in range(n):
            expected[b, t] = math.fsum(r[b, t:n].tolist()) - v[b, t].item()
    return _max_abs(adv, expected), 0.0, 1e-12


@check("gae/lambda1-discounted", "lambda=1: A_t = sum_k gamma^(k-t) r_k - V(s_t) (gamma=0.7): max |diff|")
def _gae_monte_carlo(seed):
    """lambda = 1: A_t = G_t - V(s_t) with the discounted Monte-Carlo return
    G_t = sum_{k=t}^{T-1} gamma^(k-t) r_k (Schulman et al. 2016, eq. 18)."""
    r, v, mask, lengths = _ragged(seed, 2)
    gamma = 0.7
    adv, _ = gae(r, v, mask, gamma=gamma, lam=1.0)
    expected = torch.zeros_like(r)
    for b, n in enumerate(lengths):
        for t in range(n):
            expected[b, t] = math.fsum(gamma ** (k - t) * r[b, k].item() for k in range(t, n)) - v[b, t].item()
    return _max_abs(adv, expected), 0.0, 1e-12


@check("gae/lambda0-td-error", "lambda=0: A_t = r_t + gamma V(s_t+1) - V(s_t), the TD error: max |diff|")
def _gae_td(seed):
    """lambda = 0: A_t = delta_t = r_t + gamma V(s_t+1) - V(s_t), with V = 0 after a row's last
    valid step (Schulman et al. 2016, eq. 17)."""
    r, v, mask, lengths = _ragged(seed, 3)
    gamma = 0.9
    adv, _ = gae(r, v, mask, gamma=gamma, lam=0.0)
    expected = torch.zeros_like(r)
    for b, n in enumerate(lengths):
        for t in range(n):
            v_next = v[b, t + 1].item() if t + 1 < n else 0.0
            expected[b, t] = r[b, t].item() + gamma * v_next - v[b, t].item()
    return _max_abs(adv, expected), 0.0, 1e-12


@check("gae/sparse-terminal", "one reward R at the last token, V=0: A_t = (gamma lambda)^(T-1-t) R: max |diff|")
def _gae_sparse(seed):
    """The language-model case: a single score R at the last token and V = 0 give
    delta_t = 0 except delta_T-1 = R, so A_t = (gamma lambda)^(T-1-t) R (Schulman et al. 2016, eq. 16)."""
    T, R, gamma, lam = 7, 2.5, 0.9, 0.6
    r = torch.zeros(1, T, dtype=F64)
    r[0, -1] = R
    adv, _ = gae(r, torch.zeros_like(r), torch.ones_like(r), gamma, lam)
    expected = torch.tensor([[(gamma * lam) ** (T - 1 - t) * R for t in range(T)]], dtype=F64)
    return _max_abs(adv, expected), 0.0, 1e-12


# ============================================================================
# KL estimators (Schulman 2020)

# The hand example: pi = (1/2, 1/2), pi_ref = (0.9, 0.1), so r = pi_ref/pi = (1.8, 0.2) and
# KL(pi || pi_ref) = 1/2 ln(5/9) + 1/2 ln 5 = ln(5/3).
_HAND_PI, _HAND_REF = (0.5, 0.5), (0.9, 0.1)
_HAND_KL = math.log(5 / 3)


def _enumerate(kind: str, pi: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(E_pi[k], Var_pi[k]) of the estimator, by enumerating every x: sum_x pi(x) k(x), ..."""
    k = kl_estimate(pi.log(), ref.log(), kind)  # (K,) one estimate per outcome x
    mean = (pi * k).sum().item()
    return mean, (pi * (k - mean) ** 2).sum().item()


def _hand(kind: str) -> tuple[float, float]:
    return _enumerate(kind, torch.tensor(_HAND_PI, dtype=F64), torch.tensor(_HAND_REF, dtype=F64))


def _random_pair(seed: int, salt: int, K: int = 6):
    g = _gen(seed, salt)
    return _categorical(g, K), _categorical(g, K)


@check("kl/k1-unbiased", "E_pi[k1] = KL(pi||ref), random K=6 categorical, exact expectation")
def _kl_k1(seed):
    """k1 = -log r, r = pi_ref(x)/pi(x):  E_pi[k1] = sum_x pi(x) log(pi(x)/pi_ref(x)) = KL(pi || pi_ref)
    (Schulman 2020). Expected: the KL summed in plain Python."""
    pi, ref = _random_pair(seed, 10)
    return _enumerate("k1", pi, ref)[0], _kl_exact(pi.tolist(), ref.tolist()), 1e-12


@check("kl/k3-unbiased", "E_pi[k3] = KL(pi||ref), random K=6 categorical, exact expectation")
def _kl_k3(seed):
    """k3 = (r - 1) - log r:  E_pi[r - 1] = sum_x pi_ref(x) - 1 = 0, so E_pi[k3] = E_pi[k1] = KL(pi || pi_ref)
    (Schulman 2020)."""
    pi, ref = _random_pair(seed, 10)
    return _enumerate("k3", pi, ref)[0], _kl_exact(pi.tolist(), ref.tolist()), 1e-12


@check("kl/k2-bias", "E[k2] - KL on pi=(.5,.5), ref=(.9,.1) = (ln1.8)^2/4 + (ln5)^2/4 - ln(5/3)")
def _kl_k2_bias(seed):
    """k2 = (log r)^2 / 2 is biased (Schulman 2020: low variance, KL only to second order). On the
    hand example r takes the values 1.8 and 0.2 with probability 1/2 each:
        E[k2] = 1/4 (ln 1.8)^2 + 1/4 (ln 5)^2 = 0.7340...,  KL = ln(5/3) = 0.5108...,  bias = 0.2232...
    """
    expected = 0.25 * math.log(1.8) ** 2 + 0.25 * math.log(5) ** 2 - _HAND_KL
    return _hand("k2")[0] - _HAND_KL, expected, 1e-12


@check("kl/abs-bias", "E[|log r|] - KL on the hand example = ln 3 - ln(5/3) = ln(9/5)")
def _kl_abs_bias(seed):
    """abs = |log r|: E = 1/2 ln 1.8 + 1/2 ln 5 = 1/2 ln 9 = ln 3, so the bias is ln 3 - ln(5/3) = ln(9/5) = 0.5878
    (Schulman 2020 lists |log r| among the biased, always-positive estimators)."""
    return _hand("abs")[0] - _HAND_KL, math.log(9 / 5), 1e-12


@check("kl/k1-variance", "Var_pi[k1] on the hand example = (ln 9)^2 / 4 = (ln 3)^2")
def _kl_var_k1(seed):
    """A variable taking values a, b with probability 1/2 each has variance (a - b)^2 / 4.
    k1 = -log r takes -ln 1.8 and ln 5: Var = (ln 5 + ln 1.8)^2 / 4 = (ln 9)^2 / 4 = (ln 3)^2 = 1.2069."""
    return _hand("k1")[1], math.log(3) ** 2, 1e-12


@check("kl/k2-variance", "Var_pi[k2] on the hand example = ((ln5)^2 - (ln1.8)^2)^2 / 16")
def _kl_var_k2(seed):
    """k2 = (log r)^2/2 (Schulman 2020) takes (ln 1.8)^2/2 and (ln 5)^2/2: Var = ((ln 5)^2 - (ln 1.8)^2)^2 / 16."""
    return _hand("k2")[1], (math.log(5) ** 2 - math.log(1.8) ** 2) ** 2 / 16, 1e-12


@check("kl/k3-variance", "Var_pi[k3] on the hand example = (1.6 - ln 9)^2 / 4  (far below Var[k1])")
def _kl_var_k3(seed):
    """k3 = r - 1 - log r takes 0.8 - ln 1.8 and -0.8 + ln 5: Var = (1.6 - ln 9)^2 / 4 = 0.0892, a
    thirteenth of Var[k1] with the same mean: why k3 is the default estimator (Schulman 2020)."""
    return _hand("k3")[1], (1.6 - math.log(9)) ** 2 / 4, 1e-12


@check("kl/abs-variance", "Var_pi[|log r|] on the hand example = (ln 5 - ln 1.8)^2 / 4 = (ln(5/3))^2")
def _kl_var_abs(seed):
    """|log r| (Schulman 2020) takes ln 1.8 and ln 5: Var = (ln 5 - ln 1.8)^2 / 4 = (ln(25/9))^2 / 4 = (ln(5/3))^2."""
    return _hand("abs")[1], math.log(5 / 3) ** 2, 1e-12


@check("kl/k3-nonnegative", "min k3 over 10^4 random log-ratios (|log r| up to ~20, and 1e-12) >= 0", ">=")
def _kl_k3_nonneg(seed):
    """k3 = (r - 1) - log r >= 0 for every r > 0, since log r <= r - 1 (Schulman 2020). Checked on
    random log-ratios and on |log r| of 1e-9 and 1e-12, where a naive (r - 1) - log r cancels."""
    g = _gen(seed, 11)
    logp = torch.cat([5 * torch.randn(10_000, generator=g, dtype=F64), torch.zeros(3, dtype=F64)])
    ref = torch.cat([5 * torch.randn(10_000, generator=g, dtype=F64), torch.tensor([1e-9, -1e-9, 1e-12], dtype=F64)])
    return kl_estimate(logp, ref, "k3").min().item(), 0.0, 0.0


# ============================================================================
# PPO (Schulman et al. 2017)

_PPO_EPS = 0.2
#            A     rho    regime (eps = 0.2)
_PPO_CASES = [(+1.0, 1.5),  # A > 0, rho > 1 + eps: clipped
              (+2.0, 0.5),  # A > 0, rho < 1 - eps: unclipped
              (-1.0, 0.5),  # A < 0, rho < 1 - eps: clipped
              (-3.0, 1.5),  # A < 0, rho > 1 + eps: unclipped
              (+1.5, 1.1),  # inside the trust region
              (0.0, 1.5)]   # A = 0
_PPO_CLIPPED = [True, False, True, False, False, False]


def _ppo_grad():
    A = torch.tensor([[a for a, _ in _PPO_CASES]], dtype=F64)  # (1,6)
    rho = torch.tensor([[x for _, x in _PPO_CASES]], dtype=F64)
    old_logp = torch.full_like(rho, -2.0)
    logp = (old_logp + rho.log()).requires_grad_(True)
    loss, stats = ppo_policy_loss(logp, old_logp, A, torch.ones_like(A), clip_eps=_PPO_EPS)
    (grad,) = torch.autograd.grad(loss, logp)
    return grad[0], stats


@check("ppo/clip-zero-grad", "gradient is exactly 0 where the clip is active (A>0,rho>1+eps; A<0,rho<1-eps)")
def _ppo_clip_zero(seed):
    """L^CLIP = E_t[min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t)] (Schulman et al. 2017, eq. 7): where
    the clipped term is the smaller one it does not depend on theta, so the gradient is 0 there.
    measured: the largest |d loss / d log pi| over the two clipped tokens."""
    grad, _ = _ppo_grad()
    return max(abs(grad[i].item()) for i, c in enumerate(_PPO_CLIPPED) if c), 0.0, 0.0


@check("ppo/unclipped-grad", "elsewhere d loss / d log pi_t = -A_t rho_t / N: max |diff|")
def _ppo_unclipped(seed):
    """Where the unclipped term rho A is taken, d(-rho A)/d log pi = -rho A (rho = exp(log pi - log pi_old)),
    divided by N = 6 for the token mean (Schulman et al. 2017, eq. 7)."""
    grad, _ = _ppo_grad()
    N = len(_PPO_CASES)
    expected = torch.tensor([0.0 if c else -a * x / N for (a, x), c in zip(_PPO_CASES, _PPO_CLIPPED)], dtype=F64)
    keep = torch.tensor([not c for c in _PPO_CLIPPED])
    return _max_abs(grad[keep], expected[keep]), 0.0, 1e-12


@check("ppo/clipfrac", "clipfrac = share of tokens where the clip zeroes the gradient = 2/6")
def _ppo_clipfrac(seed):
    """clipfrac counts tokens with A > 0, rho > 1 + eps or A < 0, rho < 1 - eps, where the clipped term of
    Schulman et al. (2017), eq. 7 is taken and differs: 2 of the 6 cases."""
    _, stats = _ppo_grad()
    return stats["clipfrac"].item(), 2 / 6, 1e-12


@check("ppo/penalty-is-exact-kl", "A=0, tokens weighted by pi_old: ppo_penalty_loss = beta KL(pi_old||pi)")
def _ppo_penalty(seed):
    """L^KLPEN = E_t[rho_t A_t - beta KL[pi_old, pi]] (Schulman et al. 2017, eq. 8) with the per-token
    k3 = (rho - 1) - log rho. With A = 0 and all K actions laid out as tokens weighted by pi_old, the
    loss is E_{a~pi_old}[k3] = KL(pi_old || pi) exactly; expected: beta times that KL in plain Python."""
    g = _gen(seed, 20)
    old_logp = torch.log_softmax(torch.randn(1, 6, generator=g, dtype=F64), -1)  # (1,6)
    logp = torch.log_softmax(old_logp + 0.5 * torch.randn(1, 6, generator=g, dtype=F64), -1)
    beta = 0.7
    loss, _ = ppo_penalty_loss(logp, old_logp, torch.zeros_like(logp), old_logp.exp(), beta=beta)
    return loss.item(), beta * _kl_exact(old_logp.exp()[0].tolist(), logp.exp()[0].tolist()), 1e-12


@check("ppo/value-loss-hand", "0.5 mean (V-R)^2 and the clipped max form, example by hand: max |diff|")
def _ppo_value_loss(seed):
    """V = (1, 2, 3), V_old = 1.5, R = (2, 0, 3.5), eps = 0.2, plus one padding entry:
        unclipped 0.5 * (1 + 4 + 0.25) / 3 = 0.875
        V_clip = V_old + clip(V - V_old, -0.2, 0.2) = (1.3, 1.7, 1.7), errors (0.49, 2.89, 3.24)
        clipped 0.5 * (max(1, .49) + max(4, 2.89) + max(.25, 3.24)) / 3 = 0.5 * 8.24 / 3
    (the value clipping of OpenAI baselines' ppo2, used by Ziegler et al. 2019)."""
    values = torch.tensor([[1.0, 2.0, 3.0, 50.0]], dtype=F64)
    old = torch.tensor([[1.5, 1.5, 1.5, 0.0]], dtype=F64)
    returns = torch.tensor([[2.0, 0.0, 3.5, -50.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0]])
    got = torch.stack([value_loss(values, old, returns, mask), value_loss(values, old, returns, mask, clip_eps=0.2)])
    return _max_abs(got, torch.tensor([0.875, 0.5 * 8.24 / 3], dtype=F64)), 0.0, 1e-12


@check("ppo/entropy", "entropy_from_logits = -sum p log p (random logits, and log V for uniform): max |diff|")
def _ppo_entropy(seed):
    """H(pi) = -sum_a pi(a) log pi(a) (Shannon 1948; the entropy bonus of Schulman et al. 2017, eq. 9); the
    uniform distribution over V actions has H = log V. Expected: the sum in plain Python."""
    g = _gen(seed, 21)
    logits = 3 * torch.randn(4, 9, generator=g, dtype=F64)  # (4,9)
    got = torch.cat([entropy_from_logits(logits[None])[0], entropy_from_logits(torch.zeros(1, 1, 9, dtype=F64))[0]])
    expected = [-math.fsum(p * math.log(p) for p in torch.softmax(row, 0).tolist()) for row in logits] + [math.log(9)]
    return _max_abs(got, torch.tensor(expected, dtype=F64)), 0.0, 1e-12


# ============================================================================
# DPO family (Rafailov et al. 2023; Mitchell 2023; Azar et al. 2023; Zhao et al. 2023)


def _dpo_logps(seed: int, salt: int, B: int = 6):
    g = _gen(seed, salt)
    return [-(20 * torch.rand(B, generator=g, dtype=F64)) for _ in range(4)]  # 4 x (B,)


@check("dpo/log2-at-reference", "policy = reference: h = 0, loss = -log sigmoid(0) = log 2")
def _dpo_log2(seed):
    """L_DPO = -log sigmoid(beta h), h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l) (Rafailov et al. 2023,
    eq. 7); at pi = pi_ref, h = 0 and every pair's loss is log 2. measured: the mean loss."""
    pc, pr, _, _ = _dpo_logps(seed, 30)
    losses, _, _ = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.3)
    return losses.mean().item(), math.log(2), 1e-15


@check("dpo/sigmoid-formula", "loss = -(1-eps) log s(beta h) - eps log s(-beta h), eps in {0, 0.1}: max |diff|")
def _dpo_sigmoid(seed):
    """DPO (Rafailov et al. 2023, eq. 7) at eps = 0 and conservative DPO (Mitchell 2023) at
    label_smoothing eps = 0.1, against the formula in plain Python."""
    pc, pr, rc, rr = _dpo_logps(seed, 31)
    beta = 0.2
    h = ((pc - rc) - (pr - rr)).tolist()
    err = 0.0
    for eps in (0.0, 0.1):
        losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
        ref = [-(1 - eps) * math.log(_sigmoid(beta * x)) - eps * math.log(_sigmoid(-beta * x)) for x in h]
        err = max(err, _max_abs(losses, torch.tensor(ref, dtype=F64)))
    return err, 0.0, 1e-12


@check("dpo/ipo-formula", "IPO loss = (h - 1/(2 beta))^2: max |diff|")
def _dpo_ipo(seed):
    """IPO (Azar et al. 2023, eq. 17 with tau = beta): (h - 1/(2 tau))^2."""
    pc, pr, rc, rr = _dpo_logps(seed, 32)
    beta = 0.2
    h = ((pc - rc) - (pr - rr)).tolist()
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
    return _max_abs(losses, torch.tensor([(x - 1 / (2 * beta)) ** 2 for x in h], dtype=F64)), 0.0, 1e-12


@check("dpo/hinge-formula", "hinge loss = max(0, 1 - beta h): max |diff|")
def _dpo_hinge(seed):
    """SLiC-HF's rank calibration loss (Zhao et al. 2023, delta = 1): max(0, 1 - beta h)."""
    pc, pr, rc, rr = _dpo_logps(seed, 33)
    beta = 0.2
    h = ((pc - rc) - (pr - rr)).tolist()
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")
    return _max_abs(losses, torch.tensor([max(0.0, 1 - beta * x) for x in h], dtype=F64)), 0.0, 1e-12


@check("dpo/cdpo-optimum", "conservative DPO (eps=0.1) is minimised at beta h = log((1-eps)/eps)")
def _dpo_cdpo(seed):
    """-(1 - eps) log s(beta h) - eps log s(-beta h) is a cross-entropy with soft label 1 - eps, minimised
    where s(beta h) = 1 - eps: beta h* = log((1 - eps)/eps) = log 9 (Mitchell 2023). Found by Newton's method."""
    beta, eps = 0.1, 0.1
    zero = torch.zeros(1, dtype=F64)
    f = lambda x: dpo_loss(x, zero, zero, zero, beta=beta, label_smoothing=eps)[0].sum()
    h = _newton_minimise(f, torch.zeros(1, dtype=F64)).item()
    return beta * h, math.log((1 - eps) / eps), 1e-9


@check("dpo/bandit-optimum", "population DPO loss, BT-labelled pairs from pi_ref: argmin = pi_ref exp(r/beta)/Z (TV)",
       "<=")
def _dpo_bandit(seed):
    """K = 5 actions, rewards r, reference pi_ref. Both responses are drawn from pi_ref and labelled by
    Bradley-Terry, so the ordered pair (a chosen, b rejected) has weight pi_ref(a) pi_ref(b) sigmoid(r_a - r_b).
    The exact expected DPO loss (all K^2 ordered pairs) is minimised over softmax logits by Newton's
    method; the minimiser is pi* = pi_ref exp(r/beta) / Z (Rafailov et al. 2023, eq. 4 and section 5).
    measured: total variation between the minimiser and pi*; Newton reaches ~1e-15, we allow 1e-9."""
    r, ref_logp = _bandit(seed, 34, K=5)
    beta = 0.5
    a, b = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)  # (25,) every ordered pair
    weight = ref_logp[a].exp() * ref_logp[b].exp() * torch.sigmoid(r[a] - r[b])  # (25,)

    def expected_loss(theta):
        logp = torch.log_softmax(theta, 0)
        losses, _, _ = dpo_loss(logp[a], logp[b], ref_logp[a], ref_logp[b], beta=beta)
        return (weight * losses).sum()

    theta = _newton_minimise(expected_loss, torch.zeros(5, dtype=F64))
    return _tv(torch.softmax(theta, 0), _kl_regularised_optimum(r, ref_logp, beta)), 0.0, 1e-9


# ============================================================================
# Bradley-Terry, Plackett-Luce, Davidson


@check("bt/log2-at-equal-rewards", "r_chosen = r_rejected: loss = -log sigmoid(0) = log 2 (hard and soft labels)")
def _bt_log2(seed):
    """-p log sigmoid(d) - (1 - p) log sigmoid(-d) at d = 0 is log 2 for every p (Bradley & Terry 1952).
    measured: the larger deviation over p = 1 and p = 0.85, plus log 2."""
    g = _gen(seed, 40)
    r = 3 * torch.randn(5, generator=g, dtype=F64)
    worst = max((bradley_terry_loss(r, r.clone(), prob=p).item() for p in (1.0, 0.85)),
                key=lambda x: abs(x - math.log(2)))
    return worst, math.log(2), 1e-15


@check("bt/soft-label-optimum", "prob=0.85: argmin_d loss = log(0.85/0.15) = 1.7346")
def _bt_optimum(seed):
    """The soft-label loss is the cross-entropy between p and sigmoid(d), minimised where sigmoid(d) = p:
    d* = log(p / (1 - p)) (Bradley & Terry 1952). Found by Newton's method."""
    f = lambda d: bradley_terry_loss(d, torch.zeros(1, dtype=F64), prob=0.85)
    return _newton_minimise(f, torch.zeros(1, dtype=F64)).item(), math.log(0.85 / 0.15), 1e-10


@check("bt/plackett-luce-k2-is-bt", "Plackett-Luce loss with K=2 = mean log(1 + exp(-(s1 - s2))), the BT loss")
def _pl_k2(seed):
    """Plackett-Luce P(1 > 2) = e^s1 / (e^s1 + e^s2) = sigmoid(s1 - s2) (Luce 1959; Plackett 1975):
    with two items it is Bradley-Terry. Expected: mean softplus(-(s1 - s2)) in plain Python."""
    g = _gen(seed, 41)
    s = 3 * torch.randn(7, 2, generator=g, dtype=F64)  # (7,2)
    expected = math.fsum(math.log1p(math.exp(-(a - b))) for a, b in s.tolist()) / 7
    return plackett_luce_loss(s).item(), expected, 1e-12


@check("bt/plackett-luce-sums-to-1", "the 24 orderings of 4 items: sum of P(ordering) = 1")
def _pl_sum(seed):
    """P(y_1 > ... > y_K) = prod_i exp(s_yi) / sum_{j >= i} exp(s_yj) is a distribution over the K!
    orderings (Plackett 1975): summing exp(plackett_luce_logprob) over all 24 permutations of 4 items gives 1."""
    g = _gen(seed, 42)
    s = 2 * torch.randn(4, generator=g, dtype=F64)
    perms = torch.tensor(list(itertools.permutations(range(4))))  # (24,4)
    return math.fsum(plackett_luce_logprob(s[perms]).exp().tolist()), 1.0, 1e-12


@check("bt/davidson-sums-to-1", "Davidson win + lose + tie = 1 (50 random pairs, nu = 0.7): max |diff|")
def _davidson_sum(seed):
    """P(w > l) = pi_w / D, P(l > w) = pi_l / D, P(tie) = nu sqrt(pi_w pi_l) / D with
    D = pi_w + pi_l + nu sqrt(pi_w pi_l) (Davidson 1970): the three outcomes exhaust the possibilities."""
    g = _gen(seed, 43)
    r_w, r_l = 3 * torch.randn(50, generator=g, dtype=F64), 3 * torch.randn(50, generator=g, dtype=F64)
    win, lose, tie = davidson_probs(r_w, r_l, log_nu=math.log(0.7))
    return _max_abs(win + lose + tie, torch.ones(50, dtype=F64)), 0.0, 1e-14


@check("bt/davidson-equal-strength-tie", "equal strengths: P(tie) = nu / (2 + nu) (nu = 0.5: 0.2)")
def _davidson_tie(seed):
    """pi_w = pi_l gives D = pi (2 + nu), so P(tie) = nu pi / (pi (2 + nu)) = nu / (2 + nu) (Davidson 1970)."""
    x = torch.tensor([0.4], dtype=F64)
    return davidson_probs(x, x.clone(), log_nu=math.log(0.5))[2].item(), 0.5 / 2.5, 1e-15


# ============================================================================
# Trust region: CG, Hessian-vector products, the Fisher, the TRPO step


def _spd(g: torch.Generator, n: int) -> torch.Tensor:
    M = torch.randn(n, n, generator=g, dtype=F64)
    return M @ M.T + 0.5 * torch.eye(n, dtype=F64)  # (n,n) symmetric positive definite


@check("trpo/cg-vs-solve", "conjugate_gradient (10 iterations, n=5) = torch.linalg.solve(A, b): max |diff|")
def _cg_solve(seed):
    """CG (Hestenes & Stiefel 1952) with the TRPO defaults (10 products, stop at r^T r < 1e-10) on a
    5 x 5 SPD system, against the direct solve. The stopping rule bounds the residual by 1e-5, so x
    is within 1e-5 / lambda_min(A) <= 2e-5 (A = M M^T + 0.5 I); in practice CG finishes exactly."""
    g = _gen(seed, 50)
    A, b = _spd(g, 5), torch.randn(5, generator=g, dtype=F64)
    return _max_abs(conjugate_gradient(lambda v: A @ v, b), torch.linalg.solve(A, b)), 0.0, 2e-5


@check("trpo/cg-exact-in-n-steps", "CG on an n=8 SPD system: relative residual after exactly n products", "<=")
def _cg_n_steps(seed):
    """In exact arithmetic CG solves an n-dimensional SPD system in at most n steps (Hestenes & Stiefel 1952).
    A = Q diag(1..8) Q^T (well conditioned, so float64 keeps the property); after n = 8 products
    (residual_tol 0) the relative residual ||b - A x|| / ||b|| is at rounding level."""
    g = _gen(seed, 51)
    n = 8
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    A = Q @ torch.diag(torch.arange(1, n + 1, dtype=F64)) @ Q.T  # (n,n)
    b = torch.randn(n, generator=g, dtype=F64)
    x, info = conjugate_gradient(lambda v: A @ v, b, iters=n, residual_tol=0.0, return_info=True)
    if info["iters"] != n:
        raise AssertionError(f"CG used {info['iters']} products, expected {n}")
    return ((b - A @ x).norm() / b.norm()).item(), 0.0, 1e-10


def _nonquadratic(x):
    """f(x) = sum_i sin(x_i) x_i^3 + logsumexp(x): non-quadratic, with a dense Hessian."""
    return (torch.sin(x) * x**3).sum() + torch.logsumexp(x, 0)


@check("trpo/hvp-vs-hessian", "hessian_vector_product = autograd Hessian @ v (+ damping v), non-quadratic f")
def _hvp(seed):
    """H v = d/dtheta (grad f . v) by double backprop (Pearlmutter 1994), for
    f(x) = sum sin(x) x^3 + logsumexp(x) with x split over two parameter tensors, three vectors on one
    graph, damping 0 and 0.3. Expected: torch.autograd.functional.hessian(f) @ v + damping v."""
    g = _gen(seed, 52)
    x0 = torch.randn(5, generator=g, dtype=F64)
    p1, p2 = x0[:3].clone().requires_grad_(True), x0[3:].clone().requires_grad_(True)
    y = _nonquadratic(torch.cat([p1, p2]))
    H = torch.autograd.functional.hessian(_nonquadratic, x0)  # (5,5)
    err = 0.0
    for _ in range(3):
        v = torch.randn(5, generator=g, dtype=F64)
        for damping in (0.0, 0.3):
            err = max(err, _max_abs(hessian_vector_product(y, [p1, p2], v, damping=damping), H @ v + damping * v))
    return err, 0.0, 1e-12


def _softmax_problem(seed: int, salt: int, K: int = 5):
    """theta (K,) logits; old policy p = softmax(theta_old); advantages A (K,);
    surrogate L = E_{a~p}[rho(a) A(a)]; kl = KL(p || softmax(theta))."""
    g = _gen(seed, salt)
    theta = torch.randn(K, generator=g, dtype=F64).requires_grad_(True)
    A = torch.randn(K, generator=g, dtype=F64)
    p_old = torch.softmax(theta.detach(), 0)

    def surrogate():
        return (p_old * torch.exp(torch.log_softmax(theta, 0) - p_old.log()) * A).sum()

    def kl():
        return (p_old * (p_old.log() - torch.log_softmax(theta, 0))).sum()

    return theta, A, p_old, surrogate, kl


@check("trpo/fisher-is-kl-hessian", "Hessian of KL(p_old||softmax(theta)) at theta_old = diag(p) - p p^T: max |diff|")
def _fisher(seed):
    """For a softmax policy the Hessian of KL(pi_old || pi_theta) at theta_old is the Fisher information
    F = E_p[grad log p grad log p^T] = diag(p) - p p^T (Schulman et al. 2015, Appendix C). Built column by
    column from make_hvp on the basis vectors."""
    theta, _, p, _, kl = _softmax_problem(seed, 53)
    hvp = make_hvp(kl(), [theta])
    H = torch.stack([hvp(e) for e in torch.eye(p.numel(), dtype=F64)], 1)  # (K,K)
    return _max_abs(H, torch.diag(p) - torch.outer(p, p)), 0.0, 1e-12


@check("trpo/natural-gradient-step", "trpo_step's step = sqrt(2 delta / g^T F+ g) F+ g (times step_frac): max |diff|")
def _trpo_direction(seed):
    """TRPO's step (Schulman et al. 2015, Appendix C): x = F^-1 g by CG, s = sqrt(2 delta / x^T F x) x,
    then theta_new = theta_old + c s with c the line-search fraction. The softmax Fisher F = diag(p) - p p^T
    is singular (F 1 = 0); g = p (A - p.A) sums to 0, so g lies in range(F) and CG from 0 converges to the
    minimum-norm solution F^+ g. Expected (no damping): c sqrt(2 delta / g^T F^+ g) F^+ g with F^+ from
    torch.linalg.pinv, g = p (A - p.A) by hand. Tolerance 1e-7: CG stops once r^T r < 1e-10."""
    theta, A, p, surrogate, kl = _softmax_problem(seed, 54)
    theta_old = theta.detach().clone()
    info = trpo_step([theta], surrogate, kl, max_kl=1e-3, damping=0.0)
    F = torch.diag(p) - torch.outer(p, p)
    grad = p * (A - (p * A).sum())  # d/dtheta sum_a p_old(a) softmax(theta)_a / p_old(a) A(a) at theta_old
    nat = torch.linalg.pinv(F, hermitian=True) @ grad  # (K,)
    expected = info["step_frac"] * math.sqrt(2 * 1e-3 / grad.dot(nat).item()) * nat
    if info["step_frac"] == 0:
        raise AssertionError("trpo_step rejected every step on a problem where a small step must improve")
    return _max_abs(theta.detach() - theta_old, expected), 0.0, 1e-7


@lru_cache(maxsize=4)
def _trpo_many(seed: int) -> tuple[tuple[float, float, float, float], ...]:
    """48 random tabular problems (3 states x 4 actions, 16 seeds x max_kl in {0.01, 0.1, 1}):
    (KL after the step, max_kl, surrogate change, step_frac) for each."""
    out = []
    for i in range(16):
        g = _gen(seed, 1000 + i)
        theta = (2.0 * torch.randn(3, 4, generator=g, dtype=F64)).requires_grad_(True)
        A = 3.0 * torch.randn(3, 4, generator=g, dtype=F64)
        init = theta.detach().clone()
        for max_kl in (0.01, 0.1, 1.0):
            with torch.no_grad():
                theta.copy_(init)
            old_logp = torch.log_softmax(init, -1)

            def surrogate():  # mean over states of E_{a~old}[rho A]
                return (old_logp.exp() * torch.exp(torch.log_softmax(theta, -1) - old_logp) * A).sum(-1).mean()

            def kl():  # mean over states of KL(pi_old || pi_theta)
                return (old_logp.exp() * (old_logp - torch.log_softmax(theta, -1))).sum(-1).mean()

            before = surrogate().item()
            info = trpo_step([theta], surrogate, kl, max_kl, damping=0.1 if i % 2 else 1e-3)
            out.append((kl().item(), max_kl, surrogate().item() - before, info["step_frac"]))
    return tuple(out)


@check("trpo/kl-within-delta", "max over 48 random problems of KL(pi_old||pi_new) / delta after trpo_step", "<=")
def _trpo_kl(seed):
    """The line search accepts a step only if the mean KL(pi_old || pi_new) <= delta, and restores the old
    parameters otherwise (Schulman et al. 2015, section 6): the ratio is at most 1 on every problem,
    including those where the quadratic KL model was too optimistic. KL recomputed after the step."""
    return max(kl / max_kl for kl, max_kl, _, _ in _trpo_many(seed)), 1.0, 0.0


@check("trpo/never-worse", "min over the same 48 problems of the surrogate change after trpo_step", ">=")
def _trpo_improve(seed):
    """The line search accepts a step only with a positive surrogate improvement (Schulman et al. 2015,
    Appendix C); a rejected step leaves the parameters as they were (change exactly 0). So the change,
    recomputed after the step, is >= 0 on every problem."""
    return min(change for _, _, change, _ in _trpo_many(seed)), 0.0, 0.0


# ============================================================================
# GRPO and RLOO


def _group_rewards(seed: int, salt: int, groups: int = 4, G: int = 5):
    g = _gen(seed, salt)
    return 3 * torch.randn(groups * G, generator=g, dtype=F64) + 1, G  # (N,)


@check("grpo/group-mean-zero", "group_advantages: max over groups of |mean of A in the group|")
def _grpo_mean(seed):
    """A_i = (r_i - mean(group)) / (std(group) + eps) (Shao et al. 2024, section 4.1.2) has mean 0 in each group.
    Expected 0; the group means of A are taken in plain Python."""
    r, G = _group_rewards(seed, 60)
    adv = group_advantages(r, G).tolist()
    return max(abs(math.fsum(adv[k:k + G]) / G) for k in range(0, len(adv), G)), 0.0, 1e-12


@check("grpo/group-std-one", "group_advantages(eps=0): max over groups of |std(A) - 1| (std as torch.std)")
def _grpo_std(seed):
    """With eps = 0 each group of A_i = (r_i - mean) / std (Shao et al. 2024) has unit (unbiased, 1/(G-1))
    standard deviation, computed here in plain Python."""
    r, G = _group_rewards(seed, 61)
    adv = group_advantages(r, G, eps=0.0).tolist()
    err = 0.0
    for k in range(0, len(adv), G):
        grp = adv[k:k + G]
        m = math.fsum(grp) / G
        err = max(err, abs(math.sqrt(math.fsum((x - m) ** 2 for x in grp) / (G - 1)) - 1.0))
    return err, 0.0, 1e-12


@check("grpo/rloo-leave-one-out", "rloo_advantages: A_i = r_i - mean of the other G-1 rewards: max |diff|")
def _rloo_loo(seed):
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): A_i = r_i - 1/(G-1) sum_{j != i} r_j,
    by a plain-Python loop over each group."""
    r, G = _group_rewards(seed, 62)
    rs = r.tolist()
    expected = [rs[i] - math.fsum(rs[j] for j in range(i - i % G, i - i % G + G) if j != i) / (G - 1)
                for i in range(len(rs))]
    return _max_abs(rloo_advantages(r, G), torch.tensor(expected, dtype=F64)), 0.0, 1e-12


@check("grpo/rloo-identity", "rloo_advantages = G/(G-1) (r_i - group mean): max |diff|")
def _rloo_identity(seed):
    """r_i - (S - r_i)/(G - 1) = (G r_i - S)/(G - 1) = G/(G - 1) (r_i - S/G), S the group sum: RLOO is the
    mean-baseline advantage scaled by G/(G-1) (Kool et al. 2019)."""
    r, G = _group_rewards(seed, 63)
    grouped = r.reshape(-1, G)
    expected = (G / (G - 1) * (grouped - grouped.mean(1, keepdim=True))).reshape(-1)
    return _max_abs(rloo_advantages(r, G), expected), 0.0, 1e-12


def _expected_term_grad(theta: torch.Tensor, term) -> torch.Tensor:
    """E_{a~pi_old}[grad term(log pi(a))], pi_old = pi detached: a sampled loss term's exact expected gradient."""
    logp = torch.log_softmax(theta, 0)
    (grad,) = torch.autograd.grad((logp.exp().detach() * term(logp)).sum(), theta)
    return grad


def _kl_grad(theta: torch.Tensor, ref_logp: torch.Tensor, reverse: bool) -> torch.Tensor:
    """grad_theta of KL(pi_ref || pi) (reverse=True) or KL(pi || pi_ref), written out from the definition."""
    logp = torch.log_softmax(theta, 0)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum() if reverse else (logp.exp() * (logp - ref_logp)).sum()
    (grad,) = torch.autograd.grad(kl, theta)
    return grad


def _grpo_kl_setup(seed: int, salt: int, K: int = 6):
    g = _gen(seed, salt)
    theta = (1.5 * torch.randn(K, generator=g, dtype=F64)).requires_grad_(True)
    ref_logp = torch.log_softmax(1.5 * torch.randn(K, generator=g, dtype=F64), 0)
    return theta, ref_logp


@check("grpo/k3-grad-is-reverse-kl", "E_{a~pi}[grad GRPO k3 term] = grad KL(pi_ref||pi): max |diff|")
def _grpo_k3_grad(seed):
    """GRPO's penalty (Shao et al. 2024, eq. 4) r - log r - 1, r = pi_ref/pi, differentiated through log pi on
    on-policy samples. By enumeration, E_pi[grad k3] = sum_a (pi(a) - pi_ref(a)) grad log pi(a)
    = -sum_a pi_ref(a) grad log pi(a) = grad KL(pi_ref || pi): the REVERSE KL's gradient
    (the finding documented in objectives.policy.grpo_kl_penalty). Expected: autograd of KL(pi_ref || pi)."""
    theta, ref_logp = _grpo_kl_setup(seed, 64)
    got = _expected_term_grad(theta, lambda logp: grpo_kl_penalty(logp, ref_logp))
    return _max_abs(got, _kl_grad(theta, ref_logp, reverse=True)), 0.0, 1e-12


@check("grpo/k3-grad-not-forward-kl", "... and differs from grad KL(pi||pi_ref): max |diff| stays large", ">=")
def _grpo_k3_not_forward(seed):
    """The same expected gradient against the gradient of KL(pi || pi_ref), the divergence the value of k3
    estimates (Shao et al. 2024, eq. 4; Schulman 2020): they differ (by more than 0.01 here; they agree
    only when pi = pi_ref)."""
    theta, ref_logp = _grpo_kl_setup(seed, 64)
    got = _expected_term_grad(theta, lambda logp: grpo_kl_penalty(logp, ref_logp))
    return _max_abs(got, _kl_grad(theta, ref_logp, reverse=False)), 0.01, 0.0


@check("grpo/k2-grad-is-forward-kl", "E_{a~pi}[grad k2 term] = grad KL(pi||pi_ref); E[grad k1] = 0: max |diff|")
def _grpo_k2_grad(seed):
    """k2 = (log r)^2 / 2 in the loss: E_pi[grad k2] = -sum_a pi(a) log r(a) grad log pi(a) = grad KL(pi || pi_ref);
    k1 = -log r: E_pi[grad log pi] = 0 (Schulman 2020's estimators used as loss terms). measured: the
    larger of the two deviations."""
    theta, ref_logp = _grpo_kl_setup(seed, 65)
    g2 = _expected_term_grad(theta, lambda logp: kl_estimate(logp, ref_logp, "k2"))
    g1 = _expected_term_grad(theta, lambda logp: kl_estimate(logp, ref_logp, "k1"))
    return max(_max_abs(g2, _kl_grad(theta, ref_logp, reverse=False)), g1.abs().max().item()), 0.0, 1e-12


# ============================================================================
# Best-of-n


def _bon_problem(seed: int, salt: int, K: int = 5):
    """A categorical pi (K,) and integer rewards (K,) in {0, 1, 2}: ties are likely."""
    g = _gen(seed, salt)
    return _categorical(g, K, 1.5), torch.randint(0, 3, (K,), generator=g).to(F64)


def _bon_enumerated(p: list[float], r: list[float], n: int) -> list[float]:
    """pi_bon by a plain-Python loop over all K^n tuples of draws; the best reward wins and a tie goes to
    one of the tied draws uniformly at random."""
    out = [0.0] * len(p)
    for draws in itertools.product(range(len(p)), repeat=n):
        prob = math.prod(p[i] for i in draws)
        best = max(r[i] for i in draws)
        winners = [i for i in draws if r[i] == best]
        for i in winners:
            out[i] += prob / len(winners)
    return out


@check("bon/distribution-vs-enumeration", "best_of_n_distribution (n=4, 5 outcomes, tied rewards) against "
       "all 5^4 tuples: max |diff|")
def _bon_enumeration(seed):
    """Best-of-n draws y_1..y_n ~ pi and keeps the one with the highest reward (Stiennon et al. 2020); for
    distinct rewards pi_bon(y) = F(r_y)^n - F(r_y^-)^n (Beirami et al. 2024), tied outcomes share their
    class's mass in proportion to pi. Expected: enumeration of every n-tuple, ties split uniformly."""
    p, r = _bon_problem(seed, 90)
    expected = torch.tensor(_bon_enumerated(p.tolist(), r.tolist(), 4), dtype=F64)
    return _max_abs(best_of_n_distribution(p, r, 4), expected), 0.0, 1e-12


@check("bon/kl-below-log-n-bound", "exact KL(pi_bon || pi), 8 outcomes with distinct rewards, n=8, against log n - (n-1)/n", "<=")
def _bon_kl_bound(seed):
    """KL(pi_bon || pi) <= log n - (n-1)/n, the value commonly quoted for best-of-n (Stiennon et al. 2020),
    shown to be an upper bound by Beirami et al. (2024); it is reached only when no reward value has
    positive probability. Expected: the bound in plain Python."""
    p, r = _bon_problem(seed, 91, K=8)
    return best_of_n_kl(p, r + torch.arange(8, dtype=F64) / 10, 8).item(), math.log(8) - 7 / 8, 0.0


# ============================================================================
# Learned policies on a bandit (exact expected gradients)


def _descend(theta: torch.Tensor, loss_fn, steps: int, lr: float) -> torch.Tensor:
    """Plain gradient descent; loss_fn(theta) builds the loss (its on-policy constants from theta)."""
    for _ in range(steps):
        (grad,) = torch.autograd.grad(loss_fn(theta), theta)
        with torch.no_grad():
            theta -= lr * grad
    return theta.detach()


@lru_cache(maxsize=4)
def _ppo_bandit(seed: int) -> float:
    """TV(pi_learned, pi*) for the PPO run of bandit/ppo-kl-in-reward."""
    r, ref_logp = _bandit(seed, 70)
    beta = 1.0
    theta = ref_logp.clone().requires_grad_(True)  # the policy starts at the reference, as in RLHF
    for _ in range(150):  # PPO iterations
        with torch.no_grad():
            old_logp = torch.log_softmax(theta, 0)  # (K,)
            shaped = r - beta * kl_estimate(old_logp, ref_logp, "k1")  # r(a) - beta (log pi_old - log pi_ref)
            adv = shaped - (old_logp.exp() * shaped).sum()  # minus the exact baseline E_old[shaped]

        def loss_fn(th):  # the K actions as K tokens weighted by pi_old: the token mean is E_{a~pi_old}
            return ppo_policy_loss(torch.log_softmax(th, 0)[None], old_logp[None], adv[None], old_logp.exp()[None])[0]

        _descend(theta, loss_fn, steps=4, lr=1.0)  # 4 epochs on the same exact "batch"
    return _tv(torch.softmax(theta.detach(), 0), _kl_regularised_optimum(r, ref_logp, beta))


@check("bandit/ppo-kl-in-reward", "PPO, reward r - beta (log pi - log pi_ref), 600 exact steps: TV(pi, pi*)", "<=")
def _bandit_ppo(seed):
    """max_pi E_pi[r] - beta KL(pi || pi_ref) has the solution pi* = pi_ref exp(r/beta) / Z (Ziegler et al. 2019;
    Rafailov et al. 2023, eq. 4). PPO (clip 0.2) on a 6-armed bandit with the penalty folded into the reward
    via k1 (as in Ziegler et al. 2019), beta = 1, exact expectations over the actions, the exact baseline
    E_old[reward], starting at pi_ref, 150 iterations x 4 epochs of gradient descent (lr 1). Over seeds
    0..59 it ends within TV 3e-4 of pi* (median ~1e-8); we allow 1e-3. (Larger steps make PPO circle pi*
    instead of reaching it: the penalty in the reward is frozen at pi_old within an iteration.)"""
    return _ppo_bandit(seed), 0.0, 1e-3


def _policy_gradient_loss(theta, r, ref_logp, beta, penalty):
    """On-policy loss: -E_pi[rho A] with A = r - E_pi[r] (ppo_policy_loss at rho = 1, the policy gradient)
    plus beta E_pi[penalty(log pi, log pi_ref)], every expectation exact (actions weighted by pi_old = pi)."""
    logp = torch.log_softmax(theta, 0)
    old = logp.detach()
    w = old.exp()
    adv = r - (w * r).sum()
    pg, _ = ppo_policy_loss(logp[None], old[None], adv[None], w[None])
    return pg + beta * (w * penalty(logp, ref_logp)).sum()


def _pg_with_penalty(r: torch.Tensor, ref_logp: torch.Tensor, beta: float, estimator: str) -> torch.Tensor:
    """The policy after 300 steps (lr 2) of exact on-policy descent on -E_pi[r] + beta E_pi[penalty], from pi_ref.
    estimator "k3" is GRPO's term (grpo_kl_penalty); "k2" is kl_estimate(..., "k2")."""
    penalty = grpo_kl_penalty if estimator == "k3" else (lambda lp, rl: kl_estimate(lp, rl, estimator))
    theta = ref_logp.clone().requires_grad_(True)
    theta = _descend(theta, lambda th: _policy_gradient_loss(th, r, ref_logp, beta, penalty), steps=300, lr=2.0)
    return torch.softmax(theta, 0)


@lru_cache(maxsize=8)
def _pg_random(seed: int, estimator: str) -> torch.Tensor:
    return _pg_with_penalty(*_bandit(seed, 71), 1.0, estimator)


@lru_cache(maxsize=4)
def _pg_hand(estimator: str) -> torch.Tensor:
    r = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    return _pg_with_penalty(r, torch.full((4,), -math.log(4), dtype=F64), 1.0, estimator)


@check("bandit/pg-k2-penalty", "policy gradient + beta k2 loss term, 300 exact steps: TV(pi, pi_ref exp(r/beta)/Z)",
       "<=")
def _bandit_k2(seed):
    """The k2 loss term's expected gradient is grad KL(pi || pi_ref) (row grpo/k2-grad-is-forward-kl), so
    gradient descent on -E_pi[r] + beta E_pi[k2] (on-policy, exact) maximises E_pi[r] - beta KL(pi || pi_ref)
    and converges to pi* = pi_ref exp(r/beta) / Z (Rafailov et al. 2023, eq. 4). 6 arms, beta = 1, 300 steps
    of lr 2 from pi_ref. Over seeds 0..39 it ends within TV 5e-4 (median ~1e-7); we allow 2e-3."""
    r, ref_logp = _bandit(seed, 71)
    return _tv(_pg_random(seed, "k2"), _kl_regularised_optimum(r, ref_logp, 1.0)), 0.0, 2e-3


@check("bandit/grpo-k3-fixed-point",
       "policy gradient + beta GRPO k3 term: TV(pi, beta pi_ref/(lambda - r)), the reverse-KL optimum", "<=")
def _bandit_k3(seed):
    """GRPO's k3 term (Shao et al. 2024, eq. 4) has expected gradient grad KL(pi_ref || pi) (row
    grpo/k3-grad-is-reverse-kl), so the same descent with it maximises E_pi[r] - beta KL(pi_ref || pi), whose
    solution is pi(a) = beta pi_ref(a) / (lambda - r(a)) with lambda > max r fixed by normalisation (found by
    bisection). Same bandit, beta, steps and lr as bandit/pg-k2-penalty; over seeds 0..39 it ends within
    TV 2e-5 (median ~1e-14); we allow 1e-4."""
    r, ref_logp = _bandit(seed, 71)
    return _tv(_pg_random(seed, "k3"), _reverse_kl_regularised_optimum(r, ref_logp, 1.0)), 0.0, 1e-4


@check("bandit/grpo-k3-by-hand", "r=(1,0,0,0), pi_ref uniform, beta=1, GRPO k3 term: learned pi(arm 1) = 1/2")
def _bandit_k3_hand(seed):
    """Worked by hand: pi(a) = beta pi_ref(a) / (lambda - r(a)) = 1/(4 (lambda - 1)) for arm 1 and 1/(4 lambda) for the
    other three; normalisation 1/(4(lambda - 1)) + 3/(4 lambda) = 1 gives lambda^2 - 2 lambda + 3/4 = 0, lambda = 3/2,
    so pi = (1/2, 1/6, 1/6, 1/6). (pi* of the forward KL would give arm 1 e/(e + 3) = 0.4754: next row.)
    Policy gradient + beta GRPO k3 term (Shao et al. 2024, eq. 4), 300 exact steps. (Does not depend on the seed.)"""
    return _pg_hand("k3")[0].item(), 0.5, 1e-6


@check("bandit/pg-k2-by-hand", "same bandit with the k2 term: learned pi(arm 1) = e/(e+3), pi*'s value")
def _bandit_k2_hand(seed):
    """pi* = pi_ref exp(r/beta) / Z gives arm 1 e / (e + 3) = 0.47536 (Rafailov et al. 2023, eq. 4): the k2 term
    (forward-KL gradient) reaches it, while GRPO's k3 term reaches 1/2 (previous row). (Does not depend on the seed.)"""
    return _pg_hand("k2")[0].item(), math.e / (math.e + 3), 1e-6


# ============================================================================
# Unpaired and reference-free preference losses: KTO (Ethayarajh et al. 2024), ORPO (Hong et al. 2024),
# SimPO (Meng et al. 2024)


@check("kto/half-lambda-at-reference", "pi = pi_ref, z0 = 0: loss = lambda_y (1 - sigmoid(0)) = lambda_y / 2: max |diff|")
def _kto_half(seed):
    """L_KTO = lambda_y - v(x, y), v = lambda_D sigmoid(beta (r - z0)) (desirable) or lambda_U sigmoid(beta (z0 - r))
    (undesirable), r = log pi/pi_ref (Ethayarajh et al. 2024). At r = 0, z0 = 0: lambda_y / 2."""
    g = _gen(seed, 80)
    ref = -10 * torch.rand(6, generator=g, dtype=F64)
    desirable = torch.tensor([True, False, True, True, False, False])
    losses, _ = kto_loss(ref.clone(), ref, desirable, 0.0, beta=0.3, lambda_d=1.5, lambda_u=0.7)
    expected = torch.tensor([0.75 if d else 0.35 for d in desirable.tolist()], dtype=F64)
    return _max_abs(losses, expected), 0.0, 1e-15


@check("kto/grad-at-reference", "... and d loss / d log pi = -lambda_D beta/4 (desirable), +lambda_U beta/4: max |diff|")
def _kto_grad(seed):
    """d/dr lambda_D (1 - sigmoid(beta r)) = -lambda_D beta sigmoid'(0) = -lambda_D beta / 4 at r = 0; the undesirable
    term lambda_U (1 - sigmoid(-beta r)) gives +lambda_U beta / 4 (Ethayarajh et al. 2024)."""
    g = _gen(seed, 81)
    ref = -10 * torch.rand(6, generator=g, dtype=F64)
    desirable = torch.tensor([True, False, True, True, False, False])
    logp = ref.clone().requires_grad_(True)
    losses, _ = kto_loss(logp, ref, desirable, 0.0, beta=0.3, lambda_d=1.5, lambda_u=0.7)
    (grad,) = torch.autograd.grad(losses.sum(), logp)
    expected = torch.tensor([-1.5 * 0.3 / 4 if d else 0.7 * 0.3 / 4 for d in desirable.tolist()], dtype=F64)
    return _max_abs(grad, expected), 0.0, 1e-15


@check("kto/formula", "KTO losses with z0 = max(0, mean mismatched log-ratio), random batch: max |diff|")
def _kto_formula(seed):
    """z0 = max(0, 1/m sum log pi(y_j|x_i)/pi_ref(y_j|x_i)) over mismatched pairs (Ethayarajh et al. 2024),
    then lambda_y - v(x, y), against plain Python."""
    g = _gen(seed, 82)
    logp, ref = -5 * torch.rand(8, generator=g, dtype=F64), -5 * torch.rand(8, generator=g, dtype=F64)
    kl_pol, kl_ref = -5 * torch.rand(8, generator=g, dtype=F64), -5 * torch.rand(8, generator=g, dtype=F64) - 1.0
    desirable = torch.rand(8, generator=g) < 0.5
    beta, lam_d, lam_u = 0.5, 1.0, 1.33
    z0 = max(0.0, math.fsum(a - b for a, b in zip(kl_pol.tolist(), kl_ref.tolist())) / 8)
    losses, _ = kto_loss(logp, ref, desirable, kto_reference_point(kl_pol, kl_ref), beta, lam_d, lam_u)
    expected = [lam_d * (1 - _sigmoid(beta * (a - b - z0))) if d else lam_u * (1 - _sigmoid(beta * (z0 - (a - b))))
                for a, b, d in zip(logp.tolist(), ref.tolist(), desirable.tolist())]
    return _max_abs(losses, torch.tensor(expected, dtype=F64)), 0.0, 1e-14


@check("orpo/odds-ratio-enumerated", "L_OR = log(1 + odds(y_l)/odds(y_w)), P = p(y)^(1/|y|), all 72 pairs: max rel diff")
def _orpo_enumerated(seed):
    """odds(y) = P/(1 - P), P = exp(1/|y| sum_t log p(y_t|y_<t)), L_OR = -log sigmoid(log(odds(y_w)/odds(y_l)))
    (Hong et al. 2024, eqs. 6-7). A 2-token policy over 3 tokens: the 9 sequences' probabilities p(y1) p(y2|y1)
    by plain products; expected: log(1 + odds_l/odds_w) from them, for every ordered pair of distinct sequences."""
    g = _gen(seed, 83)
    p1 = torch.softmax(torch.randn(3, generator=g, dtype=F64), 0)
    p2 = torch.softmax(torch.randn(3, 3, generator=g, dtype=F64), 1)
    seqs = list(itertools.product(range(3), range(3)))
    pairs = list(itertools.permutations(seqs, 2))  # (72,)
    mean_lp = lambda s: (p1[s[0]].log() + p2[s[0], s[1]].log()) / 2
    chosen = torch.stack([mean_lp(w) for w, _ in pairs])
    rejected = torch.stack([mean_lp(l) for _, l in pairs])
    _, or_term, _ = orpo_loss(chosen, rejected, 0.0, lam=1.0)
    err = 0.0
    for k, (w, l) in enumerate(pairs):
        P_w, P_l = math.sqrt(p1[w[0]].item() * p2[w].item()), math.sqrt(p1[l[0]].item() * p2[l].item())
        expected = math.log1p((P_l / (1 - P_l)) / (P_w / (1 - P_w)))
        err = max(err, abs(or_term[k].item() - expected) / expected)
    return err, 0.0, 1e-12


@check("orpo/log-odds-near-one", "log odds at P = exp(-1e-12): -1e-12 - log(-expm1(-1e-12)) to 1e-14 relative")
def _orpo_near_one(seed):
    """log odds = log P - log(1 - P) (Hong et al. 2024); forming 1 - P in float64 at P = exp(-1e-12) loses
    about 4 digits, log(-expm1(x)) does not. Expected: the formula in math (Maechler 2012's log1mexp)."""
    x = -1e-12
    got = orpo_log_odds(torch.tensor([x], dtype=F64)).item()
    expected = x - math.log(-math.expm1(x))
    return abs(got - expected) / abs(expected), 0.0, 1e-14


@check("simpo/formula", "SimPO loss = -log s(beta/|y_w| log pi_w - beta/|y_l| log pi_l - gamma): max |diff|")
def _simpo_formula(seed):
    """L_SimPO = -log sigmoid(beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma) (Meng et al. 2024),
    against plain Python."""
    g = _gen(seed, 84)
    cw, cl = -20 * torch.rand(6, generator=g, dtype=F64), -20 * torch.rand(6, generator=g, dtype=F64)
    lw, ll = torch.randint(1, 12, (6,), generator=g), torch.randint(1, 12, (6,), generator=g)
    beta, gamma = 2.0, 0.5
    losses, _, _ = simpo_loss(cw, cl, lw, ll, beta, gamma)
    expected = [-math.log(_sigmoid(beta * a / n - beta * b / m - gamma))
                for a, b, n, m in zip(cw.tolist(), cl.tolist(), lw.tolist(), ll.tolist())]
    return _max_abs(losses, torch.tensor(expected, dtype=F64)), 0.0, 1e-13


@check("simpo/length-normalised", "a response repeated twice (same per-token log-probs): same SimPO reward and loss")
def _simpo_length(seed):
    """r_SimPO = beta/|y| log pi(y|x) (Meng et al. 2024) is the mean token log-prob times beta: doubling the response
    by repeating its tokens doubles log pi and |y|. measured: the larger of |reward change| and |loss change|,
    and |reward - beta * mean token log-prob|."""
    g = _gen(seed, 85)
    t = -3 * torch.rand(5, generator=g, dtype=F64)  # per-token log-probs
    rej = torch.tensor([-7.0], dtype=F64)
    l1, r1, _ = simpo_loss(t.sum()[None], rej, 5, 3, beta=2.0, gamma=0.3)
    l2, r2, _ = simpo_loss(torch.cat([t, t]).sum()[None], rej, 10, 3, beta=2.0, gamma=0.3)
    mean = math.fsum(t.tolist()) / 5
    return max(_max_abs(r1, r2), _max_abs(l1, l2), abs(r1.item() - 2.0 * mean)), 0.0, 1e-14


# ============================================================================
# Policy-gradient variants: GSPO (Zheng et al. 2025), DAPO (Yu et al. 2025), REINFORCE++ (Hu 2025)


@check("gspo/one-token-ratio", "|y| = 1: s_i = pi/pi_old of the token; |y| = 3: (pi(y)/pi_old(y))^(1/3): max |diff|")
def _gspo_ratio(seed):
    """s_i = (pi(y_i|x)/pi_old(y_i|x))^(1/|y_i|) (Zheng et al. 2025): for one token, the token ratio (PPO's);
    for more, the geometric mean of the token ratios. Expected from the sequence log-probs in plain Python."""
    g = _gen(seed, 86)
    logp, old = -3 * torch.rand(2, 3, generator=g, dtype=F64), -3 * torch.rand(2, 3, generator=g, dtype=F64)
    s = gspo_sequence_ratio(logp, old, torch.tensor([[1, 0, 0], [1, 1, 1]]))
    lp, lo = logp.tolist(), old.tolist()
    expected = [math.exp(lp[0][0] - lo[0][0]), math.exp(math.fsum(lp[1]) - math.fsum(lo[1])) ** (1 / 3)]
    return _max_abs(s, torch.tensor(expected, dtype=F64)), 0.0, 1e-14


@check("gspo/grad-vs-written-out", "GSPO loss gradient = autograd of -mean min(s A, clip(s) A) from sequence probs")
def _gspo_grad(seed):
    """J_GSPO = 1/G sum_i min(s_i A_i, clip(s_i, 1 - eps_l, 1 + eps_h) A_i) (Zheng et al. 2025, eq. 5) written out on a
    2-step policy over 3 tokens with EOS = token 0 (7 sequences, lengths 1 and 2), s_i from the sequence probabilities
    p(y1) p(y2|y1) (plain products). eps_low and eps_high lie halfway to the smallest and largest s_i, whose
    sequences get A < 0 and A > 0, so both are clipped while a third sequence is not (the row raises otherwise).
    measured: max |grad of gspo_policy_loss - grad of -J| over the policy's logits."""
    g = _gen(seed, 87)
    seqs = [(0,)] + [(a, b) for a in (1, 2) for b in range(3)]
    tokens = torch.tensor([s + (0,) * (2 - len(s)) for s in seqs])  # (7,2)
    mask = torch.tensor([[1] * len(s) + [0] * (2 - len(s)) for s in seqs])  # (7,2)
    old1, old2 = torch.randn(3, generator=g, dtype=F64), torch.randn(3, 3, generator=g, dtype=F64)
    th1 = (old1 + 0.5 * torch.randn(3, generator=g, dtype=F64)).requires_grad_(True)
    th2 = (old2 + 0.5 * torch.randn(3, 3, generator=g, dtype=F64)).requires_grad_(True)
    A = torch.randn(7, generator=g, dtype=F64)

    def seq_prob(t1, t2, y):
        q1, q2 = torch.softmax(t1, 0), torch.softmax(t2, 1)
        return q1[y[0]] if len(y) == 1 else q1[y[0]] * q2[y[0], y[1]]

    s = torch.stack([(seq_prob(th1, th2, y) / seq_prob(old1, old2, y)) ** (1 / len(y)) for y in seqs])  # (7,)
    with torch.no_grad():
        # sum_y pi(y) = sum_y pi_old(y) = 1, so s_min < 1 < s_max (pi != pi_old); with eps halfway to them and
        # A > 0 at s_max, A < 0 at s_min, both are clipped; a third sequence with A of the other sign is not
        lo, hi = (1 - s.min().item()) / 2, (s.max().item() - 1) / 2
        i_max, i_min = s.argmax().item(), s.argmin().item()
        k = next(i for i in range(7) if i not in (i_max, i_min))
        A[i_max], A[i_min] = A[i_max].abs() + 0.5, -A[i_min].abs() - 0.5
        A[k] = -A[k].abs() if s[k] >= 1 else A[k].abs()
    clipped = ((A > 0) & (s > 1 + hi)) | ((A < 0) & (s < 1 - lo))
    if not 0 < int(clipped.sum()) < 7:
        raise RuntimeError(f"degenerate problem: {int(clipped.sum())} of 7 sequences clipped; the row needs both regimes")

    def token_logps(t1, t2):
        lp1, lp2 = torch.log_softmax(t1, 0), torch.log_softmax(t2, 1)
        return torch.stack([lp1[tokens[:, 0]], lp2[tokens[:, 0], tokens[:, 1]]], 1)  # (7,2)

    loss, _ = gspo_policy_loss(token_logps(th1, th2), token_logps(old1, old2), A, mask, lo, hi)
    got = torch.autograd.grad(loss, (th1, th2))
    J = torch.minimum(s * A, torch.clamp(s, 1 - lo, 1 + hi) * A).mean()
    want = torch.autograd.grad(-J, (th1, th2))
    return max(_max_abs(a, b) for a, b in zip(got, want)), 0.0, 1e-13


_DAPO_CASES = [(+1.0, 1.25),  # inside [1 - 0.2, 1 + 0.28]: not clipped (a symmetric 0.2 clip would clip it)
               (+1.0, 1.30),  # A > 0, rho > 1.28: clipped
               (-1.0, 0.75),  # A < 0, rho < 0.8: clipped
               (-1.0, 1.25)]  # A < 0, rho > 1: unclipped


@check("dapo/clip-higher-set", "eps_low 0.2, eps_high 0.28 on 4 hand cases: grad 0 exactly on the clipped 2: max |diff|")
def _dapo_clip_higher(seed):
    """clip(rho, 1 - eps_low, 1 + eps_high) (Yu et al. 2025) in PPO's min (Schulman et al. 2017, eq. 7):
    rho = 1.25 with A > 0 stays unclipped (gradient -A rho / N), rho = 1.30 is clipped; the low side is unchanged.
    Expected gradient per token: (-1.25/4, 0, 0, 1.25/4); measured also includes |clipfrac - 2/4|."""
    A = torch.tensor([[a for a, _ in _DAPO_CASES]], dtype=F64)
    old = torch.full((1, 4), -1.0, dtype=F64)
    logp = (old + torch.tensor([[r for _, r in _DAPO_CASES]], dtype=F64).log()).requires_grad_(True)
    loss, stats = ppo_policy_loss(logp, old, A, torch.ones(1, 4), clip_eps=0.2, clip_eps_high=0.28)
    (grad,) = torch.autograd.grad(loss, logp)
    expected = torch.tensor([-1.25 / 4, 0.0, 0.0, 1.25 / 4], dtype=F64)
    return max(_max_abs(grad[0], expected), abs(stats["clipfrac"].item() - 0.5)), 0.0, 1e-15


@check("dapo/dynamic-sampling", "nonconstant_groups on all 2^G binary groups, G = 2..5: wrong keep/drop decisions")
def _dapo_dynamic(seed):
    """DAPO keeps a group only if 0 < |{correct}| < G (Yu et al. 2025): a group that is all right or all wrong
    has zero advantage. Exhaustive over every binary reward table; measured: the number of groups decided differently
    from that count, or kept although their rewards are all equal."""
    wrong = 0
    for G in range(2, 6):
        tables = list(itertools.product([0.0, 1.0], repeat=G))
        keep = nonconstant_groups(torch.tensor([r for t in tables for r in t], dtype=F64), G).tolist()
        wrong += sum(k != (0 < sum(t) < G) or (k and len(set(t)) == 1) for k, t in zip(keep, tables))
    return float(wrong), 0.0, 0.0


@check("dapo/overlong-breakpoints", "L_max 10, L_cache 4: penalty at |y| = 0, 6, 7, 8, 10, 11 is 0, 0, -1/4, -1/2, -1, -1")
def _dapo_overlong(seed):
    """R_length = 0 for |y| <= L_max - L_cache, ((L_max - L_cache) - |y|)/L_cache up to L_max, -1 beyond
    (Yu et al. 2025). measured: max |diff| from the values worked by hand."""
    got = overlong_penalty(torch.tensor([0, 6, 7, 8, 10, 11]), 10, 4)
    return _max_abs(got, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0], dtype=got.dtype)), 0.0, 1e-15


@check("reinforce++/hand-example", "REINFORCE++ advantages (plain and baseline) on a 2x3 example by hand: max |diff|")
def _rpp_hand(seed):
    """r_t = -beta KL_t (k1) plus the score at EOS, A_t = sum_{i >= t} r_i (gamma = 1), whitened over the valid tokens
    of the batch (Hu 2025); the baseline variant subtracts the group-mean score first. beta = 0.5,
    k1 = ((0.2, -0.4, 0), (0.1, 0.3, pad)), scores (1, 0): returns (1.1, 1.2, 1.0 | -0.2, -0.15); with the baseline
    (scores 0.5, -0.5) (0.6, 0.7, 0.5 | -0.7, -0.65). Expected: those, whitened in plain Python (unbiased std)."""
    ref = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], dtype=F64)
    logp = ref + torch.tensor([[0.2, -0.4, 0.0], [0.1, 0.3, 5.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    scores = torch.tensor([1.0, 0.0], dtype=F64)

    def whitened(xs):
        m = math.fsum(xs) / len(xs)
        sd = math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1) + 1e-8)
        w = [(x - m) / sd for x in xs]
        return torch.tensor([w[:3], w[3:] + [0.0]], dtype=F64)

    err = _max_abs(reinforce_pp_advantages(scores, logp, ref, mask, 0.5), whitened([1.1, 1.2, 1.0, -0.2, -0.15]))
    base = reinforce_pp_advantages(scores, logp, ref, mask, 0.5, group_size=2)
    return max(err, _max_abs(base, whitened([0.6, 0.7, 0.5, -0.7, -0.65]))), 0.0, 1e-12


# ============================================================================
# running and printing


@dataclass
class RowResult:
    name: str
    claim: str
    compare: str
    measured: float
    expected: float
    error: float
    tolerance: float
    passed: bool
    message: str = ""  # the exception, when the check raised
    source: str = ""  # the check's docstring: formula and source
    seconds: float = 0.0


def _error(compare: str, measured: float, expected: float) -> float:
    if compare == "==":
        return abs(measured - expected)
    if compare == "<=":
        return max(0.0, measured - expected) if not math.isnan(measured) else math.nan
    return max(0.0, expected - measured) if not math.isnan(measured) else math.nan


def run_check(c: Check, seed: int = 0, tol_scale: float = 1.0) -> RowResult:
    """Run one row; an exception makes a failed row that carries the message (the report goes on)."""
    t0 = time.perf_counter()
    try:
        out = c.fn(seed)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise TypeError(f"check {c.name}: expected (measured, expected, tolerance), got {out!r}")
        measured, expected, tol = (float(x) for x in out)
        err = _error(c.compare, measured, expected)
        passed = math.isfinite(measured) and err <= tol * tol_scale  # False for nan
        return RowResult(c.name, c.claim, c.compare, measured, expected, err, tol * tol_scale, bool(passed),
                         source=c.doc, seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a broken objective is a failed row, not a crashed report
        return RowResult(c.name, c.claim, c.compare, math.nan, math.nan, math.nan, math.nan, False,
                         message=f"{type(e).__name__}: {e}", source=c.doc, seconds=time.perf_counter() - t0)


def select_checks(only: Iterable[str] | None = None) -> list[Check]:
    """The registered checks whose name contains one of `only` (or matches it as a glob); all if empty."""
    patterns = [p for p in (only or []) if p]
    if not patterns:
        return list(CHECKS)
    chosen = [c for c in CHECKS if any(p in c.name or fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"only: no check matches {patterns}; check names start with one of: {', '.join(GROUPS)} "
                         f"(e.g. {CHECKS[0].name!r})")
    return chosen


def run_checks(only: Iterable[str] | None = None, seed: int = 0, tol_scale: float = 1.0,
               checks: list[Check] | None = None) -> list[RowResult]:
    """Run the selected rows (single-threaded: the tensors are tiny) and return their results in order."""
    if not tol_scale > 0:
        raise ValueError(f"tol_scale: expected > 0, got {tol_scale}")
    checks = select_checks(only) if checks is None else checks
    for cached in (_trpo_many, _ppo_bandit, _pg_random, _pg_hand):  # a monkeypatched objective must be seen
        cached.cache_clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [run_check(c, seed, tol_scale) for c in checks]
    finally:
        torch.set_num_threads(threads)


def _num(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.6g}"


def _sci(x: float) -> str:
    return "nan" if math.isnan(x) else ("0" if x == 0 else f"{x:.1e}")


def format_table(results: list[RowResult], explain: bool = False) -> str:
    """The report: one line per row under a heading per group, then a summary line.
    explain=True appends each row's formula and source."""
    width = max([len(r.name) for r in results] + [5])
    head = f"{'check':<{width}}  {'measured':>13}  {'expected':>15}  {'error':>8}  {'tolerance':>9}  pass"
    lines = [head, "-" * len(head)]
    group = None
    for r in results:
        g = r.name.split("/", 1)[0]
        if g != group:
            group = g
            lines.append(f"# {GROUPS.get(g, g)}")
        expected = _num(r.expected) if r.compare == "==" else f"{r.compare} {_num(r.expected)}"
        verdict = "PASS" if r.passed else "FAIL"
        lines.append(f"{r.name:<{width}}  {_num(r.measured):>13}  {expected:>15}  {_sci(r.error):>8}  "
                     f"{_sci(r.tolerance):>9}  {verdict}   {r.claim}")
        if r.message:
            lines.append(f"{'':<{width}}  ^ raised {r.message}")
    n_fail = sum(not r.passed for r in results)
    total = sum(r.seconds for r in results)
    lines.append("-" * len(head))
    lines.append(f"{len(results) - n_fail}/{len(results)} rows pass"
                 + (f", {n_fail} FAIL: " + ", ".join(r.name for r in results if not r.passed) if n_fail else "")
                 + f"  ({total:.1f} s)")
    if explain:
        for r in results:
            lines += ["", f"{r.name}: {r.claim}", *("    " + s for s in r.source.splitlines())]
    return "\n".join(lines)


@dataclass
class VerifyConfig:
    seed: int = field(default=0, metadata={"help": "seed of the random problems (every seed should pass)"})
    tol_scale: float = field(default=1.0, metadata={"help": "multiply every tolerance by this"})
    only: list[str] = field(default_factory=list,
                            metadata={"help": "run only rows whose name contains one of these (or matches as a glob)"})
    json: str | None = field(default=None, metadata={"help": "also write the rows as JSON to this path"})
    explain: bool = field(default=False, metadata={"help": "print each row's formula and source after the table"})
    trainers: bool = field(default=False, metadata={
        "help": "also run every trainer whole on the bandit task and compare its final policy with its exact optimum"})
    trainers_dir: str = field(default="", metadata={
        "help": "folder for the trainer runs ('' = a temporary folder, removed afterwards)"})


def _json_safe(obj):
    """nan and inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def verify(cfg: VerifyConfig) -> dict:
    """Run the report, print it, optionally write JSON; returns {"passed", "n_rows", "n_failed", "rows"}."""
    checks, trainer_rows = _selection(cfg)
    results = run_checks(seed=cfg.seed, tol_scale=cfg.tol_scale, checks=checks) if checks else []
    if results:
        print(format_table(results, explain=cfg.explain))
    n_failed = sum(not r.passed for r in results)
    out = {"passed": n_failed == 0, "n_rows": len(results), "n_failed": n_failed, "seed": cfg.seed,
           "tol_scale": cfg.tol_scale, "rows": [asdict(r) for r in results]}
    if trainer_rows:
        trained = _run_trainers(cfg, trainer_rows)
        n_bad = sum(not r.passed for r in trained)
        out["trainers"] = [asdict(r) for r in trained]
        out["n_failed"] += n_bad
        out["passed"] = out["n_failed"] == 0
    if cfg.json:
        from minirlhf.checkpoint import atomic_write_json

        atomic_write_json(cfg.json, _json_safe(out))
    return out


def _selection(cfg: VerifyConfig):
    """(objective checks, trainer rows) that cfg selects. With --trainers, --only picks from both lists
    and only a pattern that matches nothing in either is an error."""
    if not cfg.trainers:
        return select_checks(cfg.only), []
    from minirlhf import verify_trainers as T

    patterns = [p for p in cfg.only if p]
    if not patterns:
        return list(CHECKS), list(T.ROWS)
    checks = [c for c in CHECKS if any(p in c.name or fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    rows = [r for r in T.ROWS if any(p in r.name or fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    if not checks and not rows:
        raise ValueError(f"only: no check or trainer row matches {patterns}; trainer rows: "
                         f"{', '.join(r.name for r in T.ROWS)}")
    return checks, rows


def _run_trainers(cfg: VerifyConfig, rows) -> list:
    """The trainer rows (minirlhf.verify_trainers), printed as their own table."""
    import shutil
    import tempfile
    from pathlib import Path

    from minirlhf import verify_trainers as T

    workdir = Path(cfg.trainers_dir) if cfg.trainers_dir else Path(tempfile.mkdtemp(prefix="minirlhf-verify-"))
    try:
        reference = T.build_reference(workdir / "reference")
        results = [T.run_trainer_row(row, reference, workdir) for row in rows]
    finally:
        if not cfg.trainers_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + T.format_trainer_table(results))
    return results


def verify_cli(cfg: VerifyConfig) -> dict:
    """`minirlhf verify`: as verify(), and exit with status 1 when any row fails."""
    out = verify(cfg)
    if not out["passed"]:
        raise SystemExit(1)
    return out


if __name__ == "__main__":  # python -m minirlhf.verify [flags]
    from minirlhf.cli import main

    sys.exit(main(["verify", *sys.argv[1:]]))
