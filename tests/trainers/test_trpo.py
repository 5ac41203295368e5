"""TRPO trainer on a tiny model: metrics, the trust region held at every logged step (KL measured
independently of the trainer), parameters restored when the line search rejects, exact resume."""
import pytest
import torch

from minirlhf.config import ConfigError
from minirlhf.logger import read_metrics
from minirlhf.objectives import flat_params
from minirlhf.saving import load_model
from minirlhf.trainers.common import LoRAConfig
from minirlhf.trainers.trpo import TRPOConfig, trpo
import minirlhf.trainers.trpo as trpo_module

from tiny_configs import crash_then_resume, run_cfg
from conftest import assert_same_weights


def trpo_cfg(policy, out, **kw):
    base = dict(run=run_cfg(out), policy=str(policy), reward="verifier", iterations=3, batch_size=8,
                critic_minibatch_size=4, critic_epochs=2, eval_every=3, eval_prompts=6, critic_init="policy")
    base.update(kw)
    return TRPOConfig(**base)


def kl_old_new(old_logits, new_logits, mask):
    """Mean over response tokens of sum_a p_old(a) log(p_old(a) / p_new(a)), written out here."""
    p_old = torch.softmax(old_logits.double(), -1)
    per_token = (p_old * (torch.log_softmax(old_logits.double(), -1) - torch.log_softmax(new_logits.double(), -1))).sum(-1)
    return float((per_token * mask).sum() / mask.sum())


@pytest.mark.parametrize("kw", [
    dict(),
    dict(lora=LoRAConfig(enabled=False), damping=1e-3, max_kl=0.005),
    dict(advantage="batch_norm", max_kl=0.05),
])
def test_trpo_runs_logs_its_metrics_and_every_step_stays_in_the_trust_region(sft_model, tmp_path, monkeypatch, kw):
    seen = []
    original = trpo_module.trpo_update

    def checked(cfg, actor, params, rollout, old_logits, advantages, **kw):
        stats = original(cfg, actor, params, rollout, old_logits, advantages, **kw)
        policy = actor.policy
        with torch.no_grad():
            logits = policy(rollout.input_ids, rollout.attention_mask)[:, rollout.prompt_width - 1 : -1] / cfg.temperature
        seen.append((kl_old_new(old_logits, logits, rollout.mask), stats["kl"]))
        return stats

    monkeypatch.setattr(trpo_module, "trpo_update", checked)
    cfg = trpo_cfg(sft_model, tmp_path / "trpo", **kw)
    result = trpo(cfg)
    rows = read_metrics(tmp_path / "trpo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("kl_old_new", "step_frac", "backtracks", "cg_residual", "improvement", "expected_improvement",
                "reward/score", "kl", "entropy", "response_length", "eos_share", "train/accuracy",
                "time/generation", "time/scoring", "time/update"):
        assert all(key in r for r in rows[1:]), key
    if cfg.advantage == "gae":
        assert all("explained_variance" in r and "loss/value" in r for r in rows[1:])
    assert "eval/accuracy" in rows[3] and "eval/accuracy" in result
    assert len(seen) == 3
    for row, (kl_measured, kl_reported) in zip(rows[1:], seen):
        assert row["kl_old_new"] == kl_reported
        assert kl_measured == pytest.approx(kl_reported, rel=1e-3, abs=1e-7)
        assert kl_measured <= cfg.max_kl * (1 + 1e-4)
        if row["step_frac"] > 0:  # an accepted step moved the policy and improved the surrogate
            assert row["kl_old_new"] > 0 and row["improvement"] > 0
    assert any(r["step_frac"] > 0 for r in rows[1:])


def test_a_rejected_line_search_restores_the_parameters(sft_model, tmp_path, monkeypatch):
    """A KL that never fits in the trust region (the true KL + 1, same Hessian) rejects every candidate:
    the policy must come back bit for bit and the step is logged as rejected."""
    original_step = trpo_module.trpo_step
    checks = []

    def never_in_region(params, surrogate_fn, kl_fn, max_kl, *a, **k):
        before = flat_params(params)
        stats = original_step(params, surrogate_fn, lambda: kl_fn() + 1.0, max_kl, *a, **k)
        checks.append(torch.equal(before, flat_params(params)))
        return stats

    monkeypatch.setattr(trpo_module, "trpo_step", never_in_region)
    cfg = trpo_cfg(sft_model, tmp_path / "rejected", iterations=2, backtrack_iters=3)
    trpo(cfg)
    assert checks == [True, True]
    rows = read_metrics(tmp_path / "rejected" / "metrics.jsonl")[1:]
    for r in rows:
        assert r["step_frac"] == 0 and r["backtracks"] == 3 and r["kl_old_new"] == 0.0 and r["improvement"] == 0.0
        assert r["expected_improvement"] > 0  # a step was proposed, and refused
    trained, *_ = load_model(tmp_path / "rejected" / "model")
    start, *_ = load_model(sft_model)
    for (name, a), b in zip(trained.state_dict().items(), start.state_dict().values()):
        assert torch.equal(a, b), name


def test_trpo_resume_is_exact(sft_model, tmp_path, monkeypatch):
    full = trpo_cfg(sft_model, tmp_path / "full", iterations=4)
    full.run.save_every = 2
    trpo(full)
    part = trpo_cfg(sft_model, tmp_path / "part", iterations=4)
    part.run.save_every = 2
    crash_then_resume(monkeypatch, trpo_module, "trpo_update", 3, trpo, part)
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]  # noqa: E731
    assert drop(read_metrics(tmp_path / "full" / "metrics.jsonl")) == drop(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    assert_same_weights(tmp_path / "full", tmp_path / "part")  # the weights too, not only the metrics


@pytest.mark.parametrize("kw,key", [(dict(max_kl=0.0), "max_kl"), (dict(batch_size=1), "batch_size"),
                                    (dict(kl={"where": "loss"}), "kl.where")])
def test_bad_config_names_the_key(kw, key):
    from minirlhf.config import from_dict

    with pytest.raises(ConfigError, match=key):
        from_dict(TRPOConfig, kw)
