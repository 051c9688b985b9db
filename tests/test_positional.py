"""Positional encodings and the attention module that uses them (transformer/positional.py, attention.py).

Each encoding is checked against a direct transcription of its paper's formula (loops over i, j),
its backward by gradcheck through MultiHeadAttention, and the explicit attention path against the
fused one.
"""

import math

import numpy as np
import pytest

import npgrad as ng
from transformer.attention import MultiHeadAttention, causal_mask
from transformer.positional import (
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    alibi_bias,
    alibi_slopes,
    relative_positions,
    sinusoidal_table,
)

B, T, C, H = 2, 5, 8, 2
D = C // H


@pytest.fixture(autouse=True)
def numpy_backend():
    with ng.use_backend("numpy"):
        yield


def attention(positional=None, self_attention=True, seed=0, dtype=np.float64, **kw):
    return MultiHeadAttention(
        C,
        H,
        0.0,
        self_attention=self_attention,
        positional=positional,
        max_relative_distance=2,
        rng=np.random.default_rng(seed),
        dtype=dtype,
        **kw,
    )


def padding_mask():
    real = np.ones((B, T), dtype=bool)
    real[0, 3:] = False
    return real[:, None, None, :]  # (B, 1, 1, T)


# ---------------------------------------------------------------------------------- absolute


def test_sinusoidal_table_is_the_papers_formula():
    table = sinusoidal_table(7, 6)
    for pos in range(7):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-15)
            assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-15)
    assert sinusoidal_table(3, 5).shape == (3, 5)  # odd width works
    assert sinusoidal_table(3, 4, np.float32).dtype == np.float32


def test_sinusoidal_positions_extend_past_the_table():
    enc = SinusoidalPositionalEncoding(6, max_len=4, dtype=np.float64)
    np.testing.assert_array_equal(enc(3, offset=5).data, sinusoidal_table(8, 6)[5:8])
    assert enc.table.shape == (4, 6)  # the buffer is unchanged


# ---------------------------------------------------------------------------------- relative (Shaw et al.)


def test_relative_positions_are_clipped_distances():
    index = relative_positions(3, 5, max_distance=2)
    expected = np.array([[min(max(j - i, -2), 2) + 2 for j in range(5)] for i in range(3)])
    np.testing.assert_array_equal(index, expected)
    # A cached step: query 4 against keys 0..4.
    np.testing.assert_array_equal(relative_positions(1, 5, 2, query_offset=4), [[0, 0, 0, 1, 2]])


def naive_relative_attention(x, mha, mask):
    """Shaw et al. eq. (3)-(5) with explicit loops: e_ij = q_i (k_j + a^K_ij)^T / sqrt(D), z_i = sum a_ij (v_j + a^V_ij)."""
    qkv = x @ mha.qkv.weight.data + mha.qkv.bias.data
    q, k, v = (qkv[..., n * C : (n + 1) * C].reshape(B, T, H, D) for n in range(3))
    aK, aV = mha.relative.key_table.data, mha.relative.value_table.data
    kmax = mha.relative.max_distance
    z = np.zeros((B, T, H, D))
    for b in range(B):
        for h in range(H):
            for i in range(T):
                e = np.array(
                    [
                        q[b, i, h] @ (k[b, j, h] + aK[np.clip(j - i, -kmax, kmax) + kmax]) / math.sqrt(D)
                        for j in range(T)
                    ]
                )
                e = np.where(mask[b, 0, 0], e, -np.inf)
                a = np.exp(e - e.max())
                a /= a.sum()
                z[b, i, h] = sum(a[j] * (v[b, j, h] + aV[np.clip(j - i, -kmax, kmax) + kmax]) for j in range(T))
    return z.reshape(B, T, C) @ mha.out_proj.weight.data + mha.out_proj.bias.data


def test_relative_attention_matches_shaw_formula():
    mha = attention("relative")
    x = np.random.default_rng(1).standard_normal((B, T, C))
    mask = padding_mask()
    out = mha(ng.tensor(x), key_mask=mask).data
    np.testing.assert_allclose(out, naive_relative_attention(x, mha, mask), atol=1e-12)


