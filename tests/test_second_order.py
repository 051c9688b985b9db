"""Derivatives of any order: create_graph, ng.hessian, ng.hvp, ng.gradgradcheck on every primitive."""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad.testing import attention_masks, axes, class_targets, float_arrays, mutually_broadcastable_shapes

# Legend: B batch, N rows, C features/classes, L lengths, D head size, H heads, V vocabulary.


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------------------ closed forms


def test_hessian_of_quadratic_form_is_a_plus_a_transpose():
    a = _rand(5, 5)
    x = _rand(5, seed=1)
    h = ng.hessian(lambda t: t @ (ng.tensor(a) @ t), x)
    np.testing.assert_allclose(h, a + a.T, rtol=0, atol=1e-12)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("how", ["exp-sum-log", "log_softmax", "cross_entropy"])
def test_hessian_of_log_sum_exp_is_diag_p_minus_p_p_transpose(how):
    x = _rand(6, seed=2)
    p = _softmax(x)
    if how == "exp-sum-log":  # elementary primitives
        fn = lambda t: t.exp().sum().log()  # noqa: E731
    elif how == "log_softmax":  # lse(x) = x_0 - log_softmax(x)_0
        fn = lambda t: t[0] - F.log_softmax(t, axis=-1)[0]  # noqa: E731
    else:  # cross-entropy of one row: lse(x) - x_target, Hessian the same
        fn = lambda t: F.cross_entropy(t.reshape(1, 6), np.array([3]))  # noqa: E731
    np.testing.assert_allclose(ng.hessian(fn, x), np.diag(p) - np.outer(p, p), rtol=1e-10, atol=1e-12)


def test_hessian_of_smoothed_cross_entropy_is_still_the_softmax_jacobian():
    # Label smoothing only changes the linear term (the target distribution), not the curvature.
    x = _rand(2, 5, seed=3)
    fn = lambda t: F.cross_entropy(t, np.array([1, 4]), label_smoothing=0.2, reduction="sum")  # noqa: E731
    h = ng.hessian(fn, x).reshape(10, 10)
    expected = np.zeros((10, 10))
    for row in range(2):
        p = _softmax(x[row])
        expected[row * 5 : (row + 1) * 5, row * 5 : (row + 1) * 5] = np.diag(p) - np.outer(p, p)
    np.testing.assert_allclose(h, expected, rtol=1e-10, atol=1e-12)


def test_hvp_agrees_with_hessian_times_v():
    w = _rand(3, 4)
    x = _rand(4, seed=1)
    v = _rand(4, seed=2)

    def fn(t):
        hidden = F.tanh(ng.tensor(w) @ t)  # (3,)
        return F.cross_entropy((hidden * t[:3]).reshape(1, 3), np.array([2])) + (t * t * t).sum()

    np.testing.assert_allclose(ng.hvp(fn, x, v), ng.hessian(fn, x) @ v, rtol=1e-10, atol=1e-12)


