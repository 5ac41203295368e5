"""GRPO's issue-17 options run through the trainer: GSPO's sequence ratio, DAPO's clip-higher, dynamic
sampling and overlong punishment. Each test names the deliberate break it catches."""
import pytest
import torch

from minirlhf.config import ConfigError
from minirlhf.logger import read_metrics
from minirlhf.objectives import nonconstant_groups, overlong_penalty
from minirlhf.trainers import rl_run
from minirlhf.trainers.grpo import GRPOConfig, grpo
import minirlhf.trainers.grpo as grpo_module

from tiny_configs import run_cfg


def grpo_cfg(policy, out, **kw):
    base = dict(run=run_cfg(out), policy=str(policy), iterations=2, prompts_per_iteration=4, group_size=4,
                minibatch_size=8, eval_every=100, eval_prompts=6)
    base.update(kw)
    return GRPOConfig(**base)


def test_sequence_ratio_minimises_gspo_loss_with_the_paper_clip(sft_model, tmp_path, monkeypatch):
    """Catches: ratio=sequence still using ppo_policy_loss (token ratio); the GSPO clip ranges not passed
    (or the token clip_eps passed instead); the loss handed to the optimizer differing from GSPO's."""
    calls, stepped = [], []
    original = grpo_module.gspo_policy_loss
    original_step = grpo_module.gradient_step

    def spy(logp, old, adv, mask, low, high):
        out = original(logp, old, adv, mask, low, high)
        calls.append(dict(logp=logp.detach().clone(), old=old.clone(), adv=adv.clone(), mask=mask.clone(),
                          low=low, high=high, loss=out[0].detach().clone()))
        return out

    def spy_step(optimizer, loss, *a, **k):
        stepped.append(loss.detach().clone())
        return original_step(optimizer, loss, *a, **k)

    monkeypatch.setattr(grpo_module, "gspo_policy_loss", spy)
    monkeypatch.setattr(grpo_module, "gradient_step", spy_step)
    monkeypatch.setattr(grpo_module, "ppo_policy_loss", lambda *a, **k: pytest.fail("token ratio used"))
    grpo(grpo_cfg(sft_model, tmp_path / "gspo", ratio="sequence", beta=0.0, mu=2, minibatch_size=8))
    assert calls and len(calls) == len(stepped)
    for c, loss in zip(calls, stepped):
        assert (c["low"], c["high"]) == (3e-4, 4e-4)
        torch.testing.assert_close(loss, c["loss"])  # beta = 0: the minimised loss is GSPO's
        # by hand: s_i = exp(mean_t log ratio), loss = mean_i max(-A s, -A clip(s))
        m = c["mask"]
        s = torch.exp(((c["logp"] - c["old"]) * m).sum(-1) / m.sum(-1))
        hand = torch.maximum(-c["adv"] * s, -c["adv"] * s.clamp(1 - 3e-4, 1 + 4e-4)).mean()
        torch.testing.assert_close(loss, hand)


def test_clip_higher_reaches_the_token_loss(sft_model, tmp_path, monkeypatch):
    """Catches: clip_eps_high accepted by the config but not passed to ppo_policy_loss."""
    seen = []
    original = grpo_module.ppo_policy_loss

    def spy(*a, **k):
        seen.append((a[4], k.get("clip_eps_high")))
        return original(*a, **k)

    monkeypatch.setattr(grpo_module, "ppo_policy_loss", spy)
    grpo(grpo_cfg(sft_model, tmp_path / "dapo", clip_eps_high=0.28, loss_agg="token_mean", iterations=1))
    assert seen and all(s == (0.2, 0.28) for s in seen)


def test_default_keeps_the_symmetric_clip(sft_model, tmp_path, monkeypatch):
    """Catches: a changed default (clip_eps_high must stay None, the symmetric clip)."""
    seen = []
    original = grpo_module.ppo_policy_loss
    monkeypatch.setattr(grpo_module, "ppo_policy_loss", lambda *a, **k: seen.append(k.get("clip_eps_high"))
                        or original(*a, **k))
    grpo(grpo_cfg(sft_model, tmp_path / "grpo", iterations=1))
    assert seen and all(s is None for s in seen)


def constant_in_some_groups(rollout, task):
    """A scorer whose groups alternate between constant (all 1) and varied rewards: row r of group g
    scores 1 if g is even, else r % 2, so dynamic sampling has groups to drop on every draw."""
    n = rollout.batch_size
    rows = torch.arange(n)
    group = rows // 4
    return torch.where(group % 2 == 0, torch.ones(n), (rows % 2).float())


