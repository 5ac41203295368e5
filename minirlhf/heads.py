"""Scalar-head models on a GPT backbone: the reward model and the critic (value model).

    r_phi(x, y) = w^T h_L[last real token] + b        reward model (Ouyang et al., 2022, section 3.5)
    V_psi(s_t)  = w^T h_L[t] + b                       critic, one value per position

``h_L`` is the backbone's final hidden state (after the last LayerNorm). The reward head starts
small, with weights drawn from N(0, 1 / (d_model + 1)) as in Ziegler et al. (2019)'s
lm-human-preferences; the value head starts at zero so the first advantages are the rewards.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from minirlhf.model import GPT


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask = 1) position in each row, for left or right padding. (B,) long."""
    T = attention_mask.size(1)
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(-1).values.clamp(min=0)


class ScalarHead(nn.Module):
    """A linear map from the hidden state to one number per position: (B,T,C) -> (B,T)."""

    def __init__(self, n_embd: int, init_std: float | None = None):
        super().__init__()
        self.linear = nn.Linear(n_embd, 1)
        std = 1.0 / math.sqrt(n_embd + 1) if init_std is None else init_std
        if std > 0:
            nn.init.normal_(self.linear.weight, std=std)
        else:
            nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


class ScalarHeadModel(nn.Module):
    """A GPT backbone with a scalar head; ``forward`` gives a value at every position (B,T)."""

    def __init__(self, backbone: GPT, init_std: float | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = ScalarHead(backbone.config.n_embd, init_std)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.backbone.hidden_states(idx, attention_mask, positions, allowed))  # (B,T)


class RewardModel(ScalarHeadModel):
    """Bradley–Terry reward model: one score per sequence, read at its last real token.

    ``reward_mean`` and ``reward_std`` hold the statistics of the scores over the training data
    (set after training) so that later stages can normalise: (r - mean) / std.
    """

    def __init__(self, backbone: GPT, init_std: float | None = None):
        super().__init__(backbone, init_std)
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))

    def score(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """r(x, y) for each row, (B,)."""
        values = self(idx, attention_mask)  # (B,T)
        if attention_mask is None:
            return values[:, -1]
        return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.reward_mean) / self.reward_std


def fold_normalization(model: ScalarHeadModel, mean: float, std: float) -> ScalarHeadModel:
    """Rescale the head in place so that the model outputs (w^T h + b - mean) / std:

        w <- w / std,    b <- (b - mean) / std

    A critic initialised from a reward model whose scores PPO normalises with the reward model's
    (mean, std) then starts on the scale of the rewards it has to predict. Returns the model."""
    if not std > 0:
        raise ValueError(f"std: expected > 0, got {std}")
    with torch.no_grad():
        model.head.linear.weight.div_(std)
        model.head.linear.bias.sub_(mean).div_(std)
    return model


class ValueModel(ScalarHeadModel):
    """Critic V(s_t) at every position; starts at zero output (zero-initialised head)."""

    def __init__(self, backbone: GPT, init_std: float = 0.0):
        super().__init__(backbone, init_std)
