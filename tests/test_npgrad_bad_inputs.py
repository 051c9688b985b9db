"""npgrad arguments a hostile tester tried that were accepted, or refused with an internal error.

Each is now refused up front by a shared check (npgrad/_checks.py) with a message naming the function,
the argument and what is allowed: an axis that is not one int, a fractional ignore_index, a string
tensor, a float16 variable, a fused op that differed between backends on float16, an optimizer eps of 0
or a parameter listed twice, and finite-difference settings (eps, tolerances, directions) out of range.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import npgrad as ng
from npgrad import functional as F
from npgrad import nn, optim


def x2d(requires_grad=True, dtype=np.float64):
    return ng.tensor(np.arange(12, dtype=dtype).reshape(3, 4) / 7, requires_grad=requires_grad)


# ---------------------------------------------------------------------------------- 1. one axis
BAD_AXES = [1.0, None, (0, 1), [1], True, "1"]


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", BAD_AXES, ids=repr)
def test_softmax_axis_must_be_one_int(op, axis):
    with pytest.raises(TypeError, match=rf"^{op}: axis must be an int in \[-2, 2\) for an input with 2 axes, got "):
        getattr(F, op)(x2d(), axis=axis)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_axis_out_of_range_names_the_allowed_range(op):
    with pytest.raises(np.exceptions.AxisError, match=rf"{op}: axis -3 is out of range .* int in \[-2, 2\)"):
        getattr(F, op)(x2d(), axis=-3)


@pytest.mark.parametrize("axis", BAD_AXES, ids=repr)
def test_other_single_axis_ops_refuse_a_non_int_axis(axis):
    x = x2d()
    with pytest.raises(TypeError, match=r"^swapaxes: axis1 must be an int in \[-2, 2\)"):
        x.swapaxes(axis, 0)
    with pytest.raises(TypeError, match=r"^swapaxes: axis2 must be an int in \[-2, 2\)"):
        x.swapaxes(0, axis)
    with pytest.raises(TypeError, match=r"^concatenate: axis must be an int in \[-2, 2\)"):
        ng.concatenate([x, x], axis=axis)
    with pytest.raises(TypeError, match=r"^stack: axis must be an int in \[-3, 3\) for the stacked output"):
        ng.stack([x, x], axis=axis)
    # valid axes behave as before
    for good in (0, 1, -1, -2, np.int64(1)):
        np.testing.assert_allclose(F.softmax(x, axis=good).data.sum(axis=int(good)), 1.0)
    assert ng.stack([x, x], axis=2).shape == (3, 4, 2) and ng.stack([x, x], axis=-3).shape == (2, 3, 4)
    assert ng.concatenate([x, x], axis=-1).shape == (3, 8)
    assert x.swapaxes(np.int32(0), -1).shape == (4, 3)


def test_transpose_refuses_non_int_axes():
    with pytest.raises(TypeError, match=r"^transpose: each of axes must be an int in \[-2, 2\)"):
        x2d().transpose(1.0, 0.0)


def test_reductions_still_take_none_and_tuples_but_not_floats():
    x = x2d()
    assert x.sum(axis=None).shape == () and x.sum(axis=(0, 1)).shape == ()
    with pytest.raises(TypeError, match=r"^max: axis must be None, an int or a tuple of ints in \[-2, 2\)"):
        x.max(axis=(0, 1.0))


# ---------------------------------------------------------------------------------- 2. cross_entropy
def ce_inputs():
    return x2d(), np.array([0, 1, 3])


@pytest.mark.parametrize("ignore_index", [1.5, 2.0, True, "1", None])
def test_cross_entropy_ignore_index_must_be_an_integer(ignore_index):
    logits, target = ce_inputs()
    with pytest.raises(TypeError, match=r"^cross_entropy: ignore_index must be an integer, got "):
        F.cross_entropy(logits, target, ignore_index=ignore_index)
    # an integer ignore_index of any integer type still works
    a = F.cross_entropy(logits, target, ignore_index=np.int32(1), label_smoothing=1)
    b = F.cross_entropy(logits, target, ignore_index=1, label_smoothing=1.0)
    assert a.item() == b.item()


# (a number out of [0, 1] and an unknown reduction string were refused already)
@pytest.mark.parametrize("eps", ["0.1", None])
def test_cross_entropy_label_smoothing_must_be_a_number(eps):
    logits, target = ce_inputs()
    with pytest.raises(TypeError, match=r"^cross_entropy: label_smoothing must be a real number"):
        F.cross_entropy(logits, target, label_smoothing=eps)
    with pytest.raises(ValueError, match=r"^cross_entropy: label_smoothing must be in \[0.0, 1.0\], got 1.5"):
        F.cross_entropy(logits, target, label_smoothing=1.5)


def test_cross_entropy_reduction_must_be_a_string():
    logits, target = ce_inputs()
    for reduction in (np.array(["mean", "sum"]), np.array("mean")):
        with pytest.raises(ValueError, match=r"^cross_entropy: reduction must be one of 'mean', 'sum', 'none'"):
            F.cross_entropy(logits, target, reduction=reduction)


# ---------------------------------------------------------------------------------- 3. tensors hold numbers
@pytest.mark.parametrize(
    "data, kind",
    [
        ("abc", "strings"),
        (b"abc", "bytes"),
        (["a", "b"], "strings"),
        (np.array([1, None], dtype=object), "Python objects"),
        (np.array([1.0, 2.0], dtype=object), "Python objects"),
    ],
)
def test_tensor_refuses_non_numeric_dtypes(data, kind):
    with pytest.raises(TypeError, match=rf"^a Tensor holds numbers or booleans, got dtype .* \({kind}\)"):
        ng.tensor(data)
    for data in (True, 3, 2.5, [1, 2], np.ones(2, np.int8), np.ones(2, np.float16), np.ones(2, np.complex64)):
        assert ng.tensor(data).data.dtype == np.asarray(data).dtype


# ---------------------------------------------------------------------------------- 4. float32/float64 variables
@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_requires_grad_needs_float32_or_float64(dtype):
    if np.dtype(dtype) == np.float64:
        pytest.skip("longdouble is float64 on this platform")
    with pytest.raises(
        TypeError,
        match=rf"^requires_grad=True needs a float32 or float64 array, got dtype "
        rf"{np.dtype(dtype)}",
    ):
        ng.tensor(np.ones(3, dtype), requires_grad=True)
    with pytest.raises(TypeError, match="needs a float32 or float64 array"):
        ng.tensor(np.ones(3, dtype)).requires_grad_()
    with pytest.raises(TypeError, match="Parameter needs a float32 or float64 array"):
        nn.Parameter(np.ones(3, dtype))


FUSED = {
    "softmax": lambda h: F.softmax(h),
    "log_softmax": lambda h: F.log_softmax(h),
    "layer_norm": lambda h: F.layer_norm(h, np.ones(3, h.dtype), np.zeros(3, h.dtype)),
    "add_layer_norm": lambda h: F.add_layer_norm(h, h, np.ones(3, h.dtype), np.zeros(3, h.dtype)),
    "cross_entropy": lambda h: F.cross_entropy(h, np.array([0, 1])),
    "scaled_dot_product_attention": lambda h: F.scaled_dot_product_attention(h[None], h[None], h[None]),
    "gelu": lambda h: F.gelu(h),
}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("op", sorted(FUSED))
def test_fused_ops_refuse_float16_alike_on_both_backends(op, backend):
    h = np.linspace(-1, 1, 6).reshape(2, 3).astype(np.float16)
    with ng.use_backend(backend):
        with pytest.raises(
            TypeError,
            match=rf"^{op}: .* must be a floating-point array \(float32 or float64\), "
            r"got dtype float16",
        ):
            FUSED[op](h)
        for dtype in (np.float32, np.float64):  # the supported dtypes still work and are kept
            assert FUSED[op](h.astype(dtype)).dtype == dtype


# ---------------------------------------------------------------------------------- 5. optimizers
def a_param():
    return ng.tensor(np.ones(3), requires_grad=True)


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@pytest.mark.parametrize("eps", [0, 0.0, -1e-8, math.nan, math.inf])
def test_adam_eps_must_be_positive(cls, eps):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: eps must be in \(0.0, inf\)"):
        cls([a_param()], eps=eps)


def test_adam_eps_is_checked_when_a_state_dict_is_loaded_too():
    opt = optim.Adam([a_param()], lr=0.1)
    state = opt.state_dict()
    state["hyperparameters"].update(eps=0.0, lr=0.5)
    with pytest.raises(ValueError, match=r"eps must be in \(0.0, inf\)"):
        opt.load_state_dict(state)
    assert opt.lr == 0.1 and opt.eps == 1e-8  # nothing was loaded


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
        (dict(momentum=-0.5), r"momentum must be in \[0.0, 1.0\)"),
        (dict(momentum=math.nan), r"momentum must be in \[0.0, 1.0\)"),
        (dict(dampening=1.5), r"dampening must be in \[0.0, 1.0\]"),
    ],
)
def test_sgd_momentum_and_dampening_ranges(kwargs, message):
    with pytest.raises(ValueError, match="^SGD: " + message):
        optim.SGD([a_param()], lr=0.1, **kwargs)


def test_a_parameter_listed_twice_is_kept_once_with_a_warning_naming_it():
    a, b = a_param(), a_param()
    with pytest.warns(UserWarning, match="SGD: parameter 2 is the same Tensor as parameter 0, listed twice"):
        opt = optim.SGD([a, b, a], lr=0.1)
    assert len(opt.params) == 2
    with pytest.warns(UserWarning, match="Adam: parameter w2 is the same Tensor as parameter w, listed twice"):
        optim.Adam([("w", a), ("w2", a)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optim.Adam([a, b])  # distinct parameters: no warning


# ---------------------------------------------------------------------------------- 6. gradcheck settings
def square(a):
    return (a * a).sum()


def xin():
    return ng.tensor(np.array([0.3, -1.2, 2.0]), requires_grad=True)


@pytest.mark.parametrize("fn_name", ["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(eps=0), ValueError, r"eps must be in \(0.0, inf\), got 0"),
        (dict(eps=math.nan), ValueError, r"eps must be in \(0.0, inf\), got nan"),
        (dict(eps=-1e-6), ValueError, r"eps must be in \(0.0, inf\)"),
        (dict(eps="1e-6"), TypeError, r"eps must be a real number"),
        (dict(atol=-1.0), ValueError, r"atol must be in \[0.0, inf\)"),
        (dict(atol=math.inf), ValueError, r"atol must be in \[0.0, inf\)"),
        (dict(rtol=math.nan), ValueError, r"rtol must be in \[0.0, inf\)"),
        (dict(n_directions=0), ValueError, r"n_directions must be an integer >= 1, got 0"),
        (dict(n_directions=1.5), TypeError, r"n_directions must be an integer >= 1, got 1.5"),
        (dict(seed=-1), ValueError, r"seed must be an integer >= 0"),
        (dict(seed=0.5), TypeError, r"seed must be an integer"),
    ],
)
def test_gradcheck_settings_are_checked_before_blaming_the_derivative(fn_name, kwargs, error, message):
    calls = []

    def fn(a):
        calls.append(1)
        return square(a)

    with pytest.raises(error, match=rf"^{fn_name}: {message}"):
        getattr(ng, fn_name)(fn, [xin()], **kwargs)
    assert not calls  # refused up front, before fn runs


def test_gradgradcheck_consistency_rtol_is_checked():
    with pytest.raises(ValueError, match=r"^gradgradcheck: consistency_rtol must be in \[0.0, inf\)"):
        ng.gradgradcheck(square, [xin()], consistency_rtol=-1)
    # valid settings still pass
    assert ng.gradcheck(square, [xin()], eps=1e-6, atol=0, rtol=1e-3, mode="fast", n_directions=np.int64(2), seed=None)
    assert ng.gradgradcheck(square, [xin()], seed=3, consistency_rtol=1e-10)


@pytest.mark.parametrize("name", ["numerical_jacobian", "numerical_hessian"])
def test_numerical_derivatives_check_eps(name):
    fn = getattr(ng, name, None) or getattr(__import__("npgrad.gradcheck", fromlist=[name]), name)
    for eps in (0.0, math.nan):
        with pytest.raises(ValueError, match=rf"^{name}: eps must be in \(0.0, inf\)"):
            fn(square, xin(), eps=eps)
