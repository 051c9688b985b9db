"""Numba kernels: the same functions, signatures and results as reference.py, jitted and fused.

Every public function here is a thin Python wrapper with exactly the signature of its NumPy twin
in reference.py (see notes/KERNELS.md). The wrapper

* checks the dtype (float32 or float64; the output keeps it) and copies strided, read-only or
  mixed-dtype input to one C-contiguous array of that dtype, so each jitted kernel is compiled for
  at most two signatures (float32 and float64, C layout) and never reads strides it did not expect;
* allocates the outputs with NumPy and hands everything to a jitted ``_..._kernel`` that fills them.

The kernels are ``@njit(cache=True)``: compiled on first call (a second or two each), then loaded
from the on-disk cache (``__pycache__``) by later processes. This module is imported only when the
``numba`` backend is first used (npgrad/kernels/__init__.py), so ``import npgrad`` never pays for
``import numba``.

Why they are fast (measured in benchmarks/, figures in benchmarks/RESULTS.md):

* fusion: a row (one softmax row of V = 8000 floats is 32 KB) is read from memory once, then every
  pass over it (max, exp-sum, normalise) runs in the L1/L2 cache; NumPy makes a full pass over the
  whole (N,V) array for every elementary operation;
* ``prange`` over rows (or attention batch entries) uses both cores;
* a vectorisable exp: Numba here has no Intel SVML, so ``np.exp`` inside a loop is a scalar libm
  call per element. ``_exp`` below is range reduction + polynomial (Cephes' expf / exp), written so
  that LLVM turns the loop into AVX2/AVX-512 code; it is within ~1-2 ulp of libm's exp;
* a vectorisable maximum: ``_fmax`` is LLVM's ``maxnum`` intrinsic, which the loop vectoriser turns
  into a SIMD max reduction (Python's ``max`` or ``a if a > b else b`` stay scalar).

fastmath: the kernels use ``_FAST`` = reassociation (so sums vectorise into several partial sums),
contraction into FMA, reciprocal and signed-zero freedom. These change results only at float32 /
float64 round-off, which the tests check against the reference. ``nnan``/``ninf`` are NOT set:
NaN and inf in inputs propagate as in NumPy, and the attention mask logic may compare with -inf.

Shapes: N rows, V classes (row length), C features, B batch (every leading axis flattened,
batch * heads for attention), Lq queries, Lk keys, D head size (Dv for values).
"""
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

__all__ = [
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "layer_norm_forward", "layer_norm_backward", "add_layer_norm_forward",
    "attention_forward", "attention_backward", "embedding_backward",
]

# Not 'nnan'/'ninf' (see the module docstring), nor 'afn' (approximate libm functions).
_FAST = {"nsz", "arcp", "contract", "reassoc"}


# ------------------------------------------------------------------------ building blocks


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


@njit(fastmath=_FAST)
def _exp_float32(x):
    """exp(x) for float32 x <= 88.37, within ~2 ulp; loops calling it vectorise.

    Cephes' expf: x = n ln2 + r with integer n and |r| <= ln2/2 (ln2 split in a part exact in
    float32 and a correction, so r is exact), exp(r) by a degree-7 minimax polynomial, and 2**n built
    directly in the exponent bits. exp(x) = 0 for x < -87.3 (below the smallest normal float32;
    the true value is < 1.2e-38), +inf above 88.37. The kernels only call it with x <= 0.
    """
    xc = min(max(x, np.float32(-87.33654)), np.float32(88.37626))
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
    result = p * _int32_bits_as_float32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    if x < np.float32(-87.33654):
        result = np.float32(0.0)
    if x > np.float32(88.37626):
        result = np.float32(np.inf)
    return result


@njit(fastmath=_FAST)
def _exp_float64(x):
    """exp(x) for float64 x <= 709.4, within ~1-2 ulp; loops calling it vectorise.

    Cephes' exp: x = n ln2 + r, |r| <= ln2/2, exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)) (a Pade
    form), times 2**n built in the exponent bits. 0 below -708.39 (the true value is < 2.3e-308).
    """
    xc = min(max(x, -708.3964185322641), 709.436138303)
    n = np.floor(xc * 1.4426950408889634073599 + 0.5)
    r = xc - n * 6.93145751953125e-1
    r = r - n * 1.42860682030941723212e-6
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1)
    qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
          + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0
    p = 1.0 + 2.0 * (px / (qx - px))
    result = p * _int64_bits_as_float64(np.int64((np.int64(n) + np.int64(1023)) << np.int64(52)))
    if x < -708.3964185322641:
        result = 0.0
    if x > 709.436138303:
        result = np.inf
    return result


