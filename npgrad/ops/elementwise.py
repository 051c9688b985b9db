"""Elementwise primitives: exp, log, tanh, sqrt, relu, gelu (exact and tanh), dropout, astype.

Each maps every element on its own, so each Jacobian is diagonal and each backward is
``g * f'(x)``, written where possible in terms of the saved output (exp' = exp, tanh' = 1 - tanh^2,
sqrt' = 1 / (2 sqrt)) so that backward costs one or two passes over memory.

All of them keep the input's dtype: Python-float constants are "weak" in NumPy, so a float32
array times 0.5 stays float32.

Where the backward uses only operators (exp, log, tanh, sqrt, relu, the normal cdf), the same code
serves ``create_graph=True`` (``differentiable_backward = backward_on_tensors``); GELU (a kernel),
dropout (in place) and the cast (``copy=False``) keep a Tensor-op twin, and say why.
"""

from __future__ import annotations

from typing import Literal

import math

import numpy as np
import numpy.typing as npt

from .._checks import as_float_array
from ..function import Function, TensorBase, TensorLike, TensorResult, backward_on_tensors, constant
from ..kernels import K
from ..kernels.reference import (  # noqa: F401  (erf, erfc, normal_cdf: re-exported)
    _INV_SQRT_2PI,
    _TANH_C,
    _TANH_K,
    erf,
    erfc,
    normal_cdf,
)


