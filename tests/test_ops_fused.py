"""The fused primitives: softmax, log_softmax, cross_entropy, layer_norm, add_layer_norm,
scaled_dot_product_attention, multi_head_attention.

Forward values against plain NumPy formulas, gradients against finite differences (float64,
hypothesis-drawn shapes and options), the mathematical properties each op must have, the
fully-masked-row policy, dtype preservation and the errors users see.
These run on the NumPy reference kernels (fast to call, no JIT compilation); that the ops give the
same results on the Numba kernels is tested in test_ops_fused_backends.py.
Legend: B batch, H heads, Lq/Lk query/key length, D head size, C width, V classes, N rows.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad.testing import assert_gradients_close, attention_masks, class_targets, float_arrays, shapes

# About half the profile's examples (8 by default; HYPOTHESIS_PROFILE=thorough gives 150).
FEW = settings(max_examples=max(8, settings().max_examples // 2), deadline=None)


@pytest.fixture(autouse=True, scope="module")
def numpy_backend():
    with ng.use_backend("numpy"):
        yield


def rng(seed=0):
    return np.random.default_rng(seed)


def t(a, grad=True):
    return ng.tensor(a, requires_grad=grad)


# ------------------------------------------------------------------------------ NumPy formulas


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    return np.log(np_softmax(x, axis))


def np_cross_entropy(x, target, ignore_index=-100, eps=0.0, reduction="mean"):
    V = x.shape[-1]
    logp = np_log_softmax(x.reshape(-1, V))
    tgt = target.reshape(-1)
    kept = tgt != ignore_index
    nll = -logp[np.arange(len(tgt)), np.where(kept, tgt, 0)]
    smooth = -logp.mean(axis=-1)
    loss = np.where(kept, (1 - eps) * nll + eps * smooth, 0.0)
    if reduction == "none":
        return loss.reshape(target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / kept.sum()


def np_layer_norm(x, w=None, b=None, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def np_attention(q, k, v, mask=None, is_causal=False, scale=None):
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * q @ np.swapaxes(k, -1, -2)
    allowed = np.ones(s.shape, bool)
    if mask is not None:
        allowed = allowed & mask
    if is_causal:
        allowed = allowed & np.tri(s.shape[-2], s.shape[-1], dtype=bool)
    shift = np.where(allowed, s, -np.inf).max(-1, keepdims=True, initial=-1e300)
    e = np.exp(np.where(allowed, s - shift, -np.inf))
    denom = e.sum(-1, keepdims=True)
    p = e / np.where(denom == 0, 1, denom)
    return p @ v


def np_mha(x_q, x_kv, H, wq, wk, wv, wo, bq=0, bk=0, bv=0, bo=0, mask=None, is_causal=False):
    B, Lq, C = x_q.shape
    Lk = x_kv.shape[1]
    D = C // H
    q = (x_q @ wq + bq).reshape(B, Lq, H, D).transpose(0, 2, 1, 3)
    k = (x_kv @ wk + bk).reshape(B, Lk, H, D).transpose(0, 2, 1, 3)
    v = (x_kv @ wv + bv).reshape(B, Lk, H, D).transpose(0, 2, 1, 3)
    o = np_attention(q, k, v, mask, is_causal)
    return o.transpose(0, 2, 1, 3).reshape(B, Lq, C) @ wo + bo


# ------------------------------------------------------------------------------ forward values


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_and_log_softmax_match_numpy(dtype, axis):
    x = rng().standard_normal((3, 4, 5)).astype(dtype) * 3
    tol = 1e-5 if dtype == np.float32 else 1e-12
    y, ly = F.softmax(t(x), axis=axis), F.log_softmax(t(x), axis=axis)
    assert y.dtype == dtype and ly.dtype == dtype
    np.testing.assert_allclose(y.data, np_softmax(x.astype(np.float64), axis), rtol=tol, atol=tol)
    np.testing.assert_allclose(ly.data, np_log_softmax(x.astype(np.float64), axis), rtol=tol, atol=tol)


def test_softmax_is_stable_for_huge_logits_in_float32():
    x = np.array([[1e4, 1e4 - 1, -1e4], [-1e30, 0, 1e30]], dtype=np.float32)
    y, ly = F.softmax(x).data, F.log_softmax(x).data
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(ly[0]))
    np.testing.assert_allclose(y[0], np_softmax(x[0].astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(y[1], [0, 0, 1])


def test_softmax_of_strided_input():
    base = rng().standard_normal((6, 10))
    x = base[::2, ::3]  # non-contiguous view
    np.testing.assert_allclose(F.softmax(x).data, np_softmax(x), rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(x.T, axis=0).data, np_log_softmax(x.T, 0), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_matches_numpy(reduction, eps):
    x = rng().standard_normal((2, 3, 7)) * 2
    target = np.array([[0, 6, -100], [3, -100, 1]])
    loss = F.cross_entropy(t(x), target, label_smoothing=eps, reduction=reduction)
    np.testing.assert_allclose(loss.data, np_cross_entropy(x, target, -100, eps, reduction), rtol=1e-12)
    assert loss.shape == (() if reduction != "none" else target.shape)


def test_cross_entropy_accepts_a_target_tensor_and_a_custom_ignore_index():
    x = rng().standard_normal((4, 5))
    target = np.array([1, 0, 0, 4])
    loss = F.cross_entropy(x, ng.tensor(target), ignore_index=0)
    np.testing.assert_allclose(loss.data, np_cross_entropy(x, target, 0), rtol=1e-12)


def test_layer_norm_and_add_layer_norm_match_numpy():
    r = rng()
    x, res = r.standard_normal((2, 3, 8)) * 5 + 3, r.standard_normal((2, 3, 8))
    w, b = r.standard_normal(8), r.standard_normal(8)
    np.testing.assert_allclose(F.layer_norm(x, w, b).data, np_layer_norm(x, w, b), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(F.layer_norm(x, None, None, eps=0.1).data, np_layer_norm(x, eps=0.1), rtol=1e-10)
    np.testing.assert_allclose(
        F.add_layer_norm(x, res, w, b).data, np_layer_norm(x + res, w, b), rtol=1e-10, atol=1e-12
    )
    # residual broadcast over the batch
    np.testing.assert_allclose(
        F.add_layer_norm(x, res[0], w, None).data, np_layer_norm(x + res[0], w), rtol=1e-10, atol=1e-12
    )


def test_layer_norm_float32_is_accurate_for_a_large_mean():
    # Two-pass variance: a one-pass E[x^2] - E[x]^2 loses every digit here in float32.
    x = (1e4 + rng().standard_normal((4, 64))).astype(np.float32)
    y = F.layer_norm(x, None, None).data
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, np_layer_norm(x.astype(np.float64)), atol=2e-3)


def test_attention_matches_numpy_with_mask_causal_and_scale():
    r = rng()
    q, k, v = r.standard_normal((2, 3, 4, 5)), r.standard_normal((2, 3, 6, 5)), r.standard_normal((2, 3, 6, 7))
    mask = r.random((2, 1, 4, 6)) < 0.7
    for kwargs in ({}, {"mask": mask}, {"is_causal": True}, {"mask": mask, "is_causal": True, "scale": 0.3}):
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        np.testing.assert_allclose(out.data, np_attention(q, k, v, **kwargs), rtol=1e-10, atol=1e-12)


def test_attention_broadcasts_leading_axes():
    r = rng()
    q, k, v = r.standard_normal((2, 3, 4, 5)), r.standard_normal((1, 3, 6, 5)), r.standard_normal((6, 5))
    out = F.scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(out.data, np_attention(q, k, v), rtol=1e-10)


def mha_weights(C, r, biases=True, dtype=np.float64):
    ws = [r.standard_normal((C, C)).astype(dtype) / np.sqrt(C) for _ in range(4)]
    bs = [r.standard_normal(C).astype(dtype) if biases else None for _ in range(4)]
    return ws, bs


def test_multi_head_attention_matches_numpy():
    r = rng()
    x, mem = r.standard_normal((2, 4, 6)), r.standard_normal((2, 5, 6))
    (wq, wk, wv, wo), (bq, bk, bv, bo) = mha_weights(6, r)
    pad = np.array([[True] * 5, [True, True, False, False, False]])[:, None, None, :]  # (B,1,1,Lk)
    out = F.multi_head_attention(x, mem, mem, 3, wq, wk, wv, wo, bq, bk, bv, bo, mask=pad)
    np.testing.assert_allclose(out.data, np_mha(x, mem, 3, wq, wk, wv, wo, bq, bk, bv, bo, mask=pad), rtol=1e-10)
    causal = np.tri(4, dtype=bool)  # (Lq,Lk)
    out = F.multi_head_attention(x, x, x, 2, wq, wk, wv, wo, mask=causal)
    np.testing.assert_allclose(out.data, np_mha(x, x, 2, wq, wk, wv, wo, mask=causal), rtol=1e-10)
    out2 = F.multi_head_attention(x, x, x, 2, wq, wk, wv, wo, is_causal=True)
    np.testing.assert_allclose(out2.data, out.data, rtol=1e-12)


# ------------------------------------------------------------------------------ gradcheck (float64)


@st.composite
def array_and_axis(draw, max_dims=3):
    x = draw(float_arrays(shape=shapes(min_dims=1, max_dims=max_dims, max_side=4), min_value=-4, max_value=4))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    return x, axis


@FEW
@given(array_and_axis(), st.sampled_from(["softmax", "log_softmax"]))
def test_gradcheck_softmax_family(x_axis, name):
    x, axis = x_axis
    fn = getattr(F, name)
    assert_gradients_close(lambda a: fn(a, axis=axis), [t(x)])


@FEW
@given(st.data(), st.sampled_from(["mean", "sum", "none"]), st.sampled_from([0.0, 0.1, 1.0]))
def test_gradcheck_cross_entropy(data, reduction, eps):
    lead = data.draw(shapes(min_dims=1, max_dims=2, max_side=4))
    V = data.draw(st.integers(1, 5))
    x = data.draw(float_arrays(shape=lead + (V,), min_value=-3, max_value=3))
    target = data.draw(class_targets(lead, V, ignore_index=-1, ignore_fraction=0.5))
    assert_gradients_close(
        lambda a: F.cross_entropy(a, target, ignore_index=-1, label_smoothing=eps, reduction=reduction), [t(x)]
    )


@FEW
@given(st.data(), st.booleans(), st.booleans())
def test_gradcheck_layer_norm(data, with_weight, with_bias):
    shape = data.draw(shapes(min_dims=1, max_dims=3, min_side=2, max_side=4))
    C = shape[-1]
    x = data.draw(float_arrays(shape=shape, min_value=-3, max_value=3, from_seed=True))
    w = data.draw(float_arrays(shape=(C,), min_value=-2, max_value=2)) if with_weight else None
    b = data.draw(float_arrays(shape=(C,), min_value=-2, max_value=2)) if with_bias else None
    inputs = [t(x)] + [t(p) for p in (w, b) if p is not None]

    def fn(x, *params):
        params = list(params)
        weight = params.pop(0) if with_weight else None
        bias = params.pop(0) if with_bias else None
        return F.layer_norm(x, weight, bias, eps=1e-3)

    assert_gradients_close(fn, inputs)


@FEW
@given(st.data())
def test_gradcheck_add_layer_norm_with_broadcast_residual(data):
    shape = data.draw(shapes(min_dims=2, max_dims=3, min_side=2, max_side=4))
    C = shape[-1]
    x = data.draw(float_arrays(shape=shape, min_value=-3, max_value=3, from_seed=True))
    res = data.draw(
        float_arrays(
            shape=data.draw(st.sampled_from([shape, shape[1:], (1,) + shape[1:]])),
            min_value=-3,
            max_value=3,
            from_seed=True,
        )
    )
    w, b = rng().standard_normal(C), rng(1).standard_normal(C)
    assert_gradients_close(lambda x, r, w, b: F.add_layer_norm(x, r, w, b), [t(x), t(res), t(w), t(b)])


@st.composite
def attention_inputs(draw):
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    Lq, Lk, D, Dv = (draw(st.integers(1, 4)) for _ in range(4))
    seed = draw(st.integers(0, 2**16))
    r = rng(seed)
    q, k, v = r.standard_normal(lead + (Lq, D)), r.standard_normal(lead + (Lk, D)), r.standard_normal(lead + (Lk, Dv))
    mask = draw(st.none() | attention_masks(lead, Lq, Lk, allow_fully_masked=True))
    return q, k, v, mask


@FEW
@given(attention_inputs(), st.booleans(), st.sampled_from([None, 0.7]))
def test_gradcheck_scaled_dot_product_attention(inputs, is_causal, scale):
    q, k, v, mask = inputs
    assert_gradients_close(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale),
        [t(q), t(k), t(v)],
    )


@FEW
@given(attention_inputs(), st.sampled_from([0.3, 1.0]))
def test_gradcheck_attention_dropout(inputs, p):
    q, k, v, mask = inputs

    # The same seed on every call: the same dropout mask, so the function is deterministic.
    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, mask=mask, dropout_p=p, rng=np.random.default_rng(7))

    assert_gradients_close(fn, [t(q), t(k), t(v)])


@settings(max_examples=max(6, settings().max_examples // 4), deadline=None)
@given(
    st.integers(0, 2**16),
    st.sampled_from([1, 2]),
    st.booleans(),
    st.sampled_from(["none", "pad", "causal"]),
    st.sampled_from([0.0, 0.4]),
)
def test_gradcheck_multi_head_attention(seed, H, biases, mask_kind, p):
    r = rng(seed)
    B, Lq, Lk, C = 2, 3, 2, 4
    x, mem = r.standard_normal((B, Lq, C)), r.standard_normal((B, Lk, C))
    ws, bs = mha_weights(C, r, biases)
    mask = {
        "none": None,
        "pad": np.array([[True, True], [False, False]])[:, None, None, :],
        "causal": np.tri(Lq, Lk, dtype=bool),
    }[mask_kind]
    present = [b is not None for b in bs]
    params = ws + [b for b in bs if b is not None]

    def fn(x, mem, *params):
        params = list(params)
        wq, wk, wv, wo = params[:4]
        rest = iter(params[4:])
        b = [next(rest) if keep else None for keep in present]
        return F.multi_head_attention(
            x, mem, mem, H, wq, wk, wv, wo, *b, mask=mask, dropout_p=p, rng=np.random.default_rng(3)
        )

    assert_gradients_close(fn, [t(x), t(mem)] + [t(a) for a in params])


def test_gradcheck_multi_head_self_attention_same_tensor_thrice():
    r = rng(5)
    x = r.standard_normal((2, 3, 4))
    ws, _ = mha_weights(4, r)
    assert_gradients_close(
        lambda x, *w: F.multi_head_attention(x, x, x, 2, *w, is_causal=True), [t(x)] + [t(w) for w in ws]
    )


# ------------------------------------------------------------------------------ second derivatives


def test_second_derivatives_softmax_family_and_cross_entropy():
    r = rng(2)
    x = r.standard_normal((3, 4))
    target = np.array([1, -100, 3])
    assert_gradients_close(lambda a: F.softmax(a, axis=0), [t(x)], order=2)
    assert_gradients_close(lambda a: F.log_softmax(a, axis=1), [t(x)], order=2)
    for reduction in ("mean", "none"):
        assert_gradients_close(
            lambda a, reduction=reduction: F.cross_entropy(a, target, label_smoothing=0.1, reduction=reduction),
            [t(x)],
            order=2,
        )


def test_second_derivatives_layer_norms():
    r = rng(3)
    x, res, w, b = r.standard_normal((2, 4)), r.standard_normal((2, 4)), r.standard_normal(4), r.standard_normal(4)
    assert_gradients_close(lambda x, w, b: F.layer_norm(x, w, b), [t(x), t(w), t(b)], order=2)
    assert_gradients_close(lambda x, r, w: F.add_layer_norm(x, r, w, None), [t(x), t(res), t(w)], order=2)


def test_second_derivatives_attention():
    r = rng(4)
    q, k, v = r.standard_normal((2, 3, 2)), r.standard_normal((2, 2, 2)), r.standard_normal((2, 2, 2))
    mask = np.array([[True, False], [False, False], [True, True]])  # a fully masked row
    assert_gradients_close(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=mask), [t(q), t(k), t(v)], order=2
    )
    assert_gradients_close(
        lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=0.5, rng=np.random.default_rng(1)
        ),
        [t(q), t(k), t(v)],
        order=2,
    )
    x = r.standard_normal((1, 2, 4))
    ws, bs = mha_weights(4, r)
    assert_gradients_close(
        lambda x, wq, wo, bv: F.multi_head_attention(
            x, x, x, 2, wq, ws[1], ws[2], wo, None, None, bv, None, is_causal=True
        ),
        [t(x), t(ws[0]), t(ws[3]), t(bs[2])],
        order=2,
    )


# ------------------------------------------------------------------------------ properties


@FEW
@given(array_and_axis(), st.integers(0, 2**16))
def test_softmax_rows_sum_to_one_and_gradient_rows_to_zero(x_axis, seed):
    x, axis = x_axis
    xt = t(x)
    y = F.softmax(xt, axis=axis)
    np.testing.assert_allclose(y.data.sum(axis=axis), 1.0, rtol=1e-12)
    y.backward(rng(seed).standard_normal(x.shape))  # any upstream gradient
    np.testing.assert_allclose(xt.grad.sum(axis=axis), 0.0, atol=1e-12 * (1 + np.abs(xt.grad).max()))
    lx = t(x)
    F.log_softmax(lx, axis=axis).backward(rng(seed).standard_normal(x.shape))
    np.testing.assert_allclose(lx.grad.sum(axis=axis), 0.0, atol=1e-10 * (1 + np.abs(lx.grad).max()))


@FEW
@given(array_and_axis(), st.floats(-50, 50))
def test_shift_invariance(x_axis, c):
    x, axis = x_axis
    shifted = x + np.expand_dims(np.full(np.delete(x.shape, axis % x.ndim), c), axis)
    np.testing.assert_allclose(F.softmax(shifted, axis=axis).data, F.softmax(x, axis=axis).data, atol=1e-12)
    np.testing.assert_allclose(
        F.log_softmax(shifted, axis=axis).data - F.log_softmax(x, axis=axis).data,
        0,
        atol=1e-12 * (1 + abs(c) + np.abs(x).max()),
    )
    logits = np.moveaxis(x, axis, -1)
    target = np.zeros(logits.shape[:-1], dtype=np.int64)
    ce = F.cross_entropy(logits, target, label_smoothing=0.1, reduction="none").data
    ce_shifted = F.cross_entropy(logits + c, target, label_smoothing=0.1, reduction="none").data
    np.testing.assert_allclose(ce_shifted, ce, atol=1e-10 * (1 + abs(c)))


@FEW
@given(st.data(), st.sampled_from([0.0, 0.3]), st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_gradient_is_softmax_minus_smoothed_onehot(data, eps, reduction):
    N, V = data.draw(st.integers(1, 6)), data.draw(st.integers(2, 6))
    x = data.draw(float_arrays(shape=(N, V), min_value=-5, max_value=5))
    target = data.draw(class_targets((N,), V, ignore_index=-100, ignore_fraction=1.0))
    xt = t(x)
    loss = F.cross_entropy(xt, target, label_smoothing=eps, reduction=reduction)
    g = rng().standard_normal(N) if reduction == "none" else None
    loss.backward(g)
    kept = target != -100
    smoothed = np.full((N, V), eps / V)
    smoothed[np.flatnonzero(kept), target[kept]] += 1 - eps
    per_row = {"mean": np.full(N, 1 / max(kept.sum(), 1)), "sum": np.ones(N), "none": g}[reduction]
    expected = (np_softmax(x) - smoothed) * (per_row * kept)[:, None]
    np.testing.assert_allclose(xt.grad, expected, rtol=1e-10, atol=1e-14)
    assert np.all(xt.grad[~kept] == 0.0)  # ignored rows exactly zero


def test_cross_entropy_mean_over_no_target_is_nan_with_zero_gradient():
    xt = t(rng().standard_normal((3, 4)))
    loss = F.cross_entropy(xt, np.full(3, -100))
    assert np.isnan(loss.item())  # PyTorch: 0 / 0
    loss.backward()
    assert np.all(xt.grad == 0.0)
    assert F.cross_entropy(xt, np.full(3, -100), reduction="sum").item() == 0.0


@FEW
@given(st.data())
def test_layer_norm_output_mean_zero_and_gradient_orthogonal_to_one_and_xhat(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3, min_side=2, max_side=6))
    x = data.draw(float_arrays(shape=shape, min_value=-10, max_value=10, from_seed=True))
    eps = 1e-300  # <gx, xhat> = rstd <h, xhat> eps / (var + eps): 0 only without eps (and eps must be > 0)
    for residual in (None, data.draw(float_arrays(shape=shape, min_value=-3, max_value=3, from_seed=True))):
        xt, w = t(x), t(rng(1).standard_normal(shape[-1]))
        y = F.layer_norm(xt, None, None) if residual is None else F.add_layer_norm(xt, residual, None, None)
        s = x if residual is None else x + residual
        np.testing.assert_allclose(y.data.mean(axis=-1), 0.0, atol=1e-12)
        xt2 = t(x)
        y2 = (
            F.layer_norm(xt2, w, None, eps=eps)
            if residual is None
            else F.add_layer_norm(xt2, residual, w, None, eps=eps)
        )
        y2.backward(rng(2).standard_normal(shape))
        xhat = np_layer_norm(s, eps=eps)
        scale = 1 + np.abs(xt2.grad).max()
        np.testing.assert_allclose(xt2.grad.sum(axis=-1), 0.0, atol=1e-10 * scale)
        np.testing.assert_allclose((xt2.grad * xhat).sum(axis=-1), 0.0, atol=1e-10 * scale)


@FEW
@given(attention_inputs(), st.booleans())
def test_all_true_mask_equals_no_mask(inputs, is_causal):
    q, k, v, _ = inputs
    full = np.ones(q.shape[:-1] + (k.shape[-2],), dtype=bool)
    grads = []
    for mask in (None, full, np.ones((1, 1), dtype=bool)):
        qt, kt, vt = t(q), t(k), t(v)
        out = F.scaled_dot_product_attention(qt, kt, vt, mask=mask, is_causal=is_causal)
        out.backward(np.ones(out.shape))
        grads.append((out.data, qt.grad, kt.grad, vt.grad))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            np.testing.assert_array_equal(a, b)


@FEW
@given(attention_inputs(), st.integers(0, 100))
def test_causal_output_at_t_ignores_later_positions(inputs, seed):
    q, k, v, _ = inputs
    L = min(q.shape[-2], k.shape[-2])
    q, k, v = q[..., :L, :], k[..., :L, :], v[..., :L, :]
    cut = int(rng(seed).integers(0, L))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True).data
    q2, k2, v2 = q.copy(), k.copy(), v.copy()
    r = rng(seed + 1)
    for a in (q2, k2, v2):
        a[..., cut + 1 :, :] = r.standard_normal(a[..., cut + 1 :, :].shape) * 10
    out2 = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True).data
    np.testing.assert_array_equal(out2[..., : cut + 1, :], out[..., : cut + 1, :])
    assert cut + 1 == L or not np.allclose(out2[..., cut + 1 :, :], out[..., cut + 1 :, :])


@pytest.mark.parametrize("dropout_p", [0.0, 0.5])
def test_fully_masked_rows_give_zero_output_and_finite_zero_gradients(dropout_p):
    r = rng(6)
    q, k, v = r.standard_normal((2, 3, 4)), r.standard_normal((2, 5, 4)), r.standard_normal((2, 5, 3))
    mask = r.random((2, 3, 5)) < 0.6
    mask[0, 1] = False
    mask[1, :] = False  # a whole batch item masked
    qt, kt, vt = t(q), t(k), t(v)
    out = F.scaled_dot_product_attention(qt, kt, vt, mask=mask, dropout_p=dropout_p, rng=rng(0))
    out.backward(r.standard_normal(out.shape))
    for a in (out.data, qt.grad, kt.grad, vt.grad):
        assert np.all(np.isfinite(a))
    assert np.all(out.data[0, 1] == 0) and np.all(out.data[1] == 0)
    assert np.all(qt.grad[0, 1] == 0) and np.all(qt.grad[1] == 0)
    assert np.all(kt.grad[1] == 0) and np.all(vt.grad[1] == 0)


def test_multi_head_attention_fully_masked_item_outputs_the_output_bias():
    r = rng(8)
    x = r.standard_normal((2, 3, 4))
    ws, bs = mha_weights(4, r)
    pad = np.array([[True, True, False], [False, False, False]])[:, None, None, :]
    xt = t(x)
    params = [t(a) for a in ws + bs]
    out = F.multi_head_attention(xt, xt, xt, 2, *params, mask=pad)
    out.backward(r.standard_normal(out.shape))
    np.testing.assert_allclose(out.data[1], np.broadcast_to(bs[3], (3, 4)))
    assert all(np.all(np.isfinite(p.grad)) for p in params) and np.all(np.isfinite(xt.grad))
    assert np.all(xt.grad[1] == 0)


def test_attention_dropout_is_seeded_and_scaled():
    r = rng(9)
    q, k, v = r.standard_normal((16, 6, 4)), r.standard_normal((16, 6, 4)), r.standard_normal((16, 6, 4))
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, rng=rng(1)).data
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, rng=rng(1)).data
    c = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, rng=rng(2)).data
    plain = F.scaled_dot_product_attention(q, k, v).data
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # E[P M / (1 - p)] = P: averaged over many draws the output approaches the undropped one.
    mean = np.mean(
        [F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, rng=rng(s)).data for s in range(100)], axis=0
    )
    assert np.abs(mean - plain).mean() < 0.1 * np.abs(plain).mean()
    np.testing.assert_array_equal(F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, training=False).data, plain)


# ------------------------------------------------------------------------------ dtypes


def test_float32_in_float32_out_and_grads():
    r = rng(10)
    f32 = lambda *shape: t(r.standard_normal(shape).astype(np.float32))  # noqa: E731
    cases = {
        "softmax": lambda x: F.softmax(x, axis=0),
        "log_softmax": lambda x: F.log_softmax(x),
        "cross_entropy": lambda x: F.cross_entropy(x, np.array([[1, 2, 0], [3, -100, 1]]), label_smoothing=0.1),
    }
    for name, fn in cases.items():
        x = f32(2, 3, 4)
        out = fn(x)
        out.backward(np.ones(out.shape, np.float32))
        assert out.dtype == np.float32 and x.grad.dtype == np.float32, name
    x, res, w, b = f32(2, 3, 4), f32(2, 3, 4), f32(4), f32(4)
    for out in (F.layer_norm(x, w, b), F.add_layer_norm(x, res, w, b)):
        assert out.dtype == np.float32
        out.backward(np.ones(out.shape, np.float32))
    assert all(a.grad.dtype == np.float32 for a in (x, res, w, b))
    q, k, v = f32(2, 3, 4), f32(2, 5, 4), f32(2, 5, 3)
    out = F.scaled_dot_product_attention(q, k, v, mask=np.ones((3, 5), bool), is_causal=True, dropout_p=0.1, rng=rng())
    out.backward(np.ones(out.shape, np.float32))
    assert out.dtype == np.float32 and all(a.grad.dtype == np.float32 for a in (q, k, v))
    x = f32(2, 3, 4)
    params = [f32(4, 4) for _ in range(4)] + [f32(4) for _ in range(4)]
    out = F.multi_head_attention(x, x, x, 2, *params, is_causal=True, dropout_p=0.1, rng=rng())
    out.backward(np.ones(out.shape, np.float32))
    assert out.dtype == np.float32 and all(a.grad.dtype == np.float32 for a in [x] + params)


# ------------------------------------------------------------------------------ errors


def test_cross_entropy_errors_name_the_problem():
    x = np.zeros((2, 3, 5))
    with pytest.raises(IndexError, match=r"target 7 at position \(1, 2\).*5 classes"):
        F.cross_entropy(x, np.array([[0, 1, 2], [3, 4, 7]]))
    with pytest.raises(IndexError, match=r"target -1 at position \(0, 0\)"):
        F.cross_entropy(x, np.array([[-1, 1, 2], [3, 4, 7]]))
    with pytest.raises(ValueError, match=r"target shape \(3, 2\).*\(2, 3, 5\).*\(2, 3\)"):
        F.cross_entropy(x, np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="integer class indices"):
        F.cross_entropy(x, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, np.zeros((2, 3), dtype=np.int64), label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, np.zeros((2, 3), dtype=np.int64), reduction="avg")


def test_attention_errors_name_the_problem():
    q = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\).*expected shape \(2, 3, 5\)"):
        F.scaled_dot_product_attention(q, np.zeros((2, 5, 4)), np.zeros((2, 5, 4)), mask=np.ones((3, 3), bool))
    with pytest.raises(TypeError, match="boolean"):
        F.scaled_dot_product_attention(q, q, q, mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="same last axis"):
        F.scaled_dot_product_attention(q, np.zeros((2, 3, 5)), q)
    with pytest.raises(ValueError, match="dropout_p"):
        F.scaled_dot_product_attention(q, q, q, dropout_p=1.5)
    x = np.zeros((2, 3, 4))
    w = np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 3\).*\(2, 2, 3, 3\)"):
        F.multi_head_attention(x, x, x, 2, w, w, w, w, mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="num_heads"):
        F.multi_head_attention(x, x, x, 3, w, w, w, w)
    with pytest.raises(ValueError, match=r"w_k must have shape \(4, 4\)"):
        F.multi_head_attention(x, x, x, 2, w, np.zeros((4, 3)), w, w)


def test_layer_norm_and_softmax_errors():
    with pytest.raises(ValueError, match=r"weight has shape \(3,\).*expected shape \(4,\)"):
        F.layer_norm(np.zeros((2, 4)), np.ones(3), None)
    with pytest.raises(ValueError, match="do not broadcast"):
        F.add_layer_norm(np.zeros((2, 4)), np.zeros((3, 4)), None, None)
    with pytest.raises(np.exceptions.AxisError, match="softmax: axis 2"):
        F.softmax(np.zeros((2, 4)), axis=2)
    with pytest.raises(TypeError, match="floating-point"):
        F.log_softmax(np.zeros((2, 4), dtype=np.int64))
