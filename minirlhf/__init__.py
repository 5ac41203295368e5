"""minirlhf: RLHF from scratch in plain PyTorch.

The public API (see DESIGN.md): the GPT and its LoRA adapters, the tokenizers, and the pure-math
objectives, each one formula in one named function.
"""
from minirlhf.heads import RewardModel, ValueModel
from minirlhf.lora import (LoRALinear, apply_lora, load_lora_state_dict, lora_disabled, lora_state_dict,
                           merge_lora, trainable_summary, unmerge_lora)
from minirlhf.model import GPT, GPTConfig
from minirlhf.objectives import (bradley_terry_loss, conjugate_gradient, dpo_loss, entropy_from_logits, gae,
                                 group_advantages, hessian_vector_product, kl_estimate, plackett_luce_loss,
                                 ppo_policy_loss, rloo_advantages, trpo_step, value_loss, whiten)
from minirlhf.saving import load_model, save_model
from minirlhf.tokenizer import BPETokenizer, CharTokenizer, ChatTemplate, PlainTemplate, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "GPT", "GPTConfig", "RewardModel", "ValueModel",
    "LoRALinear", "apply_lora", "merge_lora", "unmerge_lora", "lora_disabled", "lora_state_dict",
    "load_lora_state_dict", "trainable_summary",
    "gae", "whiten", "kl_estimate", "ppo_policy_loss", "value_loss", "entropy_from_logits",
    "bradley_terry_loss", "plackett_luce_loss", "dpo_loss", "group_advantages", "rloo_advantages",
    "hessian_vector_product", "conjugate_gradient", "trpo_step",
    "CharTokenizer", "BPETokenizer", "ChatTemplate", "PlainTemplate", "load_tokenizer",
    "save_model", "load_model",
]
