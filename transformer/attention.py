"""Multi-head attention with a key/value cache, for every positional encoding of positional.py.

Shape legend: B batch, T query length, S (or K) key length, C model width, H heads, D head size (C = H D).

    head_h = softmax(q_h k_h^T / sqrt(D) + bias, masked) v_h        out = concat_h(head_h) W_o + b_o

Two computation paths give the same function:

* the fused path (no positional term inside attention: sinusoidal, learned, and rope once q and k are
  rotated) calls ``F.scaled_dot_product_attention``: scores, mask, softmax, dropout and the weighted sum
  in one primitive with a hand-written backward. Self-attention without a cache and without a positional
  kind (the training step) goes one step further: ``F.packed_self_attention`` takes the fused q/k/v
  projection (B, T, 3C) as it is and returns the merged heads (B, T, C), so the head split/merge and the
  q/k/v gradients' assembly are inside the primitive (RoPE rotates the q and k parts in the packed layout
  first, see ``_rotate_packed``);
* the explicit path (relative positions and ALiBi, which need the scores before the softmax) spells the
  same steps with npgrad ops: matmul, + bias, masked_fill, F.softmax, dropout, matmul.

Attention weights (``need_weights=True``, opt-in, for looking inside a model): the explicit path runs for every
positional kind and the post-softmax probabilities (B, H, T, K) are returned beside the output (before attention
dropout; exactly 0 for a masked key, a row of zeros when every key is masked). The fused primitives keep their
probabilities inside, so asking for the weights costs the unfused path; not asking runs the fused path unchanged.
The two paths compute the same function, equal up to float rounding.

Masks are boolean, True = may attend: a key-padding mask (B, 1, 1, K) and/or causal order.
A query row with every key masked (only possible when a whole sequence is padding) gives zeros, on both
paths (the fused primitive's policy).

Cache (incremental decoding; see model.DecoderState): a dict per attention module.
  self-attention:  {"k": (B, H, t, D), "v": (B, H, t, D)} grows by the new step's keys/values;
  cross-attention: {"k": (B, H, S, D), "v": (B, H, S, D)} computed once from the encoder output
                   by :meth:`MultiHeadAttention.precompute_memory`.
"""

from __future__ import annotations

import math

import numpy as np

import npgrad as ng
from npgrad import functional as F
from npgrad import nn

from .data import causal_mask
from .positional import RelativePositionEmbedding, Rotary, RotaryEmbedding, alibi_bias, alibi_slopes, rotary_tables

ATTENTION_POSITIONAL = (None, "relative", "rope", "alibi")


