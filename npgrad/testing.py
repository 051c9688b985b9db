"""Property-based gradient tests for your own primitives, in a few lines.

Hypothesis strategies that draw the inputs gradient tests need (float arrays of controlled
magnitude, shapes that broadcast together, attention masks with fully masked rows, class targets
with ignored positions, reduction axes) and :func:`assert_gradients_close`, a float64 gradcheck::

    from hypothesis import given
    from npgrad.testing import float_arrays, shapes, assert_gradients_close

    @given(float_arrays(shape=shapes(max_dims=3), min_magnitude=0.1, max_magnitude=3.0))
    def test_my_op_gradient(x):
        assert_gradients_close(lambda t: MyOp.apply(t), [x])

Training runs in float32, where finite differences keep only 3-4 digits; there
:func:`assert_float32_matches_float64` checks the float32 path against the float64 one to float32
round-off (a float32-only slip of 0.1% fails it)::

    @given(float_arrays(shape=shapes(max_dims=3), dtype=np.float32))
    def test_my_op_float32_gradient(x):
        assert_float32_matches_float64(lambda t: MyOp.apply(t), [x])

This module imports hypothesis (a test-time dependency); ``import npgrad`` does not.
Every strategy argument that is a size or a shape may also be a strategy.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .gradcheck import gradcheck, gradgradcheck
from .tensor import Tensor, enable_grad
from .tensor import grad as _grad

__all__ = [
    "float_arrays",
    "shapes",
    "mutually_broadcastable_shapes",
    "attention_masks",
    "class_targets",
    "axes",
    "assert_gradients_close",
    "assert_float32_matches_float64",
]


def _resolve(draw, value):
    """Draw from ``value`` if it is a strategy, else use it as it is."""
    return draw(value) if isinstance(value, st.SearchStrategy) else value


def _as_shape(value):
    return (int(value),) if np.ndim(value) == 0 else tuple(int(n) for n in value)


# ------------------------------------------------------------------------------ shapes


def shapes(min_dims=1, max_dims=3, min_side=1, max_side=5):
    """Array shapes (tuples of ints), e.g. ``(3,)``, ``(2, 1, 4)``. Shrinks towards small shapes."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4):
    """``num_shapes`` shapes that broadcast together (NumPy rules), as a tuple of shape tuples.

    Draws size-1 axes and missing leading axes, so the gradient reduction of broadcasting is exercised.
    """
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes,
        min_dims=min_dims,
        max_dims=max_dims,
        min_side=min_side,
        max_side=max_side,
    ).map(lambda drawn: tuple(drawn.input_shapes))


def axes(ndim, allow_none=True, allow_tuple=True, allow_negative=True):
    """A reduction ``axis`` argument for an array of ``ndim`` axes: None, an int, or a tuple of distinct ints."""
    ndim = int(ndim)
    options = []
    if allow_none:
        options.append(st.none())
    if ndim > 0:
        low = -ndim if allow_negative else 0
        options.append(st.integers(low, ndim - 1))
        if allow_tuple:
            tuples = hnp.valid_tuple_axes(ndim, min_size=1)  # distinct axes, negative ones included
            if not allow_negative:
                tuples = tuples.map(lambda ax: tuple(a % ndim for a in ax))
            options.append(tuples)
    if not options:
        raise ValueError("axes: a 0-d array has no axis to draw; allow_none=True is the only choice")
    return st.one_of(*options)


# ------------------------------------------------------------------------------ float arrays


def _float_bound(value, dtype, inward):
    """``value`` rounded to ``dtype`` and moved inward, so hypothesis accepts it as an exact bound."""
    rounded = dtype.type(value)
    if inward > 0 and rounded < value:
        rounded = np.nextafter(rounded, dtype.type(np.inf))
    elif inward < 0 and rounded > value:
        rounded = np.nextafter(rounded, dtype.type(-np.inf))
    return float(rounded)


_ANY_SHAPE = shapes()


