"""Every trainer, run whole through its command on the bandit task, reaches the exact optimum of its
objective (minirlhf.verify_trainers; the same runs are the rows of `minirlhf verify --trainers`).

The targets are enumerations over the K arms (checked first, against closed forms worked by hand);
each trainer test runs `minirlhf <trainer> ...` through minirlhf.cli.main, reads the final policy's
K probabilities per prompt and asserts TV(policy, target) <= the row's bound, which comes from the
run's sampling noise (verify_trainers.sampling_bound): for K = 4 arms and n samples per prompt in the
run's last quarter, 2 x 1/2 sqrt(3/n), i.e. 0.079 for PPO (n = 480), 0.069 for TRPO (n = 640),
0.048 for RLOO (n = 1280), 0.061 for GRPO (n = 800); the full-batch DPO runs draw nothing at random,
so their bound is the optimiser's tolerance, 0.005 (SimPO and ORPO too, against the minimisers of their
own losses, which have no reference model; KTO has no finite fixed point on these pairs, so its row checks
the sign of every arm's log-ratio). Each test can fail: the targets sit far from
the reference policy (test_targets_are_far_from_the_reference), so a trainer that ignores the reward,
doubles beta, flips the KL's sign or measures the KL against itself lands outside the bound.
"""
import itertools
import math

import pytest
import torch

from minirlhf import verify_trainers as T
from minirlhf.tasks import get_task
from minirlhf.tasks import parse_task_args

F64 = torch.float64


# ---------------------------------------------------------------- the targets against hand-worked answers

def test_kl_regularised_optimum_by_hand():
    # pi_ref (1/2, 1/4, 1/4), r = (0, beta log 2, 0): pi* proportional to (1/2, 1/2, 1/4) -> (0.4, 0.4, 0.2)
    beta = 0.3
    ref = torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=F64))
    pi = T.kl_regularised_optimum(ref, torch.tensor([0.0, beta * math.log(2), 0.0], dtype=F64), beta)
    assert torch.allclose(pi, torch.tensor([0.4, 0.4, 0.2], dtype=F64), atol=1e-15)


def test_grpo_expected_advantage_matches_brute_force_over_every_group():
    # every one of the K^G ordered groups, with group advantages written out from Shao et al. (2024)
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    r = torch.tensor([1.0, 0.2, 0.5], dtype=F64)
    G, K = 4, 3
    c = torch.zeros(K, dtype=F64)
    for group in itertools.product(range(K), repeat=G):
        p = math.prod(pi[a].item() for a in group)
        rs = [r[a].item() for a in group]
        mean = sum(rs) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in rs) / (G - 1))
        for a, x in zip(group, rs):
            c[a] += p * (x - mean) / (std + 1e-6) / G
    assert torch.allclose(T.grpo_expected_advantage(pi, r, G), c, atol=1e-12)


def test_grpo_fixed_point_without_std_scaling_is_the_reverse_kl_optimum_by_hand():
    # scale_rewards=False: c = (1 - 1/G) pi (r - E_pi r), so the fixed point solves the reverse-KL problem
    # with beta' = beta G/(G-1). r = (1,0,0,0), pi_ref uniform, beta' = 1: pi = (1/2, 1/6, 1/6, 1/6)
    # (worked by hand in the verify row bandit/grpo-k3-by-hand).
    G = 8
    pi = T.grpo_fixed_point(torch.zeros(4, dtype=F64), torch.tensor([1.0, 0, 0, 0], dtype=F64), (G - 1) / G, G,
                            scale=False)
    assert torch.allclose(pi, torch.tensor([1 / 2, 1 / 6, 1 / 6, 1 / 6], dtype=F64), atol=1e-10)


def test_dpo_population_optimum_is_pi_star():
    ref = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64))
    r = torch.tensor([0.9, 0.1, 0.5, 0.3], dtype=F64)
    pi = T.bt_population_optimum(ref, r, 0.3, "sigmoid")
    assert torch.allclose(pi, T.kl_regularised_optimum(ref, r, 0.3), atol=1e-10)


