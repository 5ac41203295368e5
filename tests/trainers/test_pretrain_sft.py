"""Pretraining and SFT end to end on a tiny model, and exact resume."""

import pytest
import torch

from minirlhf.checkpoint import load_tensors
from minirlhf.logger import read_metrics
from minirlhf.saving import load_model
from minirlhf.trainers.pretrain import pretrain
from minirlhf.trainers.sft import sft

from tiny_configs import crash_then_resume, pretrain_cfg, sft_cfg


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    torch.set_num_threads(1)
    pretrain(pretrain_cfg(out, steps=10))
    return out / "model"


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def test_pretrain_writes_a_loadable_model_and_lowers_the_loss(base):
    rows = read_metrics(base.parent / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert rows[-1]["loss"] < rows[0]["loss"]
    model, tok, template, meta = load_model(base)
    assert meta["task"] == {"name": "arithmetic", "args": ["max_operand=9", "max_test=20"]}
    assert template.name == "plain" and model.config.vocab_size == tok.vocab_size


@pytest.mark.parametrize("lora", [False, True])
def test_sft_trains_only_what_it_should(base, tmp_path, lora):
    cfg = sft_cfg(base, tmp_path / "sft")
    cfg.lora.enabled = lora
    result = sft(cfg)
    assert "eval/accuracy" in result and "eval_t1/accuracy" in result and "eval/rouge_l" in result
    assert result["trainable"].endswith("%")
    frac = float(result["trainable"].split(",")[-1].strip(" %"))
    assert (frac < 10) if lora else frac == 100.0
    sft_model, *_ = load_model(tmp_path / "sft" / "model")
    pre, *_ = load_model(base)
    changed = {n for (n, a), (_, b) in zip(sft_model.named_parameters(), pre.named_parameters())
               if not torch.equal(a, b)}
    if lora:  # merged adapters touch only the query and value projections
        assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)
    else:
        assert "wte.weight" in changed and "h.0.mlp.c_fc.weight" in changed


def test_sft_prints_its_sample_answers_once_at_the_end(base, tmp_path, capsys):
    cfg = sft_cfg(base, tmp_path / "sft", steps=5)  # evaluations at steps 3 and 5
    cfg.samples, cfg.eval_every = 2, 3
    sft(cfg)
    out = capsys.readouterr().out
    assert out.count("(reference:") == 2  # two samples, printed once
    rows = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [3, 5]  # while both evaluations ran


def test_interrupted_and_resumed_sft_matches_an_uninterrupted_run(base, tmp_path, monkeypatch):
    full = sft_cfg(base, tmp_path / "full", steps=6, save_every=2)
    sft(full)
    # The same run, crashing after step 3 (its last checkpoint is step 2), then resumed.
    import minirlhf.trainers.sft as sft_module

    part = sft_cfg(base, tmp_path / "part", steps=6, save_every=2)
    crash_then_resume(monkeypatch, sft_module, "clip_grad_norm", 4, sft, part)
    a = without_time(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = without_time(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    assert a == b
    wa = load_tensors(tmp_path / "full" / "model" / "model.safetensors")
    wb = load_tensors(tmp_path / "part" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_and_resumed_pretraining_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    import minirlhf.trainers.pretrain as pretrain_module

    pretrain(pretrain_cfg(tmp_path / "full", steps=6, save_every=2))
    part = pretrain_cfg(tmp_path / "part", steps=6, save_every=2)
    crash_then_resume(monkeypatch, pretrain_module, "clip_grad_norm", 4, pretrain, part)
    assert without_time(read_metrics(tmp_path / "full" / "metrics.jsonl")) == \
        without_time(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    wa = load_tensors(tmp_path / "full" / "model" / "model.safetensors")
    wb = load_tensors(tmp_path / "part" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
