"""Attention weights out of the model (``need_weights=True``), for every attention kind and positional encoding.

Properties: rows are probability distributions (sum 1), masked keys (source padding, target padding, the future)
get exactly 0, a query with no visible key gets a row of zeros; the cached decoding path (prefill and decode_step)
returns the weights of a full forward pass of the same prefix; asking for weights does not change the outputs; the
fused primitives run when weights are not asked for, and not when they are; the weights of a beam-search
hypothesis recomputed by one teacher-forced pass (transformer/attention_maps.py) are those the search computed.
"""

from __future__ import annotations

import numpy as np
import pytest

import npgrad as ng
from npgrad import functional as F
from transformer import search
from transformer.attention_maps import lm_attention, translation_attention
from transformer.model import LanguageModel, LMConfig, Transformer, TransformerConfig
from transformer.positional import POSITIONAL_KINDS

V, PAD, BOS, EOS = 23, 0, 2, 3
# Row 0 full, row 1 padded, row 2 all padding (every query of it sees no key).
SRC = np.array([[5, 6, 7, 8, EOS], [9, 10, EOS, PAD, PAD], [PAD] * 5])
TGT = np.array([[BOS, 11, 12, 13], [BOS, 14, PAD, PAD], [PAD] * 4])


def seq2seq(positional, dtype="float64", **overrides):
    config = dict(
        src_vocab_size=V,
        tgt_vocab_size=V,
        d_model=16,
        n_heads=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
        d_ff=32,
        dropout=0.0,
        positional=positional,
        max_len=32,
        max_relative_distance=3,
        dtype=dtype,
        seed=4,
    )
    model = Transformer(TransformerConfig(**{**config, **overrides}))
    model.eval()
    return model


def language_model(positional):
    model = LanguageModel(
        LMConfig(vocab_size=V, d_model=16, n_heads=2, n_layers=2, block_size=16, positional=positional, dtype="float64")
    )
    model.eval()
    return model


def check_distributions(weights, allowed):
    """weights (L, B, H, Q, K); allowed (B, Q, K) bool: masked keys exactly 0, rows with a visible key sum to 1,
    rows with none all 0."""
    allowed = np.broadcast_to(allowed[None, :, None], weights.shape)
    assert np.all(weights[~allowed] == 0.0)
    assert np.all(weights >= 0.0)
    sums = weights.sum(axis=-1)
    visible = allowed.any(axis=-1)
    np.testing.assert_allclose(sums[visible], 1.0, atol=1e-12)
    assert np.all(sums[~visible] == 0.0)


@pytest.mark.parametrize("positional", POSITIONAL_KINDS)
def test_seq2seq_weights_are_masked_distributions_and_change_nothing(positional):
    model = seq2seq(positional)
    with ng.no_grad():
        plain = model(SRC, TGT).data
        logits, weights = model(SRC, TGT, need_weights=True)
    np.testing.assert_allclose(logits.data, plain, rtol=0, atol=1e-12)
    layers, heads, (batch, S), T = 2, 2, SRC.shape, TGT.shape[1]
    assert weights["encoder_self"].shape == (layers, batch, heads, S, S)
    assert weights["decoder_self"].shape == (layers, batch, heads, T, T)
    assert weights["cross"].shape == (layers, batch, heads, T, S)
    src_real, tgt_real = SRC != PAD, TGT != PAD
    check_distributions(weights["encoder_self"], np.broadcast_to(src_real[:, None, :], (batch, S, S)))
    check_distributions(weights["cross"], np.broadcast_to(src_real[:, None, :], (batch, T, S)))
    causal = np.tri(T, dtype=bool)
    check_distributions(weights["decoder_self"], tgt_real[:, None, :] & causal)
    assert np.all(weights["encoder_self"][:, 2] == 0.0) and np.all(weights["cross"][:, 2] == 0.0)


@pytest.mark.parametrize("positional", POSITIONAL_KINDS)
def test_cached_decoding_returns_the_weights_of_the_full_pass(positional):
    model = seq2seq(positional)
    src, tgt = SRC[:2], np.array([[BOS, 11, 12, 13], [BOS, 14, 15, 16]])
    with ng.no_grad():
        _, full = model(src, tgt, need_weights=True)
        memory, src_real = model.encode(src)
        state, plain_state = model.start_decoding(memory, src_real), model.start_decoding(memory, src_real)
        for t in range(tgt.shape[1]):
            logits, step = model.decode_step(tgt[:, t], state, need_weights=True)
            plain = model.decode_step(tgt[:, t], plain_state)
            np.testing.assert_allclose(logits.data, plain.data, rtol=0, atol=1e-12)
            assert step["decoder_self"].shape == (2, 2, 2, 1, t + 1) and step["cross"].shape == (2, 2, 2, 1, 5)
            np.testing.assert_allclose(
                step["decoder_self"][..., 0, :], full["decoder_self"][..., t, : t + 1], atol=1e-12
            )
            np.testing.assert_allclose(step["cross"][..., 0, :], full["cross"][..., t, :], atol=1e-12)


