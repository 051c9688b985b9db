"""Elementwise primitives: exp, log, tanh, sqrt, relu, gelu (exact and tanh), dropout, astype.

Each maps every element on its own, so each Jacobian is diagonal and each backward is
``g * f'(x)``, written where possible in terms of the saved output (exp' = exp, tanh' = 1 - tanh^2,
sqrt' = 1 / (2 sqrt)) so that backward costs one or two passes over memory.

All of them keep the input's dtype: Python-float constants are "weak" in NumPy, so a float32
array times 0.5 stays float32.
"""
import math

import numpy as np

from ..function import Function


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

    @staticmethod
    def differentiable_backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y


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

    @staticmethod
    def differentiable_backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x


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

    @staticmethod
    def differentiable_backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1.0 - y * y)


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

    @staticmethod
    def differentiable_backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g / (2.0 * y)


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
        return g * (y > 0)

    @staticmethod
    def differentiable_backward(ctx, g):
        from ..tensor import Tensor

        (y,) = ctx.saved
        # [x > 0] is piecewise constant: a constant factor, its own derivative is 0 almost everywhere.
        return g * Tensor(y > 0)


def exp(x):
    return Exp.apply(x)


def log(x):
    return Log.apply(x)


def tanh(x):
    return Tanh.apply(x)


def sqrt(x):
    return Sqrt.apply(x)


def relu(x):
    return Relu.apply(x)


# ------------------------------------------------------------------------------ erf / normal cdf
#
# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969),
# as in his CALERF routine (netlib specfun): three rational approximations, each accurate to
# float64 round-off on its interval:
#   |z| <= 0.46875        erf(z)  = z P1(z^2) / Q1(z^2)
#   0.46875 < |z| <= 4    erfc(z) = exp(-z^2) P2(z) / Q2(z)
#   |z| > 4               erfc(z) = exp(-z^2) / z (1/sqrt(pi) + 1/z^2 P3(1/z^2) / Q3(1/z^2))
# with erfc(-z) = 2 - erfc(z). exp(-z^2) is evaluated as exp(-zr^2) exp(-(z - zr)(z + zr)) with
# zr = z rounded down to a multiple of 1/16, so the rounding of z^2 does not cost accuracy.

_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
          3.20937758913846947e03, 1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
          2.84423683343917062e03)
_ERF_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
          2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
          2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_ERF_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
          1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
          3.43936767414372164e03, 1.23033935480374942e03)
_ERF_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
          1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_ERF_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
          6.05183413124413191e-2, 2.33520497626869185e-3)
_INV_SQRT_PI = 5.6418958354775628695e-1
_SQRT_HALF = 0.70710678118654752440
_INV_SQRT_2PI = 0.39894228040143267794


def _erf_small(z):
    """erf(z) for |z| <= 0.46875 (Cody's first interval)."""
    a, b = _ERF_A, _ERF_B
    zz = z * z
    num = a[4] * zz
    den = zz.copy()
    for i in range(3):
        num += a[i]
        num *= zz
        den += b[i]
        den *= zz
    num += a[3]
    den += b[3]
    return z * num / den


def _exp_minus_square(y):
    """exp(-y^2) with y^2 split so that its rounding error is not amplified (Cody's trick)."""
    yr = np.floor(y * 16.0) / 16.0
    return np.exp(-yr * yr) * np.exp(-(y - yr) * (y + yr))


def _erfc_mid(y):
    """erfc(y) for 0.46875 < y <= 4, y > 0."""
    c, d = _ERF_C, _ERF_D
    num = c[8] * y
    den = y.copy()
    for i in range(7):
        num += c[i]
        num *= y
        den += d[i]
        den *= y
    return _exp_minus_square(y) * ((num + c[7]) / (den + d[7]))


def _erfc_large(y):
    """erfc(y) for y > 4 (underflows to 0 beyond ~26.5 in float64, ~9.2 in float32)."""
    p, q = _ERF_P, _ERF_Q
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        inv = 1.0 / (y * y)
        num = p[5] * inv
        den = inv.copy()
        for i in range(4):
            num += p[i]
            num *= inv
            den += q[i]
            den *= inv
        r = inv * (num + p[4]) / (den + q[4])
        r = (_INV_SQRT_PI - r) / y
        return np.where(np.isinf(y), 0.0, _exp_minus_square(y) * r).astype(y.dtype, copy=False)


