"""Pretraining: next-token prediction on a task's plain-text corpus, from scratch.

The corpus is a stream of documents, each wrapped in BOS ... EOS.

    L(theta) = - (1/N) sum_t log pi_theta(x_t | x_<t)          (Radford et al., 2018, eq. 1)

Batches are random windows of ``block_size`` tokens from the token stream, drawn with a
seeded generator that is part of every checkpoint, so a resumed run sees the same batches.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from minirlhf.model import GPT, GPTConfig
from minirlhf.objectives.lm import next_token_loss
from minirlhf.saving import save_model
from minirlhf.trainers.common import (ModelSize, OptimConfig, RunConfig, TaskConfig, TrainingRun, clip_grad_norm,
                                      lr_at, make_optimizer, resolve_task, set_lr)


@dataclass
class PretrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/pretrain"))
    model: ModelSize = field(default_factory=ModelSize)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, warmup_steps=100, weight_decay=0.1))
    steps: int = 2000
    batch_size: int = 64
    val_fraction: float = field(default=0.02, metadata={"help": "share of the corpus kept for eval loss"})
    eval_every: int = 500
    eval_batches: int = 8


def auto_block_size(task, tokenizer, template) -> int:
    """The context the task needs: its longest demonstration or held-out prompt plus the response
    budget, rounded up to a multiple of 32 (at least 64)."""
    longest = max(len(template.encode(tokenizer, r["prompt"], r["response"])[0]) for r in task.sft_rows("train"))
    longest_prompt = max(len(template.encode(tokenizer, p)[0]) for p in task.prompts("test"))
    need = max(longest, longest_prompt + task.max_response_tokens)
    return max(64, 32 * -(-need // 32))


def document_stream(tokenizer, documents: list[str]) -> list[int]:
    """One token stream of BOS doc EOS BOS doc EOS ...: the model learns where documents start and
    stop, and the special tokens' embeddings are trained before fine-tuning relies on them."""
    stream = []
    for doc in documents:
        stream += tokenizer.encode(doc, add_bos=True, add_eos=True)
    return stream


def random_windows(tokens: torch.Tensor, batch_size: int, length: int, generator: torch.Generator):
    """``batch_size`` windows of ``length`` consecutive tokens; each predicts its own next tokens."""
    starts = torch.randint(0, len(tokens) - length + 1, (batch_size,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()])  # (B, length)


@torch.no_grad()
def eval_loss(model, tokens, cfg: PretrainConfig, device) -> float:
    """Mean next-token loss over fixed validation windows (the same ones every time)."""
    g = torch.Generator().manual_seed(1234)
    model.eval()
    losses = []
    for _ in range(cfg.eval_batches):
        x = random_windows(tokens, cfg.batch_size, model.config.block_size, g).to(device)
        losses.append(next_token_loss(model(x), x).item())
    model.train()
    return sum(losses) / len(losses)


def pretrain(cfg: PretrainConfig) -> dict:
    """Train a GPT from scratch on ``task.pretrain_text()``; writes ``<out>/model``."""
    run = TrainingRun(cfg.run, cfg, name="pretrain", total_steps=cfg.steps)
    task, task_record = resolve_task(cfg.task)
    tokenizer, template = task.build_tokenizer(), task.template()
    tokens = torch.tensor(document_stream(tokenizer, task.pretrain_documents()), dtype=torch.long)

    m = cfg.model
    block_size = m.block_size or auto_block_size(task, tokenizer, template)
    model = GPT(GPTConfig(tokenizer.vocab_size, block_size, m.n_layer, m.n_head, m.n_embd, m.dropout)).to(run.device)
    n_val = max(block_size * 4, int(len(tokens) * cfg.val_fraction))
    if len(tokens) - n_val <= block_size + 1:
        raise ValueError(f"the corpus has {len(tokens)} tokens: too short for block_size {block_size}")
    train_tokens, val_tokens = tokens[:-n_val], tokens[-n_val:]
    opt = make_optimizer(model.parameters(), cfg.optim)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    run.track("model", model)
    run.track("optimizer", opt)
    run.track_generator("data", gen)
    start, _ = run.restore()
    print(f"[pretrain] {task.name}: {len(train_tokens):,} training tokens, vocab {tokenizer.vocab_size}, "
          f"{model.num_parameters():,} parameters, device {run.device}")

    model.train()
    t0 = time.perf_counter()
    for step in range(start + 1, cfg.steps + 1):
        lr = lr_at(step, cfg.steps, cfg.optim)
        set_lr(opt, lr)
        total = 0.0
        for _ in range(cfg.optim.grad_accum):
            x = random_windows(train_tokens, cfg.batch_size, block_size, gen).to(run.device)
            with run.autocast():
                loss = next_token_loss(model(x), x) / cfg.optim.grad_accum
            run.check_finite(step, loss=loss)
            loss.backward()
            total += loss.item()
        grad_norm = clip_grad_norm(model.parameters(), cfg.optim.grad_clip)
        run.check_finite(step, grad_norm=grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        metrics = {"loss": total, "lr": lr, "grad_norm": float(grad_norm)}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            vl = eval_loss(model, val_tokens, cfg, run.device)
            metrics.update({"eval/loss": vl, "eval/perplexity": math.exp(min(vl, 50))})
        run.log(step, metrics)
        run.maybe_save(step, cfg.steps)
    run.close()
    elapsed = time.perf_counter() - t0
    save_model(run.model_dir(), model, tokenizer, template, meta={"task": task_record, "stage": "pretrain"})
    final = {"eval/loss": eval_loss(model, val_tokens, cfg, run.device), "time": elapsed,
             "model": str(run.model_dir())}
    print(f"[pretrain] done in {elapsed:.0f}s: eval loss {final['eval/loss']:.3f}; model in {run.model_dir()}")
    return final
