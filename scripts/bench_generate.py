"""Speed of ``GPT.generate`` against Hugging Face ``generate`` on the same weights, side by side.

    python scripts/bench_generate.py                       # TINY and SMALL, batch 1 and 16, 2 threads
    python scripts/bench_generate.py --configs SMALL --batches 1 --repeats 9
    python scripts/bench_generate.py --also-model old_model.py   # also time another model.py

Both sides do the same arithmetic: the weights of a minirlhf GPT are copied into an equivalent
``transformers.GPT2LMHeadModel`` (exact GELU, SDPA attention, tied LM head, fp32), checked to give
the same logits, and both sample ``--new`` tokens after a random ``--prompt``-token prompt with
plain sampling (temperature 1, no top-k, no top-p, no EOS) and their KV caches. Runs alternate
(minirlhf, Hugging Face, minirlhf, ...) so drift in the machine's speed hits both alike; every figure
is a median over ``--repeats`` pairs, and the ratio is the median of the per-pair ratios.

``transformers`` is not a dependency of minirlhf: without it the script times minirlhf alone and
says that the comparison was skipped. ``--also-model PATH`` loads the ``GPT`` class of another
``model.py`` (for instance the previous version, ``git show REV:minirlhf/model.py > old.py``) and
times it in the same loop, so a before/after ratio comes from one process.

"matmuls alone" times the decode loop's matrix products by themselves (same weights, same layouts,
no attention, norms or sampling). At batch 1 they read every weight once per token, which bounds
any fp32 decoder from above: "at most N x HF" is how far ahead of Hugging Face a decoder with no
other cost at all could be.

The machine's fp32 matmul GFLOP/s is measured first, in the same process, to say how fast the
machine was while the figures were taken.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import matmul_gflops  # noqa: E402

from minirlhf.model import GPT, GPTConfig  # noqa: E402

CONFIGS = {
    "TINY": GPTConfig(512, 128, 4, 4, 128),
    "SMALL": GPTConfig(4096, 256, 6, 6, 384),
}


def hf_copy(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` computing what ``model`` computes (None without transformers)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    c = model.config
    hf_cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, activation_function="gelu" if c.gelu == "exact" else "gelu_pytorch_tanh",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    try:
        hf = GPT2LMHeadModel(hf_cfg, attn_implementation="sdpa")  # transformers >= 5
    except TypeError:
        hf_cfg._attn_implementation = "sdpa"
        hf = GPT2LMHeadModel(hf_cfg)
    sd = model.state_dict()
    new = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    for i in range(c.n_layer):
        p, q = f"h.{i}.", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            new[q + ln + ".weight"], new[q + ln + ".bias"] = sd[p + ln + ".weight"], sd[p + ln + ".bias"]
        new[q + "attn.c_attn.weight"] = torch.cat([sd[p + f"attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]).t()
        new[q + "attn.c_attn.bias"] = torch.cat([sd[p + f"attn.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")])
        for layer in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):  # Linear (out, in) -> Conv1D (in, out)
            new[q + layer + ".weight"] = sd[p + layer + ".weight"].t()
            new[q + layer + ".bias"] = sd[p + layer + ".bias"]
    missing, unexpected = hf.load_state_dict({k: v.contiguous() for k, v in new.items()}, strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"weight copy into GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    hf.eval()
    x = torch.randint(0, c.vocab_size, (2, 12))
    with torch.no_grad():
        diff = (hf(x).logits - model(x)).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"the Hugging Face copy's logits differ by {diff:.2e}")
    return hf


def load_other_gpt(path: str):
    """Another model.py file as a module (its ``GPT`` and ``GPTConfig``), under its own name."""
    spec = importlib.util.spec_from_file_location("other_minirlhf_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bench(cfg: GPTConfig, batch: int, args, other=None) -> dict:
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    contenders = {"minirlhf": None}
    hf = hf_copy(model)
    if hf is not None:
        contenders["hf"] = None
    if other is not None:
        other = other.GPT(other.GPTConfig(**cfg.to_dict())).eval()
        other.load_state_dict(model.state_dict())
        contenders["other"] = None
    x = torch.randint(0, cfg.vocab_size, (batch, args.prompt))
    mask = torch.ones_like(x)

    def run(name):
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        if name == "minirlhf":
            out = model.generate(x, args.new, temperature=1.0, generator=g)
        elif name == "other":
            out = other.generate(x, args.new, temperature=1.0, generator=g)
        else:
            torch.manual_seed(0)
            out = hf.generate(input_ids=x, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                              do_sample=True, temperature=1.0, top_k=0, top_p=1.0, use_cache=True,
                              pad_token_id=0, eos_token_id=None)
        elapsed = time.perf_counter() - t0
        assert out.shape == (batch, args.prompt + args.new), out.shape
        return elapsed

    def floor():
        """The matrix products of the decode loop alone, on the same weights and layouts: no attention,
        no norms, no sampling. At batch 1 they read every weight once per token, so this is the memory
        traffic no fp32 decoder can avoid; its time bounds any decoder's speed from above."""
        weights = model._decode_weights(batch)
        h = torch.zeros(batch, cfg.n_embd)
        t0 = time.perf_counter()
        for _ in range(args.new):
            for qkv, proj, fc, mlp_proj in weights[:-1]:
                qkv(h)
                proj(h)
                mlp_proj(fc(h))
            weights[-1](h)
        return time.perf_counter() - t0

    times = {name: [] for name in contenders}
    for name in contenders:  # warm-up
        run(name)
    for _ in range(args.repeats):
        for name in contenders:
            times[name].append(run(name))
    tokens = batch * args.new
    with torch.no_grad():
        floor()  # warm-up
        floor_time = statistics.median(floor() for _ in range(args.repeats))
    result = {f"{name}_tok_s": tokens / statistics.median(ts) for name, ts in times.items()}
    result["floor_tok_s"] = tokens / floor_time
    for name in contenders:
        if name != "minirlhf":
            result[f"vs_{name}"] = statistics.median(o / m for m, o in zip(times["minirlhf"], times[name]))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--new", type=int, default=64, help="new tokens")
    ap.add_argument("--matmul-n", type=int, default=1024)
    ap.add_argument("--also-model", help="path of another model.py whose GPT is timed in the same loop")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    other_module = load_other_gpt(args.also_model) if args.also_model else None
    try:
        import transformers
        hf_note = f"transformers {transformers.__version__}"
    except ImportError:
        hf_note = "transformers not installed: the Hugging Face comparison is skipped"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; {hf_note}; prompt {args.prompt}, "
          f"{args.new} new tokens, plain sampling; medians of {args.repeats} interleaved runs")
    base = matmul_gflops(args.matmul_n, args.repeats)
    print(f"baseline: {args.matmul_n}x{args.matmul_n} fp32 matmul {base:.1f} GFLOP/s")
    for name in args.configs:
        for batch in args.batches:
            r = bench(CONFIGS[name], batch, args, other_module)
            line = f"{name:5s} batch {batch:2d}: minirlhf {r['minirlhf_tok_s']:8.0f} tok/s"
            if "hf_tok_s" in r:
                line += f" | Hugging Face {r['hf_tok_s']:8.0f} tok/s | minirlhf/HF {r['vs_hf']:5.2f}x"
            line += f" | matmuls alone {r['floor_tok_s']:8.0f} tok/s"
            if "hf_tok_s" in r:
                line += f" (at most {r['floor_tok_s'] / r['hf_tok_s']:4.2f}x HF)"
            if "other_tok_s" in r:
                line += f" | --also-model {r['other_tok_s']:8.0f} tok/s | minirlhf/also {r['vs_other']:5.2f}x"
            print(line)
    base_end = matmul_gflops(args.matmul_n, args.repeats)
    print(f"baseline again at the end: {base_end:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