def _exp(x):
    """exp(x) in x's own float type, vectorisable (dispatches to _exp_float32 / _exp_float64)."""
    raise NotImplementedError("_exp is only callable from jitted code")


@overload(_exp, jit_options={"fastmath": _FAST})
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_float32(x)
    if x == types.float64:
        return lambda x: _exp_float64(x)
    return None


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


# ----------------------------------------------------------------------- input preparation


def _float_dtype(op, array):
    dtype = np.asarray(array).dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{op}: expected a float32 or float64 array, got {dtype}")
    return dtype


def _prep(array, dtype):
    """C-contiguous, writeable (one Numba type per dtype), of the given dtype; copies only if needed."""
    array = np.ascontiguousarray(array, dtype=dtype)
    if not array.flags.writeable:  # read-only arrays would be a separate Numba signature
        array = array.copy()
    return array


def _check_2d(op, **arrays):
    for name, array in arrays.items():
        if np.ndim(array) != 2:
            raise ValueError(f"{op}: {name} must be 2-D (rows, features), got shape {np.shape(array)}")


# -------------------------------------------------------------------------------- softmax


@njit(parallel=True, fastmath=_FAST, cache=True)
def _softmax_forward_kernel(x, y):
    # x, y (N,V). Per row: max, then exp(x - max) written to y while summing, then y /= sum.
    for n in prange(x.shape[0]):
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
    _softmax_forward_kernel(x, y)
    return y


@njit(parallel=True, fastmath=_FAST, cache=True)
def _softmax_backward_kernel(y, gy, gx):
    # gx = y * (gy - <gy, y>) row by row.   (N,V)
    for n in prange(y.shape[0]):
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
    y, gy = _prep(y, dtype), _prep(gy, dtype)
    gx = np.empty_like(y)
    _softmax_backward_kernel(y, gy, gx)
    return gx


@njit(parallel=True, fastmath=_FAST, cache=True)
def _log_softmax_forward_kernel(x, out):
    # out = (x - max) - log(sum exp(x - max)) row by row.   (N,V)
    for n in prange(x.shape[0]):
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
    _log_softmax_forward_kernel(x, out)
    return out


@njit(parallel=True, fastmath=_FAST, cache=True)
def _log_softmax_backward_kernel(out, gout, gx):
    # gx = gout - exp(out) * sum(gout) row by row.   (N,V)
    for n in prange(out.shape[0]):
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
    out, gout = _prep(out, dtype), _prep(gout, dtype)
    gx = np.empty_like(out)
    _log_softmax_backward_kernel(out, gout, gx)
    return gx


# -------------------------------------------------------------------------- cross-entropy


@njit(parallel=True, fastmath=_FAST, cache=True)
def _cross_entropy_forward_kernel(logits, target, ignore_index, smoothing, loss, lse):
    # Per row, one read of the logits from memory: max and sum (one pass, in cache), then the
    # exp-sum. loss = lse - (1-eps) x[t] - (eps/V) sum_j x[j]; 0 on ignored rows.
    num_classes = logits.shape[1]
    T = logits.dtype.type
    keep = T(1.0) - smoothing
    smooth_per_class = smoothing / T(num_classes)
    for n in prange(logits.shape[0]):
        row = logits[n]
        row_max = T(-np.inf)
        row_sum = T(0.0)
        for j in range(num_classes):
            row_max = _fmax(row_max, row[j])
            row_sum += row[j]
        row_lse = row_max + np.log(_row_exp_sum(row, row_max))
        lse[n] = row_lse
        t = target[n]
        if t == ignore_index:
            loss[n] = T(0.0)
        else:
            loss[n] = row_lse - keep * row[t] - smooth_per_class * row_sum


