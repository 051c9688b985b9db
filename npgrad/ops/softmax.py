"""Softmax and log-softmax over an axis.

The kernels work on rows: the op moves ``axis`` last and flattens the other axes into N rows,
calls the kernel on (N, V), and moves the result back (a view when ``axis`` is the last one).
"""

from __future__ import annotations

import numpy as np

from .._checks import as_float_array, check_axis
from ..function import Function, TensorLike, TensorResult
from ..kernels import K


def to_rows(x, axis):
    """(..., V at axis, ...) -> (N, V): axis moved last, the others flattened (a copy only if needed)."""
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def from_rows(rows, shape, axis):
    """Inverse of :func:`to_rows` for an input of ``shape``: (N, V) -> shape (a view)."""
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    return np.moveaxis(rows.reshape(moved_shape), -1, axis)


class Softmax(Function):
    r"""y = softmax(x) along ``axis``:  y_i = exp(x_i) / sum_j exp(x_j)   (computed max-shifted).

    Jacobian (one slice along the axis): with y_i = e^{x_i} / Z,
        dy_i/dx_j = (delta_ij e^{x_i} Z - e^{x_i} e^{x_j}) / Z^2 = y_i (delta_ij - y_j).
    VJP: (g_x)_j = sum_i g_i dy_i/dx_j = y_j g_j - y_j sum_i g_i y_i, i.e.
        g_x = y * (g - <g, y>)         (<g, y> summed along the axis, broadcast back).
    Hence <g_x, 1> = <g, y> - <g, y> sum_j y_j = 0: softmax's input gradient sums to 0 per slice
    (softmax is invariant to adding a constant along the axis).
    backward runs the row kernel K.softmax_backward (arrays only); differentiable_backward is the
    same VJP in Tensor ops, for create_graph.
    """

    @staticmethod
    def forward(ctx, x, axis=-1):
        x = as_float_array("softmax", x)
        axis = check_axis("softmax", axis, x.ndim)
        ctx.axis = axis
        if x.size == 0:
            y = np.empty_like(x)
        else:
            y = from_rows(K.softmax_forward(to_rows(x, axis)), x.shape, axis)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        if y.size == 0:
            return np.zeros_like(y)
        gx = K.softmax_backward(to_rows(y, ctx.axis), to_rows(g, ctx.axis))
        return from_rows(gx, y.shape, ctx.axis)

    @staticmethod
    def differentiable_backward(ctx, g):
        (y,) = ctx.saved_tensors  # y is this node's output, so d(g_x)/dx flows through y
        return y * (g - (g * y).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    r"""out = log_softmax(x) along ``axis``:  out_i = x_i - log sum_j exp(x_j)   (computed max-shifted).

    Jacobian: d out_i / dx_j = delta_ij - exp(x_j) / sum_k exp(x_k) = delta_ij - p_j,  p = exp(out).
    VJP: (g_x)_j = sum_i g_i (delta_ij - p_j) = g_j - p_j sum_i g_i, i.e.
        g_x = g - exp(out) * sum(g)    (sum along the axis, broadcast back).
    Again <g_x, 1> = sum g - sum g * sum p = 0 per slice.
    backward runs the row kernel K.log_softmax_backward; differentiable_backward is the same VJP
    in Tensor ops, for create_graph.
    """

    @staticmethod
    def forward(ctx, x, axis=-1):
        x = as_float_array("log_softmax", x)
        axis = check_axis("log_softmax", axis, x.ndim)
        ctx.axis = axis
        if x.size == 0:
            out = np.empty_like(x)
        else:
            out = from_rows(K.log_softmax_forward(to_rows(x, axis)), x.shape, axis)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        if out.size == 0:
            return np.zeros_like(out)
        gx = K.log_softmax_backward(to_rows(out, ctx.axis), to_rows(g, ctx.axis))
        return from_rows(gx, out.shape, ctx.axis)

    @staticmethod
    def differentiable_backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g - out.exp() * g.sum(axis=ctx.axis, keepdims=True)


def softmax(x: TensorLike, axis: int = -1) -> TensorResult:
    """Softmax along ``axis`` (max-shifted, so large inputs do not overflow). Same shape and dtype as x."""
    return Softmax.apply(x, axis=axis)


def log_softmax(x: TensorLike, axis: int = -1) -> TensorResult:
    """Log-softmax along ``axis``: x - logsumexp(x) (max-shifted). Same shape and dtype as x."""
    return LogSoftmax.apply(x, axis=axis)
