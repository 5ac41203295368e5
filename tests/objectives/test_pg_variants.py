"""GSPO, DAPO (clip-higher, dynamic sampling, overlong shaping) and REINFORCE++ against closed forms,
exhaustive tables and an enumerable policy."""

import itertools
import math
import statistics

import pytest
import torch

from minirlhf.objectives import (
    group_advantages,
    gspo_policy_loss,
    gspo_sequence_ratio,
    gspo_token_ratio,
    nonconstant_groups,
    overlong_penalty,
    ppo_policy_loss,
    reinforce_pp_advantages,
)

F64 = torch.float64


# ----------------------------------------------------------------------------- GSPO


def test_gspo_ratio_is_the_token_ratio_for_one_token_and_the_geometric_mean_otherwise():
    logp = torch.tensor([[-0.5, 9.0, 9.0], [-1.0, -2.0, -0.5]], dtype=F64)
    old = torch.tensor([[-1.2, 0.0, 0.0], [-1.5, -1.0, -0.75]], dtype=F64)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    s = gspo_sequence_ratio(logp, old, mask)
    assert s[0].item() == pytest.approx(math.exp(-0.5 + 1.2), abs=1e-15)  # one token: the token ratio
    seq_ratio = math.exp((-3.5) - (-3.25))  # pi(y)/pi_old(y)
    assert s[1].item() == pytest.approx(seq_ratio ** (1 / 3), abs=1e-15)
    with pytest.raises(ValueError, match="at least one valid token"):
        gspo_sequence_ratio(logp, old, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def _sequences():
    """Every sequence of a 2-step policy over tokens {0, 1, 2} where token 0 is EOS: 7 sequences,
    as (B=7, T=2) tokens and mask."""
    seqs = [(0,)] + [(a, b) for a in (1, 2) for b in range(3)]
    tokens = torch.tensor([s + (0,) * (2 - len(s)) for s in seqs])  # (7,2)
    mask = torch.tensor([[1] * len(s) + [0] * (2 - len(s)) for s in seqs])  # (7,2)
    return seqs, tokens, mask


def _token_logps(theta1, theta2, tokens):
    lp1, lp2 = torch.log_softmax(theta1, 0), torch.log_softmax(theta2, 1)  # (3,), (3,3)
    return torch.stack([lp1[tokens[:, 0]], lp2[tokens[:, 0], tokens[:, 1]]], 1)  # (7,2)


def test_gspo_gradient_against_the_written_out_objective_on_an_enumerable_policy():
    g = torch.Generator().manual_seed(3)
    seqs, tokens, mask = _sequences()
    theta1_old, theta2_old = torch.randn(3, generator=g, dtype=F64), torch.randn(3, 3, generator=g, dtype=F64)
    theta1 = (theta1_old + 0.4 * torch.randn(3, generator=g, dtype=F64)).requires_grad_(True)
    theta2 = (theta2_old + 0.4 * torch.randn(3, 3, generator=g, dtype=F64)).requires_grad_(True)
    A = torch.randn(7, generator=g, dtype=F64)
    lo, hi = 0.1, 0.15

    loss, stats = gspo_policy_loss(_token_logps(theta1, theta2, tokens), _token_logps(theta1_old, theta2_old, tokens),
                                   A, mask, lo, hi)
    got = torch.autograd.grad(loss, (theta1, theta2))

    # written out from sequence probabilities: s_i = (pi(y_i)/pi_old(y_i))^(1/|y_i|)
    def seq_prob(t1, t2, s):
        p1, p2 = torch.softmax(t1, 0), torch.softmax(t2, 1)
        return p1[s[0]] if len(s) == 1 else p1[s[0]] * p2[s[0], s[1]]

    s = torch.stack([(seq_prob(theta1, theta2, y) / seq_prob(theta1_old, theta2_old, y)) ** (1 / len(y)) for y in seqs])
    J = torch.minimum(s * A, torch.clamp(s, 1 - lo, 1 + hi) * A).mean()
    want = torch.autograd.grad(-J, (theta1, theta2))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-14)
    assert loss.item() == pytest.approx(-J.item(), abs=1e-15)
    clipped = ((A > 0) & (s > 1 + hi)) | ((A < 0) & (s < 1 - lo))
    assert 0 < stats["clipfrac"].item() < 1  # both regimes occur, so the check sees the clip
    assert stats["clipfrac"].item() == pytest.approx(clipped.double().mean().item(), abs=1e-15)


