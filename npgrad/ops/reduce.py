"""Reductions: sum, mean, max over ``axis`` (None, an int, a negative int or a tuple), ``keepdims``.

The derivative of a reduction sends each output gradient back to the elements it came from:
a sum copies it to every reduced element, a mean copies it divided by the count, a max sends it
to the maximal element(s). Backward therefore first re-inserts the reduced axes (size 1) into
``g`` and then broadcasts to the input's shape; ``np.broadcast_to`` is a read-only view, so no
copy of the input's size is made until a consumer actually combines it with something.
Each backward is written once, for arrays and (``create_graph=True``) Tensors alike.
"""

import numpy as np

from .._checks import check_axis, is_int
from ..function import Function, TensorBase, backward_on_tensors
from .shape import BroadcastTo, select


def normalize_axis(axis, ndim, op="reduce"):
    """``axis`` (None, int, negative int, tuple) -> a sorted tuple of non-negative axes.

    None means every axis. Raises a clear error for an axis of the wrong type, out of range or repeated.
    """
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if not all(map(is_int, axes)):
        raise TypeError(f"{op}: axis must be None, an int or a tuple of ints in [{-ndim}, {ndim}), got {axis!r}")
    out = [check_axis(op, a, ndim) for a in axes]
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def _keepdims_shape(shape, axes):
    """The output shape with the reduced axes kept as size 1."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _expand(g, in_shape, axes):
    """Reshape ``g`` to the keepdims shape of the reduction (works for arrays and Tensors)."""
    return g.reshape(_keepdims_shape(in_shape, axes))


def _broadcast(g, shape):
    """g broadcast to ``shape``: a read-only view of an array, the BroadcastTo primitive on a Tensor."""
    return BroadcastTo.apply(g, shape=shape) if isinstance(g, TensorBase) else np.broadcast_to(g, shape)


class Sum(Function):
    r"""out = \sum_{i \in axes} x_i.

    dL/dx_j = g_{j with the reduced axes dropped}: the output gradient broadcast back over the
    reduced axes (every summed element contributed with weight 1).
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = normalize_axis(axis, np.ndim(x), "sum")
        ctx.axes, ctx.keepdims = axes, keepdims
        return np.sum(x, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        shape = ctx.input_shapes[0]
        return _broadcast(_expand(g, shape, ctx.axes), shape)

    differentiable_backward = backward_on_tensors


def _count(shape, axes):
    n = 1
    for a in axes:
        n *= shape[a]
    return n


class Mean(Function):
    r"""out = (1/n) \sum_{i \in axes} x_i, with n the number of reduced elements.

    dL/dx_j = g / n, broadcast back over the reduced axes.
    (A reduction over zero elements gives NaN, as NumPy does; its gradient is then empty.)
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = normalize_axis(axis, np.ndim(x), "mean")
        ctx.axes, ctx.keepdims = axes, keepdims
        return np.mean(x, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        shape = ctx.input_shapes[0]
        n = _count(shape, ctx.axes)
        # Divide the small gradient before broadcasting it (one pass over g, not over x).
        # 1.0 / n is a Python float: it keeps g's dtype (float32 stays float32).
        scaled = g * (1.0 / n) if n else g
        return _broadcast(_expand(scaled, shape, ctx.axes), shape)

    differentiable_backward = backward_on_tensors


class Max(Function):
    r"""out = \max_{i \in axes} x_i  (amax: values only).

    dL/dx_j = g * [x_j == out] / (number of i with x_i == out).

    Tie policy: when several elements share the maximum, the gradient is split equally among
    them (as PyTorch's ``amax``), so the sum over the reduced axes of dL/dx equals g exactly and
    the backward does not depend on which tied element NumPy would report as the argmax.
    If the maximum is NaN (an input NaN), the gradient goes to the NaN element(s).
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = normalize_axis(axis, np.ndim(x), "max")
        if np.size(x) == 0 or any(np.shape(x)[a] == 0 for a in axes):
            raise ValueError(f"max: cannot reduce over an empty axis (input shape {np.shape(x)}, axis {axis!r})")
        ctx.axes, ctx.keepdims = axes, keepdims
        out_kept = np.max(x, axis=axes, keepdims=True)
        ctx.save_for_backward(x, out_kept)
        return out_kept if keepdims else out_kept.reshape(tuple(n for i, n in enumerate(np.shape(x)) if i not in axes))

    @staticmethod
    def backward(ctx, g):
        x, out_kept = ctx.saved
        if isinstance(x, TensorBase):  # create_graph: the tie weights are piecewise constant in x,
            x, out_kept = x.data, out_kept.data  # so they are data (derivative 0 almost everywhere)
        hit = x == out_kept
        if np.isnan(out_kept).any():  # NaN never equals itself: route the gradient to the NaNs
            hit |= np.isnan(x) & np.isnan(out_kept)
        count = hit.sum(axis=ctx.axes, keepdims=True).astype(x.dtype if x.dtype.kind == "f" else np.float64)
        share = _expand(g, ctx.input_shapes[0], ctx.axes) / count  # keepdims shape, small
        return select(hit, share, 0)  # one pass over x's shape

    differentiable_backward = backward_on_tensors
