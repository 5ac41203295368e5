import io
import random

import numpy as np
import pytest
import torch

from minirlhf import device as dev
from minirlhf.device import autocast, resolve_device, rng_state, seed_everything, set_rng_state, set_threads


# ---------------------------------------------------------------- resolve_device

def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


def test_explicit_names_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_unavailable_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(RuntimeError, match=r"only 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def test_unavailable_mps(monkeypatch):
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    with pytest.raises(RuntimeError, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["gpu0", "", "cuda:x"])
def test_bad_names(name):
    with pytest.raises(ValueError, match="device: expected"):
        resolve_device(name)


def test_bad_type():
    with pytest.raises(TypeError, match="device"):
        resolve_device(0)


# ---------------------------------------------------------------- autocast

def test_autocast_fp32_is_a_noop_on_cpu():
    a = torch.randn(4, 4)
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        out = a @ a
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, a @ a, rtol=0, atol=0)


def test_autocast_bf16_on_cpu_multiplies_in_bf16_and_keeps_weights_fp32():
    a = torch.randn(16, 16, dtype=torch.float64).float()
    w = torch.nn.Linear(16, 16)
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        out = w(a)
    assert out.dtype == torch.bfloat16 and w.weight.dtype == torch.float32
    # the product of the bf16-rounded operands, accumulated in fp32 and rounded once to bf16
    exact = a.to(torch.bfloat16).double() @ w.weight.to(torch.bfloat16).double().t() + w.bias.to(torch.bfloat16).double()
    torch.testing.assert_close(out.double(), exact, rtol=2 ** -8, atol=1e-3)


def test_resolve_dtype(monkeypatch):
    import minirlhf.device as device

    assert device.resolve_dtype("fp32", "cpu") == "fp32" and device.resolve_dtype("bf16", "cpu") == "bf16"
    monkeypatch.setattr(device, "cpu_bf16_speedup", lambda: 3.4)  # a CPU with native bf16 matmul
    assert device.resolve_dtype("auto", "cpu") == "bf16"
    assert device.resolve_dtype("auto", torch.device("cuda")) == "fp32"  # a GPU: fp32 whatever the CPU does
    monkeypatch.setattr(device, "cpu_bf16_speedup", lambda: 0.3)  # bf16 converted in software
    assert device.resolve_dtype("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="dtype: expected 'auto', 'fp32' or 'bf16'"):
        device.resolve_dtype("fp16", "cpu")


def test_cpu_bf16_speedup_is_a_positive_ratio():
    from minirlhf.device import cpu_bf16_speedup

    assert cpu_bf16_speedup(n=32, repeats=2) > 0


def test_autocast_bad_dtype():
    with pytest.raises(ValueError, match="dtype: expected one of"):
        autocast("cpu", "fp8")


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
def test_autocast_cuda_bf16_builds_a_bfloat16_autocast():
    # Constructing the context needs no GPU; entering it does.
    ctx = autocast(torch.device("cuda"), "bf16")
    assert isinstance(ctx, torch.autocast)
    assert ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"
    assert not isinstance(autocast("cuda", "fp32"), torch.autocast)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_cuda_bf16_matmul_runs_in_bf16():
    a = torch.randn(8, 8, device="cuda")
    with autocast("cuda", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("cuda", "fp32"):
        assert (a @ a).dtype == torch.float32


# ---------------------------------------------------------------- seeding and RNG state

def _draw(gen=None):
    """Numbers from every generator; Gaussians are drawn in odd counts so a cached normal is pending."""
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [np.random.standard_normal()],
        torch.rand(3, dtype=torch.float64).tolist() + torch.randn(1).tolist(),
        None if gen is None else torch.rand(3, generator=gen, dtype=torch.float64).tolist(),
    )


def test_seed_everything_repeats_and_differs():
    seed_everything(123)
    first = _draw()
    seed_everything(123)
    assert _draw() == first
    seed_everything(124)
    other = _draw()
    for a, b in zip(first[:3], other[:3]):
        assert a != b
    assert torch.initial_seed() == 124


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True, "1"])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises((TypeError, ValueError), match="seed"):
        seed_everything(bad)


def test_rng_state_roundtrip_through_weights_only_load():
    seed_everything(7)
    gen = torch.Generator().manual_seed(99)
    _draw(gen)  # move every stream away from its seed, leaving cached Gaussians pending
    state = rng_state({"sampler": gen})

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    expected = _draw(gen)
    _draw(gen)  # wander further
    seed_everything(0)  # and reseed, to be sure nothing survives by accident
    gen.manual_seed(0)
    set_rng_state(loaded, {"sampler": gen})
    assert _draw(gen) == expected


def test_rng_state_captures_pending_gaussians():
    random.seed(1)
    np.random.seed(1)
    random.gauss(0, 1)  # Python caches the second normal of a Box-Muller pair
    np.random.standard_normal()  # so does NumPy's legacy generator
    state = rng_state()
    assert state["python"]["gauss_next"] is not None
    assert state["numpy"]["has_gauss"] == 1
    expected = (random.gauss(0, 1), np.random.standard_normal())
    set_rng_state(state)
    assert (random.gauss(0, 1), np.random.standard_normal()) == expected


def test_set_rng_state_errors():
    state = rng_state()
    with pytest.raises(KeyError, match="no generator named 'other'"):
        set_rng_state(state, {"other": torch.Generator()})
    with pytest.raises(KeyError, match="missing field 'numpy'"):
        set_rng_state({"python": state["python"], "torch": state["torch"]})
    with pytest.raises(TypeError, match=r"generators\['g'\]"):
        rng_state({"g": 3})


def test_cuda_state_on_a_machine_without_cuda_warns(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = rng_state()
    assert state["cuda"] == []
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    with pytest.warns(UserWarning, match="saved with 1 CUDA device"):
        set_rng_state(state)


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == before
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        set_threads(0)