# ---------------------------------------------------------------------------------- rotary


def test_rotary_rotates_pairs_and_preserves_norms():
    rope = RotaryEmbedding(D, max_len=8, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((1, 1, 6, D))
    out = rope(ng.tensor(x), offset=2).data
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)
    # Pair (i, i + D/2) as a complex number, multiplied by e^{i p theta_i}.
    half = D // 2
    theta = 10000.0 ** (-np.arange(half) * 2 / D)
    p = np.arange(2, 8)[:, None]
    z = (x[0, 0, :, :half] + 1j * x[0, 0, :, half:]) * np.exp(1j * p * theta)
    np.testing.assert_allclose(out[0, 0, :, :half], z.real, atol=1e-12)
    np.testing.assert_allclose(out[0, 0, :, half:], z.imag, atol=1e-12)


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(D, max_len=4, dtype=np.float64)  # tables grow on demand
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 1, 1, D)), rng.standard_normal((1, 1, 1, D))

    def score(m, n):
        return float((rope(ng.tensor(q), m).data * rope(ng.tensor(k), n).data).sum())

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-12)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-6)


def test_rotary_gradcheck_full_jacobian():
    rope = RotaryEmbedding(D, max_len=8, dtype=np.float64)
    x = ng.tensor(np.random.default_rng(0).standard_normal((2, 3, D)), requires_grad=True)
    ng.gradcheck(lambda x: rope(x, offset=1), [x], mode="full")


def test_rotary_needs_even_head_size():
    with pytest.raises(ValueError, match="even head size"):
        RotaryEmbedding(5)


# ---------------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_as_in_the_paper():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -(h + 1) for h in range(8)])
    np.testing.assert_allclose(alibi_slopes(4), [2.0 ** -(2 * (h + 1)) for h in range(4)])
    # 6 heads: the 4-head slopes, then every other slope of the 8-head sequence.
    np.testing.assert_allclose(alibi_slopes(6), [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])


def test_alibi_bias_is_minus_slope_times_distance():
    slopes = alibi_slopes(2)
    bias = alibi_bias(slopes, 3, 4)
    for h in range(2):
        for i in range(3):
            for j in range(4):
                assert bias[h, i, j] == -slopes[h] * abs(i - j)
    # A cached step (query 3 against keys 0..3) is the last row of the full bias.
    np.testing.assert_array_equal(alibi_bias(slopes, 1, 4, query_offset=3), alibi_bias(slopes, 4, 4)[:, 3:4])


