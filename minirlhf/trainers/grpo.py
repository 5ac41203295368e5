"""GRPO: group-relative policy optimization, PPO's clipped objective without a critic.

One iteration (Shao et al., 2024, DeepSeekMath, Algorithm 1 and eq. 3):

    1. for each of a batch of prompts q, sample a group of G responses o_1..o_G ~ pi_old(.|q),
       prefilling q once and decoding its G samples from copies of its KV cache     (run.rollout)
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

Options (issue 17): ``ratio="sequence"`` is GSPO (Zheng et al., 2025): one length-normalised ratio
per response, s_i = (pi_theta(o_i|q) / pi_old(o_i|q))^(1/|o_i|), clipped to [1 - seq_clip_eps,
1 + seq_clip_eps_high] (gspo_policy_loss). DAPO's pieces (Yu et al., 2025): ``clip_eps_high``
(clip-higher), ``dynamic_sampling`` (groups whose rewards are all equal are dropped and more prompts
drawn until the batch is full or ``max_extra_draws`` extra rollouts were made: nonconstant_groups),
``overlong_buffer`` (the soft overlong punishment added to every score: overlong_penalty), and
``loss_agg="token_mean"`` (the token-level loss).

The reference pi_ref is the SFT model: the policy under ``lora_disabled`` with LoRA (default), or
a frozen copy. With mu = 1 and one minibatch per batch the update is on-policy (rho = 1).

Launched by torchrun, each process samples the groups of its share of the prompts (a group stays
on one process, so its advantages need nothing from the others), takes minibatch_size / W of its
samples per step, weights its loss by its share of what ``loss_agg`` averages over (sequences or
tokens) times W and averages the gradients: the gradient of the loss on the global minibatch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from minirlhf.config import ConfigError
from minirlhf.distributed import SINGLE, DistInfo, global_mean
from minirlhf.objectives import (aggregate_loss, broadcast_to_tokens, entropy_from_logits, group_advantages,
                                 grpo_kl_penalty, gspo_policy_loss, logprobs_from_logits, masked_mean,
                                 nonconstant_groups, overlong_penalty, ppo_policy_loss)
from minirlhf.policies import ActorCritic
from minirlhf.rollout import Rollout, concat_rollouts, draw_prompts
from minirlhf.trainers.common import OptimConfig, RunConfig
from minirlhf.trainers.rl_run import RLConfig, RLRun, gradient_step, group_metrics, minibatches, score_at_last_token


@dataclass
class GRPOConfig(RLConfig):
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/grpo", log_every=5))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, schedule="constant", beta2=0.999))
    prompts_per_iteration: int = field(default=16, metadata={"help": "prompts per batch; each gets group_size samples"})
    group_size: int = field(default=8, metadata={"help": "G: samples per prompt"})
    minibatch_size: int = field(default=64, metadata={"help": "samples per optimizer step"})
    mu: int = field(default=1, metadata={"help": "passes over each batch (GRPO's inner iterations)"})
    clip_eps: float = field(default=0.2, metadata={"help": "eps of the token ratio's clip (ratio=token)"})
    clip_eps_high: float | None = field(default=None, metadata={"range": (0, True, None, False), 
        "help": "DAPO clip-higher: upper clip 1 + clip_eps_high of the token ratio (DAPO: 0.28; None: clip_eps)"})
    ratio: Literal["token", "sequence"] = field(default="token", metadata={
        "help": "token: PPO's per-token ratio (GRPO); sequence: GSPO's length-normalised sequence ratio and clip"})
    seq_clip_eps: float = field(default=3e-4, metadata={"range": (0, True, None, False), "help": "GSPO's lower clip of the sequence ratio (ratio=sequence)"})
    seq_clip_eps_high: float = field(default=4e-4, metadata={"range": (0, True, None, False), 
        "help": "GSPO's upper clip of the sequence ratio (ratio=sequence)"})
    dynamic_sampling: bool = field(default=False, metadata={
        "help": "DAPO: drop groups whose rewards are all equal and sample more prompts to refill the batch"})
    max_extra_draws: int = field(default=4, metadata={"range": (0, False, None, False), 
        "help": "dynamic_sampling: at most this many extra rollouts per iteration (then train on what was kept)"})
    overlong_buffer: int = field(default=0, metadata={"range": (0, False, None, False), 
        "help": "DAPO soft overlong punishment: responses longer than max length - this get a linear penalty "
                "(0: off)"})
    overlong_penalty: float = field(default=1.0, metadata={"range": (0, False, None, False), 
        "help": "the overlong penalty at the maximum length (scales DAPO's -1)"})
    beta: float = field(default=0.04, metadata={"help": "coefficient of the k3 KL-to-reference loss term"})
    scale_rewards: bool = field(default=True, metadata={"help": "divide by the group std (False: Dr. GRPO)"})
    loss_agg: Literal["seq_mean", "token_mean", "seq_sum_const"] = field(
        default="seq_mean", metadata={"help": "seq_mean (GRPO), token_mean, seq_sum_const (Dr. GRPO)"})

    def __post_init__(self):
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ConfigError(f"config key 'group_size': expected an int >= 2 (a group baseline needs two samples), "
                              f"got {self.group_size!r}")
        for key in ("prompts_per_iteration", "minibatch_size", "mu"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key {key!r}: expected >= 1, got {getattr(self, key)!r}")
        if self.ratio == "sequence":
            if self.loss_agg != "seq_mean":
                raise ConfigError(f"config key 'loss_agg': ratio=sequence (GSPO) averages one term per response, "
                                  f"expected seq_mean, got {self.loss_agg!r}")
            if self.clip_eps_high is not None:
                raise ConfigError("config key 'clip_eps_high': clips the token ratio; with ratio=sequence set "
                                  "seq_clip_eps and seq_clip_eps_high instead")
        # the ranges of clip_eps_high, seq_clip_eps(_high), overlong_*, max_extra_draws: their "range" metadata


def grpo_loss(cfg: GRPOConfig, logp: torch.Tensor, mb: Rollout, advantages: torch.Tensor, max_len: int):
    """The negated GRPO objective on a minibatch: the clipped surrogate plus beta times the k3 KL to the
    reference, both reduced by ``cfg.loss_agg``. Returns (loss, pg_loss, kl_loss, ppo stats).
    ratio=sequence: GSPO's sequence-clipped surrogate on each response's advantage (one per response)."""
    if cfg.ratio == "sequence":
        seq_adv = (advantages * mb.mask).sum(-1) / mb.mask.sum(-1).clamp_min(1)  # (b,) the broadcast A_i
        pg_loss, stats = gspo_policy_loss(logp, mb.logprobs, seq_adv, mb.mask, cfg.seq_clip_eps, cfg.seq_clip_eps_high)
    else:
        pg_loss, stats = ppo_policy_loss(logp, mb.logprobs, advantages, mb.mask, cfg.clip_eps, cfg.loss_agg,
                                         max_len, clip_eps_high=cfg.clip_eps_high)
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
                max_len: int, generator: torch.Generator, run, iteration: int, d: DistInfo = SINGLE) -> dict:
    """Step 4: ``mu`` passes over the rollout in shuffled minibatches. Returns the mean statistics.

    Distributed, each rank holds its share of the rollout and takes the rows it holds of each global
    minibatch (``minibatches``); its loss is scaled by its share of the minibatch's sequences or tokens (as
    ``loss_agg`` averages) and the gradients are averaged over ranks."""
    stats = {k: [] for k in ("loss/policy", "loss/kl", "entropy", "clipfrac", "approx_kl", "grad_norm")}
    for _ in range(cfg.mu):
        for idx in minibatches(rollout, cfg.minibatch_size, generator, d):
            if len(idx) == 0:  # none of this minibatch's rows is on this process
                gradient_step(optimizer, None, 0.0, cfg.optim.grad_clip, run, iteration, d)
                continue
            mb = rollout.select(idx)
            with run.autocast():
                logits, _ = actor(mb, cfg.temperature)  # (b,R,V), already / temperature
            logp = logprobs_from_logits(logits, mb.input_ids[:, mb.prompt_width :])  # (b,R)
            loss, pg_loss, kl_loss, s = grpo_loss(cfg, logp, mb, advantages[idx], max_len)
            grad_norm = gradient_step(optimizer, loss, aggregation_count(mb.mask, cfg.loss_agg), cfg.optim.grad_clip,
                                      run, iteration, d)
            stats["loss/policy"].append(float(pg_loss.detach()))
            stats["loss/kl"].append(float(kl_loss.detach()))
            stats["entropy"].append(float(masked_mean(entropy_from_logits(logits.detach()), mb.mask)))
            stats["clipfrac"].append(float(s["clipfrac"]))
            stats["approx_kl"].append(float(s["approx_kl"]))
            stats["grad_norm"].append(grad_norm)
    return {k: global_mean(sum(v) / len(v), d) for k, v in stats.items()}


def with_overlong_penalty(cfg: GRPOConfig, rollout: Rollout, max_len: int) -> Rollout:
    """DAPO's soft overlong punishment added to each score: 0 up to max_len - overlong_buffer tokens, then
    falling linearly to -overlong_penalty at max_len (``overlong_penalty``). Off when overlong_buffer is 0."""
    if cfg.overlong_buffer > 0:
        lengths = rollout.mask.sum(-1)  # (N,) response tokens, EOS included
        penalty = cfg.overlong_penalty * overlong_penalty(lengths, max_len, cfg.overlong_buffer)
        rollout.extra["overlong_penalty"] = penalty
        rollout.scores = rollout.scores + penalty.to(rollout.scores)
    return rollout


def dynamic_rollout(cfg: GRPOConfig, run, actor, prompts: list[str]) -> tuple[Rollout, dict]:
    """DAPO's dynamic sampling: keep the groups whose rewards are not all equal (nonconstant_groups) and
    sample the groups of a fresh batch of prompts until ``len(prompts)`` groups are kept or ``max_extra_draws``
    extra rollouts were made. Returns the kept groups (at most len(prompts)) and the counts to log."""
    G, want = cfg.group_size, len(prompts)
    train_prompts = run.task.prompts("train")
    kept, n_kept, dropped, draws = [], 0, 0, 0
    while True:
        rollout = with_overlong_penalty(cfg, run.rollout(actor, prompts, samples_per_prompt=G), run.max_new_tokens)
        keep = nonconstant_groups(rollout.scores, G)  # (groups,)
        dropped += int((~keep).sum())
        groups = keep.nonzero().flatten()[: want - n_kept]
        if len(groups):
            rows = (groups[:, None] * G + torch.arange(G)).flatten()
            kept.append(rollout.select(rows))
            n_kept += len(groups)
        if n_kept >= want or draws >= cfg.max_extra_draws:
            break
        draws += 1
        prompts = draw_prompts(train_prompts, want, run.shuffle)  # a full batch per draw, as DAPO samples
    stats = {"dynamic/dropped_groups": dropped, "dynamic/extra_draws": draws, "dynamic/kept_groups": n_kept}
    return (concat_rollouts(kept) if kept else None), stats


def grpo(cfg: GRPOConfig) -> dict:
    """Fine-tune ``cfg.policy`` with GRPO against ``cfg.reward``; writes ``<out>/model``."""
    run = RLRun(cfg, "grpo", multiples={"prompts_per_iteration": cfg.prompts_per_iteration,
                                        "minibatch_size": cfg.minibatch_size})
    if cfg.dynamic_sampling and run.dist.world_size > 1:
        raise ConfigError("config key 'dynamic_sampling': not supported with several processes (each would keep "
                          "a different number of groups); run it on one process")
    if cfg.overlong_buffer > run.max_new_tokens:
        raise ConfigError(f"config key 'overlong_buffer': expected <= the response budget ({run.max_new_tokens} "
                          f"tokens), got {cfg.overlong_buffer}")
    G = cfg.group_size
    actor = ActorCritic(run.policy, "none").to(run.device)  # response logits of the policy
    optimizer = run.optimizer(cfg.optim)  # AdamW on the policy's trainable tensors, lr scheduled by run
    run.track("policy", run.policy)

    for it, prompts in run.iterations(cfg.prompts_per_iteration, f"{cfg.prompts_per_iteration} prompts x {G} samples"):
        # 1-2. G samples o_1..o_G of each prompt q, their rewards r_i, old and reference log-probs
        #      (+ DAPO's overlong penalty; dynamic sampling: only groups with some reward variance)
        dynamic = {}
        if cfg.dynamic_sampling:
            rollout, dynamic = dynamic_rollout(cfg, run, actor, prompts)
            if rollout is None:  # every group constant even after the extra draws: nothing to learn from
                run.log(it, {}, **dynamic)
                continue
            run.use_rollout(rollout)  # the kept groups are what the iteration's rollout metrics describe
        else:
            rollout = with_overlong_penalty(cfg, run.rollout(actor, prompts, samples_per_prompt=G),
                                            run.max_new_tokens)
        # 3. A_i = (r_i - mean(r)) / std(r) within each group, the same for every token of o_i
        seq_adv = group_advantages(rollout.scores, G, scale=cfg.scale_rewards)  # (N,)
        advantages = broadcast_to_tokens(seq_adv, rollout.mask)  # (N,R)
        # 4. the clipped objective with the k3 KL term, mu passes
        with run.timer("update"):
            stats = grpo_update(cfg, actor, optimizer, rollout, advantages, run.max_new_tokens, run.shuffle, run, it,
                                run.dist)
        kl_tokens = grpo_kl_penalty(rollout.logprobs, rollout.ref_logprobs) * rollout.mask  # (N,R)
        local = {"reward/mean": float(rollout.scores.mean()), "kl": float(kl_tokens.sum(-1).mean()),
                 **group_metrics(rollout.scores, G)}
        run.log(it, local, **stats, **dynamic, per_token={"advantage": advantages, "kl": kl_tokens,
                                              "reward": score_at_last_token(rollout)})
    return run.finish()