# float32: one branch-free rational function of x on [-4, 4] (erf rounds to +-1 beyond), the
# minimax fit used for float32 erf by Eigen and XLA: erf(x) ~ x P(x^2) / Q(x^2). Max error vs
# math.erf ~5e-7 (a few float32 ulps), no exponential, no masks: ~4x faster than Cody's three
# intervals on float32 arrays, which matters when the exact GELU sits in a training step.
_ERF32_ALPHA = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
                -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
                -2.72614225801306e-10)
_ERF32_BETA = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
               -2.13374055278905e-04, -1.45660718464996e-05)


def _erf_float32(z):
    x = np.clip(z, -4.0, 4.0)
    xx = x * x
    a, b = _ERF32_ALPHA, _ERF32_BETA
    num = a[6] * xx
    for c in a[5:0:-1]:
        num += c
        num *= xx
    num += a[0]
    num *= x
    den = b[4] * xx
    for c in b[3:0:-1]:
        den += c
        den *= xx
    den += b[0]
    num /= den
    return num


def _as_float(z):
    z = np.asarray(z)
    return z if z.dtype.kind == "f" else z.astype(np.float64)


def erfc(z):
    """The complementary error function of a float array; keeps z's dtype. NaN gives NaN.

    float64: W. J. Cody's rational approximations, to float64 round-off (relative, also in the
    tail down to ~1e-300). float32: 1 - erf(z), absolute accuracy ~5e-7.
    """
    z = _as_float(z)
    if z.dtype.itemsize < 8:
        return 1.0 - _erf_float32(z)
    out = np.empty_like(z)
    y = np.abs(z)
    small = y <= 0.46875
    mid = (y > 0.46875) & (y <= 4.0)
    large = y > 4.0                             # NaN is in no interval: handled below
    if small.any():
        out[small] = 1.0 - _erf_small(z[small])
    for region, tail in ((mid, _erfc_mid), (large, _erfc_large)):
        if region.any():
            zr = z[region]
            r = tail(np.abs(zr))
            out[region] = np.where(zr < 0, 2.0 - r, r)
    nan = np.isnan(z)
    if nan.any():
        out[nan] = np.nan
    return out


def erf(z):
    """The error function of a float array; keeps z's dtype.

    float64: Cody's approximations, to float64 round-off (tested against math.erf);
    float32: the branch-free rational above, to ~5e-7.
    """
    z = _as_float(z)
    if z.dtype.itemsize < 8:
        return _erf_float32(z)
    out = np.empty_like(z)
    small = np.abs(z) <= 0.46875
    if small.any():
        out[small] = _erf_small(z[small])
    rest = ~small
    if rest.any():
        zr = z[rest]
        # erf = 1 - erfc for |z| > 0.46875: erfc <= 0.51 there, so the subtraction loses nothing.
        out[rest] = np.where(zr < 0, -1.0, 1.0) * (1.0 - erfc(np.abs(zr)))
    return out


def normal_cdf(x):
    """Phi(x) = P(N(0,1) <= x) = (1 + erf(x / sqrt 2)) / 2.

    float64 evaluates erfc(-x / sqrt 2) / 2, accurate also in the far left tail; float32
    evaluates (1 + erf) / 2 as PyTorch does (absolute accuracy, which is what x Phi(x) needs).
    """
    x = _as_float(x)
    if x.dtype.itemsize < 8:
        cdf = _erf_float32(x * _SQRT_HALF)
        cdf += 1.0
        cdf *= 0.5
        return cdf
    return 0.5 * erfc(x * -_SQRT_HALF)


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
        return g * (np.exp(-0.5 * x * x) * _INV_SQRT_2PI)

    @staticmethod
    def differentiable_backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x * x * -0.5).exp() * _INV_SQRT_2PI)


# ------------------------------------------------------------------------------ gelu

_TANH_K = math.sqrt(2.0 / math.pi)   # sqrt(2/pi)
_TANH_C = 0.044715


