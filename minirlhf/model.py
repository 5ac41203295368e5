"""A GPT-style decoder-only transformer, written out in full.

The architecture is GPT-2's (Radford et al., 2019, "Language Models are Unsupervised Multitask
Learners"), the layout is nanoGPT's (Karpathy, 2022):

    h_0     = W_te[x_t] + W_pe[p_t]                         token + learned position embeddings
    h'_l    = h_{l-1} + Attn(LN_1(h_{l-1}))                  pre-LayerNorm residual blocks
    h_l     = h'_l    + MLP(LN_2(h'_l))
    logits  = LN_f(h_L) W_te^T                               LM head tied to the token embedding

    Attn(x) = softmax(Q K^T / sqrt(d) + M) V  per head,  Q = x W_q, K = x W_k, V = x W_v

The query, key and value projections are separate ``nn.Linear`` layers (``q_proj``, ``k_proj``,
``v_proj``) so that LoRA can target them by name.

Positions come from the attention mask (p_t = number of real tokens before t), so a left-padded
row computes exactly what the same row computes unpadded; padded keys are masked out of every
softmax. ``generate`` decodes with a key/value cache.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    """Shape of a GPT. ``bias`` adds biases to Linear and LayerNorm layers, as GPT-2 has.

    ``gelu`` is the MLP's activation: "exact" (erf, the default; several times faster on CPU) or
    "tanh" (GPT-2's approximation, set by ``GPT.from_pretrained_gpt2``).
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    gelu: str = "exact"

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.gelu not in ("exact", "tanh"):
            raise ValueError(f"GPTConfig.gelu must be 'exact' or 'tanh', got {self.gelu!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Attention: a readable reference path and a fast path, tested equal.
# ---------------------------------------------------------------------------------------------


def reference_attention(q, k, v, allowed, dropout_p=0.0, training=False):
    """softmax(Q K^T / sqrt(d) + M) V, spelled out (Vaswani et al., 2017, eq. 1).

    q: (B,H,Tq,D), k and v: (B,H,Tk,D); allowed: bool, broadcastable to (B,1,Tq,Tk), True where
    a query may attend to a key, or None for plain causal attention. M is 0 where allowed and
    -inf elsewhere.
    """
    d, Tq, Tk = q.size(-1), q.size(-2), k.size(-2)
    if allowed is None:  # query i sits at absolute position Tk - Tq + i
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B,H,Tq,Tk)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if training and dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v  # (B,H,Tq,D)


def sdpa_attention(q, k, v, allowed, dropout_p=0.0, training=False):
    """The same as ``reference_attention`` on ``F.scaled_dot_product_attention``.

    ``allowed=None`` means plain causal attention over equal-length q and k, which lets PyTorch
    pick its fused causal kernel.
    """
    p = dropout_p if training else 0.0
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        # Under bf16 autocast on a CPU, the matmuls gain from bf16 but PyTorch's CPU attention kernel
        # does not: its bf16 backward is several times slower than its fp32 one. So attention runs in
        # fp32 there (autocast off, inputs upcast), and its output goes back to bf16.
        with torch.autocast("cpu", enabled=False):
            return sdpa_attention(q.float(), k.float(), v.float(), allowed, dropout_p, training).to(q.dtype)
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)


ATTENTION_IMPLS = {"reference": reference_attention, "sdpa": sdpa_attention}


