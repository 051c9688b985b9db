"""The road to the Transformer: Bengio et al.'s feed-forward n-gram LM, recurrent LMs and an LSTM encoder-decoder
with attention, trainable with the same commands as the Transformer (``model.kind = "ffnn" | "lstm" | "gru" | "rnn"``).

Shape legend: B batch, S source length, T target (or window) length, C embedding width (d_model), H hidden size
(d_hidden), L layers, N context tokens of the n-gram model (n - 1), V vocabulary.

    FeedForwardLM (Bengio et al. 2003): the N previous tokens' embeddings concatenated (B, T, N*C) -> tanh hidden
        layer (B, T, H) -> logits (B, T, V) (+ the paper's optional direct connections from the embeddings).
    RecurrentLM (Mikolov 2010; Zaremba et al. 2014): embeddings -> dropout -> L LSTM/GRU/RNN layers (dropout
        between them) -> dropout -> logits = h E^T (tied, Press & Wolf 2017) or h W + b.
    RecurrentSeq2Seq (Luong et al. 2015, global attention, "general" score): an L-layer recurrent encoder over the
        source (padding masked: the state skips it; with ``bidirectional`` a second stack reads it backwards, H/2
        units each way, Bahdanau et al. 2015), a decoder of the same shape started from the encoder's final
        states; for each decoder output h_t, a_t = softmax_s(h_t W_a h_s) over the real source positions,
        c_t = sum_s a_t,s h_s, h~_t = tanh([c_t; h_t] W_c), logits = h~_t E^T (tied) or h~_t W_out. Without Luong's
        input feeding, so the decoder runs over all T steps as one sequence op in training.

Language models train on the LM task's random windows of ``block_size`` tokens (as the Transformer LM), each from a
zero state; or, with ``data.batching = "stream"`` (recurrent LMs only), by truncated BPTT as PyTorch's
word_language_model example does: B contiguous sub-streams read ``block_size`` tokens at a time
(data.LMStreamBatcher), each segment started from the previous one's final state, detached (``forward_state``), the
state reset to zero when a pass over the stream starts again.

Decoding follows the Transformer's interface (search.py): ``start_decoding`` and ``decode_step`` (and ``prefill`` for
the LMs), with a state whose ``reorder(index)`` follows beams; ``encode(src)`` returns (memory, src_real).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

import npgrad as ng
from npgrad import functional as F
from npgrad import nn

from .config import ConfigError, check_numbers
from .model import (
    DTYPES,
    LanguageModel,
    LMConfig,
    Transformer,
    TransformerConfig,
    _check_field_type,
    _ConfigMixin,
    _token_array,
)

RECURRENT_KINDS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
LM_KINDS = ("transformer", "ffnn", *RECURRENT_KINDS)
TRANSLATION_KINDS = ("transformer", *RECURRENT_KINDS)


def model_classes(task: str, model_section) -> tuple[Any, Any]:
    """(config class, model class) of ``model.kind`` (default "transformer") for a task, "lm" or "translation"."""
    kind = model_section.get("kind", "transformer")
    kinds = LM_KINDS if task == "lm" else TRANSLATION_KINDS
    if kind not in kinds:
        what = "a language model" if task == "lm" else "a translation model"
        raise ConfigError(f"[model] kind must be one of {', '.join(kinds)} for {what}, got {kind!r}")
    if kind == "transformer":
        return (LMConfig, LanguageModel) if task == "lm" else (TransformerConfig, Transformer)
    if task == "lm":
        return (FeedForwardLMConfig, FeedForwardLM) if kind == "ffnn" else (RecurrentLMConfig, RecurrentLM)
    return RecurrentSeq2SeqConfig, RecurrentSeq2Seq


class _Checked(_ConfigMixin):
    """Type and range checks of the recurrent models' configs (the Transformer's attention checks do not apply)."""

    def _check(self, kinds):
        who = type(self).__name__
        for name, value in self.to_dict().items():
            _check_field_type(who, name, type(self).__dataclass_fields__[name].type, value)
        try:
            check_numbers("model", self.to_dict())
        except ConfigError as error:
            raise ValueError(f"{who}: {error}") from None
        if self.kind not in kinds:
            raise ValueError(f"{who}: kind must be one of {', '.join(kinds)}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{who}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if getattr(self, "tie_output", False) and self.d_model != self.d_hidden:
            raise ValueError(
                f"{who}: tie_output needs d_model == d_hidden (the output layer reuses the embeddings), "
                f"got {self.d_model} and {self.d_hidden}"
            )


@dataclass
class FeedForwardLMConfig(_Checked):
    """Bengio et al. (2003): ``context_size`` = n - 1 previous tokens, embeddings of d_model, one tanh layer."""

    vocab_size: int
    kind: str = "ffnn"
    d_model: int = 64
    d_hidden: int = 256
    context_size: int = 5
    direct: bool = False  # the paper's direct connections from the concatenated embeddings to the logits
    dropout: float = 0.0
    block_size: int = 64  # training/evaluation window (the LM task's); the model itself sees context_size tokens
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        self._check(("ffnn",))


@dataclass
class RecurrentLMConfig(_Checked):
    """A recurrent LM (kind lstm, gru or rnn), the PyTorch word_language_model example's shape."""

    vocab_size: int
    kind: str = "lstm"
    d_model: int = 256
    d_hidden: int = 256
    n_layers: int = 2
    dropout: float = 0.2
    tie_output: bool = False
    block_size: int = 64  # training/evaluation window
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        self._check(tuple(RECURRENT_KINDS))


