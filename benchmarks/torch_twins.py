"""PyTorch twins of npgrad's models and fused ops: the peer of the benchmarks and the reference of the differential tests.

Needs torch (the optional ``bench`` extra); npgrad and transformer never import this module. Tests import it after
``pytest.importorskip("torch")``.

* ``Seq2SeqTwin`` and ``LanguageModelTwin`` are transformer.model's ``Transformer`` and ``LanguageModel`` written
  with torch.nn modules and ``F.scaled_dot_product_attention``, the same operations in the same order: a fused
  q/k/v projection for self-attention (q and k/v projections for cross-attention), post- or pre-LN, dropout at the
  same sites (embeddings, every sub-layer output, the feed-forward hidden layer; none on attention weights), key
  padding masked only when some token is padding, the output projection tied to the target embedding. They take
  the npgrad config's fields (``Seq2SeqTwin(**config.to_dict())``) and name every parameter as npgrad does, so
  weights copy by name (``load_npgrad_weights``) and gradients compare by name (``npgrad_gradients``); torch's
  Linear weight is (out, in), npgrad's (in, out), which those two transpose. Without copied weights a twin keeps
  PyTorch's own initialisation (enough for timing).
* ``softmax`` ... ``multi_head_attention``: ``npgrad.functional``'s fused ops with npgrad's conventions (classes
  on the last axis, boolean masks True = may attend, Linear weights (in, out)), for the kernel benchmark and the
  op-level differential tests.

Only the absolute positional encodings (sinusoidal, learned) are twinned; the attention-internal kinds (relative,
RoPE, ALiBi) and attention-weight dropout are refused.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn

# ================================================================================================ fused ops


def softmax(x, axis=-1):
    return torch.softmax(x, axis)


def log_softmax(x, axis=-1):
    return torch.log_softmax(x, axis)


def cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """logits (..., V) with the classes last, as npgrad has them (torch wants them on axis 1)."""
    if logits.dim() > 2:
        logits = logits.movedim(-1, 1)
    return TF.cross_entropy(
        logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction
    )


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    return TF.layer_norm(x, x.shape[-1:], weight, bias, eps)


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    return layer_norm(x + residual, weight, bias, eps)


def scaled_dot_product_attention(q, k, v, mask=None, is_causal=False, scale=None):
    """``mask``: boolean, True = may attend (torch's sense of a boolean mask too), broadcastable to (..., Lq, Lk)."""
    if mask is not None and not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    return TF.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


def linear(x, w, b=None):
    """x @ w + b with w (in, out), npgrad's layout."""
    y = x @ w
    return y if b is None else y + b


def embedding(ids, weight):
    return TF.embedding(ids, weight)


def gelu(x, approximate="none"):
    return TF.gelu(x, approximate=approximate)


def _heads(x, n_heads):
    """(B, L, C) -> (B, H, L, D)."""
    B, L, C = x.shape
    return x.view(B, L, n_heads, C // n_heads).transpose(1, 2)


def _merge(heads):
    """(B, H, L, D) -> (B, L, C)."""
    B, H, L, D = heads.shape
    return heads.transpose(1, 2).reshape(B, L, H * D)


def multi_head_attention(
    query, key, value, num_heads, w_q, w_k, w_v, w_o, b_q=None, b_k=None, b_v=None, b_o=None, mask=None
):
    """npgrad's ``F.multi_head_attention``: weights (C, C) applied as x @ w, heads split from the last axis."""
    q, k, v = (
        _heads(linear(x, w, b), num_heads) for x, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v))
    )
    return linear(_merge(scaled_dot_product_attention(q, k, v, mask=mask)), w_o, b_o)


# ================================================================================================ models

_NOT_MODELLED = {"seed", "unk_id", "bos_id", "eos_id", "max_relative_distance"}  # config keys the twins ignore


