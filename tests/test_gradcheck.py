"""gradcheck, jacobian and numerical_jacobian: they pass on correct derivatives and, above all, fail
(with the right input, element and values named) on wrong ones."""

import numpy as np
import pytest

import npgrad as ng


def _rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


class Sin(ng.Function):
    """A correct user primitive."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.sin(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return g * np.cos(a)


class WrongSin(ng.Function):
    """sin with a deliberately wrong derivative (sin instead of cos)."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.sin(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return g * np.sin(a)


class SquareWrongAt(ng.Function):
    """a**2 whose derivative is wrong at exactly one element, given by ``bad_index``."""

    bad_index = (1, 2)

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        da = 2 * a
        da[SquareWrongAt.bad_index] += 0.5
        return g * da


class MulWrongSecond(ng.Function):
    """a * b with a wrong gradient for b only."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return g * b, g * a * 1.01


# ------------------------------------------------------------------------------ passes


@pytest.mark.parametrize("mode", ["full", "fast", "auto"])
def test_correct_derivatives_pass(mode):
    x = ng.tensor(_rand(3, 4), requires_grad=True)
    w = ng.tensor(_rand(4, 2, seed=1), requires_grad=True)
    assert ng.gradcheck(lambda x, w: Sin.apply(x) * x @ w, [x, w], mode=mode) is True


def test_broadcasting_and_tuple_outputs_pass():
    a = ng.tensor(_rand(2, 3), requires_grad=True)
    b = ng.tensor(_rand(3, seed=1), requires_grad=True)
    for mode in ("full", "fast"):
        assert ng.gradcheck(lambda a, b: (a * b, a / (b * b + 1.0), -b), [a, b], mode=mode)


def test_ndarray_inputs_are_checked_and_constants_pass_through():
    index = np.array([2, 0, 1])  # integer: passes through unchanged
    scale = ng.tensor(_rand(3, seed=2))  # float without requires_grad: constant
    seen = {}

    def fn(x, idx, s, power):
        seen["idx"], seen["s"], seen["power"] = idx, s, power
        return (x**power) * s

    assert ng.gradcheck(fn, [_rand(3), index, scale, 3])
    assert seen["idx"] is index and seen["s"] is scale and seen["power"] == 3


def test_large_input_uses_fast_mode_and_passes():
    x = ng.tensor(_rand(40, 30), requires_grad=True)  # 1200 elements > the full-mode bound
    assert ng.gradcheck(lambda x: Sin.apply(x) * x, [x])


# ------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_wrong_backward_fails_with_details(mode):
    x = ng.Tensor(_rand(3, 4), requires_grad=True, name="x")
    with pytest.raises(ng.GradcheckError) as info:
        ng.gradcheck(lambda x: WrongSin.apply(x), [x], mode=mode)
    err = info.value
    assert isinstance(err, AssertionError)
    assert err.input_index == 0 and err.input_name == "x"
    message = str(err)
    assert "input 0 ('x'" in message and "analytic" in message and "numeric" in message
    # The reported values are the ones of the worst element: analytic uses sin, numeric cos.
    assert abs(err.analytic - err.numeric) > 1e-3
    assert err.element_index is not None and len(err.element_index) == 2


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_failure_names_the_wrong_element(mode):
    x = ng.tensor(_rand(3, 4) + 3.0, requires_grad=True)
    with pytest.raises(ng.GradcheckError) as info:
        ng.gradcheck(lambda x: SquareWrongAt.apply(x), [x], mode=mode)
    err = info.value
    assert err.element_index == SquareWrongAt.bad_index
    assert "[1, 2]" in str(err)
    if mode == "full":  # full mode also names the output element: the diagonal entry
        assert err.output_index == (0, SquareWrongAt.bad_index)
        assert err.analytic == pytest.approx(2 * x.data[1, 2] + 0.5)
        assert err.numeric == pytest.approx(2 * x.data[1, 2], rel=1e-6)


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_failure_names_the_wrong_input(mode):
    a = ng.tensor(_rand(2, 3), requires_grad=True)
    b = ng.Tensor(_rand(2, 3, seed=1), requires_grad=True, name="b")
    with pytest.raises(ng.GradcheckError) as info:
        ng.gradcheck(lambda a, b: MulWrongSecond.apply(a, b), [a, b], mode=mode)
    assert info.value.input_index == 1 and info.value.input_name == "b"


def test_nan_gradient_fails():
    class NanGrad(ng.Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, g):
            return g * np.nan

    with pytest.raises(ng.GradcheckError):
        ng.gradcheck(lambda x: NanGrad.apply(x), [_rand(3)])


def test_small_errors_within_tolerance_pass_and_outside_fail():
    class Biased(ng.Function):
        bias = 0.0

        @staticmethod
        def forward(ctx, a):
            return a * 3

        @staticmethod
        def backward(ctx, g):
            return g * (3 + Biased.bias)

    x = _rand(4)
    Biased.bias = 1e-7
    assert ng.gradcheck(lambda x: Biased.apply(x), [x])
    Biased.bias = 1e-2
    with pytest.raises(ng.GradcheckError):
        ng.gradcheck(lambda x: Biased.apply(x), [x])


# ------------------------------------------------------------------------------ float32


def test_float32_refused_without_explicit_tolerances():
    x = ng.tensor(_rand(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="float32.*atol= and rtol= explicitly"):
        ng.gradcheck(lambda x: x * x, [x])


def test_float32_output_refused_without_explicit_tolerances():
    class ToF32(ng.Function):
        @staticmethod
        def forward(ctx, a):
            return a.astype(np.float32)

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(ValueError, match="output 0 is float32"):
        ng.gradcheck(lambda x: ToF32.apply(x), [_rand(3)])


def test_float32_with_explicit_tolerances_checks_the_float32_path():
    x = ng.tensor(_rand(3, 4, dtype=np.float32), requires_grad=True)
    seen_dtypes = []

    def fn(x):
        seen_dtypes.append(x.dtype)
        return Sin.apply(x) * x

    assert ng.gradcheck(fn, [x], atol=1e-2, rtol=1e-2)
    assert set(seen_dtypes) == {np.dtype(np.float32)}
    with pytest.raises(ng.GradcheckError):
        ng.gradcheck(lambda x: WrongSin.apply(x), [x], atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------------------------ no side effects, usage errors


def test_user_tensors_and_grads_untouched():
    x = ng.tensor(_rand(3, 4), requires_grad=True)
    w = ng.tensor(_rand(4, 2, seed=1), requires_grad=True)  # closed over, not checked
    x.grad = np.full(x.shape, 7.0)
    before = x.data.copy()
    for mode in ("full", "fast"):
        ng.gradcheck(lambda x: Sin.apply(x) @ w, [x], mode=mode)
    np.testing.assert_array_equal(x.data, before)
    np.testing.assert_array_equal(x.grad, np.full(x.shape, 7.0))
    assert w.grad is None


def test_usage_errors():
    with pytest.raises(ValueError, match="no input to check"):
        ng.gradcheck(lambda i: i, [np.arange(3)])
    with pytest.raises(TypeError, match="must return a Tensor"):
        ng.gradcheck(lambda x: x.data, [_rand(3)])
    with pytest.raises(ValueError, match="mode"):
        ng.gradcheck(lambda x: x, [_rand(3)], mode="exhaustive")


# ------------------------------------------------------------------------------ Jacobians


def test_jacobian_of_linear_map_is_the_matrix():
    w = _rand(5, 3)
    x = _rand(3, seed=1)
    jac = ng.jacobian(lambda x: ng.tensor(w) @ x, x)
    assert jac.shape == (5, 3)
    np.testing.assert_allclose(jac, w, rtol=0, atol=0)
    np.testing.assert_allclose(ng.numerical_jacobian(lambda x: ng.tensor(w) @ x, x), w, atol=1e-8)


def test_jacobian_shape_and_elementwise_diagonal():
    x = _rand(2, 3)
    jac = ng.jacobian(lambda x: Sin.apply(x), x)
    num = ng.numerical_jacobian(lambda x: Sin.apply(x), x)
    assert jac.shape == num.shape == (2, 3, 2, 3)
    expected = np.diag(np.cos(x).ravel()).reshape(2, 3, 2, 3)
    np.testing.assert_allclose(jac, expected, atol=1e-15)
    np.testing.assert_allclose(num, expected, atol=1e-8)


def test_jacobian_of_several_inputs_and_dtype():
    a = _rand(2, dtype=np.float32)
    b = _rand(2, seed=1, dtype=np.float32)
    ja, jb = ng.jacobian(lambda a, b: a * b, (a, b))
    assert ja.dtype == np.float32
    np.testing.assert_allclose(ja, np.diag(b))
    np.testing.assert_allclose(jb, np.diag(a))
