"""The DPO trainer on a tiny model: closed forms at initialisation (policy = reference), one
concatenated forward pass, reference log-probs computed once per pair and equal to the starting
model's, soft labels as conservative DPO, online rounds judged correctly, and exact resume."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import minirlhf.trainers.dpo as dpo_module
from minirlhf.checkpoint import load_tensors
from minirlhf.data import load_preferences, write_jsonl
from minirlhf.logger import read_metrics
from minirlhf.logprobs import sequence_logprobs
from minirlhf.lora import apply_lora, lora_layers
from minirlhf.saving import load_model
from minirlhf.tasks import get_task
from minirlhf.collection import round_file
from minirlhf.trainers.common import make_optimizer
from minirlhf.trainers.dpo import (DPOConfig, DPOLossConfig, build_pool, dpo, dpo_batch_losses, dpo_step,
                                   reference_logps)
from minirlhf.trainers.pretrain import pretrain
from minirlhf.trainers.sft import sft

from tiny_configs import TASK, pretrain_cfg, run_cfg, sft_cfg

TINY_TASK = get_task(TASK.name, max_operand=9, max_test=20)


def gold_pairs(n, offset=0):
    """Correct answer over a wrong one (one- and two-digit answers, so rows differ in length)."""
    rows = []
    for p in TINY_TASK.prompts("train")[offset : offset + n]:
        right = int(TINY_TASK.reference(p))
        wrong = right + 11 if len(rows) % 2 else right + 1
        rows.append({"prompt": p, "chosen": f" {right}", "rejected": f" {wrong}"})
    return rows


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """A tiny pretrained + SFT model (gets some answers right) and preference files."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dpo")
    cfg = pretrain_cfg(root / "pt", steps=40)
    cfg.optim.lr = 1e-2
    pretrain(cfg)
    s = sft_cfg(root / "pt" / "model", root / "sft", steps=40)
    s.optim.lr, s.eval_every = 1e-2, 1000
    sft(s)
    (root / "prefs").mkdir()
    write_jsonl(root / "prefs" / "train.jsonl", gold_pairs(24))
    write_jsonl(root / "prefs" / "test.jsonl", gold_pairs(6, offset=24))
    return root


def dpo_cfg(init, out, **kw):
    cfg = DPOConfig(run=run_cfg(out, **kw.pop("run", {})), init=str(init / "sft" / "model"),
                    data=str(init / "prefs" / "train.jsonl"), batch_size=4, eval_every=3, eval_prompts=8)
    cfg.optim.warmup_steps = 0
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def tiny_model(init, lora=True, dtype=torch.float64):
    model, tok, template, _ = load_model(init / "sft" / "model")
    model = model.to(dtype)
    if lora:
        apply_lora(model, r=4, alpha=8)
    return model, tok, template


# ---------------------------------------------------------------------------------------------
# closed forms at initialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("loss_type,beta,eps,expected", [
    ("sigmoid", 0.1, 0.0, math.log(2)),          # -log sigmoid(0)
    ("sigmoid", 0.5, 0.2, math.log(2)),          # -(1-eps) log s(0) - eps log s(0)
    ("ipo", 0.1, 0.0, (1 / (2 * 0.1)) ** 2),     # (0 - 1/(2 beta))^2
    ("hinge", 0.3, 0.0, 1.0),                    # max(0, 1 - beta * 0)
])
def test_policy_equal_to_reference_gives_the_closed_form_loss_and_zero_rewards(init, lora, loss_type, beta, eps,
                                                                               expected):
    model, tok, template = tiny_model(init, lora)
    rows = gold_pairs(8)
    cfg = DPOConfig(batch_size=3)  # the reference is scored in batches of 3, the policy in one of 8: other padding
    pool = build_pool(model, rows, tok, template, cfg, "cpu")
    batch = dpo_module.collate_preferences(tok, template, rows, model.config.block_size)
    loss_cfg = DPOLossConfig(beta=beta, loss_type=loss_type, label_smoothing=eps)
    losses, rc, rr, pc, pr = dpo_batch_losses(model, batch, pool.ref_chosen, pool.ref_rejected, loss_cfg, "cpu")
    assert losses.shape == (8,)
    torch.testing.assert_close(losses, torch.full((8,), expected, dtype=torch.float64), rtol=0, atol=1e-9)
    assert rc.abs().max() < 1e-9 and rr.abs().max() < 1e-9  # float64: only rounding separates policy and reference
    assert (pc < 0).all() and (pr < 0).all()  # real log-probs, not zeros


