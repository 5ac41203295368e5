"""The models an RL or preference trainer holds: the policy with its critic, and the reference policy.

    policy, reference = policy_and_reference(policy, lora_cfg)   # pi_theta and pi_ref
    ac = ActorCritic(policy, "separate", critic)                  # response logits / T and V(s_t)
    ref_logp = reference.logprobs(rollout, temperature)           # log pi_ref of the response tokens
    with reference_policy(model, ref_model) as ref: ...           # the same pi_ref, as a model (DPO)

pi_ref is the starting policy. Under LoRA it is the policy itself with its adapters off
(``lora_disabled``: no second copy of the weights); under full fine-tuning it is a frozen copy
made before the first update. Every trainer and DPO get pi_ref from here.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn

from minirlhf.heads import ScalarHead, fold_normalization
from minirlhf.lora import apply_lora, has_lora, lora_disabled
from minirlhf.rollout import Rollout, response_logprobs, response_values
from minirlhf.saving import load_model


@contextlib.contextmanager
def dropout_off(model):
    """``model`` in eval mode (every dropout off, in the model and in the LoRA adapters), restored
    after. Gradients flow as usual: only the randomness is gone."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def reference_policy(model, ref_model=None):
    """pi_ref as a model: ``ref_model`` when one is kept, else ``model`` with its adapters off (LoRA),
    else ``model`` itself (full fine-tuning, valid only before the first update)."""
    if ref_model is None and has_lora(model):
        with lora_disabled(model):
            yield model
    else:
        yield ref_model if ref_model is not None else model


class Reference:
    """The reference policy pi_ref of a policy: its adapters off (``frozen`` None, under LoRA) or a
    frozen copy of its starting weights."""

    def __init__(self, policy: nn.Module, frozen: nn.Module | None = None):
        self.policy, self.frozen = policy, frozen

    def model(self):
        """A context in which the yielded module computes pi_ref."""
        return reference_policy(self.policy, self.frozen)

    @torch.no_grad()
    def logprobs(self, rollout: Rollout, temperature: float) -> torch.Tensor:
        """log pi_ref(y_t | x, y_<t) for every response token under the sampling temperature, (B,R)."""
        with self.model() as ref:
            return response_logprobs(ref, rollout, temperature)


def policy_and_reference(policy: nn.Module, lora) -> tuple[nn.Module, Reference]:
    """Under LoRA (``lora.enabled``) wrap the policy's target layers: pi_ref is the same model with its
    adapters off. Under full fine-tuning pi_ref is a frozen copy, made now, before any update."""
    if lora.enabled:
        apply_lora(policy, lora.r, lora.alpha, lora.dropout, lora.targets)
        return policy, Reference(policy)
    return policy, Reference(policy, copy.deepcopy(policy).eval().requires_grad_(False))


class ActorCritic(nn.Module):
    """The policy and, by ``mode``, a separate critic (its own GPT backbone), a value head on the
    policy's backbone ("shared"), or none."""

    def __init__(self, policy, mode: str = "none", critic=None):
        super().__init__()
        if mode not in ("separate", "shared", "none"):
            raise ValueError(f"critic mode: expected 'separate', 'shared' or 'none', got {mode!r}")
        if mode == "separate" and critic is None:
            raise ValueError("critic mode 'separate' needs a critic model")
        self.policy = policy
        self.mode = mode
        self.critic = critic if mode == "separate" else None
        self.value_head = ScalarHead(policy.config.n_embd, init_std=0.0) if mode == "shared" else None

    def critic_parameters(self) -> list:
        return [p for m in (self.critic, self.value_head) if m is not None for p in m.parameters()]

    def forward(self, rollout: Rollout, temperature: float, values: bool = True):
        """Response logits / temperature (B,R,V) and values V(x, y_<t) (B,R) (None without a critic,
        or when ``values`` is False)."""
        P = rollout.prompt_width
        h = self.policy.hidden_states(rollout.input_ids, rollout.attention_mask)  # (B,P+R,C)
        logits = self.policy.lm_head(h[:, P - 1 : -1]).float() / temperature  # (B,R,V), float32 under autocast
        if not values or self.mode == "none":
            return logits, None
        if self.mode == "shared":
            return logits, self.value_head(h[:, P - 1 : -1]).float()
        return logits, response_values(self.critic, rollout)


def build_critic(init: str, policy_path: str, reward_path: str | None, rm=None, normalize: bool = True, device="cpu"):
    """A separate critic: the reward model's backbone and head (``init="reward"``, with a reward
    model), else the SFT model's backbone with a zero head. When the trainer normalises the reward
    model's scores, (r - mean) / std is folded into the head, so the critic starts out predicting the
    scores on the scale it is trained on (with its raw head, the value clip would let it move only
    value_clip per iteration toward that scale, and the first advantages would be noise)."""
    if init == "reward" and rm is not None:
        critic, _, _, _ = load_model(reward_path, kind="value", device=device)
        if normalize:
            fold_normalization(critic, float(rm.reward_mean), float(rm.reward_std))
        return critic
    critic, _, _, _ = load_model(policy_path, kind="value", device=device)
    return critic
