"""What the TRPO, GRPO and RLOO trainers share beyond ppo.py's pieces: the policy and its
reference, groups of samples per prompt from one prefill, scoring, and the rollout metrics.

    policy, ref_model = policy_and_reference(policy, cfg.lora)     # LoRA: the reference is lora_disabled
    prompts = draw_prompts(train_prompts, n, generator)             # the data position of a step
    rollout = sample_groups(policy, tok, template, prompts, G, ...) # G samples per prompt, consecutive rows
    raw, scores = score_rollout(scorer, rollout, task, penalty)     # the task's verifier or a reward model
    metrics = {**rollout_metrics(rollout, raw, task), **group_metrics(scores, G)}
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from minirlhf.evaluation import evaluate_task
from minirlhf.lora import apply_lora
from minirlhf.rollout import Rollout, apply_missing_eos_penalty, sample
from minirlhf.trainers.common import LoRAConfig


def policy_and_reference(policy: nn.Module, lora: LoRAConfig):
    """Under LoRA, wrap the policy's target layers and return (policy, None): the reference policy is
    the same model inside ``lora_disabled``. Under full fine-tuning return (policy, frozen copy)."""
    if lora.enabled:
        apply_lora(policy, lora.r, lora.alpha, lora.dropout, lora.targets)
        return policy, None
    return policy, copy.deepcopy(policy).eval().requires_grad_(False)


def draw_prompts(prompts: list[str], n: int, generator: torch.Generator) -> list[str]:
    """n training prompts drawn with replacement from a tracked generator (so a resumed run draws
    the same ones)."""
    idx = torch.randint(0, len(prompts), (n,), generator=generator).tolist()
    return [prompts[i] for i in idx]


def sample_groups(policy, tokenizer, template, prompts: list[str], group_size: int, max_new_tokens: int,
                  temperature: float = 1.0, generator: torch.Generator | None = None) -> Rollout:
    """``group_size`` responses to each prompt, as one Rollout of len(prompts) * group_size rows in which
    rows b*G .. b*G + G - 1 answer prompt b (the layout group_advantages and rloo_advantages expect).
    Each prompt is prefilled once (``GPT.generate(num_samples=G)``)."""
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected an int >= 1, got {group_size!r}")
    return sample(policy, tokenizer, template, prompts, max_new_tokens, temperature, generator, num_samples=group_size)


def score_rollout(scorer, rollout: Rollout, task, missing_eos_penalty: float | None):
    """(raw, scores), (B,) each: the scorer's value, and the same with the missing-EOS penalty applied.
    ``rollout.scores`` is set to the latter."""
    raw = scorer(rollout, task)
    rollout.scores = apply_missing_eos_penalty(raw, rollout.ended, missing_eos_penalty)
    return raw, rollout.scores


def rollout_metrics(rollout: Rollout, raw: torch.Tensor, task) -> dict:
    """The PPO trainer's rollout metrics: reward/score, response_length, eos_share, train/<metric>."""
    task_scores = [task.score(p, r) for p, r in zip(rollout.prompts, rollout.responses)]
    return {
        "reward/score": float(raw.mean()),
        "response_length": float(rollout.mask.sum(-1).mean()),
        "eos_share": float(rollout.ended.float().mean()),
        f"train/{task.metric_name}": sum(task_scores) / len(task_scores),
    }


def group_metrics(scores: torch.Tensor, group_size: int) -> dict:
    """How much learning signal a batch of groups holds. group/zero_std_share: the share of groups whose
    G rewards are all equal (a group baseline gives them zero advantage: no gradient); group/reward_std:
    the mean over groups of the reward's standard deviation (torch.std, as group_advantages uses)."""
    g = scores.detach().float().reshape(-1, group_size)  # (B,G)
    same = (g == g[:, :1]).all(dim=1)
    return {"group/zero_std_share": float(same.float().mean()), "group/reward_std": float(g.std(dim=1).mean())}


def evaluate(policy, task, tokenizer, template, eval_prompts: int, seed: int) -> dict:
    """Held-out task metric, greedy ("eval/<metric>") and at temperature 1 ("eval_t1/<metric>")."""
    return evaluate_task(policy, task, tokenizer, template, "test", (0.0, 1.0), eval_prompts, seed)
