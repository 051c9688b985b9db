"""The Numba kernels equal their NumPy twins, and the backend switch works.

Every kernel of notes/KERNELS.md, forward and backward, on hypothesis-drawn shapes: equal to the
reference (npgrad/kernels/reference.py) to float32 round-off in float32 and to 1e-12 (relative to
the output's magnitude) in float64; strided, broadcast and read-only inputs; masked, causal and
fully masked attention rows; the threaded split; then ng.set_backend / NPGRAD_BACKEND /
ng.use_backend and gradcheck through the ops under the Numba backend.

Compile time: each kernel is compiled once per dtype (float32, float64; the wrappers make every
input C-contiguous, so no other signatures appear), ~0.5-1 s each on a cold cache, cached on disk.
Shapes: N rows, V classes, C features, B batch, Lq/Lk query/key length, D head size.
"""

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad.kernels import reference as R
from npgrad.kernels import tuning

N = pytest.importorskip("npgrad.kernels.numba_kernels", reason="numba is not available")

DTYPES = [np.float32, np.float64]
FEW = settings(max_examples=6, deadline=None)
# float32: a few dozen ulp (summation order differs: SIMD partial sums vs NumPy's pairwise sums,
# and the polynomial exp is within ~2 ulp of libm's); float64: 1e-12.
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def assert_close(actual, expected, dtype, what="", scale=None):
    """|actual - expected| <= tol (|expected| + scale), scale = max|expected| unless given: relative
    to the output's magnitude (or to the magnitude of the terms that cancel into it)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype == dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    tol = TOL[dtype]
    if scale is None:
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(scale, 1e-30), err_msg=what)


def assert_all_close(actual, expected, dtype, what=""):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, dtype, f"{what} output {i}")


def data(seed, shape, dtype, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


rows_shapes = st.tuples(st.integers(1, 9), st.integers(1, 70))  # (N, V)
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**16)


# ---------------------------------------------------------------------------------- rows


@FEW
@given(shape=rows_shapes, dtype=dtypes, seed=seeds)
def test_softmax_and_log_softmax_equal_the_reference(shape, dtype, seed):
    x, g = data(seed, shape, dtype), data(seed + 1, shape, dtype, 1.0)
    y = N.softmax_forward(x)
    assert_close(y, R.softmax_forward(x), dtype, "softmax_forward")
    assert_close(N.softmax_backward(y, g), R.softmax_backward(y, g), dtype, "softmax_backward")
    out = N.log_softmax_forward(x)
    assert_close(out, R.log_softmax_forward(x), dtype, "log_softmax_forward")
    assert_close(N.log_softmax_backward(out, g), R.log_softmax_backward(out, g), dtype, "log_softmax_backward")


@FEW
@given(
    shape=rows_shapes,
    dtype=dtypes,
    seed=seeds,
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    ignore_index=st.sampled_from([-100, 0]),
)
@example(shape=(1, 1), dtype=np.float32, seed=0, smoothing=0.1, ignore_index=-100)  # the loss cancels to 0
def test_cross_entropy_equals_the_reference(shape, dtype, seed, smoothing, ignore_index):
    num_rows, num_classes = shape
    rng = np.random.default_rng(seed)
    x = data(seed, shape, dtype)
    target = rng.integers(0, num_classes, num_rows)
    target[rng.random(num_rows) < 0.3] = ignore_index if ignore_index < 0 else target[0]
    loss, lse = N.cross_entropy_forward(x, target, ignore_index, smoothing)
    ref_loss, ref_lse = R.cross_entropy_forward(x, target, ignore_index, smoothing)
    # loss = lse - (1 - eps) x_t - eps mean(x) and lse = max(x) + log sum exp(x - max(x)) cancel (to exactly 0
    # for V = 1): relative to their terms, |lse| + max|x|, not to the result.
    terms = float(np.max(np.abs(ref_lse)) + np.max(np.abs(x)))
    assert_close(loss, ref_loss, dtype, "cross_entropy loss", scale=terms)
    assert_close(lse, ref_lse, dtype, "cross_entropy lse", scale=terms)
    assert np.all(loss[target == ignore_index] == 0)
    gloss = data(seed + 2, num_rows, dtype, 1.0)
    # glogits = gloss (p - q), p and q in [0, 1] (p - q = 1 - (1 - eps) - eps = 0 for V = 1): terms of size |gloss|
    assert_close(
        N.cross_entropy_backward(x, target, ref_lse, gloss, ignore_index, smoothing),
        R.cross_entropy_backward(x, target, ref_lse, gloss, ignore_index, smoothing),
        dtype,
        "cross_entropy_backward",
        scale=float(np.max(np.abs(gloss))),
    )


@FEW
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 40)),
    dtype=dtypes,
    seed=seeds,
    offset=st.sampled_from([0.0, 50.0]),
)
def test_layer_norm_and_add_layer_norm_equal_the_reference(shape, dtype, seed, offset):
    # offset: |mean| >> std, where a one-pass variance would lose float32 precision
    x = data(seed, shape, dtype) + dtype(offset)
    r, g = data(seed + 1, shape, dtype), data(seed + 2, shape, dtype)
    w, b = data(seed + 3, shape[1], dtype, 1.0), data(seed + 4, shape[1], dtype, 1.0)
    forward = N.layer_norm_forward(x, w, b, 1e-5)
    reference = R.layer_norm_forward(x, w, b, 1e-5)
    assert_all_close(forward, reference, dtype, "layer_norm_forward")
    _, mean, rstd = reference
    gx, gw, gb = N.layer_norm_backward(g, x, w, mean, rstd)
    ref_gx, ref_gw, ref_gb = R.layer_norm_backward(g, x, w, mean, rstd)
    # gx = rstd (g w - mean(g w) - xhat mean(g w xhat)): its terms cancel (exactly, when C = 1)
    assert_close(gx, ref_gx, dtype, "layer_norm_backward gx", scale=float(np.max(rstd) * np.max(np.abs(g * w))))
    assert_close(gw, ref_gw, dtype, "layer_norm_backward gw")
    assert_close(gb, ref_gb, dtype, "layer_norm_backward gb")
    assert_all_close(
        N.add_layer_norm_forward(x, r, w, b, 1e-5),
        R.add_layer_norm_forward(x, r, w, b, 1e-5),
        dtype,
        "add_layer_norm_forward",
    )


@FEW
@given(
    num_ids=st.integers(0, 40), num_embeddings=st.integers(1, 12), features=st.integers(1, 40), dtype=dtypes, seed=seeds
)
def test_embedding_backward_equals_the_reference(num_ids, num_embeddings, features, dtype, seed):
    ids = np.random.default_rng(seed).integers(0, num_embeddings, num_ids)  # repeats are likely
    gy = data(seed, (num_ids, features), dtype)
    gw = N.embedding_backward(ids, gy, num_embeddings)
    assert_close(gw, R.embedding_backward(ids, gy, num_embeddings), dtype, "embedding_backward")
    expected = np.zeros((num_embeddings, features), dtype)
    np.add.at(expected, ids, gy)
    np.testing.assert_array_equal(gw, expected)  # same order of additions as np.add.at: identical


# ----------------------------------------------------------------------------------- gelu

approximations = st.sampled_from(["none", "tanh"])


@FEW
@given(shape=st.lists(st.integers(0, 7), max_size=3), dtype=dtypes, seed=seeds, approximate=approximations)
def test_gelu_equals_the_reference(shape, dtype, seed, approximate):
    # Any shape: 0-d, empty, 1- to 3-D (the kernels flatten).
    x, gy = data(seed, tuple(shape), dtype), data(seed + 1, tuple(shape), dtype, 1.0)
    # Relative to the terms that cancel (x Phi(x) with Phi near 0 for x << 0): an array holding only tail values
    # (a 0-d x = -5, say) has a tiny output that both twins compute to the same absolute, not relative, accuracy.
    scale_y = float(np.max(np.abs(x)) + 1.0) if x.size else 0.0
    scale_g = float(np.max(np.abs(gy) * (np.abs(x) + 1.0))) if x.size else 0.0
    assert_close(N.gelu_forward(x, approximate), R.gelu_forward(x, approximate), dtype, "gelu_forward", scale_y)
    assert_close(
        N.gelu_backward(x, gy, approximate), R.gelu_backward(x, gy, approximate), dtype, "gelu_backward", scale_g
    )


def _terms_scale(x, gy):
    """|gy| (Phi(x) + |x| phi(x)): the magnitude of the terms that cancel into the exact GELU's gx."""
    x64 = x.astype(np.float64)
    return np.abs(gy) * (R.normal_cdf(x64) + np.abs(x64) * np.exp(-0.5 * x64 * x64) / np.sqrt(2 * np.pi))


