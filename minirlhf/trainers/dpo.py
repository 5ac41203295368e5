"""Direct Preference Optimization (Rafailov et al., 2023): the policy learns from preference
pairs with a classification loss; no reward model, no sampling inside the loss.

    L_DPO(pi_theta; pi_ref) = -E_(x, y_w, y_l)~D [ log sigma( beta log pi_theta(y_w|x) / pi_ref(y_w|x)
                                                           - beta log pi_theta(y_l|x) / pi_ref(y_l|x) ) ]
                                                                          (Rafailov et al., 2023, eq. 7)

log pi(y|x) is summed over the response tokens (minirlhf.logprobs.sequence_logprobs), with dropout
off for the policy as for the reference (``pairs.concatenated_logps``). The loss
and its variants -- conservative DPO (label_smoothing, Mitchell, 2023), IPO (Azar et al., 2023),
the SLiC hinge (Zhao et al., 2023) -- are minirlhf.objectives.dpo_loss; this file only feeds it.

The reference policy pi_ref is the model we start from, and it never changes, so its
log-probs are computed ONCE per pair, before training, and cached (``PairPool``):

- with LoRA (the default) pi_ref is the same model inside ``lora_disabled(model)``: no second
  copy of the weights;
- with full fine-tuning pi_ref is the initial weights, scored before the first update. Online
  mode with full fine-tuning keeps one frozen copy, since fresh pairs arrive after updates.

Chosen and rejected go through the policy in ONE concatenated forward pass
(``data.collate_preferences``: the B chosen rows, then the B rejected rows).

Other losses on the same pairs (``dpo.loss_type``, issue 17):

- simpo (Meng et al., 2024): -log sigma(beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma),
  the length-normalised log-prob as the reward and a target margin; no reference model (its
  log-probs are never computed); |y| is the response's token count (the batch's loss_mask).
- orpo (Hong et al., 2024): the SFT NLL of y_w (per token) plus lambda times -log sigma of the log
  odds ratio of the per-token mean probabilities; no reference model; beta unused.
- kto (Ethayarajh et al., 2024): each pair gives a desirable example (chosen) and an undesirable
  one (rejected); lambda_y - v(x, y) with the reference point z_0 estimated on MISMATCHED pairs of
  the micro-batch (prompt i with the completions of pair i + 1), by the policy and the reference,
  each micro-batch, with no gradient. Needs a reference, and at least two pairs per micro-batch.
  ``--unpaired-data FILE`` (data.load_unpaired: prompt, completion, label) trains on unpaired
  examples instead of --data's pairs; z_0 then pairs prompt i with completion i + 1.

Soft labels. A preference row's ``prob`` = P(chosen is preferred). Treating it as the
Bradley-Terry soft label, the cross-entropy -p log sigma(beta h) - (1 - p) log sigma(-beta h) is
exactly conservative DPO with a per-pair flip probability eps = 1 - p: that is what
``dpo.soft_labels`` does (a tie, prob 0.5, pulls the two implicit rewards together; rows with
prob 1 are plain DPO). ``strength`` is not used.

Online (iterative) DPO, ``rounds`` > 0: each round samples ``samples_per_prompt`` responses per
train prompt from the CURRENT policy, judges every pair with the task's programmatic judge
(minirlhf.judges; the gold check for arithmetic), and trains ``steps_per_round`` steps on the
fresh pairs; the reference stays the starting model (Xu et al., 2023, "Some things are more
CRINGE than others: preference optimization with the pairwise cringe loss"; Guo et al., 2024,
"Direct language model alignment from online AI feedback"). Each round's pairs are written to
``<out>/rounds/round_NNN.jsonl``, which is also how a run resumed in the middle of a round finds them.

Launched by torchrun, every process holds the whole model and the whole pool (the reference
log-probs of every pair) and takes its share of each step's pairs (rows rank, rank + W, ...); its
summed pair losses are divided by the step's global pair count and multiplied by W, and the
gradients are averaged over processes, which is the gradient of the mean over all the step's
pairs. Online, each process samples its share of a round's prompts and the pairs of all of them
are gathered on every process. Rank 0 evaluates, logs and saves.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from minirlhf.data import collate_preferences, collate_sft, encode_sft, load_preferences, load_unpaired, usable_rows
from minirlhf.distributed import SINGLE, DistInfo, all_reduce_gradients, global_sums
from minirlhf.collection import load_round, round_pairs, round_seed, save_round, task_judge
from minirlhf.evaluation import evaluate_task
from minirlhf.logger import Timer
from minirlhf.pairs import PairPool, batch_logps, concatenated_logps, reference_logps
from minirlhf.lora import apply_lora, trainable_summary
from minirlhf.objectives import (DPO_LOSS_TYPES, dpo_loss, kto_loss, kto_reference_point, orpo_loss,
                                 simpo_loss)
from minirlhf.policies import reference_policy
from minirlhf.saving import load_model, save_model
from minirlhf.trainers.common import (LoRAConfig, OptimConfig, RunConfig, TaskConfig, TrainingRun, clip_grad_norm,
                                      lr_at, make_optimizer, resolve_task, set_lr)


@dataclass
class DPOLossConfig:
    """The loss: objectives.dpo_loss."""

    beta: float = field(default=1.0, metadata={
        "help": "beta: strength of the KL tie to the reference (> 0); 1.0 suits arithmetic's 2-4 token answers, "
                "long responses (instruct, ~100 tokens) want ~0.1, the usual value in the DPO paper"})
    loss_type: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo", "kto"] = field(
        default="sigmoid", metadata={"help": "sigmoid (DPO), ipo (Azar et al., 2023), hinge (SLiC, Zhao et al., 2023), "
                                             "simpo (Meng et al., 2024; no reference), orpo (Hong et al., 2024; no "
                                             "reference), kto (Ethayarajh et al., 2024; chosen desirable, rejected "
                                             "undesirable)"})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "conservative DPO: every label flipped with this probability (sigmoid only)"})
    soft_labels: bool = field(
        default=True, metadata={"help": "use each row's prob as a soft label: conservative DPO with eps = 1 - prob"})
    simpo_gamma: float = field(default=0.5, metadata={
        "help": "simpo: target reward margin gamma, in reward units (the paper: beta 2.0-2.5, gamma 0.5-1.5)"})
    orpo_lambda: float = field(default=0.1, metadata={"range": (0, False, None, False), "help": "orpo: weight lambda of the odds-ratio term (paper: 0.1)"})
    kto_lambda_d: float = field(default=1.0, metadata={"range": (0, True, None, False), "help": "kto: weight lambda_D of desirable examples"})
    kto_lambda_u: float = field(default=1.0, metadata={"range": (0, True, None, False), "help": "kto: weight lambda_U of undesirable examples"})


LOSS_TYPES = DPO_LOSS_TYPES + ("simpo", "orpo", "kto")
REFERENCE_FREE = ("simpo", "orpo")  # no pi_ref: its log-probs are never computed


@dataclass
class DPOConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/dpo"))
    init: str = field(default="runs/sft/model", metadata={"help": "model folder to start from (also pi_ref)"})
    data: str = field(default="runs/prefs/train.jsonl",
                      metadata={"help": "preference JSONL for offline DPO (unused when rounds > 0)"})
    eval_data: str = field(default="", metadata={
        "help": "held-out preference JSONL ('' = test.jsonl beside --data when it exists and rounds = 0, "
                "'none' = no held-out pairs)"})
    unpaired_data: str = field(default="", metadata={
        "help": "dpo.loss_type=kto only: unpaired JSONL (prompt, completion, label) trained on instead of --data"})
    max_pairs: int = field(default=0, metadata={"help": "use at most this many training pairs (0: all)"})
    dpo: DPOLossConfig = field(default_factory=DPOLossConfig)
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(enabled=True))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, warmup_steps=10))
    epochs: float = 2.0
    steps: int = field(default=0, metadata={"help": "offline optimizer steps (0: from epochs)"})
    batch_size: int = field(default=32, metadata={"help": "pairs per optimizer step"})
    max_len: int = field(default=0, metadata={"help": "longest sequence (0: the model's block_size)"})
    truncation: Literal["error", "left"] = "error"
    share_prompt: bool = field(default=True, metadata={
        "help": "one row per pair, x y_w y_l, the prompt computed once (data.share_prompts): the same "
                "log-probs for fewer positions; false: the chosen and the rejected sequence in rows of their own"})
    on_bad_row: Literal["skip", "raise"] = field(default="skip", metadata={
        "help": "bad rows of --data (invalid JSON, identical pair, unencodable, too long): skipped and listed "
                "with their file:line, or the first one raises"})
    # online (iterative) DPO
    rounds: int = field(default=0, metadata={"help": "online DPO rounds (0: offline DPO on --data)"})
    steps_per_round: int = field(default=20, metadata={"help": "optimizer steps on each round's pairs"})
    prompts_per_round: int = field(default=256, metadata={"help": "train prompts sampled each round"})
    samples_per_prompt: int = field(default=4, metadata={"help": "K responses per prompt: K(K-1)/2 comparisons"})
    sample_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rounds"})
    judge: Literal["auto", "gold", "heuristic"] = field(
        default="auto", metadata={"help": "auto: gold where the task has references, else heuristic"})
    tie_policy: Literal["drop", "half"] = field(default="drop", metadata={"help": "ties: dropped or kept as prob 0.5"})
    # evaluation
    eval_every: int = 50
    eval_prompts: int = field(default=300, metadata={"help": "held-out prompts evaluated"})
    eval_at_start: bool = field(default=True, metadata={"help": "evaluate the starting model (logged as step 0)"})


# ---------------------------------------------------------------------------------------------
# The pairs with their reference log-probs (pairs.py), computed once
# ---------------------------------------------------------------------------------------------


def build_pool(model, rows, tokenizer, template, cfg: DPOConfig, device, ref_model=None,
               autocast=contextlib.nullcontext) -> PairPool:
    """The rows with log pi_ref(y_w|x), log pi_ref(y_l|x) of each, computed once, before any update
    (zeros, never computed, for the reference-free losses)."""
    if cfg.dpo.loss_type in REFERENCE_FREE:
        return PairPool(rows, torch.zeros(len(rows)), torch.zeros(len(rows)))
    max_len = cfg.max_len or model.config.block_size
    ref_c, ref_r = reference_logps(model, rows, tokenizer, template, max_len, cfg.truncation, cfg.batch_size,
                                   device, ref_model, autocast, cfg.share_prompt)
    return PairPool(rows, ref_c, ref_r)


# ---------------------------------------------------------------------------------------------
# The loss of a batch and one optimizer step
# ---------------------------------------------------------------------------------------------


def check_labels(rows: list[dict], cfg: DPOLossConfig, where: str) -> None:
    """Soft labels (prob < 1) need the sigmoid loss, and do not mix with a global label_smoothing."""
    soft = [i for i, r in enumerate(rows) if float(r.get("prob", 1.0)) < 1.0]
    if not (cfg.soft_labels and soft):
        return
    first = soft[0]
    if cfg.loss_type != "sigmoid":
        raise ValueError(f"{where}: row {first} has prob {rows[first]['prob']} < 1 and dpo.soft_labels is on, "
                         f"but dpo.loss_type={cfg.loss_type!r} takes no soft labels; use dpo.loss_type=sigmoid "
                         f"or --dpo.soft-labels false (prob is then ignored)")
    if cfg.label_smoothing > 0:
        raise ValueError(f"{where}: row {first} has prob {rows[first]['prob']} < 1 and dpo.label_smoothing="
                         f"{cfg.label_smoothing} is set: choose one source of label noise (--dpo.soft-labels false, "
                         f"or --dpo.label-smoothing 0)")


def pair_label_smoothing(batch: dict, cfg: DPOLossConfig):
    """The eps of conservative DPO for each pair: 1 - prob with soft labels (the probability that
    the label is flipped), else the global label_smoothing."""
    if cfg.soft_labels and bool((batch["prob"] < 1).any()):
        return 1.0 - batch["prob"]  # (B,)
    return cfg.label_smoothing


def response_lengths(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """|y_w|, |y_l|: the response token counts of a ``collate_preferences`` batch (its loss_mask), (B,) each."""
    n = batch["loss_mask"].to(device).sum(-1).float()  # (2B,)
    B = n.size(0) // 2
    return n[:B], n[B:]


def mismatched_rows(rows: list[dict]) -> list[dict]:
    """KTO's mismatched pairs: prompt i with the chosen and rejected completions of row i + 1 (cyclic)."""
    if len(rows) < 2:
        raise ValueError("dpo.loss_type=kto: the reference point needs at least 2 pairs per micro-batch "
                         "(raise batch_size, or lower optim.grad_accum or the number of processes)")
    return [{"prompt": r["prompt"], "chosen": rows[(i + 1) % len(rows)]["chosen"],
             "rejected": rows[(i + 1) % len(rows)]["rejected"]} for i, r in enumerate(rows)]