def cross_entropy_forward(logits, target, ignore_index, label_smoothing):
    """loss_n = lse_n - (1 - eps) x[n, t_n] - (eps / V) sum_j x[n, j] (0 where t_n == ignore_index).

    (N,V),(N,) -> loss (N,), lse (N,). Targets must already be valid (the op checks them).
    """
    dtype = _float_dtype("cross_entropy_forward", logits)
    _check_2d("cross_entropy_forward", logits=logits)
    logits = _prep(logits, dtype)
    target = _prep(target, np.int64)
    num_rows = logits.shape[0]
    loss = np.empty(num_rows, dtype=dtype)
    lse = np.empty(num_rows, dtype=dtype)
    _cross_entropy_forward_kernel(logits, target, np.int64(ignore_index), dtype.type(label_smoothing), loss, lse)
    return loss, lse


@njit(parallel=True, fastmath=_FAST, cache=True)
def _cross_entropy_backward_kernel(logits, target, lse, gloss, ignore_index, smoothing, glogits):
    # glogits_n = gloss_n * (exp(x_n - lse_n) - eps/V), then -= gloss_n (1-eps) at t_n; 0 if ignored.
    num_classes = logits.shape[1]
    T = logits.dtype.type
    keep = T(1.0) - smoothing
    smooth_per_class = smoothing / T(num_classes)
    for n in prange(logits.shape[0]):
        row = logits[n]
        grow = glogits[n]
        t = target[n]
        if t == ignore_index:
            for j in range(num_classes):
                grow[j] = T(0.0)
            continue
        g = gloss[n]
        row_lse = lse[n]
        for j in range(num_classes):
            grow[j] = g * (_exp(row[j] - row_lse) - smooth_per_class)
        grow[t] -= g * keep


def cross_entropy_backward(logits, target, lse, gloss, ignore_index, label_smoothing):
    """glogits[n, :] = gloss_n * (softmax(x_n) - (1 - eps) onehot(t_n) - eps / V); 0 on ignored rows.

    (N,V),(N,),(N,),(N,) -> (N,V); never materialises a one-hot.
    """
    dtype = _float_dtype("cross_entropy_backward", logits)
    _check_2d("cross_entropy_backward", logits=logits)
    logits = _prep(logits, dtype)
    target = _prep(target, np.int64)
    lse, gloss = _prep(lse, dtype), _prep(gloss, dtype)
    glogits = np.empty_like(logits)
    _cross_entropy_backward_kernel(logits, target, lse, gloss, np.int64(ignore_index),
                                   dtype.type(label_smoothing), glogits)
    return glogits


# ----------------------------------------------------------------------------- layer norm


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


@njit(parallel=True, fastmath=_FAST, cache=True)
def _layer_norm_forward_kernel(x, w, b, eps, y, mean, rstd):
    # (N,C) rows in parallel.
    for n in prange(x.shape[0]):
        mean[n], rstd[n] = _layer_norm_row(x[n], w, b, eps, y[n])


@njit(parallel=True, fastmath=_FAST, cache=True)
def _add_layer_norm_forward_kernel(x, r, w, b, eps, y, s, mean, rstd):
    # s = x + r, then layer norm of s; one read of x and r per row.   (N,C)
    for n in prange(x.shape[0]):
        srow = s[n]
        xrow = x[n]
        rrow = r[n]
        for j in range(xrow.shape[0]):
            srow[j] = xrow[j] + rrow[j]
        mean[n], rstd[n] = _layer_norm_row(srow, w, b, eps, y[n])


def layer_norm_forward(x, w, b, eps):
    """y = (x - mean) * rstd * w + b over each row.   (N,C),(C,),(C,) -> y (N,C), mean (N,), rstd (N,)"""
    dtype = _float_dtype("layer_norm_forward", x)
    _check_2d("layer_norm_forward", x=x)
    x, w, b = _prep(x, dtype), _prep(w, dtype), _prep(b, dtype)
    num_rows = x.shape[0]
    y = np.empty_like(x)
    mean = np.empty(num_rows, dtype=dtype)
    rstd = np.empty(num_rows, dtype=dtype)
    _layer_norm_forward_kernel(x, w, b, dtype.type(eps), y, mean, rstd)
    return y, mean, rstd