def test_third_derivative_of_tanh_matches_closed_form():
    # t = tanh x:  t' = 1 - t^2,  t'' = -2 t (1 - t^2),
    # t''' = -2 (1 - t^2)^2 + 4 t^2 (1 - t^2) = -2 sech^2 x (1 - 3 tanh^2 x).
    x = ng.tensor(np.linspace(-2.5, 2.5, 11), requires_grad=True)
    t = np.tanh(x.data)
    d1 = ng.grad(F.tanh(x).sum(), x, create_graph=True)
    d2 = ng.grad(d1.sum(), x, create_graph=True)
    d3 = ng.grad(d2.sum(), x)
    np.testing.assert_allclose(d1.data, 1 - t**2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d2.data, -2 * t * (1 - t**2), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d3, -2 * (1 - t**2) * (1 - 3 * t**2), rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------------ create_graph semantics


def test_backward_create_graph_gives_a_differentiable_grad():
    x = ng.tensor(_rand(4), requires_grad=True)
    v = _rand(4, seed=1)
    (x * x * x).sum().backward(create_graph=True)  # x.grad = 3 x^2, a Tensor with a graph
    assert isinstance(x.grad, ng.Tensor) and x.grad.grad_fn is not None
    first = x.grad.data.copy()
    np.testing.assert_allclose(first, 3 * x.data**2)
    (x.grad * v).sum().backward()  # accumulates H v = 6 x v on top
    assert type(x.grad) is np.ndarray
    np.testing.assert_allclose(x.grad, first + 6 * x.data * v)
    np.testing.assert_allclose(first, 3 * x.data**2)  # the Tensor's array was not written into


def _nodes(root):
    found, stack = [], [root.grad_fn]
    while stack:
        node = stack.pop()
        if isinstance(node, ng.Context) and all(node is not f for f in found):
            found.append(node)
            stack.extend(p for p in node.parents if p is not None)
    return found


def test_without_create_graph_buffers_are_freed_and_nothing_is_recorded():
    x = ng.tensor(_rand(3, 4), requires_grad=True)
    loss = F.log_softmax(F.tanh(x) * x, axis=-1).sum()
    nodes = _nodes(loss)
    g = ng.grad(loss, x)
    assert type(g) is np.ndarray  # a plain array: no graph behind it
    assert all(n.saved == () and n._released for n in nodes)
    with pytest.raises(RuntimeError, match="retain_graph"):
        ng.grad(loss, x)


def test_with_create_graph_buffers_are_kept_and_the_gradient_has_a_graph():
    x = ng.tensor(_rand(3, 4), requires_grad=True)
    loss = F.log_softmax(F.tanh(x) * x, axis=-1).sum()
    nodes = _nodes(loss)
    g = ng.grad(loss, x, create_graph=True)
    assert isinstance(g, ng.Tensor) and g.grad_fn is not None
    assert not any(n._released for n in nodes)
    np.testing.assert_allclose(ng.grad(loss, x), g.data)  # the graph is still usable


def test_missing_differentiable_backward_is_a_clear_error():
    class FirstOrderOnly(ng.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved
            return 2 * g * a

    with pytest.raises(NotImplementedError, match="FirstOrderOnly has no differentiable_backward"):
        ng.hessian(lambda t: FirstOrderOnly.apply(t).sum(), _rand(3))


# ------------------------------------------------------------------------------ gradgradcheck can fail


class CubeConstantSlope(ng.Function):
    """x^3, right first derivative; differentiable_backward wraps 3x^2 as a constant (wrong d2)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return 3 * g * x**2

    @staticmethod
    def differentiable_backward(ctx, g):
        (x,) = ctx.saved
        return g * ng.tensor(3 * x**2)


class SquareCutsIncomingGradient(ng.Function):
    """x^2 whose differentiable_backward detaches the incoming gradient g (d/dx right, d/dg lost)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return 2 * g * x

    @staticmethod
    def differentiable_backward(ctx, g):
        (x,) = ctx.saved_tensors
        return ng.tensor(g.data) * 2 * x


class SquareTwiceTooSteep(ng.Function):
    """x^2 with a right backward and a differentiable_backward that is consistently 2x too big:
    self-consistent, so only the comparison with the plain backward can catch it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return 2 * g * x

    @staticmethod
    def differentiable_backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 4 * g * x


def test_gradgradcheck_catches_a_consistently_wrong_differentiable_backward():
    x = np.array([0.5, -1.2, 2.0])
    with pytest.raises(ng.GradcheckError, match="differs from the plain backward") as info:
        ng.gradgradcheck(lambda t: SquareTwiceTooSteep.apply(t), [x])
    assert info.value.order == 2 and info.value.analytic == pytest.approx(2 * info.value.numeric)


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_gradgradcheck_catches_a_wrong_second_derivative(mode):
    x = ng.Tensor(np.array([0.5, -1.2, 2.0]), requires_grad=True, name="x")
    assert ng.gradcheck(lambda t: CubeConstantSlope.apply(t), [x], mode=mode)
    with pytest.raises(ng.GradcheckError) as info:
        ng.gradgradcheck(lambda t: CubeConstantSlope.apply(t), [x], mode=mode)
    err = info.value
    assert err.order == 2 and err.input_index == 0 and err.input_name == "x"
    assert "gradgradcheck failed" in str(err) and "second derivative" in str(err)
    assert err.element_index is not None


def test_gradgradcheck_catches_a_backward_that_cuts_the_incoming_gradient():
    x = np.array([0.5, -1.2, 2.0])
    ng.gradgradcheck(lambda t: SquareCutsIncomingGradient.apply(t), [x], check_grad_outputs=False)
    with pytest.raises(ng.GradcheckError) as info:
        ng.gradgradcheck(lambda t: SquareCutsIncomingGradient.apply(t), [x])
    assert info.value.input_name == "grad_outputs[0]"


def test_gradgradcheck_refuses_float32_without_tolerances():
    with pytest.raises(ValueError, match="gradgradcheck.*float32"):
        ng.gradgradcheck(lambda t: t * t * t, [_rand(3).astype(np.float32)])


class CubeGradientOffByOnePerMille(CubeConstantSlope):
    """x^3 whose differentiable_backward returns 1.001 * 3 g x^2: its value is 0.1% off the plain backward's."""

    @staticmethod
    def differentiable_backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3.003 * g * x * x


class CubeSecondDerivativeOffByOnePerMille(CubeConstantSlope):
    """x^3 whose create_graph gradient has the right value, 3 g x^2, but a derivative 0.1% too big: it is
    computed from x' = 1.001 x - 0.001 x (the second term a constant), equal to x with dx'/dx = 1.001."""

    @staticmethod
    def differentiable_backward(ctx, g):
        (x,) = ctx.saved_tensors
        x_shifted = 1.001 * x - ng.tensor(0.001 * x.data)
        return 3 * g * x_shifted * x_shifted


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_gradgradcheck_catches_a_create_graph_gradient_0_1_percent_off(mode):
    # The comparison with the plain backward is at round-off, not at finite-difference tolerances.
    x = np.array([0.5, -1.2, 2.0])
    with pytest.raises(ng.GradcheckError, match="differs from the plain backward") as info:
        ng.gradgradcheck(lambda t: CubeGradientOffByOnePerMille.apply(t), [x], mode=mode)
    assert info.value.analytic == pytest.approx(1.001 * info.value.numeric, rel=1e-12)


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_gradgradcheck_catches_a_second_derivative_0_1_percent_off(mode):
    x = np.array([0.5, -1.2, 2.0])
    f = lambda t: CubeSecondDerivativeOffByOnePerMille.apply(t)  # noqa: E731
    assert ng.gradcheck(f, [x], mode=mode)  # the first derivative is right
    with pytest.raises(ng.GradcheckError, match="second derivative") as info:
        ng.gradgradcheck(f, [x], mode=mode)
    err = info.value
    assert err.order == 2 and err.input_index == 0
    assert abs(err.analytic - err.numeric) == pytest.approx(1e-3 * abs(err.numeric), rel=0.05)


# ------------------------------------------------------------------------------ every primitive


def _arr(data, shape, low=0.5, high=2.0, signed=True):
    """A well-conditioned float64 array (values of magnitude in [low, high]; positive if not signed)."""
    if signed:
        return data.draw(float_arrays(shape=shape, min_magnitude=low, max_magnitude=high, from_seed=True))
    return data.draw(float_arrays(shape=shape, min_value=low, max_value=high, from_seed=True))


def _small_shape(data, min_dims=1, max_dims=3):
    ndim = data.draw(st.integers(min_dims, max_dims))
    return tuple(data.draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))


def _sq(t):
    """Square of a linear primitive's output: makes its second derivative non-trivial
    (d2/dx2 |op(x)|^2 = 2 op^T op) and runs its differentiable_backward on an x-dependent g."""
    return t * t


def _binary(op, positive_b=False):
    def build(data):
        sa, sb = data.draw(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3))
        return op, [_arr(data, sa), _arr(data, sb, signed=not positive_b)]

    return build


