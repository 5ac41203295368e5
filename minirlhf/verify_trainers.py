"""``minirlhf verify --trainers``: every trainer, run whole through its command, against the exact
optimum of its objective on the bandit task.

The objective rows of ``minirlhf verify`` check each formula alone. These rows check the trainers
that put them together: a sign error between the KL penalty and the advantages, a reference policy
that is not the SFT model, a doubled beta, a reference taken from the current policy ... all leave
the loss functions right and the trainer wrong. On the bandit task (minirlhf.tasks.bandit) a
response is one token, so pi(y|x) is one softmax row of K arms and every optimum below is a short
enumeration, written out here in float64 without calling the code under test:

    PPO (critic and critic-free), TRPO, RLOO, KL penalty in the reward (k1):
        pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x)               (Ziegler et al. 2019; Rafailov et al. 2023, eq. 4)
    GRPO, k3 term in the loss, group-std advantages:
        the zero of its expected gradient, enumerated over the multinomial counts of a group
    DPO, IPO, cDPO on Bradley-Terry pairs covering every pair of arms:
        the minimiser of the loss on exactly those pairs (Newton's method); it tends to
        pi* (DPO), the least-squares IPO solution, the smoothed-label BT fit (cDPO) as pairs grow
    GSPO (grpo --ratio sequence): a response is one arm (and EOS), so its sequence ratio is the token
        ratio and its fixed point is GRPO's
    DAPO (clip-higher, dynamic sampling, token-level loss): GRPO's fixed point with the expected
        gradient taken over the kept groups only (dapo_fixed_point)
    REINFORCE++ (rloo --advantage reinforce_pp): the KL in the reward, whitened by a positive global
        scale, so pi*; its -baseline variant subtracts the group mean with the sample in it, which
        scales the reward by (k-1)/k: pi_ref exp((k-1)/k r/beta)/Z
    SimPO, ORPO (no reference model): the minimiser of each loss on the same pairs as DPO
        (simpo_optimum, orpo_optimum), which does not depend on pi_ref
    KTO: no finite fixed point on these pairs (kto_signs); the row checks the direction every arm moves

One run per row: the reference model is built once (``minirlhf pretrain`` then ``minirlhf sft`` on
the bandit task), each trainer runs through ``minirlhf.cli.main`` with a small explicit config, and
the final policy's K probabilities per prompt, pi(arm, EOS | x) renormalised over the K arms, are
compared with the target in total variation. A row passes when the largest TV over the prompts is
below its bound. How each bound follows from the run's sampling noise is in ``sampling_bound``.

Online DPO has no row: its judge (the task's gold check) prefers the higher reward with certainty,
so the loss on its pairs has no finite minimiser (beta (h_w - h_l) -> infinity on every decided
pair) and the policy it reaches depends on how long it trains, not on a fixed point.

    minirlhf verify --trainers                     the table; exit code 1 if a row fails
    minirlhf verify --trainers --only trainer/     the trainer rows alone
    minirlhf verify --trainers --only grpo dpo     these trainers (and the objective rows of those names)
"""
from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

F64 = torch.float64

# The bandit of every row: 4 arms, 3 training prompts, rewards in [0, 1], beta 0.3 (exp(r/beta) spans
# a factor e^3.3, so pi* is far from pi_ref and a doubled beta or a lost penalty is far from pi*).
N_PROMPTS = 3
TASK_ARGS = ["arms=4", f"prompts={N_PROMPTS}", "test_prompts=1", "seed=0"]
BETA = 0.3
CDPO_EPS = 0.1
PAIRS_PER_ARM_PAIR = 30
COMMON = ["--reward", "verifier", "--lora.enabled", "false", "--run.progress", "false", "--run.log-every", "1000",
          "--run.threads", "1", "--eval-prompts", "1", "--eval-every", "100000"]


# ----------------------------------------------------------------------------
# exact targets (plain torch, float64; none of them calls minirlhf.objectives or a trainer)