def _check(who, positional, attention_dropout, ignored):
    unknown = set(ignored) - _NOT_MODELLED
    if unknown:
        raise TypeError(f"{who}: unknown config key(s) {sorted(unknown)}")
    if positional not in ("sinusoidal", "learned"):
        raise ValueError(f"{who}: only the absolute positional encodings are twinned, not {positional!r}")
    if attention_dropout:
        raise ValueError(f"{who}: attention-weight dropout is not twinned (attention_dropout={attention_dropout})")


def _key_mask(real):
    """(B, L) bool True = real token -> (B, 1, 1, L), or None when nothing is padding (as transformer.model)."""
    return None if bool(real.all()) else real[:, None, None, :]


def _sinusoidal_table(n_positions, dim):
    """transformer.positional's table, computed in float64: PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i)."""
    positions = torch.arange(n_positions, dtype=torch.float64)[:, None]
    angles = positions * torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.empty(n_positions, dim, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(angles), torch.cos(angles[:, : dim // 2])
    return table


class Positions(nn.Module):
    """Sinusoidal (a fixed table, non-persistent buffer) or learned (``embedding``, as npgrad names it)."""

    def __init__(self, kind, n_positions, dim):
        super().__init__()
        self.kind = kind
        if kind == "sinusoidal":
            self.register_buffer("table", _sinusoidal_table(n_positions, dim), persistent=False)
        else:
            self.embedding = nn.Embedding(n_positions, dim)

    def forward(self, length):
        if self.kind == "sinusoidal":
            return self.table[:length]
        return self.embedding(torch.arange(length))


class Attention(nn.Module):
    """npgrad's MultiHeadAttention: ``qkv`` (self-attention) or ``q_proj`` + ``kv_proj`` (cross), ``out_proj``."""

    def __init__(self, d_model, n_heads, self_attention, bias):
        super().__init__()
        self.n_heads, self.self_attention = n_heads, self_attention
        if self_attention:
            self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        else:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, memory=None, key_mask=None, causal=False):
        B, T, C = x.shape
        H = self.n_heads
        if self.self_attention:
            q, k, v = self.qkv(x).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
        else:
            S = memory.shape[1]
            q = _heads(self.q_proj(x), H)  # (B, H, T, D)
            k, v = self.kv_proj(memory).view(B, S, 2, H, C // H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, S, D)
        if causal and key_mask is not None:  # torch takes a mask or is_causal, not both
            key_mask = key_mask & torch.ones(T, T, dtype=torch.bool).tril()
            causal = False
        h = TF.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=causal)  # (B, H, T, D)
        return self.out_proj(_merge(h))


class FeedForward(nn.Module):
    """FFN(x) = Dropout(act(x W1 + b1)) W2 + b2."""

    def __init__(self, d_model, d_ff, dropout, activation, bias):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)
        self.act = TF.relu if activation == "relu" else TF.gelu
        self.p = dropout

    def forward(self, x):
        h = self.act(self.linear1(x))
        return self.linear2(TF.dropout(h, self.p, self.training) if self.p > 0 else h)


class _Layer(nn.Module):
    def _residual(self, x, norm, sublayer):
        """post-LN: LN(x + drop(f(x)));  pre-LN: x + drop(f(LN(x)))."""
        if self.norm_first:
            return x + self._dropout(sublayer(norm(x)))
        return norm(x + self._dropout(sublayer(x)))

    def _dropout(self, x):
        return TF.dropout(x, self.p, self.training) if self.p > 0 else x


class EncoderLayer(_Layer):
    def __init__(self, d_model, n_heads, d_ff, dropout, activation, norm_first, bias):
        super().__init__()
        self.p, self.norm_first = dropout, norm_first
        self.self_attn = Attention(d_model, n_heads, True, bias)
        self.feed_forward = FeedForward(d_model, d_ff, dropout, activation, bias)
        self.norm1, self.norm2 = nn.LayerNorm(d_model, bias=bias), nn.LayerNorm(d_model, bias=bias)

    def forward(self, x, key_mask=None):
        x = self._residual(x, self.norm1, lambda h: self.self_attn(h, key_mask=key_mask))
        return self._residual(x, self.norm2, self.feed_forward)


class DecoderLayer(_Layer):
    """Causal self-attention, [cross-attention,] feed-forward; norms named norm1, [norm2,] norm3 as npgrad's."""

    def __init__(self, d_model, n_heads, d_ff, dropout, activation, norm_first, bias, cross_attention):
        super().__init__()
        self.p, self.norm_first = dropout, norm_first
        self.self_attn = Attention(d_model, n_heads, True, bias)
        self.norm1 = nn.LayerNorm(d_model, bias=bias)
        if cross_attention:
            self.cross_attn = Attention(d_model, n_heads, False, bias)
            self.norm2 = nn.LayerNorm(d_model, bias=bias)
        self.feed_forward = FeedForward(d_model, d_ff, dropout, activation, bias)
        self.norm3 = nn.LayerNorm(d_model, bias=bias)

    def forward(self, x, memory=None, self_key_mask=None, memory_key_mask=None):
        x = self._residual(x, self.norm1, lambda h: self.self_attn(h, key_mask=self_key_mask, causal=True))
        if memory is not None:
            x = self._residual(x, self.norm2, lambda h: self.cross_attn(h, memory, key_mask=memory_key_mask))
        return self._residual(x, self.norm3, self.feed_forward)


class _Twin(nn.Module):
    def _finish(self, dtype):
        """Cast to the config's dtype; the sinusoid tables were computed in float64, cast once here."""
        self.to(getattr(torch, dtype))

    def _embed(self, ids, table, positions, scale):
        x = table(ids) * scale if scale != 1.0 else table(ids)
        x = x + positions(ids.shape[1])
        return TF.dropout(x, self.p, self.training) if self.p > 0 else x

    def _logits(self, h, embedding):
        """h (B, T, C) -> (B, T, V): h @ E^T (tied) or the output projection."""
        return TF.linear(h, embedding.weight) if self.output_proj is None else self.output_proj(h)


class Seq2SeqTwin(_Twin):
    """transformer.model.Transformer in PyTorch (arguments: TransformerConfig's fields)."""

    def __init__(
        self,
        src_vocab_size,
        tgt_vocab_size,
        d_model=256,
        n_heads=4,
        num_encoder_layers=3,
        num_decoder_layers=3,
        d_ff=1024,
        dropout=0.1,
        attention_dropout=0.0,
        activation="relu",
        norm_first=False,
        positional="sinusoidal",
        max_len=256,
        share_embeddings=False,
        tie_output=True,
        pad_id=0,
        dtype="float32",
        **ignored,
    ):
        super().__init__()
        _check("Seq2SeqTwin", positional, attention_dropout, ignored)
        C = d_model
        self.p, self.pad_id, self.norm_first, self.scale = dropout, pad_id, norm_first, math.sqrt(C)
        self.share_embeddings = share_embeddings
        self.src_embed = nn.Embedding(src_vocab_size, C, padding_idx=pad_id)
        if not share_embeddings:
            self.tgt_embed = nn.Embedding(tgt_vocab_size, C, padding_idx=pad_id)
        self.src_positions = Positions(positional, max_len, C)
        self.tgt_positions = Positions(positional, max_len, C)
        layer = dict(
            d_model=C,
            n_heads=n_heads,
            d_ff=d_ff,
            dropout=dropout,
            activation=activation,
            norm_first=norm_first,
            bias=True,
        )
        self.encoder_layers = nn.ModuleList([EncoderLayer(**layer) for _ in range(num_encoder_layers)])
        self.decoder_layers = nn.ModuleList(
            [DecoderLayer(**layer, cross_attention=True) for _ in range(num_decoder_layers)]
        )
        if norm_first:
            self.encoder_norm, self.decoder_norm = nn.LayerNorm(C), nn.LayerNorm(C)
        self.output_proj = None if tie_output else nn.Linear(C, tgt_vocab_size, bias=False)
        self._finish(dtype)

    @property
    def target_embedding(self):
        return self.src_embed if self.share_embeddings else self.tgt_embed

    def forward(self, src, tgt_in):
        """src (B, S), tgt_in (B, T) int64 -> logits (B, T, V)."""
        src_mask = _key_mask(src != self.pad_id)
        x = self._embed(src, self.src_embed, self.src_positions, self.scale)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        memory = self.encoder_norm(x) if self.norm_first else x
        h = self._embed(tgt_in, self.target_embedding, self.tgt_positions, self.scale)
        tgt_mask = _key_mask(tgt_in != self.pad_id)
        for layer in self.decoder_layers:
            h = layer(h, memory, tgt_mask, src_mask)
        if self.norm_first:
            h = self.decoder_norm(h)
        return self._logits(h, self.target_embedding)

    def loss(self, logits, target, label_smoothing=0.0):
        """Mean label-smoothed cross-entropy over non-pad targets, as Transformer.loss."""
        return cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=self.pad_id,
            label_smoothing=label_smoothing,
        )


