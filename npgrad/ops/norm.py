"""Layer norm and residual-add + layer norm, over the last axis."""

from __future__ import annotations

import numpy as np

from ..function import Function, TensorLike, TensorResult
from ..kernels import K
from .softmax import as_float_array

_DERIVATION = r"""
    Derivation (one row of C features; mu = mean(x), sigma^2 = mean((x - mu)^2) biased,
    r = rstd = (sigma^2 + eps)^{-1/2}, xhat = (x - mu) r, y = w * xhat + b, upstream g = dL/dy):

    gb = sum_rows g,  gw = sum_rows g * xhat   (y is affine in w and b, elementwise per feature).
    Let h = g * w = dL/dxhat. Using d mu / dx_j = 1/C and d sigma^2 / dx_j = 2 (x_j - mu) / C
    (the term from d mu vanishes because sum_i (x_i - mu) = 0), so d r / dx_j = -r^3 (x_j - mu) / C
    = -r^2 xhat_j / C, the Jacobian of xhat is
        d xhat_i / dx_j = r (delta_ij - 1/C) + (x_i - mu) d r/dx_j = (r / C) (C delta_ij - 1 - xhat_i xhat_j).
    It is symmetric, so the VJP is
        gx_j = sum_i h_i d xhat_i / dx_j = r (h_j - mean_i(h_i) - xhat_j mean_i(h_i xhat_i)).
    Consequences (tested): per row <gx, 1> = 0 and <gx, xhat> = 0, because the output does not
    change when x is shifted (x + c) or scaled about its mean (up to eps).
"""


def _check_affine(op, name, p, num_features, dtype):
    """weight/bias as a (C,) array of the input's dtype (ones/zeros when None), or a clear error."""
    if p is None:
        return None
    p = as_float_array(op, p, name)
    if p.shape != (num_features,):
        raise ValueError(
            f"{op}: {name} has shape {p.shape} but the input's last axis has {num_features} "
            f"features: expected shape ({num_features},)"
        )
    return p.astype(dtype, copy=False)


class LayerNorm(Function):
    __doc__ = (
        r"""y = (x - mean) / sqrt(var + eps) * w + b over the last axis (biased variance).

    weight w and bias b have shape (C,) or are None (then 1 and 0, with no gradient).
    backward runs the fused kernel K.layer_norm_backward on the saved mean and rstd;
    differentiable_backward is the same VJP in Tensor ops with mean and rstd recomputed in the graph.
    """
        + _DERIVATION
    )

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        _check_eps("layer_norm", eps)
        x = as_float_array("layer_norm", x)
        if x.ndim == 0:
            raise ValueError("layer_norm: input must have at least one axis (the features), got a scalar")
        num_features = x.shape[-1]
        w = _check_affine("layer_norm", "weight", weight, num_features, x.dtype)
        b = _check_affine("layer_norm", "bias", bias, num_features, x.dtype)
        w = np.ones(num_features, dtype=x.dtype) if w is None else w
        b = np.zeros(num_features, dtype=x.dtype) if b is None else b
        y, mean, rstd = K.layer_norm_forward(x.reshape(-1, num_features), w, b, float(eps))
        # x is saved as the input itself (not a copy) so differentiable_backward sees it in the graph.
        ctx.save_for_backward(x, weight if weight is not None else w, mean, rstd)
        ctx.eps = float(eps)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        x, w, mean, rstd = ctx.saved
        num_features = x.shape[-1]
        gx, gw, gb = K.layer_norm_backward(
            g.reshape(-1, num_features), x.reshape(-1, num_features), w.astype(x.dtype, copy=False), mean, rstd
        )
        return gx.reshape(x.shape), gw, gb

    @staticmethod
    def differentiable_backward(ctx, g):
        x, w, _, _ = ctx.saved_tensors
        return _layer_norm_vjp_tensors(x, w, g, ctx.eps)


