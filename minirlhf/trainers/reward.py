"""Reward model training: a GPT backbone with a scalar head, fitted to preference pairs.

    r_phi(x, y) = w^T h_L[last real token of x y] + b                 (Ouyang et al., 2022, 3.5)
    loss(phi)   = -E[ p log sigma(s (r_c - r_r) - m) + (1 - p) log sigma(-(s (r_c - r_r) - m)) ]

the Bradley-Terry (1952) negative log-likelihood with a soft label p (the share of annotators who
preferred the chosen response), a strength s (slight 1, strong 2, very strong 3) and an optional
margin m (Touvron et al., 2023, Llama 2, eq. 2); see minirlhf.objectives.preference. Alternatives:

    loss = "plackett_luce"   rankings best first, -log prod_i exp(r_i) / sum_{j >= i} exp(r_j)
                             (Plackett, 1975; Luce, 1959); K = 2 is Bradley-Terry
    ties = true              pairs labelled as ties keep their label under Davidson's (1970) model,
                             P(tie) = nu sqrt(pi_c pi_r) / (pi_c + pi_r + nu sqrt(pi_c pi_r)),
                             with log nu one extra learned parameter

The backbone starts from the SFT model and the head from small random weights; by default the
whole model is trained (or LoRA, or the head alone). Chosen and rejected sequences go through the
model in ONE forward pass: collate_preferences stacks the B chosen rows over the B rejected rows.
At the end the mean and standard deviation of the reward over the training responses are stored in
the model (reward_mean, reward_std) so that later stages can use (r - mean) / std, the
normalisation of Ziegler et al. (2019), and the model is saved to ``<out>/model``.

Launched by torchrun, every process holds the whole model and takes its share of each global
batch (whole pairs or rankings: rows rank, rank + W, ...); its loss, a mean over its rows, is
weighted by (its rows / all rows) * W and the gradients are averaged over processes after the
micro-batches, which is the gradient of the mean over the global batch. Rank 0 evaluates, logs
and saves.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from minirlhf.data import (collate_preferences, collate_sft, encode_sft, row_sequences, step_batch, unique_rows,
                           usable_rows)
from minirlhf.distributed import SINGLE, DistInfo, all_reduce_gradients, global_sum, global_sums, shard
from minirlhf.lora import apply_lora, trainable_summary
from minirlhf.objectives.preference import (bradley_terry_loss, bradley_terry_prob, davidson_tie_loss,
                                            expected_calibration_error, plackett_luce_loss)
from minirlhf.saving import load_model, read_config, save_model
from minirlhf.tokenizer import check_same_tokenizer, load_tokenizer
from minirlhf.trainers.common import (LoRAConfig, OptimConfig, RunConfig, TaskConfig, TrainingRun, clip_grad_norm,
                                      lr_at, make_optimizer, resolve_task, set_lr)


@dataclass
class RewardConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/rm"))
    init: str = field(default="runs/sft/model", metadata={"help": "model folder to start from (the SFT model)"})
    data: str = field(default="runs/prefs", metadata={"help": "folder written by `minirlhf collect`"})
    train_file: str = field(default="", metadata={"help": "preference JSONL ('' = <data>/train.jsonl)"})
    test_file: str = field(default="", metadata={"help": "held-out preference JSONL ('' = <data>/test.jsonl "
                                                         "if it exists)"})
    rankings_file: str = field(default="", metadata={"help": "rankings JSONL for plackett_luce "
                                                             "('' = <data>/train_rankings.jsonl)"})
    policy: str = field(default="", metadata={"help": "policy folder whose tokenizer the reward model must share "
                                                      "('' = the policy recorded in <data>/summary.json)"})
    loss: Literal["bt", "plackett_luce"] = field(default="bt", metadata={"help": "bt: preference pairs; "
                                                                               "plackett_luce: rankings"})
    use_strength: bool = field(default=True, metadata={"help": "scale r_c - r_r by the row's strength"})
    margin: float = field(default=0.0, metadata={"help": "Llama 2 margin m in sigma(s d - m) (bt only)"})
    ties: bool = field(default=False, metadata={"help": "Davidson ties: tie rows keep their label, log nu learned"})
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    freeze_backbone: bool = field(default=False, metadata={"help": "train the scalar head only"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=20, weight_decay=0.1))
    unique: bool = field(default=False, metadata={
        "help": "train on each distinct training row once: K samples per prompt from a confident policy repeat "
                "the same pair many times (held-out rows keep their sampled frequencies)"})
    epochs: float = 3.0
    steps: int = field(default=0, metadata={"help": "optimizer steps (0: from epochs)"})
    batch_size: int = field(default=32, metadata={"help": "pairs (or rankings) per optimizer step"})
    max_len: int = field(default=0, metadata={"help": "longest sequence (0: the model's block_size)"})
    truncation: Literal["error", "left"] = "error"
    on_bad_row: Literal["skip", "raise"] = field(default="skip", metadata={
        "help": "bad rows (identical pair, empty text, prob outside [0, 1], too long, ...): skipped and "
                "counted, or the first one raises"})
    share_prompt: bool = field(default=True, metadata={
        "help": "one row per pair, x y_c y_r, the prompt computed once (data.share_prompts): the same scores "
                "for fewer positions; false: the chosen and the rejected sequence in rows of their own"})
    eval_every: int = 100
    eval_pairs: int = field(default=0, metadata={"help": "held-out pairs evaluated (0: all)"})
    eval_batch_size: int = 256
    ece_bins: int = 10


# ---------------------------------------------------------------------------------------------
# Reward model folders
# ---------------------------------------------------------------------------------------------


def load_reward_model(folder, policy_tokenizer=None, device="cpu"):
    """Load a trained reward model folder: (model, tokenizer, template, meta). With
    ``policy_tokenizer``, refuse a reward model whose tokenizer differs from the policy's."""
    stored = read_config(folder)["kind"]
    if stored != "reward":
        raise ValueError(f"{folder}: holds a {stored} model, expected a trained reward model (kind 'reward'); "
                         f"train one with `minirlhf rm`")
    model, tokenizer, template, meta = load_model(folder, kind="reward", device=device)
    if policy_tokenizer is not None:
        if tokenizer is None:
            raise ValueError(f"{folder}: the reward model folder has no tokenizer.json to compare with the policy's")
        check_same_tokenizer(policy_tokenizer, tokenizer, "policy", f"reward model {folder}")
    return model, tokenizer, template, meta