def test_dynamic_sampling_keeps_only_groups_with_reward_variance(sft_model, tmp_path, monkeypatch):
    """Catches: the filter not applied (constant groups reach the advantages), no refill (fewer than
    prompts_per_iteration groups though the cap allows more draws), or nothing logged."""
    seen, draws = [], []
    original_adv = grpo_module.group_advantages
    original_rollout = rl_run.make_rollout

    def spy_rollout(actor, reference, scorer, *a, **k):
        draws.append(1)
        return original_rollout(actor, reference, constant_in_some_groups, *a, **k)

    monkeypatch.setattr(rl_run, "make_rollout", spy_rollout)
    monkeypatch.setattr(grpo_module, "group_advantages",
                        lambda scores, G, **k: seen.append(scores.clone()) or original_adv(scores, G, **k))
    out = tmp_path / "dyn"
    grpo(grpo_cfg(sft_model, out, dynamic_sampling=True, max_extra_draws=3, missing_eos_penalty=None))
    assert len(seen) == 2
    for scores in seen:
        assert scores.numel() == 4 * 4  # refilled to prompts_per_iteration groups
        assert bool(nonconstant_groups(scores, 4).all())  # no kept group has zero reward variance
    assert len(draws) == 2 * 2  # half the groups dropped each draw: one extra draw fills the batch
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["dynamic/dropped_groups"] for r in rows[1:]] == [4, 4]
    assert [r["dynamic/extra_draws"] for r in rows[1:]] == [1, 1]
    assert all(r["group/zero_std_share"] == 0 for r in rows[1:])


def test_overlong_penalty_is_added_to_the_score(sft_model, tmp_path, monkeypatch):
    """Catches: the penalty not added, added with the wrong sign or scale, or to responses under the
    threshold; the advantages must see the shaped scores."""
    raw, seen = [], []
    original_rollout = rl_run.make_rollout
    original_adv = grpo_module.group_advantages

    def spy_rollout(*a, **k):
        r = original_rollout(*a, **k)
        raw.append((r.scores.clone(), r.mask.sum(-1)))
        return r

    monkeypatch.setattr(rl_run, "make_rollout", spy_rollout)
    monkeypatch.setattr(grpo_module, "group_advantages",
                        lambda scores, G, **k: seen.append(scores.clone()) or original_adv(scores, G, **k))
    L, buffer, coef = 3, 2, 0.5
    grpo(grpo_cfg(sft_model, tmp_path / "long", max_new_tokens=L, overlong_buffer=buffer, overlong_penalty=coef))
    assert len(raw) == len(seen) == 2
    lengths = torch.cat([n for _, n in raw])
    assert bool((lengths == L).any())  # some response hits the budget: the check is not vacuous
    for (scores, n), shaped in zip(raw, seen):
        expected = scores - coef * torch.where(n <= L - buffer, 0.0, (n - (L - buffer)) / buffer)
        torch.testing.assert_close(shaped, expected.to(shaped.dtype))
        assert bool((shaped[n == L] == scores[n == L] - coef).all())  # at max length: -coef
    # and off by default
    assert overlong_penalty(torch.tensor([L]), L, buffer).item() == -1.0


@pytest.mark.parametrize("kw,key", [
    (dict(ratio="sequence", loss_agg="token_mean"), "loss_agg"),
    (dict(ratio="sequence", clip_eps_high=0.3), "clip_eps_high"),
])
def test_bad_variant_settings_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        GRPOConfig(**kw)


@pytest.mark.parametrize("flag,value", [("--clip-eps-high", "0"), ("--overlong-buffer", "-1"),
                                        ("--overlong-penalty", "-1"), ("--seq-clip-eps", "0"),
                                        ("--max-extra-draws", "-1")])
def test_out_of_range_options_exit_2_naming_the_flag(capsys, flag, value):
    """Catches: a new option without its range (a nonsense value would start a run)."""
    from minirlhf.cli import main
    try:
        rc = main(["grpo", f"{flag}={value}"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2 and flag in capsys.readouterr().err


def test_concatenated_rollouts_keep_every_rows_log_probs(sft_model):
    """concat_rollouts (dynamic sampling's refilled batch) re-pads parts of different prompt and response
    widths: each row's response log-probs are those it had in its own part, and the parts' global row
    ids are dropped (a subset's ids would point past the end of the new batch)."""
    from minirlhf.rollout import concat_rollouts, response_logprobs, sample
    from minirlhf.saving import load_model

    model, tok, template, _ = load_model(sft_model)
    g = torch.Generator().manual_seed(0)
    a = sample(model, tok, template, ["Q: 3+4=\nA:", "Q: 12+19=\nA:"], 5, 1.0, g, num_samples=2,
               rows=torch.arange(4), n_rows=4).select([1, 2])
    b = sample(model, tok, template, ["Q: 1+1=\nA:"], 2, 1.0, g)
    c = concat_rollouts([a]), concat_rollouts([a, b])
    assert "rows" in a.extra and all("rows" not in x.extra for x in c)
    with torch.no_grad():
        parts = [response_logprobs(model, r) * r.mask for r in (a, b)]
        whole = response_logprobs(model, c[1]) * c[1].mask
    R = whole.shape[1]
    expected = torch.cat([torch.nn.functional.pad(p, (0, R - p.shape[1])) for p in parts])
    torch.testing.assert_close(whole, expected, atol=1e-5, rtol=0)
    assert c[1].responses == a.responses + b.responses