def xavier_uniform(rng, fan_in, fan_out, shape=None, dtype=np.float32):
    """Glorot & Bengio 2010: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), keeping activations' variance."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    shape = (fan_in, fan_out) if shape is None else shape
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def init_linear(linear, rng, blocks=1):
    """Xavier-initialise a Linear (weight (in, out)) as ``blocks`` projections side by side; zero bias.

    A fused q/k/v projection (C, 3C) is three (C, C) projections, so each block gets the bound of a
    (C, C) matrix, exactly as if the projections were separate.
    """
    fan_in, fan_out = linear.weight.shape
    block = fan_out // blocks
    linear.weight.data[...] = np.concatenate(
        [xavier_uniform(rng, fan_in, block, dtype=linear.weight.dtype) for _ in range(blocks)], axis=1
    )
    if getattr(linear, "bias", None) is not None:
        linear.bias.data[...] = 0


class MultiHeadAttention(nn.Module):
    """Multi-head attention (self- or cross-), with optional relative/rotary/ALiBi positions.

    Parameters: ``qkv`` Linear (C, 3C) for self-attention (one GEMM for queries, keys and values), or
    ``q_proj`` (C, C) and ``kv_proj`` (C, 2C) for cross-attention (keys/values come from the encoder);
    ``out_proj`` (C, C). Weights are applied as x @ W (npgrad's Linear layout).

    ``positional``: None (positions were added to the embeddings), "relative" (Shaw et al.: per-layer
    tables, ``max_relative_distance`` k), "rope" or "alibi". Only self-attention takes a positional kind.
    ALiBi uses one formula, -m_h |i - j|: with ``causal=True`` (decoder) only j <= i is visible, which is
    the paper's bias; without (encoder) it is the symmetric variant (see positional.alibi_bias).
    ``dropout`` applies to the attention weights, drawn from ``dropout_rng`` (the model shares one).
    """

    def __init__(
        self,
        d_model,
        n_heads,
        dropout=0.0,
        *,
        self_attention=True,
        positional=None,
        max_relative_distance=16,
        max_len=256,
        bias=True,
        rng=None,
        dropout_rng=None,
        dtype=np.float32,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MultiHeadAttention: d_model={d_model} is not divisible by n_heads={n_heads}")
        if positional not in ATTENTION_POSITIONAL:
            raise ValueError(
                f"MultiHeadAttention: positional must be one of {ATTENTION_POSITIONAL}, got {positional!r}"
            )
        if positional is not None and not self_attention:
            raise ValueError("MultiHeadAttention: positional terms apply to self-attention only")
        rng = np.random.default_rng() if rng is None else rng
        dtype = np.dtype(dtype)
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout_p = float(dropout)
        self.dropout_rng = dropout_rng if dropout_rng is not None else np.random.default_rng()
        self.self_attention = self_attention
        self.positional = positional
        self.scale = 1.0 / math.sqrt(self.head_dim)
        if self_attention:
            self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias, rng=rng, dtype=dtype)
            init_linear(self.qkv, rng, blocks=3)
        else:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias, rng=rng, dtype=dtype)
            self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=bias, rng=rng, dtype=dtype)
            init_linear(self.q_proj, rng)
            init_linear(self.kv_proj, rng, blocks=2)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, rng=rng, dtype=dtype)
        init_linear(self.out_proj, rng)
        if positional == "relative":
            self.relative = RelativePositionEmbedding(self.head_dim, max_relative_distance, rng=rng, dtype=dtype)
        elif positional == "rope":
            self.rotary = RotaryEmbedding(self.head_dim, max_len=max_len, dtype=dtype)
        elif positional == "alibi":
            self._slopes = alibi_slopes(n_heads)

    # ------------------------------------------------------------------ head layout
    def _split(self, projected, n_parts):
        """(B, L, n C) -> n_parts tensors (B, H, L, D): one reshape + one transpose (views), then indexing."""
        batch, length, _ = projected.shape
        heads = projected.reshape(batch, length, n_parts, self.n_heads, self.head_dim)
        heads = heads.transpose(2, 0, 3, 1, 4)  # (n, B, H, L, D)
        return [heads[i] for i in range(n_parts)]

    def _rotate_packed(self, qkv):
        """RoPE on the q and k parts of a packed (B, T, 3C) projection at positions 0 .. T-1, in its layout.

        Viewed as (B, T, 3H, D), every head is rotated by the same Rotary op with (T, 3H, D/2) tables:
        RoPE's cos/sin for the 2H query and key heads and the identity (cos 1, sin 0) for the H value
        heads, so no split and no re-assembly of the three parts is needed.
        """
        batch, length, _ = qkv.shape
        rotary, heads, half = self.rotary, self.n_heads, self.head_dim // 2
        if length <= rotary.cos.shape[0]:
            cos, sin = (t.data if isinstance(t, ng.Tensor) else t for t in (rotary.cos, rotary.sin))
            cos, sin = cos[:length], sin[:length]  # (T, D/2)
        else:
            cos, sin = rotary_tables(np.arange(length), self.head_dim, rotary.base, qkv.dtype)
        cos3 = np.ones((length, 3 * heads, half), dtype=qkv.dtype)  # (T, 3H, D/2)
        sin3 = np.zeros((length, 3 * heads, half), dtype=qkv.dtype)
        cos3[:, : 2 * heads] = cos[:, None, :]
        sin3[:, : 2 * heads] = sin[:, None, :]
        rotated = Rotary.apply(qkv.reshape(batch, length, 3 * heads, self.head_dim), cos3, sin3)
        return rotated.reshape(batch, length, 3 * self.d_model)

    def _merge(self, heads):
        """(B, H, T, D) -> (B, T, C)."""
        batch, _, length, _ = heads.shape
        return heads.transpose(0, 2, 1, 3).reshape(batch, length, self.d_model)

    # ------------------------------------------------------------------ forward
    def forward(self, x, memory=None, key_mask=None, causal=False, cache=None, need_weights=False):
        """x (B, T, C) -> (B, T, C); with ``need_weights`` -> (out (B, T, C), weights (B, H, T, K) Tensor).

        Self-attention: keys/values from x; with ``cache`` they are appended to the cached ones and the
        queries sit at positions t .. t+T-1, t = the cached length. Cross-attention: keys/values from
        ``memory`` (B, S, C), or from the cache filled by ``precompute_memory``.
        ``key_mask`` (B, 1, 1, K) bool True = real key (None: all real); ``causal``: key j visible to
        query i only if j <= i.
        """
        if self.self_attention and cache is None and self.positional in (None, "rope") and not need_weights:
            # Training and full-sequence scoring: one primitive from the fused projection to the merged
            # heads, whose backward writes the q/k/v gradients into one (B, T, 3C) buffer.
            qkv = self.qkv(x)  # (B, T, 3C)
            if self.positional == "rope":
                qkv = self._rotate_packed(qkv)
            heads = F.packed_self_attention(
                qkv,
                self.n_heads,
                mask=key_mask,
                is_causal=causal,
                scale=self.scale,
                dropout_p=self.dropout_p,
                rng=self.dropout_rng,
                training=self.training,
            )
            return self.out_proj(heads)  # (B, T, C)
        if self.self_attention:
            q, k, v = self._split(self.qkv(x), 3)
            offset = 0
            if cache is not None and "k" in cache:
                offset = cache["k"].shape[2]
            if self.positional == "rope":
                q = self.rotary(q, offset)
                k = self.rotary(k, offset)
            if cache is not None:
                if offset:
                    k = ng.concatenate([cache["k"], k], axis=2)
                    v = ng.concatenate([cache["v"], v], axis=2)
                cache["k"], cache["v"] = k, v
        else:
            q = self._split(self.q_proj(x), 1)[0]
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                if memory is None:
                    raise ValueError("cross-attention needs the encoder output (memory) or a filled cache")
                if cache is not None:
                    k, v = self._memory_keys_values(memory, cache)
                else:
                    k, v = self._split(self.kv_proj(memory), 2)
            offset = 0
        heads, weights = self._attend(q, k, v, key_mask, causal, offset, need_weights)  # (B, H, T, D)
        out = self.out_proj(self._merge(heads))
        return (out, weights) if need_weights else out

    def precompute_memory(self, memory, cache):
        """Cross-attention: compute the encoder keys/values once per sentence into ``cache``."""
        if self.self_attention:
            raise RuntimeError("precompute_memory is for cross-attention")
        self._memory_keys_values(memory, cache)
        return cache

    def _memory_keys_values(self, memory, cache):
        """Encoder keys and values (B, H, S, D) into ``cache``; returns them.

        The split heads are strided views of the (B, S, 2C) projection, which the attention primitive
        would copy into its (B*H, S, D) layout at every decoding step; without gradients (decoding) they
        are made contiguous once here instead. With gradients the views stay (they carry the graph).
        """
        k, v = self._split(self.kv_proj(memory), 2)
        if not ng.is_grad_enabled():
            k, v = ng.Tensor(np.ascontiguousarray(k.data)), ng.Tensor(np.ascontiguousarray(v.data))
        cache["k"], cache["v"] = k, v
        return k, v

    # ------------------------------------------------------------------ attention proper
    def _attend(self, q, k, v, key_mask, causal, offset, need_weights=False):
        """-> (heads (B, H, T, D), weights (B, H, T, K) or None when the fused primitive ran)."""
        query_len, key_len = q.shape[2], k.shape[2]
        dropout_p = self.dropout_p if self.training else 0.0
        if causal and (offset or query_len != key_len):
            # Queries do not start at key 0 (a cached prefix): the causal mask is offset-aligned. A single
            # decode step (T = 1, the last position) sees every key, so no mask at all.
            mask = causal_mask(query_len, key_len, offset)  # (T, K)
            if not mask.all():
                key_mask = mask if key_mask is None else (key_mask & mask)
            causal = False
        if self.positional in (None, "rope") and not need_weights:
            heads = F.scaled_dot_product_attention(
                q,
                k,
                v,
                mask=key_mask,
                dropout_p=dropout_p,
                is_causal=causal,
                scale=self.scale,
                rng=self.dropout_rng,
                training=self.training,
            )
            return heads, None
        return self._explicit_attention(q, k, v, key_mask, causal, offset, dropout_p)

    def _explicit_attention(self, q, k, v, key_mask, causal, offset, dropout_p):
        """Scores (with a positional term, if any), masked softmax and the weighted sum, in npgrad ops.

        -> (heads (B, H, T, D), weights (B, H, T, K): the probabilities before attention dropout).
        """
        batch, heads, query_len, head_dim = q.shape
        key_len = k.shape[2]
        scores = q @ k.swapaxes(-1, -2)  # (B, H, T, K)
        if self.positional == "relative":
            rel_k, rel_v = self.relative(query_len, key_len, offset)  # (T, K, D) each
            # q_i . a^K_ij for all (i, j): one batched GEMM per query position, batch rows = B*H:
            # (T, B*H, D) @ (T, D, K) -> (T, B*H, K).
            q_by_position = q.transpose(2, 0, 1, 3).reshape(query_len, batch * heads, head_dim)
            rel_scores = q_by_position @ rel_k.swapaxes(-1, -2)  # (T, B*H, K)
            rel_scores = rel_scores.reshape(query_len, batch, heads, key_len).transpose(1, 2, 0, 3)
            scores = scores + rel_scores
        scores = scores * self.scale
        if self.positional == "alibi":
            scores = scores + alibi_bias(self._slopes, query_len, key_len, offset, dtype=q.dtype)  # (H, T, K)
        allowed = key_mask
        if causal:
            mask = causal_mask(query_len, key_len, offset)
            allowed = mask if allowed is None else (allowed & mask)
        if allowed is not None:
            allowed = np.asarray(allowed.data if isinstance(allowed, ng.Tensor) else allowed, dtype=bool)
            # The most negative finite number rather than -inf: exp underflows to exactly 0 for a
            # masked key, and a row with no visible key stays finite (uniform) instead of NaN.
            scores = scores.masked_fill(~allowed, np.finfo(q.dtype).min)
        probs = F.softmax(scores, axis=-1)  # (B, H, T, K)
        if allowed is not None:
            visible = allowed.any(axis=-1, keepdims=True)  # (B?, 1?, T, 1)
            if not visible.all():
                # Rows with no visible key: the policy is zeros (and zero gradient), as the fused op.
                probs = probs * visible.astype(q.dtype)
        weights = probs
        if dropout_p > 0.0:
            weights = F.dropout(probs, dropout_p, training=True, rng=self.dropout_rng)
        out = weights @ v  # (B, H, T, D)
        if self.positional == "relative":
            # sum_j w_ij a^V_ij: (T, B*H, K) @ (T, K, D) -> (T, B*H, D)
            w_by_position = weights.transpose(2, 0, 1, 3).reshape(query_len, batch * heads, key_len)
            rel_out = (w_by_position @ rel_v).reshape(query_len, batch, heads, head_dim).transpose(1, 2, 0, 3)
            out = out + rel_out
        return out, probs
