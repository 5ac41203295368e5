"""PPO and TRPO wiring on a hand-built rollout: the per-token rewards, the KL term, the GAE advantages
and returns, and the loss each trainer hands to its optimizer, against numbers worked out by hand.

The rollout: two responses, three and two tokens (the second row right-padded), vocabulary of 2.

    logprobs      [[-1.0, -0.5, -0.2], [-0.3, -0.7, pad]]
    ref_logprobs  [[-1.2, -0.5, -0.1], [-0.4, -0.2, pad]]
    values        [[ 0.5,  0.4,  0.3], [ 0.2,  0.1, pad]]
    scores        [1.0, -0.5],  beta 0.1,  gamma 1,  lambda 0.5

k1 = logp - ref_logp = [[0.2, 0, -0.1], [0.1, -0.5]]; rewards r_t = -beta k1_t, plus the score at the last token:
    row 0: [-0.02, 0, 0.01 + 1.0] = [-0.02, 0, 1.01]        row 1: [-0.01, 0.05 - 0.5] = [-0.01, -0.45]
GAE (terminal after the last token, delta_t = r_t + V_{t+1} - V_t, A_t = delta_t + lambda A_{t+1}):
    row 0: delta = [-0.02 + 0.4 - 0.5, 0 + 0.3 - 0.4, 1.01 - 0.3] = [-0.12, -0.1, 0.71]
           A = [-0.12 + 0.5 * 0.255, -0.1 + 0.5 * 0.71, 0.71] = [0.0075, 0.255, 0.71]
    row 1: delta = [-0.01 + 0.1 - 0.2, -0.45 - 0.1] = [-0.11, -0.55];  A = [-0.11 + 0.5 * (-0.55), -0.55] = [-0.385, -0.55]
    returns = A + V = [[0.5075, 0.655, 1.01], [-0.185, -0.45]]
"""
import contextlib
import math

import pytest
import torch
import torch.nn as nn

import minirlhf.trainers.trpo as trpo_mod
from minirlhf.config import from_dict, to_dict
from minirlhf.rollout import Rollout
from minirlhf.trainers.ppo import PPOConfig, ppo_update
from minirlhf.trainers.rl_run import rewards_and_advantages
from minirlhf.trainers.trpo import TRPOConfig, fit_critic, trpo_update

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
REWARDS = torch.tensor([[-0.02, 0.0, 1.01], [-0.01, -0.45, 0.0]])
KL = torch.tensor([[0.2, 0.0, -0.1], [0.1, -0.5, 0.0]])
ADV = torch.tensor([[0.0075, 0.255, 0.71], [-0.385, -0.55, 0.0]])
RETURNS = torch.tensor([[0.5075, 0.655, 1.01], [-0.185, -0.45, 0.0]])
VALUES = torch.tensor([[0.5, 0.4, 0.3], [0.2, 0.1, 0.0]])
# whitened over the 5 valid tokens: mean 0.0375 / 5 = 0.0075; unbiased variance
# (0 + 0.2475^2 + 0.7025^2 + 0.3925^2 + 0.5575^2) / 4 = 1.019625 / 4
ADV_WHITE = (ADV - 0.0075) / math.sqrt(1.019625 / 4 + 1e-8) * MASK
RESPONSE = torch.tensor([[0, 1, 0], [1, 1, 0]])  # token ids; row 1's last is padding


def hand_rollout() -> Rollout:
    row_id = torch.tensor([[0], [1]])  # the "prompt": one token holding the row's index, for the stubs
    return Rollout(["x", "y"], ["?", "?"], torch.cat([row_id, RESPONSE], 1), torch.cat([torch.ones(2, 1), MASK], 1).long(),
                   1, MASK.clone(), torch.tensor([True, True]),
                   logprobs=torch.tensor([[-1.0, -0.5, -0.2], [-0.3, -0.7, 0.0]]),
                   ref_logprobs=torch.tensor([[-1.2, -0.5, -0.1], [-0.4, -0.2, 0.0]]),
                   values=VALUES.clone(), scores=torch.tensor([1.0, -0.5]))


def config(cls, **kw):
    base = to_dict(cls())
    for k, v in kw.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) else v
    return from_dict(cls, base)


@pytest.mark.parametrize("cls", [PPOConfig, TRPOConfig])
def test_rewards_kl_gae_and_returns_by_hand(cls):
    cfg = config(cls, gamma=1.0, lam=0.5, whiten_advantages=False, kl={"estimator": "k1"})
    rewards, kl, adv, ret = rewards_and_advantages(cfg, hand_rollout(), beta=0.1)
    assert torch.allclose(rewards, REWARDS, atol=1e-6)
    assert torch.allclose(kl, KL, atol=1e-6)
    assert torch.allclose(adv, ADV, atol=1e-6)
    assert torch.allclose(ret * MASK, RETURNS, atol=1e-6)
    cfg = config(cls, gamma=1.0, lam=0.5, whiten_advantages=True)
    _, _, adv, ret = rewards_and_advantages(cfg, hand_rollout(), beta=0.1)
    assert torch.allclose(adv, ADV_WHITE, atol=1e-5)
    assert torch.allclose(ret * MASK, RETURNS, atol=1e-6)  # returns come from the raw advantages


