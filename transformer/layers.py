"""Transformer layers: position-wise feed-forward, encoder layer, decoder layer.

Shape legend: B batch, S source length, T target length, C model width, F feed-forward width.

Residual connections and layer norm, two arrangements (``norm_first``):

* post-LN (the paper, norm_first=False):  x = LayerNorm(x + Dropout(Sublayer(x)))
  written as one fused ``F.add_layer_norm(dropout(sublayer(x)), x, ...)``;
* pre-LN (norm_first=True):  x = x + Dropout(Sublayer(LayerNorm(x))); the model adds a final LayerNorm.

Dropout as in the paper: on every sub-layer output before the residual add (the embeddings+positions
dropout is in model.py), plus, as in PyTorch's layers, on the feed-forward's hidden activation and
(``attention_dropout``) on the attention weights.
"""

from __future__ import annotations

import numpy as np

from npgrad import functional as F
from npgrad import nn

from .attention import MultiHeadAttention, init_linear

ACTIVATIONS = ("relu", "gelu")


def make_layer_norm(d_model, bias=True, dtype=np.float32):
    """nn.LayerNorm (weight 1, bias 0); with bias=False the bias is dropped (nanoGPT's option)."""
    norm = nn.LayerNorm(d_model, dtype=dtype)
    if not bias:
        norm.bias = None
    return norm


def layer_norm(x, norm):
    return F.layer_norm(x, norm.weight, norm.bias, eps=norm.eps)


def add_layer_norm(sublayer_out, residual, norm):
    """LayerNorm(residual + sublayer_out) in one fused op (post-LN)."""
    return F.add_layer_norm(sublayer_out, residual, norm.weight, norm.bias, eps=norm.eps)


class FeedForward(nn.Module):
    """FFN(x) = Dropout(act(x W1 + b1)) W2 + b2, applied to every position alone: (B, L, C) -> (B, L, C)."""

    def __init__(
        self, d_model, d_ff, dropout=0.0, activation="relu", bias=True, rng=None, dropout_rng=None, dtype=np.float32
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"FeedForward: activation must be one of {ACTIVATIONS}, got {activation!r}")
        rng = np.random.default_rng() if rng is None else rng
        self.activation = activation
        self.dropout_p = float(dropout)
        self.dropout_rng = dropout_rng if dropout_rng is not None else np.random.default_rng()
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias, rng=rng, dtype=dtype)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias, rng=rng, dtype=dtype)
        init_linear(self.linear1, rng)
        init_linear(self.linear2, rng)

    def forward(self, x):
        hidden = self.linear1(x)  # (B, L, F)
        hidden = F.relu(hidden) if self.activation == "relu" else F.gelu(hidden)
        if self.training and self.dropout_p > 0.0:
            hidden = F.dropout(hidden, self.dropout_p, training=True, rng=self.dropout_rng)
        return self.linear2(hidden)  # (B, L, C)


class _Layer(nn.Module):
    """Shared plumbing: the self-attention both layers start with, sublayer-output dropout and the two residual
    arrangements."""

    def _start(
        self, d_model, n_heads, dropout, attention_dropout, norm_first, positional, max_relative_distance, max_len,
        bias, rng, dropout_rng, dtype,
    ):  # fmt: skip
        """The settings and the self-attention sublayer, created first (the initialisation draws follow the
        construction order); -> the generator the remaining sublayers draw their weights from."""
        rng = np.random.default_rng() if rng is None else rng
        self.dropout_rng = dropout_rng if dropout_rng is not None else np.random.default_rng()
        self.norm_first = norm_first
        self.dropout_p = float(dropout)
        self.self_attn = MultiHeadAttention(
            d_model,
            n_heads,
            attention_dropout,
            self_attention=True,
            positional=positional,
            max_relative_distance=max_relative_distance,
            max_len=max_len,
            bias=bias,
            rng=rng,
            dropout_rng=self.dropout_rng,
            dtype=dtype,
        )
        return rng

    def _dropout(self, x):
        if self.training and self.dropout_p > 0.0:
            return F.dropout(x, self.dropout_p, training=True, rng=self.dropout_rng)
        return x

    def _residual(self, x, norm, sublayer):
        """post-LN: LN(x + drop(f(x)));  pre-LN: x + drop(f(LN(x)))."""
        if self.norm_first:
            return x + self._dropout(sublayer(layer_norm(x, norm)))
        return add_layer_norm(self._dropout(sublayer(x)), x, norm)

    @staticmethod
    def _attention(module, weights, name, *args, **kwargs):
        """module(*args, **kwargs); with ``weights`` a dict (weights requested), its weights go to weights[name]."""
        if weights is None:
            return module(*args, **kwargs)
        out, weights[name] = module(*args, need_weights=True, **kwargs)
        return out


