"""Scalar building blocks for the jitted loops: LLVM intrinsics, a vectorisable exp, erf and the
normal CDF, and row reductions. Callable from jitted code only.

Why an own exp: Numba here is built without Intel's SVML, so ``np.exp`` inside a loop is a scalar
libm call per element. ``_exp`` is range reduction + polynomial (Cephes' expf / exp), written so
that LLVM turns the loop into AVX2/AVX-512 code: within 1 ulp of the exact value in float32 (NumPy's
own float32 exp: 2.4 ulp) and 1.7 ulp in float64, measured against a long-double exp over the whole
range. ``_fmax`` is LLVM's ``maxnum``, which the loop vectoriser turns into a SIMD max reduction
(Python's ``max`` or ``a if a > b else b`` stay scalar). Timings: docs/tuning.md.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .. import reference as _REF  # shared constants (erf coefficients), one home
from ._jit import _EXP_FLAGS, _FAST

# ------------------------------------------------------------------------ LLVM intrinsics


@intrinsic
def _fmax(typingctx, a, b):
    """LLVM ``maxnum(a, b)``: the larger of a and b (a NaN operand is ignored).

    Used for row maxima: the loop vectoriser recognises it as a SIMD max reduction. Ignoring NaN
    is harmless here because the max is only a shift: a NaN entry still makes exp(x - max), and
    so the row's sum and result, NaN, as in NumPy.
    """
    if not (isinstance(a, types.Float) and a == b):
        return None
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        llty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [llty], ir.FunctionType(llty, [llty, llty]))
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (a free register move; builds 2**n)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _int64_bits_as_float64(typingctx, bits):
    """Reinterpret the bits of an int64 as a float64."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(fastmath=False)
def _times_two_factors(p, scale_a, scale_b):
    """(p * scale_a) * scale_b in this order: compiled without fastmath, so that LLVM may not
    reassociate it into p * (scale_a * scale_b), whose product can overflow or underflow."""
    return (p * scale_a) * scale_b


# -------------------------------------------------------------------------------- exp


@njit(fastmath=_EXP_FLAGS)
def _exp_float32(x):
    """exp(x) for float32 x, within 1 ulp of the exact value (measured); loops calling it vectorise.

    Cephes' expf: x = n ln2 + r with integer n and |r| <= ln2/2 (ln2 split in a part exact in
    float32 and a correction, so r is exact), exp(r) by a degree-7 minimax polynomial, times 2**n
    built directly in the exponent bits, as two factors 2**(n//2) 2**(n - n//2) so that each is a
    normal number and results down in the subnormal range round once, like libm's. 0 below -104
    (exp < 2**-150 rounds to 0), +inf above 88.72, NaN for NaN.
    """
    xc = min(max(x, np.float32(-104.0)), np.float32(88.72284))
    n = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    r = xc - n * np.float32(0.693359375)
    r = r + n * np.float32(2.12194440e-4)
    z = r * r
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * z + r + np.float32(1.0)
    ni = np.int32(n)
    half = np.int32(ni >> np.int32(1))
    scale_a = _int32_bits_as_float32(np.int32((half + np.int32(127)) << np.int32(23)))
    scale_b = _int32_bits_as_float32(np.int32((ni - half + np.int32(127)) << np.int32(23)))
    result = _times_two_factors(p, scale_a, scale_b)
    if x < np.float32(-104.0):
        result = np.float32(0.0)
    if x > np.float32(88.72284):
        result = np.float32(np.inf)
    return result


