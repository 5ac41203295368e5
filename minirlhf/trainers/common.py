"""What every trainer shares: run settings, the optimiser and its schedule, the run folder
(config, metrics, checkpoints, exact resume) and the guard against non-finite values.

A trainer reads like this:

    run = TrainingRun(cfg.run, cfg, name="sft", total_steps=cfg.steps)
    run.track("model", model); run.track("optimizer", opt); run.track_generator("data", gen)
    start = run.restore()                 # 0, or the step of the last checkpoint with --run.resume
    for step in range(start + 1, cfg.steps + 1):
        ...
        run.check_finite(step, loss=loss)
        run.log(step, {"loss": loss})
        run.maybe_save(step)
    run.finish(model, tokenizer, template)  # <out>/model, a self-contained model folder
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from minirlhf.checkpoint import CheckpointManager, load_state, load_tensors, save_state, save_tensors
from minirlhf.config import save_config
from minirlhf.device import autocast, resolve_device, rng_state, seed_everything, set_rng_state, set_threads
from minirlhf.distributed import barrier, init_distributed
from minirlhf.logger import MetricsLogger


@dataclass
class RunConfig:
    """Where a run writes and how it runs."""

    out: str = field(default="runs/run", metadata={"help": "run folder: config, metrics.jsonl, checkpoints, model"})
    seed: int = field(default=0, metadata={"help": "seeds every random number of the run"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA, then MPS, then CPU), cpu, cuda, mps"})
    dtype: Literal["fp32", "bf16"] = field(default="fp32", metadata={
        "help": "bf16 autocast on CUDA for every trainer's teacher-forced forward passes (log-probs, values, "
                "rewards, losses; log-probs and KLs are then taken in float32); sampling stays fp32"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave torch's default)"})
    log_every: int = field(default=10, metadata={"help": "console line every N steps"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: at the end only)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in out"})
    progress: bool = field(default=True, metadata={"help": "progress bar on the console"})


@dataclass
class OptimConfig:
    """AdamW (Loshchilov & Hutter, 2019) with linear warmup and cosine decay."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr as a share of lr"})
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = field(default=1.0, metadata={"help": "max global grad norm (0: no clipping)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})


@dataclass
class LoRAConfig:
    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn.q_proj", "attn.v_proj"])


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate at ``step`` (1-based): linear warmup over ``warmup_steps``, then cosine decay
    from lr to min_lr_ratio * lr at ``total_steps`` (Loshchilov & Hutter, 2017, SGDR)."""
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable tensors; weight decay on matrices only, as in GPT-2/nanoGPT."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps)


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or Inf; the run stops and its last checkpoint stays intact."""


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Total L2 norm of the gradients, clipped to ``max_norm`` (0: measured, not clipped)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm and max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------


class TrainingRun:
    """A run folder with its config, metrics log and checkpoints, and exact resume.

    Anything with ``state_dict``/``load_state_dict`` (models, optimizers, KL controllers) is
    tracked by name; together with every RNG state and the step, that is a whole checkpoint.
    """

    def __init__(self, run: RunConfig, config, name: str, total_steps: int | None = None):
        self.cfg = run
        self.name = name
        self.out = Path(run.out)
        if run.threads > 0:
            set_threads(run.threads)
        device = resolve_device(run.device)
        self.dist = init_distributed(device)  # a single process unless launched by torchrun
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.is_main = is_main = self.dist.is_main
        seed_everything(run.seed)  # the same on every rank: identical initial weights and data order
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep_last=run.keep_last)
        self._tracked: dict[str, object] = {}
        self._generators: dict[str, torch.Generator] = {}
        self.start_step = 0
        latest = self.ckpt.latest() if run.resume else None
        if run.resume and latest is None:
            print(f"[{name}] --run.resume: no checkpoint in {self.out}, starting from step 0", file=sys.stderr)
        if latest is not None:
            self.start_step = self.ckpt.step_of(latest)
        if is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out / "config.json")
        self.logger = MetricsLogger(self.out, total_steps=total_steps if run.progress else None, desc=name,
                                    every=run.log_every, enabled=is_main,
                                    resume_step=self.start_step if latest is not None else None)

    # -- device helpers --------------------------------------------------------------------

    def autocast(self):
        return autocast(self.device, self.cfg.dtype)

    # -- tracking and checkpoints ----------------------------------------------------------

    def track(self, name: str, obj) -> None:
        """Include ``obj`` (a module, optimizer or anything with state_dict) in checkpoints."""
        self._tracked[name] = obj

    def track_generator(self, name: str, generator: torch.Generator) -> None:
        self._generators[name] = generator

    def save(self, step: int, extra: dict | None = None) -> None:
        if not self.is_main:
            return

        def write(folder: Path):
            states = {}
            for name, obj in self._tracked.items():
                if isinstance(obj, nn.Module):
                    save_tensors(folder / f"{name}.safetensors", obj.state_dict())
                else:
                    states[name] = obj.state_dict()
            save_state(folder / "state.pt", {"step": step, "objects": states, "extra": extra or {},
                                             "rng": rng_state(self._generators)})

        self.ckpt.save(step, write)

    def maybe_save(self, step: int, total_steps: int, extra: dict | None = None) -> None:
        every = self.cfg.save_every
        if (every > 0 and step % every == 0) or step == total_steps:
            self.save(step, extra)

    def restore(self) -> tuple[int, dict]:
        """Load the latest checkpoint into the tracked objects (with --run.resume).
        Returns (step, extra); (0, {}) when starting fresh."""
        if self.start_step == 0:
            return 0, {}
        folder = self.ckpt.latest()
        state = load_state(folder / "state.pt")
        for name, obj in self._tracked.items():
            if isinstance(obj, nn.Module):
                tensors = load_tensors(folder / f"{name}.safetensors", device=self.device)
                obj.load_state_dict(tensors)
            else:
                obj.load_state_dict(state["objects"][name])
        set_rng_state(state["rng"], self._generators)
        print(f"[{self.name}] resumed from {folder} (step {state['step']})", file=sys.stderr)
        return state["step"], state["extra"]

    # -- logging and guards ----------------------------------------------------------------

    def log(self, step: int, metrics: dict) -> dict | None:
        return self.logger.log(step, metrics)

    def check_finite(self, step: int, **values) -> None:
        """Stop the run if any named value is NaN or Inf, naming the step and the quantity."""
        for name, value in values.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            if not bool(torch.isfinite(t).all()):
                last = self.ckpt.latest()
                where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
                raise NonFiniteError(f"[{self.name}] step {step}: {name} is not finite "
                                     f"({t.detach().flatten()[:4].tolist()}); stopping; {where}")

    def close(self) -> None:
        self.logger.close()
        barrier(self.dist)

    def rank_seed(self, offset: int = 0) -> int:
        """A seed of this run for a random stream that must differ between ranks (sampling)."""
        return self.cfg.seed + offset + 1_000_003 * self.dist.rank

    def model_dir(self) -> Path:
        return self.out / "model"