def test_gspo_clips_per_sequence_not_per_token():
    # two tokens with ratios e^{+0.3} and e^{-0.3}: each token alone is outside [0.8, 1.2], the sequence ratio is 1
    logp = torch.tensor([[0.3, -0.3]], dtype=F64).requires_grad_(True)
    old = torch.zeros(1, 2, dtype=F64)
    loss, stats = gspo_policy_loss(logp, old, torch.tensor([1.0], dtype=F64), torch.ones(1, 2), 0.2, 0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    assert stats["clipfrac"].item() == 0.0 and stats["ratio_mean"].item() == pytest.approx(1.0, abs=1e-15)
    assert grad[0].tolist() == pytest.approx([-0.5, -0.5], abs=1e-15)  # d(-s)/d logp_t = -s/|y|


def test_gspo_token_ratio_reproduces_gspo_with_sequence_advantages():
    g = torch.Generator().manual_seed(5)
    old = -2 * torch.rand(4, 3, generator=g, dtype=F64)
    logp = (old + 0.3 * torch.randn(4, 3, generator=g, dtype=F64)).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    A = torch.tensor([1.0, 2.0, -0.5, -1.0], dtype=F64)  # s = (1.02, 1.19, 0.84, 1.03): rows 1 and 2 clip
    lo, hi = 0.05, 0.08
    r = gspo_token_ratio(logp, old, mask)  # (B,T)
    s = gspo_sequence_ratio(logp, old, mask)
    assert torch.allclose(r, s[:, None].detach() * mask, atol=1e-15)  # value: s_i on every valid token
    # GSPO-token: 1/G sum_i 1/|y_i| sum_t min(s_it A_i, clip(s_it) A_i)
    per_token = torch.minimum(r * A[:, None], r.clamp(1 - lo, 1 + hi) * A[:, None])
    J_token = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    loss, stats = gspo_policy_loss(logp, old, A, mask, lo, hi)
    assert 0 < stats["clipfrac"].item() < 1
    (g_tok,) = torch.autograd.grad(-J_token, logp)
    (g_seq,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(g_tok, g_seq, atol=1e-15)


# ----------------------------------------------------------------------------- DAPO


def test_clip_higher_clipped_set_by_hand():
    #             A    rho    eps_low 0.2, eps_high 0.28
    cases = [(+1.0, 1.25),  # inside [0.8, 1.28]: NOT clipped (the symmetric 0.2 clip would clip it)
             (+1.0, 1.30),  # above 1.28 with A > 0: clipped
             (-1.0, 0.75),  # below 0.8 with A < 0: clipped (the low side is unchanged)
             (-1.0, 1.25)]  # A < 0, rho > 1: the unclipped term is taken
    A = torch.tensor([[a for a, _ in cases]], dtype=F64)
    old = torch.full((1, 4), -1.0, dtype=F64)
    logp = (old + torch.tensor([[r for _, r in cases]], dtype=F64).log()).requires_grad_(True)
    ones = torch.ones(1, 4)
    loss, stats = ppo_policy_loss(logp, old, A, ones, clip_eps=0.2, clip_eps_high=0.28)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0].tolist() == pytest.approx([-1.25 / 4, 0.0, 0.0, 1.25 / 4], abs=1e-15)
    assert stats["clipfrac"].item() == pytest.approx(2 / 4, abs=1e-15)
    # None keeps the symmetric clip, and equals clip_eps_high = clip_eps exactly
    sym, sym_stats = ppo_policy_loss(logp, old, A, ones, clip_eps=0.2)
    same, _ = ppo_policy_loss(logp, old, A, ones, clip_eps=0.2, clip_eps_high=0.2)
    assert sym.item() == same.item() and sym_stats["clipfrac"].item() == pytest.approx(3 / 4, abs=1e-15)
    with pytest.raises(ValueError, match="clip_eps_high"):
        ppo_policy_loss(logp, old, A, ones, clip_eps_high=0.0)


@pytest.mark.parametrize("G", [2, 3, 4])
def test_nonconstant_groups_exhaustive_over_binary_rewards(G):
    tables = list(itertools.product([0.0, 1.0], repeat=G))  # every group of G binary rewards
    rewards = torch.tensor([r for t in tables for r in t], dtype=F64)  # (2^G * G,)
    keep = nonconstant_groups(rewards, G)
    adv = group_advantages(rewards, G, scale=False).reshape(-1, G)
    for k, t in enumerate(tables):
        assert keep[k].item() == (0 < sum(t) < G)  # DAPO: neither all right nor all wrong
        assert keep[k].item() == bool(adv[k].abs().max() > 0)  # dropped groups are exactly the zero-advantage ones
    assert keep.dtype == torch.bool and keep.shape == (2**G,)


def test_nonconstant_groups_real_rewards_and_bad_input():
    r = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.5000001, -2.0, -2.0, -2.0])
    assert nonconstant_groups(r, 3).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="multiple of group_size"):
        nonconstant_groups(r, 4)
    with pytest.raises(ValueError, match="nan"):
        nonconstant_groups(torch.tensor([0.0, math.nan]), 2)