def test_gelu_exact_float32_is_within_a_few_ulp_of_the_reference():
    # Same rational erf in the same Horner order; only FMA contraction differs. Absolute in Phi
    # (as the reference's 1 + erf is), so the bound on y is a few ulp of |x| (or of 1 near 0).
    x = np.linspace(-12, 12, 48001).astype(np.float32)
    gy = data(1, x.shape, np.float32, 1.0)
    eps = np.finfo(np.float32).eps
    error = np.abs(N.gelu_forward(x, "none") - R.gelu_forward(x, "none"))
    assert np.all(error <= 4 * eps * (np.abs(x) + 1)), np.max(error / (eps * (np.abs(x) + 1)))
    error = np.abs(N.gelu_backward(x, gy, "none") - R.gelu_backward(x, gy, "none"))
    assert np.all(error <= 4 * eps * (_terms_scale(x, gy) + np.abs(gy)))


def test_gelu_exact_float64_matches_codys_erf_relatively_also_in_the_tail():
    # Cody's erfc ported into the kernel: relative 1e-12 wherever the result is a normal number
    # (x > -37.5), where (1 + erf) / 2 would have no correct digit below x ~ -8.
    x = np.concatenate([np.linspace(-40, 40, 40001), [-0.46875 * np.sqrt(2), 4 * np.sqrt(2), -4 * np.sqrt(2)]])
    gy = data(2, x.shape, np.float64, 1.0)
    y, expected = N.gelu_forward(x, "none"), R.gelu_forward(x, "none")
    normal = np.abs(expected) > np.finfo(np.float64).tiny
    assert np.count_nonzero(normal & (x < -30)) > 1000
    np.testing.assert_allclose(y[normal], expected[normal], rtol=1e-12, atol=0)
    assert np.all(np.abs(y[~normal]) <= 1e-300)
    gx, expected = N.gelu_backward(x, gy, "none"), R.gelu_backward(x, gy, "none")
    # (exp(-x^2/2) reaches the subnormals near x = -38.6: absolute there)
    assert np.all(np.abs(gx - expected) <= 1e-12 * _terms_scale(x, gy) + np.finfo(np.float64).tiny)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_tanh_kernel_is_relatively_accurate_where_one_plus_tanh_cancels(dtype):
    # y = x / (1 + exp(-2u)) in the kernel: relative accuracy for x < 0, where the reference's
    # x/2 (1 + tanh u) keeps only an absolute one. Compared with the formula in long double.
    low = -9.0 if dtype == np.float32 else -20.0  # exp(-2u) stays finite: y is a normal number
    x = np.linspace(low, 3.0, 24001).astype(dtype)
    xl = x.astype(np.longdouble)
    u = np.sqrt(np.longdouble(2) / np.pi) * (xl + np.longdouble(0.044715) * xl**3)
    exact = xl / (1 + np.exp(-2 * u))
    nonzero = x != 0
    relative = np.abs(N.gelu_forward(x, "tanh") - exact)[nonzero] / np.abs(exact[nonzero])
    # The problem's conditioning for x << 0: |x dy/dx / y| ~ |x d(2u)/dx| ~ 6|u| (u ~ x^3), i.e. an
    # ulp of x (or of u) moves y by ~6|u| ulp (up to ~900 ulp at x = -20 in float64).
    allowed = 2 * np.finfo(dtype).eps * (1 + 6 * np.abs(u[nonzero]))
    assert np.all(relative <= allowed), np.max(relative / allowed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_special_values_strided_inputs_and_errors(dtype):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30], dtype)
    gy = np.ones_like(x)
    for approximate in ("none", "tanh"):
        with np.errstate(all="ignore"):
            y, expected = N.gelu_forward(x, approximate), R.gelu_forward(x, approximate)
            np.testing.assert_array_equal(y, expected)  # NaN where NaN, signs of 0
            assert np.array_equal(np.signbit(y), np.signbit(expected), equal_nan=True)
            np.testing.assert_array_equal(N.gelu_backward(x, gy, approximate), R.gelu_backward(x, gy, approximate))
        base = data(3, (5, 8), dtype)
        for view in (base[:, ::2], base.T, base[::-1]):  # strided views
            g = np.broadcast_to(data(4, (1,) + view.shape[1:], dtype), view.shape)  # zero stride, read-only
            assert_close(N.gelu_forward(view, approximate), R.gelu_forward(view, approximate), dtype, "strided")
            assert_close(N.gelu_backward(view, g, approximate), R.gelu_backward(view, g, approximate), dtype, "strided")
        before = base.copy()
        N.gelu_forward(base, approximate), N.gelu_backward(base, base, approximate)
        np.testing.assert_array_equal(base, before)  # inputs never modified
    for module in (N, R):
        with pytest.raises(ValueError, match="gelu_forward: approximate must be 'none' or 'tanh'"):
            module.gelu_forward(x, "fast")
    with pytest.raises(ValueError, match="gelu_backward: shapes must match"):
        N.gelu_backward(x, gy[:3], "none")
    with pytest.raises(TypeError, match="gelu_forward: expected a float32 or float64 array"):
        N.gelu_forward(np.arange(3), "none")


