"""Supervised fine-tuning on demonstrations, the loss on response tokens only.

    L_SFT(theta) = - (1 / sum m) sum_{t} m_t log pi_theta(y_t | x, y_<t)      (Ouyang et al., 2022, 3.5)

with m_t = 1 on response tokens (the final EOS included) and 0 on the prompt and padding. Full
fine-tuning, or LoRA (Hu et al., 2021) on the attention query and value projections.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from minirlhf.data import collate_sft, encode_sft, step_batch, usable_rows
from minirlhf.distributed import global_sum, shard
from minirlhf.evaluation import evaluate_task, generate_responses, sample_table
from minirlhf.lora import apply_lora, trainable_summary
from minirlhf.objectives.lm import next_token_loss
from minirlhf.saving import load_model, save_model
from minirlhf.tasks.metrics import mean_rouge_l
from minirlhf.trainers.common import (LoRAConfig, OptimConfig, RunConfig, TaskConfig, TrainingRun, clip_grad_norm,
                                      lr_at, make_optimizer, resolve_task, set_lr)


@dataclass
class SFTConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/sft"))
    init: str = field(default="runs/pretrain/model", metadata={"help": "model folder to start from"})
    data: str = field(default="", metadata={"help": "SFT JSONL file ('' = the task's demonstrations)"})
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20))
    epochs: float = 1.0
    steps: int = field(default=0, metadata={"help": "optimizer steps (0: from epochs)"})
    batch_size: int = 64
    max_len: int = field(default=0, metadata={"help": "longest sequence (0: the model's block_size)"})
    truncation: Literal["error", "left"] = "error"
    on_bad_row: Literal["skip", "raise"] = field(default="skip", metadata={
        "help": "bad rows of --data (invalid JSON, empty text, unencodable, too long): skipped and listed "
                "with their file:line, or the first one raises"})
    eval_every: int = 200
    eval_prompts: int = field(default=300, metadata={"help": "held-out prompts evaluated"})
    samples: int = field(default=4, metadata={"help": "greedy samples printed once, at the final evaluation"})


@torch.no_grad()
def sft_eval(model, task, tokenizer, template, eval_encoded, cfg: SFTConfig, device, print_samples=True) -> dict:
    """Held-out loss and perplexity on demonstrations, ROUGE-L of greedy responses against the
    references, and the task metric greedy and at temperature 1."""
    model.eval()
    losses, weights = [], []
    for i in range(0, len(eval_encoded), cfg.batch_size):
        b = collate_sft(eval_encoded[i : i + cfg.batch_size], tokenizer.pad_id)
        logits = model(b["input_ids"].to(device), b["attention_mask"].to(device))
        n = b["loss_mask"][:, 1:].sum().item()
        losses.append(next_token_loss(logits, b["input_ids"].to(device), b["loss_mask"].to(device)).item() * n)
        weights.append(n)
    out = {}
    if weights:  # held-out prompts may come without reference answers: then no held-out loss
        loss = sum(losses) / sum(weights)
        out = {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50))}
    out.update(evaluate_task(model, task, tokenizer, template, "test", temperatures=(0.0, 1.0),
                             max_prompts=cfg.eval_prompts, seed=cfg.run.seed))
    prompts = task.prompts("test")[: cfg.eval_prompts]
    refs = [task.reference(p) for p in prompts]
    if all(r is not None for r in refs):
        greedy = generate_responses(model, tokenizer, template, prompts, task.max_response_tokens)
        out["eval/rouge_l"] = mean_rouge_l(greedy, refs)["f"]
        if print_samples and cfg.samples:
            print(sample_table(prompts, greedy, refs, cfg.samples))
    model.train()
    return out


def sft_step(forward, rows: list, pad_id: int, grad_accum: int, run: TrainingRun, step: int) -> float:
    """Gradients of the global batch's token-mean loss: this rank's share of ``rows`` in
    ``grad_accum`` micro-batches, each weighted by its response tokens over the global count
    (times the world size, as DistributedDataParallel averages over ranks). Returns the loss."""
    local = shard(rows, run.dist)
    micro = [local[i::grad_accum] for i in range(grad_accum)]
    batches = [collate_sft(part, pad_id) for part in micro if part]
    counts = [float(b["loss_mask"][:, 1:].sum()) for b in batches]
    n_global = global_sum(sum(counts), run.dist)
    total = 0.0
    for i, (b, n) in enumerate(zip(batches, counts)):
        ids, mask, lmask = (b[k].to(run.device) for k in ("input_ids", "attention_mask", "loss_mask"))
        sync = contextlib.nullcontext() if i == len(batches) - 1 or not run.dist.enabled else forward.no_sync()
        with sync:
            with run.autocast():
                loss = next_token_loss(forward(ids, mask), ids, lmask) * (n / n_global * run.dist.world_size)
            run.check_finite(step, loss=loss)
            loss.backward()
        total += loss.item()
    return global_sum(total, run.dist) / run.dist.world_size


def sft(cfg: SFTConfig) -> dict:
    """Fine-tune ``cfg.init`` on demonstrations; writes ``<out>/model`` (LoRA merged into the weights,
    the adapter alone beside it)."""
    model, tokenizer, template, meta = load_model(cfg.init, kind="gpt")
    task, task_record = resolve_task(cfg.task, meta)
    template = template or task.template()
    run = TrainingRun(cfg.run, cfg, name="sft", total_steps=None)
    model.to(run.device)
    max_len = cfg.max_len or model.config.block_size
    if cfg.data:
        rows, _ = usable_rows(cfg.data, "sft", tokenizer, template, max_len, cfg.truncation, cfg.on_bad_row, "sft")
    else:
        rows = task.sft_rows("train")
    encoded = encode_sft(tokenizer, template, rows, max_len, cfg.truncation)
    eval_rows = task.sft_rows("test")[: max(cfg.eval_prompts, 1)]
    eval_encoded = encode_sft(tokenizer, template, eval_rows, max_len, cfg.truncation)
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(encoded) / cfg.batch_size))
    run.logger.total_steps = steps if cfg.run.progress else None

    if cfg.lora.enabled:
        apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
    print(f"[sft] {task.name}: {len(encoded):,} demonstrations, {steps} steps, "
          f"{'LoRA' if cfg.lora.enabled else 'full fine-tuning'}: {trainable_summary(model)}")
    opt = make_optimizer(model.parameters(), cfg.optim)
    run.track("model", model)
    run.track("optimizer", opt)
    start, _ = run.restore()

    model.train()
    forward = DDP(model) if run.dist.enabled else model  # averages gradients over ranks in backward
    order, last_eval = None, None
    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(start + 1, steps + 1):
        lr = lr_at(step, steps, cfg.optim)
        set_lr(opt, lr)
        rows_step, order = step_batch(encoded, order, step, cfg.batch_size * cfg.optim.grad_accum, cfg.run.seed)
        loss = sft_step(forward, rows_step, tokenizer.pad_id, cfg.optim.grad_accum, run, step)
        grad_norm = clip_grad_norm(params, cfg.optim.grad_clip)
        run.check_finite(step, grad_norm=grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        metrics = {"loss": loss, "lr": lr, "grad_norm": float(grad_norm)}
        if (step % cfg.eval_every == 0 or step == steps) and run.is_main:
            last_eval = sft_eval(model, task, tokenizer, template, eval_encoded, cfg, run.device,
                                 print_samples=step == steps)
            metrics.update(last_eval)
        run.log(step, metrics)
        run.maybe_save(step, steps)
    run.close()
    elapsed = time.perf_counter() - t0
    if not run.is_main:
        return {}
    final = last_eval or sft_eval(model, task, tokenizer, template, eval_encoded, cfg, run.device)
    save_model(run.model_dir(), model, tokenizer, template,
               meta={"task": task_record, "stage": "sft", "trainable": trainable_summary(model)})
    final.update({"time": elapsed, "model": str(run.model_dir()), "trainable": trainable_summary(model)})
    metric = f"eval/{task.metric_name}"
    print(f"[sft] done in {elapsed:.0f}s: {metric} {final.get(metric, float('nan')):.3f}; model in {run.model_dir()}")
    return final