def kl_regularised_optimum(ref_logp: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """argmax_pi E_pi[r] - beta KL(pi || pi_ref) = pi_ref exp(r/beta) / Z, over the K arms.

    PPO, TRPO and RLOO put -beta (log pi - log pi_ref) into the reward of every token; summed over
    the response that is -beta log pi(y)/pi_ref(y), whose expected policy gradient is the gradient of
    E_pi[r] - beta KL(pi || pi_ref), zero exactly at this Gibbs policy."""
    return torch.softmax(ref_logp.to(F64) + r.to(F64) / beta, 0)


def _compositions(n: int, k: int):
    """Every (c_1..c_k) of non-negative integers summing to n."""
    for cuts in itertools.combinations(range(n + k - 1), k - 1):
        prev, out = -1, []
        for c in cuts:
            out.append(c - prev - 1)
            prev = c
        out.append(n + k - 1 - prev - 1)
        yield out


@functools.lru_cache(maxsize=8)
def _group_counts(G: int, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every multinomial count vector of a group, (M,K), and log(G!/prod n_a!), (M,)."""
    counts = torch.tensor(list(_compositions(G, K)), dtype=F64)  # (M,K)
    log_coef = math.lgamma(G + 1) - torch.lgamma(counts + 1).sum(1)  # (M,)
    return counts, log_coef


def grpo_expected_advantage(pi: torch.Tensor, r: torch.Tensor, G: int, scale: bool = True,
                            eps: float = 1e-6) -> torch.Tensor:
    """c_a = E[(1/G) sum_{i: a_i = a} A_i] over a group a_1..a_G ~ pi, A_i = (r_i - mean)/(std + eps),
    std the sample standard deviation (G - 1) as torch.std; scale=False leaves out the division.

    Enumerated over the multinomial counts n of a group: P(n) = G!/prod n_a! prod pi_a^n_a. The
    expected on-policy policy gradient of GRPO's surrogate on softmax logits theta is
    E[(1/G) sum_i A_i (e_{a_i} - pi)] = c, because sum_i A_i = 0."""
    n, log_coef = _group_counts(G, pi.numel())  # (M,K), (M,)
    rs = r.to(F64)
    prob = torch.exp(log_coef + (n * torch.log(pi.to(F64))).nan_to_num(0.0).sum(1))  # (M,)
    mean = (n * rs).sum(1, keepdim=True) / G  # (M,1)
    adv = rs[None, :] - mean  # (M,K): the advantage of a sample of arm a in group m
    if scale:
        std = torch.sqrt((n * adv**2).sum(1, keepdim=True) / (G - 1))  # (M,1)
        adv = adv / (std + eps)
    return (prob[:, None] * n * adv).sum(0) / G


def grpo_fixed_point(ref_logp: torch.Tensor, r: torch.Tensor, beta: float, G: int, scale: bool = True,
                     iters: int = 3000, lr: float = 0.5) -> torch.Tensor:
    """The zero of GRPO's expected gradient on softmax logits: the surrogate's -c(pi) (above) plus
    beta times the k3 term's expected gradient, which is grad KL(pi_ref || pi) = pi - pi_ref
    (Shao et al. 2024, eq. 4; the row grpo/k3-grad-is-reverse-kl):

        beta (pi - pi_ref) = c(pi)

    Found by following the expected gradient flow from pi_ref until the residual is below 1e-12.
    (Both terms carry the same 1/|o| of the sequence mean, so it does not move the zero.)"""
    ref = torch.softmax(ref_logp.to(F64), 0)
    theta = torch.log(ref).clone()
    for _ in range(iters):
        pi = torch.softmax(theta, 0)
        grad = beta * (pi - ref) - grpo_expected_advantage(pi, r, G, scale)
        if grad.abs().max().item() < 1e-12:
            break
        theta = theta - lr * grad / beta
    pi = torch.softmax(theta, 0)
    residual = (beta * (pi - ref) - grpo_expected_advantage(pi, r, G, scale)).abs().max().item()
    if residual > 1e-9:
        raise RuntimeError(f"grpo_fixed_point: the gradient flow did not converge (residual {residual:.2e})")
    return pi


def _newton(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, iters: int = 100) -> torch.Tensor:
    x = x0.detach().clone().to(F64)
    for _ in range(iters):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xg), xg)
        if g.abs().max().item() < 1e-13:
            break
        H = torch.autograd.functional.hessian(f, x)
        x = x - torch.linalg.pinv(H, hermitian=True) @ g
    return x


def preference_optimum(ref_logp: torch.Tensor, wins: torch.Tensor, beta: float, loss: str,
                       eps: float = 0.0) -> torch.Tensor:
    """The policy over the K arms that minimises a preference loss on given pairs.

    wins[a, b] = how many rows have arm a chosen over arm b. With h_a = log pi(a)/pi_ref(a) and
    d = h_w - h_l for a row, the losses are written out from their papers:

        sigmoid  -log s(beta d)                           DPO (Rafailov et al. 2023, eq. 7)
        cdpo     -(1 - eps) log s(beta d) - eps log s(-beta d)   conservative DPO (Mitchell 2023)
        ipo      (d - 1/(2 beta))^2                        IPO (Azar et al. 2023)

    Each is convex in h and fixes h up to a constant when every pair of arms is compared, so
    Newton's method finds the minimiser, and pi = pi_ref exp(h) / Z."""
    W = wins.to(F64)

    def total(h: torch.Tensor) -> torch.Tensor:
        d = h[:, None] - h[None, :]  # d[a, b] = h_a - h_b, a chosen over b
        if loss == "ipo":
            per = (d - 1.0 / (2.0 * beta)) ** 2
        else:
            e = eps if loss == "cdpo" else 0.0
            per = -(1.0 - e) * torch.nn.functional.logsigmoid(beta * d) - e * torch.nn.functional.logsigmoid(-beta * d)
        return (W * per).sum()

    h = _newton(total, torch.zeros(W.shape[0], dtype=F64))
    return torch.softmax(ref_logp.to(F64) + h, 0)


def bt_population_optimum(ref_logp: torch.Tensor, r: torch.Tensor, beta: float, loss: str,
                          eps: float = 0.0) -> torch.Tensor:
    """The same minimiser for infinitely many pairs per pair of arms, labelled by Bradley-Terry:
    wins[a, b] proportional to s(r_a - r_b). For DPO it is pi* = pi_ref exp(r/beta)/Z."""
    p = torch.sigmoid(r.to(F64)[:, None] - r.to(F64)[None, :])
    p = p * (1 - torch.eye(len(r), dtype=F64))
    return preference_optimum(ref_logp, p, beta, loss, eps)


def _wins(task, prompt) -> torch.Tensor:
    """wins[a, b] = rows of preference_rows(task) with arm a chosen over arm b at this prompt, (K,K)."""
    K = len(task.arms)
    wins = torch.zeros(K, K, dtype=F64)
    for row in preference_rows(task):
        if row["prompt"] == prompt:
            wins[task.arms.index(row["chosen"]), task.arms.index(row["rejected"])] += 1
    return wins


def _minimise(total: Callable[[torch.Tensor], torch.Tensor], K: int, what: str) -> torch.Tensor:
    """Newton's method from 0 on a loss of K logits, which must end at a zero of the gradient (< 1e-9):
    a minimiser at infinity (a loss that keeps falling along a direction) raises instead."""
    x = _newton(total, torch.zeros(K, dtype=F64))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(total(xg), xg)
    if not torch.isfinite(x).all() or g.abs().max().item() > 1e-9:
        raise RuntimeError(f"{what}: no finite minimiser found (gradient {g.abs().max().item():.2e})")
    return x


def simpo_optimum(wins: torch.Tensor, beta: float, gamma: float, length: int) -> torch.Tensor:
    """The policy over the K responses that minimises SimPO's loss on given pairs (Meng et al. 2024):

        sum over rows  -log s( beta/|y| (h_w - h_l) - gamma ),    h_a = log pi(a, EOS | x)

    with |y| the response's token count as the trainer counts it (the arm and EOS: 2). There is no
    reference: the loss depends on differences of h only, so it fixes the K responses' ratios
    (the policy renormalised over them), whatever pi_ref is. Per pair of arms with n_ab rows a > b
    and n_ba rows b > a, n_ab (-log s(beta d/|y| - gamma)) + n_ba (-log s(-beta d/|y| - gamma)) is convex
    and tends to +infinity both ways when n_ab, n_ba > 0, so the minimiser is finite when every
    ordered pair occurs (it does on the rows' data, 30 rows per pair of arms: checked, and the Newton
    run must end with a zero gradient); gamma > 0 pushes the ratios further apart than the
    Bradley-Terry fit log(n_ab/n_ba)."""
    W = wins.to(F64)

    def total(h: torch.Tensor) -> torch.Tensor:
        d = h[:, None] - h[None, :]
        return (W * -torch.nn.functional.logsigmoid(beta / length * d - gamma)).sum()

    off = ~torch.eye(W.shape[0], dtype=torch.bool)
    if bool((W[off] == 0).any()):
        raise RuntimeError("simpo_optimum: an ordered pair of arms never occurs; the minimiser is at infinity")
    return torch.softmax(_minimise(total, W.shape[0], "simpo_optimum"), 0)


def orpo_optimum(wins: torch.Tensor, lam: float, length: int) -> torch.Tensor:
    """The policy over the K responses that minimises ORPO's loss on given pairs (Hong et al. 2024),
    with the trainer's per-token (geometric mean) probability P = exp(h / |y|), h = log pi(a, EOS | x):

        sum over rows  -h_w / |y|  +  lam * -log s( log odds(P_w) - log odds(P_l) ),  odds(P) = P / (1 - P)

    Unlike SimPO's and DPO's, this loss depends on the level of h, not only on differences: the
    feasible set is sum_a exp(h_a) <= 1 (a policy may put mass outside the K responses). We minimise
    over h = log softmax(theta) (all mass on the K responses) by Newton on theta, then check the KKT
    condition of the full problem: the gradient in h must be -mu pi with mu >= 0, i.e. the loss
    still falls when all h rise together, so leaving mass outside the K responses cannot help and the
    constrained minimiser is this one. With lam = 0 it is the chosen arms' frequencies (the MLE of the
    SFT term); the odds-ratio term moves mass from often-rejected to often-chosen arms."""
    W = wins.to(F64)

    def loss_h(h: torch.Tensor) -> torch.Tensor:
        m = h / length  # mean token log-prob, < 0
        log_odds = m - torch.log(-torch.expm1(m))
        d = log_odds[:, None] - log_odds[None, :]
        return (W * (-m[:, None] - lam * torch.nn.functional.logsigmoid(d))).sum()

    theta = _minimise(lambda t: loss_h(torch.log_softmax(t, 0)), W.shape[0], "orpo_optimum")
    h = torch.log_softmax(theta, 0).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_h(h), h)
    pi = h.detach().exp()
    mu = -g.sum().item()
    if mu <= 0 or (g + mu * pi).abs().max().item() > 1e-8:
        raise RuntimeError(f"orpo_optimum: the KKT condition fails (mu {mu:.3g}): the minimiser leaves mass "
                           f"outside the K responses")
    return pi


def kto_signs(wins: torch.Tensor, lambda_d: float = 1.0, lambda_u: float = 1.0, ref: torch.Tensor | None = None,
              beta: float = BETA) -> torch.Tensor:
    """The sign of log pi(a)/pi_ref(a) that KTO's loss drives each arm to, (K,) in {-1, 0, +1}.

    The dpo trainer's KTO on pairs makes each row's chosen arm a desirable example and its rejected arm
    an undesirable one (Ethayarajh et al. 2024). With r_a = log pi(a, EOS|x)/pi_ref(a, EOS|x), arm a
    desirable n_w(a) times and undesirable n_l(a) times, its share of the loss is
        n_w(a) lambda_D (1 - s(beta (r_a - z_0))) + n_l(a) lambda_U (1 - s(beta (z_0 - r_a)))
    whose derivative in r_a is beta s'(beta (r_a - z_0)) (lambda_U n_l(a) - lambda_D n_w(a)): its sign
    never changes (s' > 0), so there is no finite fixed point. Arms with lambda_D n_w > lambda_U n_l
    rise (r_a bounded by log 1/pi_ref(a)), the others fall to pi = 0 without limit, ever more slowly
    (s' decays like exp(beta r_a)); the reference point z_0 = max(0, mean of mismatched log-ratios)
    is detached and only shifts where on the sigmoid each arm sits (it goes to 0 as the falling arms'
    log-ratios go to -infinity). What a finite run must show is the direction: sign(r_a) =
    sign(lambda_D n_w(a) - lambda_U n_l(a)) for the falling arms (c_a < 0), and for the rising ones
    (c_a > 0) the sign of log pi_lim(a)/pi_ref(a) at the limit pi_lim: with the falling arms at 0 and
    z_0 = 0, the minimiser of sum_{c_a > 0} -c_a s(beta r_a) over the simplex of the rising arms (found
    by gradient flow from pi_ref, a zero gradient required; the loss need not be convex there). A rising arm
    can end below pi_ref when the others take its share; on the rows' data none does.

    The row checks these signs, not pi_lim: the 150-step run drives the falling arms to log-ratios near -30
    but sits 0.002 to 0.05 (TV) from pi_lim on the rising ones, whose pull s'(beta r_a) is weak; and a run
    of 100 steps has not yet lifted the weakest rising arm (c = 4 of 90 rows) above pi_ref, and fails."""
    c = lambda_d * wins.sum(1) - lambda_u * wins.sum(0)  # (K,)
    signs = torch.sign(c)
    up = c > 0
    if ref is None or int(up.sum()) < 2:
        return signs
    ref_up = ref.to(F64)[up] / ref.to(F64).sum()

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return (-c[up] * torch.sigmoid(beta * (torch.log_softmax(theta, 0) - torch.log(ref_up)))).sum()

    theta = torch.log(ref_up).clone()
    for _ in range(100000):
        x = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(x), x)
        if g.abs().max().item() < 1e-12:
            break
        theta = theta - 0.5 * g
    if g.abs().max().item() > 1e-9:
        raise RuntimeError("kto_signs: the gradient flow to the limit did not converge")
    signs[up] = torch.sign(torch.log_softmax(theta, 0) - torch.log(ref_up))
    return signs


