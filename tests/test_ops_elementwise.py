"""Elementwise primitives: exp, log, tanh, sqrt, relu, gelu (exact and tanh), dropout, astype, and the
vectorised erf behind the exact GELU: forward against NumPy/math formulas, gradients and second
derivatives against finite differences, dtype preservation, dropout reproducibility and statistics."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npgrad as ng
from npgrad import functional as F
from npgrad.gradcheck import gradgradcheck
from npgrad.ops.elementwise import erf, erfc, manual_seed, normal_cdf


# gradgradcheck first checks that the create_graph gradient equals the plain backward's (so a consistently wrong
# differentiable_backward is caught), then differentiates it against finite differences.
second_derivatives_match = gradgradcheck


small_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)

UNARY = {
    # name: (function, NumPy reference, input transform keeping the derivative finite)
    "exp": (F.exp, np.exp, lambda x: x),
    "log": (F.log, np.log, lambda x: np.abs(x) + 0.2),
    "tanh": (F.tanh, np.tanh, lambda x: x),
    "sqrt": (F.sqrt, np.sqrt, lambda x: np.abs(x) + 0.2),
    # keep relu's inputs away from the kink at 0, where the finite difference is not the derivative
    "relu": (F.relu, lambda x: np.maximum(x, 0), lambda x: np.where(np.abs(x) < 0.05, 0.3, x)),
    "gelu": (F.gelu, None, lambda x: x),
    "gelu_tanh": (lambda t: F.gelu(t, approximate="tanh"), None, lambda x: x),
}


def gelu_exact_formula(x):
    # x Phi(x) with Phi = erfc(-x / sqrt 2) / 2: no cancellation for negative x (1 + erf would lose it all)
    return np.array([v * 0.5 * math.erfc(-v / math.sqrt(2.0)) for v in np.ravel(x)]).reshape(np.shape(x))


def gelu_tanh_formula(x):
    # x/2 (1 + tanh u) = x / (1 + exp(-2u)): no cancellation for negative x (1 + tanh would lose it all)
    u = [math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3) for v in np.ravel(x)]
    return np.array([v / (1.0 + math.exp(min(-2.0 * w, 700.0))) for v, w in zip(np.ravel(x), u)]).reshape(np.shape(x))


@pytest.mark.parametrize("name", list(UNARY))
@settings(max_examples=8, deadline=None)
@given(shape=small_shapes, seed=st.integers(0, 2**31 - 1))
def test_unary_forward_and_gradient(name, shape, seed):
    fn, reference, transform = UNARY[name]
    x = transform(np.random.default_rng(seed).standard_normal(shape) * 2)
    t = ng.tensor(x, requires_grad=True)
    out = fn(t)
    if reference is not None:
        np.testing.assert_allclose(out.data, reference(x), rtol=1e-14, atol=0)
    assert ng.gradcheck(fn, [t])


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_second_derivative(name):
    fn, _, transform = UNARY[name]
    x = ng.tensor(transform(np.random.default_rng(0).standard_normal((2, 3)) * 2), requires_grad=True)
    assert second_derivatives_match(fn, [x])


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_keeps_float32(name):
    fn, _, transform = UNARY[name]
    x = ng.tensor(transform(np.random.default_rng(1).standard_normal((3, 4))).astype(np.float32), requires_grad=True)
    out = fn(x)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32
    # float32 gradient agrees with the float64 one to float32 round-off
    x64 = ng.tensor(x.data.astype(np.float64), requires_grad=True)
    fn(x64).sum().backward()
    np.testing.assert_allclose(x.grad, x64.grad, rtol=2e-5, atol=2e-6)


def test_relu_derivative_at_zero_is_zero():
    x = ng.tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    F.relu(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])


# ---------------------------------------------------------------------------------- erf / gelu


def test_erf_float64_matches_math_erf_to_round_off():
    z = np.concatenate(
        [
            np.linspace(-7, 7, 20001),
            np.random.default_rng(2).standard_normal(2000) * 3,
            [0.46875, -0.46875, 4.0, -4.0, 1e-300, -1e-20],
        ]
    )
    expected = np.array([math.erf(v) for v in z])
    np.testing.assert_allclose(erf(z), expected, rtol=1e-15, atol=1e-300)


def test_erfc_float64_relative_accuracy_in_the_tails():
    z = np.concatenate([np.linspace(-6, 26, 16001), [0.5, 4.0 + 1e-12, 10.0, 25.0]])
    expected = np.array([math.erfc(v) for v in z])
    assert np.all(expected > 1e-300)
    np.testing.assert_allclose(erfc(z), expected, rtol=5e-15, atol=0)


def test_erf_float32_and_special_values():
    z = np.linspace(-6, 6, 24001).astype(np.float32)
    out = erf(z)
    assert out.dtype == np.float32
    expected = np.array([math.erf(float(v)) for v in z])
    assert np.max(np.abs(out - expected)) < 6e-7
    for dtype in (np.float32, np.float64):
        special = erf(np.array([np.nan, np.inf, -np.inf, 0.0], dtype=dtype))
        assert np.isnan(special[0]) and special[1:].tolist() == [1.0, -1.0, 0.0]
        special = erfc(np.array([np.nan, np.inf, -np.inf], dtype=dtype))
        assert np.isnan(special[0]) and special[1:].tolist() == [0.0, 2.0]


def test_normal_cdf_far_left_tail_is_relative_accurate_in_float64():
    x = np.array([-10.0, -20.0, -30.0])
    expected = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x])
    # (1 + erf) / 2 would be 0 here. The bound is the problem's conditioning, not erfc's error:
    # rounding x / sqrt 2 by 1e-16 moves erfc by ~ x^2 1e-16 relative (x^2 = 900 at -30).
    assert np.all(expected > 0)
    np.testing.assert_allclose(normal_cdf(x), expected, rtol=1e-12)


def test_gelu_matches_its_formulas():
    x = np.concatenate([np.linspace(-8, 8, 1601), [0.0]])
    exact = F.gelu(ng.tensor(x)).data
    np.testing.assert_allclose(exact, gelu_exact_formula(x), rtol=1e-13, atol=1e-300)
    torch_style = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
    np.testing.assert_allclose(exact, torch_style, rtol=1e-14, atol=1e-15)
    approx = F.gelu(ng.tensor(x), approximate="tanh").data
    # Relative where y is not tiny; absolute (round-off of x/2 (1 + tanh u)) in the left tail, where
    # the NumPy kernel's 1 + tanh u cancels (the Numba kernel is relatively accurate there too:
    # tests/test_kernels.py).
    np.testing.assert_allclose(approx, gelu_tanh_formula(x), rtol=1e-14, atol=1e-15)
    # The two variants agree to ~1e-3, as they should (tanh is an approximation of x Phi(x)).
    assert np.max(np.abs(exact - approx)) < 2e-3
    x32 = x.astype(np.float32)
    exact32 = F.gelu(ng.tensor(x32)).data
    assert exact32.dtype == np.float32
    np.testing.assert_allclose(exact32, gelu_exact_formula(x32.astype(np.float64)), rtol=1e-6, atol=1e-6)


def test_gelu_gradient_formula():
    x = np.linspace(-5, 5, 101)
    t = ng.tensor(x, requires_grad=True)
    F.gelu(t).sum().backward()
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    # Phi + x phi cancels for negative x: compare to round-off of the terms (~1e-16), not of the sum.
    np.testing.assert_allclose(t.grad, cdf + x * pdf, rtol=1e-13, atol=1e-15)


def test_gelu_bad_approximate():
    with pytest.raises(ValueError, match="gelu: approximate must be 'none' or 'tanh'"):
        F.gelu(ng.tensor(np.ones(2)), approximate="fast")


# ---------------------------------------------------------------------------------- dropout


def test_dropout_same_seed_same_mask_and_inverted_scaling():
    x = ng.tensor(np.random.default_rng(3).standard_normal((64, 50)) + 5.0, requires_grad=True)
    p = 0.3
    a = F.dropout(x, p, rng=np.random.default_rng(42))
    b = F.dropout(x, p, rng=np.random.default_rng(42))
    c = F.dropout(x, p, rng=np.random.default_rng(43))
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)
    kept = a.data != 0
    np.testing.assert_allclose(a.data[kept], x.data[kept] / (1 - p), rtol=1e-15)
    # Gradient: the same mask, the same scale.
    a.backward(np.ones(x.shape))
    np.testing.assert_allclose(x.grad, kept / (1 - p), rtol=1e-15)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_the_expected_fraction(p):
    n = 200_000
    out = F.dropout(ng.tensor(np.ones(n, dtype=np.float32)), p, rng=np.random.default_rng(int(p * 10)))
    kept = np.count_nonzero(out.data) / n
    # Binomial standard deviation sqrt(p(1-p)/n) <= 1.2e-3: 5 sigma, plus the 2^-16 granularity of p.
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n) + 2e-5
    assert out.dtype == np.float32
    # Inverted dropout keeps the mean.
    assert abs(out.data.mean() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def test_dropout_identity_cases_and_errors():
    x = ng.tensor(np.ones((3, 4)), requires_grad=True)
    assert F.dropout(x, 0.0) is x
    assert F.dropout(x, 0.7, training=False) is x
    for bad in (-0.1, 1.5, float("nan"), "0.1", None):
        with pytest.raises(ValueError, match=r"dropout: p must be a probability in \[0, 1\]"):
            F.dropout(x, bad)
    # p = 1 drops everything, as in PyTorch: zeros and a zero gradient.
    y = F.dropout(x, 1.0)
    y.sum().backward()
    assert not y.data.any() and not x.grad.any()
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        F.dropout(x, 0.5, rng=np.random.RandomState(0))


def test_dropout_default_generator_is_reseedable():
    x = ng.tensor(np.ones((10, 10)))
    manual_seed(7)
    a = F.dropout(x, 0.5).data
    manual_seed(7)
    b = F.dropout(x, 0.5).data
    np.testing.assert_array_equal(a, b)


def test_dropout_gradient_checks():
    x = ng.tensor(np.random.default_rng(4).standard_normal((3, 5)), requires_grad=True)

    def fn(t):
        return F.dropout(t * t, 0.4, rng=np.random.default_rng(5))  # same mask on every call

    assert ng.gradcheck(fn, [x])
    assert second_derivatives_match(fn, [x])


# ---------------------------------------------------------------------------------- astype


def test_astype_is_differentiable_between_float_dtypes():
    x = ng.tensor(np.random.default_rng(6).standard_normal((2, 3)), requires_grad=True)
    y = x.astype(np.float32)
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad, 2 * x.data.astype(np.float32), rtol=1e-6)
    # float64 -> float64 is the identity, exactly checkable
    assert ng.gradcheck(lambda t: t.astype(np.float64) ** 2, [x])
    x32 = ng.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    (x32.astype("float64") * 2.0).sum().backward()
    assert x32.grad.dtype == np.float32 and x32.grad.tolist() == [2.0, 2.0, 2.0]


def test_astype_to_integer_gives_data_without_gradient():
    x = ng.tensor(np.array([1.7, -2.2]), requires_grad=True)
    ids = x.astype(np.int64)
    assert ids.dtype == np.int64 and not ids.requires_grad and ids.data.tolist() == [1, -2]