class AddLayerNorm(Function):
    __doc__ = (
        r"""y = layer_norm(x + residual) over the last axis: the residual connection and the norm fused.

    With s = x + residual (broadcasting), ds/dx = ds/dresidual = identity, so
    dL/dx = dL/dresidual = dL/ds, which is layer norm's input gradient at s (below, with x -> s).
    The sum s is not kept: x and residual are (they are usually alive anyway, and keeping them
    lets differentiable_backward see both in the graph); the backward recomputes s = x + residual.
    backward runs the fused kernel, differentiable_backward the Tensor-op VJP (as LayerNorm).
    """
        + _DERIVATION
    )

    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps=1e-5):
        _check_eps("add_layer_norm", eps)
        x = as_float_array("add_layer_norm", x, "x")
        residual = as_float_array("add_layer_norm", residual, "residual")
        shape = _sum_shape(x, residual)
        num_features = shape[-1]
        dtype = np.result_type(x, residual)
        w = _check_affine("add_layer_norm", "weight", weight, num_features, dtype)
        b = _check_affine("add_layer_norm", "bias", bias, num_features, dtype)
        w = np.ones(num_features, dtype=dtype) if w is None else w
        b = np.zeros(num_features, dtype=dtype) if b is None else b
        y, _, mean, rstd = K.add_layer_norm_forward(_rows(x, shape), _rows(residual, shape), w, b, float(eps))
        ctx.save_for_backward(x, residual, weight if weight is not None else w, mean, rstd)
        ctx.eps, ctx.shape = float(eps), shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        x, residual, w, mean, rstd = ctx.saved
        num_features = ctx.shape[-1]
        s = np.add(x, residual)  # (..., C) recomputed residual sum
        gs, gw, gb = K.layer_norm_backward(
            g.reshape(-1, num_features), s.reshape(-1, num_features), w.astype(s.dtype, copy=False), mean, rstd
        )
        gs = gs.reshape(ctx.shape)
        return gs, gs, gw, gb  # dL/dx = dL/dresidual = dL/ds

    @staticmethod
    def differentiable_backward(ctx, g):
        x, residual, w, _, _ = ctx.saved_tensors
        gs, gw, gb = _layer_norm_vjp_tensors(x + residual, w, g, ctx.eps)
        return gs, gs, gw, gb


def _sum_shape(x, residual):
    try:
        shape = np.broadcast_shapes(x.shape, residual.shape)
    except ValueError:
        raise ValueError(
            f"add_layer_norm: x of shape {x.shape} and residual of shape {residual.shape} do not broadcast"
        ) from None
    if len(shape) == 0:
        raise ValueError("add_layer_norm: inputs must have at least one axis (the features), got scalars")
    return shape


def _check_eps(op, eps):
    """eps keeps 1 / sqrt(var + eps) finite for a constant row (var = 0): a finite number > 0, as nn.LayerNorm requires
    (0 gave NaN on one backend and ZeroDivisionError on the other; a negative eps, the root of a negative number)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) or not 0 < eps < np.inf:
        raise ValueError(f"{op}: eps must be a finite number > 0, got {eps!r}")


def _rows(a, shape):
    """a broadcast to ``shape`` and flattened to (N, C) rows (a view when a already has the shape)."""
    return np.broadcast_to(a, shape).reshape(-1, shape[-1])


def _layer_norm_vjp_tensors(x, w, g, eps):
    """The layer-norm VJP written with Tensor ops (for create_graph): the formula of the docstring.

    mean and rstd are recomputed from x in the graph (the saved ones are constants).
    """
    lead_axes = tuple(range(g.ndim - 1))
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    rstd = ((centred * centred).mean(axis=-1, keepdims=True) + eps) ** -0.5
    xhat = centred * rstd
    h = g * w  # dL/dxhat
    gx = rstd * (h - h.mean(axis=-1, keepdims=True) - xhat * (h * xhat).mean(axis=-1, keepdims=True))
    gw = (g * xhat).sum(axis=lead_axes) if lead_axes else g * xhat
    gb = g.sum(axis=lead_axes) if lead_axes else g
    return gx, gw, gb


def layer_norm(
    x: TensorLike, weight: TensorLike | None = None, bias: TensorLike | None = None, eps: float = 1e-5
) -> TensorResult:
    """Layer norm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias (biased variance).

    ``weight`` and ``bias`` have shape (C,) or are None. Mean and variance are computed in two
    passes, so float32 stays accurate for inputs with a large mean.
    """
    return LayerNorm.apply(x, weight, bias, eps=eps)


def add_layer_norm(
    x: TensorLike,
    residual: TensorLike,
    weight: TensorLike | None = None,
    bias: TensorLike | None = None,
    eps: float = 1e-5,
) -> TensorResult:
    """layer_norm(x + residual, weight, bias, eps) as one fused op (a post-LN residual connection)."""
    return AddLayerNorm.apply(x, residual, weight, bias, eps=eps)
