"""PPO for language models: rollouts, a critic, GAE, a KL-penalised reward, and the clipped update.

One iteration (Schulman et al., 2017, Algorithm 1; Ziegler et al., 2019; Ouyang et al., 2022):

    1. sample a response y ~ pi_old(.|x) for a batch of prompts                      (rollout.sample)
    2. score it: s = r_phi(x, y) (reward model) or a task's verifier; old, reference
       log-probs and values for every response token                                 (rollout.*)
    3. per-token rewards r_t = -beta k_t, plus s at the last token                   (kl_penalized_rewards)
    4. advantages A_t and returns by GAE(gamma, lambda), whitened                    (gae, whiten)
    5. several epochs of minibatch steps on
           L = L_clip(theta) + c_v L_V(psi) - c_H H(pi_theta)                        (ppo_policy_loss, value_loss)
    6. adapt beta toward a KL target                                                 (AdaptiveKLController)
       (PPO-penalty: its own beta from KL[pi_old, pi] after the update)             (kl_after_update)

Every implementation detail is a named option with its default below. Variants:
``policy_loss="penalty"`` is PPO with an adaptive KL(old || new) penalty instead of the clip
(Schulman et al., 2017, section 4); ``advantage="batch_norm"`` drops the critic and uses one
sequence reward per response minus the batch mean over the batch std, broadcast to every token
(REINFORCE with a baseline under the PPO clip).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from minirlhf.config import ConfigError
from minirlhf.distributed import (SINGLE, DistInfo, all_reduce_gradients, global_mean, global_sums, global_whiten,
                                  loss_scale, shard)
from minirlhf.heads import ScalarHead, fold_normalization
from minirlhf.lora import lora_disabled, trainable_summary
from minirlhf.logger import Timer
from minirlhf.objectives import (AdaptiveKLController, AdaptiveKLPenalty, FixedKLController, batch_normalized_advantages,
                                 broadcast_to_tokens, entropy_from_logits, explained_variance, gae, kl_estimate,
                                 kl_from_logits, kl_penalized_rewards, logprobs_from_logits, masked_mean,
                                 ppo_penalty_loss, ppo_policy_loss, value_loss)
from minirlhf.rollout import RewardModelScorer, Rollout, VerifierScorer, response_logprobs, response_values, sample
from minirlhf.saving import load_model, save_model
from minirlhf.tokenizer import check_same_tokenizer
from minirlhf.trainers.common import (LoRAConfig, OptimConfig, RunConfig, TaskConfig, TrainingRun, clip_grad_norm,
                                      lr_at, resolve_task)
from minirlhf.trainers.rl_common import draw_prompts, evaluate, policy_and_reference, rollout_metrics, score_rollout


@dataclass
class KLConfig:
    coef: float = field(default=0.1, metadata={"help": "initial beta of the KL penalty"})
    estimator: Literal["k1", "k2", "k3", "abs"] = field(default="k1", metadata={
        "help": "per-token KL estimate; with where=loss use k2 or k3 (k1's expected gradient is zero there)"})
    where: Literal["reward", "loss"] = field(default="reward", metadata={
        "help": "penalty in the per-token reward, or a loss term (loss: needs estimator k2, the gradient of "
                "KL(pi||pi_ref), or k3, the gradient of KL(pi_ref||pi))"})
    adaptive: bool = field(default=True, metadata={"help": "Ziegler et al.'s controller toward target"})
    target: float = field(default=1.0, metadata={"help": "target KL per response (nats, summed over tokens)"})
    horizon: int = field(default=500, metadata={"help": "controller horizon (in rollouts)"})


@dataclass
class PPOConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/ppo", log_every=5))
    policy: str = field(default="runs/sft/model", metadata={"help": "SFT model folder (policy start and reference)"})
    reward: str = field(default="runs/rm/model", metadata={"help": "reward model folder, or 'verifier' for the task's check"})
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(enabled=True))
    critic: Literal["separate", "shared", "none"] = field(
        default="separate", metadata={"help": "own GPT backbone, a head on the policy's backbone, or none"})
    critic_init: Literal["reward", "policy"] = field(default="reward", metadata={
        "help": "separate critic starts from the reward model (its head rescaled to the normalised rewards "
                "when reward_normalize is on) or the SFT model"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, schedule="cosine", grad_clip=1.0,
                                                                  beta2=0.999))
    critic_lr: float = 5e-4
    iterations: int = 80
    batch_size: int = field(default=64, metadata={"help": "rollouts per iteration"})
    minibatch_size: int = 16
    ppo_epochs: int = 4
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (old log-probs use the same)"})
    max_new_tokens: int = field(default=0, metadata={"help": "0: the task's suggestion"})
    policy_loss: Literal["clip", "penalty"] = "clip"
    clip_eps: float = 0.2
    penalty_beta: float = field(default=1.0, metadata={"help": "PPO-penalty: initial KL(old||new) coefficient"})
    penalty_target: float = field(default=0.01, metadata={"help": "PPO-penalty: target KL(old||new)"})
    advantage: Literal["gae", "batch_norm"] = field(
        default="gae", metadata={"help": "gae with a critic, or the critic-free batch-normalised sequence reward"})
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    value_clip: float = field(default=0.2, metadata={"help": "clip of the value update (0: none)"})
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    target_approx_kl: float = field(default=0.0, metadata={"help": "stop an iteration's epochs past this approx_kl (0: never)"})
    kl: KLConfig = field(default_factory=KLConfig)
    reward_normalize: bool = field(default=True, metadata={"help": "(r - mean)/std with the reward model's statistics"})
    reward_clip: float = field(default=0.0, metadata={"help": "clip scores to [-c, c] (0: no clip)"})
    missing_eos_penalty: float | None = field(default=-1.0, metadata={"help": "score of a response with no EOS (none: off)"})
    eval_every: int = 10
    eval_prompts: int = 300

    def __post_init__(self):
        if self.kl.where == "loss" and self.kl.estimator == "k1":
            # On-policy, E_{y~pi}[grad (log pi(y) - log pi_ref(y))] = E_pi[grad log pi] = sum_y grad pi(y) = 0
            # (objectives.grpo_kl_penalty's docstring; tests/objectives/test_grpo_kl.py).
            raise ConfigError(
                "config key 'kl.estimator': k1 = log pi - log pi_ref as a loss term (kl.where=loss) has zero "
                "expected gradient under on-policy samples (E_pi[grad log pi] = 0), so the KL penalty would do "
                "nothing. Use --kl.estimator k2 (its expected gradient is that of KL(pi||pi_ref)) or "
                "--kl.estimator k3 (that of KL(pi_ref||pi)), or keep k1 in the reward with --kl.where reward")


class ActorCritic(nn.Module):
    """The policy and, by ``mode``, a separate critic, a value head on the policy's backbone, or none."""

    def __init__(self, policy, mode: str, critic=None):
        super().__init__()
        self.policy = policy
        self.mode = mode
        self.critic = critic if mode == "separate" else None
        self.value_head = ScalarHead(policy.config.n_embd, init_std=0.0) if mode == "shared" else None

    def forward(self, rollout: Rollout, temperature: float, values: bool = True):
        """Response logits / temperature (B,R,V) and values (B,R) (None without a critic, or when
        ``values`` is False)."""
        P = rollout.prompt_width
        h = self.policy.hidden_states(rollout.input_ids, rollout.attention_mask)  # (B,P+R,C)
        logits = self.policy.lm_head(h[:, P - 1 : -1]).float() / temperature  # (B,R,V), float32 under autocast
        if not values:
            return logits, None
        if self.mode == "shared":
            values = self.value_head(h[:, P - 1 : -1]).float()
        elif self.mode == "separate":
            values = response_values(self.critic, rollout)
        else:
            values = None
        return logits, values