# ---------------------------------------------------------------------------------------------
# Tasks and model sizes
# ---------------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    name: str = field(default="", metadata={"help": "task name ('' = the task the init model was trained on)"})
    args: list[str] = field(default_factory=list,
                            metadata={"help": "task options as key=value, e.g. max_operand=49 mistake_rate=0.8"})


def parse_task_args(args: list[str]) -> dict:
    """["max_operand=49", "ops=('+',)"] -> {"max_operand": 49, "ops": ("+",)} (Python literals, else str)."""
    import ast

    out = {}
    for item in args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"task option {item!r}: expected key=value")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def resolve_task(cfg: TaskConfig, meta: dict | None = None, default: str = "arithmetic"):
    """The task to use and its record for model metadata. An empty name takes the task stored with
    the init model (so every stage of a pipeline sees the same split)."""
    from minirlhf.tasks import get_task

    meta = meta or {}
    stored = meta.get("task") or {}
    name = cfg.name or stored.get("name") or default
    args = list(cfg.args) if (cfg.args or cfg.name) else list(stored.get("args", []))
    if stored and stored.get("name") == name and not cfg.args:
        args = list(stored.get("args", []))
    task = get_task(name, **parse_task_args(args))
    return task, {"name": name, "args": args}


@dataclass
class ModelSize:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = field(default=0, metadata={"help": "context length (0: what the task's data needs)"})
    dropout: float = 0.0
