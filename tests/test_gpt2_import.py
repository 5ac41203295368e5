"""GPT-2 folder import: every tensor lands where it should, and the logits equal an independent
functional GPT-2 forward written here on the Hugging Face layout (Conv1D, fused c_attn)."""
import json

import pytest
import torch

from minirlhf.model import GPT

from hf_gpt2_folder import hf_state_dict, reference_logits

CFG = {"vocab_size": 50, "n_positions": 16, "n_embd": 24, "n_layer": 2, "n_head": 3,
       "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "model_type": "gpt2"}


def gpt2_state_dict(seed=0):
    """Random tensors with GPT-2's real names and shapes (as GPT2LMHeadModel saves them)."""
    sd = hf_state_dict(CFG, seed=seed, scale=0.3)
    for i in range(CFG["n_layer"]):  # old files carry the causal mask buffer
        sd[f"transformer.h.{i}.attn.bias"] = torch.ones(1, 1, CFG["n_positions"], CFG["n_positions"]).tril()
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
    return reference_logits(sd, CFG, idx)


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