# ---------------------------------------------------------------------------------------------
# Scores, losses and metrics
# ---------------------------------------------------------------------------------------------


def pair_scores(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """r(x, y_c) and r(x, y_r) for a collate_preferences batch, from ONE forward pass over the
    2B stacked rows (chosen rows 0..B-1, rejected rows B..2B-1), or over its B rows x y_c y_r when
    it was collated with ``share_prompt`` (``data.share_prompts``: each response's last token has
    the hidden state it has in its own sequence). Returns two (B,) tensors."""
    if "shared" in batch:
        s = batch["shared"]
        values = model(s["input_ids"].to(device), positions=s["positions"].to(device),
                       allowed=s["allowed"].to(device))  # (B,T)
        return (values.gather(1, s["chosen_last"].to(device)[:, None]).squeeze(1),
                values.gather(1, s["rejected_last"].to(device)[:, None]).squeeze(1))
    scores = model.score(batch["input_ids"].to(device), batch["attention_mask"].to(device))  # (2B,)
    B = scores.shape[0] // 2
    return scores[:B], scores[B:]


def sequence_scores(model, tokenizer, template, rows: list[dict], max_len: int, truncation: str, device,
                    batch_size: int = 256) -> torch.Tensor:
    """r(x, y) for SFT-shaped rows {"prompt", "response"}, in batches; (N,)."""
    out = []
    for i in range(0, len(rows), batch_size):
        batch = collate_sft(encode_sft(tokenizer, template, rows[i:i + batch_size], max_len, truncation),
                            tokenizer.pad_id)
        out.append(model.score(batch["input_ids"].to(device), batch["attention_mask"].to(device)))
    return torch.cat(out)  # (N,)


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
    """Share of pairs the reward orders as the label does: 1 when sign(r_c - r_r) agrees with
    sign(p - 1/2), 0 when it disagrees, and 1/2 when either is 0 (equal rewards, or a tie label)."""
    agree = torch.sign(chosen - rejected) * torch.sign(prob - 0.5)  # (B,) in {-1, 0, 1}
    return ((1.0 + agree) / 2).mean()


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, prob: torch.Tensor) -> dict:
    chosen, rejected = chosen.detach(), rejected.detach()
    return {"rewards/accuracies": pair_accuracy(chosen, rejected, prob).item(),
            "rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
            "rewards/margins": (chosen - rejected).mean().item()}


