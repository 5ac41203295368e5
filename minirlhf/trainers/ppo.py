"""PPO for language models: rollouts, a critic, GAE, a KL-penalised reward, and the clipped update.

One iteration (Schulman et al., 2017, Algorithm 1; Ziegler et al., 2019; Ouyang et al., 2022):

    1. sample a response y ~ pi_old(.|x) for a batch of prompts, and
    2. score it: s = r_phi(x, y) (reward model) or a task's verifier; old, reference
       log-probs and values for every response token                                 (run.rollout)
    3. per-token rewards r_t = -beta k_t, plus s at the last token                   (kl_penalized_rewards)
    4. advantages A_t and returns by GAE(gamma, lambda), whitened                    (gae, whiten)
       (steps 3 and 4: rl_run.rewards_and_advantages)
    5. several epochs of minibatch steps on
           L = L_clip(theta) + c_v L_V(psi) - c_H H(pi_theta)                        (ppo_policy_loss, value_loss)
    6. adapt beta toward a KL target                                                 (AdaptiveKLController)
       (PPO-penalty: its own beta from KL[pi_old, pi] after the update)             (kl_after_update)

Every implementation detail is a named option with its default below. Variants:
``policy_loss="penalty"`` is PPO with an adaptive KL(old || new) penalty instead of the clip
(Schulman et al., 2017, section 4); ``advantage="batch_norm"`` drops the critic and uses one
sequence reward per response minus the batch mean over the batch std, broadcast to every token
(REINFORCE with a baseline under the PPO clip).

A reader's path: this file top to bottom; then ``trainers/rl_run.py`` (the run skeleton: set-up,
iterations, rollouts, logging, evaluation, checkpoints), ``rollout.py`` (``make_rollout``, steps 1-2),
``policies.py`` (``ActorCritic``, the reference policy) and the equations in ``objectives/``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Literal

import torch

from minirlhf.config import ConfigError
from minirlhf.distributed import SINGLE, DistInfo, global_mean, global_sums
from minirlhf.objectives import (AdaptiveKLPenalty, entropy_from_logits, explained_variance, kl_estimate, kl_from_logits,
                                 logprobs_from_logits, masked_mean, ppo_penalty_loss, ppo_policy_loss, value_loss)
from minirlhf.policies import ActorCritic, build_critic
from minirlhf.rollout import Rollout
from minirlhf.trainers.common import OptimConfig, RunConfig
from minirlhf.trainers.rl_run import (CriticRLConfig, RLRun, gradient_step, kl_controller, minibatches,
                                      rewards_and_advantages)


@dataclass
class PPOConfig(CriticRLConfig):
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/ppo", log_every=5))
    reward: str = field(default="runs/rm/model", metadata={"help": "reward model folder, or 'verifier' for the task's check"})
    iterations: int = 80
    critic: Literal["separate", "shared", "none"] = field(
        default="separate", metadata={"help": "own GPT backbone, a head on the policy's backbone, or none"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, schedule="cosine", grad_clip=1.0,
                                                                  beta2=0.999))
    critic_lr: float = 5e-4
    batch_size: int = field(default=64, metadata={"help": "rollouts per iteration"})
    minibatch_size: int = 16
    ppo_epochs: int = 4
    policy_loss: Literal["clip", "penalty"] = "clip"
    clip_eps: float = 0.2
    penalty_beta: float = field(default=1.0, metadata={"help": "PPO-penalty: initial KL(old||new) coefficient"})
    penalty_target: float = field(default=0.01, metadata={"help": "PPO-penalty: target KL(old||new)"})
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    target_approx_kl: float = field(default=0.0, metadata={"help": "stop an iteration's epochs past this approx_kl (0: never)"})

    def __post_init__(self):
        if self.kl.where == "loss" and self.kl.estimator == "k1":
            # On-policy, E_{y~pi}[grad (log pi(y) - log pi_ref(y))] = E_pi[grad log pi] = sum_y grad pi(y) = 0
            # (objectives.grpo_kl_penalty's docstring; tests/objectives/test_grpo_kl.py).
            raise ConfigError(
                "config key 'kl.estimator': k1 = log pi - log pi_ref as a loss term (kl.where=loss) has zero "
                "expected gradient under on-policy samples (E_pi[grad log pi] = 0), so the KL penalty would do "
                "nothing. Use --kl.estimator k2 (its expected gradient is that of KL(pi||pi_ref)) or "
                "--kl.estimator k3 (that of KL(pi_ref||pi)), or keep k1 in the reward with --kl.where reward")


def ppo_update(cfg: PPOConfig, ac: ActorCritic, optimizer, rollout: Rollout, advantages, returns, ref_logprobs,
               kl_coef: float, penalty: AdaptiveKLPenalty | None, generator, run, iteration: int,
               d: DistInfo = SINGLE) -> dict:
    """Step 5: ``ppo_epochs`` passes over the rollout in shuffled minibatches, each step on
    L = L_clip (or L_penalty) + c_v L_V - c_H H (+ beta KL to the reference when kl.where = "loss").
    Returns the mean statistics.

    Distributed, each rank holds its share of the rollouts and takes the rows it holds of each global
    minibatch (``minibatches``); its token-mean loss is scaled by its share of the minibatch's tokens
    and the gradients are averaged, which is the gradient of the token mean over the global minibatch."""
    stats = {k: [] for k in ("loss/policy", "loss/value", "entropy", "clipfrac", "approx_kl", "grad_norm")}
    stop = False
    for epoch in range(cfg.ppo_epochs):
        for idx in minibatches(rollout, cfg.minibatch_size, generator, d):
            if len(idx) == 0:  # none of this minibatch's rows is on this process
                gradient_step(optimizer, None, 0.0, cfg.optim.grad_clip, run, iteration, d)
                if cfg.target_approx_kl > 0 and minibatch_mean(None, d) > cfg.target_approx_kl:
                    stop = True
                    break
                continue
            mb, A, m = rollout.select(idx), advantages[idx], rollout.mask[idx]
            with run.autocast():
                logits, values = ac(mb, cfg.temperature)  # (b,R,V) already / T, (b,R)
            logp = logprobs_from_logits(logits, mb.input_ids[:, mb.prompt_width:])  # (b,R)
            if cfg.policy_loss == "clip":
                pg_loss, s = ppo_policy_loss(logp, mb.logprobs, A, m, cfg.clip_eps)
            else:
                pg_loss, s = ppo_penalty_loss(logp, mb.logprobs, A, m, penalty.value)
            entropy = masked_mean(entropy_from_logits(logits), m)
            loss = pg_loss - cfg.ent_coef * entropy
            if values is not None and returns is not None:
                v_loss = value_loss(values, mb.values, returns[idx], m, cfg.value_clip or None)
                loss = loss + cfg.vf_coef * v_loss
                stats["loss/value"].append(float(v_loss.detach()))
            if cfg.kl.where == "loss":
                loss = loss + kl_coef * masked_mean(kl_estimate(logp, ref_logprobs[idx], cfg.kl.estimator), m)
            grad_norm = gradient_step(optimizer, loss, float(m.sum()), cfg.optim.grad_clip, run, iteration, d)
            stats["loss/policy"].append(float(pg_loss.detach()))
            stats["entropy"].append(float(entropy.detach()))
            stats["clipfrac"].append(float(s.get("clipfrac", 0.0)))
            stats["approx_kl"].append(float(s["approx_kl"]))
            stats["grad_norm"].append(grad_norm)
            if cfg.target_approx_kl > 0 and minibatch_mean(float(s["approx_kl"]), d) > cfg.target_approx_kl:
                stop = True
                break
        if stop:
            break
    out = {k: global_mean(sum(v) / len(v), d) for k, v in stats.items() if v}
    out["ppo_epochs_done"] = epoch + 1
    if penalty is not None:
        # d is KL[pi_old, pi] AFTER the update (Schulman et al., 2017, section 4), not the mean approx_kl
        # of the minibatch steps, which is measured before each step (its first term is always ~0).
        out["penalty_kl"] = kl_after_update(cfg, ac, rollout, d, run.autocast)
        penalty.update(out["penalty_kl"])
        out["penalty_beta"] = penalty.value
    return out


def minibatch_mean(value: float | None, d: DistInfo = SINGLE) -> float:
    """The mean of a minibatch statistic over the processes holding part of the minibatch (None: none)."""
    total, n = global_sums([0.0 if value is None else value, 0.0 if value is None else 1.0], d)
    return total / max(n, 1.0)


@torch.no_grad()
def kl_after_update(cfg: PPOConfig, ac: ActorCritic, rollout: Rollout, d: DistInfo = SINGLE,
                    autocast=contextlib.nullcontext) -> float:
    """d = E_t[KL[pi_old(.|s_t), pi(.|s_t)]]: the exact KL between the full next-token distributions of
    the sampling policy (``rollout.extra["old_logits"]``, (B,R,V), already / temperature) and the
    updated one, averaged over every response token of the global batch."""
    if "old_logits" not in rollout.extra:
        raise ValueError("policy_loss='penalty' measures KL[pi_old, pi] after the update from the sampling "
                         "policy's logits: set rollout.extra['old_logits'] (B,R,V) before ppo_update")
    total, count = 0.0, 0.0
    per_rank = max(1, cfg.minibatch_size // d.world_size)
    for start in range(0, rollout.batch_size, per_rank):
        mb = rollout.select(torch.arange(start, min(start + per_rank, rollout.batch_size)))
        with autocast():
            logits, _ = ac(mb, cfg.temperature, values=False)  # (b,R,V)
        kl = kl_from_logits(mb.extra["old_logits"], logits)  # (b,R)
        total += float((kl * mb.mask).sum())
        count += float(mb.mask.sum())
    total, count = global_sums([total, count], d)
    return total / max(count, 1.0)


def ppo(cfg: PPOConfig) -> dict:
    """Fine-tune ``cfg.policy`` with PPO against ``cfg.reward``; writes ``<out>/model``."""
    run = RLRun(cfg, "ppo", multiples={"batch_size": cfg.batch_size, "minibatch_size": cfg.minibatch_size})
    d = run.dist
    critic_mode = "none" if cfg.advantage == "batch_norm" else cfg.critic
    critic = None
    if critic_mode == "separate":
        critic = build_critic(cfg.critic_init, cfg.policy, cfg.reward, run.rm, cfg.reward_normalize, run.device)
    ac = ActorCritic(run.policy, critic_mode, critic).to(run.device)
    # one AdamW: the policy's tensors at the scheduled lr, the critic's at critic_lr
    optimizer = run.optimizer(cfg.optim, extra=[(ac.critic_parameters(), cfg.critic_lr)])
    kl_ctl = kl_controller(cfg.kl)
    penalty = AdaptiveKLPenalty(cfg.penalty_beta, cfg.penalty_target) if cfg.policy_loss == "penalty" else None
    run.track("actor_critic", ac)
    run.track("kl_controller", kl_ctl)
    if penalty is not None:
        run.track("penalty", penalty)

    for it, prompts in run.iterations(cfg.batch_size, f"{cfg.batch_size} rollouts; critic {critic_mode}"):
        # 1-2. sample, score; old and reference log-probs and values (pi_old's logits for PPO-penalty)
        rollout = run.rollout(ac, prompts, values=True, keep_logits=penalty is not None)
        # 3-4. KL-penalised per-token rewards, GAE advantages and returns
        beta = kl_ctl.value
        with run.timer("scoring"):
            rewards, kl, advantages, returns = rewards_and_advantages(cfg, rollout, beta, d)
        # 5. the clipped update of policy and critic
        with run.timer("update"):
            stats = ppo_update(cfg, ac, optimizer, rollout, advantages, returns, rollout.ref_logprobs, beta,
                               penalty, run.shuffle, run, it, d)
        # 6. beta toward the KL target
        seq_kl = kl.sum(-1)  # (B,) the same quantity the penalty used, per response
        kl_ctl.update(global_mean(float(seq_kl.mean()), d), cfg.batch_size)
        local = {"reward/total": float(rewards.sum(-1).mean()),
                 "reward/kl_penalty": float(-(beta if cfg.kl.where == "reward" else 0.0) * seq_kl.mean()),
                 "kl": float(seq_kl.mean())}
        if rollout.values is not None and returns is not None:
            local["explained_variance"] = float(explained_variance(rollout.values, returns, rollout.mask))
        run.log(it, local, kl_coef=beta, **stats,
                per_token={"advantage": advantages, "kl": kl, "value": rollout.values, "reward": rewards})
    return run.finish()
