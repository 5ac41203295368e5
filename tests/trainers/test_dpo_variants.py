"""SimPO, ORPO and KTO through the DPO trainer (dpo.loss_type): the reference-free losses never compute
reference log-probs and their first logged loss is the objective computed here by hand from the batch's
log-probs; KTO at step 1 with LoRA (policy = reference, z_0 = 0) gives lambda_y / 2 per example."""

import pytest
import torch
import torch.nn.functional as F

import minirlhf.trainers.dpo as dpo_module
from minirlhf.logger import read_metrics
from minirlhf.trainers.dpo import DPOLossConfig, check_config, dpo

from test_dpo import dpo_cfg, init  # noqa: F401  (the module fixture: a tiny SFT model and preference files)


def first_step_spy(monkeypatch):
    """Record the policy log-probs and the batch of the first training step's forward pass."""
    seen = []
    original = dpo_module.concatenated_logps

    def spy(model, batch, device):
        pc, pr = original(model, batch, device)
        if torch.is_grad_enabled():  # the training forward (not the no-grad evaluation)
            seen.append((pc.detach().clone(), pr.detach().clone(), batch["loss_mask"].clone()))
        return pc, pr

    monkeypatch.setattr(dpo_module, "concatenated_logps", spy)
    monkeypatch.setattr(dpo_module, "reference_logps", lambda *a, **k: pytest.fail("reference log-probs computed"))
    return seen


