"""npgrad.testing: the strategies draw what they promise, and assert_gradients_close can fail."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad.testing import (
    assert_float32_matches_float64,
    assert_gradients_close,
    attention_masks,
    axes,
    class_targets,
    float_arrays,
    mutually_broadcastable_shapes,
    shapes,
)


def test_import_npgrad_does_not_import_hypothesis():
    code = "import sys, npgrad; assert 'hypothesis' not in sys.modules, 'npgrad imported hypothesis'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ arrays and shapes


@given(float_arrays(shape=shapes(max_dims=3), min_value=-2.0, max_value=0.5))
def test_float_arrays_respect_value_bounds(x):
    assert x.dtype == np.float64 and 1 <= x.ndim <= 3
    assert np.all((x >= -2.0) & (x <= 0.5))


@given(float_arrays(shape=(4, 3), dtype=np.float32, min_magnitude=0.1, max_magnitude=3.0))
def test_float_arrays_respect_magnitude_bounds_in_float32(x):
    assert x.shape == (4, 3) and x.dtype == np.float32
    assert np.all((np.abs(x) >= 0.1) & (np.abs(x) <= 3.0))


@given(float_arrays(shape=st.just((20, 8)), min_magnitude=0.5, max_magnitude=1.0, from_seed=True))
def test_float_arrays_from_seed(x):
    assert x.shape == (20, 8)
    assert np.all((np.abs(x) >= 0.5) & (np.abs(x) <= 1.0))
    assert np.unique(x).size == x.size  # never degenerate


def test_float_arrays_draw_both_signs_by_magnitude():
    find(float_arrays(shape=(2,), min_magnitude=1.0, max_magnitude=2.0), lambda x: x[0] < 0 < x[1])


def test_float_arrays_bad_arguments():
    with pytest.raises(ValueError, match="either"):
        float_arrays(shape=(2,), min_value=0, min_magnitude=1).example()
    with pytest.raises(ValueError, match="float type"):
        float_arrays(shape=(2,), dtype=np.int64).example()


@given(mutually_broadcastable_shapes(num_shapes=3))
def test_mutually_broadcastable_shapes_broadcast(drawn):
    assert len(drawn) == 3
    np.broadcast_shapes(*drawn)  # raises if they do not


def test_mutually_broadcastable_shapes_draw_stretched_axes():
    find(mutually_broadcastable_shapes(), lambda s: len(s[0]) != len(s[1]) or any(a != b for a, b in zip(s[0], s[1])))


@given(st.data())
def test_axes_are_valid_reduction_axes(data):
    x = data.draw(float_arrays(shape=shapes(min_dims=1, max_dims=4), from_seed=True))
    axis = data.draw(axes(x.ndim))
    np.sum(x, axis=axis)  # NumPy accepts it: None, an int in range, or distinct axes


# ------------------------------------------------------------------------------ masks and targets


@given(attention_masks(batch=(2, 3), lq=4, lk=5, allow_fully_masked=False))
def test_masks_without_fully_masked_rows(mask):
    assert mask.shape == (2, 3, 4, 5) and mask.dtype == np.bool_
    assert mask.any(axis=-1).all()


def test_masks_with_fully_masked_rows_occur():
    find(attention_masks(batch=2, lq=3, lk=6), lambda m: (~m.any(axis=-1)).any() and m.any())


@given(attention_masks(batch=st.integers(1, 3), lq=3, lk=4, kind="padding"))
def test_padding_masks_are_prefixes_broadcast_over_queries(mask):
    assert mask.shape[1:] == (1, 4)
    lengths = mask.sum(axis=-1)[:, 0]
    for row, n in zip(mask[:, 0], lengths):
        assert row[:n].all() and not row[n:].any()


@given(attention_masks(batch=1, lq=4, lk=6, kind="causal", allow_fully_masked=False))
def test_causal_masks_grow_with_the_query(mask):
    m = mask[0].astype(int)
    assert np.all(np.diff(m.sum(axis=-1)) >= 0)  # later queries see at least as much
    assert np.all(np.diff(m, axis=-1) <= 0)  # each row is a prefix
    assert m.sum(axis=-1).min() >= 1


@given(class_targets(shape=(3, 5), num_classes=4, ignore_index=-1, ignore_fraction=0.5))
def test_class_targets_in_range_and_ignored_at_most_the_fraction(t):
    assert t.dtype == np.int64 and t.shape == (3, 5)
    assert np.all(((t >= 0) & (t < 4)) | (t == -1))
    assert np.sum(t == -1) <= 7


def test_class_targets_can_ignore_everything():
    find(class_targets(shape=(3,), num_classes=2, ignore_fraction=1.0), lambda t: np.all(t == -100))


# ------------------------------------------------------------------------------ assert_gradients_close


class Cube(ng.Function):
    """x**3 with a correct first derivative and a deliberately wrong differentiable_backward:
    it treats 3x^2 as a constant (a wrapped copy of the data), so second derivatives are lost."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return g * 3 * x**2

    @staticmethod
    def differentiable_backward(ctx, g):
        (x,) = ctx.saved
        return g * ng.tensor(3 * x**2)