def test_gelu_threaded_split_gives_the_single_thread_result():
    x, gy = data(5, (300, 700), np.float32), data(6, (300, 700), np.float32)  # > 2**15 elements a thread
    results = {}
    try:
        for threads in (1, 2, 3):
            N.set_num_threads(threads)
            results[threads] = [N.gelu_forward(x, a) for a in ("none", "tanh")] + [
                N.gelu_backward(x, gy, a) for a in ("none", "tanh")
            ]
    finally:
        N.set_num_threads(None)
    for threads in (2, 3):
        for single, split in zip(results[1], results[threads]):
            np.testing.assert_array_equal(split, single)  # elements are independent


# ----------------------------------------------------------------------------- attention


def attention_case(seed, batch, lq, lk, head_size, value_size, dtype):
    q = data(seed, (batch, lq, head_size), dtype, 1.0)
    k = data(seed + 1, (batch, lk, head_size), dtype, 1.0)
    v = data(seed + 2, (batch, lk, value_size), dtype)
    gout = data(seed + 3, (batch, lq, value_size), dtype)
    return q, k, v, gout


def check_attention(q, k, v, gout, mask, is_causal, scale, dtype):
    out, probs = N.attention_forward(q, k, v, mask, is_causal, scale)
    ref_out, ref_probs = R.attention_forward(q, k, v, mask, is_causal, scale)
    assert_close(out, ref_out, dtype, "attention out")
    assert_close(probs, ref_probs, dtype, "attention probs")
    assert np.array_equal(probs == 0, ref_probs == 0)  # the same keys excluded, exactly
    grads = N.attention_backward(q, k, v, ref_probs, gout, scale)
    assert_all_close(grads, R.attention_backward(q, k, v, ref_probs, gout, scale), dtype, "attention_backward")
    return probs, out, grads