@torch.no_grad()
def kto_z0(model, kl_batch: dict, device, ref_model=None) -> torch.Tensor:
    """KTO's z_0 = max(0, mean log pi_theta(y'|x) / pi_ref(y'|x)) over every completion of ``kl_batch``,
    the collated mismatched examples (paired or unpaired rows)."""
    policy = batch_logps(model, kl_batch, device)  # (N,)
    with reference_policy(model, ref_model) as ref:
        reference = batch_logps(ref, kl_batch, device)
    return kto_reference_point(policy, reference)


def dpo_batch_losses(model, batch: dict, ref_chosen, ref_rejected, cfg: DPOLossConfig, device, kl_batch=None,
                     ref_model=None):
    """Per-pair losses of one ``collate_preferences`` batch: (losses (B,), chosen_rewards (B,),
    rejected_rewards (B,), policy_chosen_logps (B,), policy_rejected_logps (B,)).

    simpo, orpo: ref_chosen, ref_rejected are unused. kto: ``kl_batch`` is the collated
    ``mismatched_rows`` of the batch (for z_0); the loss of a pair is the mean of its desirable
    (chosen) and undesirable (rejected) example's, so the mean over pairs is KTO's mean over examples."""
    policy_c, policy_r = concatenated_logps(model, batch, device)  # (B,), (B,)
    if cfg.loss_type == "simpo":
        len_c, len_r = response_lengths(batch, device)
        losses, reward_c, reward_r = simpo_loss(policy_c, policy_r, len_c.to(policy_c.dtype),
                                                len_r.to(policy_c.dtype), cfg.beta, cfg.simpo_gamma)
        return losses, reward_c, reward_r, policy_c, policy_r
    if cfg.loss_type == "orpo":
        len_c, len_r = response_lengths(batch, device)
        # mean token log-probs, kept just below 0: a response of probability 1 has infinite odds
        mean_c = (policy_c / len_c.to(policy_c.dtype)).clamp(max=-1e-6)
        mean_r = (policy_r / len_r.to(policy_r.dtype)).clamp(max=-1e-6)
        losses, _, _ = orpo_loss(mean_c, mean_r, -policy_c / len_c.to(policy_c.dtype), cfg.orpo_lambda)
        return losses, mean_c.detach(), mean_r.detach(), policy_c, policy_r
    ref_c, ref_r = ref_chosen.to(device, policy_c.dtype), ref_rejected.to(device, policy_c.dtype)
    if cfg.loss_type == "kto":
        z0 = kto_z0(model, kl_batch, device, ref_model).to(policy_c.dtype)
        B = policy_c.size(0)
        desirable = torch.cat([torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)]).to(device)
        losses, rewards = kto_loss(torch.cat([policy_c, policy_r]), torch.cat([ref_c, ref_r]), desirable, z0,
                                   cfg.beta, cfg.kto_lambda_d, cfg.kto_lambda_u)  # (2B,)
        return (losses[:B] + losses[B:]) / 2, rewards[:B], rewards[B:], policy_c, policy_r
    eps = pair_label_smoothing(batch, cfg)
    if isinstance(eps, torch.Tensor):
        eps = eps.to(device=device, dtype=policy_c.dtype)
    losses, reward_c, reward_r = dpo_loss(policy_c, policy_r, ref_c, ref_r, cfg.beta, cfg.loss_type, eps)
    return losses, reward_c, reward_r, policy_c, policy_r