def add_layer_norm_forward(x, r, w, b, eps):
    """s = x + r;  y = layer_norm(s).   (N,C),(N,C),(C,),(C,) -> y (N,C), s (N,C), mean (N,), rstd (N,)"""
    dtype = _float_dtype("add_layer_norm_forward", x)
    _check_2d("add_layer_norm_forward", x=x, r=r)
    x, r, w, b = _prep(x, dtype), _prep(r, dtype), _prep(w, dtype), _prep(b, dtype)
    num_rows = x.shape[0]
    y = np.empty_like(x)
    s = np.empty_like(x)
    mean = np.empty(num_rows, dtype=dtype)
    rstd = np.empty(num_rows, dtype=dtype)
    _add_layer_norm_forward_kernel(x, r, w, b, dtype.type(eps), y, s, mean, rstd)
    return y, s, mean, rstd


@njit(parallel=True, fastmath=_FAST, cache=True)
def _layer_norm_backward_kernel(gy, x, w, mean, rstd, gx, gw_parts, gb_parts):
    # Rows split in one contiguous chunk per thread; each chunk accumulates its own partial gw, gb
    # (num_chunks, C), summed by the caller, so no two threads write the same memory.
    num_rows, num_features = x.shape
    T = x.dtype.type
    inv_c = T(1.0) / T(num_features)
    num_chunks = gw_parts.shape[0]
    for chunk in prange(num_chunks):
        gw_part = gw_parts[chunk]
        gb_part = gb_parts[chunk]
        for j in range(num_features):
            gw_part[j] = T(0.0)
            gb_part[j] = T(0.0)
        start = chunk * num_rows // num_chunks
        stop = (chunk + 1) * num_rows // num_chunks
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


def _num_chunks(num_rows):
    """One chunk of work per Numba thread (never more chunks than rows)."""
    return max(1, min(numba.get_num_threads(), num_rows))


def layer_norm_backward(gy, x, w, mean, rstd):
    """xhat = (x - mean) rstd;  gb = sum_n gy;  gw = sum_n gy xhat;
    gx = rstd (gy w - mean_j(gy w) - xhat mean_j(gy w xhat)).   -> gx (N,C), gw (C,), gb (C,)
    """
    dtype = _float_dtype("layer_norm_backward", x)
    _check_2d("layer_norm_backward", gy=gy, x=x)
    gy, x, w = _prep(gy, dtype), _prep(x, dtype), _prep(w, dtype)
    mean, rstd = _prep(mean, dtype), _prep(rstd, dtype)
    num_chunks = _num_chunks(x.shape[0])
    gx = np.empty_like(x)
    gw_parts = np.empty((num_chunks, x.shape[1]), dtype=dtype)
    gb_parts = np.empty((num_chunks, x.shape[1]), dtype=dtype)
    _layer_norm_backward_kernel(gy, x, w, mean, rstd, gx, gw_parts, gb_parts)
    return gx, gw_parts.sum(axis=0), gb_parts.sum(axis=0)


# ------------------------------------------------------------------------------ attention


@njit(parallel=True, fastmath=_FAST, cache=True)
def _attention_forward_kernel(q, k, v, mask, has_mask, is_causal, scale, out, probs):
    # One batch entry (a (Lq,Lk) attention matrix) at a time, each one whole pass: scores, mask,
    # softmax, weighted sum, all in cache. q (B,Lq,D), k (B,Lk,D), v (B,Lk,Dv), mask (Bm,Lq,Lk)
    # with Bm = B or 1 (a mask shared by the batch), out (B,Lq,Dv), probs (B,Lq,Lk).
    num_batch, num_queries, head_size = q.shape
    num_keys = k.shape[1]
    value_size = v.shape[2]
    T = q.dtype.type
    shared_mask = mask.shape[0] == 1
    for b in prange(num_batch):
        # k transposed, so that scores for one query are axpy updates along the keys (SIMD over
        # keys, no horizontal sums): scores[j] += q[i, d] * kt[d, j].
        kt = np.empty((head_size, num_keys), dtype=q.dtype)           # (D,Lk)
        kb = k[b]
        for j in range(num_keys):
            for d in range(head_size):
                kt[d, j] = kb[j, d]
        qb = q[b]
        vb = v[b]
        ob = out[b]
        pb = probs[b]
        mb = mask[0] if shared_mask else mask[b]
        for i in range(num_queries):
            prow = pb[i]
            orow = ob[i]
            for j in range(num_keys):
                prow[j] = T(0.0)
            for d in range(head_size):
                qd = qb[i, d]
                ktrow = kt[d]
                for j in range(num_keys):
                    prow[j] += qd * ktrow[j]
            # disallowed keys: -inf, then excluded exactly by the allowed flag below
            row_max = T(-np.inf)
            num_allowed = 0
            last_key = num_keys
            if is_causal:
                last_key = min(num_keys, i + 1)
            for j in range(num_keys):
                allowed = j < last_key
                if has_mask:
                    allowed = allowed and mb[i, j]
                if allowed:
                    prow[j] *= scale
                    row_max = _fmax(row_max, prow[j])
                    num_allowed += 1
                else:
                    prow[j] = T(-np.inf)
            for e in range(value_size):
                orow[e] = T(0.0)
            if num_allowed == 0:                       # fully masked row: probs 0, out 0
                for j in range(num_keys):
                    prow[j] = T(0.0)
                continue
            total = T(0.0)
            for j in range(num_keys):
                p = _exp(prow[j] - row_max)            # exp(-inf) = 0 for disallowed keys
                prow[j] = p
                total += p
            inv_total = T(1.0) / total
            for j in range(num_keys):
                p = prow[j] * inv_total
                prow[j] = p
                if p != T(0.0):
                    vrow = vb[j]
                    for e in range(value_size):
                        orow[e] += p * vrow[e]


