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
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from minirlhf.checkpoint import CheckpointManager, load_state, load_tensors, save_state, save_tensors
from minirlhf.config import to_dict, save_config
from minirlhf.device import autocast, resolve_device, rng_state, seed_everything, set_rng_state, set_threads
from minirlhf.distributed import barrier, init_distributed
from minirlhf.folders import RunFolderError, check_input_kinds, plan_output
from minirlhf.logger import MetricsLogger
from minirlhf.tasks import task_from_record


@dataclass
class RunConfig:
    """Where a run writes and how it runs."""

    out: str = field(default="runs/run", metadata={"help": "run folder: config, metrics.jsonl, checkpoints, model"})
    seed: int = field(default=0, metadata={"help": "seeds every random number of the run"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA, then MPS, then CPU), cpu, cuda, mps"})
    dtype: Literal["fp32", "bf16"] = field(default="fp32", metadata={
        "help": "bf16 autocast (CUDA, or a CPU with native bf16 matmul) for every trainer's teacher-forced forward passes (log-probs, values, "
                "rewards, losses; log-probs and KLs are then taken in float32); sampling stays fp32"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave torch's default)"})
    log_every: int = field(default=10, metadata={"help": "console line every N steps"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: at the end only)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept"})
    resume: bool = field(default=False, metadata={"help": "continue the run in out from its last checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "replace the run in out, whole (only once the new "
                                                           "run's inputs have loaded)"})
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
    fused: bool = field(default=False, metadata={
        "help": "PyTorch's fused AdamW kernel on CPU and CUDA: the same update in one pass a tensor (5x faster "
                "on a 0.8M-parameter model on 2 cores), rounded differently, so a run draws other numbers"})


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
    """The learning rate of every scheduled group (all but ``make_optimizer``'s ``extra`` groups)."""
    for group in optimizer.param_groups:
        if group.get("scheduled", True):
            group["lr"] = lr


def make_optimizer(params, cfg: OptimConfig, extra: list[tuple[list, float]] = ()) -> torch.optim.AdamW:
    """AdamW over the trainable tensors; weight decay on matrices only, as in GPT-2/nanoGPT.

    ``extra``: more (params, lr) pairs with a learning rate of their own (a critic's), split the same
    way; their groups carry ``scheduled=False``, so ``set_lr`` leaves them at that rate."""
    groups = []
    for tensors, lr, scheduled in [(params, cfg.lr, True)] + [(p, lr, False) for p, lr in extra]:
        tensors = [p for p in tensors if p.requires_grad]
        if scheduled and not tensors:
            raise ValueError("no trainable parameters")
        groups += [{"params": [p for p in tensors if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr": lr,
                    "scheduled": scheduled},
                   {"params": [p for p in tensors if p.dim() < 2], "weight_decay": 0.0, "lr": lr,
                    "scheduled": scheduled}]
    groups = [g for g in groups if g["params"]]
    # cfg.fused: PyTorch's fused kernel, the whole update in one pass over each tensor (CPU and CUDA only)
    fused = cfg.fused and all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                              for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None)


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or Inf; the run stops and its last checkpoint stays intact."""


# Set by the command line: Ctrl-C and SIGTERM then stop a run at the end of its current step, with
# a checkpoint there. (Left off for runs inside another program, whose signals are its own.)
HANDLE_SIGNALS = False


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; ``checkpoint`` is where it can resume from (or None)."""

    def __init__(self, signum: int, step: int | None, checkpoint, run: "TrainingRun"):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        if checkpoint is not None and step is not None:
            how = (f"saved a checkpoint at step {step} in {checkpoint}; continue with the same command "
                   f"and --run.resume true")
        elif checkpoint is not None:
            how = f"the last checkpoint is {checkpoint}; continue with the same command and --run.resume true"
        else:
            how = "no checkpoint was written"
        super().__init__(f"[{run.name}] stopped by {name}: {how}")


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
        self.config = config
        self._config_dict = to_dict(config)
        # Everything is checked before anything is written: the folder is only created, or an old
        # run in it replaced (--run.overwrite), when the trainer has loaded its inputs (restore(),
        # or the first log or checkpoint).
        check_input_kinds(name, self._config_dict)
        self.plan = plan_output(self.out, self._config_dict, name, resume=run.resume, overwrite=run.overwrite)
        self.run_id = self.plan.run_id
        if run.threads > 0:
            set_threads(run.threads)
        device = resolve_device(run.device)
        self.dist = init_distributed(device)  # a single process unless launched by torchrun
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.is_main = self.dist.is_main
        seed_everything(run.seed)  # the same on every rank: identical initial weights and data order
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep_last=run.keep_last)
        self._tracked: dict[str, object] = {}
        self._generators: dict[str, torch.Generator] = {}
        self.start_step = 0
        self._resume_from = self._own_checkpoint() if self.plan.mode == "resume" else None
        if self._resume_from is not None:
            self.start_step = self.ckpt.step_of(self._resume_from)
        elif run.resume and self.plan.mode == "resume":
            print(f"[{name}] --run.resume: no checkpoint in {self.out}, starting from step 0", file=sys.stderr)
        self._total_steps = total_steps
        # Stands in for the metrics log until the run begins (trainers may set total_steps on it).
        self.logger = MetricsLogger(self.out, total_steps=None, desc=name, enabled=False)
        self.logger.total_steps = total_steps if run.progress else None
        self._begun = False
        self._stop_signal: int | None = None
        self._old_handlers: dict = {}

    def _own_checkpoint(self) -> Path | None:
        """The latest checkpoint this run wrote; a checkpoint of another run in the folder is refused."""
        latest = self.ckpt.latest()
        if latest is None:
            return None
        state = load_state(latest / "state.pt")
        theirs = state.get("run_id", "") if isinstance(state, dict) else ""
        if (theirs or self.run_id) and theirs != self.run_id:
            raise RunFolderError(f"{latest} was written by another run than the one recorded in "
                                 f"{self.out / 'run.json'}; refusing to mix them: start a new run in another --run.out")
        return latest

    def _begin(self) -> None:
        """Create the run folder, write config.json and open metrics.jsonl (once)."""
        if self._begun:
            return
        self._begun = True
        if self.is_main:
            self.plan.prepare()
            save_config(self.config, self.out / "config.json")
        total = self.logger.total_steps if self.cfg.progress else None
        self.logger = MetricsLogger(self.out, total_steps=total, desc=self.name, every=self.cfg.log_every,
                                    enabled=self.is_main,
                                    resume_step=self.start_step if self._resume_from is not None else None)
        if HANDLE_SIGNALS:
            self._install_signal_handlers()

    # -- signals ---------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self._stop_signal is not None:  # a second signal: stop now
                raise RunInterrupted(signum, None, self.ckpt.latest(), self)
            self._stop_signal = signum
            print(f"\n[{self.name}] {signal.Signals(signum).name}: stopping after this step (again to stop now)",
                  file=sys.stderr, flush=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # pragma: no cover
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old)
            except (ValueError, OSError, TypeError):  # pragma: no cover
                pass
        self._old_handlers = {}

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
        self._begin()
        if not self.is_main:
            return
        for name, obj in self._tracked.items():
            if isinstance(obj, nn.Module):
                bad = [k for k, v in obj.state_dict().items()
                       if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
                if bad:
                    last = self.ckpt.latest()
                    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
                    raise NonFiniteError(f"[{self.name}] step {step}: {len(bad)} tensor(s) of {name} are not finite "
                                         f"(e.g. {bad[0]}); not saved; {where}. Lower --optim.lr or raise "
                                         f"--optim.warmup-steps")

        def write(folder: Path):
            states = {}
            for name, obj in self._tracked.items():
                if isinstance(obj, nn.Module):
                    save_tensors(folder / f"{name}.safetensors", obj.state_dict())
                else:
                    states[name] = obj.state_dict()
            save_state(folder / "state.pt", {"step": step, "objects": states, "extra": extra or {},
                                             "rng": rng_state(self._generators), "run_id": self.run_id})

        self.ckpt.save(step, write)

    def maybe_save(self, step: int, total_steps: int, extra: dict | None = None) -> None:
        every = self.cfg.save_every
        if (every > 0 and step % every == 0) or step == total_steps or self._stop_signal is not None:
            self.save(step, extra)
        if self._stop_signal is not None:
            self.close()
            raise RunInterrupted(self._stop_signal, step, self.ckpt.latest(), self)

    def restore(self) -> tuple[int, dict]:
        """Load the latest checkpoint into the tracked objects (with --run.resume).
        Returns (step, extra); (0, {}) when starting fresh."""
        self._begin()
        if self._resume_from is None:
            return 0, {}
        folder = self._resume_from
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
        self._begin()
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
        self._begin()
        self._restore_signal_handlers()
        self.logger.close()
        barrier(self.dist)

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


def resolve_task(cfg: TaskConfig, meta: dict | None = None, default: str = "arithmetic"):
    """The task to use and its record for model metadata. An empty name takes the task stored with
    the init model (so every stage of a pipeline sees the same split)."""
    meta = meta or {}
    stored = meta.get("task") or {}
    name = cfg.name or stored.get("name") or default
    args = list(cfg.args) if (cfg.args or cfg.name) else list(stored.get("args", []))
    if stored and stored.get("name") == name and not cfg.args:
        args = list(stored.get("args", []))
    task = task_from_record({"name": name, "args": args})
    return task, {"name": name, "args": args}


@dataclass
class ModelSize:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = field(default=0, metadata={"help": "context length (0: what the task's data needs)"})
    dropout: float = 0.0
