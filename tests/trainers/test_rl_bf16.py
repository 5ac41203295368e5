"""--run.dtype bf16 in the RL trainers (PPO, TRPO, GRPO, RLOO): every teacher-forced forward pass of a
training iteration (log-probs, values, the reward model, the updates) runs inside the run's autocast,
and the runs finish with finite losses. On the CPU, ``--run.dtype bf16`` is torch's CPU bfloat16
autocast, which computes the matmuls in bfloat16 as CUDA's does."""
import math

import pytest
import torch

import minirlhf.trainers.grpo as grpo_module
import minirlhf.trainers.ppo as ppo_module
import minirlhf.trainers.rloo as rloo_module
import minirlhf.trainers.trpo as trpo_module
from minirlhf.logger import read_metrics
from minirlhf.model import GPT
from minirlhf.saving import load_model, save_model
from minirlhf.trainers import rl_run
from minirlhf.trainers.pretrain import pretrain
from minirlhf.trainers.sft import sft

from tiny_configs import pretrain_cfg, run_cfg, sft_cfg


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny SFT model and a reward model on its backbone (an untrained head is enough here)."""
    out = tmp_path_factory.mktemp("rl_bf16")
    torch.set_num_threads(1)
    pretrain(pretrain_cfg(out / "pt", steps=10))
    sft(sft_cfg(out / "pt" / "model", out / "sft", steps=6))
    rm, tok, template, meta = load_model(out / "sft" / "model", kind="reward")
    save_model(out / "rm", rm, tok, template, meta)
    return out / "sft" / "model", out / "rm"


@pytest.fixture
def forward_passes(monkeypatch):
    """Record for every teacher-forced forward pass (GPT.hidden_states: the policy, the reference, the
    critic, the reward model) whether it ran under bf16 autocast, leaving out the held-out evaluation
    (greedy and sampled generation)."""
    passes = {"bf16": 0, "fp32": 0}
    state = {"evaluating": False}

    hidden_states = GPT.hidden_states

    def recording(self, *args, **kwargs):
        if not state["evaluating"]:
            on = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            passes["bf16" if on else "fp32"] += 1
        return hidden_states(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "hidden_states", recording)
    evaluate = rl_run.evaluate  # every RL trainer evaluates through its run skeleton

    def not_recorded(*args, **kwargs):
        state["evaluating"] = True
        try:
            return evaluate(*args, **kwargs)
        finally:
            state["evaluating"] = False

    monkeypatch.setattr(rl_run, "evaluate", not_recorded)
    return passes


def configs(policy, rm, out):
    run = run_cfg(out, dtype="bf16")
    common = dict(run=run, policy=str(policy), iterations=2, eval_every=2, eval_prompts=4)
    return {
        "ppo": (ppo_module.ppo, ppo_module.PPOConfig(**common, reward=str(rm), batch_size=8, minibatch_size=4,
                                                     ppo_epochs=2, critic_init="reward"),
                ("loss/policy", "loss/value")),
        "ppo-penalty": (ppo_module.ppo, ppo_module.PPOConfig(**common, reward=str(rm), batch_size=8, minibatch_size=4,
                                                             ppo_epochs=2, policy_loss="penalty", critic="shared"),
                        ("loss/policy", "loss/value", "penalty_kl")),
        "trpo": (trpo_module.trpo, trpo_module.TRPOConfig(**common, reward=str(rm), batch_size=8,
                                                          critic_minibatch_size=4, critic_epochs=1),
                 ("loss/value", "kl_old_new")),
        "grpo": (grpo_module.grpo, grpo_module.GRPOConfig(**common, prompts_per_iteration=2, group_size=4,
                                                          minibatch_size=4), ("loss/policy", "loss/kl")),
        "rloo": (rloo_module.rloo, rloo_module.RLOOConfig(**common, prompts_per_iteration=2, k=4, reward=str(rm)),
                 ("loss/policy",)),
    }


@pytest.mark.parametrize("name", ["ppo", "ppo-penalty", "trpo", "grpo", "rloo"])
def test_bf16_runs_every_training_forward_pass_under_autocast(models, tmp_path, forward_passes, name):
    policy, rm = models
    train, cfg, losses = configs(policy, rm, tmp_path / name)[name]
    train(cfg)
    assert forward_passes["bf16"] > 0
    ignored = forward_passes["fp32"]
    assert ignored == 0, f"{ignored} of the training forward passes ignored --run.dtype bf16"
    rows = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["step"] > 0]
    assert len(rows) == 2
    for row in rows:
        for key in losses:
            assert math.isfinite(row[key]), (key, row[key])


def test_fp32_runs_no_forward_pass_under_autocast(models, tmp_path, forward_passes):
    policy, rm = models
    train, cfg, _ = configs(policy, rm, tmp_path / "ppo")["ppo"]
    cfg.run.dtype = "fp32"
    train(cfg)
    assert forward_passes["fp32"] > 0 and forward_passes["bf16"] == 0