@pytest.mark.parametrize("lora", [True, False])
def test_the_first_logged_step_is_log_2_with_zero_rewards(init, tmp_path, lora):
    cfg = dpo_cfg(init, tmp_path / "run", steps=2, eval_at_start=False)
    cfg.lora.enabled = lora
    result = dpo(cfg)
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/margins"]) < 1e-5
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert key in first
    assert {"eval/accuracy", "eval_t1/accuracy", "eval/rewards/accuracies", "eval/loss"} <= set(result)


@pytest.mark.parametrize("lora", [True, False])
def test_with_dropout_the_first_logged_step_is_still_log_2(init, tmp_path, lora):
    """Dropout in the model and in the adapters: the policy's and the reference's log-probs are both
    computed with dropout off, so at step 1 (policy = reference) the loss is -log sigmoid(0) = log 2."""
    from minirlhf.model import GPT, GPTConfig
    from minirlhf.saving import save_model

    model, tok, template, meta = load_model(init / "sft" / "model")
    noisy = GPT(GPTConfig.from_dict({**model.config.to_dict(), "dropout": 0.5}))
    noisy.load_state_dict(model.state_dict())
    save_model(tmp_path / "noisy", noisy, tok, template, meta)
    cfg = dpo_cfg(init, tmp_path / "run", steps=1, eval_at_start=False, eval_data="none")
    cfg.init = str(tmp_path / "noisy")
    cfg.lora.enabled, cfg.lora.dropout = lora, 0.5
    dpo(cfg)
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(first["rewards/chosen"]) < 1e-6 and abs(first["rewards/rejected"]) < 1e-6


# ---------------------------------------------------------------------------------------------
# the step: one concatenated pass, and the loss falls on a fixed batch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type,share_prompt", [("sigmoid", True), ("ipo", True), ("hinge", True),
                                                    ("sigmoid", False)])
def test_loss_falls_on_a_fixed_batch_with_one_forward_pass_per_step(init, loss_type, share_prompt):
    torch.manual_seed(0)
    model, tok, template = tiny_model(init, lora=False, dtype=torch.float32)
    rows = gold_pairs(4)
    cfg = DPOConfig(batch_size=4, dpo=DPOLossConfig(beta=0.1, loss_type=loss_type), share_prompt=share_prompt)
    cfg.optim.lr = 1e-2
    pool = build_pool(model, rows, tok, template, cfg, "cpu")
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optim)
    history = [dpo_step(model, opt, params, rows, pool.ref_chosen, pool.ref_rejected, cfg, tok, template, 1e-2)
               for _ in range(25)]
    # one pass a step: 4 rows x y_w y_l (share_prompt), or 4 chosen + 4 rejected rows
    assert len(calls) == 25 and all(shape[0] == (4 if share_prompt else 8) for shape in calls)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["rewards/accuracies"] == 1.0 and history[-1]["rewards/margins"] > 0


