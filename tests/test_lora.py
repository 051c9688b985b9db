"""LoRA adapters (npgrad.nn.LoRALinear, add_lora, merge_lora, lora_state_dict, load_lora_state_dict).

Properties: a fresh adapter (B = 0) leaves a real Transformer/LanguageModel's output bit-identical; merged equals
unmerged to round-off; the fused primitive passes gradcheck (float64), agrees with its float32 run and with the
same sum composed from F.linear and @; training moves only A and B; the adapter state dict round-trips strictly;
every bad argument is one clear ValueError.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad import nn, optim
from npgrad.ops.lora import lora_linear
from npgrad.testing import assert_float32_matches_float64
from transformer.model import LanguageModel, LMConfig, Transformer, TransformerConfig

ATTENTION = ["*.qkv", "*.q_proj", "*.kv_proj", "*.out_proj"]


def _lm(dtype="float32", **kw):
    settings = dict(vocab_size=23, d_model=16, n_heads=2, n_layers=2, block_size=12, dtype=dtype, seed=3)
    return LanguageModel(LMConfig(**{**settings, **kw}))


def _seq2seq(dtype="float32", **kw):
    settings = dict(
        src_vocab_size=19,
        tgt_vocab_size=21,
        d_model=16,
        n_heads=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
        d_ff=32,
        dropout=0.0,
        dtype=dtype,
        seed=5,
    )
    return Transformer(TransformerConfig(**{**settings, **kw}))


def _ids(shape, vocab, seed=0):
    return np.random.default_rng(seed).integers(4, vocab, size=shape)


def _randomise_b(model, seed=1, scale=0.1):
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        if isinstance(m, nn.LoRALinear):
            m.lora_B.data[...] = (scale * rng.standard_normal(m.lora_B.shape)).astype(m.lora_B.dtype)


# ------------------------------------------------------------------------------ a fresh adapter changes nothing
@pytest.mark.parametrize("positional", ["learned", "rope", "alibi"])
def test_fresh_adapters_leave_a_language_model_bit_identical(positional):
    model = _lm(positional=positional, tie_output=False)
    ids = _ids((3, 10), 23)
    model.eval()
    with ng.no_grad():
        before = model(ids).data.copy()
    names = nn.add_lora(model, ["*.qkv", "*.out_proj", "*.linear1", "*.linear2", "output_proj"], rank=4, rng=0)
    assert len(names) == 2 * 4 + 1
    with ng.no_grad():
        after = model(ids).data
    np.testing.assert_array_equal(after, before)
    model.train()  # training mode, gradients on: the graph path through the effective weight
    np.testing.assert_array_equal(model(ids).data, before)


def test_fresh_adapters_leave_a_transformer_bit_identical_and_nonzero_b_changes_it():
    model = _seq2seq()
    src, tgt = _ids((2, 7), 19), _ids((2, 6), 21, seed=1)
    model.eval()
    before = model(src, tgt).data.copy()
    names = nn.add_lora(model, ATTENTION, rank=2, alpha=4, rng=0)
    assert "decoder_layers.0.cross_attn.kv_proj" in names and "encoder_layers.1.self_attn.qkv" in names
    np.testing.assert_array_equal(model(src, tgt).data, before)
    _randomise_b(model)  # the adapters are really in the computation: a nonzero B changes the output
    assert np.abs(model(src, tgt).data - before).max() > 1e-3


def test_incremental_decoding_with_adapters_matches_the_full_forward():
    model = _lm()
    nn.add_lora(model, ["*.qkv", "*.out_proj"], rank=2, rng=0)
    _randomise_b(model)
    model.eval()
    ids = _ids((2, 6), 23)
    with ng.no_grad():
        full = model(ids).data
        state = model.start_decoding(2)
        steps = [model.decode_step(ids[:, t], state).data for t in range(6)]
    np.testing.assert_allclose(np.stack(steps, axis=1), full, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ merge / unmerge / merge_lora
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_merged_equals_unmerged_on_a_real_model(dtype, tol):
    model = _seq2seq(dtype=dtype)
    nn.add_lora(model, ATTENTION + ["*.linear1"], rank=3, alpha=6, rng=0)
    _randomise_b(model)
    model.eval()
    src, tgt = _ids((2, 7), 19), _ids((2, 6), 21, seed=1)
    unmerged = model(src, tgt).data.copy()
    weights = {n: p.data.copy() for n, p in model.named_parameters()}
    for _, m in model.named_modules():
        if isinstance(m, nn.LoRALinear):
            m.merge()
            m.merge()  # a second merge is a no-op
    merged = model(src, tgt).data
    np.testing.assert_allclose(merged, unmerged, rtol=tol, atol=tol)
    for _, m in model.named_modules():
        if isinstance(m, nn.LoRALinear):
            m.unmerge()
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.data, weights[n], rtol=0, atol=tol, err_msg=n)
    np.testing.assert_allclose(model(src, tgt).data, unmerged, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_merge_lora_gives_a_plain_model_with_the_base_layout(dtype, tol):
    model = _lm(dtype=dtype, tie_output=False)
    base_keys = list(model.state_dict())
    nn.add_lora(model, ["*.qkv", "*.out_proj", "output_proj"], rank=2, alpha=3, rng=0)
    _randomise_b(model)
    shared = model.layers[0].self_attn.qkv.base_weight
    shared_before = shared.data.copy()
    model.eval()
    ids = _ids((2, 9), 23)
    adapted = model(ids).data.copy()
    assert nn.merge_lora(model) is model
    assert not any(isinstance(m, nn.LoRALinear) for m in model.modules())
    assert type(model.layers[0].self_attn.qkv) is nn.Linear
    assert list(model.state_dict()) == base_keys
    np.testing.assert_array_equal(shared.data, shared_before)  # the shared base Parameter is left alone
    np.testing.assert_allclose(model(ids).data, adapted, rtol=tol, atol=tol)
    fresh = _lm(dtype=dtype, tie_output=False)
    fresh.load_state_dict(model.state_dict())  # strict: the export loads into a plain model
    np.testing.assert_array_equal(fresh.eval()(ids).data, model(ids).data)


def test_merge_lora_of_a_single_layer_returns_a_linear():
    layer = nn.LoRALinear.from_linear(nn.Linear(5, 4, rng=0, dtype=np.float64), rank=2, rng=1)
    layer.lora_B.data[...] = 0.5
    x = np.random.default_rng(0).standard_normal((3, 5))
    plain = nn.merge_lora(layer)
    assert type(plain) is nn.Linear
    np.testing.assert_allclose(plain(x).data, layer(x).data, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ the primitive's gradients
def _inputs(rng, n, d_in, d_out, r, dtype=np.float64):
    x = rng.standard_normal((2, n, d_in))
    w, b = rng.standard_normal((d_in, d_out)), rng.standard_normal(d_out)
    a, bm = rng.standard_normal((d_in, r)), rng.standard_normal((r, d_out))
    return [ng.tensor(v.astype(dtype), requires_grad=True) for v in (x, w, b, a, bm)]


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 4),
    d_in=st.integers(1, 5),
    d_out=st.integers(1, 5),
    r=st.integers(1, 3),
    p=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_lora_linear_gradcheck(n, d_in, d_out, r, p, seed):
    rng = np.random.default_rng(seed)
    inputs = _inputs(rng, n, d_in, d_out, r)
    mask = None if p == 0 else (rng.random((2, n, d_in)) >= p) / (1 - p)
    assert ng.gradcheck(lambda x, w, b, a, bm: lora_linear(x, w, b, a, bm, 1.7, mask), inputs)
    # the same function composed from existing ops
    x, w, b, a, bm = inputs
    xd = x if mask is None else x * mask
    composed = F.linear(x, w, b) + ((xd @ a) @ bm) * 1.7
    np.testing.assert_allclose(lora_linear(x, w, b, a, bm, 1.7, mask).data, composed.data, rtol=1e-12, atol=1e-12)


def test_lora_linear_second_order():
    inputs = _inputs(np.random.default_rng(0), 3, 4, 3, 2)
    assert ng.gradgradcheck(lambda x, w, b, a, bm: lora_linear(x, w, b, a, bm, 0.5), inputs)


def test_lora_linear_frozen_base_gets_no_gradient_and_the_rest_matches_composed():
    x, w, b, a, bm = _inputs(np.random.default_rng(1), 5, 6, 7, 3)
    w.requires_grad_(False)
    b.requires_grad_(False)
    lora_linear(x, w, b, a, bm, 2.0).sum().backward()
    assert w.grad is None and b.grad is None
    grads = [t.grad.copy() for t in (x, a, bm)]
    for t in (x, a, bm):
        t.grad = None
    (F.linear(x, w, b) + ((x @ a) @ bm) * 2.0).sum().backward()
    for g, t in zip(grads, (x, a, bm)):
        np.testing.assert_allclose(g, t.grad, rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 6), d_in=st.integers(1, 8), d_out=st.integers(1, 8), r=st.integers(1, 4), seed=st.integers(0, 99)
)
def test_lora_linear_float32_matches_float64(n, d_in, d_out, r, seed):
    rng = np.random.default_rng(seed)
    x, w, b, a, bm = inputs = [t.data.astype(np.float32) for t in _inputs(rng, n, d_in, d_out, r)]
    mask = ((rng.random((2, n, d_in)) >= 0.25) / 0.75).astype(np.float32)
    grad_output = rng.standard_normal((2, n, d_out)).astype(np.float32)
    s = 0.75
    # The magnitude of the terms summed into each result (products of mixed signs cancel): |.| everywhere.
    x, w, b, a, bm, m, g = (
        np.abs(v.astype(np.float64)).reshape(-1, v.shape[-1]) for v in (x, w, b, a, bm, mask, grad_output)
    )
    xd = x * m
    scales = {
        "output": (x @ w + b + s * (xd @ a) @ bm).max(),
        0: (g @ w.T + s * (g @ bm.T @ a.T) * m).max(),
        1: (x.T @ g).max(),
        2: g.sum(axis=0).max(),
        3: (s * xd.T @ (g @ bm.T)).max(),
        4: (s * (xd @ a).T @ g).max(),
    }
    assert_float32_matches_float64(
        lambda x, w, b, a, bm: lora_linear(x, w, b, a, bm, s, mask), inputs, grad_output=grad_output, scales=scales
    )


def test_adapted_layer_gradcheck_through_the_module_and_the_effective_weight():
    layer = nn.LoRALinear.from_linear(nn.Linear(4, 3, rng=0, dtype=np.float64), rank=2, alpha=5, rng=1)
    layer.lora_B.data[...] = np.random.default_rng(2).standard_normal((2, 3))
    x = ng.tensor(np.random.default_rng(3).standard_normal((2, 5, 4)), requires_grad=True)

    def via_module(x, a, bm):
        return layer(x)

    def via_weight(x, a, bm):
        return F.linear(x, layer.weight, layer.bias)

    for fn in (via_module, via_weight):
        assert ng.gradcheck(fn, [x, layer.lora_A, layer.lora_B])
    np.testing.assert_allclose(via_module(x, 0, 0).data, via_weight(x, 0, 0).data, rtol=1e-12, atol=1e-12)


def test_adapter_dropout_applies_to_the_adapter_input_only():
    layer = nn.LoRALinear.from_linear(nn.Linear(6, 5, rng=0, dtype=np.float64), rank=2, dropout=0.5, rng=1)
    x = np.random.default_rng(0).standard_normal((4, 6))
    base = F.linear(x, layer.base_weight, layer.bias).data
    np.testing.assert_array_equal(layer(x).data, base)  # B = 0: dropout changes nothing either
    layer.lora_B.data[...] = 1.0
    y1, y2 = layer(x).data, layer(x).data
    assert not np.allclose(y1, y2)  # fresh masks
    layer.eval()
    np.testing.assert_allclose(layer(x).data, base + (x @ layer.lora_A.data @ layer.lora_B.data) * layer.scaling)
    layer.train()
    with pytest.raises(RuntimeError, match="cannot apply the adapter's dropout"):
        _ = layer.weight


# ------------------------------------------------------------------------------ training moves only A and B
def test_training_with_frozen_base_changes_only_the_adapters():
    model = _lm(tie_output=False)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    nn.add_lora(model, ["*.qkv", "*.out_proj"], rank=2, alpha=4, rng=0)
    trainable = nn.lora_parameters(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [n for n, _ in trainable]
    with pytest.raises(ValueError, match="does not require grad"):
        optim.AdamW(model.parameters(), lr=1e-2)  # the optimizer refuses frozen parameters: pass trainable ones
    opt = optim.AdamW(trainable, lr=1e-2)
    ids = _ids((4, 11), 23)
    adapters_before = {n: p.data.copy() for n, p in trainable}
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = model.loss(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        losses.append(float(loss.data))
        opt.step()
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if n in adapters_before:
            assert not np.array_equal(p.data, adapters_before[n]), n
            continue
        assert p.grad is None, n  # no gradient computed for a frozen parameter
        np.testing.assert_array_equal(p.data, before[n], err_msg=n)


def test_trainable_fraction_of_a_language_model_is_small():
    model = _lm(d_model=64, n_heads=4, n_layers=4, vocab_size=101)
    total = model.num_parameters()
    names = nn.add_lora(model, ["*.qkv", "*.out_proj"], rank=4, rng=0)
    assert len(names) == 8
    trainable = model.num_parameters(trainable_only=True)
    assert trainable == 4 * (4 * (64 + 192) + 4 * (64 + 64))
    assert trainable < 0.1 * total
    assert model.num_parameters() == total + trainable  # the base weights are shared, not copied


# ------------------------------------------------------------------------------ adapter state dicts
def test_adapter_state_dict_round_trip():
    model = _seq2seq()
    nn.add_lora(model, ATTENTION, rank=2, rng=0)
    _randomise_b(model)
    for _, p in nn.lora_parameters(model):
        p.data += 0.01
    saved = nn.lora_state_dict(model)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in saved) and len(saved) == 2 * (
        2 * 2 + 2 * 5
    )  # encoder: qkv, out_proj; decoder: + q_proj, kv_proj, out_proj
    model.eval()
    src, tgt = _ids((2, 7), 19), _ids((2, 6), 21, seed=1)
    expected = model(src, tgt).data.copy()

    other = _seq2seq()
    nn.add_lora(other, ATTENTION, rank=2, rng=7)
    nn.load_lora_state_dict(other, {k: v.astype(np.float64) for k, v in saved.items()})  # cast to float32
    np.testing.assert_array_equal(other.eval()(src, tgt).data, expected)


def test_adapter_state_dict_errors_name_every_problem_and_load_nothing():
    model = _lm()
    nn.add_lora(model, ["*.qkv"], rank=2, rng=0)
    saved = nn.lora_state_dict(model)
    before = {k: v.copy() for k, v in nn.lora_state_dict(model).items()}
    bad = dict(saved)
    del bad["layers.0.self_attn.qkv.lora_A"]
    bad["layers.1.self_attn.qkv.lora_B"] = np.zeros((3, 48), np.float32)
    bad["layers.0.self_attn.qkv.weight"] = np.zeros((16, 48), np.float32)
    bad["layers.1.self_attn.qkv.lora_A"] = saved["layers.1.self_attn.qkv.lora_A"] + 1
    with pytest.raises(nn.StateDictError) as info:
        nn.load_lora_state_dict(model, bad)
    message = str(info.value)
    assert "missing" in message and "layers.0.self_attn.qkv.lora_A" in message
    assert "unexpected" in message and "layers.0.self_attn.qkv.weight" in message
    assert "(2, 48)" in message and "(3, 48)" in message
    for k, v in nn.lora_state_dict(model).items():
        np.testing.assert_array_equal(v, before[k])  # nothing loaded
    with pytest.raises(ValueError, match="no LoRA adapter"):
        nn.lora_state_dict(_lm())
    with pytest.raises(nn.StateDictError, match="no LoRA adapter"):
        nn.load_lora_state_dict(_lm(), saved)
    model.layers[0].self_attn.qkv.merge()
    with pytest.raises(nn.StateDictError, match="unmerge"):
        nn.load_lora_state_dict(model, saved)


def test_base_checkpoint_names_are_unchanged():
    model = _lm()
    base = model.state_dict()
    nn.add_lora(model, ["*.qkv"], rank=2, rng=0)
    keys = list(model.state_dict())
    assert [k for k in keys if ".lora_" not in k] == list(base)
    result = model.load_state_dict(base, strict=False)
    assert sorted(result.missing_keys) == sorted(nn.lora_state_dict(model))


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=0), "rank must be a positive integer, got 0"),
        (dict(rank=-2), "rank must be a positive integer, got -2"),
        (dict(rank=2.0), "rank must be a positive integer"),
        (dict(rank=True), "rank must be a positive integer"),
        (dict(rank=17), r"rank 17 is larger than min\(in_features, out_features\) = 16"),
        (dict(rank=2, alpha=0), "alpha must be a finite number > 0"),
        (dict(rank=2, alpha=-1.0), "alpha must be a finite number > 0"),
        (dict(rank=2, alpha=float("nan")), "alpha must be a finite number > 0"),
        (dict(rank=2, dropout=1.0), r"dropout must be a probability in \[0, 1\)"),
        (dict(rank=2, dropout=-0.1), r"dropout must be a probability in \[0, 1\)"),
        (dict(rank=2, patterns=["*.nothing"]), "pattern '\\*.nothing' matches no Linear layer"),
        (dict(rank=2, patterns=[]), "patterns must be a non-empty list"),
    ],
)
def test_bad_arguments_are_one_clear_value_error(kwargs, message):
    model = _lm()
    before = model.state_dict()
    patterns = kwargs.pop("patterns", ["*.qkv", "*.out_proj"])
    with pytest.raises(ValueError, match=message):
        nn.add_lora(model, patterns, **kwargs)
    assert not any(isinstance(m, nn.LoRALinear) for m in model.modules())  # nothing was changed
    assert all(p.requires_grad for p in model.parameters())
    assert list(model.state_dict()) == list(before)


def test_pattern_errors_list_the_linear_layers_and_refuse_double_adapters():
    model = _lm()
    with pytest.raises(ValueError, match="layers.0.self_attn.qkv, layers.0.self_attn.out_proj"):
        nn.add_lora(model, "qkv", rank=2)  # full names: "qkv" alone matches nothing
    nn.add_lora(model, "*.qkv", rank=2)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        nn.add_lora(model, ["*.out_proj", "*.qkv"], rank=2)
    assert not any(isinstance(m, nn.LoRALinear) for m in (model.layers[0].self_attn.out_proj,))


def test_from_linear_checks_and_shares():
    linear = nn.Linear(8, 3, rng=0)
    with pytest.raises(ValueError, match=r"rank 4 is larger than min\(in_features, out_features\) = 3"):
        nn.LoRALinear.from_linear(linear, rank=4)
    with pytest.raises(TypeError, match="expected an nn.Linear"):
        nn.LoRALinear.from_linear(nn.LayerNorm(3), rank=1)
    layer = nn.LoRALinear.from_linear(linear, rank=3, alpha=6, rng=0)
    assert layer.base_weight is linear.weight and layer.bias is linear.bias
    assert not linear.weight.requires_grad and not linear.bias.requires_grad
    assert layer.scaling == 2.0 and layer.lora_A.shape == (8, 3) and layer.lora_B.shape == (3, 3)
    assert np.abs(layer.lora_A.data).max() <= 8**-0.5 and layer.lora_A.dtype == np.float32
    assert "rank=3, alpha=6" in repr(layer)