def global_pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, prob: torch.Tensor,
                        d: DistInfo = SINGLE) -> dict:
    """pair_metrics over every rank's pairs together: each rank's means weighted by its pair count."""
    local = pair_metrics(chosen, rejected, prob)
    if not d.enabled:
        return local
    n = chosen.numel()
    *sums, total = global_sums([v * n for v in local.values()] + [n], d)
    return {k: v / total for k, v in zip(local, sums)}


def pair_tensors(rows: list[dict], use_strength: bool, dtype, device) -> dict:
    """prob, strength (1 when use_strength is off) and the tie indicator of the rows, (B,) each."""
    return {"prob": torch.tensor([float(r.get("prob", 1.0)) for r in rows], dtype=dtype, device=device),
            "strength": torch.tensor([float(r.get("strength", 1.0)) if use_strength else 1.0 for r in rows],
                                     dtype=dtype, device=device),
            "tie": torch.tensor([float(r.get("tie", False)) for r in rows], dtype=dtype, device=device)}


def pair_loss(chosen, rejected, labels: dict, cfg: RewardConfig, log_nu=None) -> torch.Tensor:
    """The pairwise loss of the config: Bradley-Terry with soft labels, strength and margin, or with
    ties=True Davidson's tie likelihood on the strength-scaled rewards s r (tie rows keep their tie
    label; every other row counts as a win of the chosen response)."""
    if cfg.ties:
        s = labels["strength"]
        return davidson_tie_loss(s * chosen, s * rejected, labels["tie"], log_nu)
    return bradley_terry_loss(chosen, rejected, labels["prob"], labels["strength"], cfg.margin)