# KTO on unpaired examples (--unpaired-data): one completion per row, labelled desirable or not


def collate_unpaired(tokenizer, template, rows: list[dict], max_len: int, truncation: str = "error") -> dict:
    """Encode and right-pad unpaired rows ({prompt, completion, label}) as ``collate_sft`` does."""
    encoded = encode_sft(tokenizer, template, [{"prompt": r["prompt"], "response": r["completion"]} for r in rows],
                         max_len, truncation)
    return collate_sft(encoded, tokenizer.pad_id)


@torch.no_grad()
def build_unpaired_pool(model, rows, tokenizer, template, cfg: DPOConfig, device, autocast=contextlib.nullcontext
                        ) -> PairPool:
    """Unpaired rows with log pi_ref(y|x) of each (in ref_chosen; ref_rejected unused), computed once."""
    max_len = cfg.max_len or model.config.block_size
    ref = [torch.zeros(0)]
    with reference_policy(model) as m:
        for i in range(0, len(rows), cfg.batch_size):
            with autocast():
                ref.append(batch_logps(m, collate_unpaired(tokenizer, template, rows[i : i + cfg.batch_size],
                                                              max_len, cfg.truncation), device).cpu())
    ref_all = torch.cat(ref)
    return PairPool(rows, ref_all, torch.zeros_like(ref_all))


