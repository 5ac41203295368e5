"""RLOO trainer on a tiny model: it runs and logs, the advantages it uses are the leave-one-out ones of
the KL-penalised sequence reward (recomputed here from the parts), one on-policy step lowers the loss
of its own batch, exact resume."""
import pytest
import torch

from minirlhf.config import ConfigError, from_dict
from minirlhf.logger import read_metrics
from minirlhf.rollout import response_logprobs
from minirlhf.saving import load_model
from minirlhf.trainers import rl_run
from minirlhf.trainers.common import LoRAConfig, OptimConfig
from minirlhf.trainers.rloo import RLOOConfig, rloo
import minirlhf.trainers.rloo as rloo_module

from tiny_configs import crash_then_resume, run_cfg
from conftest import assert_same_weights


def rloo_cfg(policy, out, **kw):
    base = dict(run=run_cfg(out), policy=str(policy), iterations=3, prompts_per_iteration=4, k=4, eval_every=3,
                eval_prompts=6)
    base.update(kw)
    return RLOOConfig(**base)


@pytest.mark.parametrize("kw", [dict(), dict(kl_estimator="k3", k=2), dict(lora=LoRAConfig(enabled=False))])
def test_rloo_runs_and_logs_its_metrics(sft_model, tmp_path, kw):
    result = rloo(rloo_cfg(sft_model, tmp_path / "rloo", **kw))
    rows = read_metrics(tmp_path / "rloo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("reward/score", "reward/total", "reward/kl_penalty", "kl", "entropy", "loss/policy", "grad_norm",
                "response_length", "eos_share", "train/accuracy", "group/zero_std_share", "group/reward_std",
                "time/generation", "time/scoring", "time/update"):
        assert all(key in r for r in rows[1:]), key
    assert "eval/accuracy" in rows[3] and "eval/accuracy" in result


def test_advantages_are_leave_one_out_on_the_kl_penalised_reward(sft_model, tmp_path, monkeypatch):
    """A_i = R_i - mean_{j != i} R_j with R_i = score_i - beta * sum_t (log pi - log pi_ref), each part
    taken from the trainer's batch and combined here (at the second iteration, where pi != pi_ref);
    the loss uses the sampling policy's log-probs; one optimizer step lowers the batch's own loss."""
    seen = []
    original_loss = rloo_module.reinforce_loss
    original_rollout = rl_run.make_rollout

    def spy_rollout(*a, **k):  # the one rollout path: its record holds the reference log-probs
        r = original_rollout(*a, **k)
        seen.append({"rollout": r, "ref": r.ref_logprobs})
        return r

    def spy_loss(logp, advantages, mask):
        seen[-1].update(logp=logp.detach().clone(), adv=advantages.clone(), mask=mask)
        seen[-1]["loss"] = original_loss(logp, advantages, mask)
        return seen[-1]["loss"]

    monkeypatch.setattr(rl_run, "make_rollout", spy_rollout)
    monkeypatch.setattr(rloo_module, "reinforce_loss", spy_loss)
    beta, k = 0.5, 4
    cfg = rloo_cfg(sft_model, tmp_path / "adv", iterations=2, beta=beta, k=k, eval_every=100,
                   lora=LoRAConfig(enabled=False), optim=OptimConfig(lr=1e-2, schedule="constant"))
    rloo(cfg)
    assert len(seen) == 2
    # iteration 1: the log-probs in the loss are those of the policy that sampled (on-policy, no ratio)
    first = seen[0]
    start, *_ = load_model(sft_model)
    with torch.no_grad():
        m = first["mask"]
        assert torch.allclose(first["logp"] * m, response_logprobs(start, first["rollout"]) * m, atol=1e-5)
    # iteration 2: the policy has moved away from the reference, so the KL term matters
    second = seen[1]
    rollout, mask = second["rollout"], second["mask"]
    seq_kl = ((second["logp"] - second["ref"]).double() * mask).sum(-1)  # (N,)
    assert seq_kl.abs().max() > 1e-3
    R = rollout.scores.double() - beta * seq_kl  # (N,)
    for b in range(rollout.batch_size // k):
        group = R[b * k : (b + 1) * k].tolist()
        for i in range(k):
            others = [group[j] for j in range(k) if j != i]
            assert second["adv"][b * k + i].item() == pytest.approx(group[i] - sum(others) / (k - 1), abs=1e-5)
    # one REINFORCE step on this batch lowers its own loss (first order: -lr * |grad|^2 < 0)
    trained, *_ = load_model(tmp_path / "adv" / "model")
    with torch.no_grad():
        after = original_loss(response_logprobs(trained, rollout), second["adv"], mask)
    assert after.item() < second["loss"].item()


def test_rloo_resume_is_exact(sft_model, tmp_path, monkeypatch):
    full = rloo_cfg(sft_model, tmp_path / "full", iterations=4)
    full.run.save_every = 2
    rloo(full)
    part = rloo_cfg(sft_model, tmp_path / "part", iterations=4)
    part.run.save_every = 2
    crash_then_resume(monkeypatch, rloo_module, "reinforce_loss", 3, rloo, part)
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]  # noqa: E731
    assert drop(read_metrics(tmp_path / "full" / "metrics.jsonl")) == drop(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    assert_same_weights(tmp_path / "full", tmp_path / "part")  # the weights too, not only the metrics


@pytest.mark.parametrize("kw,key", [(dict(k=1), "'k'"), (dict(prompts_per_iteration=0), "prompts_per_iteration"),
                                    (dict(kl_estimator="k9"), "kl_estimator")])
def test_bad_config_names_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(RLOOConfig, kw)
