"""The run skeleton of the RL trainers (PPO, TRPO, GRPO, RLOO): what every one of them does around
its own advantage estimate and update, written once.

    run = RLRun(cfg, "grpo", multiples={"prompts_per_iteration": cfg.prompts_per_iteration})
    optimizer = run.optimizer(cfg.optim)                            # AdamW on the policy, lr scheduled
    for it, prompts in run.iterations(cfg.prompts_per_iteration):     # resume, prompt draws, timers
        rollout = run.rollout(actor, prompts, samples_per_prompt=G)    # rollout.make_rollout
        ...                                                            # the algorithm: advantages, update
        run.log(it, {"loss/policy": ...})                              # + evaluation, checkpoint
    return run.finish()                                                # <out>/model

``RLRun`` sets up the policy and its reference (LoRA adapters off, or a frozen copy), the scorer
(the task's verifier or a reward model), the run folder (config, metrics, checkpoints, exact resume,
NaN guard), the random streams, the distributed split of each batch, and evaluation. The shared
config fields live once, in ``RLConfig``; each algorithm's config adds its own.

Random streams, the same whatever the number of processes: ``shuffle`` draws the prompts of each
iteration and the minibatch orders over the global batch; it is the same on every process, so every
process draws the same global batch and takes its share (``distributed.shard``), and the same
minibatches (``minibatches``). The responses' draws come from a generator seeded by (seed, iteration),
made for every row of the global batch, each process using its rows' (``rollout.sample``'s rows). So
a run on W processes is the run on one, up to the order of floating-point sums.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from minirlhf.distributed import (SINGLE, DistInfo, all_reduce_gradients, global_mean, global_reduction, global_whiten,
                                  loss_scale, shard)
from minirlhf.evaluation import evaluate_task
from minirlhf.logger import Timer
from minirlhf.lora import trainable_summary
from minirlhf.objectives import (AdaptiveKLController, FixedKLController, batch_normalized_advantages,
                                 broadcast_to_tokens, gae, kl_estimate, kl_penalized_rewards)
from minirlhf.policies import ActorCritic, policy_and_reference
from minirlhf.rollout import Rollout, build_scorer, draw_prompts, make_rollout
from minirlhf.samples import SAMPLES_FILE, drop_samples_after, sample_rows, token_strings, write_samples
from minirlhf.saving import load_model, save_model
from minirlhf.trainers.common import (LoRAConfig, OptimConfig, RunConfig, TaskConfig, TrainingRun, clip_grad_norm, lr_at,
                                      make_optimizer, resolve_task, set_lr)


@dataclass
class RLConfig:
    """The settings every RL trainer shares: what it starts from, what scores it, how it samples and
    how often it evaluates. Each algorithm's config adds its own fields after these."""

    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=RunConfig)
    policy: str = field(default="runs/sft/model", metadata={"help": "SFT model folder (policy start and reference)"})
    reward: str = field(default="verifier", metadata={"help": "'verifier' (the task's gold check) or a reward model folder"})
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(enabled=True))
    iterations: int = 60
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (old log-probs use the same)"})
    max_new_tokens: int = field(default=0, metadata={"help": "0: the task's suggestion"})
    reward_normalize: bool = field(default=True, metadata={"help": "(r - mean)/std with the reward model's statistics"})
    reward_clip: float = field(default=0.0, metadata={"help": "clip scores to [-c, c] (0: no clip)"})
    missing_eos_penalty: float | None = field(default=-1.0, metadata={"help": "score of a response with no EOS (none: off)"})
    eval_every: int = 10
    eval_prompts: int = 300
    log_samples: int = field(default=8, metadata={
        "help": "responses written with their per-token advantage, KL, value and reward to samples.jsonl at the "
                "first iteration and at each evaluation (read by `minirlhf report`; 0: none)"})