def ranking_loss(scores: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Plackett-Luce loss over rankings of different lengths: ``scores`` (N,) holds each ranking's
    responses best first, one ranking after another (``sizes`` of them). Rankings of equal length
    go through plackett_luce_loss together; the result is the mean over rankings."""
    starts = torch.tensor([0] + sizes[:-1]).cumsum(0).tolist()
    total = scores.new_zeros(())
    for k in sorted(set(sizes)):
        idx = torch.tensor([[s + j for j in range(k)] for s, n in zip(starts, sizes) if n == k],
                           device=scores.device)  # (n_k, k)
        total = total + plackett_luce_loss(scores[idx]) * idx.shape[0]
    return total / len(sizes)


def ranking_pairs(scores: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair (better, worse) inside the rankings: the (B,) chosen and rejected rewards."""
    better, worse, start = [], [], 0
    for n in sizes:
        for i in range(n):
            for j in range(i + 1, n):
                better.append(start + i)
                worse.append(start + j)
        start += n
    return scores[better], scores[worse]


class TieParameter(nn.Module):
    """log nu of Davidson's tie model, learned with the reward model."""

    def __init__(self):
        super().__init__()
        self.log_nu = nn.Parameter(torch.zeros(()))


@torch.no_grad()
def evaluate_pairs(model, tokenizer, template, rows: list[dict], cfg: RewardConfig, max_len: int, device,
                   log_nu=None, prefix: str = "eval/") -> dict:
    """Loss, accuracy, mean rewards and margin on preference pairs, and the expected calibration
    error (Guo et al., 2017) of the model's P(chosen > rejected) = sigma(s (r_c - r_r) - m)
    against the labels p."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(rows), cfg.eval_batch_size):
        batch = collate_preferences(tokenizer, template, rows[i:i + cfg.eval_batch_size], max_len, cfg.truncation,
                                    share_prompt=cfg.share_prompt)
        c, r = pair_scores(model, batch, device)
        chosen.append(c)
        rejected.append(r)
    chosen, rejected = torch.cat(chosen), torch.cat(rejected)  # (N,) each
    labels = pair_tensors(rows, cfg.use_strength, chosen.dtype, device)
    out = {"loss": pair_loss(chosen, rejected, labels, cfg, log_nu).item()}
    out.update(pair_metrics(chosen, rejected, labels["prob"]))
    p_model = bradley_terry_prob(chosen, rejected, labels["strength"], 0.0 if cfg.ties else cfg.margin)  # (N,)
    out["ece"] = expected_calibration_error(p_model, labels["prob"], n_bins=cfg.ece_bins).item()
    if was_training:
        model.train()
    return {f"{prefix}{k}": v for k, v in out.items()}


@torch.no_grad()
def reward_statistics(model, tokenizer, template, rows: list[dict], max_len: int, truncation: str, device,
                      batch_size: int = 256) -> tuple[float, float, int]:
    """Mean and standard deviation (unbiased, as torch.std) of r(x, y) over the distinct
    (prompt, response) sequences of the training rows, each counted once; and their number."""
    was_training = model.training
    model.eval()
    seqs = list(dict.fromkeys((s["prompt"], s["response"]) for row in rows for s in row_sequences(row)))
    scores = sequence_scores(model, tokenizer, template, [{"prompt": p, "response": r} for p, r in seqs],
                             max_len, truncation, device, batch_size)  # (N,)
    if was_training:
        model.train()
    std = scores.std().item() if len(seqs) > 1 else 1.0
    return scores.mean().item(), std, len(seqs)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


def _check_config(cfg: RewardConfig) -> None:
    if cfg.ties and cfg.loss != "bt":
        raise ValueError(f"ties: Davidson ties apply to preference pairs; expected loss 'bt', got {cfg.loss!r}")
    if cfg.ties and cfg.margin != 0:
        raise ValueError(f"margin: Davidson's tie model has no margin; expected margin 0 with ties, got {cfg.margin}")
    if cfg.loss != "bt" and cfg.margin != 0:
        raise ValueError(f"margin: only the 'bt' loss has a margin, got margin {cfg.margin} with loss {cfg.loss!r}")
    if cfg.lora.enabled and cfg.freeze_backbone:
        raise ValueError("lora.enabled and freeze_backbone: choose one (LoRA trains adapters in the backbone)")
    if cfg.batch_size < 1 or cfg.eval_batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got batch_size={cfg.batch_size}, "
                         f"eval_batch_size={cfg.eval_batch_size}")


def _policy_tokenizer_check(cfg: RewardConfig, tokenizer) -> str | None:
    """Refuse to train a reward model whose tokenizer differs from the policy's: it could not score
    the policy's samples later. The policy is cfg.policy, else the one collect recorded."""
    policy = cfg.policy
    summary = Path(cfg.data) / "summary.json"
    if not policy and summary.is_file():
        with open(summary, encoding="utf-8") as f:
            policy = json.load(f).get("policy", "")
        if policy and not (Path(policy) / "tokenizer.json").is_file():
            print(f"[rm] {summary} names the policy {policy}, which is not here; tokenizer not compared",
                  file=sys.stderr)
            return None
    if not policy:
        return None
    tok_path = Path(policy) / "tokenizer.json"
    if not tok_path.is_file():
        raise FileNotFoundError(f"policy: {tok_path} not found; expected a model folder with a tokenizer")
    check_same_tokenizer(load_tokenizer(tok_path), tokenizer, f"policy {policy}",
                         f"reward model (initialised from {cfg.init})")
    return policy


def train_reward_model(cfg: RewardConfig) -> dict:
    """Fit a reward model on ``cfg.data``'s preferences; writes ``<out>/model`` (kind "reward",
    with reward_mean / reward_std set) and returns the final metrics."""
    _check_config(cfg)
    run = TrainingRun(cfg.run, cfg, name="rm", total_steps=None)  # seeds before the head is drawn
    model, tokenizer, template, meta = load_model(cfg.init, kind="reward")
    task, task_record = resolve_task(cfg.task, meta)
    template = template or task.template()
    if tokenizer is None:
        raise ValueError(f"{cfg.init}: the model folder has no tokenizer.json")
    policy = _policy_tokenizer_check(cfg, tokenizer)
    model.to(run.device)
    d = run.dist
    max_len = cfg.max_len or model.config.block_size
    data = Path(cfg.data)
    train_path = Path(cfg.train_file or data / "train.jsonl")
    test_path = Path(cfg.test_file) if cfg.test_file else data / "test.jsonl"
    if cfg.loss == "plackett_luce":
        train_path = Path(cfg.rankings_file or data / "train_rankings.jsonl")
    kind = "ranking" if cfg.loss == "plackett_luce" else "preference"
    train_rows, skipped_train = usable_rows(train_path, kind, tokenizer, template, max_len, cfg.truncation,
                                            cfg.on_bad_row, name="rm", option="--data")
    repeats = 0
    if cfg.unique:
        n = len(train_rows)
        train_rows = unique_rows(train_rows)
        repeats = n - len(train_rows)
    test_rows, skipped_test = [], 0
    if cfg.test_file or test_path.is_file():
        test_rows, skipped_test = usable_rows(test_path, "preference", tokenizer, template, max_len, cfg.truncation,
                                              cfg.on_bad_row, name="rm", option="--test-file")
        if cfg.eval_pairs:
            test_rows = test_rows[:cfg.eval_pairs]
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(train_rows) / cfg.batch_size))
    if min(cfg.batch_size * cfg.optim.grad_accum, len(train_rows)) < d.world_size:
        raise ValueError(f"batch_size: every one of the {d.world_size} processes needs rows, but a step holds "
                         f"{min(cfg.batch_size * cfg.optim.grad_accum, len(train_rows))}")
    run.logger.total_steps = steps if cfg.run.progress else None

    if cfg.lora.enabled:
        apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
        model.head.requires_grad_(True)  # apply_lora froze everything but the adapters
    elif cfg.freeze_backbone:
        model.backbone.requires_grad_(False)
    tie = TieParameter().to(run.device) if cfg.ties else None
    params = [p for p in model.parameters() if p.requires_grad] + (list(tie.parameters()) if tie else [])
    opt = make_optimizer(params, cfg.optim)
    run.track("model", model)
    run.track("optimizer", opt)
    if tie is not None:
        run.track("tie", tie)
    mode = "LoRA" if cfg.lora.enabled else "head only" if cfg.freeze_backbone else "full fine-tuning"
    print(f"[rm] {len(train_rows):,} {kind} rows from {train_path} ({skipped_train} skipped"
          f"{f', {repeats:,} repeats dropped' if cfg.unique else ''}), "
          f"{len(test_rows):,} held-out pairs ({skipped_test} skipped); loss {cfg.loss}"
          f"{' with Davidson ties' if cfg.ties else ''}; {steps} steps, {mode}: {trainable_summary(model)}")
    start, _ = run.restore()
    log_nu = tie.log_nu if tie is not None else None

    model.train()
    order, last_eval = None, {}
    t0 = time.perf_counter()
    for step in range(start + 1, steps + 1):
        lr = lr_at(step, steps, cfg.optim)
        set_lr(opt, lr)
        rows_step, order = step_batch(train_rows, order, step, cfg.batch_size * cfg.optim.grad_accum, cfg.run.seed)
        local = shard(rows_step, d)  # this rank's whole pairs (or rankings)
        micro = [local[i::cfg.optim.grad_accum] for i in range(cfg.optim.grad_accum)]
        micro = [part for part in micro if part]
        n_global = global_sum(len(local), d)
        total, chosen_all, rejected_all, prob_all = 0.0, [], [], []
        for part in micro:
            weight = len(part) / n_global * d.world_size  # a mean over `part` -> its share of the global mean
            with run.autocast():
                if cfg.loss == "plackett_luce":
                    seqs = [s for row in part for s in row_sequences(row)]
                    sizes = [len(row["responses"]) for row in part]
                    scores = sequence_scores(model, tokenizer, template, seqs, max_len, cfg.truncation, run.device,
                                             batch_size=len(seqs)).float()  # (sum of sizes,)
                    loss = ranking_loss(scores, sizes) * weight
                    chosen, rejected = ranking_pairs(scores, sizes)
                    prob = torch.ones_like(chosen)
                else:
                    batch = collate_preferences(tokenizer, template, part, max_len, cfg.truncation,
                                                share_prompt=cfg.share_prompt)
                    chosen, rejected = pair_scores(model, batch, run.device)
                    chosen, rejected = chosen.float(), rejected.float()
                    labels = pair_tensors(part, cfg.use_strength, chosen.dtype, run.device)
                    loss = pair_loss(chosen, rejected, labels, cfg, log_nu) * weight
                    prob = labels["prob"]
            run.check_finite(step, loss=loss)
            loss.backward()
            total += loss.item()
            chosen_all.append(chosen.detach())
            rejected_all.append(rejected.detach())
            prob_all.append(prob)
        all_reduce_gradients(params, d)  # the average over ranks: the global batch's gradient
        grad_norm = clip_grad_norm(params, cfg.optim.grad_clip)
        run.check_finite(step, grad_norm=grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        metrics = {"loss": global_sum(total, d) / d.world_size, "lr": lr, "grad_norm": float(grad_norm)}
        metrics.update(global_pair_metrics(torch.cat(chosen_all), torch.cat(rejected_all), torch.cat(prob_all), d))
        if tie is not None:
            metrics["tie/log_nu"] = tie.log_nu.item()
        if test_rows and (step % cfg.eval_every == 0 or step == steps) and run.is_main:
            last_eval = evaluate_pairs(model, tokenizer, template, test_rows, cfg, max_len, run.device, log_nu)
            metrics.update(last_eval)
        run.log(step, metrics)
        run.maybe_save(step, steps)
    run.close()
    elapsed = time.perf_counter() - t0
    if not run.is_main:
        return {}

    mean, std, n_seqs = reward_statistics(model, tokenizer, template, train_rows, max_len, cfg.truncation,
                                          run.device, cfg.eval_batch_size)
    model.reward_mean.fill_(mean)
    model.reward_std.fill_(std)
    extra_meta = {"davidson_log_nu": tie.log_nu.item()} if tie is not None else {}
    save_model(run.model_dir(), model, tokenizer, template,
               meta={"task": task_record, "stage": "reward", "loss": cfg.loss, "init": str(cfg.init),
                     "policy": policy, "data": str(train_path), "trainable": trainable_summary(model),
                     "reward_mean": mean, "reward_std": std, **extra_meta})
    final = dict(last_eval)
    if "eval/rewards/accuracies" in final:  # the short name the pipeline's summary reads
        final["eval/accuracy"] = final["eval/rewards/accuracies"]
    final.update({"time": elapsed, "model": str(run.model_dir()), "trainable": trainable_summary(model),
                  "reward_mean": mean, "reward_std": std, "reward_sequences": n_seqs,
                  "data/train_rows": len(train_rows), "data/test_rows": len(test_rows),
                  "data/skipped_train": skipped_train, "data/skipped_test": skipped_test,
                  "data/repeats_dropped": repeats, "steps": steps, **extra_meta})
    acc, ece = final.get("eval/rewards/accuracies"), final.get("eval/ece")
    held_out = f"held-out accuracy {acc:.3f}, ECE {ece:.3f}; " if acc is not None else ""
    print(f"[rm] done in {elapsed:.0f}s: {held_out}reward mean {mean:.3f}, std {std:.3f} over {n_seqs} "
          f"training sequences; model in {run.model_dir()}")
    return final