def _unary(op, positive=False):
    def build(data):
        return op, [_arr(data, _small_shape(data), signed=not positive)]

    return build


def _reduction(name):
    def build(data):
        shape = _small_shape(data)
        axis = data.draw(axes(len(shape)))
        keepdims = data.draw(st.booleans())
        return (lambda x: _sq(getattr(x, name)(axis=axis, keepdims=keepdims))), [_arr(data, shape)]

    return build


def _matmul(data):
    n, k, m = (data.draw(st.integers(1, 3)) for _ in range(3))
    kind = data.draw(st.sampled_from(["2d", "batched", "vector-left", "vector-right"]))
    a_shape = {"2d": (n, k), "batched": (2, n, k), "vector-left": (k,), "vector-right": (1, n, k)}[kind]
    b_shape = {"2d": (k, m), "batched": (k, m), "vector-left": (2, k, m), "vector-right": (k,)}[kind]
    return (lambda a, b: a @ b), [_arr(data, a_shape), _arr(data, b_shape)]


def _pow_tensor_exponent(data):
    shape = _small_shape(data, max_dims=2)
    return (lambda a, p: a**p), [_arr(data, shape, signed=False), _arr(data, shape, 0.5, 1.5)]


def _pow_constant(data):
    p = data.draw(st.sampled_from([2, 3, 0.5, -1.5]))
    return (lambda a: a**p), [_arr(data, _small_shape(data), signed=False)]


