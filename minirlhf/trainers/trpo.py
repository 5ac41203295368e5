"""TRPO for language models: one trust-region step of the policy per batch of rollouts.

One iteration (Schulman et al., 2015, section 6 and Appendix C), with PPO's rollouts and rewards:

    1. sample a response y ~ pi_old(.|x) for a batch of prompts                      (rollout.sample)
    2. score it (reward model or the task's verifier); old and reference log-probs,
       the critic's values; per-token rewards r_t = -beta k_t, plus the score at
       the last token; advantages by GAE, whitened                                   (as in ppo.py)
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
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from minirlhf.config import ConfigError
from minirlhf.distributed import (SINGLE, DistInfo, all_reduce_gradients, all_reduce_sum, current, global_mean,
                                  global_sum, loss_scale, shard)
from minirlhf.lora import trainable_summary
from minirlhf.logger import Timer
from minirlhf.objectives import (AdaptiveKLController, FixedKLController, entropy_from_logits, explained_variance,
                                 kl_from_logits, logprobs_from_logits, masked_mean,
                                 trpo_step, trpo_surrogate, value_loss)
from minirlhf.rollout import Rollout, response_values, sample
from minirlhf.saving import load_model, save_model
from minirlhf.trainers.common import (LoRAConfig, OptimConfig, RunConfig, TaskConfig, TrainingRun, clip_grad_norm,
                                      lr_at, make_optimizer, resolve_task, set_lr)
from minirlhf.trainers.ppo import (ActorCritic, KLConfig, build_critic, build_scorer, reference_logprobs,
                                  rewards_and_advantages)
from minirlhf.trainers.rl_common import (draw_prompts, evaluate, policy_and_reference, rollout_metrics,
                                         score_rollout)


@dataclass
class TRPOConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/trpo", log_every=5))
    policy: str = field(default="runs/sft/model", metadata={"help": "SFT model folder (policy start and reference)"})
    reward: str = field(default="verifier", metadata={"help": "reward model folder, or 'verifier' for the task's check"})
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(enabled=True))
    max_kl: float = field(default=0.01, metadata={"help": "delta: bound on the mean per-token KL(pi_old || pi_new)"})
    cg_iters: int = field(default=10, metadata={"help": "conjugate-gradient iterations (Hessian-vector products)"})
    damping: float = field(default=0.1, metadata={"help": "H + damping I in CG"})
    backtrack_coeff: float = field(default=0.8, metadata={"help": "line search: step fractions 1, c, c^2, ..."})
    backtrack_iters: int = field(default=10, metadata={"help": "line search: candidate steps"})
    iterations: int = 25
    batch_size: int = field(default=64, metadata={"help": "rollouts per iteration (one trust-region step)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (old log-probs use the same)"})
    max_new_tokens: int = field(default=0, metadata={"help": "0: the task's suggestion"})
    advantage: Literal["gae", "batch_norm"] = field(
        default="gae", metadata={"help": "gae with a critic, or the critic-free batch-normalised sequence reward"})
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    critic_init: Literal["reward", "policy"] = field(
        default="reward", metadata={"help": "the critic starts from the reward model (if any; its head rescaled to "
                                         "the normalised rewards when reward_normalize is on) or the SFT model"})
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, schedule="constant", beta2=0.999))
    critic_epochs: int = field(default=2, metadata={"help": "passes of value regression per iteration"})
    critic_minibatch_size: int = 16
    value_clip: float = field(default=0.2, metadata={"help": "clip of the value update (0: none)"})
    kl: KLConfig = field(default_factory=KLConfig)
    reward_normalize: bool = field(default=True, metadata={"help": "(r - mean)/std with the reward model's statistics"})
    reward_clip: float = field(default=0.0, metadata={"help": "clip scores to [-c, c] (0: no clip)"})
    missing_eos_penalty: float | None = field(default=-1.0, metadata={"help": "score of a response with no EOS (none: off)"})
    eval_every: int = 10
    eval_prompts: int = 300

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
    """One trust-region step of the policy on the rollout batch (objectives.trpo_step), in place.

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

    def surrogate() -> torch.Tensor:
        with autocast():
            logits, _ = actor(rollout, cfg.temperature)  # (B,R,V)
        logp = logprobs_from_logits(logits, response)  # (B,R)
        return trpo_surrogate(logp, rollout.logprobs, advantages, rollout.mask)

    def mean_kl() -> torch.Tensor:
        with autocast():
            logits, _ = actor(rollout, cfg.temperature)  # (B,R,V)
        return masked_mean(kl_from_logits(old_logits, logits), rollout.mask)

    stats = trpo_step(params, surrogate, mean_kl, cfg.max_kl, cfg.cg_iters, cfg.damping, cfg.backtrack_coeff,
                      cfg.backtrack_iters, reduce_fn=reduce_fn)
    with torch.no_grad():
        kl = mean_kl()
        stats["kl"] = float(reduce_fn(kl) if reduce_fn is not None else kl)
    return stats


