"""GPT: causality, the two attention paths, left padding, the KV cache, sampling filters, EOS."""
import math

import pytest
import torch

from minirlhf.model import GPT, GPTConfig, reference_attention, top_k_filter, top_p_filter


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=37, block_size=48, n_layer=2, n_head=4, n_embd=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_causality_later_tokens_do_not_change_earlier_logits():
    m = tiny()
    x = torch.randint(0, 37, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 37, (2, 8))
    a, b = m(x), m(y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)


def test_reference_attention_is_the_formula():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 5, 4, dtype=torch.float64).unbind(0)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    out = reference_attention(q, k, v, allowed)
    # Written out element by element: o_i = sum_j softmax_j(q_i.k_j / 2) v_j over j <= i.
    for b in range(2):
        for h in range(2):
            for i in range(5):
                s = torch.tensor([q[b, h, i] @ k[b, h, j] / math.sqrt(4) for j in range(i + 1)])
                w = torch.exp(s) / torch.exp(s).sum()
                o = sum(w[j] * v[b, h, j] for j in range(i + 1))
                assert torch.allclose(out[b, h, i], o, atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_reference_path_equals_sdpa_path(masked):
    m = tiny()
    x = torch.randint(0, 37, (3, 16))
    mask = None
    if masked:
        mask = torch.ones(3, 16, dtype=torch.long)
        mask[1, :5] = 0
        mask[2, :11] = 0
    fast = m(x, mask)
    slow = m.set_attention("reference")(x, mask)
    m.set_attention("sdpa")
    assert torch.allclose(fast, slow, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_under_cpu_bf16_autocast_is_fp32_attention_of_the_bf16_inputs(masked):
    """On the CPU, sdpa_attention upcasts bf16 q, k, v and attends in fp32 (PyTorch's bf16 CPU
    attention backward is several times slower): the result is fp32 attention of the rounded inputs,
    rounded once to bf16, and gradients flow back to the bf16 inputs."""
    from minirlhf.model import sdpa_attention

    torch.manual_seed(0)
    q, k, v = (t.to(torch.bfloat16).requires_grad_() for t in torch.randn(3, 2, 4, 9, 8).unbind(0))
    allowed = None
    if masked:
        allowed = torch.ones(2, 1, 9, 9, dtype=torch.bool).tril()
        allowed[1, :, :, :3] = False
        allowed[1, :, :3, 0] = True  # every query keeps one key
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sdpa_attention(q, k, v, allowed)
    ref = reference_attention(q.double(), k.double(), v.double(),
                              allowed if masked else torch.ones(9, 9, dtype=torch.bool).tril())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=2 ** -8, atol=2 ** -8)
    fp32 = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=allowed, is_causal=not masked).to(torch.bfloat16)
    assert torch.equal(out, fp32)  # bit for bit: attention ran in fp32, not in bf16
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


def test_left_padding_gives_the_unpadded_logits():
    m = tiny()
    rows = [torch.randint(3, 37, (n,)) for n in (16, 9, 3)]
    x = torch.zeros(3, 16, dtype=torch.long)  # pad id 0
    mask = torch.zeros(3, 16, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, 16 - len(r):] = r
        mask[i, 16 - len(r):] = 1
    padded = m(x, mask)
    for i, r in enumerate(rows):
        alone = m(r[None])[0]
        assert torch.allclose(padded[i, 16 - len(r):], alone, atol=1e-5)
    # An all-ones mask is the same as no mask.
    assert torch.allclose(m(x, torch.ones_like(x)), m(x), atol=1e-6)


def test_cached_and_uncached_greedy_decoding_are_identical():
    m = tiny(seed=3)
    x = torch.randint(3, 37, (4, 7))
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    mask[2, :6] = 0
    a = m.generate(x, 30, temperature=0, attention_mask=mask)
    b = m.generate(x, 30, temperature=0, attention_mask=mask, use_cache=False)
    assert torch.equal(a, b)
    # A left-padded row decodes exactly as it does alone.
    alone = m.generate(x[2:3, 6:], 30, temperature=0)
    assert torch.equal(a[2, 7:], alone[0, 1:])


