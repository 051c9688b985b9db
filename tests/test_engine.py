"""The reverse-mode engine: graph bookkeeping, accumulation, memory, errors, user primitives."""

import gc
import weakref

import numpy as np
import pytest

import npgrad as ng


def _rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


class Sin(ng.Function):
    """A user-defined primitive: d sin(a)/da = cos(a)."""

    calls = 0

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.sin(a)

    @staticmethod
    def backward(ctx, g):
        Sin.calls += 1
        (a,) = ctx.saved
        return g * np.cos(a)


class Boom(ng.Function):
    """Its backward must never run (for tests of what the engine skips)."""

    @staticmethod
    def forward(ctx, a):
        return a * 1.0

    @staticmethod
    def backward(ctx, g):
        raise AssertionError("Boom.backward ran")


# ------------------------------------------------------------------------------ graph shape


def test_reused_nodes_sum_their_gradients():
    a = ng.tensor(np.array([1.5, -2.0]), requires_grad=True)
    b = a + a
    c = b + b
    c.backward(np.ones(2))
    np.testing.assert_array_equal(a.grad, [4.0, 4.0])


def test_diamond_graph():
    a = ng.tensor(np.array([0.3, 2.0]), requires_grad=True)
    y = a * a + Sin.apply(a) * a  # dy/da = 2a + cos(a) a + sin(a)
    y.sum().backward()
    np.testing.assert_allclose(a.grad, 2 * a.data + np.cos(a.data) * a.data + np.sin(a.data))


def test_same_tensor_twice_in_one_op():
    x = ng.tensor(_rand(3), requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data)


def test_long_chain_has_no_recursion_limit():
    x = ng.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(2, 1.0001**10_000), rtol=1e-9)


def test_broadcasting_gradients_are_summed_back_to_each_shape():
    a = ng.tensor(_rand(3, 1), requires_grad=True)
    b = ng.tensor(_rand(4, seed=1), requires_grad=True)
    c = ng.tensor(_rand(2, 1, 1, seed=2), requires_grad=True)
    y = a * b + c  # (2, 3, 4)
    assert y.shape == (2, 3, 4)
    y.sum().backward()
    assert a.grad.shape == (3, 1) and b.grad.shape == (4,) and c.grad.shape == (2, 1, 1)
    np.testing.assert_allclose(a.grad, 2 * b.data.sum() * np.ones((3, 1)))
    np.testing.assert_allclose(b.grad, 2 * a.data.sum() * np.ones(4))
    np.testing.assert_allclose(c.grad, np.full((2, 1, 1), 12.0))


def test_scalar_and_ndarray_operands_get_no_gradient():
    x = ng.tensor(_rand(3), requires_grad=True)
    w = _rand(3, seed=1)
    y = (2.0 * x - w) / 4 + w * x
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 0.5 + w)


# ------------------------------------------------------------------------------ accumulation and retain_graph


