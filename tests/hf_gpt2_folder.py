"""A GPT-2-shaped Hugging Face folder built here, without minirlhf: random weights under GPT-2's
tensor names and layout (Conv1D, fused c_attn), a byte-level BPE trained with `tokenizers` and saved
both as tokenizer.json and as vocab.json + merges.txt (<|endoftext|> last, as in GPT-2), and an
independent forward pass on those tensors to check logits against."""
import json
import math

import torch
import torch.nn.functional as F

TEXTS = [
    "The sun is a star. It gives us light and keeps the Earth warm.",
    "Rain falls from clouds when tiny drops of water join and grow heavy.",
    "A volcano is a mountain that can throw out hot melted rock called lava.",
    "Plants use sunlight, water and air to make their own food.",
    "What is the capital of France? The capital of France is Paris.",
    "Bees fly from flower to flower and carry pollen with them.",
] * 4


def train_tokenizer(vocab_size=300):
    """Byte-level BPE as GPT-2 has it: no prefix space, <|endoftext|> appended after the merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(TEXTS, trainer=trainer)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tok


def write_tokenizer(tok, path, layout):
    if layout == "json":
        tok.save(str(path / "tokenizer.json"))
        return
    tok.model.save(str(path))  # vocab.json + merges.txt, without the added token
    vocab = json.loads((path / "vocab.json").read_text())
    vocab["<|endoftext|>"] = tok.token_to_id("<|endoftext|>")  # GPT-2's vocab.json lists it
    (path / "vocab.json").write_text(json.dumps(vocab))


def hf_config(vocab_size, n_layer=2, n_head=2, n_embd=32, n_positions=128):
    return {"vocab_size": vocab_size, "n_positions": n_positions, "n_ctx": n_positions, "n_embd": n_embd,
            "n_layer": n_layer, "n_head": n_head, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "bos_token_id": vocab_size - 1,
            "eos_token_id": vocab_size - 1}


def hf_state_dict(cfg, seed=0, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    C, V, P = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    r = lambda *s: torch.randn(*s, generator=g) * scale  # noqa: E731
    sd = {"transformer.wte.weight": r(V, C), "transformer.wpe.weight": r(P, C),
          "transformer.ln_f.weight": 1 + r(C), "transformer.ln_f.bias": r(C)}
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        sd.update({
            p + "ln_1.weight": 1 + r(C), p + "ln_1.bias": r(C),
            p + "attn.c_attn.weight": r(C, 3 * C), p + "attn.c_attn.bias": r(3 * C),
            p + "attn.c_proj.weight": r(C, C), p + "attn.c_proj.bias": r(C),
            p + "ln_2.weight": 1 + r(C), p + "ln_2.bias": r(C),
            p + "mlp.c_fc.weight": r(C, 4 * C), p + "mlp.c_fc.bias": r(4 * C),
            p + "mlp.c_proj.weight": r(4 * C, C), p + "mlp.c_proj.bias": r(C),
        })
    return sd


def write_folder(path, weights="safetensors", tokenizer="json", seed=0, **shape):
    """Write a GPT-2 folder to ``path``; returns (state dict, config dict, tokenizers.Tokenizer)."""
    path.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    cfg = hf_config(tok.get_vocab_size(with_added_tokens=True), **shape)
    sd = hf_state_dict(cfg, seed)
    (path / "config.json").write_text(json.dumps(cfg))
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    else:  # as GPT2LMHeadModel.state_dict() pickles it: the tied head and the causal-mask buffers too
        full = dict(sd, **{"lm_head.weight": sd["transformer.wte.weight"]})
        for i in range(cfg["n_layer"]):
            full[f"transformer.h.{i}.attn.bias"] = torch.ones(1, 1, cfg["n_positions"], cfg["n_positions"]).tril()
        torch.save(full, path / "pytorch_model.bin")
    write_tokenizer(tok, path, tokenizer)
    return sd, cfg, tok


def reference_logits(sd, cfg, idx):
    """GPT-2 written directly on the Hugging Face tensors (Conv1D is x @ W + b), one row (1, T)."""
    C, H = cfg["n_embd"], cfg["n_head"]
    T = idx.size(1)
    g = lambda k: sd["transformer." + k]  # noqa: E731
    x = g("wte.weight")[idx] + g("wpe.weight")[torch.arange(T)]
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        h = F.layer_norm(x, (C,), g(p + "ln_1.weight"), g(p + "ln_1.bias"), 1e-5)
        q, k, v = (h @ g(p + "attn.c_attn.weight") + g(p + "attn.c_attn.bias")).split(C, dim=-1)
        q, k, v = (t.view(1, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(C // H)
        att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(1, T, C) @ g(p + "attn.c_proj.weight") + g(p + "attn.c_proj.bias")
        h = F.layer_norm(x, (C,), g(p + "ln_2.weight"), g(p + "ln_2.bias"), 1e-5)
        u = h @ g(p + "mlp.c_fc.weight") + g(p + "mlp.c_fc.bias")
        u = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))  # gelu_new
        x = x + u @ g(p + "mlp.c_proj.weight") + g(p + "mlp.c_proj.bias")
    x = F.layer_norm(x, (C,), g("ln_f.weight"), g("ln_f.bias"), 1e-5)
    return x @ g("wte.weight").t()