def _shape_op(data):
    shape = _small_shape(data, min_dims=2, max_dims=3)
    kind = data.draw(st.sampled_from(["reshape", "transpose", "swapaxes", "T", "broadcast_to"]))
    ops = {
        "reshape": lambda x: x.reshape(-1),
        "transpose": lambda x: x.transpose(*reversed(range(len(shape)))),
        "swapaxes": lambda x: x.swapaxes(0, -1),
        "T": lambda x: x.T,
        "broadcast_to": lambda x: x.broadcast_to((2,) + shape),
    }
    op = ops[kind]
    return (lambda x: _sq(op(x))), [_arr(data, shape)]


def _getitem(data):
    shape = (data.draw(st.integers(2, 4)), data.draw(st.integers(1, 3)))
    kind = data.draw(st.sampled_from(["slice", "int", "int-array-repeats", "bool"]))
    keys = {
        "slice": (slice(1, None), slice(None, None, -1)),
        "int": (0,),
        "int-array-repeats": (np.array([0, 1, 0, shape[0] - 1]),),  # repeated rows: gradients add up
        "bool": (np.arange(shape[0]) % 2 == 0,),
    }
    key = keys[kind]
    return (lambda x: _sq(x[key])), [_arr(data, shape)]


def _concatenate_stack(data):
    shape = _small_shape(data, max_dims=2)
    axis = data.draw(st.integers(0, len(shape) - 1))
    op = data.draw(st.sampled_from([ng.concatenate, ng.stack]))
    return (lambda a, b: _sq(op([a, b * b], axis=axis))), [_arr(data, shape), _arr(data, shape)]


def _where(data):
    shape = _small_shape(data, max_dims=2)
    cond = data.draw(float_arrays(shape=shape, from_seed=True)) > 0
    return (lambda c, a, b: _sq(ng.where(c, a, b * b))), [cond, _arr(data, shape), _arr(data, shape)]


def _masked_fill(data):
    shape = _small_shape(data, max_dims=2)
    mask = data.draw(float_arrays(shape=shape, from_seed=True)) > 0
    return (lambda x, m: _sq(F.masked_fill(x, m, 0.5))), [_arr(data, shape), mask]


def _dropout(data):
    shape = _small_shape(data)
    # A fresh generator with a fixed seed per call: every evaluation drops the same elements.
    return (lambda x: _sq(F.dropout(x, 0.4, training=True, rng=np.random.default_rng(7)))), [_arr(data, shape)]


def _gelu(data):
    approximate = data.draw(st.sampled_from(["none", "tanh"]))
    return (lambda x: F.gelu(x, approximate=approximate)), [_arr(data, _small_shape(data))]


