"""Where a PPO iteration's time goes, and what the reference policy costs in memory.

    python scripts/bench_ppo.py                          # the pipeline's model size, LoRA, 1 thread
    python scripts/bench_ppo.py --iterations 12 --threads 2 --mem-layers 8 --mem-embd 512

Time. ``minirlhf ppo`` itself runs --iterations iterations on arithmetic (a fresh GPT of the
pipeline's size, 4 layers x 128, as the policy and a fresh reward model of the same size; or
--policy/--reward folders). The trainer times each iteration's phases (``time/*`` in metrics.jsonl):

    generation   sampling the responses with the KV cache
    logprobs     the log-prob passes: policy (with the critic) and reference, over prompt + response
    scoring      the reward model, the KL penalty and GAE (printed without the log-prob passes)
    update       PPO epochs over minibatches: forward, backward, AdamW, for policy and critic

Shares are of the iteration's wall time (from the ``time`` column; the rest is logging and host
work), summed over the iterations but the first (warm-up) and the last (it also evaluates).

Memory. Under LoRA the reference policy is the same module inside ``lora_disabled``; without it
a frozen copy of the weights is the usual way. Each variant runs --mem-iterations PPO iterations
of ``minirlhf ppo`` in its own process on a bigger GPT (--mem-layers x --mem-embd) and reports that
process's peak resident memory (``ru_maxrss``; on CUDA, ``torch.cuda.max_memory_allocated``),
next to the bytes of the weights themselves:

    lora             LoRA policy, reference = lora_disabled(policy)       (what minirlhf ppo does)
    lora+copy        LoRA policy, reference = a frozen copy of the base   (the same run with a copy)
    full             full fine-tuning, reference = a frozen copy          (minirlhf ppo --lora.enabled false)

The critic is the trainer's default (a separate value model started from the reward model) in
every variant, so differences come from the policy and its reference.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from minirlhf.heads import RewardModel
from minirlhf.logger import read_metrics
from minirlhf.model import GPT, GPTConfig
from minirlhf.saving import save_model
from minirlhf.tasks import get_task
from minirlhf.trainers.common import RunConfig, TaskConfig
from minirlhf.trainers.ppo import PPOConfig, ppo

TASK = TaskConfig(name="arithmetic", args=["max_operand=49"])


def fresh_models(folder: Path, n_layer: int, n_embd: int, seed: int = 0) -> tuple[str, str, int]:
    """A fresh GPT policy and a fresh reward model of one size, saved as model folders, and the bytes
    of one copy of the policy's weights."""
    task = get_task(TASK.name, max_operand=49)
    tok, template = task.build_tokenizer(), task.template()
    torch.manual_seed(seed)
    policy = GPT(GPTConfig(tok.vocab_size, 64, n_layer, max(1, n_embd // 64), n_embd))
    meta = {"task": {"name": TASK.name, "args": TASK.args}}
    save_model(folder / "policy", policy, tok, template, meta=meta)
    save_model(folder / "reward", RewardModel(GPT(policy.config)), tok, template, meta=meta)
    weights = sum(p.numel() * p.element_size() for p in policy.parameters())
    return str(folder / "policy"), str(folder / "reward"), weights


def ppo_config(policy: str, reward: str, out: Path, iterations: int, lora: bool, threads: int) -> PPOConfig:
    cfg = PPOConfig(task=TASK, run=RunConfig(out=str(out), threads=threads, progress=False, log_every=10**6),
                    policy=policy, reward=reward, iterations=iterations, eval_every=10**6, eval_prompts=8)
    cfg.lora.enabled = lora
    return cfg


def time_shares(args) -> None:
    if args.iterations < 3:
        raise SystemExit("--iterations: at least 3 (the first warms up, the last also evaluates)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policy, reward = args.policy, args.reward
        if not policy or not reward:
            fresh = fresh_models(tmp, 4, 128)
            policy, reward = policy or fresh[0], reward or fresh[1]
        ppo(ppo_config(policy, reward, tmp / "run", args.iterations, not args.full, args.threads))
        rows = [r for r in read_metrics(tmp / "run" / "metrics.jsonl") if "time/update" in r]
    # iteration i's wall time is the growth of the cumulative `time` column since iteration i - 1;
    # the first iteration warms up and the last one also evaluates, so both are left out
    timed = [(b, b["time"] - a["time"]) for a, b in zip(rows, rows[1:])][:-1]
    n = len(timed)
    wall = sum(w for _, w in timed) / n
    phases = {
        "generation": sum(r["time/generation"] for r, _ in timed) / n,
        "logprobs": sum(r["time/logprobs"] for r, _ in timed) / n,
        "scoring": sum(r["time/scoring"] - r["time/logprobs"] for r, _ in timed) / n,
        "update": sum(r["time/update"] for r, _ in timed) / n,
    }
    length = statistics.median(r["response_length"] for r, _ in timed)
    print(f"PPO iteration on arithmetic, {'full fine-tuning' if args.full else 'LoRA'}, {args.threads} thread(s), "
          f"means over {n} iterations, response length {length:.1f} tokens")
    print(f"  {'phase':<12}{'seconds':>10}{'share':>9}")
    for name, sec in phases.items():
        print(f"  {name:<12}{sec:>10.3f}{sec / wall:>9.1%}")
    rest = wall - sum(phases.values())
    print(f"  {'other':<12}{rest:>10.3f}{rest / wall:>9.1%}")
    print(f"  {'iteration':<12}{wall:>10.3f}{1:>9.1%}")


def memory_child(variant: str, policy: str, reward: str, out: str, iterations: int, threads: int) -> None:
    """Run in a fresh process: one variant's PPO run, then print its peak memory as JSON."""
    import minirlhf.trainers.rl_run as rl_run
    from minirlhf.lora import apply_lora
    from minirlhf.policies import Reference

    if variant == "lora+copy":  # the same LoRA run, with a frozen copy of the base as the reference
        def with_copy(model, lora):
            reference = copy.deepcopy(model).eval().requires_grad_(False)
            apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.targets)
            return model, Reference(model, reference)
        rl_run.policy_and_reference = with_copy
    cfg = ppo_config(policy, reward, Path(out), iterations, variant != "full", threads)
    ppo(cfg)
    if torch.cuda.is_available():
        peak, how = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
    else:
        peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS"  # KiB on Linux
    print("PEAK " + json.dumps({"peak": peak, "how": how}))


def memory(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policy, reward, weights = fresh_models(tmp, args.mem_layers, args.mem_embd)
        results = {}
        for variant in ("lora", "lora+copy", "full"):
            cmd = [sys.executable, __file__, "--child", variant, policy, reward, str(tmp / variant),
                   str(args.mem_iterations), str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            line = [x for x in proc.stdout.splitlines() if x.startswith("PEAK ")]
            if proc.returncode or not line:
                raise RuntimeError(f"{variant}: the child process failed:\n{proc.stderr[-2000:]}")
            results[variant] = json.loads(line[-1][5:])
    how = results["lora"]["how"]
    print(f"\nPeak memory of {args.mem_iterations} PPO iterations, GPT {args.mem_layers} x {args.mem_embd} "
          f"(one copy of the weights: {weights / 2**20:.1f} MiB), {how}:")
    base = results["lora"]["peak"]
    for variant, r in results.items():
        print(f"  {variant:<11}{r['peak'] / 2**20:>9.1f} MiB   {r['peak'] / base:>5.2f}x lora   "
              f"{(r['peak'] - base) / weights:>+6.2f} weight copies")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, policy, reward, out, iterations, threads = sys.argv[2:8]
        torch.set_num_threads(int(threads))
        memory_child(variant, policy, reward, out, int(iterations), int(threads))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="", help="policy folder ('' = a fresh GPT, 4 layers x 128)")
    ap.add_argument("--reward", default="", help="reward model folder ('' = a fresh one of the same size)")
    ap.add_argument("--full", action="store_true", help="time full fine-tuning (default: LoRA)")
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-layers", type=int, default=8)
    ap.add_argument("--mem-embd", type=int, default=512)
    ap.add_argument("--mem-iterations", type=int, default=2)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    time_shares(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
