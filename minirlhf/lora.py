"""LoRA, written by hand (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen linear layer W gets a trainable low-rank update:

    y = W x + (alpha / r) * B A dropout(x),     A: (r, in),  B: (out, r)

A starts random and B starts at zero, so the wrapped model starts exactly equal to the base
model (Hu et al., section 4.1). Because the update is a separate branch, switching it off gives
back the base model exactly: ``lora_disabled(model)`` is the reference policy of PPO, TRPO, GRPO
and DPO without a second copy of the weights.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

DEFAULT_TARGETS = ("attn.q_proj", "attn.v_proj")  # Hu et al. adapt W_q and W_v (section 7.1)


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B(A(dropout(x))), with ``base`` frozen."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive int, got {r!r}")
        self.base = base
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device,
                                               dtype=base.weight.dtype))  # (out, r)
        # The reference implementation (microsoft/LoRA, loralib) initialises A like nn.Linear.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False
        self.disabled = False
        for p in self.base.parameters():
            p.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to W: (alpha / r) * B A, shape (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x):
        y = self.base(x)
        if self.merged:
            if self.disabled:
                raise RuntimeError("lora_disabled() on a merged model: unmerge_lora(model) first")
            return y
        if self.disabled:
            return y
        return y + self.scaling * ((self.lora_dropout(x) @ self.lora_A.t()) @ self.lora_B.t())

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               targets: list[str] | tuple[str, ...] | None = None) -> nn.Module:
    """Wrap every ``nn.Linear`` whose name ends with one of ``targets`` in a ``LoRALinear`` and
    freeze every other parameter. Default targets: the attention query and value projections."""
    targets = tuple(targets) if targets is not None else DEFAULT_TARGETS
    if lora_layers(model):
        raise ValueError("model already has LoRA layers")
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [n for n in linear_names if any(n == t or n.endswith("." + t) for t in targets)]
    if not chosen:
        suffixes = sorted({".".join(n.split(".")[-2:]) for n in linear_names})
        raise ValueError(f"LoRA targets {list(targets)} match no nn.Linear; linear layers end in {suffixes}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its base weight: W <- W + (alpha/r) B A. Inference is then one matmul."""
    for m in lora_layers(model).values():
        if not m.merged:
            m.base.weight += m.delta_weight()
            m.merged = True
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo ``merge_lora``: W <- W - (alpha/r) B A (equal to the old W up to float rounding)."""
    for m in lora_layers(model).values():
        if m.merged:
            m.base.weight -= m.delta_weight()
            m.merged = False
    return model


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Inside this block the model computes exactly its base model (every adapter branch off)."""
    layers = list(lora_layers(model).values())
    if any(m.merged for m in layers):
        raise RuntimeError("lora_disabled() on a merged model: unmerge_lora(model) first")
    before = [m.disabled for m in layers]
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m, b in zip(layers, before):
            m.disabled = b


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``...lora_A`` and ``...lora_B``), for adapter-only checkpoints."""
    return {k: v for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}


def lora_config(model: nn.Module) -> dict:
    """What ``apply_lora`` needs to rebuild the same adapters on a fresh base model."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers")
    first = next(iter(layers.values()))
    return {"r": first.r, "alpha": first.alpha, "dropout": first.lora_dropout.p,
            "targets": sorted(layers)}


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Copy adapter tensors into a model that has the same LoRA layers; names and shapes must match."""
    own = lora_state_dict(model)
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"adapter does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    params = dict(model.named_parameters())
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"adapter tensor {k!r} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
        params[k].copy_(v)
    return model


def trainable_summary(model: nn.Module) -> str:
    """'N trainable of M, x%' (shared tensors counted once)."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return f"{trainable:,} trainable of {total:,}, {100 * trainable / max(total, 1):.2f}%"