def kto_unpaired_losses(model, rows: list[dict], ref_logps, cfg: DPOConfig, tokenizer, template, max_len, device,
                        ref_model=None):
    """KTO on unpaired rows: (losses (B,), chosen_rewards, rejected_rewards, chosen_logps, rejected_logps),
    the last four (B,) with the reward / log-prob on the desirable rows in "chosen" and on the undesirable
    rows in "rejected" (0 elsewhere), so rewards/accuracies is the share of rewards of the right sign."""
    policy = batch_logps(model, collate_unpaired(tokenizer, template, rows, max_len, cfg.truncation), device)
    if len(rows) < 2:
        raise ValueError("dpo.loss_type=kto: the reference point needs at least 2 rows per micro-batch")
    kl_rows = [{"prompt": r["prompt"], "completion": rows[(i + 1) % len(rows)]["completion"]} for i, r in enumerate(rows)]
    kl_batch = collate_unpaired(tokenizer, template, kl_rows, max_len, "left")
    z0 = kto_z0(model, kl_batch, device, ref_model).to(policy.dtype)
    desirable = torch.tensor([bool(r["label"]) for r in rows], device=policy.device)
    losses, rewards = kto_loss(policy, ref_logps.to(device, policy.dtype), desirable, z0, cfg.dpo.beta,
                               cfg.dpo.kto_lambda_d, cfg.dpo.kto_lambda_u)
    zero = torch.zeros_like(rewards)
    return (losses, torch.where(desirable, rewards, zero), torch.where(desirable, zero, rewards),
            torch.where(desirable, policy, zero), torch.where(desirable, zero, policy))


