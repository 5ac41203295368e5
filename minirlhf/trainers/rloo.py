"""RLOO: REINFORCE with the leave-one-out baseline (Kool et al., 2019; Ahmadian et al., 2024).

One iteration:

    1. for each of a batch of prompts x, sample k responses y_1..y_k ~ pi_theta(.|x), prefilling
       x once                                                                        (sample_groups)
    2. the sequence reward, with the KL to the reference inside it (Ahmadian et al., 2024, sec. 3):
           R(x, y_i) = r(x, y_i) - beta * sum_t [log pi_theta(y_it|.) - log pi_ref(y_it|.)]
       (the per-token rewards of kl_penalized_rewards summed over the response)
    3. the leave-one-out advantage                                                   (rloo_advantages)
           A_i = R(x, y_i) - 1/(k-1) sum_{j != i} R(x, y_j)
    4. ONE gradient step on                                                          (reinforce_loss)
           loss = -1/N sum_i A_i sum_t log pi_theta(y_it | x, y_i,<t)

This is plain on-policy REINFORCE: the log-probs in the loss are those of the policy that sampled
the batch, taken in the same forward pass, and each batch gives exactly one optimizer step, so
there is no importance ratio and no clip (nothing is reused off-policy). The baseline of sample i
uses only the other k - 1 samples of its prompt, so the gradient stays unbiased.

Launched by torchrun, each process samples the k responses of its share of the prompts (a prompt's
samples stay on one process, so the leave-one-out baselines need nothing from the others), weights
its loss, a mean over its sequences, by its share of all the sequences times W, and averages the
gradients: the gradient of the loss on the global batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from minirlhf.config import ConfigError
from minirlhf.distributed import all_reduce_gradients, global_mean, loss_scale, shard
from minirlhf.lora import trainable_summary
from minirlhf.logger import Timer
from minirlhf.objectives import (entropy_from_logits, kl_penalized_rewards, logprobs_from_logits, masked_mean,
                                 reinforce_loss, rloo_advantages)
from minirlhf.saving import load_model, save_model
from minirlhf.trainers.common import (LoRAConfig, OptimConfig, RunConfig, TaskConfig, TrainingRun, clip_grad_norm,
                                      lr_at, make_optimizer, resolve_task, set_lr)
from minirlhf.trainers.ppo import ActorCritic, build_scorer, reference_logprobs
from minirlhf.trainers.rl_common import (draw_prompts, evaluate, group_metrics, policy_and_reference,
                                         rollout_metrics, sample_groups, score_rollout)


@dataclass
class RLOOConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/rloo", log_every=5))
    policy: str = field(default="runs/sft/model", metadata={"help": "SFT model folder (policy start and reference)"})
    reward: str = field(default="verifier", metadata={"help": "'verifier' (the task's gold check) or a reward model folder"})
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(enabled=True))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, schedule="constant", beta2=0.999))
    iterations: int = 80
    prompts_per_iteration: int = field(default=16, metadata={"help": "prompts per batch (one optimizer step)"})
    k: int = field(default=4, metadata={"help": "samples per prompt"})
    beta: float = field(default=0.05, metadata={"help": "coefficient of the sequence KL to the reference in the reward"})
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = field(
        default="k1", metadata={"help": "per-token KL estimate summed in the reward (k1: log pi - log pi_ref)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (log-probs use the same)"})
    max_new_tokens: int = field(default=0, metadata={"help": "0: the task's suggestion"})
    reward_normalize: bool = field(default=True, metadata={"help": "(r - mean)/std with the reward model's statistics"})
    reward_clip: float = field(default=0.0, metadata={"help": "clip scores to [-c, c] (0: no clip)"})
    missing_eos_penalty: float | None = field(default=-1.0, metadata={"help": "score of a response with no EOS (none: off)"})
    eval_every: int = 10
    eval_prompts: int = 300

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 2:
            raise ConfigError(f"config key 'k': expected an int >= 2 (leave-one-out needs another sample), got {self.k!r}")
        if self.prompts_per_iteration < 1:
            raise ConfigError(f"config key 'prompts_per_iteration': expected >= 1, got {self.prompts_per_iteration!r}")


def rloo(cfg: RLOOConfig) -> dict:
    """Fine-tune ``cfg.policy`` with RLOO against ``cfg.reward``; writes ``<out>/model``."""
    policy, tokenizer, template, meta = load_model(cfg.policy, kind="gpt")
    task, task_record = resolve_task(cfg.task, meta)
    template = template or task.template()
    run = TrainingRun(cfg.run, cfg, name="rloo", total_steps=cfg.iterations)
    device = run.device
    policy.to(device)
    policy, ref_model = policy_and_reference(policy, cfg.lora)
    scorer, rm = build_scorer(cfg, tokenizer, device, template)
    actor = ActorCritic(policy, "none").to(device)  # response logits of the policy
    optimizer = make_optimizer(policy.parameters(), cfg.optim)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    d = run.dist
    if cfg.prompts_per_iteration % d.world_size:
        raise ValueError(f"prompts_per_iteration ({cfg.prompts_per_iteration}) must be a multiple of the number "
                         f"of processes ({d.world_size})")
    gen = torch.Generator(device=device).manual_seed(run.rank_seed())  # each rank samples its own responses
    shuffle_gen = torch.Generator().manual_seed(cfg.run.seed + 1)  # the same global prompt draws on every rank
    run.track("policy", policy)
    run.track("optimizer", optimizer)
    run.track_generator("sampling", gen)
    run.track_generator("shuffle", shuffle_gen)
    start, _ = run.restore()

    k = cfg.k
    train_prompts = task.prompts("train")
    max_new = cfg.max_new_tokens or task.max_response_tokens
    print(f"[rloo] {task.name}: policy {trainable_summary(policy)}; reward {'verifier' if rm is None else cfg.reward}; "
          f"{cfg.iterations} iterations x {cfg.prompts_per_iteration} prompts x {k} samples")
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
            rollout = sample_groups(policy, tokenizer, template, prompts, k, max_new, cfg.temperature, gen)
        with timer("scoring"):
            with run.autocast():
                logits, _ = actor(rollout, cfg.temperature)  # (N,R,V), the sampling policy, with its graph
            logp = logprobs_from_logits(logits, rollout.input_ids[:, rollout.prompt_width :])  # (N,R)
            with torch.no_grad():
                rollout.logprobs = logp.detach()
                with run.autocast():  # the reference's and reward model's passes
                    rollout.ref_logprobs = reference_logprobs(policy, ref_model, rollout, cfg.temperature)
                    raw, scores = score_rollout(scorer, rollout, task, cfg.missing_eos_penalty)
                rewards, kl = kl_penalized_rewards(scores, rollout.logprobs, rollout.ref_logprobs, rollout.mask,
                                                   cfg.beta, cfg.kl_estimator)
                seq_reward = rewards.sum(-1)  # (N,) R(x, y_i) = score - beta * sum_t kl_t
                advantages = rloo_advantages(seq_reward, k)  # (N,)
                entropy = masked_mean(entropy_from_logits(logits), rollout.mask)
        with timer("update"):
            loss = reinforce_loss(logp, advantages, rollout.mask)
            run.check_finite(it, loss=loss)
            optimizer.zero_grad(set_to_none=True)
            (loss * loss_scale(rollout.batch_size, d)).backward()  # a mean over sequences
            all_reduce_gradients(params, d)
            grad_norm = clip_grad_norm(params, cfg.optim.grad_clip)
            run.check_finite(it, grad_norm=grad_norm)
            optimizer.step()
        seq_kl = kl.sum(-1)  # (N,)
        local = {
            **rollout_metrics(rollout, raw, task),
            "reward/total": float(seq_reward.mean()),
            "reward/kl_penalty": float(-cfg.beta * seq_kl.mean()),
            "kl": float(seq_kl.mean()),
            "loss/policy": float(loss.detach()),
            "entropy": float(entropy),
            **group_metrics(scores, k),
        }
        metrics = {**{key: global_mean(v, d) for key, v in local.items()}, "grad_norm": float(grad_norm), "lr": lr,
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
    save_model(run.model_dir(), policy, tokenizer, template, meta={"task": task_record, "stage": "rloo"})
    final = {**last_eval, "time": elapsed, "model": str(run.model_dir())}
    key = f"eval/{task.metric_name}"
    print(f"[rloo] done in {elapsed:.0f}s: {key} {final.get(key, float('nan')):.3f}; model in {run.model_dir()}")
    return final