def test_ppo_kl_as_a_loss_term_leaves_only_the_score_in_the_reward():
    cfg = config(PPOConfig, gamma=1.0, lam=0.5, whiten_advantages=False, kl={"estimator": "k3", "where": "loss"})
    rewards, kl, _, _ = rewards_and_advantages(cfg, hand_rollout(), beta=0.1)
    assert torch.allclose(rewards, torch.tensor([[0.0, 0.0, 1.0], [0.0, -0.5, 0.0]]), atol=1e-7)
    # k3 = (ratio - 1) - log ratio, log ratio = ref - logp: row 0 token 0 has log ratio -0.2
    assert kl[0, 0].item() == pytest.approx(math.exp(-0.2) - 1 + 0.2, abs=1e-6)
    assert kl[1, 1].item() == pytest.approx(math.exp(0.5) - 1 - 0.5, abs=1e-6) and kl[1, 2] == 0


def test_critic_free_advantage_is_the_batch_normalised_sequence_reward():
    # sequence rewards 0.99 and -0.46: mean 0.265, torch.std (unbiased) = 0.725 sqrt(2); every token of a row
    # gets its row's value
    cfg = config(PPOConfig, advantage="batch_norm")
    _, _, adv, ret = rewards_and_advantages(cfg, hand_rollout(), beta=0.1)
    a = 0.725 / (0.725 * math.sqrt(2) + 1e-6)
    assert ret is None
    assert torch.allclose(adv, torch.tensor([[a, a, a], [-a, -a, 0.0]]), atol=1e-6)


class TableActorCritic(nn.Module):
    """Response logits (B,R,V) and values (B,R) as free parameters, looked up by the row index in column 0."""

    def __init__(self, logits, values=None):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.values = nn.Parameter(values.clone()) if values is not None else None

    def forward(self, rollout, temperature, values=True):
        rows = rollout.input_ids[:, 0]
        return self.logits[rows] / temperature, (self.values[rows] if values and self.values is not None else None)


class NoRun:
    """The parts of TrainingRun the update functions use: no NaN guard to trip, fp32."""

    def check_finite(self, *args, **kwargs):
        pass

    def autocast(self):
        return contextlib.nullcontext()


def test_ppo_loss_handed_to_the_optimizer_by_hand():
    """At pi = pi_old (ratio 1, nothing clipped), logits 0 over 2 tokens (p = 1/2 each), values = old values:

        loss = token mean of -A  +  vf_coef * 1/2 token mean of (V - R)^2,  over the 5 valid tokens
             = -0.0375/5  +  0.5 * 1/2 * (A^2 summed = 1.01990625)/5
        d loss / d logit[b,t,v] = -A_bt/5 (1{v = y_bt} - 1/2);   d loss / d V[b,t] = 0.5 (V - R)/5 = -A_bt/10
    """
    ac = TableActorCritic(torch.zeros(2, 3, 2), VALUES)
    r = hand_rollout()
    r.logprobs = torch.full((2, 3), math.log(0.5)) * MASK
    cfg = config(PPOConfig, ppo_epochs=1, minibatch_size=2, vf_coef=0.5, value_clip=0.2, ent_coef=0.0,
                 optim={"grad_clip": 0.0}, kl={"where": "reward"})
    opt = torch.optim.SGD(ac.parameters(), lr=0.0)
    stats = ppo_update(cfg, ac, opt, r, ADV, RETURNS, r.ref_logprobs, 0.1, None, torch.Generator().manual_seed(0),
                       NoRun(), 1)
    assert stats["loss/policy"] == pytest.approx(-0.0375 / 5, abs=1e-7)
    assert stats["loss/value"] == pytest.approx(0.5 * 1.01990625 / 5, abs=1e-7)
    onehot = torch.nn.functional.one_hot(RESPONSE, 2).float()
    expected = -(ADV / 5)[..., None] * (onehot - 0.5) * MASK[..., None]
    assert torch.allclose(ac.logits.grad, expected, atol=1e-7)
    assert torch.allclose(ac.values.grad, -ADV / 10 * MASK, atol=1e-7)