def test_alibi_attention_matches_formula():
    mha = attention("alibi")
    x = np.random.default_rng(2).standard_normal((B, T, C))
    out = mha(ng.tensor(x), causal=True).data
    qkv = x @ mha.qkv.weight.data + mha.qkv.bias.data
    q, k, v = (qkv[..., n * C : (n + 1) * C].reshape(B, T, H, D).transpose(0, 2, 1, 3) for n in range(3))
    slopes = alibi_slopes(H)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(D)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    scores = scores - slopes[:, None, None] * (i - j)
    scores = np.where(j <= i, scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    expected = (w @ v).transpose(0, 2, 1, 3).reshape(B, T, C) @ mha.out_proj.weight.data + mha.out_proj.bias.data
    np.testing.assert_allclose(out, expected, atol=1e-12)


# ---------------------------------------------------------------------------------- the attention module


@pytest.mark.parametrize("positional", [None, "relative", "rope", "alibi"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_gradcheck_inputs_and_parameters(positional, causal):
    mha = attention(positional)
    mask = padding_mask()
    params = [(name, p) for name, p in mha.named_parameters()]
    x = ng.tensor(np.random.default_rng(3).standard_normal((B, T, C)), requires_grad=True)
    inputs = [x] + [ng.tensor(p.data.copy(), requires_grad=True) for _, p in params]

    def fn(x, *tensors):
        saved = {}
        for (name, p), t in zip(params, tensors):
            module_name, _, local = name.rpartition(".")
            module = mha if not module_name else dict(mha.named_modules())[module_name]
            saved[(module_name, local)] = (module, p)
            module._parameters[local] = t
        try:
            return mha(x, key_mask=mask, causal=causal)
        finally:
            for (_, local), (module, p) in saved.items():
                module._parameters[local] = p

    ng.gradcheck(fn, inputs, mode="fast", n_directions=2, atol=1e-8, rtol=1e-6)


def test_cross_attention_gradcheck_and_cache():
    mha = attention(self_attention=False)
    rng = np.random.default_rng(4)
    x = ng.tensor(rng.standard_normal((B, 3, C)), requires_grad=True)
    memory = ng.tensor(rng.standard_normal((B, T, C)), requires_grad=True)
    mask = padding_mask()
    ng.gradcheck(lambda x, m: mha(x, m, key_mask=mask), [x, memory], mode="fast", atol=1e-8, rtol=1e-6)
    cache = mha.precompute_memory(memory, {})
    np.testing.assert_allclose(mha(x, key_mask=mask, cache=cache).data, mha(x, memory, key_mask=mask).data, atol=1e-13)


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_path_equals_fused_path(causal):
    """The npgrad-ops attention (used by relative/ALiBi) and the fused primitive compute the same thing,
    with masks, causal order and a query offset; forward and gradients."""
    mha = attention(None)
    rng = np.random.default_rng(5)
    q, k, v = (ng.tensor(rng.standard_normal((B, H, n, D)), requires_grad=True) for n in (3, 5, 5))
    mask = padding_mask()
    fused, _ = mha._attend(q, k, v, mask, causal, offset=2)
    explicit, _ = mha._explicit_attention(q, k, v, mask if not causal else mask & causal_mask(3, 5, 2), False, 2, 0.0)
    np.testing.assert_allclose(explicit.data, fused.data, atol=1e-13)
    g = rng.standard_normal(fused.shape)
    grads_fused = ng.grad(fused, [q, k, v], g)
    grads_explicit = ng.grad(explicit, [q, k, v], g)
    for a, b in zip(grads_explicit, grads_fused):
        np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("positional", ["relative", "alibi"])
def test_fully_masked_rows_give_zeros_and_finite_gradients(positional):
    mha = attention(positional)
    x = ng.tensor(np.random.default_rng(6).standard_normal((B, T, C)), requires_grad=True)
    real = np.ones((B, T), dtype=bool)
    real[1] = False  # a sequence that is all padding
    out = mha(x, key_mask=real[:, None, None, :])
    out.backward(np.ones(out.shape))
    assert np.isfinite(out.data).all() and np.isfinite(x.grad).all()
    # No key visible: the attention output is 0, so the layer output is the output projection's bias.
    np.testing.assert_allclose(out.data[1], np.broadcast_to(mha.out_proj.bias.data, (T, C)), atol=1e-15)


@pytest.mark.parametrize("positional", [None, "relative", "rope", "alibi"])
def test_self_attention_cache_equals_full_causal(positional):
    mha = attention(positional)
    x = np.random.default_rng(7).standard_normal((B, T, C))
    full = mha(ng.tensor(x), causal=True).data
    cache = {}
    with ng.no_grad():
        steps = [mha(ng.tensor(x[:, t : t + 1]), causal=True, cache=cache).data for t in range(T)]
    assert cache["k"].shape == (B, H, T, D)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-12)


def test_attention_argument_errors():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="positional must be one of"):
        MultiHeadAttention(8, 2, positional="sinusoidal")
    with pytest.raises(ValueError, match="self-attention only"):
        MultiHeadAttention(8, 2, self_attention=False, positional="rope")
    with pytest.raises(ValueError, match="memory"):
        attention(self_attention=False)(ng.tensor(np.zeros((1, 2, C))))