def dapo_fixed_point(ref_logp: torch.Tensor, r: torch.Tensor, beta: float, G: int, iters: int = 3000,
                     lr: float = 0.5) -> torch.Tensor:
    """GRPO's fixed point when dynamic sampling drops the groups whose rewards are all equal (DAPO,
    Yu et al. 2025). On the bandit with distinct rewards a group is dropped iff its G samples are one
    arm, with probability sum_a pi_a^G. Dropped groups have all advantages 0, so the kept batch's
    expected surrogate gradient is c(pi) / P(kept) (c: grpo_expected_advantage); the k3 term, averaged
    over the kept samples only, has expected gradient sum_a q_a (1 - pi_ref(a)/pi(a)) (e_a - pi) with
    q_a = (pi_a - pi_a^G) / P(kept), the law of one sample of a kept group (1 - pi_ref/pi is the
    derivative of k3 in log pi, e_a - pi that of log pi(a) in the logits). The fixed point solves

        beta sum_a q_a (1 - pi_ref(a)/pi(a)) (e_a - pi) = c(pi) / P(kept)

    (without dropping, q = pi and P(kept) = 1 give grpo_fixed_point). Clip-higher does not move it:
    at the fixed point the update is on-policy (ratio 1, inside any clip); token-level aggregation
    does not either (every response has 2 tokens)."""
    ref = torch.softmax(ref_logp.to(F64), 0)
    theta = torch.log(ref).clone()

    def grad_at(pi):
        kept = 1 - (pi**G).sum()
        q = (pi - pi**G) / kept
        w = q * (1 - ref / pi)  # (K,)
        kl = w - pi * w.sum()
        return beta * kl - grpo_expected_advantage(pi, r, G) / kept

    for _ in range(iters):
        pi = torch.softmax(theta, 0)
        grad = grad_at(pi)
        if grad.abs().max().item() < 1e-12:
            break
        theta = theta - lr * grad / beta
    pi = torch.softmax(theta, 0)
    residual = grad_at(pi).abs().max().item()
    if residual > 1e-9:
        raise RuntimeError(f"dapo_fixed_point: the gradient flow did not converge (residual {residual:.2e})")
    return pi


