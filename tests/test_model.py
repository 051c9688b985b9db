"""The encoder-decoder Transformer and the decoder-only language model (transformer/model.py).

Properties: whole-model gradients (every parameter, each positional encoding, post-LN and pre-LN), padding
never changes outputs at real positions, causality, cached decoding == full forward (float64, 1e-9),
beam reordering of the cache, seeding, configs. Tiny dims; the NumPy backend (the reference kernels)
keeps tiny shapes fast. One test runs the default backend to check it agrees.
"""

import dataclasses

import numpy as np
import pytest

import npgrad as ng
from transformer.model import DecoderState, LanguageModel, LMConfig, Transformer, TransformerConfig

POSITIONALS = ["sinusoidal", "learned", "relative", "rope", "alibi"]
PAD, BOS = 0, 2
V = 11


@pytest.fixture(autouse=True)
def numpy_backend():
    with ng.use_backend("numpy"):
        yield


def seq2seq(positional="sinusoidal", norm_first=False, dtype="float64", **overrides):
    settings = dict(
        src_vocab_size=V,
        tgt_vocab_size=V,
        d_model=8,
        n_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=2,
        d_ff=16,
        dropout=0.0,
        positional=positional,
        norm_first=norm_first,
        max_len=16,
        max_relative_distance=2,
        dtype=dtype,
        seed=1,
    )
    settings.update(overrides)
    return Transformer(TransformerConfig(**settings))


def language_model(positional="learned", norm_first=True, dtype="float64", **overrides):
    settings = dict(
        vocab_size=V,
        d_model=8,
        n_heads=2,
        n_layers=2,
        block_size=12,
        dropout=0.0,
        positional=positional,
        norm_first=norm_first,
        max_relative_distance=2,
        dtype=dtype,
        seed=1,
    )
    settings.update(overrides)
    return LanguageModel(LMConfig(**settings))


def batch(seed=0):
    """Source (2, 6) with padding at the end of row 0; target input (2, 5) with padding in row 1."""
    rng = np.random.default_rng(seed)
    src = rng.integers(4, V, size=(2, 6))
    src[0, 4:] = PAD
    tgt = rng.integers(4, V, size=(2, 5))
    tgt[:, 0] = BOS
    tgt[1, 3:] = PAD
    return src, tgt


# ---------------------------------------------------------------------------------- gradients