class EncoderLayer(_Layer):
    """Self-attention (all positions see all real positions) then feed-forward: (B, S, C) -> (B, S, C)."""

    def __init__(
        self,
        d_model,
        n_heads,
        d_ff,
        dropout=0.1,
        attention_dropout=0.0,
        activation="relu",
        norm_first=False,
        positional=None,
        max_relative_distance=16,
        max_len=256,
        bias=True,
        rng=None,
        dropout_rng=None,
        dtype=np.float32,
    ):
        super().__init__()
        rng = self._start(
            d_model, n_heads, dropout, attention_dropout, norm_first, positional, max_relative_distance, max_len,
            bias, rng, dropout_rng, dtype,
        )  # fmt: skip
        self.feed_forward = FeedForward(d_model, d_ff, dropout, activation, bias, rng, self.dropout_rng, dtype)
        self.norm1 = make_layer_norm(d_model, bias, dtype)
        self.norm2 = make_layer_norm(d_model, bias, dtype)

    def forward(self, x, key_mask=None, need_weights=False):
        """x (B, S, C); key_mask (B, 1, 1, S) bool True = real token, or None.

        With ``need_weights`` -> (x, {"self": attention weights (B, H, S, S)}).
        """
        weights = {} if need_weights else None
        x = self._residual(
            x, self.norm1, lambda h: self._attention(self.self_attn, weights, "self", h, key_mask=key_mask)
        )
        x = self._residual(x, self.norm2, self.feed_forward)
        return (x, weights) if need_weights else x


class DecoderLayer(_Layer):
    """Masked self-attention, cross-attention to the encoder output, feed-forward: (B, T, C) -> (B, T, C).

    With ``cross_attention=False`` it is a decoder-only (GPT) block: masked self-attention + feed-forward.
    """

    def __init__(
        self,
        d_model,
        n_heads,
        d_ff,
        dropout=0.1,
        attention_dropout=0.0,
        activation="relu",
        norm_first=False,
        positional=None,
        max_relative_distance=16,
        max_len=256,
        bias=True,
        cross_attention=True,
        rng=None,
        dropout_rng=None,
        dtype=np.float32,
    ):
        super().__init__()
        self.has_cross_attention = cross_attention
        rng = self._start(
            d_model, n_heads, dropout, attention_dropout, norm_first, positional, max_relative_distance, max_len,
            bias, rng, dropout_rng, dtype,
        )  # fmt: skip
        self.norm1 = make_layer_norm(d_model, bias, dtype)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(
                d_model,
                n_heads,
                attention_dropout,
                self_attention=False,
                bias=bias,
                rng=rng,
                dropout_rng=self.dropout_rng,
                dtype=dtype,
            )
            self.norm2 = make_layer_norm(d_model, bias, dtype)
        self.feed_forward = FeedForward(d_model, d_ff, dropout, activation, bias, rng, self.dropout_rng, dtype)
        self.norm3 = make_layer_norm(d_model, bias, dtype)

    def forward(self, x, memory=None, self_key_mask=None, memory_key_mask=None, cache=None, need_weights=False):
        """x (B, T, C); memory (B, S, C) (not needed when the cache holds the encoder keys/values);
        self_key_mask (B, 1, 1, T_total) and memory_key_mask (B, 1, 1, S): True = real token.
        Self-attention is causal. ``cache``: {"self": {...}, "cross": {...}} for incremental decoding.
        With ``need_weights`` -> (x, {"self": (B, H, T, T_total), "cross": (B, H, T, S)} attention weights).
        """
        self_cache = cross_cache = None
        if cache is not None:
            self_cache = cache.setdefault("self", {})
            cross_cache = cache.setdefault("cross", {})
        weights = {} if need_weights else None
        x = self._residual(
            x,
            self.norm1,
            lambda h: self._attention(
                self.self_attn, weights, "self", h, key_mask=self_key_mask, causal=True, cache=self_cache
            ),
        )
        if self.has_cross_attention:
            x = self._residual(
                x,
                self.norm2,
                lambda h: self._attention(
                    self.cross_attn, weights, "cross", h, memory, key_mask=memory_key_mask, cache=cross_cache
                ),
            )
        x = self._residual(x, self.norm3, self.feed_forward)
        return (x, weights) if need_weights else x
