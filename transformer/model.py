"""The encoder-decoder Transformer (Vaswani et al. 2017) and a decoder-only language model (GPT style).

Shape legend: B batch, S source length, T target length, C model width (d_model), V vocabulary.

    Transformer:  src (B, S) -> embed*sqrt(C) + positions -> dropout -> N encoder layers -> memory (B, S, C)
                  tgt_in (B, T) -> embed*sqrt(C) + positions -> dropout -> N decoder layers (masked
                  self-attention, cross-attention to memory, feed-forward) -> [final LN if pre-LN]
                  -> logits (B, T, V) = h @ E^T (tied) or h @ W_out
    LanguageModel: ids (B, T) -> embed + positions -> dropout -> N decoder-only blocks -> [final LN]
                  -> logits (B, T, V)

Masks: source padding (``pad_id``) is masked as a key everywhere (encoder self-attention and decoder
cross-attention); target padding is masked as a key in decoder self-attention, which is also causal.
Outputs at padded positions are computed but meaningless; outputs at real positions never depend on them.

Incremental decoding: ``start_decoding`` returns a :class:`DecoderState` (cross-attention keys/values of
every layer computed once); ``decode_step(tokens, state)`` runs one position through the decoder using
the cached self-attention keys/values, and gives the same logits as ``forward`` on the whole prefix.

Attention weights (opt-in, to look inside): ``forward``, ``encode``, ``decode``, ``decode_step`` and ``prefill`` take
``need_weights=True`` and then also return a dict of post-softmax probabilities, one array per attention kind stacked
over layers, (L, B, H, queries, keys): "encoder_self" (L, B, H, S, S), "decoder_self" (L, B, H, T, T) (a cached step:
(L, B, H, 1, t)) and "cross" (L, B, H, T, S). Without it the fused attention primitives run, unchanged.

Randomness is seeded by ``config.seed``: one generator for the initial weights (same seed, same
weights) and one, ``model.rng``, for dropout (saved/restored with ``Module.rng_state_dict``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

import npgrad as ng
from npgrad import functional as F
from npgrad import nn

from .attention import init_linear
from .config import ConfigError, check_numbers
from .layers import ACTIVATIONS, DecoderLayer, EncoderLayer, layer_norm, make_layer_norm
from .positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    check_positional_kind,
)

DTYPES = ("float32", "float64")


# ====================================================================================== configs


class _ConfigMixin:
    """to_dict / from_dict (JSON-safe) and the checks shared by both configs."""

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d, strict=False, where=None):
        """The config of a dict. ``strict=True`` (a config read from a checkpoint) requires every key, so a missing
        one can never silently take today's default (and change the model); types are checked either way."""
        who = where or cls.__name__
        if not hasattr(d, "keys"):
            raise ValueError(f"{who}: the model config must be a mapping, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in fields)
        if unknown:
            raise ValueError(f"{who}: unknown key(s) {unknown}; the known keys are {sorted(fields)}")
        required = [
            name
            for name, f in fields.items()
            if strict or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        ]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(
                f"{who}: missing required key(s) {missing}"
                + (
                    " (a checkpoint's config must hold every key; it was written by other code or edited)"
                    if strict
                    else ""
                )
            )
        for name, value in d.items():
            _check_field_type(who, name, fields[name].type, value)
        try:
            return cls(**dict(d))
        except ConfigError as error:
            raise ValueError(f"{who}: {error}") from None

    def _check_common(self):
        who = type(self).__name__
        for field in dataclasses.fields(self):
            _check_field_type(who, field.name, field.type, getattr(self, field.name))
        check_numbers("model", self.to_dict())
        if self.d_model % self.n_heads:
            raise ValueError(f"{who}: d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        check_positional_kind(self.positional)
        if self.positional == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"{who}: rope needs an even head size, d_model/n_heads = {self.d_model // self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{who}: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{who}: dtype must be one of {DTYPES}, got {self.dtype!r}")


# The annotation (a string under ``from __future__ import annotations``) -> the types a value may have.
_FIELD_TYPES = {
    "int": (int, np.integer),
    "float": (int, float, np.integer, np.floating),
    "bool": (bool, np.bool_),
    "str": (str,),
    "Optional[int]": (int, np.integer, type(None)),
}


def _check_field_type(who, name, annotation, value):
    allowed = _FIELD_TYPES[annotation]
    if not isinstance(value, allowed) or (isinstance(value, (bool, np.bool_)) and bool not in allowed):
        kind = {
            "int": "a whole number",
            "float": "a number",
            "bool": "true or false",
            "str": "a string",
            "Optional[int]": "a whole number or null",
        }[annotation]
        raise ValueError(f"{who}: {name} must be {kind}, got {value!r}")


@dataclass
class TransformerConfig(_ConfigMixin):
    """Encoder-decoder hyper-parameters. Defaults: the reference seq2seq config (the one benchmarks/step.py times)."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: str = "relu"
    norm_first: bool = False  # False: post-LN (the paper); True: pre-LN (+ final LayerNorms)
    positional: str = "sinusoidal"  # sinusoidal | learned | relative | rope | alibi
    max_len: int = 256  # rows of the absolute position tables
    max_relative_distance: int = 16  # Shaw et al.'s clipping distance k
    share_embeddings: bool = False  # one table for source and target (needs one vocabulary)
    tie_output: bool = True  # logits = h @ E_target^T
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        self._check_common()
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"TransformerConfig: share_embeddings needs one vocabulary, but src_vocab_size="
                f"{self.src_vocab_size} and tgt_vocab_size={self.tgt_vocab_size}"
            )
        for field in ("pad_id", "unk_id", "bos_id", "eos_id"):
            value = getattr(self, field)
            limit = min(self.src_vocab_size, self.tgt_vocab_size)
            if not 0 <= value < limit:
                raise ValueError(f"TransformerConfig: {field}={value} is outside the vocabulary [0, {limit})")


@dataclass
class LMConfig(_ConfigMixin):
    """Decoder-only language model hyper-parameters (nanoGPT-like defaults; d_ff None -> 4 d_model)."""

    vocab_size: int
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: Optional[int] = None
    block_size: int = 64  # context length; the learned position table has this many rows
    dropout: float = 0.0
    activation: str = "gelu"
    norm_first: bool = True
    positional: str = "learned"
    tie_output: bool = True
    bias: bool = True  # biases in linear layers and layer norms
    dtype: str = "float32"
    seed: int = 0
    attention_dropout: float = 0.0
    max_relative_distance: int = 16

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self._check_common()


# ====================================================================================== decoding state


class DecoderState:
    """Everything incremental decoding keeps between steps, for a batch of B' rows.

    ``caches[l]`` holds layer l's attention keys/values: {"self": {"k", "v": (B', H, t, D)},
    "cross": {"k", "v": (B', H, S, D)}}; ``memory_key_mask`` (B', 1, 1, S) marks real source tokens (None:
    no padding); ``target_real`` (B', t) marks non-pad tokens fed so far; ``step`` = t, the number of
    tokens decoded so far (the position of the next one).
    """

    def __init__(self, n_layers, batch_size, memory_key_mask=None):
        self.caches = [{"self": {}, "cross": {}} for _ in range(n_layers)]
        self.memory_key_mask = memory_key_mask
        self.target_real = np.ones((batch_size, 0), dtype=bool)
        self.step = 0
        # The original batch row each row's cross-attention keys/values and memory mask were gathered from.
        # Rows with the same source hold identical copies, so a reorder that maps every row to a row of the
        # same source (beam search following its hypotheses within a sentence) leaves them as they are.
        self.source_row = np.arange(batch_size)

    @property
    def batch_size(self):
        return self.target_real.shape[0]

    def reorder(self, index):
        """Keep rows ``index`` (B'',) int of every cached array, in that order (repeats allowed: beam
        search expands each sentence into beams, then follows the surviving hypotheses). In place;
        returns self."""
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise ValueError(
                f"DecoderState.reorder: index must be a 1-D integer array, got shape {index.shape} dtype {index.dtype}"
            )
        if index.size and (index.min() < 0 or index.max() >= self.batch_size):
            bad = int(index[(index < 0) | (index >= self.batch_size)][0])
            raise IndexError(f"DecoderState.reorder: index {bad} out of range for batch size {self.batch_size}")
        new_source_row = self.source_row[index]
        # Same source in every row: the per-source arrays would be gathered into themselves, so keep them
        # (saves copying all cross-attention keys/values, (B', H, S, D) per layer, at every beam step).
        sources_unchanged = np.array_equal(new_source_row, self.source_row)
        for cache in self.caches:
            for kind, part in cache.items():
                if kind == "cross" and sources_unchanged:
                    continue
                for name, value in part.items():
                    part[name] = value[index]
        if self.memory_key_mask is not None and not sources_unchanged:
            self.memory_key_mask = self.memory_key_mask[index]
        self.source_row = new_source_row
        self.target_real = self.target_real[index]
        return self


# ====================================================================================== helpers


def _token_array(name, ids, vocab_size, ndim):
    """The ids as an int64 ndarray of ``ndim`` axes, every value in [0, vocab_size), or a clear error."""
    array = ids.data if isinstance(ids, ng.Tensor) else np.asarray(ids)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name}: token ids must be integers, got dtype {array.dtype}")
    if array.ndim != ndim:
        expected = "(B, L)" if ndim == 2 else "(B,)"
        raise ValueError(f"{name}: expected token ids of shape {expected}, got shape {array.shape}")
    if array.size:
        bad = (array < 0) | (array >= vocab_size)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise IndexError(
                f"{name}: token id {int(array[where])} at index {where} is outside the vocabulary [0, {vocab_size})"
            )
    return array.astype(np.int64, copy=False)


def _run_layers(layers, x, need_weights, *args, caches=None, self_name="decoder_self"):
    """x through every layer, ``layer(x, *args[, its cache])`` -> (x, weights).

    weights: {} without ``need_weights``; with it the layers' attention weights stacked, {kind: (L, B, H, Tq, K)
    ndarray}, a layer's "self" named ``self_name`` and "cross" as it is.
    """
    per_layer = []
    for i, layer in enumerate(layers):
        layer_args = args if caches is None else (*args, caches[i])
        if need_weights:
            x, weights = layer(x, *layer_args, need_weights=True)
            per_layer.append(weights)
        else:
            x = layer(x, *layer_args)
    kinds = per_layer[0] if per_layer else {}
    return x, {
        (self_name if kind == "self" else kind): np.stack([weights[kind].data for weights in per_layer])
        for kind in kinds
    }


def _key_mask(real):
    """(B, L) bool True = real token -> (B, 1, 1, L) attention mask, or None when nothing is padding."""
    if real is None or real.all():
        return None
    return real[:, None, None, :]


def _tied_or_projected_logits(h, embedding, output_proj):
    """h (..., C) -> logits (..., V): one (N, C) @ (C, V) GEMM, tied (E^T) or with its own weight.

    ``embedding.weight.T`` is a transpose node, so the output projection's gradient (C, V) flows back
    into the embedding table (V, C), summed with the gradient of the lookups.
    """
    weight = embedding.weight.T if output_proj is None else output_proj.weight
    return F.linear(h, weight)


class _Decoding:
    """decode_step/prefill shared by both models (a decoder stack with a per-layer cache)."""

    def decode_step(self, tokens, state, need_weights=False):
        """tokens (B,) int -> logits (B, V) for the next position; appends to ``state``'s cache.

        With ``need_weights`` -> (logits, {"decoder_self": (L, B, H, 1, t), "cross": (L, B, H, 1, S)}), t = the
        tokens fed so far including this one (a language model has no "cross").
        """
        tokens = _token_array("decode_step", tokens, self._target_vocab_size, ndim=1)
        if tokens.shape[0] != state.batch_size:
            raise ValueError(
                f"decode_step: {tokens.shape[0]} tokens for a decoder state of batch size {state.batch_size}"
            )
        h, weights = self._decode_chunk(tokens[:, None], state, need_weights)  # (B, 1, C)
        logits = _tied_or_projected_logits(
            h.reshape(h.shape[0], h.shape[2]), self._output_embedding, self.output_proj
        )  # (B, V)
        return (logits, weights) if need_weights else logits

    def prefill(self, ids, state, need_weights=False):
        """Feed a prompt ids (B, L) through the cache at once; returns the last position's logits (B, V)
        (with ``need_weights``, and the weights of the L positions, as decode_step's)."""
        ids = _token_array("prefill", ids, self._target_vocab_size, ndim=2)
        if ids.shape[0] != state.batch_size:
            raise ValueError(f"prefill: {ids.shape[0]} rows for a decoder state of batch size {state.batch_size}")
        h, weights = self._decode_chunk(ids, state, need_weights)  # (B, L, C)
        last = h[:, h.shape[1] - 1]  # (B, C)
        logits = _tied_or_projected_logits(last, self._output_embedding, self.output_proj)
        return (logits, weights) if need_weights else logits

    def _decode_chunk(self, ids, state, need_weights=False):
        """ids (B, L) at positions state.step .. state.step+L-1 -> (final hidden states (B, L, C), weights)."""
        offset = state.step
        real = ids != self._pad_id if self._pad_id is not None else np.ones(ids.shape, dtype=bool)
        state.target_real = np.concatenate([state.target_real, real], axis=1)
        x = self._embed_target(ids, offset)
        self_key_mask = _key_mask(state.target_real)
        x, weights = _run_layers(
            self._decoder_layers, x, need_weights, None, self_key_mask, state.memory_key_mask, caches=state.caches
        )
        state.step += ids.shape[1]
        if self._final_norm is not None:
            x = layer_norm(x, self._final_norm)
        return x, weights


def layer_options(cfg, max_len, rng, dropout_rng, dtype) -> dict:
    """The keyword arguments every EncoderLayer / DecoderLayer of a model takes from its config (the positional
    encodings that live inside attention, relative/RoPE/ALiBi, are passed on; the others are added to the input)."""
    return dict(
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation=cfg.activation,
        norm_first=cfg.norm_first,
        positional=cfg.positional if cfg.positional in ("relative", "rope", "alibi") else None,
        max_relative_distance=cfg.max_relative_distance,
        max_len=max_len,
        rng=rng,
        dropout_rng=dropout_rng,
        dtype=dtype,
    )


def _positional_module(kind, d_model, max_len, rng, dtype, init_std=None):
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, max_len, dtype)
    if kind == "learned":
        return LearnedPositionalEmbedding(d_model, max_len, rng=rng, dtype=dtype, init_std=init_std)
    return None  # relative / rope / alibi act inside attention


# ====================================================================================== encoder-decoder


class Transformer(_Decoding, nn.Module):
    """The encoder-decoder of "Attention Is All You Need", configurable per :class:`TransformerConfig`.

    Initialisation (seeded by config.seed): embeddings N(0, 1/C) with the padding row zero (times
    sqrt(C) at the input, so unit scale, the scale of the sinusoids); every projection Xavier-uniform,
    biases zero; layer norms identity; learned positions N(0, 1/C); relative tables N(0, 1/D).
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if isinstance(config, dict):
            config = TransformerConfig.from_dict(config)
        self.config = config
        cfg = config
        dtype = np.dtype(cfg.dtype)
        rng = np.random.default_rng(cfg.seed)
        self.rng = np.random.default_rng([cfg.seed, 1])  # dropout masks (rng_state_dict saves it)
        C = cfg.d_model
        self.embed_scale = math.sqrt(C)
        self.dropout_p = cfg.dropout

        self.src_embed = nn.Embedding(cfg.src_vocab_size, C, padding_idx=cfg.pad_id, rng=rng, dtype=dtype)
        if not cfg.share_embeddings:
            self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, C, padding_idx=cfg.pad_id, rng=rng, dtype=dtype)
        self.src_positions = _positional_module(cfg.positional, C, cfg.max_len, rng, dtype)
        self.tgt_positions = _positional_module(cfg.positional, C, cfg.max_len, rng, dtype)

        common = layer_options(cfg, cfg.max_len, rng, self.rng, dtype)
        self.encoder_layers = nn.ModuleList(
            [EncoderLayer(C, cfg.n_heads, cfg.d_ff, **common) for _ in range(cfg.num_encoder_layers)]
        )
        self.decoder_layers = nn.ModuleList(
            [
                DecoderLayer(C, cfg.n_heads, cfg.d_ff, cross_attention=True, **common)
                for _ in range(cfg.num_decoder_layers)
            ]
        )
        if cfg.norm_first:
            self.encoder_norm = make_layer_norm(C, dtype=dtype)
            self.decoder_norm = make_layer_norm(C, dtype=dtype)
        if cfg.tie_output:
            self.output_proj = None
        else:
            self.output_proj = nn.Linear(C, cfg.tgt_vocab_size, bias=False, rng=rng, dtype=dtype)
            init_linear(self.output_proj, rng)

    # ---------------------------------------------------------------- pieces
    @property
    def target_embedding(self):
        return self.src_embed if self.config.share_embeddings else self.tgt_embed

    _output_embedding = target_embedding

    @property
    def _target_vocab_size(self):
        return self.config.tgt_vocab_size

    @property
    def _pad_id(self):
        return self.config.pad_id

    @property
    def _decoder_layers(self):
        return self.decoder_layers

    @property
    def _final_norm(self):
        return self.decoder_norm if self.config.norm_first else None

    def _embed(self, ids, embedding, positions, offset=0):
        """ids (B, L) -> Dropout(E[ids] sqrt(C) + PE[offset : offset+L]) (B, L, C)."""
        x = embedding(ids) * self.embed_scale
        if positions is not None:
            x = x + positions(ids.shape[1], offset)
        if self.training and self.dropout_p > 0.0:
            x = F.dropout(x, self.dropout_p, training=True, rng=self.rng)
        return x

    def _embed_target(self, ids, offset=0):
        return self._embed(ids, self.target_embedding, self.tgt_positions, offset)

    # ---------------------------------------------------------------- the model
    def encode(self, src, need_weights=False):
        """src (B, S) int -> (memory (B, S, C), src_pad (B, S) bool, True = real token)
        (with ``need_weights``, and {"encoder_self": (L, B, H, S, S)})."""
        src = _token_array("encode(src)", src, self.config.src_vocab_size, ndim=2)
        src_real = src != self.config.pad_id
        key_mask = _key_mask(src_real)
        x = self._embed(src, self.src_embed, self.src_positions)
        x, weights = _run_layers(self.encoder_layers, x, need_weights, key_mask, self_name="encoder_self")
        if self.config.norm_first:
            x = layer_norm(x, self.encoder_norm)
        return (x, src_real, weights) if need_weights else (x, src_real)

    def decode(self, tgt_in, memory, src_pad, need_weights=False):
        """Teacher-forced decoder: tgt_in (B, T), memory (B, S, C) -> hidden states (B, T, C)
        (with ``need_weights``, and {"decoder_self": (L, B, H, T, T), "cross": (L, B, H, T, S)})."""
        tgt_in = _token_array("decode(tgt_in)", tgt_in, self.config.tgt_vocab_size, ndim=2)
        self_key_mask = _key_mask(tgt_in != self.config.pad_id)
        memory_key_mask = _key_mask(np.asarray(src_pad, dtype=bool))
        x = self._embed_target(tgt_in)
        x, weights = _run_layers(self.decoder_layers, x, need_weights, memory, self_key_mask, memory_key_mask)
        if self.config.norm_first:
            x = layer_norm(x, self.decoder_norm)
        return (x, weights) if need_weights else x

    def forward(self, src, tgt_in, need_weights=False):
        """src (B, S), tgt_in (B, T) int -> logits (B, T, V); with ``need_weights`` -> (logits, weights), the
        attention weights {"encoder_self": (L, B, H, S, S), "decoder_self": (L, B, H, T, T), "cross": (L, B, H, T, S)}.
        """
        encoded = self.encode(src, need_weights)
        memory, src_real = encoded[0], encoded[1]
        if np.shape(tgt_in)[0] != src_real.shape[0]:
            raise ValueError(
                f"Transformer: src has batch size {src_real.shape[0]} but tgt_in has {np.shape(tgt_in)[0]}"
            )
        if not need_weights:
            h = self.decode(tgt_in, memory, src_real)
            return _tied_or_projected_logits(h, self.target_embedding, self.output_proj)
        h, weights = self.decode(tgt_in, memory, src_real, need_weights=True)
        logits = _tied_or_projected_logits(h, self.target_embedding, self.output_proj)
        return logits, {**encoded[2], **weights}

    def loss(self, logits, target, label_smoothing=0.0):
        """Mean label-smoothed cross-entropy over non-pad target tokens: logits (B, T, V), target (B, T)."""
        V = logits.shape[-1]
        target = np.asarray(target.data if isinstance(target, ng.Tensor) else target)
        return F.cross_entropy(
            logits.reshape(-1, V), target.reshape(-1), ignore_index=self.config.pad_id, label_smoothing=label_smoothing
        )

    # ---------------------------------------------------------------- incremental decoding
    def start_decoding(self, memory, src_pad):
        """Cross-attention keys/values of every decoder layer, computed once: -> DecoderState."""
        src_pad = np.asarray(src_pad, dtype=bool)
        if memory.ndim != 3 or src_pad.shape != tuple(memory.shape[:2]):
            raise ValueError(
                f"start_decoding: memory must be (B, S, C) and src_pad (B, S); got "
                f"{tuple(memory.shape)} and {src_pad.shape}"
            )
        state = DecoderState(len(self.decoder_layers), memory.shape[0], _key_mask(src_pad))
        for layer, cache in zip(self.decoder_layers, state.caches):
            layer.cross_attn.precompute_memory(memory, cache["cross"])
        return state


# ====================================================================================== language model


class LanguageModel(_Decoding, nn.Module):
    """Decoder-only (GPT-style) language model from the same DecoderLayer, without cross-attention.

    GPT conventions: no sqrt(C) embedding scale; token and learned position embeddings N(0, 0.02^2);
    projections Xavier-uniform; pre-LN with a final LayerNorm by default. Every token is real (no pad).
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        if isinstance(config, dict):
            config = LMConfig.from_dict(config)
        self.config = config
        cfg = config
        dtype = np.dtype(cfg.dtype)
        rng = np.random.default_rng(cfg.seed)
        self.rng = np.random.default_rng([cfg.seed, 1])
        C = cfg.d_model
        self.dropout_p = cfg.dropout
        self.token_embed = nn.Embedding(cfg.vocab_size, C, rng=rng, dtype=dtype, init_std=0.02)
        self.positions = _positional_module(cfg.positional, C, cfg.block_size, rng, dtype, init_std=0.02)
        common = layer_options(cfg, cfg.block_size, rng, self.rng, dtype)
        self.layers = nn.ModuleList(
            [
                DecoderLayer(C, cfg.n_heads, cfg.d_ff, bias=cfg.bias, cross_attention=False, **common)
                for _ in range(cfg.n_layers)
            ]
        )
        if cfg.norm_first:
            self.final_norm = make_layer_norm(C, bias=cfg.bias, dtype=dtype)
        if cfg.tie_output:
            self.output_proj = None
        else:
            self.output_proj = nn.Linear(C, cfg.vocab_size, bias=False, rng=rng, dtype=dtype)
            init_linear(self.output_proj, rng)

    @property
    def _output_embedding(self):
        return self.token_embed

    @property
    def _target_vocab_size(self):
        return self.config.vocab_size

    _pad_id = None

    @property
    def _decoder_layers(self):
        return self.layers

    @property
    def _final_norm(self):
        return self.final_norm if self.config.norm_first else None

    def _embed_target(self, ids, offset=0):
        x = self.token_embed(ids)
        if self.positions is not None:
            x = x + self.positions(ids.shape[1], offset)
        if self.training and self.dropout_p > 0.0:
            x = F.dropout(x, self.dropout_p, training=True, rng=self.rng)
        return x

    def forward(self, ids, need_weights=False):
        """ids (B, T) int -> logits (B, T, V); causal: position t sees tokens 0..t.
        With ``need_weights`` -> (logits, {"decoder_self": (L, B, H, T, T)}) attention weights."""
        ids = _token_array("LanguageModel(ids)", ids, self.config.vocab_size, ndim=2)
        x = self._embed_target(ids)
        x, weights = _run_layers(self.layers, x, need_weights)
        if self.config.norm_first:
            x = layer_norm(x, self.final_norm)
        logits = _tied_or_projected_logits(x, self.token_embed, self.output_proj)
        return (logits, weights) if need_weights else logits

    def loss(self, logits, target, label_smoothing=0.0):
        """Mean cross-entropy: logits (B, T, V), target (B, T) (use -100 to ignore positions)."""
        V = logits.shape[-1]
        target = np.asarray(target.data if isinstance(target, ng.Tensor) else target)
        return F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), label_smoothing=label_smoothing)

    def start_decoding(self, batch_size):
        """An empty DecoderState for ``batch_size`` sequences."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"LanguageModel.start_decoding: batch_size must be a positive integer, got {batch_size!r}")
        return DecoderState(len(self.layers), int(batch_size))