@dataclass
class RecurrentSeq2SeqConfig(_Checked):
    """A recurrent encoder-decoder with Luong's global attention (kind lstm, gru or rnn)."""

    src_vocab_size: int
    tgt_vocab_size: int
    kind: str = "lstm"
    d_model: int = 256
    d_hidden: int = 256
    n_layers: int = 2
    dropout: float = 0.2
    share_embeddings: bool = False
    tie_output: bool = True
    bidirectional: bool = False  # encoder read both ways (Bahdanau et al. 2015), d_hidden / 2 units each way
    max_len: int = 256  # longest generated target (decoding's length cap); the model has no position table
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    dtype: str = "float32"
    seed: int = 0

    positional = "none"  # (not a field) no position table, so the translation task never cuts sentences for one

    def __post_init__(self):
        self._check(tuple(RECURRENT_KINDS))
        if self.bidirectional and self.d_hidden % 2:
            raise ValueError(
                f"RecurrentSeq2SeqConfig: bidirectional splits d_hidden between the two directions, so it must be "
                f"even, got {self.d_hidden}"
            )
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"RecurrentSeq2SeqConfig: share_embeddings needs one vocabulary, got {self.src_vocab_size} "
                f"and {self.tgt_vocab_size}"
            )
        for field in ("pad_id", "unk_id", "bos_id", "eos_id"):
            limit = min(self.src_vocab_size, self.tgt_vocab_size)
            if not 0 <= getattr(self, field) < limit:
                raise ValueError(f"RecurrentSeq2SeqConfig: {field}={getattr(self, field)} is outside [0, {limit})")


def _as_config(config, cls):
    return cls.from_dict(config) if isinstance(config, dict) else config


def _array(x):
    return x.data if isinstance(x, ng.Tensor) else np.asarray(x)


# ====================================================================================== feed-forward n-gram LM


class _ContextState:
    """The feed-forward LM's decoding state: the last N tokens of each row (B, N), the start id before the text."""

    def __init__(self, context):
        self.context = context

    @property
    def batch_size(self):
        return self.context.shape[0]

    def reorder(self, index):
        self.context = self.context[np.asarray(index)]
        return self


class FeedForwardLM(nn.Module):
    """Bengio et al. (2003), "A Neural Probabilistic Language Model": y = b + W x + U tanh(d + H x), x the
    concatenated embeddings of the N = n - 1 previous tokens (W only with ``direct``). Positions with fewer than N
    tokens before them in the window see a learned start embedding (row V of the table) in the missing slots."""

    def __init__(self, config: FeedForwardLMConfig):
        super().__init__()
        self.config = cfg = _as_config(config, FeedForwardLMConfig)
        dtype = np.dtype(cfg.dtype)
        rng = np.random.default_rng(cfg.seed)
        self.token_embed = nn.Embedding(cfg.vocab_size + 1, cfg.d_model, rng=rng, dtype=dtype, init_std=0.1)
        width = cfg.context_size * cfg.d_model
        self.hidden = nn.Linear(width, cfg.d_hidden, rng=rng, dtype=dtype)
        self.output = nn.Linear(cfg.d_hidden, cfg.vocab_size, rng=rng, dtype=dtype)
        self.direct = nn.Linear(width, cfg.vocab_size, bias=False, rng=rng, dtype=dtype) if cfg.direct else None
        self.drop = nn.Dropout(cfg.dropout, rng=np.random.default_rng([cfg.seed, 1]))

    def _logits(self, context):
        """context (B, T, N) ids -> logits (B, T, V)."""
        x = self.token_embed(context)  # (B,T,N,C)
        x = x.reshape(context.shape[0], context.shape[1], -1)  # (B,T,N*C) the concatenation
        h = self.drop(F.tanh(self.hidden(x)))
        logits = self.output(h)
        return logits if self.direct is None else logits + self.direct(x)

    def forward(self, ids):
        """ids (B, T) -> logits (B, T, V): position t predicts token t+1 from tokens t-N+1 .. t."""
        ids = _token_array("FeedForwardLM(ids)", ids, self.config.vocab_size, ndim=2)
        n = self.config.context_size
        padded = np.concatenate([np.full((ids.shape[0], n - 1), self.config.vocab_size), ids], axis=1)  # (B,T+N-1)
        windows = np.arange(ids.shape[1])[:, None] + np.arange(n)[None, :]  # (T,N) positions in padded
        return self._logits(padded[:, windows])

    def start_decoding(self, batch_size):
        return _ContextState(np.full((int(batch_size), self.config.context_size), self.config.vocab_size))

    def decode_step(self, tokens, state):
        tokens = _token_array("decode_step", tokens, self.config.vocab_size, ndim=1)
        state.context = np.concatenate([state.context[:, 1:], tokens[:, None]], axis=1)
        return self._logits(state.context[:, None, :]).reshape(len(tokens), -1)  # (B,V)


# ====================================================================================== recurrent LM


class _RecurrentState:
    """Decoding state of the recurrent models: the layers' final state (h (L,B,H), and c for the LSTM) as arrays,
    and for the encoder-decoder the memory (B,S,H) and its mask (B,S); ``reorder`` keeps/repeats rows."""

    def __init__(self, state, memory=None, memory_real=None):
        self.state, self.memory, self.memory_real = state, memory, memory_real

    @property
    def batch_size(self):
        first = self.state[0] if isinstance(self.state, tuple) else self.state
        return first.shape[1]

    def reorder(self, index):
        index = np.asarray(index)
        if isinstance(self.state, tuple):
            self.state = tuple(s[:, index] for s in self.state)
        else:
            self.state = self.state[:, index]
        if self.memory is not None:
            self.memory, self.memory_real = self.memory[index], self.memory_real[index]
        return self


def _detached(state):
    """A layer stack's final state as plain arrays (decoding keeps no graph)."""
    return tuple(_array(s) for s in state) if isinstance(state, tuple) else _array(state)


def _zero_state(kind, layers, batch, size, dtype):
    zeros = np.zeros((layers, batch, size), dtype=dtype)
    return (zeros, zeros) if kind == "lstm" else zeros


class RecurrentLM(nn.Module):
    """Embeddings -> dropout -> ``n_layers`` recurrent layers (dropout between) -> dropout -> logits (see module)."""

    def __init__(self, config: RecurrentLMConfig):
        super().__init__()
        self.config = cfg = _as_config(config, RecurrentLMConfig)
        dtype = np.dtype(cfg.dtype)
        rng = np.random.default_rng(cfg.seed)
        dropout_rng = np.random.default_rng([cfg.seed, 1])
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, rng=rng, dtype=dtype, init_std=0.1)
        self.rnn = RECURRENT_KINDS[cfg.kind](
            cfg.d_model, cfg.d_hidden, cfg.n_layers, dropout=cfg.dropout, rng=rng, dtype=dtype
        )
        self.rnn.dropout.rng = dropout_rng
        self.drop = nn.Dropout(cfg.dropout, rng=dropout_rng)
        self.output_proj = None if cfg.tie_output else nn.Linear(cfg.d_hidden, cfg.vocab_size, rng=rng, dtype=dtype)

    def _run(self, ids, state=None):
        x = self.drop(self.token_embed(ids))  # (B,T,C)
        y, final = self.rnn(x, state)  # (B,T,H)
        y = self.drop(y)
        logits = F.linear(y, self.token_embed.weight.T) if self.output_proj is None else self.output_proj(y)
        return logits, final

    def forward(self, ids):
        """ids (B, T) -> logits (B, T, V), from a zero state."""
        ids = _token_array("RecurrentLM(ids)", ids, self.config.vocab_size, ndim=2)
        return self._run(ids)[0]

    def forward_state(self, ids, state=None):
        """ids (B, T), the layers' initial state (arrays: h (L, B, H), and (h, c) for the LSTM; None: zeros) ->
        (logits (B, T, V), the final state as plain arrays). Truncated BPTT: the next segment starts from the
        returned state, which holds no graph, so the gradient stops at the segment boundary."""
        ids = _token_array("RecurrentLM(ids)", ids, self.config.vocab_size, ndim=2)
        logits, final = self._run(ids, state)
        return logits, _detached(final)

    def start_decoding(self, batch_size):
        cfg = self.config
        return _RecurrentState(_zero_state(cfg.kind, cfg.n_layers, int(batch_size), cfg.d_hidden, np.dtype(cfg.dtype)))

    def prefill(self, ids, state):
        ids = _token_array("prefill", ids, self.config.vocab_size, ndim=2)
        logits, final = self._run(ids, state.state)
        state.state = _detached(final)
        return _array(logits)[:, -1]

    def decode_step(self, tokens, state):
        tokens = _token_array("decode_step", tokens, self.config.vocab_size, ndim=1)
        return self.prefill(tokens[:, None], state)


# ====================================================================================== encoder-decoder


def reversal_order(real: np.ndarray) -> np.ndarray:
    """(B, S) bool, True = real token -> (B, S) int: for each row, the permutation that reverses its real positions
    among themselves and leaves padding in place (``x[rows, order]`` reads a sentence backwards); its own inverse."""
    n_rows, length = real.shape
    rank = np.cumsum(real, axis=1) - 1  # (B,S) index of each real token among the real ones
    positions = np.argsort(~real, axis=1, kind="stable")  # (B,S) the real positions first, in order
    mirrored = np.clip(real.sum(axis=1, keepdims=True) - 1 - rank, 0, length - 1)  # (B,S)
    return np.where(real, np.take_along_axis(positions, mirrored, axis=1), np.arange(length)[None, :])


class EncoderMemory(NamedTuple):
    """What the encoder hands the decoder: its outputs (B, S, H) and its layers' final state."""

    outputs: ng.Tensor
    state: object


class RecurrentSeq2Seq(nn.Module):
    """A recurrent encoder-decoder with Luong et al.'s (2015) global attention (see the module docstring)."""

    def __init__(self, config: RecurrentSeq2SeqConfig):
        super().__init__()
        self.config = cfg = _as_config(config, RecurrentSeq2SeqConfig)
        dtype = np.dtype(cfg.dtype)
        rng = np.random.default_rng(cfg.seed)
        dropout_rng = np.random.default_rng([cfg.seed, 1])
        layer = RECURRENT_KINDS[cfg.kind]
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_id, rng=rng, dtype=dtype)
        if not cfg.share_embeddings:
            self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.d_model, padding_idx=cfg.pad_id, rng=rng, dtype=dtype)
        encoder_width = cfg.d_hidden // 2 if cfg.bidirectional else cfg.d_hidden  # per direction
        self.encoder = layer(cfg.d_model, encoder_width, cfg.n_layers, dropout=cfg.dropout, rng=rng, dtype=dtype)
        self.decoder = layer(cfg.d_model, cfg.d_hidden, cfg.n_layers, dropout=cfg.dropout, rng=rng, dtype=dtype)
        self.encoder.dropout.rng = self.decoder.dropout.rng = dropout_rng
        if cfg.bidirectional:  # (created last: a unidirectional model's initial weights stay as they were)
            self.encoder_reverse = layer(
                cfg.d_model, encoder_width, cfg.n_layers, dropout=cfg.dropout, rng=rng, dtype=dtype
            )
            self.encoder_reverse.dropout.rng = dropout_rng
        self.attention = nn.Linear(cfg.d_hidden, cfg.d_hidden, bias=False, rng=rng, dtype=dtype)  # W_a
        self.combine = nn.Linear(2 * cfg.d_hidden, cfg.d_hidden, bias=False, rng=rng, dtype=dtype)  # W_c
        self.drop = nn.Dropout(cfg.dropout, rng=dropout_rng)
        self.output_proj = (
            None if cfg.tie_output else nn.Linear(cfg.d_hidden, cfg.tgt_vocab_size, bias=False, rng=rng, dtype=dtype)
        )

    @property
    def target_embedding(self):
        return self.src_embed if self.config.share_embeddings else self.tgt_embed

    def encode(self, src):
        """src (B, S) -> (EncoderMemory(outputs (B, S, H), final state), src_real (B, S) bool)."""
        src = _token_array("encode(src)", src, self.config.src_vocab_size, ndim=2)
        src_real = src != self.config.pad_id
        embedded = self.drop(self.src_embed(src))  # (B,S,C)
        outputs, final = self.encoder(embedded, mask=src_real)
        if self.config.bidirectional:
            # The reverse stack reads each sentence last word first: its real positions reversed in place, padding
            # left where it is (so the mask is the same), and its outputs put back in source order (the same
            # permutation: it is its own inverse). Each position then holds [forward; backward] (B,S,H), and each
            # layer's final state [forward's after the last word; backward's after the first] for the decoder.
            rows, order = np.arange(src.shape[0])[:, None], reversal_order(src_real)  # (B,1), (B,S)
            backward, backward_final = self.encoder_reverse(embedded[rows, order], mask=src_real)
            outputs = F.concatenate([outputs, backward[rows, order]], axis=-1)
            if isinstance(final, tuple):
                final = tuple(F.concatenate([f, b], axis=-1) for f, b in zip(final, backward_final))
            else:
                final = F.concatenate([final, backward_final], axis=-1)
        return EncoderMemory(outputs, final), src_real

    def _attend_and_project(self, h, memory, src_real):
        """Decoder outputs h (B, T, H) -> (logits (B, T, V), the attention queries h W_a) over memory (B, S, H)."""
        query = self.attention(h)  # (B,T,H) h_t W_a, so that the score h_t W_a h_s is one product per pair
        context = F.scaled_dot_product_attention(query, memory, memory, mask=src_real[:, None, :], scale=1.0)
        attended = self.drop(F.tanh(self.combine(F.concatenate([context, h], axis=-1))))  # (B,T,H) h~_t
        embedding = self.target_embedding
        if self.output_proj is None:
            return F.linear(attended, embedding.weight.T), query
        return self.output_proj(attended), query

    def decode(self, tgt_in, memory, src_real, state=None):
        """Teacher-forced decoder: tgt_in (B, T) -> (logits (B, T, V), final state)."""
        return self._decode(tgt_in, memory, src_real, state)[:2]

    def _decode(self, tgt_in, memory, src_real, state=None):
        x = self.drop(self.target_embedding(tgt_in))
        h, final = self.decoder(x, memory.state if state is None else state)
        logits, query = self._attend_and_project(h, memory.outputs, src_real)
        return logits, final, query

    def forward(self, src, tgt_in, need_weights=False):
        """src (B, S), tgt_in (B, T) -> logits (B, T, V); with ``need_weights`` also {"cross": (1, B, 1, T, S)}: the
        attention weights, as one layer of one head (the Transformer's layout, for ``translate --attention``)."""
        memory, src_real = self.encode(src)
        tgt_in = _token_array("decode(tgt_in)", tgt_in, self.config.tgt_vocab_size, ndim=2)
        if tgt_in.shape[0] != src_real.shape[0]:
            raise ValueError(
                f"RecurrentSeq2Seq: src has batch size {src_real.shape[0]} but tgt_in has {tgt_in.shape[0]}"
            )
        logits, _, query = self._decode(tgt_in, memory, src_real)
        if not need_weights:
            return logits
        scores = np.where(src_real[:, None, :], _array(query) @ _array(memory.outputs).swapaxes(1, 2), -np.inf)
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))  # (B,T,S) softmax over the real source
        return logits, {"cross": (weights / weights.sum(axis=-1, keepdims=True))[None, :, None]}

    def start_decoding(self, memory, src_real):
        return _RecurrentState(_detached(memory.state), _array(memory.outputs), np.asarray(src_real, dtype=bool))

    def decode_step(self, tokens, state):
        """tokens (B,) -> logits (B, V) of the next token; advances ``state``."""
        tokens = _token_array("decode_step", tokens, self.config.tgt_vocab_size, ndim=1)
        memory = EncoderMemory(ng.tensor(state.memory), None)
        logits, final = self.decode(tokens[:, None], memory, state.memory_real, state.state)
        state.state = _detached(final)
        return _array(logits)[:, 0]
