"""The road-to-the-Transformer models (transformer/rnn.py): incremental decoding gives the logits of the full
forward, greedy search with and without the state cache agrees, lm-train trains each kind through the same
commands and checkpoints (exact resume included), and bad model settings get one-line errors.

Legend: B batch, S source length, T target length, V vocabulary.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformer import cli, search
from transformer.checkpoint import load_checkpoint
from transformer.config import ConfigError
from transformer.rnn import (
    FeedForwardLM,
    FeedForwardLMConfig,
    RecurrentLM,
    RecurrentLMConfig,
    RecurrentSeq2Seq,
    RecurrentSeq2SeqConfig,
    model_classes,
    reversal_order,
)
from transformer.train import model_from_checkpoint

from test_lm import TINY_TRAIN, corpus_text, read_log, toml_value

RNN_MODEL = dict(kind="lstm", d_model=16, d_hidden=16, n_layers=2, block_size=16, dropout=0.1, tie_output=True)
FFNN_MODEL = dict(kind="ffnn", d_model=8, d_hidden=32, context_size=3, block_size=16, dropout=0.0, direct=True)


def _lms():
    return {
        "ffnn": FeedForwardLM(FeedForwardLMConfig(vocab_size=11, d_model=4, d_hidden=8, context_size=3, direct=True, dtype="float64")),
        "lstm": RecurrentLM(RecurrentLMConfig(vocab_size=11, d_model=6, d_hidden=6, n_layers=2, tie_output=True, dtype="float64")),
        "gru": RecurrentLM(RecurrentLMConfig(vocab_size=11, kind="gru", d_model=5, d_hidden=7, n_layers=1, dtype="float64")),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["ffnn", "lstm", "gru"])
def test_lm_decoding_step_by_step_gives_the_forward_logits(kind):
    model = _lms()[kind].eval()
    ids = np.random.default_rng(0).integers(0, 11, (3, 7))
    full = model(ids).data  # (B,T,V)
    state = model.start_decoding(3)
    steps = [model.decode_step(ids[:, t], state) for t in range(7)]
    np.testing.assert_allclose(np.stack([np.asarray(getattr(s, "data", s)) for s in steps], axis=1), full, atol=1e-12)


def _seq2seq(kind="lstm", bidirectional=False):
    config = RecurrentSeq2SeqConfig(
        src_vocab_size=13, tgt_vocab_size=13, kind=kind, d_model=6, d_hidden=6, n_layers=2, dropout=0.1,
        share_embeddings=True, bidirectional=bidirectional, dtype="float64",
    )  # fmt: skip
    return RecurrentSeq2Seq(config).eval()


@pytest.mark.parametrize("kind, bidirectional", [("lstm", False), ("gru", False), ("lstm", True), ("gru", True)])
def test_seq2seq_decoding_step_by_step_gives_the_forward_logits_with_source_padding(kind, bidirectional):
    model = _seq2seq(kind, bidirectional)
    rng = np.random.default_rng(1)
    src = rng.integers(4, 13, (3, 6))
    src[1, 4:] = 0  # right padding
    tgt_in = np.concatenate([np.full((3, 1), 2), rng.integers(4, 13, (3, 4))], axis=1)
    full = model(src, tgt_in).data
    memory, src_real = model.encode(src)
    state = model.start_decoding(memory, src_real)
    steps = [model.decode_step(tgt_in[:, t], state) for t in range(tgt_in.shape[1])]
    np.testing.assert_allclose(np.stack(steps, axis=1), full, atol=1e-12)
    # A padded source gives what the same sentence without padding gives.
    alone = model(src[1:2, :4], tgt_in[1:2]).data
    np.testing.assert_allclose(full[1:2], alone, atol=1e-12)


@given(st.lists(st.lists(st.booleans(), min_size=7, max_size=7), min_size=1, max_size=5))
def test_reversal_order_reverses_the_real_positions_and_leaves_padding(rows):
    real = np.array(rows)  # (B, S), padding anywhere
    order = reversal_order(real)
    ids = np.where(real, np.arange(1, 8)[None, :] * 10 + np.arange(len(rows))[:, None], 0)
    for b in range(len(rows)):
        np.testing.assert_array_equal(ids[b, order[b]][real[b]], ids[b][real[b]][::-1])  # read backwards
        np.testing.assert_array_equal(order[b][~real[b]], np.flatnonzero(~real[b]))  # padding stays
    np.testing.assert_array_equal(np.take_along_axis(order, order, axis=1), np.tile(np.arange(7), (len(rows), 1)))


def test_bidirectional_encoder_sees_the_words_after_each_position():
    """The first position's encoder output depends on the last word only when the encoder reads both ways; the
    reverse half of the final state is the one read after the first word."""
    src = np.array([[5, 6, 7, 8, 3, 0]])
    changed = src.copy()
    changed[0, 3] = 9
    for bidirectional in (False, True):
        model = _seq2seq("lstm", bidirectional)
        first = [model.encode(s)[0].outputs.data[0, 0] for s in (src, changed)]
        assert (not np.allclose(*first)) == bidirectional
    with pytest.raises(ValueError, match="d_hidden between the two directions, so it must be even, got 5"):
        RecurrentSeq2SeqConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=5, d_hidden=5, bidirectional=True)


def test_greedy_and_beam_search_with_and_without_the_cache_agree():
    model = _seq2seq()
    src = np.random.default_rng(2).integers(4, 13, (4, 5))
    for use_cache in (True, False):
        greedy = search.greedy(model, src, max_len=6, use_cache=use_cache).tokens
        beams = search.beam_search(model, src, beam_size=3, max_len=6, use_cache=use_cache)
        tokens = (greedy, [[h.tokens for h in sentence] for sentence in beams])
        if use_cache:
            cached = tokens
    assert cached == tokens


def test_model_kind_chooses_the_classes_and_refuses_unknown_kinds():
    assert model_classes("lm", {"kind": "ffnn"}) == (FeedForwardLMConfig, FeedForwardLM)
    assert model_classes("translation", {"kind": "gru"}) == (RecurrentSeq2SeqConfig, RecurrentSeq2Seq)
    with pytest.raises(
        ConfigError, match=r"\[model\] kind must be one of transformer, lstm, gru, rnn for a translation"
    ):
        model_classes("translation", {"kind": "ffnn"})
    with pytest.raises(ValueError, match="tie_output needs d_model == d_hidden"):
        RecurrentLMConfig(vocab_size=5, d_model=4, d_hidden=8, tie_output=True)
    with pytest.raises(ValueError, match="context_size must be a whole number >= 1"):
        FeedForwardLMConfig(vocab_size=5, context_size=0)


@pytest.mark.parametrize("model", [RNN_MODEL, FFNN_MODEL], ids=["lstm", "ffnn"])
def test_lm_train_trains_each_kind_and_resumes_exactly(tmp_path, model):
    text_path = tmp_path / "corpus.txt"
    text_path.write_text(corpus_text(60))
    train = dict(max_steps=6, lr_schedule="constant", validate_every=3, eval_iters=1, lr=3e-2)
    sections = {
        "data": {"text_path": str(text_path), "train_fraction": 0.9},
        "tokenizer": {"kind": "char"},
        "model": model,
        "train": {**TINY_TRAIN, **train, "optimizer": "adam"},
    }
    config = tmp_path / "c.toml"
    config.write_text(
        "".join(f"[{n}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in d.items()) for n, d in sections.items())
    )
    states = {}
    for name, stops in (("straight", [6]), ("resumed", [3, 6])):
        for i, stop in enumerate(stops):
            args = ["lm-train", "--config", config, "--run-dir", tmp_path / name, f"train.max_steps={stop}"]
            assert cli.main([str(a) for a in args] + (["--resume"] if i else [])) == 0
        states[name] = load_checkpoint(tmp_path / name / "checkpoints" / "step-000000006")
    for key, value in states["straight"].model_state.items():
        assert value.tobytes() == states["resumed"].model_state[key].tobytes(), key
    losses = [r["loss"] for r in read_log(tmp_path / "straight") if r["type"] == "train"]
    assert losses[-1] < losses[0]
    restored = model_from_checkpoint(states["straight"])
    assert type(restored) is (RecurrentLM if model["kind"] == "lstm" else FeedForwardLM)
    assert restored.config.kind == model["kind"]
    assert cli.main(["lm-eval", "--checkpoint", str(tmp_path / "straight")]) == 0


def test_road_benchmark_runs_every_model_on_a_tiny_corpus(tmp_path, capsys):
    import json

    from benchmarks import road

    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text(corpus_text(300))
    args = ["--corpus", "shakespeare", "--steps", "2", "--eval-tokens", "300", "--data-dir", str(tmp_path)]
    assert road.main(args + ["--models", "kn", "ffnn", "lstm"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in rows] == ["kn", "ffnn", "lstm"]
    for row in rows:
        assert 1.0 < row["valid_ppl"] < 100 and 1.0 < row["test_ppl"] < 100  # vocabulary of ~25 characters


def test_seq2seq_attention_weights_are_a_distribution_over_the_real_source():
    model = _seq2seq()
    rng = np.random.default_rng(3)
    src = rng.integers(4, 13, (2, 5))
    src[0, 3:] = 0  # padding
    tgt_in = rng.integers(4, 13, (2, 4))
    logits, weights = model(src, tgt_in, need_weights=True)
    np.testing.assert_array_equal(logits.data, model(src, tgt_in).data)
    cross = weights["cross"]  # (L=1, B, H=1, T, S)
    assert cross.shape == (1, 2, 1, 4, 5)
    np.testing.assert_allclose(cross.sum(axis=-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(cross[0, 0, 0, :, 3:], 0.0)
