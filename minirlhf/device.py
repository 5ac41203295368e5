"""Devices, mixed precision, seeding and RNG state.

One code path for every device: trainers call `resolve_device` once, wrap forward passes in
`autocast(device, dtype)`, and never branch on the device type themselves.

Repeatable runs need every random number generator in play to be seeded (`seed_everything`)
and, for an exact resume, captured and restored (`rng_state` / `set_rng_state`). The captured
state is made only of tensors and plain Python values, so it can be stored with `torch.save`
and read back with `torch.load(weights_only=True)` (see minirlhf/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import random
import warnings
from typing import Mapping

import numpy as np
import torch

__all__ = [
    "resolve_device",
    "autocast",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "set_threads",
    "cpu_bf16_speedup",
    "resolve_dtype",
]

_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a `torch.device` that exists on this machine.

    "auto" picks CUDA if available, then Apple MPS, then CPU. Any other name ("cpu", "cuda",
    "cuda:1", "mps", or a `torch.device`) is passed through after checking that the device is
    there, so a run asked to use a GPU fails at once instead of silently running on the CPU.
    """
    if isinstance(name, torch.device):
        device = name
    elif not isinstance(name, str):
        raise TypeError(f"device: expected a str such as 'auto', 'cpu', 'cuda' or 'cuda:0', got {type(name).__name__}")
    elif name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise ValueError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}") from e

    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} was asked for, but CUDA is not available on this machine; "
                               "use 'auto' or 'cpu'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RuntimeError(f"device {str(device)!r} was asked for, but only {count} CUDA device(s) are visible "
                               f"(indices 0..{count - 1})")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise RuntimeError("device 'mps' was asked for, but MPS is not available on this machine; "
                               "use 'auto' or 'cpu'")
        return device
    raise ValueError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {str(device)!r}")


def autocast(device: str | torch.device, dtype: str = "fp32"):
    """Context manager for the forward pass in the requested precision.

    dtype "bf16" on a CUDA device or the CPU enables `torch.autocast(device_type, dtype=torch.bfloat16)`:
    matmuls run in bfloat16 while parameters, optimizer state and reductions stay float32 (on the CPU,
    attention too: see `model.sdpa_attention`). On other devices, and for "fp32", it is a no-op, so
    trainers write one code path:

        with autocast(device, cfg.dtype):
            logits = model(idx)
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    device = torch.device(device) if isinstance(device, str) else device
    if not isinstance(device, torch.device):
        raise TypeError(f"device: expected a str or torch.device, got {type(device).__name__}")
    if _DTYPES[dtype] is None or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[dtype])


def cpu_bf16_speedup(n: int = 256, repeats: int = 20) -> float:
    """How many times faster an (n, n) bf16 matmul runs than an fp32 one on this CPU, measured now
    (a few milliseconds). Above 1 only where the processor multiplies bf16 natively (AVX512-BF16 or
    AMX on x86, BF16 on recent Arm); elsewhere bf16 is converted and runs slower than fp32."""
    import time

    def best(dtype) -> float:
        a, b = torch.ones(n, n, dtype=dtype), torch.ones(n, n, dtype=dtype)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.float32) / best(torch.bfloat16)


def resolve_dtype(name: str, device: str | torch.device) -> str:
    """"fp32" or "bf16" for a run: "auto" picks bf16 autocast on a CPU whose bf16 matmul is at least
    twice its fp32 one (`cpu_bf16_speedup`), and fp32 everywhere else (GPUs included: a small model
    leaves a GPU idle, so bf16 buys nothing there)."""
    if name in _DTYPES:
        return name
    if name != "auto":
        raise ValueError(f"dtype: expected 'auto', 'fp32' or 'bf16', got {name!r}")
    device = torch.device(device) if isinstance(device, str) else device
    return "bf16" if device.type == "cpu" and cpu_bf16_speedup() >= 2.0 else "fp32"


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every CUDA device)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed: expected an int in [0, 2**32), got {seed}")  # NumPy's legacy seed range
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """Capture every random number generator as tensors and plain Python values.

    Returns a dict with keys "python", "numpy", "torch", "cuda" (a list, one ByteTensor per
    visible CUDA device; empty without CUDA) and "generators" (one ByteTensor per named
    `torch.Generator` given, e.g. the generator a sampler or `model.generate` uses). The dict
    survives `torch.save` + `torch.load(weights_only=True)`; restore it with `set_rng_state`.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),  # (625,) uint32 words + position
            "gauss_next": gauss_next,
        },
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),  # (624,) uint32 words, widened to int64
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        if not isinstance(gen, torch.Generator):
            raise TypeError(f"generators[{name!r}]: expected a torch.Generator, got {type(gen).__name__}")
        state["generators"][name] = gen.get_state()
    return state


def set_rng_state(state: Mapping, generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restore what `rng_state` captured; each generator in `generators` gets the state saved under its name.

    If the state was captured with CUDA but this machine has a different number of CUDA devices
    (or none), the devices both have are restored and a warning says the rest could not be.
    """
    for key in ("python", "numpy", "torch"):
        if key not in state:
            raise KeyError(f"rng state: missing field {key!r}; expected the dict returned by rng_state()")

    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))

    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))

    torch.set_rng_state(state["torch"])

    cuda_states = list(state.get("cuda", []))
    n_here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, s in enumerate(cuda_states[:n_here]):
        torch.cuda.set_rng_state(s, index)
    if cuda_states and len(cuda_states) != n_here:
        warnings.warn(f"rng state: saved with {len(cuda_states)} CUDA device(s), restored on {n_here}; "
                      "random draws on the GPU will differ from the original run", stacklevel=2)

    saved_generators = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved_generators:
            raise KeyError(f"rng state: no generator named {name!r}; saved ones are {sorted(saved_generators)}")
        gen.set_state(saved_generators[name])


def set_threads(n: int) -> int:
    """Set the number of CPU threads torch uses for intra-op parallelism; returns the previous number."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads: expected a positive int, got {n!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous
