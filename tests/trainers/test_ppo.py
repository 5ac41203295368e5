"""PPO trainer on a tiny model: its variants run, the rollout record is consistent, resume is exact."""
import contextlib

import pytest
import torch

from minirlhf.logger import read_metrics
from minirlhf.lora import lora_disabled
from minirlhf.rollout import response_logprobs, sample
from minirlhf.saving import load_model
from minirlhf.trainers.ppo import PPOConfig, ppo

from tiny_configs import crash_then_resume, run_cfg
from conftest import assert_same_weights


def ppo_cfg(policy, out, **kw):
    base = dict(run=run_cfg(out), policy=str(policy), reward="verifier", iterations=3, batch_size=8,
                minibatch_size=4, ppo_epochs=2, eval_every=3, eval_prompts=6, critic_init="policy")
    base.update(kw)
    return PPOConfig(**base)


def test_rollout_logprobs_match_the_sampling_distribution(sft_model):
    model, tok, template, _ = load_model(sft_model)
    prompts = ["Q: 3+4=\nA:", "Q: 9-2=\nA:", "Q: 1+1=\nA:"]
    r = sample(model, tok, template, prompts, 4, temperature=0.7, generator=torch.Generator().manual_seed(0))
    P = r.prompt_width
    assert r.input_ids.shape == (3, P + r.mask.shape[1]) and (r.attention_mask[:, P:] == r.mask).all()
    logp = response_logprobs(model, r, temperature=0.7)
    # Token t of row b was drawn from softmax(logits / 0.7) of the prefix before it.
    for b in range(3):
        for t in range(int(r.mask[b].sum())):
            with torch.no_grad():
                logits = model(r.input_ids[b : b + 1, : P + t], r.attention_mask[b : b + 1, : P + t])[0, -1]
            expected = torch.log_softmax(logits / 0.7, -1)[r.input_ids[b, P + t]]
            assert torch.isclose(logp[b, t], expected, atol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(critic="shared"),
    dict(advantage="batch_norm"),
    dict(policy_loss="penalty"),
    dict(kl={"where": "loss", "estimator": "k3"}),
    dict(lora={"enabled": False}),
])
def test_ppo_variants_run_and_log_the_standard_metrics(sft_model, tmp_path, kw):
    from minirlhf.config import from_dict, to_dict

    cfg = ppo_cfg(sft_model, tmp_path / "ppo")
    cfg = from_dict(PPOConfig, {**to_dict(cfg), **{k: ({**to_dict(cfg)[k], **v} if isinstance(v, dict) else v)
                                                    for k, v in kw.items()}})
    result = ppo(cfg)
    rows = read_metrics(tmp_path / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("reward/score", "kl", "entropy", "approx_kl", "loss/policy", "response_length", "eos_share",
                "time/generation", "time/logprobs", "time/scoring", "time/update"):
        assert key in rows[1], key
    assert 0 < rows[1]["time/logprobs"] <= rows[1]["time/scoring"]  # the log-prob passes are part of scoring
    if kw.get("advantage") != "batch_norm":
        assert "explained_variance" in rows[1] and "loss/value" in rows[1]
    assert "eval/accuracy" in result
    if cfg.kl.estimator == "k3":
        assert all(r["kl"] >= 0 for r in rows[1:])


def test_lora_reference_is_the_sft_model(sft_model):
    from minirlhf.lora import apply_lora

    model, tok, template, _ = load_model(sft_model)
    ref, *_ = load_model(sft_model)
    apply_lora(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_()
    r = sample(model, tok, template, ["Q: 3+4=\nA:", "Q: 5-5=\nA:"], 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), lora_disabled(model):
        a = response_logprobs(model, r)
    with torch.no_grad():
        b = response_logprobs(ref, r)
    assert torch.allclose(a, b, atol=1e-6)


def test_ppo_resume_is_exact(sft_model, tmp_path, monkeypatch):
    full = ppo_cfg(sft_model, tmp_path / "full", iterations=4)
    full.run.save_every = 2
    ppo(full)
    import minirlhf.trainers.ppo as ppo_module

    part = ppo_cfg(sft_model, tmp_path / "part", iterations=4)
    part.run.save_every = 2
    crash_then_resume(monkeypatch, ppo_module, "ppo_update", 3, ppo, part)
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]  # noqa: E731
    assert drop(read_metrics(tmp_path / "full" / "metrics.jsonl")) == drop(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    assert_same_weights(tmp_path / "full", tmp_path / "part")  # the weights too, not only the metrics


@pytest.mark.parametrize("argv", [["--kl.where", "loss"], ["--kl.where", "loss", "--kl.estimator", "k1"]])
def test_kl_in_the_loss_with_k1_is_refused_with_the_reason(argv):
    """E_{y~pi}[grad (log pi(y) - log pi_ref(y))] = E_pi[grad log pi] = 0: a k1 term in the loss would
    do nothing, so the config is refused, naming the key and the estimators that work."""
    from minirlhf.config import ConfigError, resolve_config

    with pytest.raises(ConfigError) as e:
        resolve_config(PPOConfig, argv)
    msg = str(e.value)
    assert "'kl.estimator'" in msg and "k1" in msg and "zero expected gradient" in msg
    assert "--kl.estimator k2" in msg and "--kl.where reward" in msg
    for estimator in ("k2", "k3"):
        cfg = resolve_config(PPOConfig, ["--kl.where", "loss", "--kl.estimator", estimator])
        assert (cfg.kl.where, cfg.kl.estimator) == ("loss", estimator)
    assert resolve_config(PPOConfig, ["--kl.estimator", "k1"]).kl.where == "reward"  # k1 in the reward is fine


def test_penalty_beta_is_adapted_to_the_kl_after_the_update(sft_model, tmp_path):
    """PPO-penalty (Schulman et al., 2017, section 4): d = E_t[KL[pi_old(.|s_t), pi(.|s_t)]] measured
    AFTER the policy update. The value given to the beta rule must equal that KL, computed here from
    the full next-token distributions before and after."""
    from minirlhf.objectives import AdaptiveKLPenalty, logprobs_from_logits
    from minirlhf.trainers.common import LoRAConfig
    from minirlhf.policies import ActorCritic, policy_and_reference
    from minirlhf.trainers.ppo import ppo_update

    torch.manual_seed(0)
    policy, tok, template, _ = load_model(sft_model)
    policy, _ = policy_and_reference(policy, LoRAConfig(enabled=True))
    ac = ActorCritic(policy, "none").eval()
    cfg = ppo_cfg(sft_model, tmp_path / "ppo", policy_loss="penalty", batch_size=16, minibatch_size=4, ppo_epochs=4,
                  critic="none", advantage="batch_norm", temperature=0.8)
    prompts = [f"Q: {a}+{b}=\nA:" for a, b in zip(range(8), range(8, 0, -1))] * 2
    rollout = sample(policy, tok, template, prompts, 4, 0.8, torch.Generator().manual_seed(3))
    P, m = rollout.prompt_width, rollout.mask
    with torch.no_grad():
        old_logits, _ = ac(rollout, 0.8)  # (B,R,V), already / temperature
    rollout.logprobs = logprobs_from_logits(old_logits, rollout.input_ids[:, P:])
    rollout.ref_logprobs = rollout.logprobs.clone()
    rollout.extra["old_logits"] = old_logits
    advantages = torch.randn(m.shape, generator=torch.Generator().manual_seed(4)) * m
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    penalty, passed = AdaptiveKLPenalty(1.0, 0.01), []
    rule = penalty.update
    penalty.update = lambda kl, n_steps=1: (passed.append(kl), rule(kl, n_steps))[1]

    class Run:
        def check_finite(self, *args, **kwargs):
            pass

        def autocast(self):
            return contextlib.nullcontext()

    out = ppo_update(cfg, ac, optimizer, rollout, advantages, None, rollout.ref_logprobs, 0.0, penalty,
                     torch.Generator().manual_seed(5), Run(), 1)
    with torch.no_grad():
        new_logits = policy(rollout.input_ids, rollout.attention_mask)[:, P - 1 : -1] / 0.8  # (B,R,V)
    old_lp, new_lp = torch.log_softmax(old_logits.double(), -1), torch.log_softmax(new_logits.double(), -1)
    kl_tok = (old_lp.exp() * (old_lp - new_lp)).sum(-1)  # (B,R) KL[pi_old, pi] at every response position
    d = float((kl_tok * m).sum() / m.sum())
    assert d > 1e-3  # the policy moved
    assert len(passed) == 1 and passed[0] == pytest.approx(d, rel=1e-4, abs=1e-7)
    assert out["penalty_beta"] == penalty.value


@pytest.mark.parametrize("trainer", ["ppo", "trpo"])
@pytest.mark.parametrize("normalize", [True, False])
def test_a_critic_from_the_reward_model_starts_on_the_scale_of_the_rewards_it_predicts(sft_model, tmp_path,
                                                                                       monkeypatch, normalize,
                                                                                       trainer):
    """PPO and TRPO feed the critic (r - mean) / std when reward_normalize is on: the critic initialised
    from the reward model must then output (r_phi(x, y_<=t) - mean) / std at every position, and r_phi
    itself when it is off."""
    import minirlhf.trainers.rl_run as rl_run
    import minirlhf.trainers.trpo as trpo_module
    from minirlhf.saving import save_model

    rm, tok, template, meta = load_model(sft_model, kind="reward")
    rm.reward_mean.fill_(0.7)
    rm.reward_std.fill_(2.5)
    save_model(tmp_path / "rm", rm, tok, template, meta)
    seen = {}
    make_rollout, advantages = rl_run.make_rollout, rl_run.compute_advantages
    monkeypatch.setattr(rl_run, "make_rollout", lambda *a, **k: seen.setdefault("rollout", make_rollout(*a, **k)))
    # both trainers reach GAE through rl_run.rewards_and_advantages -> rl_run.compute_advantages
    monkeypatch.setattr(rl_run, "compute_advantages", lambda cfg, rewards, values, *a: (
        seen.setdefault("values", values.clone()), advantages(cfg, rewards, values, *a))[1])
    kw = dict(reward=str(tmp_path / "rm"), critic_init="reward", iterations=1, reward_normalize=normalize,
              eval_prompts=2)
    if trainer == "ppo":
        ppo(ppo_cfg(sft_model, tmp_path / "ppo", **kw))
    else:
        trpo_module.trpo(trpo_module.TRPOConfig(run=run_cfg(tmp_path / "trpo"), policy=str(sft_model), batch_size=8,
                                                critic_minibatch_size=4, **kw))
    r, P = seen["rollout"], seen["rollout"].prompt_width
    with torch.no_grad():
        raw = rm(r.input_ids, r.attention_mask)[:, P - 1 : -1]  # (B,R) r_phi of the prefix before each token
    expected = (raw - 0.7) / 2.5 if normalize else raw
    torch.testing.assert_close(seen["values"] * r.mask, expected * r.mask, rtol=0, atol=1e-5)



def test_ppo_writes_samples_whose_numbers_fit_together(sft_model, tmp_path):
    """samples.jsonl at the first iteration and at each evaluation, resumed runs included: per response,
    one number per token, and the numbers obey the reward they were built from,
    sum_t reward_t = score - beta * sum_t kl_t; with gamma = lambda = 1 and no whitening,
    advantage_t + value_t = the rewards from t to the end (GAE with lambda = 1 is the Monte-Carlo return)."""
    from minirlhf.samples import read_samples

    cfg = ppo_cfg(sft_model, tmp_path / "ppo", iterations=4, eval_every=2, lam=1.0, whiten_advantages=False,
                  log_samples=3)
    cfg.kl.adaptive = False
    ppo(cfg)
    rows, problems = read_samples(tmp_path / "ppo")
    assert problems == [] and [r["step"] for r in rows] == [1] * 3 + [2] * 3 + [4] * 3
    metrics = {r["step"]: r for r in read_metrics(tmp_path / "ppo" / "metrics.jsonl")}
    for row in rows:
        n = len(row["tokens"])
        assert n > 0 and all(len(row[k]) == n for k in ("advantage", "kl", "value", "reward"))
        beta = metrics[row["step"]]["kl_coef"]
        assert abs(sum(row["reward"]) - (row["score"] - beta * sum(row["kl"]))) < 1e-4
        to_go = [sum(row["reward"][t:]) for t in range(n)]
        assert all(abs(a + v - g) < 1e-4 for a, v, g in zip(row["advantage"], row["value"], to_go))
    # and `minirlhf report` shows them: the command line on the run folder, one self-contained page
    import html
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "minirlhf.cli", "report", str(tmp_path / "ppo")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "ppo" / "report.html").read_text()
    assert html.escape(rows[-1]["prompt"]) in page and "<svg" in page and "http://" not in page
