"""Loading a Hugging Face GPT-2 folder into ``minirlhf.model.GPT``, with no ``transformers``.

Two differences between the layouts:

* GPT-2 stores its linear layers as ``Conv1D`` with weight shape (in, out); ``nn.Linear`` keeps
  (out, in). Every ``c_attn``, ``c_proj`` and ``c_fc`` weight is transposed.
* GPT-2 fuses the query, key and value projections into one ``c_attn`` of width 3C; here they are
  three layers (``q_proj``, ``k_proj``, ``v_proj``) so LoRA can target them by name. The fused
  weight splits along its output axis into [q | k | v].
"""
from __future__ import annotations

import json
import os

import torch


def gpt2_config_to_ours(hf: dict, config_cls):
    """Map a GPT-2 ``config.json`` dict onto ``config_cls`` (``minirlhf.model.GPTConfig``; passed in,
    so that this module, which model.py imports, does not import model.py back)."""
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"unsupported activation_function {act!r}: this GPT uses GELU (tanh), GPT-2's gelu_new")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise ValueError(f"unsupported layer_norm_epsilon {eps}: this GPT uses 1e-5 as GPT-2 does")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise ValueError(f"unsupported GPT-2 option {flag}=true")
    if hf.get("tie_word_embeddings", True) is False:
        raise ValueError("unsupported GPT-2 option tie_word_embeddings=false: this GPT ties its LM head to wte")
    if hf.get("scale_attn_weights", True) is False:
        raise ValueError("unsupported GPT-2 option scale_attn_weights=false")
    try:
        return config_cls(
            vocab_size=int(hf["vocab_size"]),
            block_size=int(hf.get("n_positions", hf.get("n_ctx"))),
            n_layer=int(hf["n_layer"]),
            n_head=int(hf["n_head"]),
            n_embd=int(hf["n_embd"]),
            dropout=0.0,
            bias=True,
            gelu="tanh",  # GPT-2's "gelu_new"
        )
    except KeyError as e:
        raise ValueError(f"GPT-2 config.json is missing the key {e.args[0]!r}") from None


def gpt2_expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 checkpoint must hold (names without the ``transformer.`` prefix)."""
    C, V, P = config.n_embd, config.vocab_size, config.block_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(config.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (C, 4 * C), p + "mlp.c_fc.bias": (4 * C,),
            p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,),
        })
    return shapes


def convert_gpt2_state_dict(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """GPT-2 tensor names and layouts -> this GPT's ``state_dict`` names and layouts.

    Raises ValueError naming the first missing or mis-shaped tensor.
    """
    # Strip the "transformer." prefix of GPT2LMHeadModel; drop the causal-mask buffers of old files.
    clean = {}
    for name, t in sd.items():
        key = name[len("transformer."):] if name.startswith("transformer.") else name
        if key.endswith(".attn.bias") and t.dim() == 4 or key.endswith(".attn.masked_bias"):
            continue
        clean[key] = t
    for name, shape in gpt2_expected_shapes(config).items():
        if name not in clean:
            raise ValueError(f"GPT-2 checkpoint is missing tensor {name!r} (expected shape {shape})")
        if tuple(clean[name].shape) != shape:
            raise ValueError(
                f"GPT-2 tensor {name!r} has shape {tuple(clean[name].shape)}, expected {shape}"
            )
    C = config.n_embd
    out = {
        "wte.weight": clean["wte.weight"],
        "wpe.weight": clean["wpe.weight"],
        "ln_f.weight": clean["ln_f.weight"],
        "ln_f.bias": clean["ln_f.bias"],
        "lm_head.weight": clean["wte.weight"],  # tied
    }
    for i in range(config.n_layer):
        p = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[p + ln + ".weight"] = clean[p + ln + ".weight"]
            out[p + ln + ".bias"] = clean[p + ln + ".bias"]
        w_qkv = clean[p + "attn.c_attn.weight"].t()  # Conv1D (C,3C) -> Linear (3C,C)
        b_qkv = clean[p + "attn.c_attn.bias"]
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            out[p + f"attn.{proj}.weight"] = w_qkv[j * C : (j + 1) * C]
            out[p + f"attn.{proj}.bias"] = b_qkv[j * C : (j + 1) * C]
        for layer in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[p + layer + ".weight"] = clean[p + layer + ".weight"].t()
            out[p + layer + ".bias"] = clean[p + layer + ".bias"]
    return {k: v.contiguous() for k, v in out.items()}


def read_gpt2_tensors(path: str) -> dict[str, torch.Tensor]:
    """The raw tensors of a GPT-2 folder: model.safetensors, else pytorch_model.bin (loaded with
    ``weights_only=True``, so the file cannot run code)."""
    st = os.path.join(path, "model.safetensors")
    pt = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(st):
        from safetensors.torch import load_file

        return load_file(st)
    if os.path.exists(pt):
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: expected model.safetensors or pytorch_model.bin")


def load_gpt2_folder(cls, config_cls, path: str):
    """A ``cls`` (GPT) built from ``config_cls`` (GPTConfig) with the weights of a GPT-2 folder."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face GPT-2 folder)")
    with open(cfg_path) as f:
        config = gpt2_config_to_ours(json.load(f), config_cls)
    state = convert_gpt2_state_dict(read_gpt2_tensors(path), config)
    model = cls(config)
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            param.copy_(state[name].to(param.dtype))
    return model


def export_gpt2_state_dict(model) -> dict[str, torch.Tensor]:
    """This GPT's weights under GPT-2's names and layouts (``transformer.`` prefix, Conv1D (in, out)
    weights, q|k|v fused into ``c_attn``): the inverse of ``convert_gpt2_state_dict``. The LM head
    is tied, so it is not written, as Hugging Face's safetensors files leave it out."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    c = model.config
    out = {f"transformer.{k}": sd[k] for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for i in range(c.n_layer):
        p, hp = f"h.{i}.", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[hp + ln + ".weight"], out[hp + ln + ".bias"] = sd[p + ln + ".weight"], sd[p + ln + ".bias"]
        qkv = [p + f"attn.{proj}" for proj in ("q_proj", "k_proj", "v_proj")]
        out[hp + "attn.c_attn.weight"] = torch.cat([sd[n + ".weight"] for n in qkv], 0).t()  # (C, 3C)
        out[hp + "attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv], 0)
        for layer in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[hp + layer + ".weight"] = sd[p + layer + ".weight"].t()
            out[hp + layer + ".bias"] = sd[p + layer + ".bias"]
    return {k: v.contiguous() for k, v in out.items()}


def gpt2_config_dict(config) -> dict:
    """A GPT-2 ``config.json`` for a ``GPTConfig`` (GPT-2's activation, gelu_new, whatever ours is)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