def fit_critic(cfg: TRPOConfig, critic, optimizer, rollout: Rollout, returns: torch.Tensor,
               generator: torch.Generator, run: TrainingRun, iteration: int, d: DistInfo = SINGLE) -> dict:
    """``critic_epochs`` shuffled minibatch passes of Adam on value_loss toward the GAE returns.
    Distributed, each rank takes critic_minibatch_size / world_size of its rollouts per step, its
    token-mean loss scaled by its share of the minibatch's tokens, and the gradients are averaged."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    losses = []
    B = rollout.batch_size
    per_rank = max(1, cfg.critic_minibatch_size // d.world_size)
    for _ in range(cfg.critic_epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, per_rank):
            idx = order[start : start + per_rank]
            mb = rollout.select(idx)
            with run.autocast():
                values = response_values(critic, mb)  # (b,R)
            loss = value_loss(values, mb.values, returns[idx], mb.mask, cfg.value_clip or None)
            run.check_finite(iteration, loss=loss)
            optimizer.zero_grad(set_to_none=True)
            (loss * loss_scale(float(mb.mask.sum()), d)).backward()
            all_reduce_gradients(params, d)
            grad_norm = clip_grad_norm(params, cfg.critic_optim.grad_clip)
            run.check_finite(iteration, grad_norm=grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    return {"loss/value": global_mean(sum(losses) / len(losses), d)} if losses else {}


def trpo(cfg: TRPOConfig) -> dict:
    """Fine-tune ``cfg.policy`` with TRPO against ``cfg.reward``; writes ``<out>/model``."""
    policy, tokenizer, template, meta = load_model(cfg.policy, kind="gpt")
    task, task_record = resolve_task(cfg.task, meta)
    template = template or task.template()
    run = TrainingRun(cfg.run, cfg, name="trpo", total_steps=cfg.iterations)
    device = run.device
    policy.to(device)
    # Hessian-vector products differentiate twice; PyTorch's fused CPU attention has no second
    # derivative, so the policy runs the written-out attention (tested equal to the fused one).
    policy.set_attention("reference")
    policy, ref_model = policy_and_reference(policy, cfg.lora)
    scorer, rm = build_scorer(cfg, tokenizer, device, template)
    actor = ActorCritic(policy, "none").to(device)  # response logits of the policy
    params = [p for p in policy.parameters() if p.requires_grad]
    critic, critic_opt = None, None
    if cfg.advantage == "gae":
        critic = build_critic(cfg, rm, device)  # on the scale of the (normalised) rewards
        critic.eval()  # dropout off
        critic_opt = make_optimizer(critic.parameters(), cfg.critic_optim)
    kl_ctl = (AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive
              else FixedKLController(cfg.kl.coef))
    d = run.dist
    if cfg.batch_size % d.world_size or cfg.critic_minibatch_size % d.world_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) and critic_minibatch_size ({cfg.critic_minibatch_size}) "
                         f"must be multiples of the number of processes ({d.world_size})")
    gen = torch.Generator(device=device).manual_seed(run.rank_seed())  # each rank samples its own responses
    shuffle_gen = torch.Generator().manual_seed(cfg.run.seed + 1)  # the same global prompt draws on every rank
    run.track("policy", policy)
    run.track("kl_controller", kl_ctl)
    if critic is not None:
        run.track("critic", critic)
        run.track("critic_optimizer", critic_opt)
    run.track_generator("sampling", gen)
    run.track_generator("shuffle", shuffle_gen)
    start, _ = run.restore()

    train_prompts = task.prompts("train")
    max_new = cfg.max_new_tokens or task.max_response_tokens
    print(f"[trpo] {task.name}: policy {trainable_summary(policy)}; delta {cfg.max_kl}; critic "
          f"{'none' if critic is None else 'separate'}; reward {'verifier' if rm is None else cfg.reward}; "
          f"{cfg.iterations} iterations x {cfg.batch_size} rollouts")
    policy.eval()  # dropout off during rollouts and updates
    timer = Timer()
    t0 = time.perf_counter()
    last_eval = {}
    if start == 0 and run.is_main:
        last_eval = evaluate(policy, task, tokenizer, template, cfg.eval_prompts, cfg.run.seed)
        run.log(0, dict(last_eval))
    for it in range(start + 1, cfg.iterations + 1):
        timer.reset()
        prompts = shard(draw_prompts(train_prompts, cfg.batch_size, shuffle_gen), d)  # this rank's share
        with timer("generation"):
            rollout = sample(policy, tokenizer, template, prompts, max_new, cfg.temperature, gen)
        with timer("scoring"), torch.no_grad():
            with run.autocast():  # the policy's, critic's, reference's and reward model's passes
                old_logits, _ = actor(rollout, cfg.temperature)  # (B,R,V), pi_old
                response = rollout.input_ids[:, rollout.prompt_width :]
                rollout.logprobs = logprobs_from_logits(old_logits, response)
                rollout.values = response_values(critic, rollout) if critic is not None else None
                rollout.ref_logprobs = reference_logprobs(policy, ref_model, rollout, cfg.temperature)
                raw, _ = score_rollout(scorer, rollout, task, cfg.missing_eos_penalty)
            beta = kl_ctl.value
            rewards, kl_ref, advantages, returns = rewards_and_advantages(cfg, rollout, beta, d)
            entropy = masked_mean(entropy_from_logits(old_logits), rollout.mask)
        with timer("update"):
            stats = trpo_update(cfg, actor, params, rollout, old_logits, advantages, autocast=run.autocast)
        run.check_finite(it, kl=stats["kl"], improvement=stats["improvement"])
        critic_stats = {}
        if critic is not None:
            set_lr(critic_opt, lr_at(it, cfg.iterations, cfg.critic_optim))
            with timer("critic"):
                critic_stats = fit_critic(cfg, critic, critic_opt, rollout, returns, shuffle_gen, run, it, d)
        seq_kl = kl_ref.sum(-1)  # (B,) per response, the quantity the reward penalised
        kl_ctl.update(global_mean(float(seq_kl.mean()), d), cfg.batch_size)
        local = {
            **rollout_metrics(rollout, raw, task),
            "reward/total": float(rewards.sum(-1).mean()),
            "reward/kl_penalty": float(-beta * seq_kl.mean()),
            "kl": float(seq_kl.mean()),  # to the reference, as every trainer logs it
            "entropy": float(entropy),
        }
        if returns is not None:
            local["explained_variance"] = float(explained_variance(rollout.values, returns, rollout.mask))
        metrics = {
            **{k: global_mean(v, d) for k, v in local.items()},
            "kl_coef": beta,
            **{("kl_old_new" if k == "kl" else k): v for k, v in stats.items()},  # the trust-region KL (global)
            **critic_stats,
            **timer.as_metrics(),
        }
        if (it % cfg.eval_every == 0 or it == cfg.iterations) and run.is_main:
            last_eval = evaluate(policy, task, tokenizer, template, cfg.eval_prompts, cfg.run.seed)
            metrics.update(last_eval)
        run.log(it, metrics)
        run.maybe_save(it, cfg.iterations)
    run.close()
    elapsed = time.perf_counter() - t0
    if not run.is_main:
        return {}
    save_model(run.model_dir(), policy, tokenizer, template, meta={"task": task_record, "stage": "trpo"})
    final = {**last_eval, "time": elapsed, "model": str(run.model_dir())}
    key = f"eval/{task.metric_name}"
    print(f"[trpo] done in {elapsed:.0f}s: {key} {final.get(key, float('nan')):.3f}; model in {run.model_dir()}")
    return final
