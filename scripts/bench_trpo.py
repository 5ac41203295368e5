"""What a TRPO update costs, in units of a PPO gradient step on the same model and batch.

    python scripts/bench_trpo.py                              # the pipeline's default model size, LoRA, 1 thread
    python scripts/bench_trpo.py --model runs/sft/model --full --threads 2

Measured in one process on one synthetic rollout batch (random prompt and response tokens, random
whitened advantages), medians over --repeats:

    PPO step     forward + backward + AdamW step of the clipped policy loss    (the unit)
    gradient     forward + backward of TRPO's surrogate: g = grad L
    HVP setup    forward + backward with create_graph of the mean KL: the graph every H v reuses
    HVP          one Hessian-vector product H v on that graph (double backprop), in units of a gradient
    TRPO update  objectives.trpo_step: g, the KL graph, cg_iters products in CG, one more for x^T H x,
                 and the line search's forward passes (surrogate and KL per candidate)

Only the policy is timed on both sides (PPO's value loss and TRPO's critic fit are separate costs).
Hessian-vector products differentiate twice, which PyTorch's fused CPU attention cannot, so TRPO runs
the model's written-out attention; the PPO step is timed with the fused attention the PPO trainer
uses, and again with the written-out one, so the two effects can be told apart.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from minirlhf.lora import apply_lora
from minirlhf.model import GPT, GPTConfig
from minirlhf.objectives import (flat_grad, flat_params, kl_from_logits, logprobs_from_logits, make_hvp, masked_mean,
                                 ppo_policy_loss, set_flat_params, trpo_step, trpo_surrogate, whiten)
from minirlhf.rollout import Rollout
from minirlhf.trainers.common import ModelSize, clip_grad_norm
from minirlhf.policies import ActorCritic


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_model(args) -> GPT:
    if args.model:
        from minirlhf.saving import load_model

        model, *_ = load_model(args.model, kind="gpt")
    else:
        m = ModelSize()  # block_size 0 means "the task's need"; here the benchmark's sequences set it
        torch.manual_seed(0)
        block_size = m.block_size or max(64, args.prompt_len + args.response_len)
        model = GPT(GPTConfig(args.vocab, block_size, m.n_layer, m.n_head, m.n_embd))
    if not args.full:
        apply_lora(model)
    return model.eval()


def synthetic_rollout(model: GPT, args) -> Rollout:
    g = torch.Generator().manual_seed(1)
    B, P, R, V = args.batch, args.prompt_len, args.response_len, model.config.vocab_size
    ids = torch.randint(0, V, (B, P + R), generator=g)  # (B,P+R)
    mask = torch.ones(B, R)  # (B,R)
    rollout = Rollout([""] * B, [""] * B, ids, torch.ones_like(ids), P, mask, torch.ones(B, dtype=torch.bool))
    rollout.extra["advantages"] = whiten(torch.randn(B, R, generator=g), mask)  # (B,R)
    return rollout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="model folder ('' = a fresh GPT of the default ModelSize)")
    ap.add_argument("--vocab", type=int, default=21, help="vocabulary of the fresh GPT (arithmetic's is 21)")
    ap.add_argument("--full", action="store_true", help="all parameters trainable (default: LoRA on q, v)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=10)
    ap.add_argument("--response-len", type=int, default=5)
    ap.add_argument("--cg-iters", type=int, default=10)
    ap.add_argument("--max-kl", type=float, default=0.01)
    ap.add_argument("--damping", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(args)
    rollout = synthetic_rollout(model, args)
    actor = ActorCritic(model, "none")
    params = [p for p in model.parameters() if p.requires_grad]
    response = rollout.input_ids[:, rollout.prompt_width :]
    adv, mask = rollout.extra["advantages"], rollout.mask
    with torch.no_grad():
        old_logits, _ = actor(rollout, 1.0)  # (B,R,V)
        rollout.logprobs = logprobs_from_logits(old_logits, response)
    start = flat_params(params)

    opt = torch.optim.AdamW(params, lr=1e-6)

    def ppo_step():
        logits, _ = actor(rollout, 1.0)
        loss, _ = ppo_policy_loss(logprobs_from_logits(logits, response), rollout.logprobs, adv, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(params, 1.0)
        opt.step()

    def surrogate():
        logits, _ = actor(rollout, 1.0)
        return trpo_surrogate(logprobs_from_logits(logits, response), rollout.logprobs, adv, mask)

    def mean_kl():
        logits, _ = actor(rollout, 1.0)
        return masked_mean(kl_from_logits(old_logits, logits), mask)

    model.set_attention("sdpa")
    t_ppo = median_time(ppo_step, args.repeats)
    model.set_attention("reference")
    t_ppo_ref = median_time(ppo_step, args.repeats)
    set_flat_params(params, start)

    t_grad = median_time(lambda: flat_grad(surrogate(), params), args.repeats)
    t_setup = median_time(lambda: make_hvp(mean_kl(), params, args.damping), args.repeats)
    hvp = make_hvp(mean_kl(), params, args.damping)
    v = torch.randn(start.numel(), generator=torch.Generator().manual_seed(2))
    t_hvp = median_time(lambda: hvp(v), args.repeats * 3)

    steps = []

    def trpo_update():
        steps.append(trpo_step(params, surrogate, mean_kl, args.max_kl, args.cg_iters, args.damping))
        set_flat_params(params, start)  # every repeat starts from the same policy

    t_trpo = median_time(trpo_update, args.repeats)
    backtracks = statistics.median(s["backtracks"] for s in steps)

    n = sum(p.numel() for p in params)
    print(f"policy: {model.num_parameters():,} parameters, {n:,} trainable ({'full' if args.full else 'LoRA'}); "
          f"batch {args.batch} x ({args.prompt_len} prompt + {args.response_len} response) tokens; "
          f"{torch.get_num_threads()} thread(s); medians of {args.repeats}")
    rows = [
        ("PPO step (fused attention)", t_ppo, t_ppo / t_ppo, ""),
        ("PPO step (written-out attention)", t_ppo_ref, t_ppo_ref / t_ppo, ""),
        ("gradient of the surrogate", t_grad, t_grad / t_ppo, "1.00 gradient"),
        ("HVP setup (KL grad with graph)", t_setup, t_setup / t_ppo, f"{t_setup / t_grad:.2f} gradients"),
        ("one Hessian-vector product", t_hvp, t_hvp / t_ppo, f"{t_hvp / t_grad:.2f} gradients"),
        (f"TRPO update (cg_iters {args.cg_iters}, {backtracks:g} backtracks)", t_trpo, t_trpo / t_ppo,
         f"{t_trpo / t_grad:.2f} gradients"),
    ]
    print(f"{'':48s} {'seconds':>9s} {'PPO steps':>10s}")
    for name, t, ratio, extra in rows:
        print(f"{name:48s} {t:9.4f} {ratio:10.2f}   {extra}")


if __name__ == "__main__":
    main()