def test_soft_labels_are_conservative_dpo_with_eps_one_minus_prob(init):
    """With prob p the loss is the Bradley-Terry cross-entropy -p log s(z) - (1-p) log s(-z),
    z = beta h = r_chosen - r_rejected (the implicit rewards), computed here independently."""
    torch.manual_seed(0)
    model, tok, template = tiny_model(init, lora=True)
    for m in lora_layers(model).values():  # move the policy away from the reference
        torch.nn.init.normal_(m.lora_B, std=0.3)
    rows = [dict(r, prob=p) for r, p in zip(gold_pairs(4), (1.0, 0.75, 0.5, 0.9))]
    cfg = DPOConfig(dpo=DPOLossConfig(beta=1.0))
    pool = build_pool(model, rows, tok, template, cfg, "cpu")
    batch = dpo_module.collate_preferences(tok, template, rows, model.config.block_size)
    losses, rc, rr, _, _ = dpo_batch_losses(model, batch, pool.ref_chosen, pool.ref_rejected, cfg.dpo, "cpu")
    z = rc - rr
    assert z.abs().min() > 1e-3  # the soft label matters only where z != 0
    p = torch.tensor([1.0, 0.75, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(losses.detach(), -p * F.logsigmoid(z) - (1 - p) * F.logsigmoid(-z))
    cfg.dpo.soft_labels = False  # prob ignored: plain DPO
    losses, *_ = dpo_batch_losses(model, batch, pool.ref_chosen, pool.ref_rejected, cfg.dpo, "cpu")
    torch.testing.assert_close(losses.detach(), -F.logsigmoid(z))


# ---------------------------------------------------------------------------------------------
# the reference
# ---------------------------------------------------------------------------------------------


def each_pair_alone(model, tok, template, rows):
    """log pi(y_w|x), log pi(y_l|x) of each pair, one unpadded sequence at a time."""
    out = []
    with torch.no_grad():
        for row in rows:
            pair = []
            for y in (row["chosen"], row["rejected"]):
                ids, n_prompt = template.encode(tok, row["prompt"], y)
                x = torch.tensor([ids])
                mask = torch.ones_like(x)
                lmask = torch.zeros_like(x)
                lmask[0, n_prompt:] = 1
                pair.append(sequence_logprobs(model, x, mask, lmask).item())
            out.append(pair)
    return torch.tensor(out, dtype=torch.float64)  # (N, 2)


def test_lora_reference_equals_the_initial_models_log_probs(init):
    rows = gold_pairs(6)
    plain, tok, template = tiny_model(init, lora=False)
    expected = each_pair_alone(plain, tok, template, rows)
    model, _, _ = tiny_model(init, lora=True)
    for m in lora_layers(model).values():  # a trained adapter: the policy is no longer the base model
        torch.nn.init.normal_(m.lora_B, std=0.1)
    ref_c, ref_r = reference_logps(model, rows, tok, template, model.config.block_size, batch_size=4)
    torch.testing.assert_close(torch.stack([ref_c, ref_r], 1), expected, rtol=0, atol=1e-9)
    policy = each_pair_alone(model, tok, template, rows)
    assert (policy - expected).abs().max() > 1e-3  # the adapters are on outside lora_disabled


@pytest.mark.parametrize("lora", [True, False])
def test_reference_log_probs_are_computed_once_per_pair(init, tmp_path, monkeypatch, lora):
    seen = []
    original = dpo_module.reference_logps

    def counting(model, rows, *args, **kwargs):
        seen.extend(json.dumps(r, sort_keys=True) for r in rows)
        return original(model, rows, *args, **kwargs)

    monkeypatch.setattr(dpo_module, "reference_logps", counting)
    cfg = dpo_cfg(init, tmp_path / "run", epochs=3.0, eval_at_start=False)  # 3 passes over 24 pairs
    cfg.lora.enabled = lora
    result = dpo(cfg)
    assert result["steps"] == 18
    n_train, n_test = len(load_preferences(cfg.data)), len(load_preferences(init / "prefs" / "test.jsonl"))
    assert len(seen) == n_train + n_test == len(set(seen))  # each pair once, train and held-out


# ---------------------------------------------------------------------------------------------
# online rounds
# ---------------------------------------------------------------------------------------------


def test_online_rounds_judge_fresh_samples_against_the_unchanged_reference(init, tmp_path, monkeypatch):
    """Full fine-tuning (the harder case: a frozen copy is the reference). Every pair of every
    round is judged by the gold check, and its reference log-probs are the starting model's."""
    scored = []
    original = dpo_module.reference_logps

    def recording(model, rows, *args, **kwargs):
        out = original(model, rows, *args, **kwargs)
        scored.append((rows, out))
        return out

    monkeypatch.setattr(dpo_module, "reference_logps", recording)
    cfg = dpo_cfg(init, tmp_path / "run", rounds=2, steps_per_round=2, prompts_per_round=8, samples_per_prompt=4,
                  tie_policy="half", eval_at_start=False, eval_data="none", batch_size=64)  # every pair, every step
    cfg.lora.enabled = False
    cfg.optim.lr = 1e-2
    dpo(cfg)
    rows_logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "round" in r]
    assert [r["round"] for r in rows_logged] == [1, 2] and [r["step"] for r in rows_logged] == [1, 3]
    decided = 0
    for r in (1, 2):
        rows = load_preferences(round_file(cfg.run.out, r))
        assert len(rows) == rows_logged[r - 1]["round/pairs"] > 0
        for row in rows:
            sc, sr = TINY_TASK.score(row["prompt"], row["chosen"]), TINY_TASK.score(row["prompt"], row["rejected"])
            assert row["chosen"] != row["rejected"]
            if row["tie"]:
                assert row["prob"] == 0.5 and sc == sr
            else:
                assert row["prob"] == 1.0 and (sc, sr) == (1.0, 0.0)
                decided += 1
    assert decided > 0
    assert len(scored) == 2  # once per round
    start, tok, template = tiny_model(init, lora=False)
    for rows, (ref_c, ref_r) in scored:
        expected = each_pair_alone(start, tok, template, rows)
        torch.testing.assert_close(torch.stack([ref_c, ref_r], 1).double(), expected, rtol=0, atol=1e-5)
    final = load_tensors(tmp_path / "run" / "model" / "model.safetensors")
    first = load_tensors(init / "sft" / "model" / "model.safetensors")
    assert not torch.equal(final["h.0.mlp.c_fc.weight"], first["h.0.mlp.c_fc.weight"])  # the policy did move


# ---------------------------------------------------------------------------------------------
# exact resume
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("online", [False, True])
def test_interrupted_and_resumed_dpo_matches_an_uninterrupted_run(init, tmp_path, monkeypatch, online):
    def cfg_for(out):
        kw = dict(rounds=2, steps_per_round=3, prompts_per_round=6, tie_policy="half") if online else dict(steps=6)
        cfg = dpo_cfg(init, tmp_path / out, run={"save_every": 2}, **kw)
        cfg.lora.enabled = not online
        if online:  # big steps, so that the policy of step 2 samples other pairs than that of step 0
            cfg.optim.lr, cfg.batch_size = 5e-2, 16
        return cfg

    dpo(cfg_for("full"))
    original = dpo_module.clip_grad_norm
    calls = {"n": 0}

    def crash_at_step_four(params, max_norm):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return original(params, max_norm)

    part = cfg_for("part")
    monkeypatch.setattr(dpo_module, "clip_grad_norm", crash_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        dpo(part)
    monkeypatch.setattr(dpo_module, "clip_grad_norm", original)
    part.run.resume = True  # the checkpoint is step 2; online, that is the middle of round 1 (steps 1-3)
    dpo(part)
    a = without_time(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = without_time(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    assert [r["step"] for r in a] == list(range(0, 7))
    assert a == b
    if online:  # round 1's pairs read back, round 2's sampled again by the resumed run: the same pairs
        for r in (1, 2):
            assert (load_preferences(round_file(tmp_path / "full", r))
                    == load_preferences(round_file(tmp_path / "part", r)))
    wa = load_tensors(tmp_path / "full" / "model" / "model.safetensors")
    wb = load_tensors(tmp_path / "part" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_bad_settings_and_data_raise_clear_errors(init, tmp_path):
    with pytest.raises(ValueError, match="data: preference file .* not found"):
        dpo(dpo_cfg(init, tmp_path / "a", data=str(tmp_path / "missing.jsonl")))
    cfg = dpo_cfg(init, tmp_path / "b")
    cfg.dpo.beta = 0.0
    with pytest.raises(ValueError, match="dpo.beta"):
        dpo(cfg)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        dpo(dpo_cfg(init, tmp_path / "c", rounds=1, samples_per_prompt=1))
    cfg = dpo_cfg(init, tmp_path / "e", rounds=1, tie_policy="half")
    cfg.dpo.loss_type = "hinge"
    with pytest.raises(ValueError, match="tie_policy: 'half' .* loss_type 'hinge'"):
        dpo(cfg)
    soft = tmp_path / "soft.jsonl"
    write_jsonl(soft, [dict(gold_pairs(1)[0], prob=0.7)])
    cfg = dpo_cfg(init, tmp_path / "d", data=str(soft))
    cfg.dpo.loss_type = "ipo"
    with pytest.raises(ValueError, match="row 0 has prob 0.7.*loss_type='ipo'"):
        dpo(cfg)