# ----------------------------------------------------------------------------
# reading a policy


@torch.no_grad()
def arm_probs(model_dir: str | Path, task) -> dict[str, torch.Tensor]:
    """For each training prompt x: (pi(a, EOS | x) for the K arms (K,), float64, unnormalised).

    One teacher-forced forward pass per response through the model written out here:
    log pi(a, EOS | x) = log softmax(logits at the prompt's last token)[a]
                         + log softmax(logits at a)[EOS]."""
    from minirlhf.saving import load_model

    model, tokenizer, template, _ = load_model(str(model_dir), kind="gpt", device="cpu")
    model.eval()
    template = template or task.template()
    out = {}
    for prompt in task.prompts("train"):
        logps = []
        for arm in task.arms:
            ids, n_prompt = template.encode(tokenizer, prompt, arm)
            assert len(ids) == n_prompt + 2, "an arm is one token, then EOS"
            logp = torch.log_softmax(model(torch.tensor([ids])).to(F64)[0], -1)  # (T,V)
            logps.append(logp[n_prompt - 1, ids[n_prompt]] + logp[n_prompt, ids[n_prompt + 1]])
        out[prompt] = torch.stack(logps).exp()
    return out


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total variation 1/2 sum_a |p(a) - q(a)|."""
    return 0.5 * (p - q).abs().sum().item()


def sampling_bound(K: int, n: float, factor: float = 2.0) -> float:
    """A policy learned from samples cannot sit closer to its target than the samples pin it down.

    The empirical distribution of n draws from any p over K arms has
        E TV(p_hat, p) = 1/2 sum_a E|p_hat_a - p_a| <= 1/2 sum_a sqrt(p_a (1 - p_a) / n) <= 1/2 sqrt((K - 1) / n)
    (Jensen, then Cauchy-Schwarz with sum_a p_a (1 - p_a) <= 1 - 1/K). A run's final policy is shaped
    mostly by the samples of its last stretch, when the learning rate has decayed; n is the number of
    samples per prompt that the run draws in its last quarter. We allow ``factor`` times this mean:
    the remaining room is for the finite number of steps (bias) and for the largest of the prompts."""
    return factor * 0.5 * math.sqrt((K - 1) / n)


# ----------------------------------------------------------------------------
# the runs


@dataclass
class TrainerRow:
    """One trainer, its command, its exact target and the bound of its distance to it."""

    name: str
    target: str  # in words, for the table
    command: Callable[[str, str, str], list[str]]  # (policy, out, data) -> argv of `minirlhf ...`
    target_fn: Callable[[object, str, torch.Tensor], torch.Tensor]  # (task, prompt, ref probs (K,)) -> (K,)
    bound_fn: Callable[[object], float]  # task -> bound
    bound_why: str
    # (target, policy (K,), reference (K,), both unnormalised) -> the distance compared with the bound;
    # None: TV between the renormalised policy and the target
    measure: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float] | None = None


def _rl(command: str, iterations: int, *extra: str) -> Callable:
    def argv(policy: str, out: str, data: str) -> list[str]:
        return [command, "--policy", policy, "--run.out", out, *COMMON, "--iterations", str(iterations), *extra]
    return argv


def _kl_target(task, prompt, ref):
    return kl_regularised_optimum(torch.log(ref / ref.sum()), torch.tensor(task.rewards(prompt)), BETA)


def _samples_bound(iterations: int, rollouts: int):
    """Bound for a run of `iterations` x `rollouts` samples spread evenly over the training prompts."""
    def bound(task) -> float:
        per_prompt = rollouts / len(task.prompts("train"))
        return sampling_bound(len(task.arms), iterations / 4 * per_prompt)
    return bound


GRPO_G = 8
# GRPO's advantages are whitened within each group, so its surrogate pulls about 1 per sample whatever
# the reward gaps: beta 1 keeps its fixed point as far from pi_ref as pi* is for the others.
GRPO_BETA = 1.0


def _grpo_target(task, prompt, ref):
    return grpo_fixed_point(torch.log(ref / ref.sum()), torch.tensor(task.rewards(prompt)), GRPO_BETA, GRPO_G)


def _pref_target(loss: str, eps: float = 0.0):
    def target(task, prompt, ref):
        return preference_optimum(torch.log(ref / ref.sum()), _wins(task, prompt), BETA, loss, eps)
    return target


# A response is the arm and EOS: the trainer's |y| (the loss mask's token count) is 2.
RESPONSE_TOKENS = 2
SIMPO_BETA, SIMPO_GAMMA = 2.0, 0.5  # the paper's range (beta 2-2.5, gamma 0.5-1.5)
ORPO_LAMBDA = 0.5  # larger than the paper's 0.1, so the odds-ratio term moves the optimum far from the SFT fit


def _simpo_target(task, prompt, ref):
    return simpo_optimum(_wins(task, prompt), SIMPO_BETA, SIMPO_GAMMA, RESPONSE_TOKENS)


def _orpo_target(task, prompt, ref):
    return orpo_optimum(_wins(task, prompt), ORPO_LAMBDA, RESPONSE_TOKENS)


def _kto_target(task, prompt, ref):
    return kto_signs(_wins(task, prompt), ref=ref)


def _wrong_sign(signs: torch.Tensor, policy: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest log pi(a)/pi_ref(a) of the wrong sign over the arms KTO moves (0 when every arm moved
    the right way)."""
    log_ratio = torch.log(policy / ref)
    return max(0.0, (-signs * log_ratio).max().item())


