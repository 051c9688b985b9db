"""Positional information for the Transformer: five ways to tell attention where a token is.

Shape legend: B batch, T query length, K key length, C model width, H heads, D head size (C = H * D),
P number of positions in a table.

Absolute encodings are added to the (scaled) token embeddings before the first layer:

* ``sinusoidal`` (Vaswani et al. 2017, the default): PE[p, 2i] = sin(p / 10000^(2i/C)),
  PE[p, 2i+1] = cos(p / 10000^(2i/C)). A fixed table, kept as a buffer (no gradient, not trained).
* ``learned``: a trained table of ``max_len`` position vectors (BERT/GPT-2).

Relative encodings act inside self-attention and add nothing at the input:

* ``relative`` (Shaw et al. 2018): the distance j - i from query i to key j, clipped to [-k, k], picks
  two learned vectors a^K_ij and a^V_ij of size D per layer (shared by the heads, as in the paper)::

      e_ij = q_i (k_j + a^K_ij)^T / sqrt(D)          z_i = sum_j softmax_j(e_ij) (v_j + a^V_ij)

  :func:`relative_positions` gives the clipped distances; the attention module gathers the tables
  with ``F.embedding`` (so their gradient is the embedding's scatter-add) and multiplies.
* ``rope`` (Su et al., RoFormer): queries and keys of every head are rotated by a position-dependent
  angle, so q_i . k_j depends on i - j only. See :class:`Rotary` (a primitive with its own backward).
* ``alibi`` (Press et al. 2022): a head-specific linear penalty -m_h |i - j| added to the scores.
  See :func:`alibi_slopes` and :func:`alibi_bias`.
"""

from __future__ import annotations

import math

import numpy as np

import npgrad as ng
from npgrad import functional as F
from npgrad import nn

ABSOLUTE_KINDS = ("sinusoidal", "learned")
RELATIVE_KINDS = ("relative", "rope", "alibi")
POSITIONAL_KINDS = ABSOLUTE_KINDS + RELATIVE_KINDS


def check_positional_kind(kind):
    if kind not in POSITIONAL_KINDS:
        raise ValueError(f"unknown positional encoding {kind!r}: choose one of {', '.join(POSITIONAL_KINDS)}")
    return kind


# --------------------------------------------------------------------------------- absolute