class WrongSquare(ng.Function):
    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, g):
        return g * 2.1


@settings(max_examples=10)
@given(float_arrays(shape=shapes(max_dims=2, max_side=4), dtype=np.float32, min_magnitude=0.2, max_magnitude=2.0))
def test_assert_gradients_close_checks_in_float64(x):
    seen = []

    def fn(t):
        seen.append(t.dtype)
        return t * t * t

    assert_gradients_close(fn, [ng.tensor(x, requires_grad=True)])  # float32 in: no refusal
    assert set(seen) == {np.dtype(np.float64)}


def test_assert_gradients_close_fails_on_wrong_first_derivative():
    with pytest.raises(ng.GradcheckError):
        assert_gradients_close(lambda t: WrongSquare.apply(t), [np.array([0.5, 1.5, -2.0])])


def test_assert_gradients_close_order_2_fails_on_wrong_second_derivative():
    x = np.array([0.5, 1.5, -2.0])
    assert_gradients_close(lambda t: Cube.apply(t), [x])  # first order is right
    with pytest.raises(ng.GradcheckError) as info:
        assert_gradients_close(lambda t: Cube.apply(t), [x], order=2)
    assert info.value.order == 2


# ------------------------------------------------------------------------------ assert_float32_matches_float64


class Float32OnlySlip(ng.Function):
    """tanh with a right float64 backward and a float32 one that is 0.1% too big (~8000 eps32)."""

    @staticmethod
    def forward(ctx, x):
        y = np.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        gx = g * (1 - y * y)
        return gx * np.float32(1.001) if gx.dtype == np.float32 else gx


class Promotes(ng.Function):
    """An op whose float32 path silently computes in float64."""

    @staticmethod
    def forward(ctx, x):
        return x.astype(np.float64) * 2.0

    @staticmethod
    def backward(ctx, g):
        return g * 2.0


@settings(max_examples=10)
@given(float_arrays(shape=shapes(max_dims=2, max_side=4), dtype=np.float32, min_value=-2.0, max_value=2.0))
def test_assert_float32_matches_float64_passes_for_a_right_op_and_fails_for_a_float32_only_slip(x):
    out64, (grad64,) = assert_float32_matches_float64(lambda t: F.tanh(t), [x])
    assert out64.dtype == grad64.dtype == np.float64
    np.testing.assert_allclose(out64, np.tanh(x.astype(np.float64)))
    with pytest.raises(AssertionError, match="the gradient of input 0 differs"):
        assert_float32_matches_float64(lambda t: Float32OnlySlip.apply(t), [x])


def test_assert_float32_matches_float64_refuses_a_promoting_op():
    with pytest.raises(AssertionError, match="gave a float64 output"):
        assert_float32_matches_float64(lambda t: Promotes.apply(t), [np.ones(3, np.float32)])


def test_assert_float32_matches_float64_scales_for_cancelling_results_and_nan():
    # One class with label smoothing: loss = lse - 0.9 x - 0.1 x = 0 exactly, float32 keeps ~eps |x| of it.
    x = np.array([[0.37719065]], np.float32)
    target = np.array([0])

    def loss(t):
        return F.cross_entropy(t, target, label_smoothing=0.1, reduction="sum")

    with ng.use_backend("numpy"):
        with pytest.raises(AssertionError, match="the output differs"):
            assert_float32_matches_float64(loss, [x], scales={0: 1.0})
        assert_float32_matches_float64(loss, [x], scales={"output": 2 * 0.378, 0: 1.0})
        # Every target ignored: the mean is nan in both dtypes (and agrees), the gradient 0.
        assert_float32_matches_float64(lambda t: F.cross_entropy(t, np.array([-100])), [x])
    with pytest.raises(ValueError, match="scales keys"):
        assert_float32_matches_float64(loss, [x], scales={1: 1.0})
    with pytest.raises(ValueError, match="no input"):
        assert_float32_matches_float64(loss, [ng.tensor(x)])
