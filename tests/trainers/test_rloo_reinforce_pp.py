"""REINFORCE++ through the RLOO trainer (advantage=reinforce_pp / reinforce_pp_baseline): the advantages
the loss sees are the whitened KL-penalised return-to-go computed by hand from the trainer's batch, and
the loss it minimises is the token-level REINFORCE loss on them."""
import pytest
import torch

from minirlhf.logger import read_metrics
from minirlhf.trainers import rl_run
from minirlhf.trainers.common import LoRAConfig
from minirlhf.trainers.rloo import RLOOConfig, rloo
import minirlhf.trainers.rloo as rloo_module

from tiny_configs import run_cfg


@pytest.mark.parametrize("advantage", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_advantages_and_loss_by_hand(sft_model, tmp_path, monkeypatch, advantage):
    """Catches: the option ignored (leave-one-out advantages used), the baseline variant not subtracting
    the prompt's mean score (or the plain one subtracting it), the KL left out of the return, no
    whitening, and a loss that is not -1/N sum_i sum_t A_it log pi(y_it)."""
    rollouts, steps = [], []
    original_rollout, original_step = rl_run.make_rollout, rloo_module.gradient_step

    def spy_rollout(*a, **k):
        rollouts.append(original_rollout(*a, **k))
        return rollouts[-1]

    def spy_step(optimizer, loss, *a, **k):
        steps.append(loss.detach().clone())
        return original_step(optimizer, loss, *a, **k)

    seen = []
    original_loss = rloo_module.token_reinforce_loss

    def spy_loss(logp, adv, mask):
        seen.append((logp.detach().clone(), adv.clone()))
        return original_loss(logp, adv, mask)

    monkeypatch.setattr(rl_run, "make_rollout", spy_rollout)
    monkeypatch.setattr(rloo_module, "gradient_step", spy_step)
    monkeypatch.setattr(rloo_module, "token_reinforce_loss", spy_loss)
    monkeypatch.setattr(rloo_module, "rloo_advantages", lambda *a: pytest.fail("leave-one-out used"))
    beta, k = 0.5, 4
    out = tmp_path / "pp"
    rloo(RLOOConfig(run=run_cfg(out), policy=str(sft_model), iterations=2, prompts_per_iteration=4, k=k,
                    eval_every=100, eval_prompts=6, beta=beta, advantage=advantage, lora=LoRAConfig(enabled=False)))
    assert len(rollouts) == len(steps) == len(seen) == 2
    for r, loss, (logp, adv) in zip(rollouts, steps, seen):
        m = r.mask
        score = r.scores.clone()
        if advantage == "reinforce_pp_baseline":
            score = score - score.reshape(-1, k).mean(1).repeat_interleave(k)
        kl = (r.logprobs - r.ref_logprobs) * m  # k1
        last = m.sum(-1).long() - 1
        reward = -beta * kl
        reward[torch.arange(len(score)), last] += score
        ret = reward.flip(-1).cumsum(-1).flip(-1) * m  # return-to-go
        valid = ret[m.bool()]
        hand = (ret - valid.mean()) / torch.sqrt(valid.var() + 1e-8) * m
        torch.testing.assert_close(adv, hand, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss, -(hand * logp * m).sum(-1).mean(), atol=1e-5, rtol=1e-5)
    assert not torch.equal(rollouts[1].logprobs, rollouts[1].ref_logprobs)  # the KL term is not vacuous
    rows = read_metrics(out / "metrics.jsonl")
    assert all("loss/policy" in r for r in rows[1:])


def test_default_advantage_is_still_leave_one_out():
    """Catches: a changed default."""
    assert RLOOConfig().advantage == "rloo"
