"""GRPO trainer on a tiny model: its variants run and log, the trainer's groups and advantages are
laid out as GRPO defines them, the grouped rollout equals the repeated-prompt rollout, updates raise
the objective on a fixed batch, exact resume."""
import pytest
import torch

from minirlhf.config import ConfigError, from_dict
from minirlhf.logger import read_metrics
from minirlhf.saving import load_model
from minirlhf.trainers.common import LoRAConfig
from minirlhf.trainers.grpo import GRPOConfig, grpo
from minirlhf.rollout import sample
import minirlhf.trainers.grpo as grpo_module

from tiny_configs import crash_then_resume, run_cfg
from conftest import assert_same_weights

PROMPTS = ["Q: 3+4=\nA:", "Q: 9-2=\nA:", "Q: 15+1=\nA:"]


def grpo_cfg(policy, out, **kw):
    base = dict(run=run_cfg(out), policy=str(policy), iterations=3, prompts_per_iteration=4, group_size=4,
                minibatch_size=8, eval_every=3, eval_prompts=6)
    base.update(kw)
    return GRPOConfig(**base)


def test_grouped_rollout_equals_the_repeated_prompt_rollout(sft_model):
    model, tok, template, _ = load_model(sft_model)
    G = 5
    grouped = sample(model, tok, template, PROMPTS, 4, temperature=1.0, num_samples=G,
                            generator=torch.Generator().manual_seed(3))
    plain = sample(model, tok, template, [p for p in PROMPTS for _ in range(G)], 4, temperature=1.0,
                   generator=torch.Generator().manual_seed(3))
    assert grouped.prompts == plain.prompts == [p for p in PROMPTS for _ in range(G)]
    assert grouped.responses == plain.responses
    assert torch.equal(grouped.input_ids, plain.input_ids) and torch.equal(grouped.mask, plain.mask)
    assert len(set(grouped.responses)) > 1  # samples differ, so equality is not vacuous


@pytest.mark.parametrize("kw", [
    dict(),
    dict(loss_agg="token_mean", mu=2, minibatch_size=4),
    dict(loss_agg="seq_sum_const", scale_rewards=False),
    dict(lora=LoRAConfig(enabled=False), beta=0.0),
])
def test_grpo_variants_run_and_log_their_metrics(sft_model, tmp_path, kw):
    result = grpo(grpo_cfg(sft_model, tmp_path / "grpo", **kw))
    rows = read_metrics(tmp_path / "grpo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("reward/score", "reward/mean", "kl", "entropy", "clipfrac", "approx_kl", "loss/policy", "loss/kl",
                "grad_norm", "response_length", "eos_share", "train/accuracy", "group/zero_std_share",
                "group/reward_std", "time/generation", "time/scoring", "time/update"):
        assert all(key in r for r in rows[1:]), key
    assert "eval/accuracy" in rows[3] and "eval/accuracy" in result
    assert all(0.0 <= r["group/zero_std_share"] <= 1.0 and r["kl"] >= 0 for r in rows[1:])


