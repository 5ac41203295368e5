"""The one registry of commands: every stage of the pipeline and every other ``minirlhf`` command,
read by the command line (``cli.COMMANDS``) and by ``minirlhf pipeline`` (``run_stage``).

Each entry is (module, config class, function, one-line help); modules are imported only when used.
"""
from __future__ import annotations

import importlib

# The stages of the RLHF pipeline, in the order it runs them.
STAGES: dict[str, tuple[str, str, str, str]] = {
    "pretrain": ("minirlhf.trainers.pretrain", "PretrainConfig", "pretrain", "pretrain a GPT on the task corpus"),
    "sft": ("minirlhf.trainers.sft", "SFTConfig", "sft", "supervised fine-tuning on demonstrations"),
    "collect": ("minirlhf.trainers.collect", "CollectConfig", "collect", "sample K responses per prompt and judge every pair"),
    "rm": ("minirlhf.trainers.reward", "RewardConfig", "train_reward_model", "train a Bradley-Terry reward model"),
    "ppo": ("minirlhf.trainers.ppo", "PPOConfig", "ppo", "PPO: rollouts, critic, GAE, KL-penalised reward, clipped update"),
    "trpo": ("minirlhf.trainers.trpo", "TRPOConfig", "trpo", "TRPO: one natural-gradient trust-region step per rollout batch"),
    "grpo": ("minirlhf.trainers.grpo", "GRPOConfig", "grpo", "GRPO: group-relative advantages, clipped objective, k3 KL term"),
    "rloo": ("minirlhf.trainers.rloo", "RLOOConfig", "rloo", "RLOO: REINFORCE with the leave-one-out baseline"),
    "dpo": ("minirlhf.trainers.dpo", "DPOConfig", "dpo", "direct preference optimization (offline, or online rounds)"),
}

# Every command of the command line: the pipeline, its stages, and the tools.
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "pipeline": ("minirlhf.pipeline", "PipelineConfig", "pipeline", "the whole experiment: pretrain to PPO/TRPO/GRPO/RLOO/DPO, a table, a plot"),
    **{name: STAGES[name] for name in ("pretrain", "sft", "dpo", "collect", "rm", "ppo", "trpo", "grpo", "rloo")},
    "verify": ("minirlhf.verify", "VerifyConfig", "verify_cli", "the closed-form report: every objective against its exact answer"),
    "generate": ("minirlhf.cli", "GenerateConfig", "generate", "sample responses from a model folder"),
    "import": ("minirlhf.importing", "ImportConfig", "import_cli", "a Hugging Face GPT-2 folder -> a model folder for --init"),
    "frontier": ("minirlhf.frontier", "FrontierConfig", "frontier", "each method at several KL strengths: gold and proxy reward against KL; best-of-n over-optimisation"),
    "report": ("minirlhf.report", "ReportConfig", "report", "run folders as one self-contained HTML page: config, curves, samples"),
}


def config_class(command: str) -> type:
    module, cls_name, _, _ = COMMANDS[command]
    return getattr(importlib.import_module(module), cls_name)


def function(command: str):
    module, _, fn_name, _ = COMMANDS[command]
    return getattr(importlib.import_module(module), fn_name)
