"""Reductions (sum, mean, max) and shape ops (reshape, transpose, swapaxes, indexing, concatenate,
stack, where, masked_fill, broadcast_to): forward equals NumPy, gradients equal finite
differences (float64, hypothesis-drawn shapes/axes/options), second derivatives too, float32 stays
float32, and bad input gets an error naming the op and the shapes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npgrad as ng
from npgrad import functional as F
from npgrad.ops.shape import broadcast_to

from npgrad.gradcheck import gradgradcheck


# gradgradcheck first checks that the create_graph gradient equals the plain backward's (so a consistently wrong
# differentiable_backward is caught), then differentiates it against finite differences.
second_derivatives_match = gradgradcheck


def randn(rng, *shape, dtype=np.float64, requires_grad=True):
    return ng.tensor(rng.standard_normal(shape).astype(dtype), requires_grad=requires_grad)


small_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


@st.composite
def array_and_axis(draw, allow_tuple=True):
    shape = draw(small_shapes)
    ndim = len(shape)
    choices = [st.none(), st.integers(-ndim, ndim - 1)]
    if allow_tuple:
        choices.append(hnp.valid_tuple_axes(ndim, min_size=1))  # draws negative axes too
    axis = draw(st.one_of(*choices))
    seed = draw(st.integers(0, 2**31 - 1))
    x = np.random.default_rng(seed).standard_normal(shape)
    return x, axis, draw(st.booleans())


# ---------------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@settings(max_examples=12, deadline=None)
@given(drawn=array_and_axis())
def test_reduction_forward_and_gradient(name, drawn):
    x, axis, keepdims = drawn
    t = ng.tensor(x, requires_grad=True)
    out = getattr(t, name)(axis=axis, keepdims=keepdims)
    expected = getattr(np, name if name != "max" else "amax")(x, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    # Continuous random values: no ties, so max is differentiable.
    assert ng.gradcheck(lambda a: getattr(a, name)(axis=axis, keepdims=keepdims), [t])


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reduction_second_derivative(name):
    rng = np.random.default_rng(1)
    x = randn(rng, 2, 3, 4)
    # Compose with a nonlinearity so the second derivative is not trivially zero.
    assert second_derivatives_match(lambda a: getattr(a * a * a, name)(axis=(0, -1), keepdims=False), [x])


def test_sum_gradient_is_ones_and_mean_is_one_over_n():
    x = ng.tensor(np.arange(24.0).reshape(2, 3, 4), requires_grad=True)
    x.sum(axis=1).backward(np.ones((2, 4)))
    np.testing.assert_array_equal(x.grad, np.ones((2, 3, 4)))
    x.zero_grad()
    x.mean(axis=(0, 2)).backward(np.ones(3))
    np.testing.assert_allclose(x.grad, np.full((2, 3, 4), 1 / 8))


def test_max_ties_split_the_gradient_equally():
    x = ng.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [5.0, 0.0, 1.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([1.0, 3.0, 2.0]))
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1, 1, 1], [2, 0, 0]])
    # The shares of a tie sum to the output gradient, whatever the axis layout.
    y = ng.tensor(np.ones((2, 2)), requires_grad=True)
    y.max().backward()
    np.testing.assert_allclose(y.grad, np.full((2, 2), 0.25))


def test_max_with_nan_routes_gradient_to_nan():
    x = ng.tensor(np.array([1.0, np.nan, 3.0]), requires_grad=True)
    out = x.max()
    assert np.isnan(out.data)
    out.backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 0.0])


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reduction_keeps_float32(name):
    x = randn(np.random.default_rng(2), 3, 4, dtype=np.float32)
    out = getattr(x, name)(axis=0)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32


def test_reduction_bad_axis_is_named():
    x = ng.tensor(np.zeros((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"sum: axis 2 is out of range"):
        x.sum(axis=2)
    with pytest.raises(ValueError, match="repeated axis"):
        x.mean(axis=(0, -2))
    with pytest.raises(ValueError, match="max: cannot reduce over an empty axis"):
        ng.tensor(np.zeros((0, 3))).max(axis=0)


# ---------------------------------------------------------------------------------- reshape / transpose


def test_reshape_forms_and_gradient():
    rng = np.random.default_rng(3)
    x = randn(rng, 2, 3, 4)
    for out in (x.reshape(6, 4), x.reshape((6, -1)), x.reshape([4, 6]), x.reshape(-1)):
        np.testing.assert_array_equal(out.data, x.data.reshape(out.shape))
    assert ng.gradcheck(lambda a: a.reshape(4, -1) * a.reshape((4, 6)), [x])
    assert second_derivatives_match(lambda a: (a * a).reshape(-1, 2), [x])
    with pytest.raises(ValueError, match=r"reshape: cannot reshape an array of shape \(2, 3, 4\).*\(5, -1\)"):
        x.reshape(5, -1)


@settings(max_examples=10, deadline=None)
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=3), data=st.data())
def test_transpose_matches_numpy_and_gradchecks(shape, data):
    x = ng.tensor(np.random.default_rng(len(shape)).standard_normal(shape), requires_grad=True)
    perm = data.draw(st.permutations(range(len(shape))))
    np.testing.assert_array_equal(x.transpose(*perm).data, np.transpose(x.data, perm))
    np.testing.assert_array_equal(x.transpose(perm).data, np.transpose(x.data, perm))
    np.testing.assert_array_equal(x.transpose().data, x.data.T)
    np.testing.assert_array_equal(x.T.data, x.data.T)
    assert ng.gradcheck(
        lambda a: a.transpose(*perm) * np.arange(1.0, 1 + x.size).reshape(np.transpose(x.data, perm).shape), [x]
    )


def test_swapaxes_and_T_gradients():
    rng = np.random.default_rng(4)
    x = randn(rng, 2, 3, 4)
    np.testing.assert_array_equal(x.swapaxes(0, -1).data, np.swapaxes(x.data, 0, -1))
    assert ng.gradcheck(lambda a: a.swapaxes(0, -1) ** 2, [x])
    assert ng.gradcheck(lambda a: a.T**2, [x])
    assert second_derivatives_match(lambda a: (a * a).swapaxes(1, 2).transpose(2, 0, 1), [x])
    with pytest.raises(ValueError, match="not a permutation"):
        x.transpose(0, 0, 1)
    with pytest.raises(ValueError, match="swapaxes: axis 3 is out of range"):
        x.swapaxes(0, 3)


def test_broadcast_to_gradient_sums_over_stretched_axes():
    x = randn(np.random.default_rng(5), 3, 1)
    out = broadcast_to(x, (2, 3, 4))
    out.backward(np.ones((2, 3, 4)))
    np.testing.assert_array_equal(x.grad, np.full((3, 1), 8.0))
    assert ng.gradcheck(lambda a: broadcast_to(a, (2, 3, 3)) ** 2, [x])
    assert second_derivatives_match(lambda a: broadcast_to(a * a, (2, 3, 2)), [x])


# ---------------------------------------------------------------------------------- indexing

INDEX_KEYS = [
    (1,),
    (-1, slice(None, None, -1)),
    (slice(1, None), None, Ellipsis),
    (Ellipsis, 2),
    (slice(None), np.array([0, 0, 2, 0])),  # repeated integer index
    (np.array([[0, 1], [1, 1]]), 2),  # integer array of another shape, repeats
    (np.array([2, 0]), np.array([1, 1])),  # paired integer arrays
    ([0, 2],),  # a list behaves as an integer array
    (np.array([True, False, True]),),  # boolean mask over the first axis
    (slice(None), slice(0, 4, 2)),
]


@pytest.mark.parametrize("key", INDEX_KEYS, ids=[str(i) for i in range(len(INDEX_KEYS))])
def test_index_forward_gradient_and_second_derivative(key):
    rng = np.random.default_rng(6)
    x = randn(rng, 3, 4)
    np_key = tuple(np.asarray(k) if isinstance(k, list) else k for k in key)
    out = x[key if len(key) > 1 else key[0]]
    np.testing.assert_array_equal(out.data, x.data[np_key])
    # The gradient is the scatter-add of g to the selected positions (repeats accumulate).
    g = rng.standard_normal(out.shape)
    out.backward(g)
    expected = np.zeros((3, 4))
    np.add.at(expected, np_key, g)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-14)
    assert ng.gradcheck(lambda a: a[key if len(key) > 1 else key[0]] ** 2, [x])
    assert second_derivatives_match(lambda a: (a * a)[key if len(key) > 1 else key[0]], [x])


def test_index_with_boolean_mask_tensor_and_index_tensor():
    rng = np.random.default_rng(7)
    x = randn(rng, 4, 3)
    mask = x > 0  # a boolean data Tensor
    np.testing.assert_array_equal(x[mask].data, x.data[x.data > 0])
    ids = ng.tensor(np.array([3, 3, 1]))
    np.testing.assert_array_equal(x[ids].data, x.data[[3, 3, 1]])
    x[ids].sum().backward()
    np.testing.assert_array_equal(x.grad[:, 0], [0, 1, 0, 2])


def test_index_errors_are_clear():
    x = ng.tensor(np.zeros((2, 3)), requires_grad=True)
    with pytest.raises(IndexError, match=r"index: .*shape \(2, 3\)"):
        x[5]
    with pytest.raises(IndexError, match="integer or boolean"):
        x[np.array([0.5])]


def test_index_keeps_float32():
    x = randn(np.random.default_rng(8), 3, 4, dtype=np.float32)
    x[np.array([0, 0, 2])].sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad[:, 0], np.array([2, 0, 1], dtype=np.float32))


# ---------------------------------------------------------------------------------- concatenate / stack


@settings(max_examples=10, deadline=None)
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=3), data=st.data())
def test_concatenate_gradient_over_drawn_axis(shape, data):
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    rng = np.random.default_rng(sum(sizes))
    parts = []
    for n in sizes:
        s = list(shape)
        s[axis] = n
        parts.append(ng.tensor(rng.standard_normal(s), requires_grad=True))
    out = ng.concatenate(parts, axis=axis)
    np.testing.assert_array_equal(out.data, np.concatenate([p.data for p in parts], axis=axis))
    assert ng.gradcheck(lambda *ps: ng.concatenate(list(ps), axis=axis) ** 2, parts)


@settings(max_examples=10, deadline=None)
@given(shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), data=st.data())
def test_stack_gradient_over_drawn_axis(shape, data):
    axis = data.draw(st.integers(-(len(shape) + 1), len(shape)))
    count = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(count)
    parts = [ng.tensor(rng.standard_normal(shape), requires_grad=True) for _ in range(count)]
    out = ng.stack(parts, axis=axis)
    np.testing.assert_array_equal(out.data, np.stack([p.data for p in parts], axis=axis))
    assert ng.gradcheck(lambda *ps: ng.stack(list(ps), axis=axis) ** 2, parts)


def test_concatenate_stack_second_derivatives_and_errors():
    rng = np.random.default_rng(9)
    a, b = randn(rng, 2, 3), randn(rng, 2, 1)
    assert second_derivatives_match(lambda p, q: ng.concatenate([p * p, q * p[:, :1]], axis=1), [a, b])
    c = randn(rng, 2, 3)
    assert second_derivatives_match(lambda p, q: ng.stack([p * q, q], axis=1), [a, c])
    with pytest.raises(ValueError, match=r"concatenate: shapes \[\(2, 3\), \(3, 3\)\] cannot be joined along axis 1"):
        ng.concatenate([a, randn(rng, 3, 3)], axis=1)
    with pytest.raises(ValueError, match=r"stack: all tensors must have the same shape, got \[\(2, 3\), \(2, 1\)\]"):
        ng.stack([a, b])
    with pytest.raises(ValueError, match="at least one"):
        ng.concatenate([])


# ---------------------------------------------------------------------------------- where / masked_fill


@settings(max_examples=12, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3), seed=st.integers(0, 1000))
def test_where_broadcasts_and_gradchecks(shapes, seed):
    cond_shape, a_shape, b_shape = shapes.input_shapes
    rng = np.random.default_rng(seed)
    cond = rng.random(cond_shape) < 0.5
    a = ng.tensor(rng.standard_normal(a_shape), requires_grad=True)
    b = ng.tensor(rng.standard_normal(b_shape), requires_grad=True)
    out = ng.where(cond, a, b)
    np.testing.assert_array_equal(out.data, np.where(cond, a.data, b.data))
    assert ng.gradcheck(lambda p, q: ng.where(cond, p, q) ** 2, [a, b])


def test_where_with_scalars_tensor_cond_and_second_derivative():
    rng = np.random.default_rng(10)
    a = randn(rng, 2, 3)
    out = ng.where(a > 0, a, 0.0)  # cond a boolean Tensor, b a scalar
    np.testing.assert_array_equal(out.data, np.maximum(a.data, 0.0))
    out.sum().backward()
    np.testing.assert_array_equal(a.grad, (a.data > 0).astype(float))
    assert ng.where(np.array([True, False]), 1.0, 2.0).data.tolist() == [1.0, 2.0]
    b = randn(rng, 3)
    assert second_derivatives_match(lambda p, q: ng.where(p.data > 0, p * p, q * p), [a, b])
    with pytest.raises(TypeError, match="where: cond must be a boolean array"):
        ng.where(np.ones(3), a, b)
    with pytest.raises(ValueError, match=r"where: cannot broadcast cond \(4,\), a \(2, 3\) and b \(3,\)"):
        ng.where(np.ones(4, dtype=bool), a, b)


def test_masked_fill_values_gradient_and_errors():
    rng = np.random.default_rng(11)
    x = randn(rng, 2, 3, 4)
    mask = rng.random((3, 1)) < 0.5  # broadcastable to x
    mask[0, 0], mask[1, 0] = True, False
    out = F.masked_fill(x, mask, -np.inf)
    np.testing.assert_array_equal(out.data, np.where(mask, -np.inf, x.data))
    assert out.dtype == x.dtype
    finite = x.masked_fill(mask, 2.5)
    finite.backward(np.ones(x.shape))
    np.testing.assert_array_equal(x.grad, np.broadcast_to(~mask, x.shape).astype(float))  # zero where filled
    assert ng.gradcheck(lambda a: F.masked_fill(a, mask, 1.0) ** 2, [x])
    assert second_derivatives_match(lambda a: F.masked_fill(a * a, mask, 0.0), [x])
    with pytest.raises(
        ValueError, match=r"masked_fill: mask of shape \(2, 3\) does not broadcast to the input's shape \(2, 3, 4\)"
    ):
        F.masked_fill(x, np.ones((2, 3), dtype=bool), 0.0)
    with pytest.raises(ValueError, match=r"mask of shape \(1, 1, 1, 4\)"):
        F.masked_fill(x, np.ones((1, 1, 1, 4), dtype=bool), 0.0)  # would grow x: refused
    with pytest.raises(TypeError, match="masked_fill: mask must be a boolean array"):
        F.masked_fill(x, np.ones((3, 4)), 0.0)


def test_masked_fill_keeps_float32():
    x = randn(np.random.default_rng(12), 2, 3, dtype=np.float32)
    out = x.masked_fill(np.array([True, False, True]), -1e9)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32


def test_tensor_methods_exist_as_contract_says():
    x = ng.tensor(np.ones((2, 3)), requires_grad=True)
    for name in (
        "sum",
        "mean",
        "max",
        "reshape",
        "transpose",
        "swapaxes",
        "exp",
        "log",
        "tanh",
        "sqrt",
        "masked_fill",
        "astype",
        "relu",
    ):
        assert callable(getattr(x, name)), name
    assert x.T.shape == (3, 2)