@dataclass
class KLConfig:
    """The KL-to-reference penalty of PPO and TRPO (Ziegler et al., 2019)."""

    coef: float = field(default=0.1, metadata={"help": "initial beta of the KL penalty"})
    estimator: Literal["k1", "k2", "k3", "abs"] = field(default="k1", metadata={
        "help": "per-token KL estimate; with where=loss use k2 or k3 (k1's expected gradient is zero there)"})
    where: Literal["reward", "loss"] = field(default="reward", metadata={
        "help": "penalty in the per-token reward, or a loss term (loss: needs estimator k2, the gradient of "
                "KL(pi||pi_ref), or k3, the gradient of KL(pi_ref||pi))"})
    adaptive: bool = field(default=True, metadata={"help": "Ziegler et al.'s controller toward target"})
    target: float = field(default=1.0, metadata={"help": "target KL per response (nats, summed over tokens)"})
    horizon: int = field(default=500, metadata={"help": "controller horizon (in rollouts)"})


@dataclass
class CriticRLConfig(RLConfig):
    """The settings PPO and TRPO share: GAE with a critic (or the critic-free batch-normalised
    reward), the critic's start and value clip, and the KL-to-reference penalty in the reward."""

    advantage: Literal["gae", "batch_norm"] = field(
        default="gae", metadata={"help": "gae with a critic, or the critic-free batch-normalised sequence reward"})
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    critic_init: Literal["reward", "policy"] = field(default="reward", metadata={
        "help": "a separate critic starts from the reward model (if any; its head rescaled to the normalised "
                "rewards when reward_normalize is on) or the SFT model"})
    value_clip: float = field(default=0.2, metadata={"help": "clip of the value update (0: none)"})
    kl: KLConfig = field(default_factory=KLConfig)


def sampling_seed(seed: int, iteration: int) -> int:
    """The seed of iteration ``iteration``'s response sampling (the same on every process)."""
    return seed * 1_000_003 + iteration + 7_777_777


def kl_controller(kl: KLConfig):
    """beta: Ziegler et al.'s adaptive controller toward ``kl.target``, or a fixed coefficient."""
    return AdaptiveKLController(kl.coef, kl.target, kl.horizon) if kl.adaptive else FixedKLController(kl.coef)


# ---------------------------------------------------------------------------------------------
# Rewards and advantages with a critic (PPO and TRPO)
# ---------------------------------------------------------------------------------------------


def compute_advantages(cfg, rewards, values, mask, d: DistInfo = SINGLE):
    """GAE advantages (whitened) and returns; or, without a critic (``cfg.advantage="batch_norm"``),
    the batch-normalised sequence reward broadcast to every token (returns are then None).
    Statistics are over the global batch (every rank's rollouts) when distributed."""
    if cfg.advantage == "batch_norm":
        seq = (rewards * mask).sum(-1)  # (B,)
        return broadcast_to_tokens(batch_normalized_advantages(seq, reduce=global_reduction(d)), mask), None
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = global_whiten(advantages, mask, d)
    return advantages, returns


def rewards_and_advantages(cfg, rollout: Rollout, beta: float, d: DistInfo = SINGLE):
    """Per-token rewards r_t = -beta k_t plus the score at the last token (beta is 0 in the reward when
    the penalty is a loss term, ``cfg.kl.where="loss"``), the per-token KL estimate k_t, and the
    advantages and returns of ``compute_advantages``, on a scored rollout. Returns
    (rewards, kl, advantages, returns), (B,R) each (returns None without a critic)."""
    in_reward = cfg.kl.where == "reward"
    rewards, kl = kl_penalized_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, rollout.mask,
                                       beta if in_reward else 0.0, cfg.kl.estimator)
    if not in_reward:
        kl = kl_estimate(rollout.logprobs, rollout.ref_logprobs, cfg.kl.estimator) * rollout.mask
    advantages, returns = compute_advantages(cfg, rewards, rollout.values, rollout.mask, d)
    return rewards, kl, advantages, returns


# ---------------------------------------------------------------------------------------------
# One optimizer step on a minibatch, the same in every trainer
# ---------------------------------------------------------------------------------------------