@FEW
@given(
    batch=st.integers(1, 4),
    lq=st.integers(1, 7),
    lk=st.integers(1, 7),
    head_size=st.integers(1, 6),
    value_size=st.integers(1, 5),
    dtype=dtypes,
    seed=seeds,
    is_causal=st.booleans(),
    mask_kind=st.sampled_from(["none", "random", "shared"]),
)
def test_attention_equals_the_reference(batch, lq, lk, head_size, value_size, dtype, seed, is_causal, mask_kind):
    q, k, v, gout = attention_case(seed, batch, lq, lk, head_size, value_size, dtype)
    rng = np.random.default_rng(seed)
    mask = None
    if mask_kind == "random":
        mask = rng.random((batch, lq, lk)) < 0.7
    elif mask_kind == "shared":  # a zero-stride broadcast view
        mask = np.broadcast_to(rng.random((1, lq, lk)) < 0.7, (batch, lq, lk))
    probs, _, _ = check_attention(q, k, v, gout, mask, is_causal, 1.0 / np.sqrt(head_size), dtype)
    allowed = np.ones((batch, lq, lk), bool) if mask is None else mask.copy()
    if is_causal:
        allowed &= np.tri(lq, lk, dtype=bool)
    assert np.all(probs[~allowed] == 0)
    rows_with_keys = allowed.any(axis=-1)
    np.testing.assert_allclose(probs.sum(axis=-1)[rows_with_keys], 1, rtol=TOL[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_q_kt_copy_on_both_sides_of_its_thresholds(dtype):
    # The copy of k^T is taken for many queries and small heads (tuning.py), skipped otherwise.
    lq, head_size = tuning.ATTENTION_KT_COPY_MIN_QUERIES, tuning.ATTENTION_KT_COPY_MAX_HEAD_SIZE
    for queries, size in ((lq, head_size), (lq - 1, head_size), (lq, head_size + 1)):
        q, k, v, gout = attention_case(5, 2, queries, 9, size, 3, dtype)
        check_attention(q, k, v, gout, None, True, 1.0 / np.sqrt(size), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_are_zero_with_zero_gradients_under_both_backends(dtype):
    q, k, v, gout = attention_case(7, 3, 4, 5, 3, 2, dtype)
    mask = np.ones((3, 4, 5), bool)
    mask[0, 1] = False  # one query with no key
    mask[2] = False  # a whole batch entry (a padding sentence)
    mask[1, :, 3:] = False  # padding keys
    probs, out, (gq, gk, gv) = check_attention(q, k, v, gout, mask, False, 0.5, dtype)
    for name, array in (("probs", probs), ("out", out), ("gq", gq), ("gk", gk), ("gv", gv)):
        assert np.all(np.isfinite(array)), name
    assert np.all(probs[0, 1] == 0) and np.all(out[0, 1] == 0) and np.all(gq[0, 1] == 0)
    assert np.all(probs[2] == 0) and np.all(out[2] == 0)
    assert np.all(gq[2] == 0) and np.all(gk[2] == 0) and np.all(gv[2] == 0)
    assert np.all(probs[1, :, 3:] == 0) and np.all(gk[1, 3:] == 0) and np.all(gv[1, 3:] == 0)
    # causal with more queries than keys leaves no row empty; a mask that removes key 0 does
    causal_mask = np.ones((3, 4, 5), bool)
    causal_mask[:, :, 0] = False  # query 0 may only see key 0 under is_causal: now nothing
    probs, out, _ = check_attention(q, k, v, gout, causal_mask, True, 0.5, dtype)
    assert np.all(probs[:, 0] == 0) and np.all(out[:, 0] == 0)


# -------------------------------------------------------------------- layouts and dtypes


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_broadcast_and_read_only_inputs(dtype):
    base = data(11, (6, 20), dtype)
    g = data(12, (6, 10), dtype)
    for x in (base[:, ::2], base.T[:10].T[:, :10], base[::-1, 3:13]):  # strided views
        assert not x.flags.c_contiguous
        assert_close(N.softmax_forward(x), R.softmax_forward(x), dtype, "strided softmax")
        assert_close(N.log_softmax_backward(x, g), R.log_softmax_backward(x, g), dtype, "strided log_softmax")
    row = data(13, (1, 10), dtype)
    broadcast = np.broadcast_to(row, (6, 10))  # zero stride, read-only
    assert_close(N.softmax_forward(broadcast), R.softmax_forward(broadcast), dtype, "broadcast softmax")
    w, b = np.ones(10, dtype), np.zeros(10, dtype)
    x = base[:, ::2]
    assert_all_close(
        N.add_layer_norm_forward(x, broadcast, w, b, 1e-5),
        R.add_layer_norm_forward(x, broadcast, w, b, 1e-5),
        dtype,
        "strided add_layer_norm",
    )
    q = data(14, (2, 3, 8), dtype)[:, :, ::2]  # (B,Lq,D) strided
    k = np.swapaxes(data(15, (2, 4, 5), dtype), 1, 2)[:, :, :4]  # (B,Lk,D) transposed
    v, gout = data(16, (2, 5, 3), dtype), data(17, (2, 3, 3), dtype)
    check_attention(q, k, v, gout, None, True, 0.3, dtype)
    # inputs are never modified
    before = base.copy()
    N.softmax_forward(base), N.layer_norm_forward(base, np.ones(20, dtype), np.zeros(20, dtype), 1e-5)
    np.testing.assert_array_equal(base, before)


def test_mixed_dtypes_follow_the_first_array_and_bad_dtypes_are_refused():
    y = R.softmax_forward(data(1, (3, 4), np.float32))
    gx = N.softmax_backward(y, data(2, (3, 4), np.float64))
    assert gx.dtype == np.float32
    with pytest.raises(TypeError, match="softmax_forward.*float32 or float64.*int64"):
        N.softmax_forward(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="must be 2-D"):
        N.softmax_forward(np.ones(3))
    with pytest.raises(ValueError, match="attention_forward: mask must have shape"):
        q = np.ones((2, 3, 4))
        N.attention_forward(q, q, q, np.ones((2, 3, 2), bool), False, 1.0)


def test_special_values_match_numpy():
    x = np.array([[0.0, -np.inf, 1.0, -np.inf], [-1000.0, 0.0, -50.0, 3.0], [1.0, np.nan, 0.0, 2.0]], np.float32)
    with np.errstate(invalid="ignore"):
        expected = R.softmax_forward(x)
    y = N.softmax_forward(x)
    np.testing.assert_array_equal(y[0, [1, 3]], 0)  # exp(-inf) = 0 exactly
    assert y[1, 0] == 0  # underflow to 0, as NumPy
    assert np.all(np.isnan(y[2])) and np.all(np.isnan(expected[2]))  # NaN propagates to the row
    assert_close(y[:2], expected[:2], np.float32, "softmax with -inf")


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_is_accurate_over_the_whole_range(dtype):
    # The kernels' vectorisable exp, seen through log_softmax_backward with gout = one-hot(0):
    # gx[n, j] = gout[n, j] - exp(out[n, j]) * 1, so -gx[:, 1:] = exp(out[:, 1:]).
    low = -87.0 if dtype == np.float32 else -708.0
    values = np.concatenate([np.linspace(low, 0, 20001), -np.geomspace(1e-30, 1, 200), [0.0]]).astype(dtype)
    out = values.reshape(-1, 1)
    out = np.concatenate([np.full_like(out, -np.inf), out], axis=1)  # (N, 2): column 0 carries gout
    gout = np.zeros_like(out)
    gout[:, 0] = 1
    ours = -N.log_softmax_backward(out, gout)[:, 1]
    exact = np.exp(values.astype(np.longdouble))
    tiny = np.finfo(dtype).tiny
    normal = exact > tiny
    ulps = np.abs(ours[normal] - exact[normal]) / np.spacing(exact[normal].astype(dtype))
    assert ulps.max() <= 3, ulps.max()


def test_threaded_split_gives_the_single_thread_result():
    # Large enough to be split in chunks (> tuning.MIN_WORK_PER_THREAD elements per thread).
    x = data(21, (64, 3000), np.float32)
    g = data(22, (64, 3000), np.float32)
    w, b = data(23, 3000, np.float32, 1.0), data(24, 3000, np.float32, 1.0)
    ids = np.random.default_rng(25).integers(0, 50, 3000)
    gy = data(26, (3000, 64), np.float32)
    results = {}
    try:
        for threads in (1, 2, 3):
            N.set_num_threads(threads)
            results[threads] = (
                N.softmax_forward(x),
                N.log_softmax_backward(x, g),
                *N.layer_norm_backward(g, x, w, *N.layer_norm_forward(x, w, b, 1e-5)[1:]),
                N.embedding_backward(ids, gy, 50),
            )
    finally:
        N.set_num_threads(None)
    for threads in (2, 3):
        for i, (single, split) in enumerate(zip(results[1], results[threads])):
            if i in (3, 4):  # gw, gb: per-thread partial sums, added in another order
                assert_close(split, single, np.float32, f"output {i}, {threads} threads")
            else:  # rows (or columns) are independent: bit-identical
                np.testing.assert_array_equal(split, single, err_msg=f"output {i}, {threads} threads")
    with pytest.raises(ValueError, match="positive integer"):
        N.set_num_threads(0)


def test_tuning_thresholds_choose_a_path_not_a_result(monkeypatch):
    # The extremes of every threshold in tuning.py: each path gives the result of the default path.
    x = data(31, (6, 50), np.float32)
    q, k, v, gout = attention_case(32, 3, 5, 6, 4, 2, np.float32)
    ids = np.random.default_rng(33).integers(0, 7, 40)
    gy = data(34, (40, 50), np.float32)
    w, b = data(35, 50, np.float32, 1.0), data(36, 50, np.float32, 1.0)

    def run():
        return (
            N.softmax_forward(x),
            *N.attention_forward(q, k, v, None, True, 0.5),
            *N.layer_norm_backward(gy[:6], x, w, *N.layer_norm_forward(x, w, b, 1e-5)[1:]),
            N.embedding_backward(ids, gy, 7),
        )

    default = run()
    try:
        N.set_num_threads(2)
        for name, value in (
            ("MIN_WORK_PER_THREAD", 1),
            ("ATTENTION_KT_COPY_MIN_QUERIES", 1),
            ("ATTENTION_KT_COPY_MAX_HEAD_SIZE", 1 << 20),
            ("CACHE_LINE_BYTES", 4),
        ):
            monkeypatch.setattr(tuning, name, value)
        for i, (changed, expected) in enumerate(zip(run(), default)):
            assert_close(changed, expected, np.float32, f"output {i}")
    finally:
        N.set_num_threads(None)


def test_kernel_cache_goes_stale_with_any_source_of_the_package(tmp_path, monkeypatch):
    # Numba stamps a cached function with its own file only; the kernels compile in _exp, erf and
    # constants from other files, so their stamp covers every module of the package and reference.py.
    from npgrad.kernels.numba_kernels import _jit, softmax

    locator = softmax._softmax_forward_kernel._cache._impl.locator
    assert isinstance(locator, _jit._PackageSourceLocator)
    assert locator.get_cache_path() == os.path.join(os.path.dirname(softmax.__file__), "__pycache__")
    names = {os.path.basename(path) for path in _jit._sources()}
    assert {"_intrinsics.py", "_parallel.py", "softmax.py", "gelu.py", "reference.py"} <= names
    helper = tmp_path / "helper.py"
    helper.write_text("A = 1\n")
    monkeypatch.setattr(_jit, "_sources", lambda: [str(helper)])
    before = locator.get_source_stamp()
    helper.write_text("A = 22\n")
    assert locator.get_source_stamp() != before


def _softmax_in_child(queue):
    queue.put(float(N.softmax_forward(np.ones((64, 4096), np.float32)).sum()))


def test_kernels_work_in_a_forked_child():
    # The thread pool is not inherited across fork: the child must start its own, not hang.
    N.softmax_forward(np.ones((64, 4096), np.float32))  # the parent's pool exists now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_softmax_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == pytest.approx(64.0)


# ---------------------------------------------------------------------- the backend switch


@pytest.fixture
def restore_backend():
    previous = ng.get_backend()
    yield
    ng.set_backend(previous)


def test_set_backend_selects_the_kernels(restore_backend):
    from npgrad.kernels import K

    ng.set_backend("numpy")
    assert ng.get_backend() == "numpy"
    assert K.softmax_forward is R.softmax_forward
    ng.set_backend("numba")
    assert ng.get_backend() == "numba"
    assert K.softmax_forward is N.softmax_forward
    assert K.attention_backward is N.attention_backward


def test_use_backend_is_scoped_and_restores_on_error(restore_backend):
    from npgrad.kernels import K

    ng.set_backend("numba")
    with ng.use_backend("numpy"):
        assert ng.get_backend() == "numpy" and K.layer_norm_forward is R.layer_norm_forward
        with ng.use_backend("numba"):
            assert K.layer_norm_forward is N.layer_norm_forward
        assert ng.get_backend() == "numpy"
    assert ng.get_backend() == "numba"
    with pytest.raises(RuntimeError, match="boom"):
        with ng.use_backend("numpy"):
            raise RuntimeError("boom")
    assert ng.get_backend() == "numba"


def test_unknown_backend_is_refused(restore_backend):
    before = ng.get_backend()
    with pytest.raises(ValueError, match="unknown backend 'cuda'.*numba.*numpy"):
        ng.set_backend("cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        with ng.use_backend("torch"):
            pass
    assert ng.get_backend() == before


def _python(code, **env):
    full_env = {**os.environ, **env}
    full_env.pop("NPGRAD_BACKEND", None) if "NPGRAD_BACKEND" not in env else None
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=120,
    )


def test_environment_variable_and_lazy_numba_import():
    code = (
        "import sys, npgrad as ng; lazy = 'numba' not in sys.modules; "
        "print(lazy, ng.get_backend(), 'npgrad.kernels.numba_kernels' in sys.modules)"
    )
    # import npgrad does not import numba; the default is numba when it imports
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "numba", "False"]
    result = _python(code, NPGRAD_BACKEND="numpy")
    assert result.stdout.split() == ["True", "numpy", "False"]
    result = _python(code, NPGRAD_BACKEND=" NumBa ")
    assert result.stdout.split()[1] == "numba"
    result = _python(code, NPGRAD_BACKEND="fortran")
    assert result.returncode != 0 and "unknown backend 'fortran'" in result.stderr


# ----------------------------------------------------------- the ops on the Numba kernels


@pytest.mark.parametrize(
    "case",
    [
        "softmax",
        "log_softmax",
        "cross_entropy",
        "layer_norm",
        "add_layer_norm",
        "attention",
        "embedding",
        "gelu",
        "gelu_tanh",
    ],
)
def test_gradcheck_passes_through_the_ops_on_numba_kernels(case, restore_backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5))
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    target = np.array([[0, 4, -100], [2, 2, 1]])
    ids = np.array([[1, 3, 1], [0, 3, 3]])
    mask = np.array([[True, True, False], [False, False, False]])[:, None, None, :]  # (B,1,1,Lk), item 1 empty
    functions = {
        "softmax": (lambda x: F.softmax(x, axis=1), [x]),
        "log_softmax": (lambda x: F.log_softmax(x), [x]),
        "cross_entropy": (lambda x: F.cross_entropy(x, target, label_smoothing=0.1), [x]),
        "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b), [x, w, b]),
        "add_layer_norm": (lambda x, r, w, b: F.add_layer_norm(x, r, w, b), [x, x[::-1].copy(), w, b]),
        "attention": (
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=True),
            [rng.standard_normal((2, 2, 4, 3)), rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 2, 3, 2))],
        ),
        "embedding": (lambda w: F.embedding(ids, w), [rng.standard_normal((5, 4))]),
        "gelu": (lambda x: F.gelu(x), [x * 2]),
        "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), [x * 2]),
    }
    fn, inputs = functions[case]
    ng.set_backend("numba")
    assert ng.gradcheck(fn, inputs)
