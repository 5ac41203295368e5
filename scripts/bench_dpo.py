"""Speed of DPO training: pairs per second through the trainer's own step, and the share of
each step spent outside forward, backward and the optimizer.

    python scripts/bench_dpo.py                  # TINY model, 8 pairs a step, 2 threads, LoRA and full
    python scripts/bench_dpo.py --threads 1 --repeats 7 --steps 20 --modes lora

The model is the TINY GPT of scripts/bench_model.py, GPTConfig(512, 128, 4, 4, 128), in fp32.
Each step is what ``minirlhf dpo`` runs: ``PairPool.batch`` picks the step's pairs and their
cached reference log-probs, ``dpo_step`` collates them (chosen and rejected in ONE batch of 2B
rows), does one forward pass, backward, clipping and AdamW, and ``TrainingRun.log`` writes the
metrics row. The reference log-probs of all pairs are computed once before the loop (timed
apart) and the script checks that no pair is scored twice.

Phases come from a Timer inside ``dpo_step`` ("forward" includes the DPO loss itself); the
outside share is 1 - (forward + backward + optimizer) / step time: collation, batch
selection, the metrics' host copies and the log row. Every number is a median over repeats,
measured in this process.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import CONFIGS  # noqa: E402  (the TINY config, shared with the model benchmark)

import minirlhf.trainers.dpo as dpo_module  # noqa: E402
from minirlhf.logger import Timer  # noqa: E402
from minirlhf.lora import apply_lora  # noqa: E402
from minirlhf.model import GPT  # noqa: E402
from minirlhf.tasks.arithmetic import ALPHABET  # noqa: E402
from minirlhf.tokenizer import CharTokenizer, get_template  # noqa: E402
from minirlhf.trainers.common import RunConfig, TrainingRun, lr_at, make_optimizer  # noqa: E402
from minirlhf.trainers.dpo import DPOConfig, build_pool, dpo_step  # noqa: E402


def synthetic_pairs(n: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Arithmetic-style prompts with random digit responses, about ``seq_len`` tokens per sequence
    (BOS + 12-character prompt + response + EOS)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        prompt = f"Q: {a}+{b}=\nA:"
        width = max(1, seq_len - len(prompt) - 2)
        chosen = " " + "".join(rng.choice("0123456789") for _ in range(width + rng.randrange(-2, 3)))
        rejected = " " + "".join(rng.choice("0123456789") for _ in range(width + rng.randrange(-2, 3)))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def bench(mode: str, args) -> dict:
    torch.manual_seed(0)
    tokenizer, template = CharTokenizer(ALPHABET), get_template("plain")
    model = GPT(CONFIGS["TINY"]["cfg"])
    cfg = DPOConfig(batch_size=args.pairs)
    cfg.lora.enabled = mode == "lora"
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
    model.train()
    steps_per_repeat = args.steps
    total = (args.warmup + args.repeats * steps_per_repeat)
    rows = synthetic_pairs(args.pairs * total, args.seq_len)

    scored = []
    original = dpo_module.reference_logps

    def counting(model, rows, *a, **kw):
        scored.extend(id(r) for r in rows)
        return original(model, rows, *a, **kw)

    dpo_module.reference_logps = counting
    t0 = time.perf_counter()
    pool = build_pool(model, rows, tokenizer, template, cfg, "cpu")
    ref_seconds = time.perf_counter() - t0
    dpo_module.reference_logps = original

    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optim)
    with tempfile.TemporaryDirectory() as tmp:
        run = TrainingRun(RunConfig(out=tmp, threads=args.threads, progress=False, log_every=10**9), cfg,
                          name="bench_dpo")
        order, step = None, 0
        pairs_per_s, outside, phases = [], [], {"forward": [], "backward": [], "optimizer": []}
        for repeat in range(-1, args.repeats):
            n = args.warmup if repeat < 0 else steps_per_repeat
            timer = Timer()
            t_start = time.perf_counter()
            for _ in range(n):
                step += 1
                # the body of the trainer's loop: pick the step's pairs, one step, one log row
                batch_rows, ref_c, ref_r, order = pool.batch(step, cfg.batch_size, cfg.run.seed, order)
                metrics = dpo_step(model, opt, params, batch_rows, ref_c, ref_r, cfg, tokenizer, template,
                                   lr_at(step, total, cfg.optim), "cpu", run.autocast,
                                   lambda **v: run.check_finite(step, **v), timer)
                run.log(step, metrics)
            elapsed = time.perf_counter() - t_start
            if repeat < 0:
                continue  # warm-up
            inside = sum(timer.totals.get(k, 0.0) for k in ("forward", "backward", "optimizer"))
            pairs_per_s.append(n * cfg.batch_size / elapsed)
            outside.append(1.0 - inside / elapsed)
            for k in phases:
                phases[k].append(timer.totals.get(k, 0.0) / n)
        run.close()
    assert len(scored) == len(set(scored)) == len(rows), "a pair's reference log-probs were computed twice"
    return {"pairs_per_s": statistics.median(pairs_per_s), "outside": statistics.median(outside),
            "ref_pairs_per_s": len(rows) / ref_seconds, "n_pairs": len(rows),
            "phases": {k: statistics.median(v) for k, v in phases.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per step")
    ap.add_argument("--seq-len", type=int, default=30, help="tokens per sequence, about")
    ap.add_argument("--steps", type=int, default=10, help="steps per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3, help="steps before timing")
    ap.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    c = CONFIGS["TINY"]["cfg"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, TINY GPT "
          f"(V={c.vocab_size}, T<={c.block_size}, L={c.n_layer}, H={c.n_head}, C={c.n_embd}), "
          f"{args.pairs} pairs/step (one pass of {2 * args.pairs} rows), ~{args.seq_len} tokens/sequence, "
          f"medians of {args.repeats} x {args.steps} steps")
    for mode in args.modes:
        r = bench(mode, args)
        ph = r["phases"]
        ms = " ".join(f"{k} {1e3 * v:.1f}" for k, v in ph.items())
        print(f"{mode:4s}: {r['pairs_per_s']:7.1f} pairs/s | outside forward/backward/optimizer "
              f"{r['outside']:5.1%} of the step | ms/step: {ms} | reference pass once for {r['n_pairs']} "
              f"pairs: {r['ref_pairs_per_s']:.0f} pairs/s, none recomputed")


if __name__ == "__main__":
    main()