def _dapo_target(task, prompt, ref):
    return dapo_fixed_point(torch.log(ref / ref.sum()), torch.tensor(task.rewards(prompt)), GRPO_BETA, DAPO_G)


def _rpp_baseline_target(task, prompt, ref):
    """REINFORCE++-baseline subtracts the mean score of the prompt's k samples, the sample's own included:
    E[(r_i - mean_j r_j) grad log pi(y_i)] = (1 - 1/k) E[r grad log pi], so the reward enters at (k-1)/k
    of its weight against the KL term: pi_ref exp((k-1)/k r/beta) / Z."""
    r = torch.tensor(task.rewards(prompt), dtype=F64) * (RLOO_K - 1) / RLOO_K
    return kl_regularised_optimum(torch.log(ref / ref.sum()), r, BETA)


def preference_rows(task) -> list[dict]:
    """The offline preference data of the DPO rows: every pair of arms of every training prompt,
    PAIRS_PER_ARM_PAIR times, labelled by Bradley-Terry on the rewards."""
    return [row for p in task.prompts("train") for row in task.preference_rows(p, PAIRS_PER_ARM_PAIR)]


def _dpo(loss_type: str, *extra: str, beta: float = BETA, steps: int = 0, lr: float = 3e-3) -> Callable:
    def argv(policy: str, out: str, data: str) -> list[str]:
        return ["dpo", "--init", policy, "--data", data, "--eval-data", "none", "--run.out", out,
                "--lora.enabled", "false", "--run.progress", "false", "--run.log-every", "1000", "--run.threads", "1",
                "--eval-prompts", "1", "--eval-every", "100000", "--eval-at-start", "false",
                "--dpo.beta", str(beta), "--dpo.loss-type", loss_type, "--steps", str(steps or DPO_STEPS),
                "--batch-size", "100000", "--optim.lr", str(lr), "--optim.warmup-steps", "0", "--optim.grad-clip", "0",
                *extra]
    return argv


