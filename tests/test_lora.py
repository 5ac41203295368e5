"""LoRA: the start equals the base, only adapters train, counts, merge round trip, lora_disabled."""
import copy

import pytest
import torch

from minirlhf.lora import (LoRALinear, apply_lora, load_lora_state_dict, lora_disabled, lora_state_dict,
                           merge_lora, trainable_summary, unmerge_lora)
from minirlhf.model import GPT, GPTConfig


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=29, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def randomise_B(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_lora_linear_is_the_formula():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 4)
    lora = LoRALinear(base, r=2, alpha=3.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(5, 6)
    expected = x @ base.weight.T + base.bias + (3.0 / 2) * x @ lora.lora_A.T @ lora.lora_B.T
    assert torch.allclose(lora(x), expected, atol=1e-6)


def test_start_equals_base_and_only_lora_trains():
    base = tiny()
    model = apply_lora(copy.deepcopy(base), r=4, alpha=8)
    x = torch.randint(0, 29, (3, 10))
    assert torch.equal(model(x), base(x))  # B = 0 exactly
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    # One optimisation step changes adapter parameters only.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(x).logsumexp(-1).mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        if n.endswith(("lora_A", "lora_B")):
            continue
        assert torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.endswith("lora_B"))


def test_trainable_count_is_sum_of_r_in_plus_out():
    model = apply_lora(tiny(), r=4, alpha=8, targets=["q_proj", "v_proj", "mlp.c_fc"])
    expected = 0
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            expected += 4 * (m.base.in_features + m.base.out_features)
    got = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # 2 layers x (q: 4*(16+16), v: 4*(16+16), c_fc: 4*(16+64))
    assert got == expected == 2 * (128 + 128 + 320)
    total = sum(p.numel() for p in model.parameters())
    assert trainable_summary(model) == f"{got:,} trainable of {total:,}, {100 * got / total:.2f}%"


def test_default_targets_are_query_and_value():
    model = apply_lora(tiny())
    names = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert names == {f"h.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}


def test_merge_then_unmerge_round_trip():
    model = apply_lora(tiny(), r=2, alpha=4)
    randomise_B(model)
    x = torch.randint(0, 29, (2, 12))
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(x)
    merge_lora(model)
    assert torch.allclose(model(x), out, atol=1e-5)
    assert not torch.equal(model.h[0].attn.q_proj.base.weight, w0["h.0.attn.q_proj.base.weight"])
    unmerge_lora(model)
    for n, p in model.named_parameters():
        assert torch.allclose(p, w0[n], atol=1e-6), n
    assert torch.allclose(model(x), out, atol=1e-5)


def test_lora_disabled_equals_a_copy_of_the_base():
    base = tiny()
    model = apply_lora(copy.deepcopy(base), r=4, alpha=16)
    randomise_B(model)
    x = torch.randint(0, 29, (3, 9))
    tuned = model(x)
    assert not torch.allclose(tuned, base(x), atol=1e-3)
    with lora_disabled(model):
        assert torch.equal(model(x), base(x))
    assert torch.equal(model(x), tuned)  # switched back on after the block
    with pytest.raises(RuntimeError):  # restored even when the block raises
        with lora_disabled(model):
            raise RuntimeError("boom")
    assert torch.equal(model(x), tuned)
    merge_lora(model)
    with pytest.raises(RuntimeError, match="merged"):
        with lora_disabled(model):
            pass


def test_adapter_only_state_round_trip():
    a = apply_lora(tiny(), r=2, alpha=4)
    randomise_B(a, seed=3)
    tensors = lora_state_dict(a)
    assert set(tensors) == {f"h.{i}.attn.{p}.lora_{m}" for i in range(2) for p in ("q_proj", "v_proj")
                            for m in "AB"}
    b = apply_lora(tiny(), r=2, alpha=4)
    load_lora_state_dict(b, tensors)
    x = torch.randint(0, 29, (2, 8))
    assert torch.equal(a(x), b(x))
    c = apply_lora(tiny(), r=3, alpha=4)
    with pytest.raises(ValueError, match="shape"):
        load_lora_state_dict(c, tensors)


def test_bad_targets_name_the_layers():
    with pytest.raises(ValueError, match="match no nn.Linear"):
        apply_lora(tiny(), targets=["query"])