def _embedding(data):
    vocab, width = data.draw(st.integers(2, 4)), data.draw(st.integers(1, 3))
    ids = data.draw(class_targets(shape=(data.draw(st.integers(1, 5)),), num_classes=vocab))  # repeats allowed
    return (lambda i, w: _sq(F.embedding(i, w))), [ids, _arr(data, (vocab, width))]


def _linear(data):
    n, c_in, c_out = (data.draw(st.integers(1, 3)) for _ in range(3))
    with_bias = data.draw(st.booleans())
    inputs = [_arr(data, (n, c_in)), _arr(data, (c_in, c_out))] + ([_arr(data, (c_out,))] if with_bias else [])
    return (lambda x, w, *b: F.tanh(F.linear(x, w, *b))), inputs


def _softmax_family(op):
    def build(data):
        shape = _small_shape(data)
        axis = data.draw(st.integers(-len(shape), len(shape) - 1))
        return (lambda x: op(x, axis=axis)), [_arr(data, shape)]

    return build


def _cross_entropy(data):
    rows, classes = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 4))
    target = data.draw(class_targets(shape=(rows,), num_classes=classes, ignore_fraction=0.5))
    smoothing = data.draw(st.sampled_from([0.0, 0.1]))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    fn = lambda x: F.cross_entropy(x, target, label_smoothing=smoothing, reduction=reduction)  # noqa: E731
    return fn, [_arr(data, (rows, classes))]


def _spread_rows(x):
    assume(np.std(x, axis=-1).min() > 0.3)  # keep 1/sigma moderate: finite differences stay accurate
    return x


def _layer_norm(data):
    rows, width = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 4))
    x = _spread_rows(_arr(data, (rows, width)))
    return (lambda x, w, b: F.layer_norm(x, w, b)), [x, _arr(data, (width,)), _arr(data, (width,))]


def _add_layer_norm(data):
    rows, width = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 4))
    x, residual = _arr(data, (rows, width)), _arr(data, (rows, width))
    _spread_rows(x + residual)
    return (lambda x, r, w, b: F.add_layer_norm(x, r, w, b)), [x, residual, _arr(data, (width,)), _arr(data, (width,))]


def _attention(data):
    batch, lq, lk, d = (data.draw(st.integers(1, 3)) for _ in range(4))
    mask = data.draw(st.one_of(st.none(), attention_masks(batch=batch, lq=lq, lk=lk)))
    is_causal = data.draw(st.booleans())
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)  # noqa: E731
    return fn, [_arr(data, (batch, lq, d)), _arr(data, (batch, lk, d)), _arr(data, (batch, lk, 2))]


def _multi_head_attention(data):
    heads, head_size, lq, lk = (
        data.draw(st.integers(1, 2)),
        2,
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(1, 2)),
    )
    width = heads * head_size
    mask = data.draw(st.one_of(st.none(), attention_masks(batch=(1, heads), lq=lq, lk=lk)))

    def fn(q, kv, wq, wk, wv, wo, bq, bo):
        return F.multi_head_attention(q, kv, kv, heads, wq, wk, wv, wo, b_q=bq, b_o=bo, mask=mask)

    weights = [_arr(data, (width, width), 0.2, 0.8) for _ in range(4)]
    return fn, [_arr(data, (1, lq, width)), _arr(data, (1, lk, width))] + weights + [
        _arr(data, (width,)),
        _arr(data, (width,)),
    ]


PRIMITIVES = {
    "add": _binary(lambda a, b: _sq(a + b)),
    "sub": _binary(lambda a, b: _sq(a - b)),
    "mul": _binary(lambda a, b: a * b),
    "div": _binary(lambda a, b: a / b, positive_b=True),
    "neg": _unary(lambda x: _sq(-x)),
    "pow-constant": _pow_constant,
    "pow-tensor": _pow_tensor_exponent,
    "matmul": _matmul,
    "exp": _unary(F.exp),
    "log": _unary(F.log, positive=True),
    "tanh": _unary(F.tanh),
    "sqrt": _unary(F.sqrt, positive=True),
    "relu": _unary(lambda x: _sq(F.relu(x))),
    "gelu": _gelu,
    "dropout": _dropout,
    "sum": _reduction("sum"),
    "mean": _reduction("mean"),
    "max": _reduction("max"),
    "shape-ops": _shape_op,
    "getitem": _getitem,
    "concatenate-stack": _concatenate_stack,
    "where": _where,
    "masked_fill": _masked_fill,
    "embedding": _embedding,
    "linear": _linear,
    "softmax": _softmax_family(F.softmax),
    "log_softmax": _softmax_family(F.log_softmax),
    "cross_entropy": _cross_entropy,
    "layer_norm": _layer_norm,
    "add_layer_norm": _add_layer_norm,
    "scaled_dot_product_attention": _attention,
}
FAST_MODE = {"multi_head_attention": _multi_head_attention}  # many inputs: random directions