def test_ipo_optimum_is_the_least_squares_solution_by_hand():
    # each unordered pair {a,b}, n_ab + n_ba rows: the loss is (h_a - h_b - y_ab)^2 summed, y_ab = tau (2 p_ab - 1),
    # tau = 1/(2 beta); with every pair seen equally often, h_a = (1/K) sum_b y_ab.
    wins = torch.tensor([[0, 3, 1], [1, 0, 2], [3, 2, 0]], dtype=F64)  # 4 rows per pair
    beta = 0.5
    p = wins / (wins + wins.T + torch.eye(3, dtype=F64))
    y = (1 / (2 * beta)) * (2 * p - 1) * (1 - torch.eye(3, dtype=F64))
    h = y.sum(1) / 3
    ref = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=F64))
    assert torch.allclose(T.preference_optimum(ref, wins, beta, "ipo"), torch.softmax(ref + h, 0), atol=1e-10)


def test_cdpo_optimum_solves_the_smoothed_label_equations():
    # two arms: -(1-eps) log s(beta d) - eps log s(-beta d) per row, n_ab rows a>b and n_ba rows b>a;
    # the minimiser has s(beta d) = ((1-eps) n_ab + eps n_ba) / (n_ab + n_ba).
    wins = torch.tensor([[0, 7], [3, 0]], dtype=F64)
    beta, eps = 0.3, 0.1
    q = ((1 - eps) * 7 + eps * 3) / 10
    d = math.log(q / (1 - q)) / beta
    pi = T.preference_optimum(torch.zeros(2, dtype=F64), wins, beta, "cdpo", eps)
    assert math.log(pi[0] / pi[1]) == pytest.approx(d, abs=1e-9)


def test_simpo_optimum_solves_the_two_arm_equations():
    # two arms, n_ab rows a > b, n_ba rows b > a, x = beta d / |y|: the gradient is zero where
    # n_ab s(gamma - x) = n_ba s(gamma + x); with gamma = 0 that is x = log(n_ab / n_ba).
    wins = torch.tensor([[0, 7], [3, 0]], dtype=F64)
    pi = T.simpo_optimum(wins, 2.0, 0.0, 2)
    assert 2.0 / 2 * math.log(pi[0] / pi[1]) == pytest.approx(math.log(7 / 3), abs=1e-9)
    pi = T.simpo_optimum(wins, 2.0, 0.5, 2)
    x = 2.0 / 2 * math.log(pi[0] / pi[1])
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert 7 * s(0.5 - x) == pytest.approx(3 * s(0.5 + x), abs=1e-9) and x > math.log(7 / 3)
    with pytest.raises(RuntimeError, match="infinity"):
        T.simpo_optimum(torch.tensor([[0, 5], [0, 0]], dtype=F64), 2.0, 0.5, 2)  # a is always chosen


def test_orpo_optimum_without_the_odds_term_is_the_chosen_frequencies():
    wins = torch.tensor([[0, 3, 1], [1, 0, 2], [3, 2, 0]], dtype=F64)
    chosen = wins.sum(1) / wins.sum()
    assert torch.allclose(T.orpo_optimum(wins, 0.0, 2), chosen, atol=1e-9)
    pi = T.orpo_optimum(wins, 0.5, 2)  # the odds-ratio term takes mass from the arm rejected most (arm 0: 4 of 12)
    assert pi[0] < chosen[0] and abs(pi.sum().item() - 1) < 1e-12