class Exp(Function):
    r"""y = e^x.   dL/dx = g * y."""

    @staticmethod
    def forward(ctx, x):
        y = np.exp(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        return g * y

    differentiable_backward = backward_on_tensors


class Log(Function):
    r"""y = ln x.   dL/dx = g / x.   (x <= 0 gives NaN/-inf as NumPy does.)"""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.log(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return g / x

    differentiable_backward = backward_on_tensors


class Tanh(Function):
    r"""y = tanh x.   dL/dx = g * (1 - y^2)."""

    @staticmethod
    def forward(ctx, x):
        y = np.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        return g * (1.0 - y * y)

    differentiable_backward = backward_on_tensors


class Sqrt(Function):
    r"""y = sqrt(x).   dL/dx = g / (2 y).   (infinite at x = 0, as the derivative is.)"""

    @staticmethod
    def forward(ctx, x):
        y = np.sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        return g / (2.0 * y)

    differentiable_backward = backward_on_tensors


class Relu(Function):
    r"""y = max(x, 0).   dL/dx = g * [x > 0]   (the derivative at 0 is taken as 0, as PyTorch)."""

    @staticmethod
    def forward(ctx, x):
        y = np.maximum(x, 0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        # [x > 0] is piecewise constant: on Tensors a constant (boolean) factor, its own derivative
        # is 0 almost everywhere.
        return g * (y > 0)

    differentiable_backward = backward_on_tensors


def exp(x: TensorLike) -> TensorResult:
    """e ** x elementwise (Exp)."""
    return Exp.apply(x)


def log(x: TensorLike) -> TensorResult:
    """Natural logarithm elementwise (Log)."""
    return Log.apply(x)


def tanh(x: TensorLike) -> TensorResult:
    """Hyperbolic tangent elementwise (Tanh)."""
    return Tanh.apply(x)


def sqrt(x: TensorLike) -> TensorResult:
    """Square root elementwise (Sqrt)."""
    return Sqrt.apply(x)


def relu(x: TensorLike) -> TensorResult:
    """max(x, 0) elementwise (Relu)."""
    return Relu.apply(x)


# ------------------------------------------------------------------------------ erf / normal cdf

# The NumPy erf, erfc and normal cdf live with the GELU kernels (npgrad/kernels/reference.py),
# their one home; re-exported here for the ops and for users.


class NormalCdf(Function):
    r"""y = Phi(x) = (1 + erf(x / sqrt 2)) / 2.   dL/dx = g * phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi).

    A primitive of its own so that the exact GELU's derivative, which contains Phi, can be
    differentiated again.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return normal_cdf(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return g * (_exp(-0.5 * x * x) * _INV_SQRT_2PI)

    differentiable_backward = backward_on_tensors


def _exp(x):
    """e^x of an array (np.exp) or of a Tensor (the Exp primitive), for a backward that serves both."""
    return Exp.apply(x) if isinstance(x, TensorBase) else np.exp(x)


# ------------------------------------------------------------------------------ gelu


class Gelu(Function):
    r"""GELU.

    Exact (approximate="none"):  y = x Phi(x),
        dy/dx = Phi(x) + x phi(x),   phi(x) = exp(-x^2/2) / sqrt(2 pi).
    Tanh (approximate="tanh"):   y = x/2 (1 + t),  t = tanh(u),  u = sqrt(2/pi) (x + 0.044715 x^3),
        dy/dx = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    dL/dx = g * dy/dx.

    Computed by the kernels K.gelu_forward / K.gelu_backward (the Numba twin in one pass over
    memory). Only x is saved: the backward recomputes Phi (or t) from it, cheaper than storing it.
    The kernel works on arrays only, so create_graph uses the same formula in Tensor ops
    (differentiable_backward).
    """

    @staticmethod
    def forward(ctx, x, approximate="none"):
        x = as_float_array("gelu", x)
        ctx.approximate = approximate
        ctx.save_for_backward(x)
        return K.gelu_forward(x, approximate)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return K.gelu_backward(x, g, ctx.approximate)

    @staticmethod
    def differentiable_backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.approximate == "tanh":
            x2 = x * x
            t = (_TANH_K * (x + _TANH_C * (x2 * x))).tanh()
            dy = 0.5 * (1.0 + t) + (0.5 * _TANH_K) * x * (1.0 - t * t) * (1.0 + 3.0 * _TANH_C * x2)
            return g * dy
        pdf = (x * x * -0.5).exp() * _INV_SQRT_2PI
        return g * (NormalCdf.apply(x) + x * pdf)


def gelu(x: TensorLike, approximate: Literal["none", "tanh"] = "none") -> TensorResult:
    """GELU, as torch.nn.functional.gelu: approximate="none" (x Phi(x), erf-exact) or "tanh"."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return Gelu.apply(x, approximate=approximate)


# ------------------------------------------------------------------------------ dropout

# The generator used when dropout is called without rng: fixed seed, so runs are reproducible;
# reseed with manual_seed(). Pass your own np.random.Generator for independent streams.
_default_rng = np.random.default_rng(0)

_KEEP_BITS = 16
_KEEP_LEVELS = 1 << _KEEP_BITS


def manual_seed(seed: int | None) -> None:
    """Reseed the default dropout generator (used when dropout or attention dropout gets rng=None).

    ``ng.manual_seed`` calls this together with npgrad.nn's initialiser generator."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)


def default_rng() -> np.random.Generator:
    """The generator dropout uses when given rng=None (see manual_seed)."""
    return _default_rng


def _keep_mask(rng, shape, p):
    """Boolean mask, each element True with probability 1 - p (independently).

    Draws 16 random bits per element straight from the bit generator (four per 64-bit word;
    ~4x faster than rng.random) and keeps an element when its bits >= round(p * 2^16): the drop
    probability is p rounded to a multiple of 2^-16 (|error| <= 7.7e-6).
    """
    n = math.prod(shape)
    words = rng.bit_generator.random_raw(-(-n // 4))
    bits = np.asarray(words, dtype=np.uint64).view(np.uint16)[:n].reshape(shape)
    return bits >= np.uint16(min(round(p * _KEEP_LEVELS), _KEEP_LEVELS - 1))


class Dropout(Function):
    r"""Inverted dropout: y = x * m / (1 - p), m_i ~ Bernoulli(1 - p) drawn from ``rng``.

    dL/dx = g * m / (1 - p)  (the same mask: the function is linear in x for a fixed mask).
    The array backward multiplies in place (no second temporary of x's size); Tensors have no
    in-place ops, hence the one-line differentiable_backward.
    """

    @staticmethod
    def forward(ctx, x, p=0.5, rng=None):
        keep = _keep_mask(rng, x.shape, p)
        scale = 1.0 / (1.0 - p)
        ctx.keep, ctx.scale = keep, scale
        y = x * scale  # Python-float scale: keeps x's dtype
        y *= keep  # in place: no second temporary (bool mask is 1 byte an element)
        return y

    @staticmethod
    def backward(ctx, g):
        gx = g * ctx.scale
        gx *= ctx.keep
        return gx

    @staticmethod
    def differentiable_backward(ctx, g):
        return g * ctx.keep * ctx.scale


def dropout(
    x: TensorLike, p: float = 0.5, training: bool = True, rng: np.random.Generator | None = None
) -> TensorResult:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout).

    Returns x itself when ``training`` is False or p == 0, and zeros (with a zero gradient) when p == 1,
    as PyTorch does. ``rng`` is an np.random.Generator (same seed, same mask); None uses the module's
    default generator (see :func:`manual_seed`).
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if not training or p == 0:
        return x  # type: ignore[return-value]  # x itself: a Tensor, or an array left an array
    if p == 1:
        return x * 0.0  # type: ignore[operator,return-value]  # a Tensor (TensorBase stands for it here) or an array
    if rng is None:
        rng = _default_rng
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return Dropout.apply(x, p=float(p), rng=rng)


# ------------------------------------------------------------------------------ astype


class Cast(Function):
    r"""y = x converted to another floating dtype.   dL/dx = g converted back to x's dtype.

    The array backward casts with ``copy=False`` (a same-dtype cast costs nothing), which
    Tensor.astype does not take; differentiable_backward casts with this primitive.
    """

    @staticmethod
    def forward(ctx, x, dtype=None):
        return x.astype(dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.input_dtypes[0], copy=False)

    @staticmethod
    def differentiable_backward(ctx, g):
        return Cast.apply(g, dtype=ctx.input_dtypes[0])


def astype(x: TensorLike, dtype: npt.DTypeLike) -> TensorResult:
    """x as ``dtype``; differentiable between float dtypes. A non-float target gives plain data."""
    dtype = np.dtype(dtype)
    data = x.data if isinstance(x, TensorBase) else np.asarray(x)
    if dtype.kind != "f" or data.dtype.kind != "f":
        return constant(data.astype(dtype))  # integers/booleans are data: no gradient through them
    return Cast.apply(x, dtype=dtype)
