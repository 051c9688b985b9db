"""GELU, exact (x Phi(x)) and tanh-approximated, on arrays of any shape, forward and backward.

NumPy twins: reference.gelu_forward, gelu_backward (npgrad/kernels/reference.py, section "erf, normal
cdf, gelu"). One pass over memory: x (and gy) read once, y (or gx) written once; the reference needs
~16 whole-array NumPy passes for the float32 erf alone. The backward recomputes Phi (or the tanh)
from x instead of reading a saved copy, which costs less than the extra memory traffic.

Exact: erf and Phi from _intrinsics.py (vectorised in float32, scalar but one pass in float64).
tanh: 1 + tanh(u) = 2 / (1 + exp(-2u)), so y = x / (1 + exp(-2u)) with the vectorisable exp (Numba's
np.tanh is a scalar libm call here), which is also free of the reference's cancellation in
1 + tanh(u) for x < 0.
"""

import numpy as np
from numba import njit

from .. import reference as _REF  # the tanh GELU's constants, one home
from ._inputs import _check_same_shape, _float_dtype, _prep
from ._intrinsics import _exp, _normal_cdf
from ._jit import _JIT
from ._parallel import _chunks, _run

_GELU_TANH_2K = 2.0 * _REF._TANH_K
# error_model="numpy": no exception branch on the divisions, which would keep the loops scalar.
_GELU_JIT = dict(_JIT, error_model="numpy")


@njit(**_GELU_JIT)
def _gelu_exact_forward_kernel(x, y, start, stop):
    # x, y (n,) flattened: y = x Phi(x). Every kernel here loops over slices from 0: with
    # range(start, stop) Numba cannot rule out negative indices, and their wraparound turned the
    # loads and stores into gathers and scatters (several times slower).
    xs, ys = x[start:stop], y[start:stop]
    for i in range(xs.shape[0]):
        v = xs[i]
        ys[i] = v * _normal_cdf(v)


@njit(**_GELU_JIT)
def _gelu_exact_backward_kernel(x, gy, gx, start, stop):
    # gx = gy (Phi(x) + x phi(x)),  phi(x) = exp(-x^2/2) / sqrt(2 pi).
    T = x.dtype.type
    minus_half = T(-0.5)
    inv_sqrt_2pi = T(_REF._INV_SQRT_2PI)
    xs, gys, gxs = x[start:stop], gy[start:stop], gx[start:stop]
    for i in range(xs.shape[0]):
        v = xs[i]
        pdf = _exp(minus_half * v * v) * inv_sqrt_2pi
        gxs[i] = gys[i] * (v * pdf + _normal_cdf(v))


@njit(**_GELU_JIT)
def _gelu_tanh_forward_kernel(x, y, start, stop):
    # y = x/2 (1 + tanh u) = x / (1 + exp(-2u)),  u = sqrt(2/pi) (x + 0.044715 x^3).
    T = x.dtype.type
    two_k, c, one = T(_GELU_TANH_2K), T(_REF._TANH_C), T(1.0)
    xs, ys = x[start:stop], y[start:stop]
    for i in range(xs.shape[0]):
        v = xs[i]
        e = _exp(-two_k * (v + c * (v * v * v)))  # exp(-2u); inf for very negative x: y = -0
        ys[i] = v / (one + e)


@njit(**_GELU_JIT)
def _gelu_tanh_backward_kernel(x, gy, gx, start, stop):
    # With s = (1 + t)/2 = 1 / (1 + exp(-2u)):  1 - t^2 = 4 s (1 - s), so
    # dy/dx = s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    # 1 - s = exp(-2u) s, without cancellation as s -> 1 (and 1 where exp(-2u) overflows, s = 0).
    T = x.dtype.type
    two_k, k, c, c3, one = T(_GELU_TANH_2K), T(_REF._TANH_K), T(_REF._TANH_C), T(3.0 * _REF._TANH_C), T(1.0)
    xs, gys, gxs = x[start:stop], gy[start:stop], gx[start:stop]
    for i in range(xs.shape[0]):
        v = xs[i]
        v2 = v * v
        e = _exp(-two_k * (v + c * (v2 * v)))
        s = one / (one + e)
        s_complement = e * s
        if e == T(np.inf):
            s_complement = one
        dy = s + (v + v) * s * s_complement * k * (one + c3 * v2)
        gxs[i] = gys[i] * dy


_GELU_KERNELS = {
    "none": (_gelu_exact_forward_kernel, _gelu_exact_backward_kernel),
    "tanh": (_gelu_tanh_forward_kernel, _gelu_tanh_backward_kernel),
}


def _gelu_kernels(op, approximate):
    kernels = _GELU_KERNELS.get(approximate) if isinstance(approximate, str) else None
    if kernels is None:
        raise ValueError(f"{op}: approximate must be 'none' or 'tanh', got {approximate!r}")
    return kernels


def gelu_forward(x, approximate):
    """GELU of an array of any shape: x Phi(x) ("none") or x/2 (1 + tanh(...)) ("tanh").   x -> y"""
    forward_kernel, _ = _gelu_kernels("gelu_forward", approximate)
    dtype = _float_dtype("gelu_forward", x)
    shape = np.shape(x)
    x = _prep(x, dtype)  # (n,) for a 0-d x: reshaped back below
    y = np.empty_like(x)
    _run(forward_kernel, _chunks(x.size, 1), x.reshape(-1), y.reshape(-1))
    return y.reshape(shape)


def gelu_backward(x, gy, approximate):
    """gx = gy * dy/dx of gelu_forward, recomputed from x (reference.gelu_backward).   x, gy -> gx"""
    _, backward_kernel = _gelu_kernels("gelu_backward", approximate)
    dtype = _float_dtype("gelu_backward", x)
    _check_same_shape("gelu_backward", x=x, gy=gy)
    shape = np.shape(x)
    x, gy = _prep(x, dtype), _prep(gy, dtype)
    gx = np.empty_like(x)
    _run(backward_kernel, _chunks(x.size, 1), x.reshape(-1), gy.reshape(-1), gx.reshape(-1))
    return gx.reshape(shape)