def test_ppo_kl_loss_term_gradient_by_hand():
    """kl.where = loss adds kl_coef * token mean of k2 = 1/2 (logp - ref)^2. With ref = log 1/2 everywhere except
    row 0 token 0 (ref log-prob of its token log 0.2) and A = 0: d/d logit[0,0,v] = kl_coef/5 (logp - ref) (1{v=y} - 1/2)
    with logp - ref = log 0.5 - log 0.2 = log 2.5."""
    ac = TableActorCritic(torch.zeros(2, 3, 2))
    r = hand_rollout()
    r.logprobs = torch.full((2, 3), math.log(0.5)) * MASK
    ref = r.logprobs.clone()
    ref[0, 0] = math.log(0.2)
    cfg = config(PPOConfig, ppo_epochs=1, minibatch_size=2, ent_coef=0.0, optim={"grad_clip": 0.0},
                 kl={"where": "loss", "estimator": "k2"})
    ppo_update(cfg, ac, torch.optim.SGD(ac.parameters(), lr=0.0), r, torch.zeros(2, 3), None, ref, 0.1, None,
               torch.Generator().manual_seed(0), NoRun(), 1)
    expected = torch.zeros(2, 3, 2)
    expected[0, 0] = 0.1 / 5 * math.log(2.5) * torch.tensor([0.5, -0.5])  # token 0 of row 0 is y = 0
    assert torch.allclose(ac.logits.grad, expected, atol=1e-7)


def test_trpo_hands_trpo_step_the_surrogate_and_the_mean_kl(monkeypatch):
    """trpo_step receives L(theta) = token mean of ratio * A and KL_bar(theta) = token mean of KL(pi_old || pi_theta).
    At theta_old: L = 0.0375/5, dL/dlogit[b,t,v] = A_bt/5 (1{v = y} - 1/2), KL_bar = 0. Moving row 0 token 0's
    logits to (log 0.8, log 0.2): KL_bar = (1/2 log(0.5/0.8) + 1/2 log(0.5/0.2)) / 5 = 1/2 log(1.5625) / 5."""
    seen = {}

    def spy(params, surrogate_fn, kl_fn, max_kl, cg_iters, damping, backtrack_coeff, backtrack_iters, reduce_fn=None):
        seen.update(params=params, surrogate=surrogate_fn, kl=kl_fn, args=(max_kl, cg_iters, damping, backtrack_coeff,
                                                                            backtrack_iters))
        return {"kl": 0.0, "improvement": 0.0, "step_frac": 0.0, "backtracks": 0}

    monkeypatch.setattr(trpo_mod, "trpo_step", spy)
    actor = TableActorCritic(torch.zeros(2, 3, 2))
    r = hand_rollout()
    r.logprobs = torch.full((2, 3), math.log(0.5)) * MASK
    cfg = config(TRPOConfig, max_kl=0.02, cg_iters=7, damping=0.3)
    trpo_update(cfg, actor, [actor.logits], r, torch.zeros(2, 3, 2), ADV)
    assert seen["args"] == (0.02, 7, 0.3, cfg.backtrack_coeff, cfg.backtrack_iters)
    surrogate = seen["surrogate"]()
    assert surrogate.item() == pytest.approx(0.0375 / 5, abs=1e-7)
    (grad,) = torch.autograd.grad(surrogate, actor.logits)
    onehot = torch.nn.functional.one_hot(RESPONSE, 2).float()
    assert torch.allclose(grad, (ADV / 5)[..., None] * (onehot - 0.5) * MASK[..., None], atol=1e-7)
    assert seen["kl"]().item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        actor.logits[0, 0] = torch.log(torch.tensor([0.8, 0.2]))
    assert seen["kl"]().item() == pytest.approx(0.5 * math.log(1.5625) / 5, abs=1e-6)


class TableCritic(nn.Module):
    """V(x, y_<t) as free parameters: (B, P+R) outputs whose response part is the table."""

    def __init__(self, values):
        super().__init__()
        self.values = nn.Parameter(values.clone())

    def forward(self, input_ids, attention_mask=None):
        rows = input_ids[:, 0]
        v = self.values[rows]  # (b,R): the value before each response token
        return torch.cat([v, torch.zeros(v.shape[0], 1)], 1)  # positions P-1 .. P+R-1


def test_trpo_critic_regresses_on_the_returns_by_hand():
    """fit_critic's loss: 1/2 token mean of (V - R)^2 = 1/2 * 1.01990625/5 at V = old values; its gradient
    (V - R)/5 = -A/5, taken by an SGD step of lr 1 here: V_new = V + A/5."""
    critic = TableCritic(VALUES)
    r = hand_rollout()
    cfg = config(TRPOConfig, critic_epochs=1, critic_minibatch_size=2, value_clip=0.2,
                 critic_optim={"grad_clip": 0.0})
    opt = torch.optim.SGD(critic.parameters(), lr=1.0)
    stats = fit_critic(cfg, critic, opt, r, RETURNS, torch.Generator().manual_seed(0), NoRun(), 1)
    assert stats["loss/value"] == pytest.approx(0.5 * 1.01990625 / 5, abs=1e-7)
    assert torch.allclose(critic.values.detach(), VALUES + ADV / 5 * MASK, atol=1e-7)
