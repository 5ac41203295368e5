"""RLOO: REINFORCE with the leave-one-out baseline (Kool et al., 2019; Ahmadian et al., 2024).

One iteration:

    1. for each of a batch of prompts x, sample k responses y_1..y_k ~ pi_theta(.|x), prefilling
       x once; their scores and old and reference log-probs                          (run.rollout)
    2. the sequence reward, with the KL to the reference inside it (Ahmadian et al., 2024, sec. 3):
           R(x, y_i) = r(x, y_i) - beta * sum_t [log pi_theta(y_it|.) - log pi_ref(y_it|.)]
       (the per-token rewards of kl_penalized_rewards summed over the response)
    3. the leave-one-out advantage                                                   (rloo_advantages)
           A_i = R(x, y_i) - 1/(k-1) sum_{j != i} R(x, y_j)
    4. ONE gradient step on                                                          (reinforce_loss)
           loss = -1/N sum_i A_i sum_t log pi_theta(y_it | x, y_i,<t)

This is plain on-policy REINFORCE: the log-probs in the loss are those of the policy that sampled
the batch (the update's forward pass runs on the weights that sampled), and each batch gives exactly
one optimizer step, so
there is no importance ratio and no clip (nothing is reused off-policy). The baseline of sample i
uses only the other k - 1 samples of its prompt, so the gradient stays unbiased.

REINFORCE++ (Hu, 2025), ``advantage="reinforce_pp"``: step 3 becomes the per-token KL-penalised
return-to-go, whitened over the global batch (every process's tokens),
           A_t = (G_t - mean G) / std G,   G_t = r(x, y) - beta sum_{i >= t} KL_i   (reinforce_pp_advantages)
and step 4 the token-level REINFORCE loss -1/N sum_i sum_t A_it log pi_theta(y_it | .);
``"reinforce_pp_baseline"`` subtracts the mean score of the prompt's k samples from r(x, y) first.

Launched by torchrun, each process samples the k responses of its share of the prompts (a prompt's
samples stay on one process, so the leave-one-out baselines need nothing from the others), weights
its loss, a mean over its sequences, by its share of all the sequences times W, and averages the
gradients: the gradient of the loss on the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from minirlhf.config import ConfigError
from minirlhf.distributed import global_reduction
from minirlhf.objectives import (broadcast_to_tokens, entropy_from_logits, kl_penalized_rewards, logprobs_from_logits, masked_mean,
                                 reinforce_loss, reinforce_pp_advantages, rloo_advantages)
from minirlhf.policies import ActorCritic
from minirlhf.trainers.common import OptimConfig, RunConfig
from minirlhf.trainers.rl_run import RLConfig, RLRun, gradient_step, group_metrics


@dataclass
class RLOOConfig(RLConfig):
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/rloo", log_every=5))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, schedule="constant", beta2=0.999))
    iterations: int = 80
    prompts_per_iteration: int = field(default=16, metadata={"help": "prompts per batch (one optimizer step)"})
    k: int = field(default=4, metadata={"help": "samples per prompt"})
    beta: float = field(default=0.05, metadata={"help": "coefficient of the sequence KL to the reference in the reward"})
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = field(
        default="k1", metadata={"help": "per-token KL estimate summed in the reward (k1: log pi - log pi_ref)"})
    advantage: Literal["rloo", "reinforce_pp", "reinforce_pp_baseline"] = field(default="rloo", metadata={
        "help": "rloo: leave-one-out; reinforce_pp: REINFORCE++ (globally whitened KL-penalised return-to-go "
                "per token); reinforce_pp_baseline: minus the prompt's mean score first"})

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 2:
            raise ConfigError(f"config key 'k': expected an int >= 2 (leave-one-out needs another sample), got {self.k!r}")
        if self.prompts_per_iteration < 1:
            raise ConfigError(f"config key 'prompts_per_iteration': expected >= 1, got {self.prompts_per_iteration!r}")


def token_reinforce_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE with one advantage per token: -1/N sum_i sum_t m_it A_it log pi_theta(y_it | x_i, y_i,<t);
    logp, advantages (constants), mask: (N,R). With A_it = A_i it is reinforce_loss."""
    return -(advantages.detach().to(logp.dtype) * logp * mask).sum(-1).mean()


def rloo(cfg: RLOOConfig) -> dict:
    """Fine-tune ``cfg.policy`` with RLOO against ``cfg.reward``; writes ``<out>/model``."""
    run = RLRun(cfg, "rloo", multiples={"prompts_per_iteration": cfg.prompts_per_iteration})
    k = cfg.k
    actor = ActorCritic(run.policy, "none").to(run.device)  # response logits of the policy
    optimizer = run.optimizer(cfg.optim)  # AdamW on the policy's trainable tensors, lr scheduled by run
    run.track("policy", run.policy)

    for it, prompts in run.iterations(cfg.prompts_per_iteration, f"{cfg.prompts_per_iteration} prompts x {k} samples"):
        # 1. k samples y_1..y_k of each prompt, their scores r, old and reference log-probs
        rollout = run.rollout(actor, prompts, samples_per_prompt=k)
        # 2. R(x, y_i) = r(x, y_i) - beta * sum_t KL_t
        rewards, kl = kl_penalized_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, rollout.mask,
                                           cfg.beta, cfg.kl_estimator)
        seq_reward = rewards.sum(-1)  # (N,)
        if cfg.advantage == "rloo":
            # 3. A_i = R_i - mean of the other k - 1 samples' R
            advantages = rloo_advantages(seq_reward, k)  # (N,)
            token_adv = broadcast_to_tokens(advantages, rollout.mask)
        else:  # REINFORCE++: per-token return-to-go, whitened over every process's tokens
            token_adv = reinforce_pp_advantages(rollout.scores, rollout.logprobs, rollout.ref_logprobs, rollout.mask,
                                                cfg.beta, k if cfg.advantage == "reinforce_pp_baseline" else None,
                                                cfg.kl_estimator, reduce=global_reduction(run.dist))  # (N,R)
        # 4. one REINFORCE step on -1/N sum_i A_i log pi_theta(y_i | x)  (per token: sum_t A_it log pi(y_it))
        with run.timer("update"):
            with run.autocast():
                logits, _ = actor(rollout, cfg.temperature)  # (N,R,V), the sampling policy, with its graph
            logp = logprobs_from_logits(logits, rollout.input_ids[:, rollout.prompt_width :])  # (N,R)
            if cfg.advantage == "rloo":
                loss = reinforce_loss(logp, advantages, rollout.mask)
            else:
                loss = token_reinforce_loss(logp, token_adv, rollout.mask)
            grad_norm = gradient_step(optimizer, loss, rollout.batch_size, cfg.optim.grad_clip, run, it, run.dist)
        seq_kl = kl.sum(-1)  # (N,)
        local = {"reward/total": float(seq_reward.mean()), "reward/kl_penalty": float(-cfg.beta * seq_kl.mean()),
                 "kl": float(seq_kl.mean()), "loss/policy": float(loss.detach()),
                 "entropy": float(masked_mean(entropy_from_logits(logits.detach()), rollout.mask)),
                 **group_metrics(rollout.scores, k)}
        run.log(it, local, grad_norm=grad_norm, per_token={"advantage": token_adv,
                                                          "kl": kl, "reward": rewards})
    return run.finish()