def reference_logprobs(policy, ref_model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log pi_ref for the response tokens: the base model under ``lora_disabled`` (no second copy of
    the weights), or a frozen copy of the starting policy under full fine-tuning."""
    with torch.no_grad():
        if ref_model is None:
            with lora_disabled(policy):
                return response_logprobs(policy, rollout, temperature)
        return response_logprobs(ref_model, rollout, temperature)


def compute_advantages(cfg: PPOConfig, rewards, values, mask, d: DistInfo = SINGLE):
    """GAE advantages (whitened) and returns; or, without a critic, the batch-normalised sequence
    reward broadcast to every token (returns are then None). Statistics are over the global batch
    (every rank's rollouts) when distributed."""
    if cfg.advantage == "batch_norm":
        seq = (rewards * mask).sum(-1)  # (B,)
        if not d.enabled:
            return broadcast_to_tokens(batch_normalized_advantages(seq), mask), None
        return broadcast_to_tokens(global_whiten(seq, torch.ones_like(seq), d, eps=1e-12), mask), None
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = global_whiten(advantages, mask, d)
    return advantages, returns


def rewards_and_advantages(cfg, rollout: Rollout, beta: float, d: DistInfo = SINGLE):
    """Steps 3 and 4 on a scored rollout (its logprobs, ref_logprobs, values, scores and mask set):
    per-token rewards r_t = -beta k_t plus the score at the last token (beta is 0 in the reward when
    the penalty is a loss term), the per-token KL estimate k_t, and the advantages and returns of
    ``compute_advantages``. Returns (rewards, kl, advantages, returns), (B,R) each (returns None
    without a critic)."""
    in_reward = cfg.kl.where == "reward"
    rewards, kl = kl_penalized_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, rollout.mask,
                                       beta if in_reward else 0.0, cfg.kl.estimator)
    if not in_reward:
        kl = kl_estimate(rollout.logprobs, rollout.ref_logprobs, cfg.kl.estimator) * rollout.mask
    advantages, returns = compute_advantages(cfg, rewards, rollout.values, rollout.mask, d)
    return rewards, kl, advantages, returns


def ppo_update(cfg: PPOConfig, ac: ActorCritic, optimizer, rollout: Rollout, advantages, returns, ref_logprobs,
               kl_coef: float, penalty: AdaptiveKLPenalty | None, generator, run: TrainingRun, iteration: int,
               d: DistInfo = SINGLE) -> dict:
    """``ppo_epochs`` passes over the rollout in shuffled minibatches. Returns the mean statistics.

    Distributed, each rank holds its share of the rollouts and takes minibatch_size / world_size of
    them per step; its token-mean loss is scaled by its share of the minibatch's tokens and the
    gradients are averaged, which is the gradient of the token mean over the global minibatch."""
    B = rollout.batch_size
    per_rank = max(1, cfg.minibatch_size // d.world_size)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    stats = {k: [] for k in ("loss/policy", "loss/value", "entropy", "clipfrac", "approx_kl", "grad_norm")}
    stop = False
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, per_rank):
            idx = order[start : start + per_rank]
            mb = rollout.select(idx)
            m = mb.mask
            with run.autocast():
                logits, values = ac(mb, cfg.temperature)
            logp = logprobs_from_logits(logits, mb.input_ids[:, mb.prompt_width:])  # (b,R); logits already / T
            if cfg.policy_loss == "clip":
                pg_loss, s = ppo_policy_loss(logp, mb.logprobs, advantages[idx], m, cfg.clip_eps)
            else:
                pg_loss, s = ppo_penalty_loss(logp, mb.logprobs, advantages[idx], m, penalty.value)
            entropy = masked_mean(entropy_from_logits(logits), m)
            loss = pg_loss - cfg.ent_coef * entropy
            if values is not None and returns is not None:
                v_loss = value_loss(values, mb.values, returns[idx], m, cfg.value_clip or None)
                loss = loss + cfg.vf_coef * v_loss
                stats["loss/value"].append(float(v_loss.detach()))
            if cfg.kl.where == "loss":
                loss = loss + kl_coef * masked_mean(kl_estimate(logp, ref_logprobs[idx], cfg.kl.estimator), m)
            run.check_finite(iteration, loss=loss)
            optimizer.zero_grad(set_to_none=True)
            (loss * loss_scale(float(m.sum()), d)).backward()
            all_reduce_gradients(params, d)
            grad_norm = clip_grad_norm(params, cfg.optim.grad_clip)
            run.check_finite(iteration, grad_norm=grad_norm)
            optimizer.step()
            stats["loss/policy"].append(float(pg_loss.detach()))
            stats["entropy"].append(float(entropy.detach()))
            stats["clipfrac"].append(float(s.get("clipfrac", 0.0)))
            stats["approx_kl"].append(float(s["approx_kl"]))
            stats["grad_norm"].append(float(grad_norm))
            if cfg.target_approx_kl > 0 and global_mean(float(s["approx_kl"]), d) > cfg.target_approx_kl:
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


def build_scorer(cfg: PPOConfig, tokenizer, device, template=None):
    """The task's verifier, or the reward model. Given the template, the reward model scores each
    response's text encoded as its training pairs were (RewardModelScorer), not the sampled ids."""
    if cfg.reward == "verifier":
        return VerifierScorer(), None
    rm, rm_tok, _, _ = load_model(cfg.reward, kind="reward", device=device)
    if rm_tok is not None:
        check_same_tokenizer(tokenizer, rm_tok, "policy", "reward model")
    rm.eval().requires_grad_(False)
    if template is None:
        return RewardModelScorer(rm, cfg.reward_normalize, cfg.reward_clip), rm
    return RewardModelScorer(rm, cfg.reward_normalize, cfg.reward_clip, tokenizer, template), rm


def build_critic(cfg, rm, device):
    """A separate critic: the reward model's backbone and head (``critic_init="reward"``, with a reward
    model), else the SFT model's backbone with a zero head. When PPO normalises the reward model's
    scores, (r - mean) / std is folded into the head, so the critic starts out predicting the scores on
    the scale it is trained on (with its raw head, the value clip would let it move only value_clip per
    iteration toward that scale, and the first advantages would be noise)."""
    if cfg.critic_init == "reward" and rm is not None:
        critic, _, _, _ = load_model(cfg.reward, kind="value", device=device)
        if cfg.reward_normalize:
            fold_normalization(critic, float(rm.reward_mean), float(rm.reward_std))
        return critic
    critic, _, _, _ = load_model(cfg.policy, kind="value", device=device)
    return critic


def ppo(cfg: PPOConfig) -> dict:
    """Fine-tune ``cfg.policy`` with PPO against ``cfg.reward``; writes ``<out>/model``."""
    policy, tokenizer, template, meta = load_model(cfg.policy, kind="gpt")
    task, task_record = resolve_task(cfg.task, meta)
    template = template or task.template()
    run = TrainingRun(cfg.run, cfg, name="ppo", total_steps=cfg.iterations)
    device = run.device
    policy.to(device)
    policy, ref_model = policy_and_reference(policy, cfg.lora)
    scorer, rm = build_scorer(cfg, tokenizer, device, template)
    critic_mode = "none" if cfg.advantage == "batch_norm" else cfg.critic
    critic = None
    if critic_mode == "separate":
        critic = build_critic(cfg, rm, device)
    ac = ActorCritic(policy, critic_mode, critic).to(device)
    groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.optim.lr}]
    critic_params = [p for m in (ac.critic, ac.value_head) if m is not None for p in m.parameters()]
    if critic_params:
        groups.append({"params": critic_params, "lr": cfg.critic_lr})
    optimizer = torch.optim.AdamW(groups, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    kl_ctl = (AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive
              else FixedKLController(cfg.kl.coef))
    penalty = AdaptiveKLPenalty(cfg.penalty_beta, cfg.penalty_target) if cfg.policy_loss == "penalty" else None
    d = run.dist
    if cfg.batch_size % d.world_size or cfg.minibatch_size % d.world_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) and minibatch_size ({cfg.minibatch_size}) must be "
                         f"multiples of the number of processes ({d.world_size})")
    gen = torch.Generator(device=device).manual_seed(run.rank_seed())  # each rank samples its own responses
    shuffle_gen = torch.Generator().manual_seed(cfg.run.seed + 1)  # the same global prompt draws on every rank
    for name, obj in (("actor_critic", ac), ("optimizer", optimizer), ("kl_controller", kl_ctl)):
        run.track(name, obj)
    if penalty is not None:
        run.track("penalty", penalty)
    run.track_generator("sampling", gen)
    run.track_generator("shuffle", shuffle_gen)
    start, _ = run.restore()

    train_prompts = task.prompts("train")
    max_new = cfg.max_new_tokens or task.max_response_tokens
    print(f"[ppo] {task.name}: policy {trainable_summary(policy)}; critic {critic_mode}; reward "
          f"{'verifier' if rm is None else cfg.reward}; {cfg.iterations} iterations x {cfg.batch_size} rollouts")
    ac.eval()  # dropout off during rollouts and updates
    timer = Timer()
    t0 = time.perf_counter()
    last_eval = {}
    if start == 0 and run.is_main:
        last_eval = evaluate(policy, task, tokenizer, template, cfg.eval_prompts, cfg.run.seed)
        run.log(0, dict(last_eval))
    for it in range(start + 1, cfg.iterations + 1):
        timer.reset()
        optimizer.param_groups[0]["lr"] = lr_at(it, cfg.iterations, cfg.optim)  # the policy's group
        prompts = shard(draw_prompts(train_prompts, cfg.batch_size, shuffle_gen), d)  # this rank's share
        with timer("generation"):
            rollout = sample(policy, tokenizer, template, prompts, max_new, cfg.temperature, gen)
        with timer("scoring"), torch.no_grad():  # log-prob passes, then reward, KL penalty and GAE
            with timer("logprobs"), run.autocast():  # policy (and critic) pass, reference pass
                logits, values = ac(rollout, cfg.temperature)
                rollout.logprobs = logprobs_from_logits(logits, rollout.input_ids[:, rollout.prompt_width:])
                rollout.values = values
                if penalty is not None:  # pi_old's distributions, for the KL after the update
                    rollout.extra["old_logits"] = logits
                rollout.ref_logprobs = reference_logprobs(policy, ref_model, rollout, cfg.temperature)
            with run.autocast():  # the reward model's pass
                raw, _ = score_rollout(scorer, rollout, task, cfg.missing_eos_penalty)
            beta = kl_ctl.value
            rewards, kl, advantages, returns = rewards_and_advantages(cfg, rollout, beta, d)
        with timer("update"):
            stats = ppo_update(cfg, ac, optimizer, rollout, advantages, returns, rollout.ref_logprobs, beta,
                               penalty, shuffle_gen, run, it, d)
        seq_kl = kl.sum(-1)  # (B,) the same quantity the penalty used, per response
        kl_ctl.update(global_mean(float(seq_kl.mean()), d), cfg.batch_size)
        local = {
            **rollout_metrics(rollout, raw, task),
            "reward/total": float(rewards.sum(-1).mean()),
            "reward/kl_penalty": float(-(beta if cfg.kl.where == "reward" else 0.0) * seq_kl.mean()),
            "kl": float(seq_kl.mean()),
        }
        if values is not None and returns is not None:
            local["explained_variance"] = float(explained_variance(values, returns, rollout.mask))
        metrics = {**{k: global_mean(v, d) for k, v in local.items()}, "kl_coef": beta, **stats,
                   **timer.as_metrics()}
        if (it % cfg.eval_every == 0 or it == cfg.iterations) and run.is_main:
            last_eval = evaluate(policy, task, tokenizer, template, cfg.eval_prompts, cfg.run.seed)
            metrics.update(last_eval)
        run.log(it, metrics)
        run.maybe_save(it, cfg.iterations)
    run.close()
    elapsed = time.perf_counter() - t0
    if not run.is_main:
        return {}
    save_model(run.model_dir(), policy, tokenizer, template, meta={"task": task_record, "stage": "ppo"})
    final = {**last_eval, "time": elapsed, "model": str(run.model_dir())}
    key = f"eval/{task.metric_name}"
    print(f"[ppo] done in {elapsed:.0f}s: {key} {final.get(key, float('nan')):.3f}; model in {run.model_dir()}")
    return final
