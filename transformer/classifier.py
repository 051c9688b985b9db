"""An encoder-only Transformer for text (BERT-shaped): a classifier and the masked-language-model pre-training head.

Shape legend: B batch, L text length (with the leading [CLS] piece), C model width, V vocabulary, K labels,
N masked positions of a batch.

    TextEncoder:  ids (B, L) -> embed*sqrt(C) + positions -> dropout -> n_layers encoder layers (self-attention
                  over the real tokens, feed-forward) -> [final LN if pre-LN] -> h (B, L, C)
    head "classify":  pooled = h[:, 0] ("cls": the output at the [CLS] piece every text starts with) or the mean
                  of h over the real tokens ("mean") -> dropout -> logits (B, K) = pooled W + b
    head "mlm":   h at the masked positions (N, C) -> GELU(h W_t + b_t) -> LayerNorm -> logits (N, V) = x E^T + b_v
                  (tied to the input embedding, as BERT's prediction head)

Both heads sit on the same encoder, whose parameter names (``embed.*``, ``positions.*``, ``layers.*``,
``final_norm.*``) do not depend on the head, so a masked-LM checkpoint initialises a classifier by name
(``--init-from``; the checkpoint's ``mlm_head.*`` are left out, the classifier's ``head.*`` start fresh).

The vocabulary holds the tokenizer's pieces plus one more row, [MASK] (``mask_id = vocab_size - 1``): the
tokenizer never produces it, so no text can spell it. The tokenizer's BOS piece is the [CLS] piece.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from npgrad import functional as F
from npgrad import nn

from .attention import init_linear
from .layers import ACTIVATIONS, EncoderLayer, layer_norm, make_layer_norm
from .model import _ConfigMixin, _key_mask, _positional_module, _token_array, layer_options

HEADS = ("classify", "mlm")
POOLINGS = ("cls", "mean")


@dataclass
class EncoderConfig(_ConfigMixin):
    """Encoder-only hyper-parameters. ``vocab_size`` counts the tokenizer's pieces plus [MASK]."""

    vocab_size: int
    num_labels: int = 2
    head: str = "classify"  # classify | mlm
    pooling: str = "cls"  # cls | mean
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: Optional[int] = None  # None: 4 d_model
    max_len: int = 64  # positions, the [CLS] piece included: longer texts are cut (and said)
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: str = "gelu"
    norm_first: bool = True
    positional: str = "learned"
    max_relative_distance: int = 16
    pad_id: int = 0
    cls_id: int = 2  # the tokenizer's BOS piece, put before every text
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self._check_common()
        if self.head not in HEADS:
            raise ValueError(f"EncoderConfig: head must be one of {HEADS}, got {self.head!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"EncoderConfig: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.positional not in ("learned", "sinusoidal", "relative", "rope", "alibi"):
            raise ValueError(f"EncoderConfig: unknown positional {self.positional!r}")
        for name in ("pad_id", "cls_id"):
            if not 0 <= getattr(self, name) < self.vocab_size - 1:
                raise ValueError(
                    f"EncoderConfig: {name}={getattr(self, name)} is outside the tokenizer's pieces "
                    f"[0, {self.vocab_size - 1})"
                )

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1


def pool(h, real, kind):
    """h (B, L, C), real (B, L) bool -> pooled (B, C): the [CLS] position's output, or the mean over real tokens.

    Mean: sum_l m_l h_l / sum_l m_l with m the real-token mask; its gradient is m_l / count to every real position
    and 0 to padding (the padded outputs never reach the logits)."""
    if kind == "cls":
        return h[:, 0]  # (B, C)
    weights = real.astype(h.dtype) / np.maximum(real.sum(axis=1, keepdims=True), 1).astype(h.dtype)  # (B, L)
    return (h * weights[:, :, None]).sum(axis=1)  # (B, C)


def classification_logits(h, real, weight, bias, kind="cls"):
    """The classification head on encoder outputs: pool(h) W + b, h (B, L, C), W (C, K), b (K,) -> (B, K)."""
    return F.linear(pool(h, real, kind), weight, bias)


class TextEncoder(nn.Module):
    """The encoder with one head (``config.head``): ``forward(ids)`` gives (B, K) class logits, or, for "mlm",
    ``mlm_logits(ids, positions)`` the (N, V) logits at the flat masked positions.

    Initialisation (seeded by config.seed) as the Transformer's encoder: embeddings N(0, 1/C) with the padding row
    zero, projections Xavier-uniform, biases zero, layer norms identity; the heads Xavier-uniform."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if isinstance(config, dict):
            config = EncoderConfig.from_dict(config)
        self.config = cfg = config
        dtype = np.dtype(cfg.dtype)
        rng = np.random.default_rng(cfg.seed)
        self.rng = np.random.default_rng([cfg.seed, 1])  # dropout masks (rng_state_dict saves it)
        C = cfg.d_model
        self.embed_scale = math.sqrt(C)
        self.dropout_p = cfg.dropout
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"TextEncoder: activation must be one of {ACTIVATIONS}, got {cfg.activation!r}")
        self.embed = nn.Embedding(cfg.vocab_size, C, padding_idx=cfg.pad_id, rng=rng, dtype=dtype)
        self.positions = _positional_module(cfg.positional, C, cfg.max_len, rng, dtype)
        common = layer_options(cfg, cfg.max_len, rng, self.rng, dtype)
        self.layers = nn.ModuleList([EncoderLayer(C, cfg.n_heads, cfg.d_ff, **common) for _ in range(cfg.n_layers)])
        if cfg.norm_first:
            self.final_norm = make_layer_norm(C, dtype=dtype)
        if cfg.head == "classify":
            self.head = nn.Linear(C, cfg.num_labels, rng=rng, dtype=dtype)
            init_linear(self.head, rng)
        else:
            self.mlm_transform = nn.Linear(C, C, rng=rng, dtype=dtype)
            init_linear(self.mlm_transform, rng)
            self.mlm_norm = make_layer_norm(C, dtype=dtype)
            self.mlm_bias = nn.Parameter(np.zeros(cfg.vocab_size, dtype=dtype))

    def encode(self, ids):
        """ids (B, L) int -> (h (B, L, C), real (B, L) bool, True = a real token)."""
        ids = _token_array("TextEncoder(ids)", ids, self.config.vocab_size, ndim=2)
        if ids.shape[1] > self.config.max_len:
            raise ValueError(
                f"TextEncoder: texts of {ids.shape[1]} positions, but model.max_len={self.config.max_len}; "
                "cut them first (the tasks do, and say so)"
            )
        real = ids != self.config.pad_id
        key_mask = _key_mask(real)
        x = self.embed(ids) * self.embed_scale
        if self.positions is not None:
            x = x + self.positions(ids.shape[1], 0)
        if self.training and self.dropout_p > 0.0:
            x = F.dropout(x, self.dropout_p, training=True, rng=self.rng)
        for layer in self.layers:
            x = layer(x, key_mask)
        if self.config.norm_first:
            x = layer_norm(x, self.final_norm)
        return x, real

    def forward(self, ids):
        """ids (B, L) -> class logits (B, K)."""
        if self.config.head != "classify":
            raise ValueError("TextEncoder: this is a masked-LM model (head 'mlm'); call mlm_logits(ids, positions)")
        h, real = self.encode(ids)
        pooled = pool(h, real, self.config.pooling)  # (B, C)
        if self.training and self.dropout_p > 0.0:
            pooled = F.dropout(pooled, self.dropout_p, training=True, rng=self.rng)
        return self.head(pooled)  # (B, K)

    def mlm_logits(self, ids, positions):
        """ids (B, L), positions (N,) flat indices into B*L -> vocabulary logits (N, V) at those positions."""
        if self.config.head != "mlm":
            raise ValueError("TextEncoder: this is a classifier (head 'classify'); it has no masked-LM head")
        h, _ = self.encode(ids)
        B, L, C = h.shape
        picked = h.reshape(B * L, C)[np.asarray(positions, dtype=np.int64)]  # (N, C)
        x = layer_norm(F.gelu(self.mlm_transform(picked)), self.mlm_norm)  # (N, C)
        return F.linear(x, self.embed.weight.T, self.mlm_bias)  # (N, V)


def mask_tokens(ids, real, rng, *, mask_id, vocab_low, vocab_high, prob=0.15):
    """BERT's masking (Devlin et al. 2019) of a batch ids (B, L): each real position but the first ([CLS]) is
    chosen with probability ``prob`` (at least one per batch); a chosen position becomes [MASK] 80% of the time, a
    random piece from [vocab_low, vocab_high) 10%, and stays itself 10%. Returns (inputs (B, L), positions (N,) flat
    indices of the chosen positions, targets (N,) their original ids): the loss is taken at those positions only."""
    ids = np.asarray(ids, dtype=np.int64)
    candidates = real.copy()
    candidates[:, 0] = False
    chosen = candidates & (rng.random(ids.shape) < prob)
    if not chosen.any() and candidates.any():  # a batch of tiny texts: still one prediction
        flat = np.flatnonzero(candidates)
        chosen.flat[flat[rng.integers(len(flat))]] = True
    positions = np.flatnonzero(chosen)
    targets = ids.reshape(-1)[positions]
    inputs = ids.copy()
    draw = rng.random(len(positions))
    flat_inputs = inputs.reshape(-1)
    flat_inputs[positions[draw < 0.8]] = mask_id
    randomised = positions[(draw >= 0.8) & (draw < 0.9)]
    flat_inputs[randomised] = rng.integers(vocab_low, vocab_high, size=len(randomised))
    return inputs, positions, targets