def test_kto_signs_follow_desirable_minus_undesirable_counts():
    wins = torch.tensor([[0, 3, 1], [1, 0, 2], [3, 1, 0]], dtype=F64)  # chosen 4, 3, 4; rejected 4, 4, 3
    assert T.kto_signs(wins).tolist() == [0.0, -1.0, 1.0]
    assert T.kto_signs(wins, lambda_d=2.0).tolist() == [1.0, 1.0, 1.0]
    # with pi_ref: the rising arms share the simplex at the limit, and a rising arm that pi_ref already
    # favours (arm 1, pi_ref 0.8, c = 7 against arm 0's 11) ends below pi_ref
    wins = torch.tensor([[0, 10, 10], [9, 0, 9], [0, 1, 0]], dtype=F64)
    assert T.kto_signs(wins).tolist() == [1.0, 1.0, -1.0]
    assert T.kto_signs(wins, ref=torch.tensor([0.1, 0.8, 0.1], dtype=F64), beta=0.3).tolist() == [1.0, -1.0, -1.0]


def test_dapo_fixed_point_zeroes_the_brute_force_gradient_over_kept_groups():
    # every ordered group of G samples; groups of one arm dropped; per sample the surrogate's gradient on the
    # logits, -A_i (e_a - pi), and the k3 term's, beta (1 - pi_ref(a)/pi(a)) (e_a - pi); the kept batch's mean
    ref = torch.tensor([0.4, 0.35, 0.25], dtype=F64)
    r = torch.tensor([1.0, 0.2, 0.5], dtype=F64)
    G, beta, K = 3, 1.0, 3
    pi = T.dapo_fixed_point(torch.log(ref), r, beta, G)
    grad, kept = torch.zeros(K, dtype=F64), 0.0
    for group in itertools.product(range(K), repeat=G):
        if len(set(group)) == 1:
            continue
        p = math.prod(pi[a].item() for a in group)
        rs = torch.tensor([r[a].item() for a in group], dtype=F64)
        adv = (rs - rs.mean()) / (rs.std() + 1e-6)
        for a, A in zip(group, adv):
            e = torch.zeros(K, dtype=F64)
            e[a] = 1
            grad += p * (-A + beta * (1 - ref[a] / pi[a])) * (e - pi) / G
        kept += p
    assert grad.abs().max().item() / kept < 1e-9
    assert T.tv(pi, T.grpo_fixed_point(torch.log(ref), r, beta, G)) > 0.01  # dropping groups moves it


def test_sampling_bound():
    assert T.sampling_bound(4, 480) == pytest.approx(2 * 0.5 * math.sqrt(3 / 480))


# ---------------------------------------------------------------- the trainers

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("bandit")
    T.build_reference(work / "reference")
    return work


def test_targets_are_far_from_the_reference(workdir):
    """A trainer that learns nothing, or the wrong thing by a factor of two in beta, fails every row."""
    task = get_task("bandit", **parse_task_args(T.TASK_ARGS))
    ref = T.arm_probs(workdir / "reference" / "sft" / "model", task)
    uniform = torch.full((len(task.arms),), 1 / len(task.arms), dtype=F64)
    assert max(T.tv(ref[p] / ref[p].sum(), uniform) for p in ref) > 0.3  # the reference is clearly not uniform
    for row in T.ROWS:
        if row.measure is not None:  # kto: the signs of the arms' log-ratios; every arm must move
            assert all((row.target_fn(task, p, ref[p]) != 0).all() for p in ref), row.name
            continue
        bound = row.bound_fn(task)
        far = max(T.tv(row.target_fn(task, p, ref[p]), ref[p] / ref[p].sum()) for p in ref)
        assert far > 3 * bound, row.name


@pytest.mark.parametrize("row", T.ROWS, ids=[r.name.split("/")[-1] for r in T.ROWS])
def test_trainer_reaches_its_exact_optimum(workdir, row):
    result = T.run_trainer_row(row, workdir / "reference" / "sft" / "model", workdir)
    detail = "\n".join(f"  {p}: policy {[round(x, 3) for x in v['policy']]} target "
                       f"{[round(x, 3) for x in v['target']]} TV {v['tv']:.4f}" for p, v in result.per_prompt.items())
    assert not result.message, result.message
    assert result.passed, f"{row.name}: TV {result.tv:.4f} > bound {result.bound:.4f} ({row.bound_why})\n{detail}"