# error_model="numpy": no ZeroDivisionError branch on the Pade division, which kept every float64
# loop calling _exp scalar. Numba compiles a helper once, with the error model of whichever kernel
# calls it first: set it here.
@njit(fastmath=_EXP_FLAGS, error_model="numpy")
def _exp_float64(x):
    """exp(x) for float64 x, within 1.7 ulp of the exact value (measured).

    Cephes' exp: x = n ln2 + r, |r| <= ln2/2, exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)) (a Pade
    form), times 2**n as two normal factors (see _exp_float32). 0 below -746, +inf above 709.79.
    """
    xc = min(max(x, -746.0), 709.782712893384)
    n = np.floor(xc * 1.4426950408889634073599 + 0.5)
    r = xc - n * 6.93145751953125e-1
    r = r - n * 1.42860682030941723212e-6
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1)
    qx = (
        (3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1
    ) * rr + 2.00000000000000000009e0
    p = 1.0 + 2.0 * (px / (qx - px))
    ni = np.int32(n)  # |n| <= 1077: int32 conversions vectorise, int64 ones do not here
    half = np.int32(ni >> np.int32(1))
    scale_a = _int64_bits_as_float64(np.int64(np.int64(half + np.int32(1023)) << np.int64(52)))
    scale_b = _int64_bits_as_float64(np.int64(np.int64(ni - half + np.int32(1023)) << np.int64(52)))
    result = _times_two_factors(p, scale_a, scale_b)
    if x < -746.0:
        result = 0.0
    if x > 709.782712893384:
        result = np.inf
    return result


def _exp(x):
    """exp(x) in x's own float type, vectorisable (dispatches to _exp_float32 / _exp_float64)."""
    raise NotImplementedError("_exp is only callable from jitted code")


@overload(_exp, jit_options={"fastmath": _EXP_FLAGS})
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_float32(x)
    if x == types.float64:
        return lambda x: _exp_float64(x)
    return None


# ------------------------------------------------------------------ erf and the normal CDF
#
# float32: the reference's rational erf (Eigen's/XLA's minimax fit on [-4, 4]), the same
# coefficients in the same Horner order; branch-free, so a loop calling it vectorises. float64:
# Cody's three intervals as in the reference, with the polynomial exp: branches, so scalar code.

# error_model="numpy": a float division by zero gives inf/NaN as in NumPy. Numba's default (Python's
# ZeroDivisionError) puts a branch to an exception on every division, and the loop does not vectorise.
_ERF_JIT = dict(fastmath=_EXP_FLAGS, error_model="numpy")


@njit(**_ERF_JIT)
def _erf_float32(z):
    """erf(z), float32: x P(x^2) / Q(x^2) on x = z clipped to [-4, 4] (reference._erf_float32)."""
    a, b = _REF._ERF32_ALPHA, _REF._ERF32_BETA
    x = min(max(z, np.float32(-4.0)), np.float32(4.0))  # NaN stays NaN
    xx = x * x
    num = np.float32(a[6]) * xx
    num = (num + np.float32(a[5])) * xx
    num = (num + np.float32(a[4])) * xx
    num = (num + np.float32(a[3])) * xx
    num = (num + np.float32(a[2])) * xx
    num = (num + np.float32(a[1])) * xx
    num = (num + np.float32(a[0])) * x
    den = np.float32(b[4]) * xx
    den = (den + np.float32(b[3])) * xx
    den = (den + np.float32(b[2])) * xx
    den = (den + np.float32(b[1])) * xx
    den = den + np.float32(b[0])
    return num / den


@njit(**_ERF_JIT)
def _exp_minus_square_float64(y):
    """exp(-y^2) with y^2 split so that its rounding error is not amplified (Cody's trick)."""
    yr = np.floor(y * 16.0) / 16.0
    return _exp_float64(-yr * yr) * _exp_float64(-(y - yr) * (y + yr))


@njit(**_ERF_JIT)
def _erfc_float64(z):
    """erfc(z), float64: Cody's rational approximations as in reference.erfc (relative accuracy,
    also in the tail); 0 beyond 27.3, where erfc < 2.5e-324 rounds to 0."""
    a, b, c, d, p, q = _REF._ERF_A, _REF._ERF_B, _REF._ERF_C, _REF._ERF_D, _REF._ERF_P, _REF._ERF_Q
    y = abs(z)
    if y <= 0.46875:
        zz = z * z
        num = a[4] * zz
        den = zz
        for i in range(3):
            num = (num + a[i]) * zz
            den = (den + b[i]) * zz
        return 1.0 - z * (num + a[3]) / (den + b[3])
    if y <= 4.0:
        num = c[8] * y
        den = y
        for i in range(7):
            num = (num + c[i]) * y
            den = (den + d[i]) * y
        r = _exp_minus_square_float64(y) * ((num + c[7]) / (den + d[7]))
    elif y < 27.3:
        inv = 1.0 / (y * y)
        num = p[5] * inv
        den = inv
        for i in range(4):
            num = (num + p[i]) * inv
            den = (den + q[i]) * inv
        r = inv * (num + p[4]) / (den + q[4])
        r = (_REF._INV_SQRT_PI - r) / y
        r = _exp_minus_square_float64(y) * r
    elif y == y:
        r = 0.0  # also y = inf
    else:
        return z  # NaN
    return 2.0 - r if z < 0.0 else r


@njit(**_ERF_JIT)
def _normal_cdf_float32(x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, as reference.normal_cdf in float32."""
    return (_erf_float32(x * np.float32(_REF._SQRT_HALF)) + np.float32(1.0)) * np.float32(0.5)


@njit(**_ERF_JIT)
def _normal_cdf_float64(x):
    """Phi(x) = erfc(-x / sqrt 2) / 2, as reference.normal_cdf in float64 (accurate in the left tail)."""
    return 0.5 * _erfc_float64(x * -_REF._SQRT_HALF)


def _normal_cdf(x):
    """Phi(x) in x's own float type (dispatches to _normal_cdf_float32 / _normal_cdf_float64)."""
    raise NotImplementedError("_normal_cdf is only callable from jitted code")


@overload(_normal_cdf, jit_options=_ERF_JIT)
def _normal_cdf_overload(x):
    if x == types.float32:
        return lambda x: _normal_cdf_float32(x)
    if x == types.float64:
        return lambda x: _normal_cdf_float64(x)
    return None


# ------------------------------------------------------------------------- row reductions


@njit(fastmath=_FAST)
def _row_max(row):
    """max_j row[j] (-inf for an empty row)."""
    m = row.dtype.type(-np.inf)
    for j in range(row.shape[0]):
        m = _fmax(m, row[j])
    return m


@njit(fastmath=_FAST)
def _row_exp_sum(row, shift):
    """sum_j exp(row[j] - shift)."""
    total = row.dtype.type(0.0)
    for j in range(row.shape[0]):
        total += _exp(row[j] - shift)
    return total


@njit(fastmath=_FAST)
def _row_dot(a, b):
    """sum_j a[j] * b[j]."""
    total = a.dtype.type(0.0)
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total
