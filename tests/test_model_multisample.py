"""generate(num_samples=G): G continuations per prompt from ONE prefill of the prompt, checked token for
token against generating from the prompt batch repeated G times (the obvious, slower computation)."""
import pytest
import torch

from minirlhf.model import GPT, GPTConfig

V, EOS, PAD = 13, 11, 12


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=16)).to(dtype)
    with torch.no_grad():  # larger weights than the GPT-2 init: peaked, varied next-token distributions
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(20.0)
    return m.eval()


def left_padded_prompts():
    """Three prompts of lengths 7, 4 and 2, left-padded to 7 columns."""
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 10, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :5] = 0
    idx = idx.masked_fill(mask == 0, PAD)
    return idx, mask


def repeated(idx, mask, G):
    return idx.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)


@pytest.mark.parametrize("G", [1, 2, 5])
def test_greedy_equals_the_repeated_prompt_batch(G):
    m = tiny()
    idx, mask = left_padded_prompts()
    shared = m.generate(idx, 12, temperature=0, eos_token_id=EOS, pad_token_id=PAD, attention_mask=mask,
                        num_samples=G)
    ri, rm = repeated(idx, mask, G)
    plain = m.generate(ri, 12, temperature=0, eos_token_id=EOS, pad_token_id=PAD, attention_mask=rm)
    assert shared.shape == (3 * G, 7 + 12)
    assert torch.equal(shared, plain)
    # greedy decoding is deterministic, so the G rows of a group are identical
    for b in range(3):
        assert all(torch.equal(shared[b * G], shared[b * G + g]) for g in range(G))


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.9)])
def test_sampling_equals_the_repeated_prompt_batch_with_the_same_generator(temperature, top_k, top_p):
    """Both paths draw every token of all B*G rows with one multinomial call per step, from the same
    probabilities, so the same generator state gives the same tokens."""
    m = tiny(1)
    idx, mask = left_padded_prompts()
    G = 4
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=EOS, pad_token_id=PAD)
    shared = m.generate(idx, 15, attention_mask=mask, num_samples=G, generator=torch.Generator().manual_seed(11), **kw)
    ri, rm = repeated(idx, mask, G)
    plain = m.generate(ri, 15, attention_mask=rm, generator=torch.Generator().manual_seed(11), **kw)
    uncached = m.generate(ri, 15, attention_mask=rm, generator=torch.Generator().manual_seed(11), use_cache=False, **kw)
    assert torch.equal(shared, plain)
    assert torch.equal(shared, uncached)
    # sampling really varies within a group (the test would be vacuous on identical rows)
    responses = shared[:, 7:]
    assert any(not torch.equal(responses[b * G], responses[b * G + g]) for b in range(3) for g in range(1, G))


def test_rows_of_a_group_stop_independently_at_eos():
    m = tiny(2)
    idx, mask = left_padded_prompts()
    out = m.generate(idx, 20, temperature=1.0, eos_token_id=EOS, pad_token_id=PAD, attention_mask=mask,
                     num_samples=6, generator=torch.Generator().manual_seed(5))
    resp = out[:, 7:]
    lengths = set()
    for row in resp.tolist():
        if EOS in row:
            k = row.index(EOS)
            assert all(t == PAD for t in row[k + 1 :])
            lengths.add(k)
    assert len(lengths) > 1  # different rows stopped at different steps


def test_the_prompt_is_prefilled_once():
    """The first cached forward sees the B distinct prompts (B rows, T columns), exactly once; every
    later forward is one new token for each of the B*G rows. The repeated-prompt batch prefills B*G rows."""
    m = tiny()
    idx, mask = left_padded_prompts()
    calls = []
    prefill, decode = m._step, m._decode_step

    def spy_prefill(ids, pos, allowed, cache):
        calls.append(tuple(ids.shape))
        return prefill(ids, pos, allowed, cache)

    def spy_decode(ids, pos, key_ok, cache, weights):
        calls.append(tuple(ids.shape))
        return decode(ids, pos, key_ok, cache, weights)

    m._step, m._decode_step = spy_prefill, spy_decode
    G, new = 4, 6
    m.generate(idx, new, temperature=0, attention_mask=mask, num_samples=G)  # no EOS: all steps run
    assert calls == [(3, 7)] + [(3 * G, 1)] * (new - 1)
    calls.clear()
    ri, rm = repeated(idx, mask, G)
    m.generate(ri, new, temperature=0, attention_mask=rm)
    assert calls[0] == (3 * G, 7)


def test_float32_model_also_matches():
    m = tiny(4, dtype=torch.float32)
    idx, mask = left_padded_prompts()
    a = m.generate(idx, 10, attention_mask=mask, num_samples=3, generator=torch.Generator().manual_seed(2))
    ri, rm = repeated(idx, mask, 3)
    b = m.generate(ri, 10, attention_mask=rm, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_num_samples_is_refused(bad):
    m = tiny()
    with pytest.raises(ValueError, match="num_samples"):
        m.generate(torch.zeros(1, 3, dtype=torch.long), 2, num_samples=bad)
