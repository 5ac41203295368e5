"""GRPO: group-relative policy optimization, PPO's clipped objective without a critic.

One iteration (Shao et al., 2024, DeepSeekMath, Algorithm 1 and eq. 3):

    1. for each of a batch of prompts q, sample a group of G responses o_1..o_G ~ pi_old(.|q),
       prefilling q once and decoding its G samples from copies of its KV cache     (sample_groups)
    2. score each response: the task's verifier (default) or a reward model: r_i
    3. outcome advantages, the same for every token of o_i                          (group_advantages)
           A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)
       (scale_rewards=False keeps only the mean: Dr. GRPO, Liu et al., 2025)
    4. mu epochs of minibatch steps on the loss

           J = agg_{i,t} [ min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i) - beta D_it ]
           D_it = pi_ref(o_it)/pi_theta(o_it) - log(pi_ref(o_it)/pi_theta(o_it)) - 1      (grpo_kl_penalty)

       with agg the mean over a sequence's tokens then over sequences ("seq_mean", the GRPO paper),
       the mean over all tokens ("token_mean"), or the sum over tokens / the generation budget
       ("seq_sum_const", Dr. GRPO)                                                   (ppo_policy_loss, aggregate_loss)

The reference pi_ref is the SFT model: the policy under ``lora_disabled`` with LoRA (default), or
a frozen copy. With mu = 1 and one minibatch per batch the update is on-policy (rho = 1).

Launched by torchrun, each process samples the groups of its share of the prompts (a group stays
on one process, so its advantages need nothing from the others), takes minibatch_size / W of its
samples per step, weights its loss by its share of what ``loss_agg`` averages over (sequences or
tokens) times W and averages the gradients: the gradient of the loss on the global minibatch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from minirlhf.config import ConfigError
from minirlhf.distributed import SINGLE, DistInfo, all_reduce_gradients, global_mean, loss_scale, shard
from minirlhf.lora import trainable_summary
from minirlhf.logger import Timer
from minirlhf.objectives import (aggregate_loss, broadcast_to_tokens, entropy_from_logits, group_advantages,
                                 grpo_kl_penalty, logprobs_from_logits, masked_mean, ppo_policy_loss)
from minirlhf.rollout import Rollout
from minirlhf.saving import load_model, save_model
from minirlhf.trainers.common import (LoRAConfig, OptimConfig, RunConfig, TaskConfig, TrainingRun, clip_grad_norm,
                                      lr_at, make_optimizer, resolve_task, set_lr)
from minirlhf.trainers.ppo import ActorCritic, build_scorer, reference_logprobs
from minirlhf.trainers.rl_common import (draw_prompts, evaluate, group_metrics, policy_and_reference,
                                         rollout_metrics, sample_groups, score_rollout)


@dataclass
class GRPOConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/grpo", log_every=5))
    policy: str = field(default="runs/sft/model", metadata={"help": "SFT model folder (policy start and reference)"})
    reward: str = field(default="verifier", metadata={"help": "'verifier' (the task's gold check) or a reward model folder"})
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(enabled=True))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, schedule="constant", beta2=0.999))
    iterations: int = 60
    prompts_per_iteration: int = field(default=16, metadata={"help": "prompts per batch; each gets group_size samples"})
    group_size: int = field(default=8, metadata={"help": "G: samples per prompt"})
    minibatch_size: int = field(default=64, metadata={"help": "samples per optimizer step"})
    mu: int = field(default=1, metadata={"help": "passes over each batch (GRPO's inner iterations)"})
    clip_eps: float = 0.2
    beta: float = field(default=0.04, metadata={"help": "coefficient of the k3 KL-to-reference loss term"})
    scale_rewards: bool = field(default=True, metadata={"help": "divide by the group std (False: Dr. GRPO)"})
    loss_agg: Literal["seq_mean", "token_mean", "seq_sum_const"] = field(
        default="seq_mean", metadata={"help": "seq_mean (GRPO), token_mean, seq_sum_const (Dr. GRPO)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (old log-probs use the same)"})
    max_new_tokens: int = field(default=0, metadata={"help": "0: the task's suggestion"})
    reward_normalize: bool = field(default=True, metadata={"help": "(r - mean)/std with the reward model's statistics"})
    reward_clip: float = field(default=0.0, metadata={"help": "clip scores to [-c, c] (0: no clip)"})
    missing_eos_penalty: float | None = field(default=-1.0, metadata={"help": "score of a response with no EOS (none: off)"})
    eval_every: int = 10
    eval_prompts: int = 300

    def __post_init__(self):
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ConfigError(f"config key 'group_size': expected an int >= 2 (a group baseline needs two samples), "
                              f"got {self.group_size!r}")
        for key in ("prompts_per_iteration", "minibatch_size", "mu"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key {key!r}: expected >= 1, got {getattr(self, key)!r}")


def grpo_loss(cfg: GRPOConfig, logp: torch.Tensor, mb: Rollout, advantages: torch.Tensor, max_len: int):
    """The negated GRPO objective on a minibatch: the clipped surrogate plus beta times the k3 KL to the
    reference, both reduced by ``cfg.loss_agg``. Returns (loss, pg_loss, kl_loss, ppo stats)."""
    pg_loss, stats = ppo_policy_loss(logp, mb.logprobs, advantages, mb.mask, cfg.clip_eps, cfg.loss_agg, max_len)
    kl_loss = aggregate_loss(grpo_kl_penalty(logp, mb.ref_logprobs), mb.mask, cfg.loss_agg, max_len)
    return pg_loss + cfg.beta * kl_loss, pg_loss, kl_loss, stats


def aggregation_count(mask: torch.Tensor, loss_agg: str) -> float:
    """What ``aggregate_loss`` averages over in a minibatch: its valid tokens (token_mean), its
    sequences with at least one token (seq_mean) or all its sequences (seq_sum_const)."""
    if loss_agg == "token_mean":
        return float(mask.sum())
    if loss_agg == "seq_mean":
        return float((mask.sum(-1) > 0).sum())
    return float(mask.shape[0])


def grpo_update(cfg: GRPOConfig, actor: ActorCritic, optimizer, rollout: Rollout, advantages: torch.Tensor,
                max_len: int, generator: torch.Generator, run: TrainingRun, iteration: int,
                d: DistInfo = SINGLE) -> dict:
    """``mu`` passes over the rollout in shuffled minibatches. Returns the mean statistics.

    Distributed, each rank holds its share of the rollout and takes minibatch_size / world_size of
    it per step; its loss is scaled by its share of the minibatch's sequences or tokens (as
    ``loss_agg`` averages) and the gradients are averaged over ranks."""
    N = rollout.batch_size
    per_rank = max(1, cfg.minibatch_size // d.world_size)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    stats = {k: [] for k in ("loss/policy", "loss/kl", "entropy", "clipfrac", "approx_kl", "grad_norm")}
    for _ in range(cfg.mu):
        order = torch.randperm(N, generator=generator)
        for start in range(0, N, per_rank):
            idx = order[start : start + per_rank]
            mb = rollout.select(idx)
            with run.autocast():
                logits, _ = actor(mb, cfg.temperature)  # (b,R,V), already / temperature
            logp = logprobs_from_logits(logits, mb.input_ids[:, mb.prompt_width :])  # (b,R)
            loss, pg_loss, kl_loss, s = grpo_loss(cfg, logp, mb, advantages[idx], max_len)
            run.check_finite(iteration, loss=loss)
            optimizer.zero_grad(set_to_none=True)
            (loss * loss_scale(aggregation_count(mb.mask, cfg.loss_agg), d)).backward()
            all_reduce_gradients(params, d)
            grad_norm = clip_grad_norm(params, cfg.optim.grad_clip)
            run.check_finite(iteration, grad_norm=grad_norm)
            optimizer.step()
            stats["loss/policy"].append(float(pg_loss.detach()))
            stats["loss/kl"].append(float(kl_loss.detach()))
            stats["entropy"].append(float(masked_mean(entropy_from_logits(logits.detach()), mb.mask)))
            stats["clipfrac"].append(float(s["clipfrac"]))
            stats["approx_kl"].append(float(s["approx_kl"]))
            stats["grad_norm"].append(float(grad_norm))
    return {k: global_mean(sum(v) / len(v), d) for k, v in stats.items()}


def grpo(cfg: GRPOConfig) -> dict:
    """Fine-tune ``cfg.policy`` with GRPO against ``cfg.reward``; writes ``<out>/model``."""
    policy, tokenizer, template, meta = load_model(cfg.policy, kind="gpt")
    task, task_record = resolve_task(cfg.task, meta)
    template = template or task.template()
    run = TrainingRun(cfg.run, cfg, name="grpo", total_steps=cfg.iterations)
    device = run.device
    policy.to(device)
    policy, ref_model = policy_and_reference(policy, cfg.lora)
    scorer, rm = build_scorer(cfg, tokenizer, device, template)
    actor = ActorCritic(policy, "none").to(device)  # response logits of the policy
    optimizer = make_optimizer(policy.parameters(), cfg.optim)
    d = run.dist
    if cfg.prompts_per_iteration % d.world_size or cfg.minibatch_size % d.world_size:
        raise ValueError(f"prompts_per_iteration ({cfg.prompts_per_iteration}) and minibatch_size "
                         f"({cfg.minibatch_size}) must be multiples of the number of processes ({d.world_size})")
    gen = torch.Generator(device=device).manual_seed(run.rank_seed())  # each rank samples its own responses
    shuffle_gen = torch.Generator().manual_seed(cfg.run.seed + 1)  # the same global prompt draws on every rank
    run.track("policy", policy)
    run.track("optimizer", optimizer)
    run.track_generator("sampling", gen)
    run.track_generator("shuffle", shuffle_gen)
    start, _ = run.restore()

    G = cfg.group_size
    train_prompts = task.prompts("train")
    max_new = cfg.max_new_tokens or task.max_response_tokens
    print(f"[grpo] {task.name}: policy {trainable_summary(policy)}; reward {'verifier' if rm is None else cfg.reward}; "
          f"{cfg.iterations} iterations x {cfg.prompts_per_iteration} prompts x {G} samples")
    policy.eval()  # dropout off during rollouts and updates
    timer = Timer()
    t0 = time.perf_counter()
    last_eval = {}
    if start == 0 and run.is_main:
        last_eval = evaluate(policy, task, tokenizer, template, cfg.eval_prompts, cfg.run.seed)
        run.log(0, dict(last_eval))
    for it in range(start + 1, cfg.iterations + 1):
        timer.reset()
        lr = lr_at(it, cfg.iterations, cfg.optim)
        set_lr(optimizer, lr)
        prompts = shard(draw_prompts(train_prompts, cfg.prompts_per_iteration, shuffle_gen), d)  # this rank's share
        with timer("generation"):
            rollout = sample_groups(policy, tokenizer, template, prompts, G, max_new, cfg.temperature, gen)
        with timer("scoring"), torch.no_grad():
            with run.autocast():  # the policy's, reference's and reward model's passes
                logits, _ = actor(rollout, cfg.temperature)  # (N,R,V), pi_old
                rollout.logprobs = logprobs_from_logits(logits, rollout.input_ids[:, rollout.prompt_width :])
                rollout.ref_logprobs = reference_logprobs(policy, ref_model, rollout, cfg.temperature)
                raw, scores = score_rollout(scorer, rollout, task, cfg.missing_eos_penalty)
            seq_adv = group_advantages(scores, G, scale=cfg.scale_rewards)  # (N,)
            advantages = broadcast_to_tokens(seq_adv, rollout.mask)  # (N,R)
            kl_ref = (grpo_kl_penalty(rollout.logprobs, rollout.ref_logprobs) * rollout.mask).sum(-1)  # (N,)
        with timer("update"):
            stats = grpo_update(cfg, actor, optimizer, rollout, advantages, max_new, shuffle_gen, run, it, d)
        local = {
            **rollout_metrics(rollout, raw, task),
            "reward/mean": float(scores.mean()),
            "kl": float(kl_ref.mean()),
            **group_metrics(scores, G),
        }
        metrics = {**{k: global_mean(v, d) for k, v in local.items()}, "lr": lr, **stats, **timer.as_metrics()}
        if (it % cfg.eval_every == 0 or it == cfg.iterations) and run.is_main:
            last_eval = evaluate(policy, task, tokenizer, template, cfg.eval_prompts, cfg.run.seed)
            metrics.update(last_eval)
        run.log(it, metrics)
        run.maybe_save(it, cfg.iterations)
    run.close()
    elapsed = time.perf_counter() - t0
    if not run.is_main:
        return {}
    save_model(run.model_dir(), policy, tokenizer, template, meta={"task": task_record, "stage": "grpo"})
    final = {**last_eval, "time": elapsed, "model": str(run.model_dir())}
    key = f"eval/{task.metric_name}"
    print(f"[grpo] done in {elapsed:.0f}s: {key} {final.get(key, float('nan')):.3f}; model in {run.model_dir()}")
    return final