class Gelu(Function):
    r"""GELU.

    Exact (approximate="none"):  y = x Phi(x),
        dy/dx = Phi(x) + x phi(x),   phi(x) = exp(-x^2/2) / sqrt(2 pi).
    Tanh (approximate="tanh"):   y = x/2 (1 + t),  t = tanh(u),  u = sqrt(2/pi) (x + 0.044715 x^3),
        dy/dx = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    dL/dx = g * dy/dx.
    """

    @staticmethod
    def forward(ctx, x, approximate="none"):
        ctx.approximate = approximate
        if approximate == "tanh":
            t = np.tanh(_TANH_K * (x + _TANH_C * (x * x * x)))
            ctx.save_for_backward(x, t)
            return 0.5 * x * (1.0 + t)
        cdf = normal_cdf(x)
        ctx.save_for_backward(x, cdf)
        return x * cdf

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved
        if ctx.approximate == "tanh":
            t = s
            x2 = x * x
            dy = 0.5 * (1.0 + t) + (0.5 * _TANH_K) * x * (1.0 - t * t) * (1.0 + 3.0 * _TANH_C * x2)
            return g * dy
        cdf = s
        pdf = np.exp(-0.5 * x * x)
        pdf *= _INV_SQRT_2PI
        pdf *= x
        pdf += cdf
        return g * pdf

    @staticmethod
    def differentiable_backward(ctx, g):
        x, _ = ctx.saved_tensors
        if ctx.approximate == "tanh":
            x2 = x * x
            t = (_TANH_K * (x + _TANH_C * (x2 * x))).tanh()
            dy = 0.5 * (1.0 + t) + (0.5 * _TANH_K) * x * (1.0 - t * t) * (1.0 + 3.0 * _TANH_C * x2)
            return g * dy
        pdf = (x * x * -0.5).exp() * _INV_SQRT_2PI
        return g * (NormalCdf.apply(x) + x * pdf)


def gelu(x, approximate="none"):
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


def manual_seed(seed):
    """Reseed the default dropout generator (used when dropout or attention dropout gets rng=None).

    ``ng.manual_seed`` calls this together with npgrad.nn's initialiser generator."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)


def default_rng():
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
    """

    @staticmethod
    def forward(ctx, x, p=0.5, rng=None):
        keep = _keep_mask(rng, x.shape, p)
        scale = 1.0 / (1.0 - p)
        ctx.keep, ctx.scale = keep, scale
        y = x * scale          # Python-float scale: keeps x's dtype
        y *= keep              # in place: no second temporary (bool mask is 1 byte an element)
        return y

    @staticmethod
    def backward(ctx, g):
        gx = g * ctx.scale
        gx *= ctx.keep
        return gx

    @staticmethod
    def differentiable_backward(ctx, g):
        from ..tensor import Tensor

        return g * Tensor(ctx.keep) * ctx.scale


def dropout(x, p=0.5, training=True, rng=None):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout).

    Returns x itself when ``training`` is False or p == 0, and zeros (with a zero gradient) when p == 1,
    as PyTorch does. ``rng`` is an np.random.Generator (same seed, same mask); None uses the module's
    default generator (see :func:`manual_seed`).
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0
    if rng is None:
        rng = _default_rng
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return Dropout.apply(x, p=float(p), rng=rng)


# ------------------------------------------------------------------------------ astype

class Cast(Function):
    r"""y = x converted to another floating dtype.   dL/dx = g converted back to x's dtype."""

    @staticmethod
    def forward(ctx, x, dtype=None):
        return x.astype(dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.input_dtypes[0], copy=False)

    @staticmethod
    def differentiable_backward(ctx, g):
        return Cast.apply(g, dtype=ctx.input_dtypes[0])


def astype(x, dtype):
    """x as ``dtype``; differentiable between float dtypes. A non-float target gives plain data."""
    from ..tensor import Tensor

    dtype = np.dtype(dtype)
    data = x.data if isinstance(x, Tensor) else np.asarray(x)
    if dtype.kind != "f" or data.dtype.kind != "f":
        return Tensor(data.astype(dtype))     # integers/booleans are data: no gradient through them
    return Cast.apply(x, dtype=dtype)
