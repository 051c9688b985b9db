"""The distillation kernels: the Numba twins equal the NumPy reference, float32 gradients equal float64 ones on
both backends, and the ops pass gradcheck / gradgradcheck on the Numba kernels.

Kernels: soft_cross_entropy_forward/backward and kl_div_forward/backward (npgrad/kernels/reference.py, section
"soft targets"; npgrad/kernels/numba_kernels/soft_targets.py). Tolerances as tests/test_kernels.py: float32
round-off in float32 and 1e-12 in float64, relative to the magnitude of the terms that cancel into a result.
Legend: N rows, V classes, T temperature.
"""

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad.kernels import reference as R
from npgrad.ops.distill import KLDiv, SoftCrossEntropy
from npgrad.testing import assert_float32_matches_float64, class_targets, float_arrays, shapes

N = pytest.importorskip("npgrad.kernels.numba_kernels", reason="numba is not available")

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}
FEW = settings(max_examples=6, deadline=None)
BACKENDS = ["numpy", "numba"]
temperatures = st.sampled_from([0.5, 1.0, 4.0])


def assert_close(actual, expected, dtype, what, scale):
    """|actual - expected| <= tol (|expected| + scale): relative to the terms that cancel into the result."""
    assert actual.dtype == expected.dtype == dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    tol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(scale, 1e-30), err_msg=what)


def rows_case(seed, shape, dtype):
    r = np.random.default_rng(seed)
    s, t = (r.standard_normal(shape) * 3).astype(dtype), (r.standard_normal(shape) * 3).astype(dtype)
    p = np.exp(t - t.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(dtype)
    kept = r.random(shape[0]) < 0.7
    gloss = r.standard_normal(shape[0]).astype(dtype)
    return s, t, p, kept, gloss


@FEW
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 70)),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
    temperature=temperatures,
)
def test_soft_cross_entropy_kernels_equal_the_reference(shape, dtype, seed, temperature):
    s, _, p, kept, gloss = rows_case(seed, shape, dtype)
    loss, lse = N.soft_cross_entropy_forward(s, p, kept, temperature)
    ref_loss, ref_lse = R.soft_cross_entropy_forward(s, p, kept, temperature)
    terms = float(np.abs(ref_lse).max() + np.abs(s).max() / temperature)  # loss = lse - <p, x> / T cancels
    assert_close(loss, ref_loss, dtype, "soft_cross_entropy loss", terms)
    assert_close(lse, ref_lse, dtype, "soft_cross_entropy lse", terms)
    assert np.all(loss[~kept] == 0)
    # g = (gloss / T) (softmax - p): terms of size |gloss| / T
    assert_close(
        N.soft_cross_entropy_backward(s, p, ref_lse, gloss, kept, temperature),
        R.soft_cross_entropy_backward(s, p, ref_lse, gloss, kept, temperature),
        dtype,
        "soft_cross_entropy_backward",
        float(np.abs(gloss).max()) / temperature,
    )


@FEW
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 70)),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
    temperature=temperatures,
    teacher_grad=st.booleans(),
)
def test_kl_div_kernels_equal_the_reference(shape, dtype, seed, temperature, teacher_grad):
    s, t, _, kept, gloss = rows_case(seed, shape, dtype)
    out = N.kl_div_forward(s, t, kept, temperature)
    ref = R.kl_div_forward(s, t, kept, temperature)
    # loss = T^2 sum_j q_j ((t_j - s_j) / T - (lse_t - lse_s)) cancels: terms T (|s| + |t|) + T^2 |lse_t - lse_s|
    logits = float(np.abs(s).max() + np.abs(t).max())
    shift = float(np.abs(ref[2] - ref[1]).max()) + logits / temperature
    terms = temperature * logits + temperature**2 * shift
    for name, a, b in zip(["loss", "lse_s", "lse_t"], out, ref):
        assert_close(a, b, dtype, f"kl_div {name}", terms)
    assert np.all(out[0][~kept] == 0)
    gs, gt = N.kl_div_backward(s, t, *ref, gloss, kept, temperature, teacher_grad)
    ref_gs, ref_gt = R.kl_div_backward(s, t, *ref, gloss, kept, temperature, teacher_grad)
    g = float(np.abs(gloss).max()) * temperature
    assert_close(gs, ref_gs, dtype, "kl_div_backward student", g)  # T gloss (p - q)
    if teacher_grad:
        assert_close(gt, ref_gt, dtype, "kl_div_backward teacher", g * 2 * (logits / temperature + shift))
    else:
        assert gt is None and ref_gt is None


# ------------------------------------------------------------------------------ float32 vs float64


def _f32(data, shape, low=-3.0, high=3.0):
    return data.draw(float_arrays(shape=shape, dtype=np.float32, min_value=low, max_value=high, from_seed=True))


def _rows_to_drop(data, lead, num_classes):
    target = data.draw(class_targets(lead, num_classes, ignore_index=-1, ignore_fraction=0.5))
    return data.draw(st.sampled_from([dict(target=target, ignore_index=-1), dict(mask=target != -1), {}]))


