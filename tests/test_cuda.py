"""The GPU path: what can be checked without a GPU runs everywhere; the rest is marked `cuda` and
runs where torch sees a CUDA device (`python -m pytest -m cuda` on a GPU machine runs only these).

Without a GPU the CUDA-only tests are skipped, never faked: they have run only where a GPU was there.
MINIRLHF_TEST_DEVICE=cpu runs them on the CPU instead, which checks the tests' own wiring (not CUDA).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from minirlhf import distributed

DEVICE = os.environ.get("MINIRLHF_TEST_DEVICE", "cuda")
needs_cuda = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")


# ---------------------------------------------------------------- checkable on a CPU


@pytest.mark.parametrize("device, backend, pinned", [(torch.device("cuda"), "cpu:gloo,cuda:nccl", 1),
                                                     (torch.device("cpu"), "gloo", None)])
def test_torchrun_on_gpus_pins_each_rank_to_its_gpu_and_keeps_gloo_for_cpu_tensors(monkeypatch, device, backend,
                                                                                    pinned):
    # global_sum and all_gather_objects reduce CPU tensors; NCCL alone cannot, so a GPU run needs
    # both backends, and each rank must select its own GPU before NCCL starts.
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    info = distributed.init_distributed(device)
    assert (info.rank, info.world_size, info.local_rank) == (1, 2, 1)
    assert calls["backend"] == backend and calls.get("device") == pinned


# ---------------------------------------------------------------- on a GPU


def tiny_models(tmp_path, device, dtype):
    from minirlhf.trainers.pretrain import pretrain
    from minirlhf.trainers.sft import sft

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "trainers"))
    from tiny_configs import pretrain_cfg, sft_cfg

    pretrain(pretrain_cfg(tmp_path / "pt", steps=4, device=device, dtype=dtype))
    sft(sft_cfg(tmp_path / "pt" / "model", tmp_path / "sft", steps=2, device=device, dtype=dtype))
    return tmp_path / "sft" / "model"


@needs_cuda
def test_generation_with_the_kv_cache_on_cuda_equals_the_uncached_loop():
    from minirlhf.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=64, n_layer=2, n_head=2, n_embd=32)).to(DEVICE).eval()
    idx = torch.randint(0, 50, (3, 5), device=DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    out = model.generate(idx, 12, temperature=0.0, generator=gen)
    seq = idx
    for _ in range(12):  # greedy without a cache: argmax of the full forward pass each step
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.device.type == torch.device(DEVICE).type and torch.equal(out, seq)


@needs_cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("command", ["ppo", "trpo", "grpo", "rloo", "dpo", "rm", "collect"])
def test_every_trainer_runs_on_cuda(tmp_path, command, dtype):
    from minirlhf.cli import main as cli_main
    from minirlhf.saving import load_model

    sft_model = tiny_models(tmp_path, DEVICE, dtype)
    run = ["--run.device", DEVICE, "--run.dtype", dtype, "--run.progress", "false", "--run.out", str(tmp_path / command)]
    if command == "collect":
        cli_main(["collect", "--policy", str(sft_model), "--out", str(tmp_path / "prefs"), "--device", DEVICE,
                  "--n-prompts", "8", "--n-test-prompts", "8", "--tie-policy", "half"])
        assert (tmp_path / "prefs" / "train.jsonl").is_file()
        return
    if command in ("dpo", "rm"):
        cli_main(["collect", "--policy", str(sft_model), "--out", str(tmp_path / "prefs"), "--device", DEVICE,
                  "--n-prompts", "8", "--n-test-prompts", "8", "--tie-policy", "half"])
        data = str(tmp_path / "prefs" / ("train.jsonl" if command == "dpo" else ""))
        cli_main([command, "--init", str(sft_model), "--data", data, "--steps", "2", *run])
    else:
        cli_main([command, "--policy", str(sft_model), "--reward", "verifier", "--iterations", "2", *run])
    model, *_ = load_model(tmp_path / command / "model")
    weights = list(model.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in weights)  # saved as fp32, loads anywhere
    assert all(torch.isfinite(p).all() for p in weights)


@needs_cuda
def test_the_quick_pipeline_runs_on_cuda(tmp_path):
    run = subprocess.run([sys.executable, "-m", "minirlhf.cli", "pipeline", "--quick", "--device", DEVICE,
                          "--out", str(tmp_path / "p")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((tmp_path / "p" / "results.json").read_text())["rows"]
    assert set(rows) == {"sft", "ppo", "trpo", "grpo", "rloo", "dpo"}