def _prep_mask(mask, shape):
    """The mask as a C-contiguous bool array (Bm,Lq,Lk); a batch-broadcast view stays one slice."""
    num_batch, num_queries, num_keys = shape
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"attention_forward: mask must be boolean (True = may attend), got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"attention_forward: mask must have shape {shape} (B,Lq,Lk), got {mask.shape}")
    if num_batch > 1 and mask.strides[0] == 0:   # np.broadcast_to over the batch: keep one copy
        mask = mask[:1]
    return _prep(mask, np.bool_)


def attention_forward(q, k, v, mask, is_causal, scale):
    """Scaled dot-product attention.   (B,Lq,D),(B,Lk,D),(B,Lk,Dv),(B,Lq,Lk)|None -> out (B,Lq,Dv), probs (B,Lq,Lk)

    scores = scale q k^T; key j allowed where mask[b, i, j] (and j <= i with is_causal);
    probs = softmax over the allowed keys (others exactly 0); out = probs v.
    A row with no allowed key gets probs 0 and out 0 (never NaN).
    """
    dtype = _float_dtype("attention_forward", q)
    for name, array in (("q", q), ("k", k), ("v", v)):
        if np.ndim(array) != 3:
            raise ValueError(f"attention_forward: {name} must be 3-D (B, L, D), got shape {np.shape(array)}")
    q, k, v = _prep(q, dtype), _prep(k, dtype), _prep(v, dtype)
    num_batch, num_queries, _ = q.shape
    num_keys = k.shape[1]
    if mask is None:
        mask_array = np.ones((1, 1, 1), dtype=np.bool_)   # unused; keeps a single kernel signature
    else:
        mask_array = _prep_mask(mask, (num_batch, num_queries, num_keys))
    out = np.empty((num_batch, num_queries, v.shape[2]), dtype=dtype)
    probs = np.empty((num_batch, num_queries, num_keys), dtype=dtype)
    _attention_forward_kernel(q, k, v, mask_array, mask is not None, bool(is_causal), dtype.type(scale), out, probs)
    return out, probs