# The drawn examples run on the NumPy reference kernels: the second-order path is the Tensor-op
# differentiable_backward, identical under both backends, and the Numba kernels' small-shape call
# overhead (~1 ms each, parallel launch) would make hundreds of tiny evaluations slow. One fixed
# example per fused op runs under Numba below.


@pytest.mark.parametrize("name", list(PRIMITIVES))
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_gradgradcheck_every_primitive(name, data):
    fn, inputs = PRIMITIVES[name](data)
    with ng.use_backend("numpy"):
        assert ng.gradgradcheck(fn, inputs, mode="full")


@pytest.mark.parametrize("name", list(FAST_MODE))
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_gradgradcheck_large_primitives(name, data):
    fn, inputs = FAST_MODE[name](data)
    with ng.use_backend("numpy"):
        assert ng.gradgradcheck(fn, inputs, mode="fast")


def test_gradgradcheck_fused_ops_under_the_default_backend():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    q, k, v = rng.standard_normal((1, 2, 2)), rng.standard_normal((1, 3, 2)), rng.standard_normal((1, 3, 2))
    mask = np.array([[[True, False, True], [False, False, False]]])  # includes a fully masked row
    checks = [
        (lambda t: F.softmax(t, axis=-1), [x]),
        (lambda t: F.log_softmax(t, axis=0), [x]),
        (lambda t: F.cross_entropy(t, np.array([3, -100]), label_smoothing=0.1), [x]),
        (lambda t, w, b: F.layer_norm(t, w, b), [x, w, b]),
        (lambda t, r, w, b: F.add_layer_norm(t, r, w, b), [x, x[::-1] * 0.5, w, b]),
        (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=mask), [q, k, v]),
    ]
    for fn, inputs in checks:
        assert ng.gradgradcheck(fn, inputs, mode="fast", n_directions=2)


# ------------------------------------------------------------------------------ docs/derivatives.md

_DOC = Path(__file__).resolve().parent.parent / "docs" / "derivatives.md"


def test_derivatives_doc_snippet_runs_and_hessians_agree(capsys):
    code = re.search(r"```python\n(.*?)```", _DOC.read_text(), re.S).group(1)
    with ng.use_backend("numpy"):
        exec(compile(code, str(_DOC), "exec"), {})
    printed = capsys.readouterr().out
    assert "cross-entropy Hessian" in printed and "layer-norm Hessian" in printed
    gaps = [float(v) for v in re.findall(r"max \|analytic - numerical\| = (\S+)", printed)]
    assert len(gaps) == 2 and max(gaps) < 1e-6


def test_derivatives_doc_references_are_current():
    """Each `file:line` reference in the guide must still point at the code it quotes."""
    root = _DOC.parent.parent
    refs = re.findall(r"\[`([\w/.]+):(\d+)`\]\([^)]*\) `([^`]+)`", _DOC.read_text())
    assert len(refs) > 30
    stale = []
    for path, line, text in refs:
        lines = (root / path).read_text().splitlines()
        number = int(line)
        if not (number <= len(lines) and text.strip() in lines[number - 1]):
            now = [i + 1 for i, source in enumerate(lines) if text.strip() in source]
            stale.append(f"{path}:{line} no longer says {text.strip()!r} (now at line(s) {now or 'none'})")
    assert not stale, "docs/derivatives.md is stale (python docs/update_refs.py re-points moved lines):\n" + "\n".join(
        stale
    )