def test_overlong_penalty_at_its_breakpoints():
    # L_max = 10, L_cache = 4: 0 up to 6, then a linear ramp to -1 at 10, then -1
    L = torch.tensor([0, 5, 6, 7, 8, 9, 10, 11, 1000])
    assert overlong_penalty(L, 10, 4).tolist() == pytest.approx([0, 0, 0, -0.25, -0.5, -0.75, -1, -1, -1], abs=1e-15)
    assert overlong_penalty(torch.tensor([6.5, 10.0 + 1e-9], dtype=F64), 10, 4).tolist() == pytest.approx(
        [-0.125, -1.0], abs=1e-15)
    assert overlong_penalty(torch.tensor([9, 10, 11]), 10, 10).tolist() == pytest.approx([-0.9, -1.0, -1.0])
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(L, 10, 11)
    with pytest.raises(ValueError, match="lengths"):
        overlong_penalty(torch.tensor([-1]), 10, 4)


# ----------------------------------------------------------------------------- REINFORCE++


def _whiten_py(values):
    m = statistics.fmean(values)
    sd = math.sqrt(statistics.variance(values) + 1e-8)  # unbiased, as torch.var
    return [(v - m) / sd for v in values]


def _rpp_problem():
    ref = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], dtype=F64)
    logp = ref + torch.tensor([[0.2, -0.4, 0.0], [0.1, 0.3, 5.0]], dtype=F64)  # k1 = logp - ref
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, ref, mask


def test_reinforce_pp_advantages_by_hand():
    logp, ref, mask = _rpp_problem()
    scores = torch.tensor([1.0, 0.0], dtype=F64)
    beta = 0.5
    # r_t = -beta k1_t, + score at the last token:
    #   row 0: -0.1, 0.2, 1.0       returns-to-go 1.1, 1.2, 1.0
    #   row 1: -0.05, -0.15         returns-to-go -0.2, -0.15
    adv = reinforce_pp_advantages(scores, logp, ref, mask, beta)
    expected = _whiten_py([1.1, 1.2, 1.0, -0.2, -0.15])
    assert adv[0].tolist() == pytest.approx(expected[:3], abs=1e-12)
    assert adv[1, :2].tolist() == pytest.approx(expected[3:], abs=1e-12) and adv[1, 2].item() == 0.0
    # the baseline variant: scores minus their group mean (1 and 0 -> +0.5 and -0.5) before the return
    #   row 0: 0.6, 0.7, 0.5        row 1: -0.7, -0.65
    adv_b = reinforce_pp_advantages(scores, logp, ref, mask, beta, group_size=2)
    expected_b = _whiten_py([0.6, 0.7, 0.5, -0.7, -0.65])
    assert adv_b[0].tolist() == pytest.approx(expected_b[:3], abs=1e-12)
    assert adv_b[1, :2].tolist() == pytest.approx(expected_b[3:], abs=1e-12)


def test_reinforce_pp_advantages_bad_input():
    logp, ref, mask = _rpp_problem()
    with pytest.raises(ValueError, match="right-padded"):
        reinforce_pp_advantages(torch.zeros(2, dtype=F64), logp, ref, torch.tensor([[0, 1, 1], [1, 1, 0]]), 0.1)
    with pytest.raises(ValueError, match="multiple of group_size"):
        reinforce_pp_advantages(torch.zeros(2, dtype=F64), logp, ref, mask, 0.1, group_size=3)