def lengths(loss_mask):
    n = loss_mask.sum(-1).double()
    return n[: len(n) // 2], n[len(n) // 2 :]


def test_simpo_is_reference_free_and_its_first_loss_is_simpo_by_hand(init, tmp_path, monkeypatch):  # noqa: F811
    """Catches: the reference pass still run; no length normalisation (summed log-probs); gamma or beta
    not applied; a DPO loss computed instead."""
    seen = first_step_spy(monkeypatch)
    beta, gamma = 2.0, 0.7
    cfg = dpo_cfg(init, tmp_path / "simpo", steps=2, eval_at_start=False,
                  dpo=DPOLossConfig(beta=beta, loss_type="simpo", simpo_gamma=gamma))
    dpo(cfg)
    first = read_metrics(tmp_path / "simpo" / "metrics.jsonl")[0]
    pc, pr, lm = seen[0]
    lc, lr = lengths(lm)
    assert not torch.equal(lc, lr)  # one- and two-digit answers: the normalisation is not vacuous
    hand = -F.logsigmoid(beta * pc.double() / lc - beta * pr.double() / lr - gamma).mean()
    assert first["loss"] == pytest.approx(float(hand), abs=1e-5)
    assert first["rewards/chosen"] == pytest.approx(float((beta * pc.double() / lc).mean()), abs=1e-5)


def test_orpo_is_reference_free_and_its_first_loss_is_orpo_by_hand(init, tmp_path, monkeypatch):  # noqa: F811
    """Catches: the reference pass still run; the SFT term missing or not per token; the odds ratio on
    summed instead of mean log-probs; lambda not applied."""
    seen = first_step_spy(monkeypatch)
    lam = 0.3
    cfg = dpo_cfg(init, tmp_path / "orpo", steps=2, eval_at_start=False,
                  dpo=DPOLossConfig(loss_type="orpo", orpo_lambda=lam))
    dpo(cfg)
    first = read_metrics(tmp_path / "orpo" / "metrics.jsonl")[0]
    pc, pr, lm = seen[0]
    lc, lr = lengths(lm)
    mc, mr = pc.double() / lc, pr.double() / lr
    log_odds = lambda m: m - torch.log(1 - torch.exp(m))  # noqa: E731
    hand = (-mc + lam * -F.logsigmoid(log_odds(mc) - log_odds(mr))).mean()
    assert first["loss"] == pytest.approx(float(hand), abs=1e-5)


def test_kto_at_step_one_with_lora_is_lambda_over_two_per_example(init, tmp_path, monkeypatch):  # noqa: F811
    """Catches: chosen/rejected not split into desirable/undesirable with their own lambda (one lambda
    for both gives 0.5, not (1 + 1.5) / 4); the reference not subtracted (sigmoid(beta log pi) != 1/2);
    z_0 estimated on the matched pairs instead of mismatched ones."""
    calls = []
    original = dpo_module.kto_reference_point
    original_logps = dpo_module.concatenated_logps
    matched = []

    def spy_logps(model, batch, device):
        out = original_logps(model, batch, device)
        if torch.is_grad_enabled():
            matched.append(torch.cat(out).detach().clone())
        return out

    def spy(policy, reference):
        calls.append(policy.clone())
        return original(policy, reference)

    monkeypatch.setattr(dpo_module, "concatenated_logps", spy_logps)
    monkeypatch.setattr(dpo_module, "kto_reference_point", spy)
    cfg = dpo_cfg(init, tmp_path / "kto", steps=2, eval_at_start=False,
                  dpo=DPOLossConfig(beta=0.1, loss_type="kto", kto_lambda_d=1.0, kto_lambda_u=1.5))
    result = dpo(cfg)
    first = read_metrics(tmp_path / "kto" / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx((1.0 + 1.5) / 4, abs=1e-6)
    assert abs(first["rewards/chosen"]) < 1e-6 and abs(first["rewards/rejected"]) < 1e-6
    assert calls and calls[0].shape == matched[0].shape and not torch.allclose(calls[0], matched[0])
    assert "eval/loss" in result  # the held-out pairs are scored with the same loss


@pytest.mark.parametrize("dpo_kw,match", [
    (dict(loss_type="kto"), "batch_size"),
    (dict(loss_type="orpo", orpo_lambda=-1.0), "dpo.orpo_lambda"),
    (dict(loss_type="kto", kto_lambda_u=0.0), "dpo.kto_lambda_u"),
    (dict(loss_type="simpo", label_smoothing=0.1), "dpo.label_smoothing"),
])
def test_bad_variant_settings_name_the_key(init, tmp_path, dpo_kw, match):  # noqa: F811
    cfg = dpo_cfg(init, tmp_path / "bad", dpo=DPOLossConfig(**dpo_kw))
    if dpo_kw.get("loss_type") == "kto" and len(dpo_kw) == 1:
        cfg.batch_size = 1
    with pytest.raises(ValueError, match=match):
        check_config(cfg)


def test_kto_on_unpaired_data_uses_each_rows_label(init, tmp_path, monkeypatch):  # noqa: F811
    """--unpaired-data: the labels reach kto_loss as the desirable flags of the step's rows, and at step 1
    with LoRA every example's loss is lambda_y / 2. Catches: labels ignored or inverted (the logged loss
    would weight the other lambda), the reference not subtracted, a paired file read instead."""
    from minirlhf.data import load_preferences, write_jsonl
    pairs = load_preferences(init / "prefs" / "train.jsonl")
    rows = []
    for i, p in enumerate(pairs):  # 2 desirable for 1 undesirable, so the lambdas do not average out
        rows.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        if i % 2:
            rows.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    write_jsonl(tmp_path / "unpaired.jsonl", rows)
    seen = []
    original = dpo_module.kto_loss
    monkeypatch.setattr(dpo_module, "kto_loss", lambda pol, ref, des, *a: seen.append(des.clone())
                        or original(pol, ref, des, *a))
    steps = []
    original_step = dpo_module.dpo_step
    monkeypatch.setattr(dpo_module, "dpo_step", lambda model, opt, params, rows_step, *a, **k: steps.append(
        [r["label"] for r in rows_step]) or original_step(model, opt, params, rows_step, *a, **k))
    ld, lu = 1.0, 1.5
    cfg = dpo_cfg(init, tmp_path / "kto_u", steps=2, eval_at_start=False, unpaired_data=str(tmp_path / "unpaired.jsonl"),
                  data="", dpo=DPOLossConfig(beta=0.1, loss_type="kto", kto_lambda_d=ld, kto_lambda_u=lu))
    dpo(cfg)
    first = read_metrics(tmp_path / "kto_u" / "metrics.jsonl")[0]
    labels = torch.tensor(steps[0])
    assert torch.equal(seen[0].cpu(), labels)
    assert 0 < int(labels.sum()) < len(labels)  # both kinds in the batch
    expected = float(torch.where(labels, ld / 2, lu / 2).mean())
    assert first["loss"] == pytest.approx(expected, abs=1e-6)
