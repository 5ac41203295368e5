"""Model folders: a model with its config, tokenizer and prompt template, in one place.

    <folder>/config.json        {"kind": "gpt" | "reward" | "value", "gpt": GPTConfig, "template": ..., "meta": ...}
    <folder>/model.safetensors  the weights (a LoRA model is saved merged: a plain GPT)
    <folder>/adapter.safetensors and "lora" in config.json, when the model carries LoRA adapters
    <folder>/tokenizer.json

A folder is written under a temporary name and renamed when complete, so a crash never leaves
half a model behind. Weights are safetensors: loading one can never run code.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
import torch.nn as nn

from minirlhf.checkpoint import atomic_write_json, load_tensors, save_tensors
from minirlhf.heads import RewardModel, ValueModel
from minirlhf.lora import LoRALinear, has_lora, lora_config, lora_state_dict
from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import check_vocab_fits, get_template, load_tokenizer

KINDS = {"gpt": GPT, "reward": RewardModel, "value": ValueModel}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain model that a LoRA model computes: W + (alpha/r) B A under the
    base layer's own names. The model itself is not changed."""
    sd = {}
    lora_prefixes = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    for k, v in model.state_dict().items():
        if k.endswith(("lora_A", "lora_B")):
            continue
        sd[k] = v
    for name, m in lora_prefixes.items():
        base_w = sd.pop(f"{name}.base.weight")
        sd[f"{name}.weight"] = (base_w + (0 if m.merged else m.delta_weight().detach())).detach()
        if f"{name}.base.bias" in sd:
            sd[f"{name}.bias"] = sd.pop(f"{name}.base.bias")
    return sd


def _kind_of(model: nn.Module) -> str:
    for kind, cls in KINDS.items():
        if type(model) is cls:
            return kind
    raise TypeError(f"cannot save a {type(model).__name__}; expected one of {[c.__name__ for c in KINDS.values()]}")


def _gpt_config(model: nn.Module) -> GPTConfig:
    return model.config if isinstance(model, GPT) else model.backbone.config


def save_model(folder, model: nn.Module, tokenizer=None, template=None, meta: dict | None = None) -> Path:
    """Write ``model`` (GPT, RewardModel or ValueModel) with its tokenizer and template to ``folder``.
    A model with NaN or Inf weights is refused (FloatingPointError): it would only mislead."""
    folder = Path(folder)
    bad = [k for k, v in model.state_dict().items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise FloatingPointError(f"{folder}: not saved: {len(bad)} weight tensor(s) hold NaN or Inf (e.g. {bad[0]}); "
                                 f"the training diverged: lower the learning rate")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        config = {"kind": _kind_of(model), "gpt": _gpt_config(model).to_dict(),
                  "template": get_template(template).to_dict() if template is not None else None,
                  "meta": meta or {}}
        save_tensors(tmp / "model.safetensors", merged_state_dict(model))
        if has_lora(model):
            config["lora"] = lora_config(model)
            save_tensors(tmp / "adapter.safetensors", lora_state_dict(model))
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / "config.json", config, indent=2)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def infer_kind(folder) -> str:
    """The kind of a model folder written before config.json recorded one, from its tensor names:
    a reward model keeps its score statistics, a value model a head, a GPT neither."""
    from safetensors import safe_open

    path = Path(folder) / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
    except Exception as e:
        raise ValueError(f"{path}: cannot tell what model the folder holds ({e})") from None
    if "reward_mean" in names:
        return "reward"
    if any(n.startswith("backbone.") for n in names):
        return "value"
    return "gpt"


def read_config(folder) -> dict:
    path = Path(folder) / "config.json"
    if not Path(folder).exists():
        raise FileNotFoundError(f"{folder}: no such model folder")
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a minirlhf model folder)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the model folder is damaged: save or copy it again") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if config.get("kind") not in KINDS and "model_type" in config:
        raise ValueError(f"{folder} is a Hugging Face model folder, not a minirlhf one; convert it first: "
                         f"minirlhf import {folder} --out <folder>")
    if "kind" not in config and "gpt" in config:  # written before folders recorded their kind
        config["kind"] = infer_kind(folder)
    if config.get("kind") not in KINDS:
        raise ValueError(f"{path}: field \"kind\": expected one of {sorted(KINDS)}, got {config.get('kind')!r}")
    return config


def load_model(folder, kind: str | None = None, device="cpu"):
    """Load a folder written by ``save_model``: returns (model, tokenizer, template, meta).

    ``kind`` ("gpt", "reward", "value") checks what the folder holds; a reward or value folder
    loaded as "gpt" gives its backbone. The tokenizer must fit the model's vocabulary.
    """
    config = read_config(folder)
    gpt_config = GPTConfig.from_dict(config["gpt"])
    stored = config["kind"]
    want = kind or stored
    if want not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {want!r}")
    tensors = load_tensors(Path(folder) / "model.safetensors")
    if stored != "gpt" and want == "gpt":  # take the backbone out of a scalar-head model
        tensors = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    elif stored == "gpt" and want != "gpt":  # a new head on a language model's body
        tensors = {f"backbone.{k}": v for k, v in tensors.items()}
    elif stored == "reward" and want == "value":  # a critic initialised from the reward model
        tensors = {k: v for k, v in tensors.items() if not k.startswith("reward_")}
    elif stored != want:
        raise ValueError(f"{folder} holds a {stored} model, not a {want} model")
    backbone = GPT(gpt_config)
    model = backbone if want == "gpt" else KINDS[want](backbone)
    own = model.state_dict()
    strict = stored == want or want == "gpt"
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if unexpected or (strict and missing):
        raise ValueError(f"{folder}: weights do not fit a {want} model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{folder}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(tensors, strict=False)
    tokenizer = None
    tok_path = Path(folder) / "tokenizer.json"
    if tok_path.is_file():
        tokenizer = load_tokenizer(tok_path)
        check_vocab_fits(tokenizer, gpt_config.vocab_size)
    template = get_template(config["template"]) if config.get("template") else None
    return model.to(device), tokenizer, template, config.get("meta", {})