def causal_mask(attention_mask: torch.Tensor | None, T: int, device) -> torch.Tensor | None:
    """Which keys each query may see, as a bool (B,1,T,T) mask, or None for plain causal.

    Key j is visible to query i when j <= i and key j is a real token. A padded query (left
    padding) sees only itself so its softmax is never empty; its output is never used.
    """
    if attention_mask is None:
        return None
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T,T)
    key_ok = attention_mask.bool()[:, None, None, :]  # (B,1,1,T)
    eye = torch.eye(T, dtype=torch.bool, device=device)
    return (causal & key_ok) | eye  # (B,1,T,T)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """p_t = (number of real tokens at or before t) - 1, clamped at 0 on padding. (B,T) long."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class KVCache:
    """Preallocated keys and values for every layer, filled left to right.

    ``kv[l]`` is one (2, B, H, max_len, D) tensor per layer: keys at index 0, values at 1, so the
    decode loop writes both of a new token with one copy.
    Nothing is allocated after construction: each step writes into the positions it fills.
    """

    def __init__(self, n_layer, B, H, max_len, D, device, dtype):
        self.kv = [torch.empty(2, B, H, max_len, D, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0  # positions filled so far

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B,H,t,D) after what is there; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        kv = self.kv[layer]
        kv[0, :, :, start:end] = k
        kv[1, :, :, start:end] = v
        return kv[0, :, :, :end], kv[1, :, :, :end]

    def repeat_interleave(self, repeats: int) -> "KVCache":
        """A cache of B * repeats rows in which rows b*repeats .. b*repeats + repeats - 1 are
        copies of row b (what is filled so far, and room for the rest): G samples decoded
        from one prefill of their prompt."""
        new = KVCache.__new__(KVCache)
        new.kv = [kv.repeat_interleave(repeats, dim=1) for kv in self.kv]  # (2,B*G,H,max_len,D)
        new.length = self.length
        return new


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.q_proj = nn.Linear(C, C, bias=config.bias)
        self.k_proj = nn.Linear(C, C, bias=config.bias)
        self.v_proj = nn.Linear(C, C, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.impl = "sdpa"

    def forward(self, x, allowed, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        H = self.n_head
        q = self.q_proj(x).view(B, T, H, C // H).transpose(1, 2)  # (B,H,T,D)
        k = self.k_proj(x).view(B, T, H, C // H).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, C // H).transpose(1, 2)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B,H,L,D), L = cached + T
        y = ATTENTION_IMPLS[self.impl](q, k, v, allowed, self.dropout, self.training)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, allowed, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), allowed, cache, layer)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------------------------
# Sampling filters
# ---------------------------------------------------------------------------------------------


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf. logits (B,V)."""
    if k <= 0:
        raise ValueError(f"top_k must be a positive int, got {k}")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B,1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al., 2020): keep the smallest set of most likely tokens whose
    probability sums to at least p; the most likely token is always kept. logits (B,V)."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(-1) - probs  # probability of strictly more likely tokens
    drop_sorted = mass_before >= p  # (B,V); the first token always has mass_before = 0 < p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class DecodeProj:
    """y = x W^T + b for the decode loop, on tensors prepared once per ``generate`` call.

    ``weight`` is an ``nn.Linear``'s (out, in) matrix. With ``transpose`` the product runs as
    ``addmm(b, x, W^T)`` on a contiguous (in, out) copy (the faster layout for a single row on
    CPU); otherwise as ``F.linear``. ``DecodeProj.of(module)`` returns the module itself when it is
    not a plain ``nn.Linear`` (a LoRA wrapper), which is then called as it is."""

    __slots__ = ("weight", "weight_t", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, transpose: bool):
        self.weight, self.bias = weight, bias
        self.weight_t = weight.t().contiguous() if transpose else None

    @classmethod
    def of(cls, module: nn.Module, transpose: bool):
        if type(module) is nn.Linear:
            return cls(module.weight, module.bias, transpose)
        return module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_t is None:
            return F.linear(x, self.weight, self.bias)
        if self.bias is None:
            return torch.mm(x, self.weight_t)
        return torch.addmm(self.bias, x, self.weight_t)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None,
                       rows: torch.Tensor | None = None, n_rows: int | None = None) -> torch.Tensor:
    """One draw from each row of probs (B,V) by inverting the CDF: the first token whose cumulative
    probability exceeds u ~ U[0, total mass). A token of probability 0 is never drawn. (B,) long.
    (Cheaper per step than torch.multinomial, which matters in a decode loop of tiny matmuls.)

    ``rows`` (B,) and ``n_rows``: these B rows are rows ``rows`` of a batch of ``n_rows`` (one
    process's share of a global batch); the uniforms are drawn for all ``n_rows`` and each row takes
    its own, so a row gets the draw it would get if the whole batch were sampled in one place."""
    cdf = probs.cumsum(-1)  # (B,V)
    if rows is None:
        u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    else:
        u = torch.rand(n_rows, 1, generator=generator, device=probs.device, dtype=cdf.dtype)[rows.to(probs.device)]
    u = u * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf, 2017)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) (two per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- bookkeeping ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count (the tied LM head counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def set_attention(self, impl: str) -> "GPT":
        """Switch every block between the "reference" and the "sdpa" attention path."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {sorted(ATTENTION_IMPLS)}, got {impl!r}")
        for block in self.h:
            block.attn.impl = impl
        return self

    def _check_input(self, idx: torch.Tensor, attention_mask: torch.Tensor | None,
                     positions: torch.Tensor | None = None, allowed: torch.Tensor | None = None):
        if idx.dim() != 2:
            raise ValueError(f"idx must be a (B,T) tensor of token ids, got shape {tuple(idx.shape)}")
        if idx.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
            raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        B, T = idx.shape
        if positions is None and T > self.config.block_size:
            raise ValueError(
                f"sequence length {T} exceeds the model's block_size {self.config.block_size}"
            )
        if positions is not None:
            if positions.shape != idx.shape:
                raise ValueError(f"positions shape {tuple(positions.shape)} != idx shape {tuple(idx.shape)}")
            if positions.numel() and not 0 <= int(positions.min()) <= int(positions.max()) < self.config.block_size:
                raise ValueError(f"positions must lie in [0, {self.config.block_size}) (the model's block_size), "
                                 f"got [{int(positions.min())}, {int(positions.max())}]")
        if allowed is not None and (allowed.dtype != torch.bool or allowed.shape != (B, 1, T, T)):
            raise ValueError(f"allowed must be a bool (B,1,T,T) = {(B, 1, T, T)} mask, "
                             f"got {allowed.dtype} {tuple(allowed.shape)}")
        if idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})"
                )
        if attention_mask is not None and attention_mask.shape != idx.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != idx shape {tuple(idx.shape)}"
            )

    # -- forward -------------------------------------------------------------------------------

    def _embed(self, idx, pos):
        return self.drop(self.wte(idx) + self.wpe(pos))

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      positions: torch.Tensor | None = None, allowed: torch.Tensor | None = None):
        """Final hidden states LN_f(h_L), (B,T,C): what the LM head and the scalar heads read.

        By default the positions and the causal mask follow from ``attention_mask``. A layout that is
        not one sequence a row (``data.share_prompts``: a prompt with two responses after it) passes
        its own ``positions`` (B,T) and ``allowed`` (B,1,T,T) bool mask (True where query i may see key
        j), which replace them; a row may then be longer than block_size, its positions may not."""
        self._check_input(idx, attention_mask, positions, allowed)
        B, T = idx.shape
        if positions is not None:
            pos = positions
        elif attention_mask is None:
            pos = torch.arange(T, device=idx.device).expand(B, T)
        else:
            pos = positions_from_mask(attention_mask)
        if allowed is None:
            allowed = causal_mask(attention_mask, T, idx.device)
        x = self._embed(idx, pos)
        for block in self.h:
            x = block(x, allowed)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, allowed: torch.Tensor | None = None):
        """Next-token logits (B,T,V). ``attention_mask`` (B,T) has 1 on real tokens; ``positions`` and
        ``allowed`` as in ``hidden_states``."""
        return self.lm_head(self.hidden_states(idx, attention_mask, positions, allowed))

    # -- decoding ------------------------------------------------------------------------------

    def _step(self, idx, pos, allowed, cache):
        """One cached forward: idx (B,t) at positions pos (B,t); returns last-position logits (B,V)."""
        x = self._embed(idx, pos)
        for i, block in enumerate(self.h):
            x = block(x, allowed, cache, i)
        cache.length += idx.size(1)
        return self.lm_head(self.ln_f(x[:, -1, :]))

    def _decode_weights(self, rows: int) -> list:
        """The decode loop's projections, built once per ``generate`` call: per layer a
        ``DecodeProj`` for the stacked q|k|v (one matmul instead of three), the attention output,
        and the MLP's two layers, then one for the LM head. A projection wrapped by LoRA (or any
        module other than a plain ``nn.Linear``) is called as it is, and a layer whose q, k or v
        is wrapped keeps three separate projections (the entry is then a tuple of three).

        With one row per step (``rows`` = 1) the weights are also stored transposed, (in, out)
        contiguous: a vector-matrix product reads them about 1.6x faster in that layout on CPU,
        which is most of a batch-1 step of SMALL. At more rows both layouts run at the same speed
        and no copy is made."""
        transpose = rows == 1
        layers = []
        for block in self.h:
            a, mlp = block.attn, block.mlp
            projs = (a.q_proj, a.k_proj, a.v_proj)
            if all(type(p) is nn.Linear for p in projs):
                bias = torch.cat([p.bias for p in projs]) if a.q_proj.bias is not None else None
                qkv = DecodeProj(torch.cat([p.weight for p in projs]), bias, transpose)
            else:
                qkv = tuple(DecodeProj.of(p, transpose) for p in projs)
            layers.append((qkv, DecodeProj.of(a.c_proj, transpose), DecodeProj.of(mlp.c_fc, transpose),
                           DecodeProj.of(mlp.c_proj, transpose)))
        layers.append(DecodeProj.of(self.lm_head, transpose))
        return layers

    def _decode_step(self, tok, pos, key_ok, cache: KVCache, weights: list):
        """``_step`` for one new token per row, written with functional calls on (N,C) rows: the
        same arithmetic as the modules (tested equal), with less per-token overhead. tok, pos
        (N,1); key_ok (N,1,1,L+1) bool or None (no padding anywhere); weights from
        ``_decode_weights``. Returns the next-token logits (N,V)."""
        N = tok.size(0)
        C, H = self.config.n_embd, self.config.n_head
        D, L = C // H, cache.length
        x = F.embedding(tok.view(N), self.wte.weight) + F.embedding(pos.view(N), self.wpe.weight)  # (N,C)
        for i, block in enumerate(self.h):
            qkv_proj, attn_proj, fc, mlp_proj = weights[i]
            ln_1, ln_2, kv = block.ln_1, block.ln_2, cache.kv[i]  # kv: (2,N,H,max_len,D)
            h = F.layer_norm(x, (C,), ln_1.weight, ln_1.bias, ln_1.eps)
            if type(qkv_proj) is DecodeProj:
                qkv = qkv_proj(h)  # (N,3C) = [q | k | v]
                q = qkv[:, :C]
                kv[:, :, :, L] = qkv[:, C:].view(N, 2, H, D).transpose(0, 1)  # k and v in one copy
            else:
                q = qkv_proj[0](h)
                kv[0, :, :, L] = qkv_proj[1](h).view(N, H, D)
                kv[1, :, :, L] = qkv_proj[2](h).view(N, H, D)
            q = q.view(N, H, 1, D)
            keys, values = kv[0, :, :, : L + 1], kv[1, :, :, : L + 1]  # (N,H,L+1,D)
            if block.attn.impl == "sdpa":
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=key_ok)
            else:
                y = reference_attention(q, keys, values, key_ok if key_ok is not None
                                        else torch.ones(1, 1, 1, L + 1, dtype=torch.bool, device=q.device))
            x = x + attn_proj(y.reshape(N, C))  # (N,H,1,D) -> (N,C): heads side by side, as in forward
            h = F.layer_norm(x, (C,), ln_2.weight, ln_2.bias, ln_2.eps)
            x = x + mlp_proj(F.gelu(fc(h), approximate=block.mlp.gelu.approximate))
        cache.length += 1
        x = F.layer_norm(x, (C,), self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)
        return weights[-1](x)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        num_samples: int = 1,
        noise_rows: torch.Tensor | None = None,
        noise_batch: int | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``idx`` (B,T); returns (B, T + max_new_tokens).

        Prompts of different lengths go in one batch left-padded, with ``attention_mask`` marking
        the real tokens. ``temperature=0`` is greedy. A row that emits ``eos_token_id`` stops;
        every later position in it holds ``pad_token_id`` (default: the EOS id). ``use_cache=False``
        recomputes the whole prefix each step (the slow path, kept to test the cache against).

        ``num_samples=G`` draws G continuations of every prompt and returns (B*G, T + max_new_tokens),
        rows b*G .. b*G + G - 1 for prompt b (GRPO's groups). Each prompt is prefilled ONCE and its
        key/value cache copied G times, so the prompt's forward pass is not repeated; the result
        equals ``generate`` on ``idx.repeat_interleave(G, 0)`` with the same generator state.

        ``noise_rows`` (B*G,) and ``noise_batch``: the output rows are rows ``noise_rows`` of a batch of
        ``noise_batch`` rows sampled elsewhere in pieces (the processes of a distributed run); each row
        takes the random draw of its row in that batch (``sample_categorical``), so a row's tokens do
        not depend on how the batch was split.
        """
        self._check_input(idx, attention_mask)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int (samples per prompt), got {num_samples!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        B, T = idx.shape
        total = T + max_new_tokens
        if total > self.config.block_size:
            raise ValueError(
                f"prompt length {T} + max_new_tokens {max_new_tokens} = {total} exceeds the "
                f"model's block_size {self.config.block_size}"
            )
        if pad_token_id is None:
            pad_token_id = eos_token_id if eos_token_id is not None else 0
        was_training = self.training
        self.eval()
        device = idx.device
        G = num_samples
        N = B * G  # rows of the output: G per prompt, consecutive
        mask = torch.ones(N, total, dtype=torch.long, device=device)
        if attention_mask is not None:
            mask[:, :T] = attention_mask.long().repeat_interleave(G, dim=0)
        out = torch.full((N, total), pad_token_id, dtype=idx.dtype, device=device)
        out[:, :T] = idx.repeat_interleave(G, dim=0)
        finished = torch.zeros(N, dtype=torch.bool, device=device)
        pos_all = positions_from_mask(mask)  # (N,total); generated tokens are all real

        if use_cache and max_new_tokens > 0:
            C, H = self.config.n_embd, self.config.n_head
            dtype = self.wte.weight.dtype
            cache = KVCache(self.config.n_layer, B, H, total, C // H, device, dtype)
            allowed = causal_mask(attention_mask, T, device)
            logits = self._step(idx, pos_all[::G, :T], allowed, cache)  # prefill the B prompts once
            if G > 1:  # every prompt's cache and next-token logits, copied to its G rows
                cache = cache.repeat_interleave(G)
                logits = logits.repeat_interleave(G, dim=0)  # (N,V)
            # padded keys to mask out; None when there is no padding (SDPA then needs no mask)
            key_ok = None if bool(mask.all()) else mask.bool()[:, None, None, :]  # (N,1,1,total)
            weights = self._decode_weights(N)
        # Whether every row has stopped is a host read; on an accelerator it waits for the device,
        # so there it is asked every 8 steps (finished rows only add pad, so the output is the same).
        check_every = 1 if device.type == "cpu" else 8

        for t in range(T, total):
            if not use_cache:
                logits = self(out[:, :t], mask[:, :t])[:, -1, :]
            elif t > T:
                logits = self._decode_step(out[:, t - 1 : t], pos_all[:, t - 1 : t],
                                           None if key_ok is None else key_ok[..., :t], cache, weights)
            nxt = self._sample(logits, temperature, top_k, top_p, generator, noise_rows, noise_batch)  # (N,)
            if eos_token_id is not None:
                nxt = nxt.masked_fill(finished, pad_token_id)
                finished = finished | (nxt == eos_token_id)
            out[:, t] = nxt
            if eos_token_id is not None and (t - T + 1) % check_every == 0 and bool(finished.all()):
                break
        if was_training:
            self.train()
        return out

    @staticmethod
    def _sample(logits, temperature, top_k, top_p, generator, rows=None, n_rows=None):
        """Pick the next token from last-position logits (B,V)."""
        if temperature == 0:
            return logits.argmax(dim=-1)
        if temperature != 1.0:  # x / 1.0 == x exactly: skip the op
            logits = logits / temperature
        if top_k is not None:
            logits = top_k_filter(logits, top_k)
        if top_p is not None:
            logits = top_p_filter(logits, top_p)
        return sample_categorical(torch.softmax(logits.float(), dim=-1), generator, rows, n_rows)

    # -- GPT-2 import --------------------------------------------------------------------------

    @classmethod
    def from_pretrained_gpt2(cls, path: str) -> "GPT":
        """Load a local Hugging Face GPT-2 folder (config.json plus model.safetensors or
        pytorch_model.bin) into this class; the logits equal those of the original model."""
        from minirlhf.gpt2 import load_gpt2_folder

        return load_gpt2_folder(cls, GPTConfig, path)
