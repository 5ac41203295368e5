"""Several processes, one model: torch.distributed helpers for runs launched with ``torchrun``.

    torchrun --nproc_per_node 2 -m minirlhf.cli sft --init runs/pretrain/model

The backend is gloo on CPU and NCCL on GPU. Every process holds the whole model and works on its
share of each global batch:

* SFT wraps the model in DistributedDataParallel, which averages the gradients; each rank scales
  its loss by (its tokens / all tokens) * world size, so the average is exactly the gradient of
  the loss over the global batch. The reward model and DPO do the same with pairs in place of
  tokens, averaging the gradients by hand after their micro-batches (all_reduce_gradients).
* PPO, TRPO, GRPO and RLOO generate their share of the rollouts on every rank and all-reduce
  gradients (and TRPO's Hessian-vector products) by hand; advantage whitening uses global
  statistics, and GRPO's and RLOO's groups stay whole on one rank.

Only rank 0 logs and writes checkpoints. In a single process every helper here is a no-op, so
the trainers have one code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from minirlhf.objectives import whiten


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def init_distributed(device: torch.device | None = None) -> DistInfo:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK in the environment);
    a single process when WORLD_SIZE is absent or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device is not None and device.type == "cuda":
            # each rank its own GPU before NCCL starts; CPU tensors (the float sums of global_sum,
            # gathered objects) go through gloo, CUDA tensors through NCCL
            torch.cuda.set_device(local)
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend)
    return DistInfo(rank, world, local)


def current() -> DistInfo:
    """The DistInfo of an already initialised process group (SINGLE when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(t: torch.Tensor, d: DistInfo = SINGLE) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place, and returned)."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def global_sum(value: float, d: DistInfo = SINGLE) -> float:
    return float(all_reduce_sum(torch.tensor(float(value), dtype=torch.float64), d))


def global_mean(value: float, d: DistInfo = SINGLE) -> float:
    return global_sum(value, d) / d.world_size


def global_sums(values: list[float], d: DistInfo = SINGLE) -> list[float]:
    """Each value summed over ranks, in one all-reduce (the values themselves in a single process)."""
    if not d.enabled:
        return [float(v) for v in values]
    return all_reduce_sum(torch.tensor([float(v) for v in values], dtype=torch.float64), d).tolist()


def all_gather_objects(obj, d: DistInfo = SINGLE) -> list:
    """Every rank's ``obj`` (picklable), in rank order; [obj] in a single process."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_gradients(params, d: DistInfo = SINGLE) -> None:
    """Average every parameter's gradient over ranks (what DistributedDataParallel does in backward)."""
    if not d.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= d.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def loss_scale(n_local: float, d: DistInfo = SINGLE) -> float:
    """The factor that turns a rank's mean over its n_local items into its share of the global
    mean once gradients are averaged: n_local / n_global * world_size (1 in a single process)."""
    if not d.enabled:
        return 1.0
    return n_local / global_sum(n_local, d) * d.world_size


def shard(items: list, d: DistInfo = SINGLE) -> list:
    """This rank's share of a global list: items rank, rank + W, rank + 2W, ..."""
    return items[d.rank :: d.world_size] if d.enabled else items


def global_whiten(x: torch.Tensor, mask: torch.Tensor, d: DistInfo = SINGLE, eps: float = 1e-8) -> torch.Tensor:
    """``objectives.whiten`` over the valid entries of every rank together (the global batch)."""
    return whiten(x, mask, eps=eps, reduce=global_reduction(d))


def global_reduction(d: DistInfo = SINGLE):
    """The sum over ranks that the pure functions take as ``reduce`` (None in one process)."""
    return (lambda t: all_reduce_sum(t.clone(), d)) if d.enabled else None


def barrier(d: DistInfo = SINGLE) -> None:
    if d.enabled:
        dist.barrier()