def test_cached_and_uncached_sampling_agree_with_the_same_generator():
    m = tiny(seed=4)
    x = torch.randint(3, 37, (3, 5))
    a = m.generate(x, 20, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = m.generate(x, 20, temperature=1.0, generator=torch.Generator().manual_seed(7), use_cache=False)
    assert torch.equal(a, b)


def test_greedy_is_deterministic_and_sampling_repeats_with_a_seeded_generator():
    m = tiny()
    x = torch.randint(3, 37, (2, 5))
    assert torch.equal(m.generate(x, 15, temperature=0), m.generate(x, 15, temperature=0))
    s1 = m.generate(x, 15, generator=torch.Generator().manual_seed(1))
    s2 = m.generate(x, 15, generator=torch.Generator().manual_seed(1))
    s3 = m.generate(x, 15, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s1, s2)
    assert not torch.equal(s1, s3)


def test_eos_stops_a_row_and_pads_the_rest():
    m = tiny(seed=5)
    x = torch.randint(3, 37, (6, 4))
    eos, pad = 2, 0
    out = m.generate(x, 25, temperature=1.5, eos_token_id=eos, pad_token_id=pad,
                     generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 29)
    new = out[:, 4:]
    saw_eos = 0
    for row in new.tolist():
        if eos in row:
            saw_eos += 1
            k = row.index(eos)
            assert all(t == pad for t in row[k + 1:])
    assert saw_eos > 0  # at temperature 1.5 over 37 tokens some rows hit EOS in 25 steps
    # A model whose every next token is EOS stops after one step and fills the rest with pad.
    m2 = tiny(seed=5)
    m2.lm_head = torch.nn.Linear(32, 37, bias=True)  # untie: a head that always says EOS
    with torch.no_grad():
        m2.lm_head.weight.zero_()
        m2.lm_head.bias.zero_()
        m2.lm_head.bias[eos] = 100.0
    out2 = m2.generate(x, 10, temperature=1.0, eos_token_id=eos, pad_token_id=pad)
    assert (out2[:, 4] == eos).all() and (out2[:, 5:] == pad).all()
    assert out2.shape == (6, 14)


def test_top_k_filter_keeps_exactly_the_k_largest():
    torch.manual_seed(0)
    logits = torch.randn(5, 20)
    kept = top_k_filter(logits, 4).isfinite()
    for i in range(5):
        assert set(kept[i].nonzero().flatten().tolist()) == set(logits[i].topk(4).indices.tolist())


def test_top_p_filter_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = probs.log()
    for p, expect in [(0.5, {0}), (0.6, {0, 1}), (0.7, {0, 1}), (0.71, {0, 1, 2}), (1.0, {0, 1, 2, 3, 4}),
                      (0.01, {0})]:
        kept = set(top_p_filter(logits, p).isfinite()[0].nonzero().flatten().tolist())
        assert kept == expect, (p, kept)


def test_sampling_never_leaves_the_allowed_set():
    m = tiny(seed=6)
    x = torch.randint(3, 37, (64, 3))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        last = m(x)[:, -1]
    for top_k, top_p in [(3, None), (None, 0.3), (5, 0.5)]:
        allowed = torch.ones_like(last, dtype=torch.bool)
        if top_k is not None:
            allowed &= top_k_filter(last, top_k).isfinite()
        if top_p is not None:
            allowed &= top_p_filter(last, top_p).isfinite()
        out = m.generate(x, 1, temperature=1.0, top_k=top_k, top_p=top_p, generator=g)
        chosen = out[:, 3]
        assert allowed[torch.arange(64), chosen].all()


def test_weight_tying_and_gpt2_init():
    m = tiny(n_layer=3, n_embd=64)
    assert m.lm_head.weight is m.wte.weight
    std = m.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(6)) < 0.003
    assert abs(m.h[0].attn.q_proj.weight.std().item() - 0.02) < 0.003


