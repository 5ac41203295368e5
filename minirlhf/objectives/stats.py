"""Masked statistics: the sums, means and variances every RLHF loss is built from.

A *mask* is a float or bool tensor of the same shape as the data, 1 on valid
positions (response tokens) and 0 on padding. Padding positions may hold any value,
even inf or nan (the log-probability of a pad token is often -inf): they are
replaced by 0 before anything is summed, so they can never leak into a result.

This module imports only torch and math.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Tensor = torch.Tensor


# ----------------------------------------------------------------------------
# input checks shared by the objectives package


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ValueError unless all keyword tensors have one shape, naming each field."""
    items = list(tensors.items())
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.shape != first.shape:
            shapes = ", ".join(f"{n}={tuple(x.shape)}" for n, x in items)
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {first_name} has shape "
                f"{tuple(first.shape)}; expected equal shapes ({shapes})"
            )


def check_ndim(name: str, t: Tensor, ndim: int, layout: str) -> None:
    """Raise ValueError unless `t` is a tensor with `ndim` dimensions (layout e.g. "(B,T)")."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor {layout}, got shape {tuple(t.shape)}")


def as_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """The mask as a tensor of like's floating dtype, after checking that its shape matches."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != like.shape:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}; expected the data's shape {tuple(like.shape)} "
            f"(1 on valid positions, 0 on padding)"
        )
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return mask.to(dtype)


# ----------------------------------------------------------------------------
# masked reductions


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum_i m_i x_i over the valid entries (all entries, or along `dim`).

    Entries where the mask is 0 count as 0 whatever they hold (inf and nan included).
    """
    m = as_mask(mask, x)
    xm = torch.where(m != 0, x * m, torch.zeros((), dtype=m.dtype, device=x.device))
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum_i m_i x_i / sum_i m_i, the mean over valid entries; 0 where there are none."""
    m = as_mask(mask, x)
    total = masked_sum(x, m, dim)
    count = m.sum() if dim is None else m.sum(dim)
    return torch.where(count > 0, total / count.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(total))


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True, dim: int | None = None) -> Tensor:
    """Variance over valid entries: sum_i m_i (x_i - mean)^2 / (n - 1), or / n with unbiased=False.

    n = sum_i m_i. `unbiased=True` matches torch.var. Needs n >= 2 (n >= 1 when biased);
    with fewer valid entries the variance is undefined and a ValueError is raised.
    """
    m = as_mask(mask, x)
    mean = masked_mean(x, m, dim)
    centred = x - (mean if dim is None else mean.unsqueeze(dim))
    ss = masked_sum(centred**2, m, dim)
    n = m.sum() if dim is None else m.sum(dim)
    need = 2 if unbiased else 1
    if bool((n < need).any()):
        raise ValueError(
            f"masked_var: needs at least {need} valid entries (mask has {n.min().item():g}); "
            f"the {'unbiased ' if unbiased else ''}variance is undefined"
        )
    return ss / (n - 1) if unbiased else ss / n


def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8,
           reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Standardise over the valid entries: (x - mean) / sqrt(var + eps).

    mean and var (unbiased, as torch.var) are taken over the entries where the mask is 1.
    With shift_mean=False the mean is added back, (x - mean)/sqrt(var + eps) + mean: only the
    scale changes, as in the reward/advantage whitening of the "N implementation details of
    RLHF with PPO" write-ups (Huang et al. 2022, following Ziegler et al. 2019's code).
    Positions where the mask is 0 come out as 0.

    ``reduce`` sums a tensor over the pieces of a batch held elsewhere (the processes of a
    distributed run: ``distributed.all_reduce_sum``), so mean and var are those of the whole batch;
    None is one piece. The reduction is injected, as ``trpo_step``'s is, so this stays pure.
    """
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    m = as_mask(mask, x)
    reduce = reduce or (lambda t: t)
    total, n = reduce(torch.stack([masked_sum(x, m), m.sum().to(x.dtype)])).unbind()
    if bool(n < 2):
        raise ValueError(f"whiten: needs at least 2 valid entries (mask has {float(n):g}); the unbiased "
                         f"variance is undefined")
    mean = total / n
    var = reduce(masked_sum((x - mean) ** 2, m)) / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m != 0, out, torch.zeros_like(out))


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> Tensor:
    """1 - Var[returns - values] / Var[returns] over valid entries (a critic diagnostic).

    1 is a perfect critic, 0 is no better than predicting the mean return, negative is worse.
    Returns nan when Var[returns] is 0 (the ratio is undefined). Detached 0-dim tensor.
    """
    check_same_shape(values=values, returns=returns)
    if mask is None:
        mask = torch.ones_like(returns, dtype=torch.bool)
    values, returns = values.detach(), returns.detach()
    var_returns = masked_var(returns, mask)
    var_residual = masked_var(returns - values, mask)
    nan = torch.full_like(var_returns, math.nan)
    return torch.where(var_returns > 0, 1.0 - var_residual / var_returns, nan)
