"""The training loops: pretrain, sft, collect, reward, ppo, trpo, grpo, rloo and dpo, one module each.

Each module's entry function takes its config dataclass (``minirlhf.trainers.ppo.ppo(PPOConfig())``)
and is also a ``minirlhf <command>`` of the CLI.
"""