def test_bad_input_gets_a_clear_error():
    m = tiny()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="block_size"):
        m.generate(torch.zeros(1, 40, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(10, 10, 1, 3, 32)
    with pytest.raises(ValueError, match="attention_mask shape"):
        m(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4))


@pytest.mark.parametrize("variant", ["lora", "reference_attention"])
def test_decode_fast_path_equals_the_uncached_forward(variant):
    """The decode loop's functional step (fused q|k|v where it can) against full forwards, also
    when the projections are LoRA-wrapped or the reference attention is selected."""
    from minirlhf.lora import apply_lora

    m = tiny(seed=8)
    if variant == "lora":
        apply_lora(m, r=2, alpha=4)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.endswith("lora_B"):
                    p.normal_()
    else:
        m.set_attention("reference")
    x = torch.randint(3, 37, (3, 6))
    mask = torch.ones_like(x)
    mask[1, :2] = 0
    for attention_mask in (None, mask):
        a = m.generate(x, 20, temperature=0, attention_mask=attention_mask)
        b = m.generate(x, 20, temperature=0, attention_mask=attention_mask, use_cache=False)
        assert torch.equal(a, b)


def test_inverse_cdf_sampling_matches_the_distribution_and_never_draws_zero_probability():
    from minirlhf.model import sample_categorical

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).expand(40000, 6).contiguous()
    draws = sample_categorical(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=6).float() / 40000
    assert counts[[0, 2, 5]].sum() == 0
    # binomial standard error at n = 40000 is at most 0.0025; allow 4 of them
    assert torch.allclose(counts, probs[0], atol=0.01)


@pytest.mark.parametrize("variant", ["plain", "no_bias", "lora", "reference_attention"])
def test_single_row_decode_with_transposed_weights_equals_the_uncached_forward(variant):
    """A batch of one row takes the decode loop's transposed-weight path: greedy and seeded
    sampling equal the uncached forward, with and without biases, LoRA and either attention."""
    from minirlhf.lora import apply_lora

    m = tiny(seed=9, bias=variant != "no_bias")
    if variant == "lora":
        apply_lora(m, r=2, alpha=4, targets=["q_proj", "v_proj", "c_fc"])
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.endswith("lora_B"):
                    p.normal_()
    elif variant == "reference_attention":
        m.set_attention("reference")
    x = torch.randint(3, 37, (1, 5))
    assert torch.equal(m.generate(x, 25, temperature=0), m.generate(x, 25, temperature=0, use_cache=False))
    a = m.generate(x, 25, generator=torch.Generator().manual_seed(3))
    b = m.generate(x, 25, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_decode_projection_is_the_linear_layer(transpose, bias):
    from minirlhf.model import DecodeProj

    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40, bias=bias)
    x = torch.randn(3, 24)
    proj = DecodeProj.of(lin, transpose)
    assert (proj.weight_t is not None) == transpose
    assert torch.allclose(proj(x), lin(x), atol=1e-6)
    assert torch.allclose(proj(x[:1]), lin(x[:1]), atol=1e-6)
    wrapped = torch.nn.Sequential(lin)
    assert DecodeProj.of(wrapped, transpose) is wrapped  # anything but a plain Linear runs as it is


def test_eos_padding_of_a_single_row():
    m = tiny(seed=5)
    x = torch.randint(3, 37, (1, 4))
    out = m.generate(x, 30, temperature=1.5, eos_token_id=2, pad_token_id=0,
                     generator=torch.Generator().manual_seed(1))
    ref = m.generate(x, 30, temperature=1.5, eos_token_id=2, pad_token_id=0,
                     generator=torch.Generator().manual_seed(1), use_cache=False)
    assert torch.equal(out, ref) and out.shape == (1, 34)