def test_backward_twice_accumulates():
    x = ng.tensor(_rand(3), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    (x * 3.0).sum().backward()  # a new graph adds on top
    np.testing.assert_allclose(x.grad, 4 * x.data + 3)
    x.zero_grad()
    assert x.grad is None


def test_second_backward_without_retain_graph_is_a_clear_error():
    x = ng.tensor(_rand(3), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_grad_is_never_aliased():
    a = ng.tensor(_rand(3), requires_grad=True)
    b = ng.tensor(_rand(3, seed=1), requires_grad=True)
    g = np.ones(3)
    (a + b).backward(g)  # Add hands the same array to both inputs
    assert a.grad is not b.grad and a.grad is not g
    a.grad += 1
    g[:] = 5
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_saved_buffers_and_forward_attributes_are_freed_after_backward():
    x = ng.tensor(_rand(4, 3), requires_grad=True)
    hidden = (x * 2.0).exp()  # an intermediate array, saved by exp and by mul
    probe = weakref.ref(hidden.data)
    y = (hidden * x).transpose(1, 0)  # Transpose keeps its axes on ctx
    loss = y.sum()
    nodes = []
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if isinstance(node, ng.Context):
            nodes.append(node)
            stack.extend(p for p in node.parents if p is not None)
    del hidden, y
    gc.collect()
    assert probe() is not None  # the graph keeps it alive for backward...
    loss.backward()
    gc.collect()
    assert probe() is None  # ...and backward lets it go
    assert all(node.saved == () for node in nodes)
    assert all(not hasattr(node, "axes") for node in nodes)


def test_retain_graph_keeps_buffers():
    x = ng.tensor(_rand(3), requires_grad=True)
    y = Sin.apply(x).sum()
    y.backward(retain_graph=True)
    assert y.grad_fn.parents[0].saved != ()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * np.cos(x.data))


def test_backward_records_nothing_without_create_graph():
    seen = []

    class Probe(ng.Function):
        @staticmethod
        def forward(ctx, a):
            return a * 1.0

        @staticmethod
        def backward(ctx, g):
            seen.append(ng.is_grad_enabled())
            return g

    x = ng.tensor(_rand(3), requires_grad=True)
    Probe.apply(x * x).sum().backward()
    assert seen == [False]
    assert type(x.grad) is np.ndarray
    assert ng.is_grad_enabled()


# ------------------------------------------------------------------------------ no_grad and detach


def test_no_grad_records_nothing():
    x = ng.tensor(_rand(3), requires_grad=True)
    with ng.no_grad():
        y = x * x + 1
        with ng.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and z.grad_fn is not None
    assert ng.is_grad_enabled()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_as_decorator_and_restores_after_exception():
    @ng.no_grad()
    def step(t):
        return t * 2

    x = ng.tensor(_rand(2), requires_grad=True)
    assert step(x).grad_fn is None
    with pytest.raises(ValueError):
        with ng.no_grad():
            raise ValueError("boom")
    assert ng.is_grad_enabled()


def test_detach_cuts_the_graph_and_shares_data():
    x = ng.tensor(_rand(3), requires_grad=True)
    d = (x * 2).detach()
    assert not d.requires_grad and d.grad_fn is None
    y = (x * d).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * x.data)  # d counted as a constant


# ------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved_in_values_and_gradients(dtype):
    x = ng.tensor(_rand(2, 3, dtype=dtype), requires_grad=True)
    w = ng.tensor(_rand(3, 4, seed=1, dtype=dtype), requires_grad=True)
    y = ((x * 0.5 + 1.0) @ w / 3.0) ** 2
    assert y.dtype == dtype
    y.sum().backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype


def test_float32_input_with_float64_constant_still_gets_float32_gradient():
    x = ng.tensor(_rand(3, dtype=np.float32), requires_grad=True)
    y = x * np.array([1.0, 2.0, 3.0])  # NumPy promotes the value to float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [1, 2, 3])


def test_requires_grad_on_integer_data_is_refused():
    with pytest.raises(TypeError, match="floating-point"):
        ng.tensor(np.arange(3), requires_grad=True)
    with pytest.raises(TypeError, match="floating-point"):
        ng.tensor(np.array([True, False])).requires_grad_()
    assert ng.tensor(np.arange(3)).dtype.kind == "i"  # integer data itself is fine


# ------------------------------------------------------------------------------ errors