@pytest.mark.parametrize("positional", POSITIONAL_KINDS)
def test_language_model_prefill_and_steps_return_the_weights_of_the_full_pass(positional):
    model = language_model(positional)
    ids = np.random.default_rng(0).integers(0, V, size=(2, 7))
    with ng.no_grad():
        plain = model(ids).data
        logits, full = model(ids, need_weights=True)
        np.testing.assert_allclose(logits.data, plain, rtol=0, atol=1e-12)
        check_distributions(full["decoder_self"], np.broadcast_to(np.tri(7, dtype=bool), (2, 7, 7)))
        state = model.start_decoding(2)
        _, prompt = model.prefill(ids[:, :4], state, need_weights=True)
        np.testing.assert_allclose(prompt["decoder_self"], full["decoder_self"][..., :4, :4], atol=1e-12)
        for t in range(4, 7):
            _, step = model.decode_step(ids[:, t], state, need_weights=True)
            np.testing.assert_allclose(
                step["decoder_self"][..., 0, :], full["decoder_self"][..., t, : t + 1], atol=1e-12
            )
    assert lm_attention(model, ids[0])["decoder_self"].shape == (2, 2, 7, 7)


class CountCalls:
    def __init__(self, monkeypatch, names):
        self.calls = dict.fromkeys(names, 0)
        for name in names:
            monkeypatch.setattr(F, name, self._counting(name, getattr(F, name)))

    def _counting(self, name, function):
        def wrapper(*args, **kwargs):
            self.calls[name] += 1
            return function(*args, **kwargs)

        return wrapper


@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
def test_fused_primitives_run_unless_weights_are_asked_for(positional, monkeypatch):
    """The training step (with gradients, dropout on) and decoding take the fused path; need_weights takes the
    explicit one. (relative/ALiBi always take the explicit path: they need the scores.)"""
    model = seq2seq(positional, dtype="float32", dropout=0.1, attention_dropout=0.1)
    counter = CountCalls(monkeypatch, ["packed_self_attention", "scaled_dot_product_attention", "softmax"])
    model.train()
    loss = model.loss(model(SRC[:2], TGT[:2]), TGT[:2])
    loss.backward()
    # 2 encoder + 2 decoder self-attentions packed, 2 cross-attentions fused, no explicit softmax
    assert counter.calls == {"packed_self_attention": 4, "scaled_dot_product_attention": 2, "softmax": 0}
    model.eval()
    with ng.no_grad():
        memory, src_real = model.encode(SRC[:2])
        model.decode_step(np.array([BOS, BOS]), model.start_decoding(memory, src_real))
    assert counter.calls == {"packed_self_attention": 6, "scaled_dot_product_attention": 6, "softmax": 0}
    with ng.no_grad():
        model(SRC[:2], TGT[:2], need_weights=True)
    assert counter.calls["packed_self_attention"] == 6 and counter.calls["scaled_dot_product_attention"] == 6
    assert counter.calls["softmax"] == 6  # every attention through the explicit path


class RecordingState:
    """A DecoderState that keeps, per row, the tokens fed so far, following the search's reorders."""

    def __init__(self, state):
        self.state = state
        self.history = [() for _ in range(state.batch_size)]

    def __getattr__(self, name):
        return getattr(self.state, name)

    def reorder(self, index):
        self.state.reorder(index)
        self.history = [self.history[i] for i in index]
        return self


class RecordingModel:
    """The model as beam search sees it, computing and keeping the weights of every decoding step."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def start_decoding(self, memory, src_pad):
        return RecordingState(self.model.start_decoding(memory, src_pad))

    def decode_step(self, tokens, state):
        logits, weights = self.model.decode_step(tokens, state.state, need_weights=True)
        state.history = [h + (int(t),) for h, t in zip(state.history, tokens)]
        self.steps.append((list(state.history), state.state.source_row.copy(), weights))
        return logits


@pytest.mark.parametrize("positional", ["sinusoidal", "alibi"])
def test_teacher_forced_weights_equal_those_beam_search_computed(positional):
    """translate --attention recomputes the returned hypothesis's weights in one teacher-forced pass; step t of
    that pass equals the step of the search whose row held the hypothesis's prefix."""
    model = seq2seq(positional)
    recording = RecordingModel(model)
    src = SRC[:2]
    hyps = search.beam_search(recording, src, beam_size=3, max_len=6, alpha=0.6)
    for row, best in enumerate(h[0] for h in hyps):
        src_ids = [int(i) for i in src[row] if i not in (PAD, EOS)]
        maps = translation_attention(model, src_ids, best.tokens, best.ended)
        fed, length = (BOS, *best.tokens), int((src[row] != PAD).sum())
        assert maps["cross"].shape == (2, 2, best.length, length)
        for t in range(best.length):
            history, source_row, weights = recording.steps[t]
            # a row of this sentence holding the hypothesis's prefix (rows with the same prefix hold the same weights)
            beam_row = next(r for r, h in enumerate(history) if h == fed[: t + 1] and source_row[r] == row)
            cross = weights["cross"][:, beam_row, :, 0]  # (L, H, S) over the padded batch's source
            np.testing.assert_allclose(maps["cross"][:, :, t], cross[..., :length], atol=1e-12)
            assert np.all(cross[..., length:] == 0.0)
            np.testing.assert_allclose(
                maps["decoder_self"][:, :, t, : t + 1], weights["decoder_self"][:, beam_row, :, 0], atol=1e-12
            )