@pytest.mark.parametrize("scale", [True, False])
def test_trainer_batch_advantages_are_group_relative(sft_model, tmp_path, monkeypatch, scale):
    """In the batch the trainer updates on, rows b*G..b*G+G-1 share a prompt, each row's advantage is
    one number on its response tokens (0 on padding), zero-mean within each group and equal to
    (r - group mean) / (group std + 1e-6) (or r - group mean) computed here from the scores."""
    seen = []
    original = grpo_module.grpo_update

    def spy(cfg, actor, optimizer, rollout, advantages, *a, **k):
        seen.append((rollout, advantages.clone()))
        return original(cfg, actor, optimizer, rollout, advantages, *a, **k)

    monkeypatch.setattr(grpo_module, "grpo_update", spy)
    G = 4
    grpo(grpo_cfg(sft_model, tmp_path / "adv", iterations=2, scale_rewards=scale, eval_every=100))
    rows = read_metrics(tmp_path / "adv" / "metrics.jsonl")[1:]
    assert len(seen) == 2
    for (rollout, adv), row in zip(seen, rows):
        N = rollout.batch_size
        assert N == 4 * G
        for b in range(N // G):
            assert len(set(rollout.prompts[b * G : (b + 1) * G])) == 1
        m = rollout.mask.bool()
        per_row = adv[:, 0]  # (N,): every response has at least one token
        assert torch.equal(adv, torch.where(m, per_row[:, None].expand_as(adv), torch.zeros_like(adv)))
        r = rollout.scores.double().reshape(-1, G).tolist()
        for b, group in enumerate(r):
            mean = sum(group) / G
            std = (sum((x - mean) ** 2 for x in group) / (G - 1)) ** 0.5
            for g, x in enumerate(group):
                expected = (x - mean) / (std + 1e-6) if scale else x - mean
                assert per_row[b * G + g].item() == pytest.approx(expected, abs=1e-5)
            assert abs(sum(per_row[b * G : (b + 1) * G].tolist())) < 1e-5
        zero_std = sum(len(set(group)) == 1 for group in r) / len(r)
        assert row["group/zero_std_share"] == pytest.approx(zero_std)
    assert any(bool(adv.abs().max() > 0.1) for _, adv in seen)  # some group had a learning signal


def test_updates_raise_the_objective_on_a_fixed_batch(sft_model, tmp_path):
    """Several GRPO passes on one batch move probability toward the responses with positive advantage:
    sum_i A_i log pi(y_i|x_i) grows, and the KL-to-reference term starts at 0."""
    from minirlhf.objectives import broadcast_to_tokens
    from minirlhf.rollout import response_logprobs
    from minirlhf.trainers.common import TrainingRun, make_optimizer
    from minirlhf.policies import ActorCritic

    model, tok, template, _ = load_model(sft_model)
    cfg = grpo_cfg(sft_model, tmp_path / "fixed", mu=8, minibatch_size=8, beta=0.04)
    rollout = sample(model, tok, template, PROMPTS + ["Q: 8+8=\nA:"], 4, 1.0, torch.Generator().manual_seed(0), num_samples=4)
    with torch.no_grad():
        rollout.logprobs = response_logprobs(model, rollout)
        rollout.ref_logprobs = rollout.logprobs.clone()
    seq_adv = torch.tensor([1.0, -1.0, 0.5, -0.5] * 4)
    adv = broadcast_to_tokens(seq_adv, rollout.mask)
    objective = lambda lp: float((seq_adv * (lp * rollout.mask).sum(-1)).sum())  # noqa: E731
    before = objective(rollout.logprobs)
    run = TrainingRun(cfg.run, cfg, name="grpo")
    opt = make_optimizer(model.parameters(), cfg.optim)
    stats = grpo_module.grpo_update(cfg, ActorCritic(model, "none"), opt, rollout, adv, 4,
                                    torch.Generator().manual_seed(1), run, 1)
    run.close()
    with torch.no_grad():
        after = objective(response_logprobs(model, rollout))
    assert after > before
    assert stats["loss/kl"] > 0  # the policy left the reference, and k3 saw it


def test_grpo_resume_is_exact(sft_model, tmp_path, monkeypatch):
    full = grpo_cfg(sft_model, tmp_path / "full", iterations=4)
    full.run.save_every = 2
    grpo(full)
    part = grpo_cfg(sft_model, tmp_path / "part", iterations=4)
    part.run.save_every = 2
    crash_then_resume(monkeypatch, grpo_module, "grpo_update", 3, grpo, part)
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]  # noqa: E731
    assert drop(read_metrics(tmp_path / "full" / "metrics.jsonl")) == drop(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    assert_same_weights(tmp_path / "full", tmp_path / "part")  # the weights too, not only the metrics


@pytest.mark.parametrize("kw,key", [(dict(group_size=1), "group_size"), (dict(mu=0), "mu"),
                                    (dict(loss_agg="sum"), "loss_agg")])
def test_bad_config_names_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(GRPOConfig, kw)