def test_backward_on_non_scalar_needs_a_gradient():
    x = ng.tensor(_rand(2, 3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\).*y.backward\(g\)"):
        (x * 2).backward()


def test_backward_with_wrong_shape_gradient():
    x = ng.tensor(_rand(2, 3), requires_grad=True)
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        (x * 2).backward(np.ones((3, 2)))


def test_backward_on_constant_is_a_clear_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        ng.tensor(np.ones(1)).backward()


def test_user_function_returning_wrong_number_of_gradients():
    class TwoIn(ng.Function):
        @staticmethod
        def forward(ctx, a, b):
            return a + b

        @staticmethod
        def backward(ctx, g):
            return g

    a = ng.tensor(_rand(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="TwoIn.backward returned 1 gradient.*2 argument"):
        TwoIn.apply(a, a).sum().backward()


def test_user_function_returning_wrong_shape_gradient():
    class BadShape(ng.Function):
        @staticmethod
        def forward(ctx, a):
            return a * 1.0

        @staticmethod
        def backward(ctx, g):
            return np.ones((5,))

    a = ng.tensor(_rand(2, 3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"BadShape.backward.*\(5,\).*\(2, 3\)"):
        BadShape.apply(a).sum().backward()


# ------------------------------------------------------------------------------ user primitives


def test_user_defined_function():
    x = ng.tensor(_rand(3, 4), requires_grad=True)
    y = Sin.apply(x)
    assert y.grad_fn is not None and y.grad_fn.function is Sin
    np.testing.assert_allclose(y.data, np.sin(x.data))
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.cos(x.data))
    assert ng.gradcheck(lambda t: Sin.apply(t), [x])


def test_function_with_non_tensor_arguments():
    class Scale(ng.Function):
        @staticmethod
        def forward(ctx, a, factor, index):
            ctx.factor = factor
            assert isinstance(index, np.ndarray) and index.dtype.kind == "i"
            return a * factor

        @staticmethod
        def backward(ctx, g):
            return g * ctx.factor, None, None

    x = ng.tensor(_rand(3), requires_grad=True)
    y = Scale.apply(x, 3.0, np.arange(2))
    assert y.grad_fn.needs_input_grad == (True, False, False)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 3.0)


# ------------------------------------------------------------------------------ ng.grad


def test_grad_returns_gradients_without_touching_dot_grad():
    a = ng.tensor(_rand(3), requires_grad=True)
    b = ng.tensor(_rand(3, seed=1), requires_grad=True)
    y = (a * b).sum()
    ga, gb = ng.grad(y, [a, b])
    np.testing.assert_allclose(ga, b.data)
    np.testing.assert_allclose(gb, a.data)
    assert a.grad is None and b.grad is None
    assert type(ga) is np.ndarray


def test_grad_single_input_grad_outputs_and_intermediate():
    x = ng.tensor(_rand(3), requires_grad=True)
    h = x * 2
    y = Sin.apply(h)
    v = _rand(3, seed=3)
    np.testing.assert_allclose(ng.grad(y, x, grad_outputs=v, retain_graph=True), v * np.cos(h.data) * 2)
    gh = ng.grad(y, h, grad_outputs=v)  # w.r.t. an intermediate tensor
    np.testing.assert_allclose(gh, v * np.cos(h.data))


def test_grad_unused_input():
    a = ng.tensor(_rand(3), requires_grad=True)
    b = ng.tensor(_rand(3, seed=1), requires_grad=True)
    y = (a * 2).sum()
    with pytest.raises(RuntimeError, match="input 1.*not used.*allow_unused"):
        ng.grad(y, [a, b], retain_graph=True)
    ga, gb = ng.grad(y, [a, b], allow_unused=True)
    assert gb is None
    np.testing.assert_allclose(ga, 2.0)


def test_grad_skips_branches_that_do_not_reach_the_inputs():
    a = ng.tensor(_rand(3), requires_grad=True)
    b = ng.tensor(_rand(3, seed=1), requires_grad=True)
    y = (a * 2 + Boom.apply(b)).sum()
    np.testing.assert_allclose(ng.grad(y, a), 2.0)  # Boom.backward would raise


def test_grad_results_are_copies():
    a = ng.tensor(_rand(3), requires_grad=True)
    b = ng.tensor(_rand(3, seed=1), requires_grad=True)
    g = np.ones(3)
    ga, gb = ng.grad(a + b, [a, b], grad_outputs=g)
    ga += 1
    np.testing.assert_array_equal(gb, np.ones(3))
    np.testing.assert_array_equal(g, np.ones(3))


def test_grad_input_errors():
    y = ng.tensor(_rand(3), requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="does not require grad"):
        ng.grad(y.sum(), ng.tensor(_rand(3)))


def test_forward_must_return_one_ndarray():
    class ReturnsTensor(ng.Function):
        @staticmethod
        def forward(ctx, a):
            return ng.tensor(a)

    class ReturnsTuple(ng.Function):
        @staticmethod
        def forward(ctx, a):
            return a, a

    x = ng.tensor(_rand(2), requires_grad=True)
    with pytest.raises(TypeError, match="ReturnsTensor.forward returned a Tensor"):
        ReturnsTensor.apply(x)
    with pytest.raises(TypeError, match="ReturnsTuple.forward returned a tuple"):
        ReturnsTuple.apply(x)


def test_numpy_scalar_forward_result_becomes_a_0d_tensor():
    class Total(ng.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.shape = a.shape
            return np.sum(a)  # a NumPy scalar, not an array

        @staticmethod
        def backward(ctx, g):
            return np.broadcast_to(g, ctx.shape)

    x = ng.tensor(_rand(3), requires_grad=True)
    y = Total.apply(x)
    assert isinstance(y.data, np.ndarray) and y.shape == ()
    y.backward()
    np.testing.assert_array_equal(x.grad, np.ones(3))
