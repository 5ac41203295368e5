"""Where the pipeline's time goes: per stage, wall seconds, steps, model tokens per second and the
model's achieved FLOP/s as a fraction of an fp32 matmul measured in the same process.

    python scripts/bench_pipeline.py --quick                   # the --quick smoke run, 2 threads
    python scripts/bench_pipeline.py                           # the default arithmetic pipeline
    python scripts/bench_pipeline.py --quick --set pretrain.steps=10 --algorithms dpo

The script runs ``minirlhf pipeline`` in this process (same options: --quick, --task, --set,
--algorithms, --seed, --out) and counts every token position the GPTs compute, stage by stage:

    forward pass, hidden_states / forward    B * T positions, each  L (24 C^2 + 4 T C) FLOPs,
                                             plus 2 C V for the LM head where logits are computed
    with gradients enabled                   x 3 (backward taken as twice the forward: Kaplan et
                                             al., 2020); with LoRA the frozen weights need no weight
                                             gradient, so this overstates those stages a little
    generation                               the prefill as a forward pass, then one position per
                                             row and step, attending to the cache

Positions are those the model computes: a preference pair collated with its prompt once (the
reward model's and DPO's default ``share_prompt``) counts |x| + |y_w| + |y_l|, not 2 |x| + |y_w| + |y_l|.
A multiply-add is 2 FLOPs. "tokens/s" is positions computed per wall second (forward, backward and
generation alike, counted once each); "model GFLOP/s" is the counted FLOPs over the stage's wall
time, and "of matmul" divides it by a square fp32 ``torch.matmul``'s GFLOP/s, measured before
and after the run (their mean is used, both are printed). Steps are the last logged step of the
stage's metrics.jsonl. "compare" is the final evaluation of every policy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import matmul_gflops  # noqa: E402

import minirlhf.pipeline as pipeline_module  # noqa: E402
from minirlhf.model import GPT  # noqa: E402
from minirlhf.pipeline import PipelineConfig  # noqa: E402


class Counter:
    """Token positions and FLOPs computed by every GPT, attributed to the stage running now."""

    def __init__(self):
        self.stage = "setup"
        self.tokens: dict[str, int] = {}
        self.flops: dict[str, float] = {}

    def add(self, tokens: int, flops: float):
        self.tokens[self.stage] = self.tokens.get(self.stage, 0) + tokens
        self.flops[self.stage] = self.flops.get(self.stage, 0.0) + flops


def body_flops(cfg, T: int) -> float:
    """Forward FLOPs of one position through the blocks with T positions of context."""
    return cfg.n_layer * (24 * cfg.n_embd**2 + 4 * T * cfg.n_embd)


def head_flops(cfg) -> float:
    return 2 * cfg.n_embd * cfg.vocab_size


def install(counter: Counter):
    """Wrap the GPT's entry points and the pipeline's stage runner with counting versions."""
    orig_hidden, orig_forward = GPT.hidden_states, GPT.forward
    orig_step, orig_decode = GPT._step, GPT._decode_step
    orig_run_stage = pipeline_module.run_stage

    def grad_factor(model):
        return 3 if torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()) else 1

    def hidden_states(self, idx, attention_mask=None, positions=None, allowed=None):
        B, T = idx.shape
        counter.add(B * T, grad_factor(self) * B * T * body_flops(self.config, T))
        return orig_hidden(self, idx, attention_mask, positions, allowed)

    def forward(self, idx, attention_mask=None, positions=None, allowed=None):
        counter.add(0, grad_factor(self) * idx.numel() * head_flops(self.config))
        return orig_forward(self, idx, attention_mask, positions, allowed)

    def _step(self, idx, pos, allowed, cache):
        B, T = idx.shape
        counter.add(B * T, B * T * body_flops(self.config, T) + B * head_flops(self.config))
        return orig_step(self, idx, pos, allowed, cache)

    def _decode_step(self, tok, pos, key_ok, cache, weights):
        N = tok.size(0)
        counter.add(N, N * (body_flops(self.config, cache.length + 1) + head_flops(self.config)))
        return orig_decode(self, tok, pos, key_ok, cache, weights)

    def run_stage(stage, config):
        counter.stage = stage
        try:
            return orig_run_stage(stage, config)
        finally:
            counter.stage = "compare"

    GPT.hidden_states, GPT.forward, GPT._step, GPT._decode_step = hidden_states, forward, _step, _decode_step
    pipeline_module.run_stage = run_stage


def last_step(folder: Path):
    path = folder / "metrics.jsonl"
    if not path.exists():
        return None
    step = None
    for line in path.read_text().splitlines():
        if line.strip():
            step = json.loads(line).get("step", step)
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_pipeline")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-prompts", type=int, default=300)
    ap.add_argument("--algorithms", nargs="+", default=None)
    ap.add_argument("--set", action="extend", nargs="+", default=[], help="stage.key=value ..., as for minirlhf pipeline")
    ap.add_argument("--matmul-n", type=int, default=1024)
    ap.add_argument("--matmul-repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = PipelineConfig(task=args.task, out=args.out, quick=args.quick, seed=args.seed, threads=args.threads,
                         set=args.set, eval_prompts=args.eval_prompts)
    if args.algorithms:
        cfg.algorithms = args.algorithms

    base_before = matmul_gflops(args.matmul_n, args.matmul_repeats)
    counter = Counter()
    install(counter)
    t0 = time.perf_counter()
    result = pipeline_module.pipeline(cfg)
    total = time.perf_counter() - t0
    base_after = matmul_gflops(args.matmul_n, args.matmul_repeats)
    base = (base_before + base_after) / 2

    times = dict(result["times"])
    times["compare"] = total - sum(times.values())
    out = Path(args.out)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, fp32 {args.matmul_n}x{args.matmul_n} "
          f"matmul {base_before:.1f} GFLOP/s before the run and {base_after:.1f} after (mean {base:.1f})")
    print(f"pipeline: {pipeline_module.command_line(cfg)}; total {total:.1f} s wall; "
          f"wall s x matmul GFLOP/s = {total * base:,.0f}\n")
    head = f"| {'stage':8s} | {'wall s':>7s} | {'share':>6s} | {'steps':>6s} | {'tokens':>11s} | {'tokens/s':>9s} | " \
           f"{'model GFLOP/s':>13s} | {'of matmul':>9s} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for stage, seconds in times.items():
        steps = last_step(out / stage) if stage != "compare" else None
        tokens, flops = counter.tokens.get(stage, 0), counter.flops.get(stage, 0.0)
        gflops = flops / seconds / 1e9 if seconds > 0 else 0.0
        print(f"| {stage:8s} | {seconds:7.1f} | {seconds / total:6.1%} | {steps if steps is not None else '-':>6} | "
              f"{tokens:11,d} | {tokens / seconds if seconds > 0 else 0:9,.0f} | {gflops:13.2f} | {gflops / base:9.1%} |")
    all_flops = sum(counter.flops.values())
    print(f"| {'total':8s} | {total:7.1f} | {1:6.1%} | {'':>6s} | {sum(counter.tokens.values()):11,d} | "
          f"{sum(counter.tokens.values()) / total:9,.0f} | {all_flops / total / 1e9:13.2f} | "
          f"{all_flops / total / 1e9 / base:9.1%} |")


if __name__ == "__main__":
    main()