def check_float32(backend, data):
    lead = data.draw(shapes(min_dims=1, max_dims=2, max_side=4))
    num_classes = data.draw(st.integers(1, 6))
    drop = _rows_to_drop(data, lead, num_classes)
    temperature = data.draw(temperatures)
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    x, y = _f32(data, lead + (num_classes,), -5.0, 5.0), _f32(data, lead + (num_classes,), -5.0, 5.0)
    g = _f32(data, lead if reduction == "none" else (), -1.0, 1.0)
    rows = int(np.prod(lead)) if reduction == "sum" else 1
    logits = float(np.abs(x).max())
    # Targets rounded to float32 once: both runs see the same distribution.
    p = np.exp(y - y.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32).astype(np.float64)
    with ng.use_backend(backend):
        # soft CE: loss = lse - <p, x> / T cancels (terms |x| / T + log V); g_x = (gloss / T) (softmax - p).
        # KL: kl_scales below.
        assert_float32_matches_float64(
            lambda a: F.soft_cross_entropy(a, p, temperature=temperature, reduction=reduction, **drop),
            [x],
            grad_output=g,
            scales={
                "output": rows * (2 * logits / temperature + np.log(num_classes)),
                0: np.abs(g).max() / temperature,
            },
        )
        assert_float32_matches_float64(
            lambda a, b: F.kl_div(a, b, temperature=temperature, reduction=reduction, **drop),
            [x, y],
            grad_output=g,
            scales=kl_scales(x, y, temperature, rows, float(np.abs(g).max())),
        )


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_float32_gradients_equal_float64_gradients(backend, data):
    check_float32(backend, data)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("primitive", [SoftCrossEntropy, KLDiv])
def test_a_float32_only_error_is_caught(primitive, backend, monkeypatch):
    # A backward 0.1% off in float32 only (right in float64, so gradcheck cannot see it).
    right = primitive.backward

    def wrong(ctx, g):
        grad, *others = right(ctx, g)
        return (grad * np.float32(1.001) if grad.dtype == np.float32 else grad, *others)

    monkeypatch.setattr(primitive, "backward", staticmethod(wrong))

    @settings(max_examples=20, deadline=None, database=None, derandomize=True, phases=[Phase.generate])
    @given(data=st.data())
    def check(data):
        check_float32(backend, data)

    with pytest.raises(AssertionError, match="the gradient of input 0 differs between float32 and float64"):
        check()


def kl_scales(x, y, temperature, rows, g):
    """The magnitudes of the terms that cancel in T^2 KL and its gradients, from the float64 values.

    loss_n = T^2 sum_j q_j r_j, r_j = (t_j - s_j) / T - (lse_t - lse_s): terms T^2 q_j (|t_j - s_j| / T + |shift|);
    g_s = T gloss (p - q): terms T |gloss|; g_t = T gloss q (r - KL): terms T |gloss| q_j (|r_j| + KL).
    """
    s, t = np.asarray(x, np.float64) / temperature, np.asarray(y, np.float64) / temperature
    lse_s = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) + s.max(-1, keepdims=True)
    lse_t = np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True)) + t.max(-1, keepdims=True)
    q = np.exp(t - lse_t)
    terms = q * (np.abs(t - s) + np.abs(lse_t - lse_s))  # (..., V)
    kl = (q * ((t - lse_t) - (s - lse_s))).sum(-1, keepdims=True)
    return {
        "output": rows * temperature**2 * float(terms.sum(-1).max()),
        0: temperature * g,
        1: temperature * g * float((terms + q * np.abs(kl)).max()),
    }


# ------------------------------------------------------------------------------ the ops on the Numba kernels


def test_gradcheck_and_gradgradcheck_through_the_numba_kernels():
    r = np.random.default_rng(7)
    x, y = r.standard_normal((2, 3, 5)), r.standard_normal((2, 3, 5))
    p = np.exp(y) / np.exp(y).sum(-1, keepdims=True)
    mask = np.array([[True, False, True], [True, True, True]])
    with ng.use_backend("numba"):
        for reduction in ("mean", "sum", "none"):
            soft = lambda a, reduction=reduction: F.soft_cross_entropy(  # noqa: E731
                a, p, temperature=2.0, mask=mask, reduction=reduction
            )
            kl = lambda a, b, reduction=reduction: F.kl_div(  # noqa: E731
                a, b, temperature=2.0, mask=mask, reduction=reduction
            )
            assert ng.gradcheck(soft, [ng.tensor(x, requires_grad=True)])
            assert ng.gradcheck(kl, [ng.tensor(x, requires_grad=True), ng.tensor(y, requires_grad=True)])
        assert ng.gradgradcheck(soft, [x], mode="fast", n_directions=2)
        assert ng.gradgradcheck(kl, [x, y], mode="fast", n_directions=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_backends_agree_through_the_ops(dtype):
    r = np.random.default_rng(8)
    x, y = (r.standard_normal((4, 3, 11)) * 2).astype(dtype), (r.standard_normal((4, 3, 11)) * 2).astype(dtype)
    mask = r.random((4, 3)) < 0.6
    results = {}
    for backend in BACKENDS:
        with ng.use_backend(backend):
            xt, yt = ng.tensor(x, requires_grad=True), ng.tensor(y, requires_grad=True)
            loss = F.kl_div(xt, yt, temperature=3.0, mask=mask)
            loss.backward()
            results[backend] = (loss.data, xt.grad, yt.grad)
    for a, b in zip(results["numba"], results["numpy"]):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)
