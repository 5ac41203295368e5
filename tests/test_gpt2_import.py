"""GPT-2 folder import: every tensor lands where it should, and the logits equal an independent
functional GPT-2 forward written here on the Hugging Face layout (Conv1D, fused c_attn)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from minirlhf.model import GPT

CFG = {"vocab_size": 50, "n_positions": 16, "n_embd": 24, "n_layer": 2, "n_head": 3,
       "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "model_type": "gpt2"}


def gpt2_state_dict(seed=0):
    """Random tensors with GPT-2's real names and shapes (as GPT2LMHeadModel saves them)."""
    g = torch.Generator().manual_seed(seed)
    C, V, P = CFG["n_embd"], CFG["vocab_size"], CFG["n_positions"]
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    sd = {"transformer.wte.weight": r(V, C), "transformer.wpe.weight": r(P, C),
          "transformer.ln_f.weight": 1 + r(C), "transformer.ln_f.bias": r(C)}
    for i in range(CFG["n_layer"]):
        p = f"transformer.h.{i}."
        sd.update({
            p + "ln_1.weight": 1 + r(C), p + "ln_1.bias": r(C),
            p + "attn.c_attn.weight": r(C, 3 * C), p + "attn.c_attn.bias": r(3 * C),
            p + "attn.c_proj.weight": r(C, C), p + "attn.c_proj.bias": r(C),
            p + "ln_2.weight": 1 + r(C), p + "ln_2.bias": r(C),
            p + "mlp.c_fc.weight": r(C, 4 * C), p + "mlp.c_fc.bias": r(4 * C),
            p + "mlp.c_proj.weight": r(4 * C, C), p + "mlp.c_proj.bias": r(C),
            p + "attn.bias": torch.ones(1, 1, P, P).tril(),  # old files carry the causal mask buffer
        })
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def write_folder(path, sd, fmt):
    (path / "config.json").write_text(json.dumps(CFG))
    if fmt == "safetensors":
        from safetensors.torch import save_file
        sd = {k: v.clone().contiguous() for k, v in sd.items() if k != "lm_head.weight"}
        save_file(sd, str(path / "model.safetensors"))
    else:
        torch.save(sd, path / "pytorch_model.bin")


def hf_layout_forward(sd, idx):
    """GPT-2 written directly on the Hugging Face tensors: Conv1D is x @ W + b."""
    C, H = CFG["n_embd"], CFG["n_head"]
    T = idx.size(1)
    g = lambda k: sd["transformer." + k]  # noqa: E731
    x = g("wte.weight")[idx] + g("wpe.weight")[torch.arange(T)]
    for i in range(CFG["n_layer"]):
        p = f"h.{i}."
        h = F.layer_norm(x, (C,), g(p + "ln_1.weight"), g(p + "ln_1.bias"), 1e-5)
        qkv = h @ g(p + "attn.c_attn.weight") + g(p + "attn.c_attn.bias")
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (t.view(1, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(C // H)
        att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(-1)
        a = (att @ v).transpose(1, 2).reshape(1, T, C)
        x = x + a @ g(p + "attn.c_proj.weight") + g(p + "attn.c_proj.bias")
        h = F.layer_norm(x, (C,), g(p + "ln_2.weight"), g(p + "ln_2.bias"), 1e-5)
        u = h @ g(p + "mlp.c_fc.weight") + g(p + "mlp.c_fc.bias")
        u = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))  # gelu_new
        x = x + u @ g(p + "mlp.c_proj.weight") + g(p + "mlp.c_proj.bias")
    x = F.layer_norm(x, (C,), g("ln_f.weight"), g("ln_f.bias"), 1e-5)
    return x @ g("wte.weight").t()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_every_tensor_lands_where_it_should(tmp_path, fmt):
    sd = gpt2_state_dict()
    write_folder(tmp_path, sd, fmt)
    m = GPT.from_pretrained_gpt2(str(tmp_path))
    C = CFG["n_embd"]
    assert m.config.gelu == "tanh" and m.config.block_size == 16 and m.config.n_head == 3
    ours = dict(m.named_parameters())
    assert torch.equal(ours["wte.weight"], sd["transformer.wte.weight"])
    assert torch.equal(ours["wpe.weight"], sd["transformer.wpe.weight"])
    assert m.lm_head.weight is m.wte.weight
    for i in range(CFG["n_layer"]):
        p, hp = f"h.{i}.", f"transformer.h.{i}."
        W, b = sd[hp + "attn.c_attn.weight"], sd[hp + "attn.c_attn.bias"]
        for j, name in enumerate(["q_proj", "k_proj", "v_proj"]):
            # Linear computes x @ weight.T: the Conv1D columns j*C..(j+1)*C, transposed.
            assert torch.equal(ours[p + f"attn.{name}.weight"], W[:, j * C:(j + 1) * C].T)
            assert torch.equal(ours[p + f"attn.{name}.bias"], b[j * C:(j + 1) * C])
        for name in ["attn.c_proj", "mlp.c_fc", "mlp.c_proj"]:
            assert torch.equal(ours[p + name + ".weight"], sd[hp + name + ".weight"].T)
            assert torch.equal(ours[p + name + ".bias"], sd[hp + name + ".bias"])
        for name in ["ln_1", "ln_2"]:
            assert torch.equal(ours[p + name + ".weight"], sd[hp + name + ".weight"])
            assert torch.equal(ours[p + name + ".bias"], sd[hp + name + ".bias"])
    idx = torch.randint(0, 50, (1, 16))
    with torch.no_grad():
        assert torch.allclose(m(idx), hf_layout_forward(sd, idx), atol=1e-5)


def test_missing_or_misshaped_tensor_is_named(tmp_path):
    sd = gpt2_state_dict()
    del sd["transformer.h.1.mlp.c_fc.bias"]
    write_folder(tmp_path, sd, "bin")
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.bias"):
        GPT.from_pretrained_gpt2(str(tmp_path))
    sd = gpt2_state_dict()
    sd["transformer.h.0.attn.c_attn.weight"] = torch.zeros(24, 24)
    write_folder(tmp_path, sd, "bin")
    with pytest.raises(ValueError, match=r"h\.0\.attn\.c_attn\.weight.*\(24, 24\).*\(24, 72\)"):
        GPT.from_pretrained_gpt2(str(tmp_path))


def test_folder_without_weights_or_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained_gpt2(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        GPT.from_pretrained_gpt2(str(tmp_path))


def test_untied_or_unsupported_configs_are_refused(tmp_path):
    write_folder(tmp_path, gpt2_state_dict(), "bin")
    for key, value in [("tie_word_embeddings", False), ("activation_function", "relu"),
                       ("scale_attn_by_inverse_layer_idx", True)]:
        (tmp_path / "config.json").write_text(json.dumps({**CFG, key: value}))
        with pytest.raises(ValueError, match=key if key != "activation_function" else "relu"):
            GPT.from_pretrained_gpt2(str(tmp_path))
