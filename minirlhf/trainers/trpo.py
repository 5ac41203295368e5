"""TRPO for language models: one trust-region step of the policy per batch of rollouts.

One iteration (Schulman et al., 2015, section 6 and Appendix C), with PPO's rollouts and rewards:

    1. sample a response y ~ pi_old(.|x) for a batch of prompts; score it (reward
       model or the task's verifier); old and reference log-probs, the critic's values  (run.rollout)
    2. per-token rewards r_t = -beta k_t, plus the score at the last token;
       advantages by GAE, whitened                                 (rl_run.rewards_and_advantages)
    3. the policy takes ONE step on

           maximise  L(theta) = E_t[ pi_theta(y_t|s_t) / pi_old(y_t|s_t) A_t ]        (trpo_surrogate)
           s.t.      KL_bar(theta) = E_t[ KL(pi_old(.|s_t) || pi_theta(.|s_t)) ] <= delta  (kl_from_logits)

       with E_t the mean over response tokens and the KL taken over the full next-token
       distribution at every response position: the natural-gradient direction x = H^-1 g by
       conjugate gradient with Hessian-vector products of KL_bar, the step sqrt(2 delta / x^T H x) x,
       and a backtracking line search that accepts only KL_bar <= delta and L improved; when
       nothing is accepted the old parameters are restored                           (trpo_step)
    4. the critic regresses on the GAE returns: a few Adam epochs of value_loss    (fit_critic)
    5. adapt the reward's KL coefficient beta toward its target                     (KL controller)

The policy's trainable parameters are the LoRA adapters (default) or every weight. Every logged
update has KL_bar <= delta; ``kl_old_new`` is that KL, measured again on the parameters the step left
(``kl`` is the KL to the reference, as in every trainer).

Launched by torchrun, each process samples its share of the rollouts; L and KL_bar are token
means over all of them: each process's means are weighted by its share of the tokens and summed
over processes (trpo_step's reduce_fn), which makes g, every H v and the line search's values
global, so every process takes the same step. Advantages are whitened with global statistics,
the critic's gradients are averaged as in PPO, and rank 0 evaluates and saves.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from minirlhf.config import ConfigError
from minirlhf.distributed import SINGLE, DistInfo, all_reduce_sum, current, global_mean, global_sum
from minirlhf.objectives import (entropy_from_logits, explained_variance, kl_from_logits, logprobs_from_logits,
                                 masked_mean, trpo_step, trpo_surrogate, value_loss)
from minirlhf.policies import ActorCritic, build_critic
from minirlhf.rollout import Rollout, response_values
from minirlhf.trainers.common import OptimConfig, RunConfig, lr_at, make_optimizer, set_lr
from minirlhf.trainers.rl_run import (CriticRLConfig, RLRun, gradient_step, kl_controller, minibatches,
                                      rewards_and_advantages)


@dataclass
class TRPOConfig(CriticRLConfig):
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/trpo", log_every=5))
    iterations: int = 25
    max_kl: float = field(default=0.01, metadata={"help": "delta: bound on the mean per-token KL(pi_old || pi_new)"})
    cg_iters: int = field(default=10, metadata={"help": "conjugate-gradient iterations (Hessian-vector products)"})
    damping: float = field(default=0.1, metadata={"help": "H + damping I in CG"})
    backtrack_coeff: float = field(default=0.8, metadata={"help": "line search: step fractions 1, c, c^2, ..."})
    backtrack_iters: int = field(default=10, metadata={"help": "line search: candidate steps"})
    batch_size: int = field(default=64, metadata={"help": "rollouts per iteration (one trust-region step)"})
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, schedule="constant", beta2=0.999))
    critic_epochs: int = field(default=2, metadata={"help": "passes of value regression per iteration"})
    critic_minibatch_size: int = 16

    def __post_init__(self):
        if not self.max_kl > 0:
            raise ConfigError(f"config key 'max_kl': expected a trust-region size > 0, got {self.max_kl}")
        if self.kl.where != "reward":
            raise ConfigError(f"config key 'kl.where': expected 'reward' (TRPO's step has no loss to add a KL "
                              f"term to), got {self.kl.where!r}")
        if self.batch_size < 2:
            raise ConfigError(f"config key 'batch_size': expected >= 2 rollouts, got {self.batch_size}")


def trpo_update(cfg: TRPOConfig, actor: ActorCritic, params: list, rollout: Rollout, old_logits: torch.Tensor,
                advantages: torch.Tensor, d: DistInfo | None = None, autocast=contextlib.nullcontext) -> dict:
    """Step 3: one trust-region step of the policy on the rollout batch (objectives.trpo_step), in place.

    old_logits (B,R,V): pi_old's response logits / temperature, detached. Returns trpo_step's
    statistics with "kl" measured again on the parameters the step left (0 when rejected).
    Distributed (``d``, by default the current process group), the rollout is this rank's share
    and the surrogate and the KL are token means over every rank's tokens.
    """
    d = current() if d is None else d
    reduce_fn = None
    if d.enabled:
        n = float(rollout.mask.sum())
        share = n / global_sum(n, d)  # this rank's share of the global tokens

        def reduce_fn(t: torch.Tensor) -> torch.Tensor:  # local token mean -> global token mean
            return all_reduce_sum(t * share, d)
    response = rollout.input_ids[:, rollout.prompt_width :]  # (B,R)

    def surrogate() -> torch.Tensor:  # L(theta) = E_t[ pi_theta / pi_old * A_t ]
        with autocast():
            logits, _ = actor(rollout, cfg.temperature, values=False)  # (B,R,V)
        logp = logprobs_from_logits(logits, response)  # (B,R)
        return trpo_surrogate(logp, rollout.logprobs, advantages, rollout.mask)

    def mean_kl() -> torch.Tensor:  # KL_bar(theta) = E_t[ KL(pi_old(.|s_t) || pi_theta(.|s_t)) ]
        with autocast():
            logits, _ = actor(rollout, cfg.temperature, values=False)  # (B,R,V)
        return masked_mean(kl_from_logits(old_logits, logits), rollout.mask)

    stats = trpo_step(params, surrogate, mean_kl, cfg.max_kl, cfg.cg_iters, cfg.damping, cfg.backtrack_coeff,
                      cfg.backtrack_iters, reduce_fn=reduce_fn)
    with torch.no_grad():
        kl = mean_kl()
        stats["kl"] = float(reduce_fn(kl) if reduce_fn is not None else kl)
    return stats


def fit_critic(cfg: TRPOConfig, critic, optimizer, rollout: Rollout, returns: torch.Tensor,
               generator: torch.Generator, run, iteration: int, d: DistInfo = SINGLE) -> dict:
    """Step 4: ``critic_epochs`` shuffled minibatch passes of Adam on value_loss toward the GAE returns.
    Distributed, each rank takes the rows it holds of each global minibatch (``minibatches``), its
    token-mean loss scaled by its share of the minibatch's tokens, and the gradients are averaged."""
    losses = []
    for _ in range(cfg.critic_epochs):
        for idx in minibatches(rollout, cfg.critic_minibatch_size, generator, d):
            if len(idx) == 0:  # none of this minibatch's rows is on this process
                gradient_step(optimizer, None, 0.0, cfg.critic_optim.grad_clip, run, iteration, d)
                continue
            mb = rollout.select(idx)
            with run.autocast():
                values = response_values(critic, mb)  # (b,R)
            loss = value_loss(values, mb.values, returns[idx], mb.mask, cfg.value_clip or None)
            gradient_step(optimizer, loss, float(mb.mask.sum()), cfg.critic_optim.grad_clip, run, iteration, d)
            losses.append(float(loss.detach()))
    return {"loss/value": global_mean(sum(losses) / len(losses), d)} if losses else {}