@st.composite
def float_arrays(
    draw,
    shape=_ANY_SHAPE,
    dtype=np.float64,
    min_value=None,
    max_value=None,
    min_magnitude=None,
    max_magnitude=None,
    from_seed=False,
):
    """Float arrays of a given (or drawn) shape and dtype, with values kept where derivatives behave.

    Bound the values either by ``min_value``/``max_value`` (an interval) or by magnitude:
    ``min_magnitude <= |x| <= max_magnitude`` with either sign (keep ``log``, ``1/x``, ``sqrt`` away
    from 0, or ``exp`` away from overflow). Defaults: values in [-10, 10].

    Every element is drawn separately (no repeated fill value), so hypothesis can find and shrink
    to a bad element. ``from_seed=True`` instead draws one seed and fills the array uniformly from
    NumPy's generator: faster for big arrays and never degenerate (no constant rows), at the cost
    of shrinking only the shape.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"float_arrays: dtype must be a float type, got {dtype}")
    shape = _as_shape(_resolve(draw, shape))
    if (min_value is not None or max_value is not None) and (min_magnitude is not None or max_magnitude is not None):
        raise ValueError("float_arrays: give either min_value/max_value or min_magnitude/max_magnitude, not both")
    by_magnitude = min_magnitude is not None or max_magnitude is not None
    if by_magnitude:
        low = 0.0 if min_magnitude is None else float(min_magnitude)
        high = 10.0 if max_magnitude is None else float(max_magnitude)
        if not 0 <= low <= high:
            raise ValueError(f"float_arrays: need 0 <= min_magnitude <= max_magnitude, got {low}, {high}")
    else:
        low = -10.0 if min_value is None else float(min_value)
        high = 10.0 if max_value is None else float(max_value)
        if not low <= high:
            raise ValueError(f"float_arrays: need min_value <= max_value, got {low}, {high}")

    if from_seed:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        values = rng.uniform(low, high, size=shape)
        if by_magnitude:
            values = values * rng.choice([-1.0, 1.0], size=shape)
        return np.asarray(values, dtype=dtype)  # an ndarray even for shape ()

    width = 8 * dtype.itemsize
    magnitude = st.floats(
        _float_bound(low, dtype, +1),
        _float_bound(high, dtype, -1),
        width=width,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
    )
    if by_magnitude:
        elements = st.tuples(magnitude, st.booleans()).map(lambda pair: -pair[0] if pair[1] else pair[0])
    else:
        elements = magnitude
    return draw(hnp.arrays(dtype, shape, elements=elements, fill=st.nothing()))


# ------------------------------------------------------------------------------ masks and targets


@st.composite
def attention_masks(draw, batch, lq, lk, allow_fully_masked=True, kind="random"):
    """Boolean attention masks, True = may attend, of shape ``batch + (lq, lk)``.

    ``batch`` is an int, a tuple of leading axes (e.g. ``(B, H)``), or a strategy for either.
    ``kind``: "random" (any pattern), "padding" (key padding: each batch item attends to a prefix of
    the keys, the same for every query; shape ``batch + (1, lk)``, broadcastable), or "causal"
    (query t attends to keys <= t + offset, offset drawn so that lq and lk may differ).
    With ``allow_fully_masked=False`` every query row keeps at least one True; with True, rows
    (or whole padding items) with no True at all are drawn too - the case whose output must be 0
    and whose gradient must stay finite.
    """
    batch = _resolve(draw, batch)
    batch = () if batch is None else _as_shape(batch)
    lq, lk = int(_resolve(draw, lq)), int(_resolve(draw, lk))
    if kind == "padding":
        min_len = 0 if allow_fully_masked else 1
        lengths = draw(hnp.arrays(np.int64, batch, elements=st.integers(min_len, lk), fill=st.nothing()))
        return (np.arange(lk) < lengths[..., None])[..., None, :]  # batch + (1, lk)
    if kind == "causal":
        offset = draw(st.integers(-lq if allow_fully_masked else 0, max(lk - 1, 0)))
        causal = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + offset  # (lq, lk)
        return np.broadcast_to(causal, batch + (lq, lk)).copy()
    if kind != "random":
        raise ValueError(f"attention_masks: kind must be 'random', 'padding' or 'causal', got {kind!r}")
    mask = draw(hnp.arrays(np.bool_, batch + (lq, lk), elements=st.booleans(), fill=st.nothing()))
    if not allow_fully_masked and lk > 0:
        empty = ~mask.any(axis=-1)
        keep = draw(st.integers(0, lk - 1))
        mask[empty, keep] = True
    elif allow_fully_masked and mask.size and draw(st.booleans()):
        # Make sure fully masked rows really occur (random booleans rarely give lk Falses).
        row = draw(st.integers(0, mask.size // max(lk, 1) - 1))
        mask.reshape(-1, lk)[row] = False
    return mask


@st.composite
def class_targets(draw, shape, num_classes, ignore_index=-100, ignore_fraction=0.0):
    """Integer class targets (int64) in ``[0, num_classes)``, with up to ``ignore_fraction`` of the
    positions set to ``ignore_index`` (1.0 allows every position ignored: the mean over zero targets)."""
    shape = _as_shape(_resolve(draw, shape))
    num_classes = int(_resolve(draw, num_classes))
    if num_classes < 1:
        raise ValueError(f"class_targets: num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= ignore_fraction <= 1.0:
        raise ValueError(f"class_targets: ignore_fraction must be in [0, 1], got {ignore_fraction}")
    target = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, num_classes - 1), fill=st.nothing()))
    size = target.size
    max_ignored = int(np.floor(ignore_fraction * size + 1e-9))
    if max_ignored:
        count = draw(st.integers(0, max_ignored))
        positions = draw(st.lists(st.integers(0, size - 1), min_size=count, max_size=count, unique=True))
        target.reshape(-1)[positions] = ignore_index
    return target


# ------------------------------------------------------------------------------ assertion


def _to_float64(x):
    if isinstance(x, Tensor):
        if x.dtype.kind == "f" and x.dtype != np.float64:
            return Tensor(x.data.astype(np.float64), requires_grad=x.requires_grad, name=x.name)
        return x
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x.astype(np.float64)
    return x


def assert_gradients_close(fn, inputs, order=1, eps=None, atol=None, rtol=None, mode="auto", **kwargs):
    """Assert that ``fn``'s gradients (``order=2``: also its second derivatives) match finite differences.

    Float inputs are converted to float64 first (the check is about the derivative, not round-off).
    Tolerances as :func:`npgrad.gradcheck` (atol 1e-5, rtol 1e-3) and, for ``order=2``, as
    :func:`npgrad.gradgradcheck` (atol 1e-7, rtol 1e-5: a second derivative 0.1% off fails);
    raises ``ng.GradcheckError``.
    Extra keyword arguments (``n_directions``, ``seed``, ``grad_outputs``) go to the check.
    """
    if isinstance(inputs, (Tensor, np.ndarray)):
        inputs = [inputs]
    inputs = [_to_float64(x) for x in inputs]
    if order not in (1, 2):
        raise ValueError(f"assert_gradients_close: order must be 1 or 2, got {order}")
    gradcheck(
        fn, inputs, eps=eps, atol=atol, rtol=rtol, mode=mode, **{k: v for k, v in kwargs.items() if k != "grad_outputs"}
    )
    if order == 2:
        gradgradcheck(fn, inputs, eps=eps, atol=atol, rtol=rtol, mode=mode, **kwargs)


FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _cast_argument(x, dtype):
    """A float array/Tensor as a fresh Tensor of ``dtype`` (a leaf when it is checked); others unchanged."""
    if isinstance(x, Tensor):
        if x.dtype.kind != "f":
            return x, False
        return Tensor(x.data.astype(dtype), requires_grad=x.requires_grad, name=x.name), x.requires_grad
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return Tensor(x.astype(dtype), requires_grad=True), True
    return x, False


def _float_run(fn, inputs, dtype, grad_output):
    """fn on the inputs cast to ``dtype``: (output array, [gradient arrays of the checked inputs], output dtype)."""
    call, leaves = [], []
    for x in inputs:
        t, checked = _cast_argument(x, dtype)
        call.append(t)
        if checked:
            leaves.append(t)
    with enable_grad():
        out = fn(*call)
        if not isinstance(out, Tensor):
            raise TypeError(f"assert_float32_matches_float64: fn must return one Tensor, got {type(out).__name__}")
        if not out.requires_grad:
            return out.data, [np.zeros(t.shape) for t in leaves], out.dtype
        g = np.asarray(grad_output(out.shape), dtype=np.float32).astype(out.dtype)
        grads = _grad(out, leaves, grad_outputs=g, allow_unused=True)
    return out.data, [np.zeros(t.shape) if r is None else r for t, r in zip(leaves, grads)], out.dtype


def assert_float32_matches_float64(fn, inputs, grad_output=None, scales=None, ulps=16.0, terms=None, seed=0):
    """Assert that ``fn`` and its gradients computed in float32 equal those computed in float64, to float32 round-off.

    Every float input (ndarray, or Tensor with ``requires_grad``; float Tensors without it are constants)
    is rounded to float32 once, so both runs see exactly the same values: fn runs on them as float32
    Tensors and again as float64 ones, each output is reduced with the same upstream gradient
    (``grad_output``: an array, or None for a standard normal one drawn from ``seed``, rounded to
    float32), and the float32 output and gradients must be float32 and satisfy, result by result,

        max |r32 - r64|  <=  ulps * eps32 * sqrt(terms) * scale,

    eps32 = 2^-23, ``scale`` = max |r64| over that result, ``terms`` = how many rounded terms are
    summed into one entry (default: the size of the largest input or output, a generous bound on
    the length of any reduction). That is float32 round-off relative to the magnitude of the result
    (errors of 0.1%, some 8000 eps32, fail for reductions of up to ~10^5 terms at the default ``ulps``).

    Where a result cancels (its terms are much larger than it is, e.g. a cross-entropy loss of 0 for one
    class, or a gradient p - q that is 0 when p = q = 1), its round-off is relative to the terms: pass
    their magnitude in ``scales``, a dict keyed by "output" or by the input's position in ``inputs``
    (the larger of it and max |r64| is used). Entries that are NaN in both runs agree.

    Raises AssertionError naming the result, the worst element, both values, the error and the bound.
    Returns the float64 (output, gradients) for further checks.
    """
    if isinstance(inputs, (Tensor, np.ndarray)):
        inputs = [inputs]
    inputs = list(inputs)
    positions = [i for i, x in enumerate(inputs) if _cast_argument(x, np.float32)[1]]
    if not positions:
        raise ValueError(
            "assert_float32_matches_float64: no input to differentiate (pass float ndarrays, or float "
            "Tensors with requires_grad=True)"
        )
    if grad_output is None:

        def grad_output(shape):
            return np.random.default_rng(seed).standard_normal(shape)
    elif not callable(grad_output):
        given_grad = np.asarray(grad_output.data if isinstance(grad_output, Tensor) else grad_output)
        grad_output = lambda shape: np.broadcast_to(given_grad, shape)  # noqa: E731

    out32, grads32, dtype32 = _float_run(fn, inputs, np.float32, grad_output)
    out64, grads64, dtype64 = _float_run(fn, inputs, np.float64, grad_output)
    if dtype32 != np.float32:
        raise AssertionError(
            f"assert_float32_matches_float64: float32 inputs gave a {dtype32} output "
            "(an op promoted: the float32 path is not float32)"
        )
    if dtype64 != np.float64:
        raise AssertionError(f"assert_float32_matches_float64: float64 inputs gave a {dtype64} output")
    scales = dict(scales or {})
    unknown = set(scales) - {"output", *positions}
    if unknown:
        raise ValueError(
            f"assert_float32_matches_float64: scales keys must be 'output' or positions of checked "
            f"inputs {positions}, got {sorted(map(repr, unknown))}"
        )
    if terms is None:
        terms = max([np.size(out64)] + [np.size(g) for g in grads64] + [1])
    bound = float(ulps) * FLOAT32_EPS * float(np.sqrt(terms))

    results = [("output", out32, out64)] + [(i, g32, g64) for i, g32, g64 in zip(positions, grads32, grads64)]
    for key, r32, r64 in results:
        r32 = np.asarray(r32, dtype=np.float64)
        r64 = np.asarray(r64, dtype=np.float64)
        both_nan = np.isnan(r32) & np.isnan(r64)
        diff = np.where(both_nan, 0.0, np.abs(r32 - r64))
        diff = np.where(np.isnan(diff), np.inf, diff)
        finite = r64[np.isfinite(r64)]
        scale = max(float(np.max(np.abs(finite))) if finite.size else 0.0, float(scales.get(key, 0.0)))
        allowed = bound * scale
        if diff.size and not np.max(diff) <= allowed:
            j = int(np.argmax(diff))
            element = tuple(int(e) for e in np.unravel_index(j, r64.shape))
            what = "the output" if key == "output" else f"the gradient of input {key}"
            raise AssertionError(
                f"assert_float32_matches_float64: {what} differs between float32 and float64 by more than "
                f"float32 round-off.\n"
                f"  worst entry {list(element)} of shape {r64.shape}: float32 {r32.ravel()[j]:.9g}, "
                f"float64 {r64.ravel()[j]:.17g}\n"
                f"  |diff| {diff.ravel()[j]:.3g} > {allowed:.3g} = ulps {ulps:g} * eps32 * sqrt(terms {terms}) "
                f"* scale {scale:.6g} ({diff.ravel()[j] / max(scale, 1e-300) / FLOAT32_EPS:.1f} eps32 of the scale)"
            )
    return out64, grads64