def sinusoidal_table(n_positions, dim, dtype=np.float64):
    """The paper's table (P, C): PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i), w_i = 10000^(-2i/C).

    Computed in float64 and cast once, so float32 and float64 models see the same values up to rounding.
    An odd ``dim`` drops the last cosine column.
    """
    positions = np.arange(n_positions, dtype=np.float64)[:, None]  # (P, 1)
    frequencies = np.exp(-math.log(10000.0) * np.arange(0, dim, 2) / dim)  # (ceil(C/2),)
    angles = positions * frequencies  # (P, ceil(C/2))
    table = np.empty((n_positions, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : dim // 2])
    return table.astype(dtype)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions. ``forward(length, offset)`` -> constant Tensor (T, C).

    The table of ``max_len`` rows is a non-persistent buffer (not trained, not in the state dict: it is a
    formula, not a weight). Longer inputs (e.g. a long decode) get rows computed on the fly.
    """

    def __init__(self, d_model, max_len=256, dtype=np.float32):
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", sinusoidal_table(max_len, d_model, dtype), persistent=False)

    def forward(self, length, offset=0):
        end = offset + length
        table = self.table
        if end > table.shape[0]:
            table = sinusoidal_table(end, self.d_model, table.dtype)
        return ng.tensor(table[offset:end])  # (T, C)


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position (0 .. max_len-1), N(0, std^2) at init (std default C^-1/2).

    ``forward(length, offset)`` -> Tensor (T, C), rows offset .. offset+T-1 of the table.
    """

    def __init__(self, d_model, max_len=256, rng=None, dtype=np.float32, init_std=None):
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, d_model, rng=rng, dtype=dtype, init_std=init_std)

    def forward(self, length, offset=0):
        end = offset + length
        if end > self.max_len:
            raise ValueError(
                f"learned positional embedding: position {end - 1} is beyond the table of max_len={self.max_len} "
                f"positions; use a shorter input or a config with a larger max_len (or block_size)"
            )
        return F.embedding(np.arange(offset, end), self.embedding.weight)  # (T, C)


# --------------------------------------------------------------------------------- relative (Shaw et al.)


def relative_positions(query_len, key_len, max_distance, query_offset=0):
    """Clipped distances as table rows (T, K) int64: clip(j - i, -k, k) + k, with i = query_offset + row.

    Row r of the result belongs to query position i = query_offset + r (a cached decode step has T = 1 and
    query_offset = the number of tokens already decoded); column j is key position j.
    """
    query_positions = np.arange(query_offset, query_offset + query_len)[:, None]  # (T, 1)
    key_positions = np.arange(key_len)[None, :]  # (1, K)
    distance = np.clip(key_positions - query_positions, -max_distance, max_distance)
    return distance + max_distance  # (T, K) in [0, 2k]


class RelativePositionEmbedding(nn.Module):
    """Shaw et al.'s learned tables for one attention layer: a^K and a^V, each (2k+1, D).

    ``forward(query_len, key_len, query_offset)`` -> (a_K (T, K, D), a_V (T, K, D)) gathered with
    F.embedding, so the gradient of each table row is the sum over the (i, j) pairs at that distance.
    """

    def __init__(self, head_dim, max_distance=16, rng=None, dtype=np.float32):
        super().__init__()
        if max_distance < 1:
            raise ValueError(f"relative positions: max_relative_distance must be >= 1, got {max_distance}")
        self.max_distance = max_distance
        rng = np.random.default_rng() if rng is None else rng
        rows = 2 * max_distance + 1
        std = head_dim**-0.5
        self.key_table = nn.Parameter(rng.normal(0.0, std, size=(rows, head_dim)).astype(dtype))
        self.value_table = nn.Parameter(rng.normal(0.0, std, size=(rows, head_dim)).astype(dtype))

    def forward(self, query_len, key_len, query_offset=0):
        index = relative_positions(query_len, key_len, self.max_distance, query_offset)  # (T, K)
        return F.embedding(index, self.key_table), F.embedding(index, self.value_table)


# --------------------------------------------------------------------------------- rotary (RoPE)


def rotary_tables(positions, head_dim, base=10000.0, dtype=np.float64):
    """cos and sin of the angles p * theta_i, theta_i = base^(-2i/D), i < D/2: each (T, D/2)."""
    theta = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * theta  # (T, D/2)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


class Rotary(ng.Function):
    r"""Rotary position embedding of x (..., T, D), pairing dimension i with i + D/2 (GPT-NeoX layout).

    With x = [x1, x2] split into halves and c = cos(p theta), s = sin(p theta) of shape (T, D/2)::

        out = [x1 c - x2 s,  x2 c + x1 s]

    Each pair (x1_i, x2_i) is rotated by the angle p theta_i: out = R x with R orthogonal, so the
    vector-Jacobian product is the inverse rotation, R^T g::

        dL/dx1 = g1 c + g2 s        dL/dx2 = g2 c - g1 s

    The pairing (i, i + D/2) rather than RoFormer's (2i, 2i+1) is a fixed permutation of the head
    dimensions, applied to queries and keys alike, so q . k and the model class are unchanged.
    """

    @staticmethod
    def forward(ctx, x, cos, sin):
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out = np.empty_like(x)
        np.multiply(x1, cos, out=out[..., :half])
        out[..., :half] -= x2 * sin
        np.multiply(x2, cos, out=out[..., half:])
        out[..., half:] += x1 * sin
        ctx.cos, ctx.sin = cos, sin
        return out

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.cos, ctx.sin
        half = g.shape[-1] // 2
        g1, g2 = g[..., :half], g[..., half:]
        dx = np.empty_like(g)
        np.multiply(g1, cos, out=dx[..., :half])
        dx[..., :half] += g2 * sin
        np.multiply(g2, cos, out=dx[..., half:])
        dx[..., half:] -= g1 * sin
        return dx, None, None


class RotaryEmbedding(nn.Module):
    """Applies RoPE to queries or keys (B, H, T, D) at positions offset .. offset+T-1 (no parameters).

    cos/sin tables for ``max_len`` positions are non-persistent buffers; longer inputs get rows computed
    on the fly, so decoding past ``max_len`` works.
    """

    def __init__(self, head_dim, max_len=256, base=10000.0, dtype=np.float32):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got d_model/n_heads = {head_dim}")
        self.head_dim = head_dim
        self.base = base
        cos, sin = rotary_tables(np.arange(max_len), head_dim, base, dtype)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x, offset=0):
        end = offset + x.shape[-2]
        if end <= self.cos.shape[0]:
            cos, sin = self.cos[offset:end], self.sin[offset:end]  # (T, D/2)
        else:
            cos, sin = rotary_tables(np.arange(offset, end), self.head_dim, self.base, x.dtype)
        if cos.dtype != x.dtype:
            cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
        return Rotary.apply(x, cos, sin)


# --------------------------------------------------------------------------------- ALiBi


def alibi_slopes(n_heads):
    """The paper's head slopes m_h: for H a power of two, 2^(-8/H), 2^(-16/H), ..., 2^(-8).

    Otherwise (as the authors' code does): the slopes of the largest power of two n < H, then every other
    slope of the 2n-head sequence until H slopes are found.
    """

    def power_of_two_slopes(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    if n_heads & (n_heads - 1) == 0:
        return np.array(power_of_two_slopes(n_heads))
    closest = 2 ** int(math.floor(math.log2(n_heads)))
    extra = power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return np.array(power_of_two_slopes(closest) + extra)


def alibi_bias(slopes, query_len, key_len, query_offset=0, dtype=np.float64):
    """Score bias (H, T, K): -m_h |i - j|, with i = query_offset + row.

    In causal self-attention (decoder, language model) only keys j <= i are visible, where this is the
    paper's -m_h (i - j). In the encoder every key is visible and the bias is the symmetric variant
    -m_h |i - j| (the paper defines only the causal case; penalising distance in both directions is the
    usual bidirectional extension). Cross-attention gets no bias: source and target positions are not aligned.
    """
    query_positions = np.arange(query_offset, query_offset + query_len)[:, None]
    key_positions = np.arange(key_len)[None, :]
    distance = np.abs(query_positions - key_positions).astype(np.float64)  # (T, K)
    return (-np.asarray(slopes, dtype=np.float64)[:, None, None] * distance).astype(dtype)