def trpo(cfg: TRPOConfig) -> dict:
    """Fine-tune ``cfg.policy`` with TRPO against ``cfg.reward``; writes ``<out>/model``."""
    run = RLRun(cfg, "trpo", multiples={"batch_size": cfg.batch_size,
                                        "critic_minibatch_size": cfg.critic_minibatch_size})
    d = run.dist
    # Hessian-vector products differentiate twice; PyTorch's fused CPU attention has no second
    # derivative, so the policy runs the written-out attention (tested equal to the fused one).
    run.policy.set_attention("reference")
    params = [p for p in run.policy.parameters() if p.requires_grad]
    critic, critic_opt = None, None
    if cfg.advantage == "gae":
        critic = build_critic(cfg.critic_init, cfg.policy, cfg.reward, run.rm, cfg.reward_normalize, run.device)
        critic.eval()  # dropout off
        critic_opt = make_optimizer(critic.parameters(), cfg.critic_optim)
    actor = ActorCritic(run.policy, "none" if critic is None else "separate", critic).to(run.device)
    kl_ctl = kl_controller(cfg.kl)
    run.track("policy", run.policy)
    run.track("kl_controller", kl_ctl)
    if critic is not None:
        run.track("critic", critic)
        run.track("critic_optimizer", critic_opt)

    describe = f"{cfg.batch_size} rollouts; delta {cfg.max_kl}; critic {'none' if critic is None else 'separate'}"
    for it, prompts in run.iterations(cfg.batch_size, describe):
        # 1. sample and score; old and reference log-probs, values, pi_old's logits
        rollout = run.rollout(actor, prompts, values=True, keep_logits=True)
        # 2. KL-penalised per-token rewards, GAE advantages and returns
        beta = kl_ctl.value
        with run.timer("scoring"):
            rewards, kl_ref, advantages, returns = rewards_and_advantages(cfg, rollout, beta, d)
            entropy = masked_mean(entropy_from_logits(rollout.extra["old_logits"]), rollout.mask)
        # 3. the trust-region step of the policy
        with run.timer("update"):
            stats = trpo_update(cfg, actor, params, rollout, rollout.extra["old_logits"], advantages, d=d,
                                autocast=run.autocast)
        run.check_finite(it, kl=stats["kl"], improvement=stats["improvement"])
        # 4. the critic regresses on the returns
        critic_stats = {}
        if critic is not None:
            set_lr(critic_opt, lr_at(it, cfg.iterations, cfg.critic_optim))
            with run.timer("critic"):
                critic_stats = fit_critic(cfg, critic, critic_opt, rollout, returns, run.shuffle, run, it, d)
        # 5. beta toward the KL target
        seq_kl = kl_ref.sum(-1)  # (B,) per response, the quantity the reward penalised
        kl_ctl.update(global_mean(float(seq_kl.mean()), d), cfg.batch_size)
        local = {"reward/total": float(rewards.sum(-1).mean()), "reward/kl_penalty": float(-beta * seq_kl.mean()),
                 "kl": float(seq_kl.mean()),  # to the reference, as every trainer logs it
                 "entropy": float(entropy)}
        if returns is not None:
            local["explained_variance"] = float(explained_variance(rollout.values, returns, rollout.mask))
        trust_region = {("kl_old_new" if k == "kl" else k): v for k, v in stats.items()}  # the trust-region KL (global)
        run.log(it, local, kl_coef=beta, **trust_region, **critic_stats,
                per_token={"advantage": advantages, "kl": kl_ref, "value": rollout.values, "reward": rewards})
    return run.finish()