class LanguageModelTwin(_Twin):
    """transformer.model.LanguageModel in PyTorch (arguments: LMConfig's fields). With nanoGPT's options (no biases,
    no dropout, tied embeddings, GELU, pre-LN, learned positions) it is nanoGPT's ``GPT`` (model.py)."""

    def __init__(
        self,
        vocab_size,
        d_model=128,
        n_heads=4,
        n_layers=4,
        d_ff=None,
        block_size=64,
        dropout=0.0,
        activation="gelu",
        norm_first=True,
        positional="learned",
        tie_output=True,
        bias=True,
        dtype="float32",
        attention_dropout=0.0,
        **ignored,
    ):
        super().__init__()
        _check("LanguageModelTwin", positional, attention_dropout, ignored)
        C = d_model
        self.p, self.norm_first = dropout, norm_first
        self.token_embed = nn.Embedding(vocab_size, C)
        self.positions = Positions(positional, block_size, C)
        self.layers = nn.ModuleList(
            [
                DecoderLayer(C, n_heads, d_ff or 4 * C, dropout, activation, norm_first, bias, cross_attention=False)
                for _ in range(n_layers)
            ]
        )
        if norm_first:
            self.final_norm = nn.LayerNorm(C, bias=bias)
        self.output_proj = None if tie_output else nn.Linear(C, vocab_size, bias=False)
        self._finish(dtype)

    def forward(self, ids):
        """ids (B, T) int64 -> logits (B, T, V), causal."""
        x = self._embed(ids, self.token_embed, self.positions, 1.0)
        for layer in self.layers:
            x = layer(x)
        if self.norm_first:
            x = self.final_norm(x)
        return self._logits(x, self.token_embed)

    def loss(self, logits, target, label_smoothing=0.0):
        """Mean cross-entropy, as LanguageModel.loss."""
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), label_smoothing=label_smoothing)


# ================================================================================================ weights


def _transposed(twin, name):
    """A Linear's weight: torch (out, in), npgrad (in, out)."""
    owner = twin.get_submodule(name.rpartition(".")[0])
    return isinstance(owner, nn.Linear) and name.endswith(".weight")


def load_npgrad_weights(twin, arrays):
    """Copy npgrad's weights ({parameter name: ndarray in npgrad's layout}, every parameter) into ``twin``."""
    params = dict(twin.named_parameters())
    if params.keys() != set(arrays):
        raise ValueError(
            f"{type(twin).__name__}: the parameters differ from npgrad's: only in the twin "
            f"{sorted(params.keys() - set(arrays))}, only in npgrad's {sorted(set(arrays) - params.keys())}"
        )
    with torch.no_grad():
        for name, array in arrays.items():
            array = np.ascontiguousarray(array.T if _transposed(twin, name) else array)
            params[name].copy_(torch.from_numpy(array))


def npgrad_gradients(twin):
    """{parameter name: gradient as an ndarray in npgrad's layout} after a backward pass."""
    return {name: (p.grad.T if _transposed(twin, name) else p.grad).numpy() for name, p in twin.named_parameters()}
