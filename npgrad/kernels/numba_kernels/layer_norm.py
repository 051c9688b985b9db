"""Layer norm, and residual-add + layer norm, over the rows of an (N,C) array; the backward of both.

NumPy twins: reference.layer_norm_forward, add_layer_norm_forward, layer_norm_backward
(npgrad/kernels/reference.py, section "layer norm"). The fused add reads x and r once and writes s
and y in the same pass; the backward sums gw and gb per thread chunk, so no two threads write the
same memory.
"""

import numpy as np
from numba import njit

from ._inputs import _check_2d, _check_same_shape, _float_dtype, _prep
from ._jit import _FAST, _JIT
from ._parallel import _chunks, _run


@njit(fastmath=_FAST)
def _layer_norm_row(xrow, w, b, eps, yrow):
    """Normalise one row into yrow; returns (mean, rstd). Two-pass (centred) variance, biased."""
    T = xrow.dtype.type
    inv_c = T(1.0) / T(xrow.shape[0])
    total = T(0.0)
    for j in range(xrow.shape[0]):
        total += xrow[j]
    mean = total * inv_c
    sq = T(0.0)
    for j in range(xrow.shape[0]):
        d = xrow[j] - mean
        sq += d * d
    rstd = T(1.0) / np.sqrt(sq * inv_c + eps)
    for j in range(xrow.shape[0]):
        yrow[j] = (xrow[j] - mean) * rstd * w[j] + b[j]
    return mean, rstd


@njit(**_JIT)
def _layer_norm_forward_kernel(x, r, has_residual, w, b, eps, y, s, mean, rstd, start, stop):
    # (N,C) rows. With a residual: s = x + r first (one read of x and r), then layer norm of s.
    for n in range(start, stop):
        srow = x[n]
        if has_residual:
            srow = s[n]
            xrow = x[n]
            rrow = r[n]
            for j in range(xrow.shape[0]):
                srow[j] = xrow[j] + rrow[j]
        mean[n], rstd[n] = _layer_norm_row(srow, w, b, eps, y[n])


def _layer_norm_forward(op, x, r, w, b, eps):
    dtype = _float_dtype(op, x)
    _check_2d(op, x=x) if r is None else _check_2d(op, x=x, r=r)
    x, w, b = _prep(x, dtype), _prep(w, dtype), _prep(b, dtype)
    num_rows, num_features = x.shape
    if w.shape != (num_features,) or b.shape != (num_features,):
        raise ValueError(f"{op}: w {w.shape} and b {b.shape} must have shape ({num_features},)")
    y = np.empty_like(x)
    mean = np.empty(num_rows, dtype=dtype)
    rstd = np.empty(num_rows, dtype=dtype)
    if r is None:
        r = s = x  # unused (has_residual False); one kernel signature
    else:
        _check_same_shape(op, x=x, r=r)
        r = _prep(r, dtype)
        s = np.empty_like(x)
    _run(_layer_norm_forward_kernel, _chunks(*x.shape), x, r, s is not x, w, b, dtype.type(eps), y, s, mean, rstd)
    return y, s, mean, rstd


def layer_norm_forward(x, w, b, eps):
    """y = (x - mean) * rstd * w + b over each row.   (N,C),(C,),(C,) -> y (N,C), mean (N,), rstd (N,)"""
    y, _, mean, rstd = _layer_norm_forward("layer_norm_forward", x, None, w, b, eps)
    return y, mean, rstd


def add_layer_norm_forward(x, r, w, b, eps):
    """s = x + r;  y = layer_norm(s).   (N,C),(N,C),(C,),(C,) -> y (N,C), s (N,C), mean (N,), rstd (N,)"""
    return _layer_norm_forward("add_layer_norm_forward", x, r, w, b, eps)


@njit(**_JIT)
def _layer_norm_backward_kernel(gy, x, w, mean, rstd, gx, gw_part, gb_part, start, stop):
    # Rows [start, stop); this chunk's partial sums of gw and gb go to its own gw_part, gb_part (C,),
    # summed by the caller, so no two threads write the same memory.
    num_features = x.shape[1]
    T = x.dtype.type
    inv_c = T(1.0) / T(num_features)
    for j in range(num_features):
        gw_part[j] = T(0.0)
        gb_part[j] = T(0.0)
    for n in range(start, stop):
        xrow = x[n]
        gyrow = gy[n]
        gxrow = gx[n]
        row_mean = mean[n]
        row_rstd = rstd[n]
        sum_gxhat = T(0.0)
        sum_gxhat_xhat = T(0.0)
        for j in range(num_features):
            xhat = (xrow[j] - row_mean) * row_rstd
            gxhat = gyrow[j] * w[j]
            sum_gxhat += gxhat
            sum_gxhat_xhat += gxhat * xhat
            gb_part[j] += gyrow[j]
            gw_part[j] += gyrow[j] * xhat
        mean_gxhat = sum_gxhat * inv_c
        mean_gxhat_xhat = sum_gxhat_xhat * inv_c
        for j in range(num_features):
            xhat = (xrow[j] - row_mean) * row_rstd
            gxrow[j] = row_rstd * (gyrow[j] * w[j] - mean_gxhat - xhat * mean_gxhat_xhat)


def _layer_norm_backward_chunk(args, part, start, stop):
    gy, x, w, mean, rstd, gx, gw_parts, gb_parts = args
    _layer_norm_backward_kernel(gy, x, w, mean, rstd, gx, gw_parts[part], gb_parts[part], start, stop)


def layer_norm_backward(gy, x, w, mean, rstd):
    """xhat = (x - mean) rstd;  gb = sum_n gy;  gw = sum_n gy xhat;
    gx = rstd (gy w - mean_j(gy w) - xhat mean_j(gy w xhat)).   -> gx (N,C), gw (C,), gb (C,)
    """
    dtype = _float_dtype("layer_norm_backward", x)
    _check_2d("layer_norm_backward", gy=gy, x=x)
    _check_same_shape("layer_norm_backward", gy=gy, x=x)
    gy, x, w = _prep(gy, dtype), _prep(x, dtype), _prep(w, dtype)
    mean, rstd = _prep(mean, dtype), _prep(rstd, dtype)
    chunks = _chunks(*x.shape)
    gx = np.empty_like(x)
    gw_parts = np.empty((len(chunks), x.shape[1]), dtype=dtype)  # (chunks, C)
    gb_parts = np.empty((len(chunks), x.shape[1]), dtype=dtype)
    args = (gy, x, w, mean, rstd, gx, gw_parts, gb_parts)
    _run(_layer_norm_backward_chunk, [(part, start, stop) for part, (start, stop) in enumerate(chunks)], args)
    if len(chunks) == 1:
        return gx, gw_parts[0], gb_parts[0]
    return gx, gw_parts.sum(axis=0), gb_parts.sum(axis=0)
