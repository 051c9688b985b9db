"""Softmax and log-softmax over the rows of an (N,V) array, forward and backward.

NumPy twins: reference.softmax_forward, softmax_backward, log_softmax_forward, log_softmax_backward
(npgrad/kernels/reference.py, section "softmax"). Fused: a row is read from memory once, then every
pass over it (max, exp-sum, normalise) runs in the L1/L2 cache; NumPy makes a full pass over the
whole array for every elementary operation.
"""

import numpy as np
from numba import njit

from ._inputs import _check_2d, _check_same_shape, _float_dtype, _prep
from ._intrinsics import _exp, _row_dot, _row_exp_sum, _row_max
from ._jit import _JIT
from ._parallel import _chunks, _run


@njit(**_JIT)
def _softmax_forward_kernel(x, y, start, stop):
    # x, y (N,V). Per row: max, then exp(x - max) written to y while summing, then y /= sum.
    for n in range(start, stop):
        xrow = x[n]
        yrow = y[n]
        row_max = _row_max(xrow)
        total = xrow.dtype.type(0.0)
        for j in range(xrow.shape[0]):
            e = _exp(xrow[j] - row_max)
            yrow[j] = e
            total += e
        inv_total = xrow.dtype.type(1.0) / total
        for j in range(yrow.shape[0]):
            yrow[j] *= inv_total


def softmax_forward(x):
    """y[n, i] = exp(x[n, i] - m_n) / sum_j exp(x[n, j] - m_n),  m_n = max_j x[n, j].   (N,V) -> (N,V)"""
    dtype = _float_dtype("softmax_forward", x)
    _check_2d("softmax_forward", x=x)
    x = _prep(x, dtype)
    y = np.empty_like(x)
    _run(_softmax_forward_kernel, _chunks(*x.shape), x, y)
    return y


@njit(**_JIT)
def _softmax_backward_kernel(y, gy, gx, start, stop):
    # gx = y * (gy - <gy, y>) row by row.   (N,V)
    for n in range(start, stop):
        yrow = y[n]
        gyrow = gy[n]
        gxrow = gx[n]
        dot = _row_dot(gyrow, yrow)
        for j in range(yrow.shape[0]):
            gxrow[j] = yrow[j] * (gyrow[j] - dot)


def softmax_backward(y, gy):
    """gx[n, i] = y[n, i] * (gy[n, i] - sum_j gy[n, j] y[n, j]).   (N,V),(N,V) -> (N,V)"""
    dtype = _float_dtype("softmax_backward", y)
    _check_2d("softmax_backward", y=y, gy=gy)
    _check_same_shape("softmax_backward", y=y, gy=gy)
    y, gy = _prep(y, dtype), _prep(gy, dtype)
    gx = np.empty_like(y)
    _run(_softmax_backward_kernel, _chunks(*y.shape), y, gy, gx)
    return gx


@njit(**_JIT)
def _log_softmax_forward_kernel(x, out, start, stop):
    # out = (x - max) - log(sum exp(x - max)) row by row.   (N,V)
    for n in range(start, stop):
        xrow = x[n]
        outrow = out[n]
        row_max = _row_max(xrow)
        log_total = np.log(_row_exp_sum(xrow, row_max))
        for j in range(xrow.shape[0]):
            outrow[j] = (xrow[j] - row_max) - log_total


def log_softmax_forward(x):
    """out[n, i] = x[n, i] - m_n - log sum_j exp(x[n, j] - m_n),  m_n = max_j x[n, j].   (N,V) -> (N,V)"""
    dtype = _float_dtype("log_softmax_forward", x)
    _check_2d("log_softmax_forward", x=x)
    x = _prep(x, dtype)
    out = np.empty_like(x)
    _run(_log_softmax_forward_kernel, _chunks(*x.shape), x, out)
    return out


@njit(**_JIT)
def _log_softmax_backward_kernel(out, gout, gx, start, stop):
    # gx = gout - exp(out) * sum(gout) row by row.   (N,V)
    for n in range(start, stop):
        outrow = out[n]
        goutrow = gout[n]
        gxrow = gx[n]
        total = goutrow.dtype.type(0.0)
        for j in range(goutrow.shape[0]):
            total += goutrow[j]
        for j in range(outrow.shape[0]):
            gxrow[j] = goutrow[j] - _exp(outrow[j]) * total


def log_softmax_backward(out, gout):
    """gx[n, i] = gout[n, i] - exp(out[n, i]) * sum_j gout[n, j].   (N,V),(N,V) -> (N,V)"""
    dtype = _float_dtype("log_softmax_backward", out)
    _check_2d("log_softmax_backward", out=out, gout=gout)
    _check_same_shape("log_softmax_backward", out=out, gout=gout)
    out, gout = _prep(out, dtype), _prep(gout, dtype)
    gx = np.empty_like(out)
    _run(_log_softmax_backward_kernel, _chunks(*out.shape), out, gout, gx)
    return gx