def kl_collate(tokenizer, template, rows, max_len, cfg: DPOConfig):
    """The collated mismatched pairs of KTO's reference point (None for the other losses); left-truncated,
    since a prompt with another pair's completions may be longer than either pair."""
    if cfg.dpo.loss_type != "kto":
        return None
    return collate_preferences(tokenizer, template, mismatched_rows(rows), max_len, "left")


def dpo_step(model, optimizer, params, rows, ref_chosen, ref_rejected, cfg: DPOConfig, tokenizer, template,
             lr: float, device="cpu", autocast=contextlib.nullcontext, check_finite=None,
             timer: Timer | None = None, d: DistInfo = SINGLE, ref_model=None) -> dict:
    """One optimizer step on a list of preference rows with their cached reference log-probs.

    Collation, one concatenated forward pass per micro-batch, backward, gradient clipping,
    AdamW; returns the step's metrics. ``timer`` (optional) records the phases "forward",
    "backward" and "optimizer"; everything else is bookkeeping. ``check_finite(**values)``
    stops on a NaN/Inf loss or gradient norm before the optimizer moves.

    ``rows`` is the step's global batch; distributed, this rank takes rows rank, rank + W, ...,
    scales its summed losses by W / len(rows) and averages the gradients over ranks, so every rank
    ends with the gradient of the mean over all the rows (and the same metrics).
    """
    timer = timer or Timer()
    max_len = cfg.max_len or model.config.block_size
    set_lr(optimizer, lr)
    accum = max(1, cfg.optim.grad_accum)
    n = len(rows)  # pairs in the global batch
    local = list(range(n))[d.rank :: d.world_size]  # this rank's pairs
    parts = [local[i::accum] for i in range(accum) if i < len(local)]
    sums = {"loss": 0.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/accuracies": 0.0,
            "rewards/margins": 0.0, "logps/chosen": 0.0, "logps/rejected": 0.0}
    unpaired = "completion" in rows[0]  # --unpaired-data (KTO)
    for part in parts:
        index = torch.tensor(part, dtype=torch.long)
        if unpaired:
            with timer("forward"):
                with autocast():
                    losses, rc, rr, pc, pr = kto_unpaired_losses(model, [rows[i] for i in part], ref_chosen[index],
                                                                 cfg, tokenizer, template, max_len, device, ref_model)
                    loss = losses.sum() / n * d.world_size
        else:
            batch = collate_preferences(tokenizer, template, [rows[i] for i in part], max_len, cfg.truncation,
                                        share_prompt=cfg.share_prompt)
            kl_batch = kl_collate(tokenizer, template, [rows[i] for i in part], max_len, cfg)
            with timer("forward"):
                with autocast():
                    losses, rc, rr, pc, pr = dpo_batch_losses(model, batch, ref_chosen[index], ref_rejected[index],
                                                              cfg.dpo, device, kl_batch, ref_model)
                    loss = losses.sum() / n * d.world_size  # the mean over all n pairs of the step, x W
        if check_finite is not None:
            check_finite(loss=loss)
        with timer("backward"):
            loss.backward()
        sums["loss"] += loss.item() / d.world_size
        sums["rewards/chosen"] += rc.sum().item() / n
        sums["rewards/rejected"] += rr.sum().item() / n
        sums["rewards/accuracies"] += (rc > rr).float().sum().item() / n
        sums["rewards/margins"] += (rc - rr).sum().item() / n
        sums["logps/chosen"] += pc.detach().sum().item() / n
        sums["logps/rejected"] += pr.detach().sum().item() / n
    with timer("backward"):
        all_reduce_gradients(params, d)  # the average over ranks: the gradient of the global mean
    sums = dict(zip(sums, global_sums(list(sums.values()), d)))  # each rank held its share of the means
    with timer("optimizer"):
        grad_norm = clip_grad_norm(params, cfg.optim.grad_clip)
        if check_finite is not None:
            check_finite(grad_norm=grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {**sums, "lr": lr, "grad_norm": float(grad_norm)}


@torch.no_grad()
def pair_metrics(model, pool: PairPool, cfg: DPOConfig, tokenizer, template, device,
                 autocast=contextlib.nullcontext, prefix: str = "eval/", ref_model=None) -> dict:
    """DPO loss and implicit-reward statistics of the policy on held-out pairs."""
    was_training = model.training
    model.eval()
    max_len = cfg.max_len or model.config.block_size
    totals = {"loss": 0.0, "rewards/accuracies": 0.0, "rewards/margins": 0.0, "rewards/chosen": 0.0,
              "rewards/rejected": 0.0}
    for i in range(0, len(pool), cfg.batch_size):
        rows = pool.rows[i : i + cfg.batch_size]
        batch = collate_preferences(tokenizer, template, rows, max_len, cfg.truncation, share_prompt=cfg.share_prompt)
        # kto's z_0 is one number per batch: a last batch of one pair takes it from the first two pairs
        kl_rows = rows if len(rows) >= 2 else pool.rows[:2]
        with autocast():
            losses, rc, rr, _, _ = dpo_batch_losses(model, batch, pool.ref_chosen[i : i + len(rows)],
                                                    pool.ref_rejected[i : i + len(rows)], cfg.dpo, device,
                                                    kl_collate(tokenizer, template, kl_rows, max_len, cfg), ref_model)
        totals["loss"] += losses.sum().item()
        totals["rewards/accuracies"] += (rc > rr).float().sum().item()
        totals["rewards/margins"] += (rc - rr).sum().item()
        totals["rewards/chosen"] += rc.sum().item()
        totals["rewards/rejected"] += rr.sum().item()
    model.train(was_training)
    return {prefix + k: v / len(pool) for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


def check_config(cfg: DPOConfig) -> None:
    if not cfg.dpo.beta > 0:
        raise ValueError(f"dpo.beta: expected a number > 0, got {cfg.dpo.beta!r}")
    if cfg.dpo.loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo.loss_type: expected one of {LOSS_TYPES}, got {cfg.dpo.loss_type!r}")
    if not cfg.dpo.orpo_lambda >= 0:
        raise ValueError(f"dpo.orpo_lambda: expected a number >= 0, got {cfg.dpo.orpo_lambda!r}")
    for name in ("kto_lambda_d", "kto_lambda_u"):
        if not getattr(cfg.dpo, name) > 0:
            raise ValueError(f"dpo.{name}: expected a number > 0, got {getattr(cfg.dpo, name)!r}")
    if cfg.dpo.loss_type == "kto" and cfg.batch_size < 2:
        raise ValueError(f"batch_size: dpo.loss_type=kto estimates its reference point on mismatched pairs of a "
                         f"batch, expected >= 2, got {cfg.batch_size!r}")
    if not 0.0 <= cfg.dpo.label_smoothing < 0.5:
        raise ValueError(f"dpo.label_smoothing: expected a flip probability in [0, 0.5), "
                         f"got {cfg.dpo.label_smoothing!r}")
    if cfg.dpo.label_smoothing > 0 and cfg.dpo.loss_type != "sigmoid":
        raise ValueError(f"dpo.label_smoothing: only dpo.loss_type=sigmoid (conservative DPO) uses it, "
                         f"got loss_type {cfg.dpo.loss_type!r}")
    for name in ("batch_size", "eval_every", "eval_prompts"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {getattr(cfg, name)!r}")
    if cfg.rounds < 0:
        raise ValueError(f"rounds: expected an integer >= 0, got {cfg.rounds!r}")
    if cfg.rounds > 0 and cfg.unpaired_data:
        raise ValueError("unpaired_data: online DPO (rounds > 0) makes its own pairs; drop --unpaired-data or --rounds")
    if cfg.rounds > 0:
        if cfg.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt: online DPO compares pairs, expected >= 2, "
                             f"got {cfg.samples_per_prompt!r}")
        for name in ("steps_per_round", "prompts_per_round"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(cfg, name)!r}")
        if cfg.tie_policy == "half" and cfg.dpo.soft_labels and (cfg.dpo.loss_type != "sigmoid"
                                                                  or cfg.dpo.label_smoothing > 0):
            raise ValueError(f"tie_policy: 'half' keeps ties as soft labels (prob 0.5), which need "
                             f"dpo.loss_type=sigmoid and dpo.label_smoothing=0; got loss_type "
                             f"{cfg.dpo.loss_type!r}, label_smoothing {cfg.dpo.label_smoothing}")
        if not cfg.sample_temperature > 0:
            raise ValueError(f"sample_temperature: expected > 0 (a greedy policy gives K identical samples), "
                             f"got {cfg.sample_temperature!r}")
    elif cfg.unpaired_data:
        if cfg.dpo.loss_type != "kto":
            raise ValueError(f"unpaired_data: unpaired examples need dpo.loss_type=kto, got {cfg.dpo.loss_type!r}")
        if not Path(cfg.unpaired_data).is_file():
            raise ValueError(f"unpaired_data: file {cfg.unpaired_data!r} not found (JSONL rows: prompt, completion, "
                             f"label)")
    elif not cfg.data or not Path(cfg.data).is_file():
        raise ValueError(f"data: preference file {cfg.data!r} not found; write one with `minirlhf collect` "
                         f"(or pass --data FILE), or run online DPO with --rounds N")


def eval_data_path(cfg: DPOConfig) -> Path | None:
    """The held-out preference file: --eval-data, else test.jsonl beside --data (offline only)."""
    if cfg.eval_data == "none" or ((cfg.rounds > 0 or cfg.unpaired_data) and not cfg.eval_data):
        return None
    if cfg.eval_data:
        if not Path(cfg.eval_data).is_file():
            raise ValueError(f"eval_data: preference file {cfg.eval_data!r} not found")
        return Path(cfg.eval_data)
    beside = Path(cfg.data).parent / "test.jsonl" if cfg.data else None
    return beside if beside is not None and beside.is_file() else None


def dpo(cfg: DPOConfig) -> dict:
    """Train ``cfg.init`` with DPO on preference pairs (offline) or on pairs it samples and a
    judge compares (``rounds`` > 0); writes ``<out>/model`` (LoRA merged, the adapter beside it)."""
    check_config(cfg)
    model, tokenizer, template, meta = load_model(cfg.init, kind="gpt")
    if tokenizer is None:
        raise ValueError(f"init: {cfg.init} has no tokenizer.json")
    task, task_record = resolve_task(cfg.task, meta)
    template = template or task.template()
    online = cfg.rounds > 0
    steps_total = cfg.rounds * cfg.steps_per_round if online else 0
    run = TrainingRun(cfg.run, cfg, name="dpo", total_steps=None)
    d = run.dist
    if cfg.batch_size < d.world_size:
        raise ValueError(f"batch_size: {cfg.batch_size} pairs cannot be shared by {d.world_size} processes")
    model.to(run.device)
    model.train()
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
    # pi_ref. LoRA: the adapters off. Full fine-tuning: the initial weights, scored now, before any update
    # (and before a resumed run loads its checkpoint); online full fine-tuning keeps one frozen copy.
    # KTO scores fresh mismatched pairs with pi_ref at every step, so full fine-tuning keeps the copy too.
    ref_model = None
    if (online or cfg.dpo.loss_type == "kto") and not cfg.lora.enabled and cfg.dpo.loss_type not in REFERENCE_FREE:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)

    pool = None
    if not online and cfg.unpaired_data:
        rows = load_unpaired(cfg.unpaired_data)
        if cfg.max_pairs:
            rows = rows[: cfg.max_pairs]
        pool = build_unpaired_pool(model, rows, tokenizer, template, cfg, run.device, run.autocast)
        steps_total = cfg.steps or max(1, math.ceil(cfg.epochs * len(pool) / cfg.batch_size))
    elif not online:
        rows, _ = usable_rows(cfg.data, "preference", tokenizer, template, cfg.max_len or model.config.block_size,
                              cfg.truncation, cfg.on_bad_row, "dpo")
        if cfg.max_pairs:
            rows = rows[: cfg.max_pairs]
        check_labels(rows, cfg.dpo, cfg.data)
        pool = build_pool(model, rows, tokenizer, template, cfg, run.device, autocast=run.autocast)
        steps_total = cfg.steps or max(1, math.ceil(cfg.epochs * len(pool) / cfg.batch_size))
    eval_pool = None
    path = eval_data_path(cfg)
    if path is not None and run.is_main:  # only rank 0 evaluates
        eval_rows = load_preferences(path)
        check_labels(eval_rows, cfg.dpo, str(path))
        eval_pool = build_pool(model, eval_rows, tokenizer, template, cfg, run.device, ref_model, run.autocast)
    run.logger.total_steps = steps_total if cfg.run.progress else None

    def evaluate() -> dict:
        model.eval()
        out = evaluate_task(model, task, tokenizer, template, "test", temperatures=(0.0, 1.0),
                            max_prompts=cfg.eval_prompts, seed=cfg.run.seed)
        model.train()
        if eval_pool is not None:
            out.update(pair_metrics(model, eval_pool, cfg, tokenizer, template, run.device, run.autocast,
                                    ref_model=ref_model))
        return out

    start_eval = evaluate() if cfg.eval_at_start and run.start_step == 0 and run.is_main else {}
    judge = task_judge(task, cfg.judge) if online else None
    what = (f"online, {cfg.rounds} rounds x {cfg.steps_per_round} steps, K={cfg.samples_per_prompt}" if online
            else f"{len(pool):,} unpaired examples from {cfg.unpaired_data}" if cfg.unpaired_data
            else f"{len(pool):,} pairs from {cfg.data}")
    print(f"[dpo] {task.name}: {what}, {steps_total} steps, beta {cfg.dpo.beta}, {cfg.dpo.loss_type}, "
          f"{'LoRA' if cfg.lora.enabled else 'full fine-tuning'}: {trainable_summary(model)}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optim)
    run.track("model", model)
    run.track("optimizer", opt)
    start, _ = run.restore()
    if start_eval:
        run.log(0, start_eval)

    check = lambda **values: run.check_finite(step, **values)  # noqa: E731  (the current step)
    order, last_eval, round_index, round_stats = None, None, 0, {}
    t0 = time.perf_counter()
    for step in range(start + 1, steps_total + 1):
        local_step, seed = step, cfg.run.seed
        if online:
            r = (step - 1) // cfg.steps_per_round + 1
            local_step, seed = step - (r - 1) * cfg.steps_per_round, round_seed(cfg.run.seed, r)
            if r != round_index:  # a new round (or the round a resumed run stopped in)
                round_index, order = r, None
                if step == start + 1 and local_step > 1:  # resumed in the middle of a round: its pairs
                    rows, round_stats = load_round(cfg.run.out, r, step), {}
                else:  # K samples per prompt from the current policy, every pair judged
                    rows, round_stats = round_pairs(model, task, judge, tokenizer, template, cfg.prompts_per_round,
                                                    cfg.samples_per_prompt, cfg.sample_temperature, cfg.tie_policy,
                                                    cfg.run.seed, r, d)
                    round_stats["round"] = r
                    if run.is_main:
                        save_round(cfg.run.out, r, rows)
                        print(f"[dpo] round {r}: {round_stats['round/pairs']} pairs from "
                              f"{round_stats['round/prompts']} prompts, mean sample score {round_stats['round/score']:.3f}")
                pool = build_pool(model, rows, tokenizer, template, cfg, run.device, ref_model, run.autocast)
        metrics = dict(round_stats) if online and local_step == 1 else {}
        if len(pool) < d.world_size:  # a round in which every pair was a tie or identical: nothing to learn
            metrics["skipped"] = 1
        else:
            rows_step, ref_c, ref_r, order = pool.batch(local_step, cfg.batch_size, seed, order)
            metrics.update(dpo_step(model, opt, params, rows_step, ref_c, ref_r, cfg, tokenizer, template,
                                    lr_at(step, steps_total, cfg.optim), run.device, run.autocast, check, d=d,
                                    ref_model=ref_model))
        if (step % cfg.eval_every == 0 or step == steps_total) and run.is_main:
            last_eval = evaluate()
            metrics.update(last_eval)
        run.log(step, metrics)
        run.maybe_save(step, steps_total)
    run.close()
    elapsed = time.perf_counter() - t0
    if not run.is_main:
        return {}
    final = dict(last_eval or evaluate())
    save_model(run.model_dir(), model, tokenizer, template,
               meta={"task": task_record, "stage": "dpo", "trainable": trainable_summary(model)})
    final.update({f"start/{k}": v for k, v in start_eval.items()})
    final.update({"time": elapsed, "model": str(run.model_dir()), "trainable": trainable_summary(model),
                  "steps": steps_total})
    metric = f"eval/{task.metric_name}"
    before = f"{start_eval[metric]:.3f} -> " if metric in start_eval else ""
    print(f"[dpo] done in {elapsed:.0f}s: {metric} {before}{final.get(metric, float('nan')):.3f}; "
          f"model in {run.model_dir()}")
    return final
