"""embedding and linear: forward equals NumPy indexing / GEMM, gradients equal finite differences and the
np.add.at scatter, the embedding_backward kernel equals np.add.at on every id distribution, second
derivatives, dtype preservation, and errors naming positions, values and shapes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npgrad as ng
from npgrad import functional as F
from npgrad.gradcheck import gradgradcheck
from npgrad.kernels import reference


# gradgradcheck first checks that the create_graph gradient equals the plain backward's (so a consistently wrong
# differentiable_backward is caught), then differentiates it against finite differences.
second_derivatives_match = gradgradcheck


def scatter_add_reference(ids, gy, num_embeddings):
    gw = np.zeros((num_embeddings, gy.shape[1]), dtype=gy.dtype)
    np.add.at(gw, ids, gy)
    return gw


# ---------------------------------------------------------------------------------- embedding


@settings(max_examples=10, deadline=None)
@given(
    ids_shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3),
    vocab=st.integers(1, 6),
    dim=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_embedding_forward_and_gradient(ids_shape, vocab, dim, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, ids_shape)  # small vocab: repeated ids are common
    weight = ng.tensor(rng.standard_normal((vocab, dim)), requires_grad=True)
    out = F.embedding(ids, weight)
    assert out.shape == ids.shape + (dim,)
    np.testing.assert_array_equal(out.data, weight.data[ids])
    g = rng.standard_normal(out.shape)
    out.backward(g)
    np.testing.assert_allclose(
        weight.grad, scatter_add_reference(ids.reshape(-1), g.reshape(-1, dim), vocab), rtol=1e-13, atol=1e-13
    )
    if ids.size:
        assert ng.gradcheck(lambda w: F.embedding(ids, w) ** 2, [weight])


@pytest.mark.parametrize("distribution", ["uniform", "zipf", "all_equal", "all_distinct", "single"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_backward_kernel_equals_add_at(distribution, dtype):
    rng = np.random.default_rng(0)
    vocab, n, dim = 300, 500, 7
    ids = {
        "uniform": rng.integers(0, vocab, n),
        "zipf": np.minimum(rng.zipf(1.3, n) - 1, vocab - 1),
        "all_equal": np.full(n, 17),
        "all_distinct": rng.permutation(vocab)[: n % vocab],
        "single": np.array([vocab - 1]),
    }[distribution].astype(np.int64)
    gy = rng.standard_normal((len(ids), dim)).astype(dtype)
    out = reference.embedding_backward(ids, gy, vocab)
    assert out.dtype == dtype and out.shape == (vocab, dim)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, scatter_add_reference(ids, gy, vocab), rtol=tol, atol=tol)
    # strided (non-contiguous) gradient rows are read correctly
    wide = np.repeat(gy, 2, axis=1)[:, ::2]
    np.testing.assert_allclose(reference.embedding_backward(ids, wide, vocab), out, rtol=tol, atol=tol)


def test_embedding_backward_kernel_empty():
    out = reference.embedding_backward(np.zeros(0, dtype=np.int64), np.zeros((0, 3)), 4)
    np.testing.assert_array_equal(out, np.zeros((4, 3)))


def test_embedding_ids_as_int_tensor_and_second_derivative():
    rng = np.random.default_rng(1)
    weight = ng.tensor(rng.standard_normal((5, 3)), requires_grad=True)
    ids = ng.tensor(np.array([[4, 0, 4], [2, 2, 2]], dtype=np.int32))
    out = F.embedding(ids, weight)
    np.testing.assert_array_equal(out.data, weight.data[ids.data])
    assert second_derivatives_match(lambda w: F.embedding(ids, w * w), [weight])


def test_embedding_keeps_float32():
    weight = ng.tensor(np.ones((4, 2), dtype=np.float32), requires_grad=True)
    out = F.embedding(np.array([1, 1, 3]), weight)
    assert out.dtype == np.float32
    out.sum().backward()
    assert weight.grad.dtype == np.float32
    np.testing.assert_array_equal(weight.grad[:, 0], [0, 2, 0, 1])


def test_embedding_errors_name_position_value_and_vocabulary():
    weight = ng.tensor(np.zeros((10, 2)), requires_grad=True)
    with pytest.raises(
        IndexError, match=r"embedding: id 12 at position \(1, 0\) is out of range for a table of 10 rows"
    ):
        F.embedding(np.array([[1, 2], [12, 30]]), weight)
    with pytest.raises(IndexError, match=r"id -1 at position 2 .* 10 rows"):
        F.embedding(np.array([0, 9, -1]), weight)
    with pytest.raises(TypeError, match="ids must be an integer array, got dtype float64.*float ids are refused"):
        F.embedding(np.array([1.0, 2.0]), weight)
    with pytest.raises(ValueError, match=r"weight must be 2-D .* got shape \(10,\)"):
        F.embedding(np.array([1]), ng.tensor(np.zeros(10)))


# ---------------------------------------------------------------------------------- linear


@settings(max_examples=12, deadline=None)
@given(
    lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3),
    in_features=st.integers(1, 4),
    out_features=st.integers(1, 4),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_forward_and_gradient(lead, in_features, out_features, with_bias, seed):
    rng = np.random.default_rng(seed)
    x = ng.tensor(rng.standard_normal(lead + (in_features,)), requires_grad=True)
    w = ng.tensor(rng.standard_normal((in_features, out_features)), requires_grad=True)
    b = ng.tensor(rng.standard_normal(out_features), requires_grad=True) if with_bias else None
    out = F.linear(x, w, b)
    expected = x.data @ w.data + (b.data if with_bias else 0.0)
    assert out.shape == lead + (out_features,)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    inputs = [x, w] + ([b] if with_bias else [])
    assert ng.gradcheck(lambda *a: F.linear(*a) ** 2, inputs)


def test_linear_gradients_are_the_textbook_products():
    rng = np.random.default_rng(2)
    x = ng.tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    w = ng.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    b = ng.tensor(rng.standard_normal(5), requires_grad=True)
    g = rng.standard_normal((2, 3, 5))
    F.linear(x, w, b).backward(g)
    np.testing.assert_allclose(x.grad, g @ w.data.T, rtol=1e-13)
    np.testing.assert_allclose(w.grad, x.data.reshape(6, 4).T @ g.reshape(6, 5), rtol=1e-13)
    np.testing.assert_allclose(b.grad, g.sum(axis=(0, 1)), rtol=1e-13)


def test_linear_non_contiguous_input_and_partial_requires_grad():
    rng = np.random.default_rng(3)
    x_data = rng.standard_normal((4, 3, 2)).transpose(2, 1, 0)  # (2, 3, 4), not contiguous
    x = ng.tensor(x_data)  # a constant
    w = ng.tensor(rng.standard_normal((4, 2)), requires_grad=True)
    out = F.linear(x, w)
    np.testing.assert_allclose(out.data, x_data @ w.data, rtol=1e-13)
    out.backward(np.ones(out.shape))
    np.testing.assert_allclose(w.grad, x_data.reshape(6, 4).T @ np.ones((6, 2)), rtol=1e-13)
    assert x.grad is None


def test_linear_second_derivative():
    rng = np.random.default_rng(4)
    x = ng.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    w = ng.tensor(rng.standard_normal((3, 2)), requires_grad=True)
    b = ng.tensor(rng.standard_normal(2), requires_grad=True)
    assert second_derivatives_match(lambda p, q, r: F.linear(p, q, r) ** 2, [x, w, b])


def test_linear_keeps_float32():
    rng = np.random.default_rng(5)
    x = ng.tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    w = ng.tensor(rng.standard_normal((4, 2)).astype(np.float32), requires_grad=True)
    b = ng.tensor(np.zeros(2, dtype=np.float32), requires_grad=True)
    out = F.linear(x, w, b)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


def test_linear_shape_errors_name_both_shapes():
    x = ng.tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"linear: input of shape \(2, 3\) does not fit weight of shape \(4, 5\)"):
        F.linear(x, ng.tensor(np.zeros((4, 5))))
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(5,\) to match weight \(3, 5\), got \(3,\)"):
        F.linear(x, ng.tensor(np.zeros((3, 5))), ng.tensor(np.zeros(3)))
    with pytest.raises(ValueError, match=r"linear: weight must be 2-D \(in, out\), got shape \(3,\)"):
        F.linear(x, ng.tensor(np.zeros(3)))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_embedding_gradient_under_each_backend(backend):
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 8, (4, 5))
    weight = ng.tensor(rng.standard_normal((8, 3)), requires_grad=True)
    g = rng.standard_normal((4, 5, 3))
    with ng.use_backend(backend):
        F.embedding(ids, weight).backward(g)
    np.testing.assert_allclose(
        weight.grad, scatter_add_reference(ids.reshape(-1), g.reshape(-1, 3), 8), rtol=1e-13, atol=1e-13
    )