DPO_STEPS = 150
SIMPO_STEPS, SIMPO_LR = 200, 6e-3  # SimPO's and ORPO's targets sit further from pi_ref than DPO's
DPO_BOUND = 0.005
_DPO_WHY = f"full batch, nothing drawn at random: the optimiser's tolerance, {DPO_BOUND}"

PPO_ITERS, PPO_BATCH = 60, 96
TRPO_ITERS, TRPO_BATCH, TRPO_DELTA = 80, 96, 0.0005
RLOO_ITERS, RLOO_PROMPTS, RLOO_K = 160, 12, 8
GRPO_ITERS, GRPO_PROMPTS = 100, 12
GSPO_ITERS = 300
DAPO_G, DAPO_PROMPTS = 4, 24  # groups of 4: a group of one arm (dropped) is likely enough to move the fixed point

_PPO_ARGS = ("--kl.adaptive", "false", "--kl.coef", str(BETA), "--critic-init", "policy",
             "--batch-size", str(PPO_BATCH), "--minibatch-size", "32", "--optim.min-lr-ratio", "0.02")


def _sampling_why(iterations: int, rollouts: int) -> str:
    n = iterations / 4 * rollouts / N_PROMPTS
    return f"2 x 1/2 sqrt((K-1)/n), n = {n:g} ({iterations}/4 iterations x {rollouts} samples / {N_PROMPTS} prompts)"