def check_model_gradients(model, run):
    """ng.gradcheck over every parameter (fast mode: one random direction each, float64).

    gradcheck calls ``fn`` with fresh tensors; ``fn`` puts them in the parameters' slots for the call.
    """
    slots = [
        (module, local)
        for _, module in model.named_modules()
        for local, p in module._parameters.items()
        if p is not None
    ]
    names = [name for name, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    index_of = {id(p): i for i, p in enumerate(params)}
    slot_index = [index_of[id(module._parameters[local])] for module, local in slots]
    inputs = [ng.tensor(p.data.copy(), requires_grad=True) for p in params]
    for t, name in zip(inputs, names):
        t.name = name

    def fn(*tensors):
        saved = [module._parameters[local] for module, local in slots]
        for (module, local), i in zip(slots, slot_index):
            module._parameters[local] = tensors[i]
        try:
            return run()
        finally:
            for (module, local), p in zip(slots, saved):
                module._parameters[local] = p

    assert len(inputs) == len(list(model.parameters()))
    ng.gradcheck(fn, inputs, mode="fast", n_directions=1, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("norm_first", [False, True])
def test_seq2seq_gradcheck_every_parameter(positional, norm_first):
    # Shared/untied variants ride along on some cases so that both output paths are checked.
    extra = {}
    if positional == "learned":
        extra = dict(share_embeddings=True)
    if positional == "rope":
        extra = dict(tie_output=False)
    model = seq2seq(positional, norm_first, **extra)
    src, tgt = batch()
    check_model_gradients(model, lambda: model(src, tgt))


@pytest.mark.parametrize("positional", POSITIONALS)
def test_lm_gradcheck_every_parameter(positional):
    norm_first = positional != "alibi"  # one post-LN language model too
    model = language_model(positional, norm_first, bias=positional != "relative", tie_output=positional != "sinusoidal")
    ids = np.random.default_rng(3).integers(0, V, size=(2, 6))
    check_model_gradients(model, lambda: model(ids))


def test_gradcheck_fails_on_a_broken_model():
    """The check above can fail: a model whose output projection forgets the tied gradient is caught."""
    model = seq2seq()
    src, tgt = batch()

    def run_with_detached_output_weight():
        memory, src_real = model.encode(src)
        h = model.decode(tgt, memory, src_real)
        from npgrad import functional as F

        return F.linear(h, ng.tensor(model.target_embedding.weight.data.T))  # cut from the graph

    with pytest.raises(ng.GradcheckError):
        check_model_gradients(model, run_with_detached_output_weight)


def test_tied_output_gradient_reaches_the_embedding():
    model = seq2seq(share_embeddings=True)
    src, tgt = batch()
    logits = model(src, tgt)
    g = np.random.default_rng(0).standard_normal(logits.shape)
    logits.backward(g)
    weight = model.src_embed.weight
    assert weight.grad is not None
    # Rows of tokens that appear nowhere in the batch get gradient only through the output projection.
    unused = sorted(set(range(V)) - set(src.ravel()) - set(tgt.ravel()))
    assert unused and np.abs(weight.grad[unused]).sum() > 0
    names = [n for n, _ in model.named_parameters()]
    assert "tgt_embed.weight" not in names and names.count("src_embed.weight") == 1


# ---------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("positional", POSITIONALS)
def test_padding_never_changes_real_positions(positional):
    model = seq2seq(positional)
    rng = np.random.default_rng(5)
    src_sentence = rng.integers(4, V, size=4)
    tgt_sentence = np.concatenate([[BOS], rng.integers(4, V, size=3)])
    alone = model(src_sentence[None], tgt_sentence[None]).data[0]  # (4, V), no padding at all
    # The same pair padded on both sides to different lengths, next to another (unpadded) pair.
    src = np.zeros((2, 7), dtype=np.int64)
    src[0, :4] = src_sentence
    src[1] = rng.integers(4, V, size=7)
    tgt = np.zeros((2, 6), dtype=np.int64)
    tgt[0, :4] = tgt_sentence
    tgt[1] = np.concatenate([[BOS], rng.integers(4, V, size=5)])
    padded = model(src, tgt).data
    np.testing.assert_allclose(padded[0, :4], alone, rtol=0, atol=1e-12)
    # Another neighbour row changes nothing either.
    src[1] = rng.integers(4, V, size=7)
    np.testing.assert_allclose(model(src, tgt).data[0, :4], alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("positional", ["sinusoidal", "relative", "alibi"])
def test_encoder_output_at_padded_positions_is_ignored(positional):
    """Whatever the memory holds at padded source positions, decoding gives the same logits."""
    model = seq2seq(positional)
    src, tgt = batch()
    memory, src_real = model.encode(src)
    reference = model.decode(tgt, memory, src_real).data
    noisy = memory.data.copy()
    noisy[~src_real] = np.random.default_rng(0).standard_normal(noisy[~src_real].shape) * 100
    np.testing.assert_allclose(model.decode(tgt, ng.tensor(noisy), src_real).data, reference, atol=1e-12, rtol=0)
    with ng.no_grad():
        state = model.start_decoding(ng.tensor(noisy), src_real)
        first = model.decode_step(tgt[:, 0], state).data
    np.testing.assert_allclose(first, model(src, tgt[:, :1]).data[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("positional", POSITIONALS)
def test_seq2seq_is_causal(positional):
    model = seq2seq(positional, norm_first=positional in ("learned", "rope"))
    src, tgt = batch()
    tgt[1, 3:] = [5, 6]  # no padding here
    reference = model(src, tgt).data
    for t in range(1, tgt.shape[1]):
        changed = tgt.copy()
        changed[:, t:] = (changed[:, t:] + 1 - 4) % (V - 4) + 4  # still real tokens
        out = model(src, changed).data
        np.testing.assert_allclose(out[:, :t], reference[:, :t], atol=1e-12, rtol=0)
        assert not np.allclose(out[:, t], reference[:, t])  # later ones do change


@pytest.mark.parametrize("positional", POSITIONALS)
def test_lm_is_causal(positional):
    model = language_model(positional)
    ids = np.random.default_rng(2).integers(0, V, size=(2, 7))
    reference = model(ids).data
    changed = ids.copy()
    changed[:, 4] = (changed[:, 4] + 3) % V
    out = model(changed).data
    np.testing.assert_allclose(out[:, :4], reference[:, :4], atol=1e-12, rtol=0)
    assert not np.allclose(out[:, 4], reference[:, 4])


# ---------------------------------------------------------------------------------- cached decoding


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("norm_first", [False, True])
def test_seq2seq_cached_decoding_equals_forward(positional, norm_first):
    model = seq2seq(positional, norm_first)
    model.eval()
    src, tgt = batch()
    full = model(src, tgt).data  # (B, T, V)
    with ng.no_grad():
        memory, src_real = model.encode(src)
        state = model.start_decoding(memory, src_real)
        assert isinstance(state, DecoderState) and state.step == 0
        for t in range(tgt.shape[1]):
            logits = model.decode_step(tgt[:, t], state)
            assert logits.shape == (2, V) and state.step == t + 1
            np.testing.assert_allclose(logits.data, full[:, t], atol=1e-9, rtol=0)


@pytest.mark.parametrize("positional", POSITIONALS)
def test_lm_cached_decoding_and_prefill_equal_forward(positional):
    model = language_model(positional, norm_first=positional != "rope")
    ids = np.random.default_rng(4).integers(0, V, size=(3, 9))
    full = model(ids).data
    with ng.no_grad():
        state = model.start_decoding(3)
        for t in range(ids.shape[1]):
            np.testing.assert_allclose(model.decode_step(ids[:, t], state).data, full[:, t], atol=1e-9, rtol=0)
        # A prompt in chunks: the second chunk's queries start at position 4 (offset causal mask).
        state = model.start_decoding(3)
        np.testing.assert_allclose(model.prefill(ids[:, :4], state).data, full[:, 3], atol=1e-9, rtol=0)
        np.testing.assert_allclose(model.prefill(ids[:, 4:], state).data, full[:, -1], atol=1e-9, rtol=0)
        assert state.step == 9


@pytest.mark.parametrize("positional", ["sinusoidal", "relative", "rope", "alibi"])
def test_reorder_follows_beams(positional):
    """After reorder(index) the cache continues as if the reordered prefixes had been decoded."""
    model = seq2seq(positional)
    src, tgt = batch()
    index = np.array([1, 1, 0])  # repeat and reorder rows
    full = model(src[index], tgt[index]).data
    with ng.no_grad():
        memory, src_real = model.encode(src)
        state = model.start_decoding(memory, src_real)
        model.decode_step(tgt[:, 0], state)
        model.decode_step(tgt[:, 1], state)
        assert state.reorder(index) is state and state.batch_size == 3
        for t in range(2, tgt.shape[1]):
            np.testing.assert_allclose(model.decode_step(tgt[index, t], state).data, full[:, t], atol=1e-9, rtol=0)
    with pytest.raises(IndexError, match="out of range"):
        state.reorder(np.array([0, 5]))


def test_reorder_within_sources_keeps_the_cross_cache():
    """A reorder that keeps every row's source (beam search within a sentence) reuses the cross-attention arrays
    instead of gathering them, and decoding still continues exactly; one that changes sources gathers them."""
    model = seq2seq()
    src, tgt = batch()
    expand = np.array([1, 1, 0])  # sentence 1 gets two rows (beams), sentence 0 one
    targets = tgt[expand].copy()
    targets[1, 1:] = np.array([5, 6, 7, 8])  # the two beams of sentence 1 follow different prefixes
    swap = np.array([1, 0, 2])  # the beams of sentence 1 trade places: sources unchanged
    full = model(src[expand[swap]], targets[swap]).data
    with ng.no_grad():
        memory, src_real = model.encode(src)
        state = model.start_decoding(memory, src_real)
        state.reorder(expand)
        for t in range(2):
            model.decode_step(targets[:, t], state)
        cross = [dict(cache["cross"]) for cache in state.caches]
        mask = state.memory_key_mask
        state.reorder(swap)
        assert all(
            cache["cross"][name] is cross[layer][name]
            for layer, cache in enumerate(state.caches)
            for name in cross[layer]
        )
        assert state.memory_key_mask is mask
        for t in range(2, targets.shape[1]):
            np.testing.assert_allclose(model.decode_step(targets[swap, t], state).data, full[:, t], atol=1e-9, rtol=0)
        state.reorder(np.array([2]))  # sentence 1 finished: only sentence 0's row stays
        assert state.caches[0]["cross"]["k"].shape[0] == 1
        np.testing.assert_array_equal(state.caches[0]["cross"]["k"].data, cross[0]["k"].data[2:3])
        np.testing.assert_array_equal(state.source_row, [0])


def test_decoding_records_nothing_under_no_grad():
    model = seq2seq()
    src, tgt = batch()
    with ng.no_grad():
        memory, src_real = model.encode(src)
        state = model.start_decoding(memory, src_real)
        logits = model.decode_step(tgt[:, 0], state)
    assert logits.grad_fn is None and not logits.requires_grad
    assert all(t.grad_fn is None for cache in state.caches for part in cache.values() for t in part.values())


def test_default_backend_agrees_with_the_reference():
    pytest.importorskip("numba")
    model = seq2seq("relative", norm_first=True)
    src, tgt = batch()
    reference = model(src, tgt)
    reference.backward(np.ones(reference.shape))
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    with ng.use_backend("numba"):
        out = model(src, tgt)
        out.backward(np.ones(out.shape))
    np.testing.assert_allclose(out.data, reference.data, rtol=1e-10, atol=1e-12)
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(p.grad, g, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------- dtype, seeding, dropout


def test_float32_model_stays_float32():
    model = seq2seq("rope", dtype="float32")
    src, tgt = batch()
    logits = model(src, tgt)
    assert logits.dtype == np.float32
    model.loss(logits, tgt).backward()
    assert all(p.dtype == np.float32 and p.grad.dtype == np.float32 for p in model.parameters())
    lm = language_model("alibi", dtype="float32")
    assert lm(np.array([[1, 2, 3]])).dtype == np.float32


def test_same_seed_same_weights_and_dropout():
    def build(seed):
        return seq2seq("learned", dropout=0.3, attention_dropout=0.2, seed=seed)

    a, b, c = build(7), build(7), build(8)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert any(not np.array_equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    src, tgt = batch()
    out_a, out_b = a(src, tgt).data, b(src, tgt).data  # training mode: dropout on
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.allclose(a(src, tgt).data, out_a)  # fresh masks each call
    a.eval()
    np.testing.assert_array_equal(a(src, tgt).data, a(src, tgt).data)  # eval: deterministic
    # The dropout generator is saved and restored with the module's rng state dict.
    state = b.rng_state_dict()
    first = b(src, tgt).data
    b.load_rng_state_dict(state)
    np.testing.assert_array_equal(b(src, tgt).data, first)


def test_sinusoidal_table_is_a_buffer_not_a_parameter():
    model = seq2seq("sinusoidal")
    assert not any("positions" in name for name, _ in model.named_parameters())
    assert not any("positions" in key for key in model.state_dict())
    assert any("positions" in name for name, _ in model.named_buffers())
    learned = seq2seq("learned")
    assert "src_positions.embedding.weight" in learned.state_dict()


# ---------------------------------------------------------------------------------- configs and errors


def test_config_round_trip_and_unknown_keys():
    cfg = TransformerConfig(src_vocab_size=100, tgt_vocab_size=100, positional="alibi", share_embeddings=True)
    d = cfg.to_dict()
    import json

    assert TransformerConfig.from_dict(json.loads(json.dumps(d))) == cfg
    lm_cfg = LMConfig(vocab_size=65)
    assert lm_cfg.d_ff == 4 * lm_cfg.d_model
    assert LMConfig.from_dict(json.loads(json.dumps(lm_cfg.to_dict()))) == lm_cfg
    with pytest.raises(ValueError, match="unknown key.*'n_layer'"):
        LMConfig.from_dict({**lm_cfg.to_dict(), "n_layer": 3})
    with pytest.raises(ValueError, match="missing required key.*tgt_vocab_size"):
        TransformerConfig.from_dict({"src_vocab_size": 10})
    assert Transformer(d).config == cfg  # a dict is accepted too


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(positional="absolute"), "unknown positional encoding 'absolute'"),
        (dict(d_model=10, n_heads=4), "divisible"),
        (dict(share_embeddings=True, tgt_vocab_size=12), "share_embeddings needs one vocabulary"),
        (dict(dtype="float16"), "dtype"),
        (dict(activation="tanh"), "activation"),
        (dict(positional="rope", d_model=6, n_heads=2), "even head size"),
        (dict(pad_id=20), "pad_id=20"),
    ],
)
def test_config_errors(bad, message):
    settings = dict(src_vocab_size=V, tgt_vocab_size=V, d_model=8, n_heads=2)
    settings.update(bad)
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**settings)


def test_bad_token_ids_are_reported():
    model = seq2seq()
    src, tgt = batch()
    bad = src.copy()
    bad[1, 2] = V
    with pytest.raises(IndexError, match=r"token id 11 at index \(1, 2\).*\[0, 11\)"):
        model(bad, tgt)
    with pytest.raises(TypeError, match="integers"):
        model(src.astype(np.float64), tgt)
    with pytest.raises(ValueError, match=r"shape \(B, L\)"):
        model(src[0], tgt)
    with pytest.raises(ValueError, match="batch size"):
        model(src, tgt[:1])
    lm = language_model("learned")
    with pytest.raises(ValueError, match="max_len=12"):
        lm(np.zeros((1, 13), dtype=np.int64))
    with pytest.raises(ValueError, match="batch size 2"):
        lm.decode_step(np.array([1, 2, 3]), lm.start_decoding(2))


def test_config_fields_match_the_model_api():
    """The names helper code relies on (MODEL_API.md)."""
    names = {f.name for f in dataclasses.fields(TransformerConfig)}
    assert {
        "src_vocab_size",
        "tgt_vocab_size",
        "d_model",
        "n_heads",
        "num_encoder_layers",
        "num_decoder_layers",
        "d_ff",
        "dropout",
        "attention_dropout",
        "activation",
        "norm_first",
        "positional",
        "max_len",
        "max_relative_distance",
        "share_embeddings",
        "tie_output",
        "pad_id",
        "unk_id",
        "bos_id",
        "eos_id",
        "dtype",
        "seed",
    } <= names
    lm_names = {f.name for f in dataclasses.fields(LMConfig)}
    assert {
        "vocab_size",
        "d_model",
        "n_heads",
        "n_layers",
        "d_ff",
        "block_size",
        "dropout",
        "activation",
        "norm_first",
        "positional",
        "tie_output",
        "bias",
        "dtype",
        "seed",
    } <= lm_names