def minibatches(rollout: Rollout, size: int, generator: torch.Generator, d: DistInfo = SINGLE):
    """Row indices into ``rollout`` of one shuffled pass over the global batch in minibatches of
    ``size`` rows. The order is drawn over the global rows with a generator that is the same on every
    process, and each process takes from each minibatch the rows it holds (``extra["rows"]``), so the
    minibatches are those of one process holding the whole batch; a process may hold none of a
    minibatch's rows (an empty index). In one process: torch.randperm(B) cut into pieces of ``size``.
    (A rollout without ``extra["rows"]``: each process shuffles its own rows, size / W at a time.)"""
    if "rows" not in rollout.extra:
        order = torch.randperm(rollout.batch_size, generator=generator)
        per_rank = max(1, size // d.world_size)
        for start in range(0, rollout.batch_size, per_rank):
            yield order[start : start + per_rank]
        return
    rows = rollout.extra["rows"].cpu()  # (B,) this process's rows in the global batch
    n_global = rollout.batch_size * d.world_size  # every process holds an equal share
    position = torch.full((n_global,), -1, dtype=torch.long)
    position[rows] = torch.arange(rollout.batch_size)
    order = torch.randperm(n_global, generator=generator)
    for start in range(0, n_global, size):
        local = position[order[start : start + size]]
        yield local[local >= 0]


def gradient_step(optimizer, loss: torch.Tensor | None, count: float, grad_clip: float, run, iteration: int,
                  d: DistInfo = SINGLE) -> float:
    """One optimizer step on ``loss``, a mean over this rank's ``count`` items (tokens or sequences):
    NaN guard, backward of the loss times its share of the global count (``loss_scale``), gradients
    averaged over ranks (the gradient of the mean over the global minibatch), clipped to ``grad_clip``
    (0: measured only), NaN guard, step. Returns the gradient norm before clipping. ``loss=None``: this
    rank holds none of the minibatch (count 0) and adds zero gradients to the others'."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scale = loss_scale(count, d)
    optimizer.zero_grad(set_to_none=True)
    if loss is None:
        for p in params:
            p.grad = torch.zeros_like(p)
    else:
        run.check_finite(iteration, loss=loss)
        (loss * scale).backward()
    all_reduce_gradients(params, d)
    grad_norm = clip_grad_norm(params, grad_clip)
    run.check_finite(iteration, grad_norm=grad_norm)
    optimizer.step()
    return float(grad_norm)


# ---------------------------------------------------------------------------------------------
# Metrics every RL trainer logs
# ---------------------------------------------------------------------------------------------


def rollout_metrics(rollout: Rollout, task) -> dict:
    """reward/score (before the missing-EOS penalty), response_length, eos_share, train/<metric>."""
    raw = rollout.extra.get("raw_scores", rollout.scores)
    task_scores = [task.score(p, r) for p, r in zip(rollout.prompts, rollout.responses)]
    return {
        "reward/score": float(raw.mean()),
        "response_length": float(rollout.mask.sum(-1).mean()),
        "eos_share": float(rollout.ended.float().mean()),
        f"train/{task.metric_name}": sum(task_scores) / len(task_scores),
    }


def score_at_last_token(rollout: Rollout) -> torch.Tensor:
    """(B,R): each response's score at its last token, 0 elsewhere (the reward of a trainer whose KL
    term is in the loss, not in the reward)."""
    return kl_penalized_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, rollout.mask, 0.0)[0]


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


# ---------------------------------------------------------------------------------------------
# The skeleton
# ---------------------------------------------------------------------------------------------


class RLRun:
    """Set-up, iterations, rollouts, logging, evaluation, checkpoints and the end of an RL run.

    Attributes a trainer uses: ``policy`` (LoRA-wrapped under ``cfg.lora``), ``reference``
    (``policies.Reference``), ``rm`` (the reward model or None), ``task``, ``device``, ``dist``,
    ``shuffle`` (the generator of prompt draws and minibatch orders), ``timer``, ``max_new_tokens``.
    """

    def __init__(self, cfg: RLConfig, name: str, multiples: dict[str, int] | None = None):
        self.cfg, self.name = cfg, name
        policy, self.tokenizer, template, meta = load_model(cfg.policy, kind="gpt")
        self.task, self.task_record = resolve_task(cfg.task, meta)
        self.template = template or self.task.template()
        self.run = TrainingRun(cfg.run, cfg, name=name, total_steps=cfg.iterations)
        self.device, self.dist = self.run.device, self.run.dist
        for key, value in (multiples or {}).items():
            if value % self.dist.world_size:
                raise ValueError(f"{key} ({value}) must be a multiple of the number of processes "
                                 f"({self.dist.world_size})")
        self.policy, self.reference = policy_and_reference(policy.to(self.device), cfg.lora)
        self.scorer, self.rm = build_scorer(cfg.reward, self.tokenizer, self.device, self.template,
                                            cfg.reward_normalize, cfg.reward_clip)
        self.shuffle = torch.Generator().manual_seed(cfg.run.seed + 1)  # the same global draws on every rank
        self.run.track_generator("shuffle", self.shuffle)
        self.max_new_tokens = cfg.max_new_tokens or self.task.max_response_tokens
        self.timer = Timer()
        self._optimizer, self._optim, self.lr = None, None, None
        self.last_eval: dict = {}
        self.is_main = self.run.is_main

    # -- what a trainer calls ---------------------------------------------------------------

    def optimizer(self, optim: OptimConfig, extra: list[tuple[list, float]] = ()) -> torch.optim.AdamW:
        """AdamW over the policy's trainable tensors (``make_optimizer``), tracked; ``iterations`` sets its
        learning rate by ``optim``'s schedule. ``extra`` (params, lr) groups keep their own rate."""
        self._optimizer, self._optim = make_optimizer(self.policy.parameters(), optim, extra), optim
        self.track("optimizer", self._optimizer)
        return self._optimizer

    def track(self, name: str, obj) -> None:
        """Include ``obj`` (a module, optimizer, KL controller) in checkpoints and resume."""
        self.run.track(name, obj)

    def autocast(self):
        return self.run.autocast()

    def check_finite(self, step: int, **values) -> None:
        self.run.check_finite(step, **values)

    def iterations(self, prompts_per_iteration: int, describe: str = ""):
        """Yield (iteration, this rank's prompts) from the first iteration not yet done (resume), after
        evaluating the starting policy. Prompts are drawn globally, then sharded."""
        start, _ = self.run.restore()
        if start > 0 and self.is_main:  # samples logged after the checkpoint are written again
            drop_samples_after(self.run.out / SAMPLES_FILE, start)
        reward = "verifier" if self.rm is None else self.cfg.reward
        print(f"[{self.name}] {self.task.name}: policy {trainable_summary(self.policy)}; reward {reward}; "
              f"{self.cfg.iterations} iterations x {describe or f'{prompts_per_iteration} prompts'}")
        self.policy.eval()  # dropout off during rollouts and updates
        self.t0 = time.perf_counter()
        if start == 0 and self.is_main:
            self.last_eval = self.evaluate()
            self.run.log(0, dict(self.last_eval))
        train_prompts = self.task.prompts("train")
        for it in range(start + 1, self.cfg.iterations + 1):
            self.timer.reset()
            # The responses' randomness is a function of (seed, iteration, global row): a fresh generator
            # each iteration, its draws made for the global batch (rollout.sample's rows).
            self.sampling = torch.Generator(device=self.device).manual_seed(sampling_seed(self.cfg.run.seed, it))
            self._prompt_index = list(range(prompts_per_iteration))[self.dist.rank :: self.dist.world_size]
            self._n_prompts = prompts_per_iteration
            if self._optimizer is not None:
                self.lr = lr_at(it, self.cfg.iterations, self._optim)
                set_lr(self._optimizer, self.lr)
            yield it, shard(draw_prompts(train_prompts, prompts_per_iteration, self.shuffle), self.dist)

    def rollout(self, actor: ActorCritic, prompts: list[str], samples_per_prompt: int = 1, values: bool = False,
                keep_logits: bool = False) -> Rollout:
        """``rollout.make_rollout`` with this run's reference, scorer, task, sampling settings and timers."""
        cfg, G = self.cfg, samples_per_prompt
        rows = torch.tensor([p * G + g for p in self._prompt_index for g in range(G)], dtype=torch.long)
        self._rollout = make_rollout(actor, self.reference, self.scorer, self.task, self.tokenizer, self.template,
                                     prompts, self.max_new_tokens, cfg.temperature, self.sampling, G,
                                     cfg.missing_eos_penalty, values, keep_logits, self.autocast, self.timer,
                                     rows=rows, n_rows=self._n_prompts * G)
        return self._rollout

    def use_rollout(self, rollout: Rollout) -> None:
        """Make ``rollout`` the one ``log`` reports on (e.g. DAPO's kept groups, not the last draw)."""
        self._rollout = rollout

    def log(self, it: int, local: dict, per_token: dict | None = None, **shared) -> None:
        """Log one iteration: the last rollout's metrics and ``local`` (this rank's values, averaged over
        ranks), ``shared`` (the same on every rank), the phase timers, and the held-out evaluation every
        ``eval_every`` iterations and at the end; then a checkpoint when one is due.

        ``per_token``: (B,R) tensors of the last rollout named "advantage", "kl", "value", "reward";
        at the first iteration and at each evaluation, ``log_samples`` responses are written with
        them to ``<out>/samples.jsonl``."""
        rollout_local = rollout_metrics(self._rollout, self.task)
        metrics = {**{k: global_mean(v, self.dist) for k, v in {**rollout_local, **local}.items()},
                   **({"lr": self.lr} if self._optimizer is not None else {}), **shared, **self.timer.as_metrics()}
        evaluating = it % self.cfg.eval_every == 0 or it == self.cfg.iterations
        if evaluating and self.is_main:
            self.last_eval = self.evaluate()
            metrics.update(self.last_eval)
        if (evaluating or it == 1) and self.is_main and per_token and self.cfg.log_samples > 0:
            self.write_samples(it, per_token)
        self.run.log(it, metrics)
        self.run.maybe_save(it, self.cfg.iterations)

    def write_samples(self, it: int, per_token: dict) -> None:
        """The first ``log_samples`` responses of the last rollout with their per-token numbers."""
        r, n = self._rollout, self.cfg.log_samples
        response = r.input_ids[:n, r.prompt_width :]
        tokens = [token_strings(self.tokenizer, ids[m.bool()].tolist()) for ids, m in zip(response, r.mask[:n])]
        rows = sample_rows(r.prompts[:n], r.responses[:n], tokens, r.scores[:n], r.mask[:n],
                           **{key: (None if t is None else t[:n]) for key, t in (
                               ("advantages", per_token.get("advantage")), ("kl", per_token.get("kl")),
                               ("values", per_token.get("value")), ("rewards", per_token.get("reward")))})
        write_samples(self.run.out / SAMPLES_FILE, it, rows)

    def evaluate(self) -> dict:
        return evaluate(self.policy, self.task, self.tokenizer, self.template, self.cfg.eval_prompts, self.cfg.run.seed)

    def finish(self) -> dict:
        """Close the run; rank 0 writes ``<out>/model`` and returns the final evaluation."""
        self.run.close()
        elapsed = time.perf_counter() - self.t0
        if not self.is_main:
            return {}
        out = self.run.model_dir()
        save_model(out, self.policy, self.tokenizer, self.template, meta={"task": self.task_record, "stage": self.name})
        final = {**self.last_eval, "time": elapsed, "model": str(out)}
        key = f"eval/{self.task.metric_name}"
        print(f"[{self.name}] done in {elapsed:.0f}s: {key} {final.get(key, float('nan')):.3f}; model in {out}")
        return final
