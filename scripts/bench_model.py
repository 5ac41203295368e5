"""Speed of the GPT: training-step throughput against a plain fp32 matmul, and generation with and
without the KV cache.

    python scripts/bench_model.py            # TINY and SMALL, 2 threads
    python scripts/bench_model.py --threads 2 --repeats 5 --configs SMALL
    python scripts/bench_model.py --device cuda --dtype bf16 --configs SMALL GPT2   # on a GPU, bf16 autocast

Every ratio is against a baseline measured in the same process: the training step's achieved
GFLOP/s over a square ``torch.matmul``'s GFLOP/s (in the benchmark's dtype: fp32, or bf16 on a GPU with
``--dtype bf16``, where the training step runs under bf16 autocast), and cached over uncached generation.
FLOPs per trained token, counting a multiply-add as 2 and backward as twice forward
(Kaplan et al., 2020; Chowdhery et al., 2022, appendix B):

    3 * (L * (24 C^2 + 4 T C) + 2 C V)
"""
from __future__ import annotations

import argparse
import statistics
import time

import contextlib

import torch

from minirlhf.model import GPT, GPTConfig

DEVICE = torch.device("cpu")
DTYPE = "fp32"

CONFIGS = {
    "TINY": dict(cfg=GPTConfig(512, 128, 4, 4, 128), batch=16),
    "SMALL": dict(cfg=GPTConfig(4096, 256, 6, 6, 384), batch=8),
    "GPT2": dict(cfg=GPTConfig(50257, 1024, 12, 12, 768), batch=8),  # GPT-2 small's shape (124M parameters)
}


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def autocast():
    if DTYPE == "bf16":
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(n: int, repeats: int) -> float:
    dtype = torch.bfloat16 if DTYPE == "bf16" else torch.float32
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    t = median_time(lambda: torch.matmul(a, b), repeats * 3)
    return 2 * n**3 / t / 1e9


def train_flops_per_token(c: GPTConfig, T: int) -> float:
    return 3 * (c.n_layer * (24 * c.n_embd**2 + 4 * T * c.n_embd) + 2 * c.n_embd * c.vocab_size)


def bench_train(cfg: GPTConfig, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = GPT(cfg).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    T = cfg.block_size
    x = torch.randint(0, cfg.vocab_size, (batch, T + 1), device=DEVICE)
    inp, tgt = x[:, :-1], x[:, 1:]

    def step():
        with autocast():
            logits = model(inp)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size).float(), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = median_time(step, repeats)
    tokens = batch * T
    return {"tokens_per_s": tokens / t, "gflops": train_flops_per_token(cfg, T) * tokens / t / 1e9}


def bench_generate(cfg: GPTConfig, batch: int, repeats: int, prompt_len: int = 16, new: int = 64) -> dict:
    """Cached and uncached generation timed in alternating pairs (so drift in the machine's speed
    hits both alike); tokens/s medians and the median of the per-pair speed-ups."""
    torch.manual_seed(0)
    model = GPT(cfg).to(DEVICE).eval()
    x = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device=DEVICE)

    def run(use_cache):
        g = torch.Generator(device=DEVICE).manual_seed(0)
        sync()
        t0 = time.perf_counter()
        model.generate(x, new, temperature=1.0, generator=g, use_cache=use_cache)
        sync()
        return time.perf_counter() - t0

    run(True), run(False)  # warm-up
    cached, uncached = [], []
    for _ in range(repeats):
        cached.append(run(True))
        uncached.append(run(False))
    tokens = batch * new
    return {"cached": tokens / statistics.median(cached), "uncached": tokens / statistics.median(uncached),
            "speedup": statistics.median(u / c for c, u in zip(cached, uncached))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--matmul-n", type=int, default=1024)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: the matmul baseline in bf16 and the training step under bf16 autocast")
    ap.add_argument("--no-generate", action="store_true", help="time the training step only")
    args = ap.parse_args(argv)
    global DEVICE, DTYPE
    DEVICE, DTYPE = torch.device(args.device), args.dtype
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {DTYPE}, medians of {args.repeats}")
    base = matmul_gflops(args.matmul_n, args.repeats)
    print(f"baseline: {args.matmul_n}x{args.matmul_n} {DTYPE} matmul {base:.1f} GFLOP/s")
    for name in args.configs:
        cfg, batch = CONFIGS[name]["cfg"], CONFIGS[name]["batch"]
        tr = bench_train(cfg, batch, args.repeats)
        print(f"{name:5s} train  batch {batch:2d} x {cfg.block_size}: {tr['tokens_per_s']:8.0f} tok/s  "
              f"{tr['gflops']:6.1f} GFLOP/s = {tr['gflops'] / base:5.1%} of matmul")
        if args.no_generate:
            continue
        for b in (1, 16):
            g = bench_generate(cfg, b, args.repeats)
            print(f"{name:5s} generate batch {b:2d}: cached {g['cached']:8.0f} tok/s  uncached {g['uncached']:8.0f} "
                  f"tok/s  speed-up {g['speedup']:5.1f}x (median of paired runs)")


if __name__ == "__main__":
    main()