ROWS: list[TrainerRow] = [
    TrainerRow("trainer/ppo", "pi_ref exp(r/beta)/Z", _rl("ppo", PPO_ITERS, *_PPO_ARGS), _kl_target,
               _samples_bound(PPO_ITERS, PPO_BATCH), _sampling_why(PPO_ITERS, PPO_BATCH)),
    TrainerRow("trainer/ppo-critic-free", "pi_ref exp(r/beta)/Z",
               _rl("ppo", PPO_ITERS, *_PPO_ARGS, "--advantage", "batch_norm"), _kl_target,
               _samples_bound(PPO_ITERS, PPO_BATCH), _sampling_why(PPO_ITERS, PPO_BATCH)),
    TrainerRow("trainer/trpo", "pi_ref exp(r/beta)/Z",
               _rl("trpo", TRPO_ITERS, "--kl.adaptive", "false", "--kl.coef", str(BETA), "--critic-init",
                   "policy", "--batch-size", str(TRPO_BATCH), "--max-kl", str(TRPO_DELTA)), _kl_target,
               _samples_bound(TRPO_ITERS, TRPO_BATCH), _sampling_why(TRPO_ITERS, TRPO_BATCH)),
    TrainerRow("trainer/rloo", "pi_ref exp(r/beta)/Z",
               _rl("rloo", RLOO_ITERS, "--beta", str(BETA), "--prompts-per-iteration", str(RLOO_PROMPTS),
                   "--k", str(RLOO_K), "--optim.schedule", "cosine", "--optim.min-lr-ratio", "0.02"), _kl_target,
               _samples_bound(RLOO_ITERS, RLOO_PROMPTS * RLOO_K), _sampling_why(RLOO_ITERS, RLOO_PROMPTS * RLOO_K)),
    TrainerRow("trainer/grpo", "zero of E[grad]: beta (pi - pi_ref) = E[A 1{a}]",
               _rl("grpo", GRPO_ITERS, "--beta", str(GRPO_BETA), "--prompts-per-iteration", str(GRPO_PROMPTS),
                   "--group-size", str(GRPO_G), "--minibatch-size", str(GRPO_PROMPTS * GRPO_G // 3),
                   "--optim.schedule", "cosine", "--optim.lr", "3e-3", "--optim.min-lr-ratio", "0.02"), _grpo_target,
               _samples_bound(GRPO_ITERS, GRPO_PROMPTS * GRPO_G), _sampling_why(GRPO_ITERS, GRPO_PROMPTS * GRPO_G)),
    # GSPO: one minibatch per batch, so every update is on-policy (s_i = 1, inside its clip) and the
    # sequence ratio's gradient is the token ratio's; three times GRPO's iterations for GRPO's step count.
    # (With GRPO's three minibatches per batch and GSPO's clip 3e-4/4e-4 the later minibatches are off-policy
    # by more than the clip and the run lands 0.24 from this target; with a wide clip, 0.02.)
    TrainerRow("trainer/gspo", "GRPO's zero of E[grad] (1 token: seq ratio = token ratio)",
               _rl("grpo", GSPO_ITERS, "--beta", str(GRPO_BETA), "--prompts-per-iteration", str(GRPO_PROMPTS),
                   "--group-size", str(GRPO_G), "--minibatch-size", str(GRPO_PROMPTS * GRPO_G),
                   "--ratio", "sequence", "--optim.schedule", "cosine", "--optim.lr", "3e-3",
                   "--optim.min-lr-ratio", "0.02"), _grpo_target,
               _samples_bound(GSPO_ITERS, GRPO_PROMPTS * GRPO_G), _sampling_why(GSPO_ITERS, GRPO_PROMPTS * GRPO_G)),
    TrainerRow("trainer/dapo", f"zero of E[grad | group kept], G={DAPO_G}",
               _rl("grpo", GRPO_ITERS, "--beta", str(GRPO_BETA), "--prompts-per-iteration", str(DAPO_PROMPTS),
                   "--group-size", str(DAPO_G), "--minibatch-size", str(DAPO_PROMPTS * DAPO_G // 3),
                   "--clip-eps-high", "0.28", "--dynamic-sampling", "true", "--loss-agg", "token_mean",
                   "--optim.schedule", "cosine", "--optim.lr", "3e-3", "--optim.min-lr-ratio", "0.02"), _dapo_target,
               _samples_bound(GRPO_ITERS, DAPO_PROMPTS * DAPO_G), _sampling_why(GRPO_ITERS, DAPO_PROMPTS * DAPO_G)),
    TrainerRow("trainer/reinforce_pp", "pi_ref exp(r/beta)/Z",
               _rl("rloo", RLOO_ITERS, "--beta", str(BETA), "--prompts-per-iteration", str(RLOO_PROMPTS),
                   "--k", str(RLOO_K), "--advantage", "reinforce_pp", "--optim.schedule", "cosine",
                   "--optim.min-lr-ratio", "0.02"), _kl_target,
               _samples_bound(RLOO_ITERS, RLOO_PROMPTS * RLOO_K), _sampling_why(RLOO_ITERS, RLOO_PROMPTS * RLOO_K)),
    TrainerRow("trainer/reinforce_pp_baseline", f"pi_ref exp((k-1)/k r/beta)/Z, k={RLOO_K}",
               _rl("rloo", RLOO_ITERS, "--beta", str(BETA), "--prompts-per-iteration", str(RLOO_PROMPTS),
                   "--k", str(RLOO_K), "--advantage", "reinforce_pp_baseline", "--optim.schedule", "cosine",
                   "--optim.min-lr-ratio", "0.02"), _rpp_baseline_target,
               _samples_bound(RLOO_ITERS, RLOO_PROMPTS * RLOO_K), _sampling_why(RLOO_ITERS, RLOO_PROMPTS * RLOO_K)),
    TrainerRow("trainer/dpo", "argmin of the DPO loss on the pairs", _dpo("sigmoid"), _pref_target("sigmoid"),
               lambda task: DPO_BOUND, _DPO_WHY),
    TrainerRow("trainer/ipo", "argmin of the IPO loss on the pairs", _dpo("ipo"), _pref_target("ipo"),
               lambda task: DPO_BOUND, _DPO_WHY),
    TrainerRow("trainer/cdpo", f"argmin of the cDPO loss (eps {CDPO_EPS})",
               _dpo("sigmoid", "--dpo.label-smoothing", str(CDPO_EPS)), _pref_target("cdpo", CDPO_EPS),
               lambda task: DPO_BOUND, _DPO_WHY),
    TrainerRow("trainer/simpo", f"argmin of the SimPO loss (beta {SIMPO_BETA}, gamma {SIMPO_GAMMA}, |y| 2)",
               _dpo("simpo", "--dpo.simpo-gamma", str(SIMPO_GAMMA), beta=SIMPO_BETA, steps=SIMPO_STEPS, lr=SIMPO_LR), _simpo_target,
               lambda task: DPO_BOUND, _DPO_WHY),
    TrainerRow("trainer/orpo", f"argmin of the ORPO loss (lambda {ORPO_LAMBDA}, |y| 2)",
               _dpo("orpo", "--dpo.orpo-lambda", str(ORPO_LAMBDA), steps=SIMPO_STEPS, lr=SIMPO_LR), _orpo_target,
               lambda task: DPO_BOUND, _DPO_WHY),
    TrainerRow("trainer/kto", "sign(log pi/pi_ref) as at its limit (kto_signs)", _dpo("kto"), _kto_target,
               lambda task: 0.0, "no finite fixed point (kto_signs): the largest log pi/pi_ref of the wrong sign, 0",
               measure=_wrong_sign),
]


def _quiet_main(argv: list[str]) -> None:
    """Run `minirlhf <argv>` in this process, its console output swallowed (the run folder keeps the log)."""
    from minirlhf.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(argv)


def build_reference(out: str | Path, pretrain_steps: int = 400, sft_steps: int = 100) -> Path:
    """The reference policy of every row: `minirlhf pretrain` then `minirlhf sft` on the bandit task
    (a one-layer GPT, a few seconds). Returns the SFT model folder; reused when it already exists."""
    out = Path(out)
    sft_model = out / "sft" / "model"
    if (sft_model / "config.json").exists():
        return sft_model
    _quiet_main(["pretrain", "--task.name", "bandit", "--task.args", *TASK_ARGS, "--run.out", str(out / "pretrain"),
                 "--run.progress", "false", "--run.threads", "1", "--steps", str(pretrain_steps), "--batch-size", "32",
                 "--model.n-layer", "1", "--model.n-head", "2", "--model.n-embd", "32", "--eval-every",
                 str(pretrain_steps), "--optim.warmup-steps", "10"])
    _quiet_main(["sft", "--init", str(out / "pretrain" / "model"), "--run.out", str(out / "sft"), "--run.progress",
                 "false", "--run.threads", "1", "--steps", str(sft_steps), "--batch-size", "32", "--eval-every",
                 str(sft_steps), "--samples", "0", "--eval-prompts", "1"])
    return sft_model


@dataclass
class TrainerResult:
    name: str
    target: str
    tv: float  # the largest over the training prompts
    bound: float
    passed: bool
    seconds: float
    per_prompt: dict = field(default_factory=dict)  # prompt -> {"policy", "target", "tv", "leak"}
    bound_why: str = ""
    message: str = ""


def run_trainer_row(row: TrainerRow, reference: str | Path, workdir: str | Path) -> TrainerResult:
    """Run one trainer through its command and compare its final policy with the exact target."""
    from minirlhf.data import write_jsonl
    from minirlhf.tasks import get_task
    from minirlhf.tasks import parse_task_args

    task = get_task("bandit", **parse_task_args(TASK_ARGS))
    workdir = Path(workdir)
    out = workdir / row.name.split("/")[-1]
    data = workdir / "pairs.jsonl"
    if not data.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        write_jsonl(data, preference_rows(task))
    t0 = time.perf_counter()
    bound = row.bound_fn(task)
    try:
        threads = torch.get_num_threads()
        try:
            _quiet_main(row.command(str(reference), str(out), str(data)))
        finally:
            torch.set_num_threads(threads)
        ref = arm_probs(reference, task)
        pol = arm_probs(out / "model", task)
        per_prompt = {}
        for prompt in task.prompts("train"):
            target = row.target_fn(task, prompt, ref[prompt])
            p = pol[prompt]
            dist = tv(p / p.sum(), target) if row.measure is None else row.measure(target, p, ref[prompt])
            per_prompt[prompt] = {"policy": (p / p.sum()).tolist(), "target": target.tolist(),
                                  "tv": dist, "leak": 1.0 - p.sum().item()}
        worst = max(v["tv"] for v in per_prompt.values())
        return TrainerResult(row.name, row.target, worst, bound, worst <= bound, time.perf_counter() - t0,
                             per_prompt, row.bound_why)
    except Exception as e:  # noqa: BLE001 - a crashed trainer is a failed row
        return TrainerResult(row.name, row.target, math.nan, bound, False, time.perf_counter() - t0,
                             bound_why=row.bound_why, message=f"{type(e).__name__}: {e}")


def select_rows(only=None) -> list[TrainerRow]:
    patterns = [p for p in (only or []) if p]
    if not patterns:
        return list(ROWS)
    chosen = [r for r in ROWS if any(p in r.name for p in patterns)]
    if not chosen:
        raise ValueError(f"only: no trainer row matches {patterns}; rows: {', '.join(r.name for r in ROWS)}")
    return chosen


def run_trainer_checks(workdir: str | Path, only=None) -> list[TrainerResult]:
    """Build the reference (once per workdir) and run the selected rows."""
    reference = build_reference(Path(workdir) / "reference")
    return [run_trainer_row(row, reference, workdir) for row in select_rows(only)]


def _max_leak(r: TrainerResult) -> float:
    return max((v["leak"] for v in r.per_prompt.values()), default=math.nan)


def format_trainer_table(results: list[TrainerResult]) -> str:
    width = max([len(r.name) for r in results] + [7])
    twidth = max([len(r.target) for r in results] + [6])
    head = f"{'trainer':<{width}}  {'target':<{twidth}}  {'TV (max)':>9}  {'bound':>7}  pass  {'time':>6}  {'off-K':>6}"
    lines = [f"# Trainers run whole on the bandit task ({', '.join(TASK_ARGS)}, beta {BETA}): "
             f"TV(final policy, exact target), largest over the prompts", head, "-" * len(head)]
    for r in results:
        shown = "nan" if math.isnan(r.tv) else f"{r.tv:.4f}"
        lines.append(f"{r.name:<{width}}  {r.target:<{twidth}}  {shown:>9}  {r.bound:>7.4f}  "
                     f"{'PASS' if r.passed else 'FAIL'}  {r.seconds:>5.1f}s  {_max_leak(r):>6.3f}")
        if r.message:
            lines.append(f"{'':<{width}}  ^ raised {r.message}")
    n_fail = sum(not r.passed for r in results)
    lines.append("-" * len(head))
    lines.append(f"{len(results) - n_fail}/{len(results)} trainers pass"
                 + (f", {n_fail} FAIL: " + ", ".join(r.name for r in results if not r.passed) if n_fail else ""))
    lines.append("off-K: the largest probability mass the final policy puts outside the K responses (an arm then EOS);")
    lines.append("       TV compares the policy renormalised over the K responses (DPO's losses only fix ratios)")
    lines.append("bounds (n: samples per prompt in the run's last quarter):")
    lines += [f"  {r.name:<{width}}  {r.bound_why}" for r in results if r.bound_why]
    return "\n".join(lines)


def results_json(results: list[TrainerResult]) -> list[dict]:
    from dataclasses import asdict

    return json.loads(json.dumps([asdict(r) for r in results], default=float).replace("NaN", "null"))