@njit(parallel=True, fastmath=_FAST, cache=True)
def _attention_backward_kernel(q, k, v, probs, gout, scale, gq, gk, gv):
    # Per batch entry and query row i (P = probs, dP = gout v^T, dS = scale P (dP - <dP, P>)):
    #   gq[i] = sum_j dS[i, j] k[j];  gk[j] += dS[i, j] q[i];  gv[j] += P[i, j] gout[i].
    # Keys with P[i, j] = 0 (masked, causal) are skipped: their dS is exactly 0.
    num_batch, num_queries, head_size = q.shape
    num_keys = k.shape[1]
    value_size = v.shape[2]
    T = q.dtype.type
    for b in prange(num_batch):
        vt = np.empty((value_size, num_keys), dtype=q.dtype)          # (Dv,Lk) v transposed
        dscore = np.empty(num_keys, dtype=q.dtype)                     # (Lk,) one row of dP, then dS
        vb = v[b]
        for j in range(num_keys):
            for e in range(value_size):
                vt[e, j] = vb[j, e]
        qb = q[b]
        kb = k[b]
        pb = probs[b]
        gob = gout[b]
        gqb = gq[b]
        gkb = gk[b]
        gvb = gv[b]
        for j in range(num_keys):
            for d in range(head_size):
                gkb[j, d] = T(0.0)
            for e in range(value_size):
                gvb[j, e] = T(0.0)
        for i in range(num_queries):
            prow = pb[i]
            gorow = gob[i]
            for j in range(num_keys):
                dscore[j] = T(0.0)
            for e in range(value_size):
                go = gorow[e]
                vtrow = vt[e]
                for j in range(num_keys):
                    dscore[j] += go * vtrow[j]
            dot = _row_dot(dscore, prow)
            for j in range(num_keys):
                dscore[j] = scale * (prow[j] * (dscore[j] - dot))
            gqrow = gqb[i]
            for d in range(head_size):
                gqrow[d] = T(0.0)
            qrow = qb[i]
            for j in range(num_keys):
                p = prow[j]
                if p == T(0.0):
                    continue
                ds = dscore[j]
                krow = kb[j]
                gkrow = gkb[j]
                for d in range(head_size):
                    gqrow[d] += ds * krow[d]
                    gkrow[d] += ds * qrow[d]
                gvrow = gvb[j]
                for e in range(value_size):
                    gvrow[e] += p * gorow[e]


def attention_backward(q, k, v, probs, gout, scale):
    """gv = P^T gout;  dP = gout v^T;  dS = P (dP - rowsum(dP P));  gq = scale dS k;  gk = scale dS^T q.

    -> gq (B,Lq,D), gk (B,Lk,D), gv (B,Lk,Dv). Masked keys (P = 0) and fully masked rows give zeros.
    """
    dtype = _float_dtype("attention_backward", q)
    q, k, v = _prep(q, dtype), _prep(k, dtype), _prep(v, dtype)
    probs, gout = _prep(probs, dtype), _prep(gout, dtype)
    gq = np.empty_like(q)
    gk = np.empty_like(k)
    gv = np.empty_like(v)
    _attention_backward_kernel(q, k, v, probs, gout, dtype.type(scale), gq, gk, gv)
    return gq, gk, gv


# ------------------------------------------------------------------------ embedding backward


@njit(parallel=True, cache=True)
def _embedding_backward_kernel(ids, gy, gw, num_chunks):
    # gw[ids[n], :] += gy[n, :]. The columns are split among threads (chunks of whole 64-byte
    # cache lines), so no two threads write the same memory, and every element receives its
    # additions in the order of n, as a serial scatter-add (np.add.at) does: results are identical.
    num_features = gy.shape[1]
    per_line = 64 // gy.itemsize
    lines = (num_features + per_line - 1) // per_line
    for chunk in prange(num_chunks):
        start = min(num_features, (chunk * lines // num_chunks) * per_line)
        stop = min(num_features, ((chunk + 1) * lines // num_chunks) * per_line)
        for n in range(ids.shape[0]):
            gyrow = gy[n]
            gwrow = gw[ids[n]]
            for c in range(start, stop):
                gwrow[c] += gyrow[c]


def embedding_backward(ids, gy, num_embeddings):
    """gW[e, :] = sum over n with ids[n] == e of gy[n, :]   (scatter-add).   (N,),(N,C) -> (num_embeddings, C)

    ids must already be valid (0 <= id < num_embeddings; the op checks them).
    """
    dtype = _float_dtype("embedding_backward", gy)
    _check_2d("embedding_backward", gy=gy)
    ids = _prep(np.reshape(ids, -1), np.int64)
    gy = _prep(gy, dtype)
    if ids.shape[0] != gy.shape[0]:
        raise ValueError(f"embedding_backward: {ids.shape[0]} ids but gy has {gy.shape[0]} rows")
    gw = np.zeros((int(num_embeddings), gy.shape[1]), dtype=dtype)
    _embedding_backward_kernel(ids, gy, gw, _num_chunks(gy.shape[1]))
    return gw
