"""Pure-NumPy reference kernels: the readable twins of the Numba kernels (numba_kernels/).

Each function works on plain ndarrays; the derivative it implements is derived in the Function
that calls it (npgrad/ops/). Signatures are shared with numba_kernels/ exactly. Conventions:

* The row kernels take 2-D arrays: N rows (every leading axis flattened by the op) of V or C
  entries. The attention kernels take 3-D arrays whose first axis B is every leading axis
  (batch * heads) flattened.
* float32 in -> float32 out (every constant is a Python float, which NumPy does not let promote
  an array), float64 in -> float64 out.
* Strided (non-contiguous) input is fine: NumPy's ufuncs and matmul read any strides, and no
  kernel writes into its inputs.
* Row dot products use ``np.einsum("nv,nv->n", a, b)``, which does not materialise ``a * b``.
* The GELU kernels are elementwise: any shape in, the same shape out.
"""

import numpy as np


def _row_dot(a, b):
    """sum_j a[n, j] * b[n, j] for every row n, without materialising a * b.   (N,V),(N,V) -> (N,)"""
    return np.einsum("nv,nv->n", a, b)


# ---------------------------------------------------------------------------------- softmax


def softmax_forward(x):
    """y[n, i] = exp(x[n, i] - m_n) / sum_j exp(x[n, j] - m_n),  m_n = max_j x[n, j].   (N,V) -> (N,V)

    Shifting by the row maximum changes nothing mathematically (it cancels between numerator
    and denominator) but keeps every exponent <= 0, so exp never overflows, even in float32.
    """
    y = x - x.max(axis=-1, keepdims=True)  # (N,V) the only new array
    np.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y


def softmax_backward(y, gy):
    """gx[n, i] = y[n, i] * (gy[n, i] - sum_j gy[n, j] y[n, j]).   (N,V),(N,V) -> (N,V)

    The vector-Jacobian product of softmax: dy_i/dx_j = y_i (delta_ij - y_j).
    """
    gx = gy - _row_dot(gy, y)[:, None]  # (N,V)
    gx *= y
    return gx


def log_softmax_forward(x):
    """out[n, i] = x[n, i] - m_n - log sum_j exp(x[n, j] - m_n),  m_n = max_j x[n, j].   (N,V) -> (N,V)"""
    out = x - x.max(axis=-1, keepdims=True)  # (N,V) shifted logits, every entry <= 0
    sum_exp = np.exp(out).sum(axis=-1, keepdims=True)
    out -= np.log(sum_exp)
    return out


def log_softmax_backward(out, gout):
    """gx[n, i] = gout[n, i] - exp(out[n, i]) * sum_j gout[n, j].   (N,V),(N,V) -> (N,V)

    The vector-Jacobian product of log-softmax: d out_i / dx_j = delta_ij - softmax_j,
    and exp(out) is the softmax.
    """
    gx = np.exp(out)  # (N,V) softmax
    gx *= gout.sum(axis=-1, keepdims=True)
    np.subtract(gout, gx, out=gx)
    return gx


# ---------------------------------------------------------------------------- cross-entropy


def cross_entropy_forward(logits, target, ignore_index, label_smoothing):
    """Per-row cross-entropy with label smoothing and an ignored class index.   (N,V),(N,) -> (N,),(N,)

    lse_n  = log sum_j exp(x[n, j])                              (max-shifted)
    loss_n = lse_n - (1 - eps) x[n, t_n] - (eps / V) sum_j x[n, j],   and 0 where t_n == ignore_index

    This is PyTorch's rule  (1 - eps) * (-log p[n, t_n]) + eps * mean_j(-log p[n, j])  with
    -log p[n, j] = lse_n - x[n, j]. Returns (loss, lse); lse is kept for the backward. Targets
    must already be valid (0 <= t < V, or ignore_index): the op checks them.
    """
    num_rows, num_classes = logits.shape
    eps = float(label_smoothing)
    row_max = logits.max(axis=-1)  # (N,)
    shifted_exp = logits - row_max[:, None]  # (N,V)
    np.exp(shifted_exp, out=shifted_exp)
    lse = np.log(shifted_exp.sum(axis=-1))  # (N,)
    del shifted_exp  # the big temporary, freed early
    lse += row_max

    ignored = target == ignore_index  # (N,)
    safe_target = np.where(ignored, 0, target)  # any valid index on ignored rows
    target_logit = logits[np.arange(num_rows), safe_target]  # (N,)

    loss = lse - (1.0 - eps) * target_logit
    if eps != 0.0:
        loss -= (eps / num_classes) * logits.sum(axis=-1)
    loss[ignored] = 0.0
    return loss, lse


def cross_entropy_backward(logits, target, lse, gloss, ignore_index, label_smoothing):
    """glogits[n, :] = gloss_n * (softmax(x_n) - (1 - eps) onehot(t_n) - eps / V); 0 on ignored rows.

    (N,V),(N,),(N,),(N,) -> (N,V). The one-hot is never materialised: (1 - eps) is subtracted
    at one index per row. softmax(x_n) = exp(x_n - lse_n) uses the saved log-sum-exp.
    """
    num_rows, num_classes = logits.shape
    eps = float(label_smoothing)
    glogits = logits - lse[:, None]  # (N,V) log-probabilities
    np.exp(glogits, out=glogits)  # probabilities
    if eps != 0.0:
        glogits -= eps / num_classes

    kept_rows = np.flatnonzero(target != ignore_index)  # rows that count
    glogits[kept_rows, target[kept_rows]] -= 1.0 - eps
    row_scale = np.zeros(num_rows, dtype=glogits.dtype)  # (N,) gloss, 0 on ignored rows
    row_scale[kept_rows] = gloss[kept_rows]
    glogits *= row_scale[:, None]
    return glogits


# ----------------------------------------------------------------- soft targets (distillation)


def _scaled_lse(x, inv_t):
    """lse_n = log sum_j exp(x[n, j] / T), max-shifted (T > 0, so max(x / T) = max(x) / T).   (N,V) -> (N,)"""
    row_max = x.max(axis=-1)  # (N,)
    shifted_exp = x - row_max[:, None]  # (N,V)
    shifted_exp *= inv_t
    np.exp(shifted_exp, out=shifted_exp)
    lse = np.log(shifted_exp.sum(axis=-1))
    lse += row_max * inv_t
    return lse


def soft_cross_entropy_forward(logits, target, kept, temperature):
    """Per-row cross-entropy against target distributions.   (N,V),(N,V),(N,) -> (N,),(N,)

    lse_n  = log sum_j exp(x[n, j] / T)                           (max-shifted)
    loss_n = -sum_j p[n, j] log softmax(x_n / T)_j = lse_n - <p_n, x_n> / T     (rows of p sum to 1),
    and 0 on rows where kept[n] is False. Returns (loss, lse); lse is kept for the backward.
    """
    inv_t = 1.0 / float(temperature)
    lse = _scaled_lse(logits, inv_t)
    loss = lse - _row_dot(target, logits) * inv_t
    loss[~kept] = 0.0
    return loss, lse


def soft_cross_entropy_backward(logits, target, lse, gloss, kept, temperature):
    """glogits[n, :] = (gloss_n / T) (softmax(x_n / T) - p_n); 0 on rows not kept.   -> (N,V)

    softmax(x_n / T) = exp(x_n / T - lse_n) uses the saved log-sum-exp.
    """
    inv_t = 1.0 / float(temperature)
    glogits = logits * inv_t  # (N,V) x / T
    glogits -= lse[:, None]  # log-probabilities
    np.exp(glogits, out=glogits)  # probabilities
    glogits -= target
    glogits *= (gloss * inv_t)[:, None]  # gloss / T
    glogits[~kept] = 0.0
    return glogits


def kl_div_forward(student, teacher, kept, temperature):
    """Per-row T^2 KL(q || p), q = softmax(t / T), p = softmax(s / T).   (N,V),(N,V),(N,) -> (N,),(N,),(N,)

    log q_j - log p_j = r_j = (t_j - s_j) / T - (lse_t - lse_s),  lse_s, lse_t of s / T and t / T;
    loss_n = T^2 sum_j q_j r_j  (the Hinton et al. 2015 scaling), 0 on rows not kept.
    Returns (loss, lse_s, lse_t); both log-sum-exps are kept for the backward.
    """
    t2 = float(temperature) ** 2
    inv_t = 1.0 / float(temperature)
    lse_s = _scaled_lse(student, inv_t)
    lse_t = _scaled_lse(teacher, inv_t)
    log_ratio = teacher - student  # (N,V) becomes r = log q - log p
    log_ratio *= inv_t
    log_ratio -= (lse_t - lse_s)[:, None]
    probs_t = teacher * inv_t  # (N,V) becomes q
    probs_t -= lse_t[:, None]
    np.exp(probs_t, out=probs_t)
    loss = _row_dot(probs_t, log_ratio) * t2
    loss[~kept] = 0.0
    return loss, lse_s, lse_t


def kl_div_backward(student, teacher, lse_s, lse_t, loss, gloss, kept, temperature, teacher_grad):
    """Gradients of loss_n = T^2 KL(q_n || p_n).   -> gs (N,V), gt (N,V) or None; 0 on rows not kept

    gs[n, :] = T gloss_n (p_n - q_n);
    gt[n, :] = T gloss_n q_n * (r_n - KL_n),  r = log q - log p,  KL_n = loss_n / T^2
    (gt only with teacher_grad; None otherwise).
    """
    temperature = float(temperature)
    inv_t = 1.0 / temperature
    row_scale = (gloss * temperature)[:, None]  # (N,1) T gloss_n
    probs_t = teacher * inv_t  # (N,V) becomes q
    probs_t -= lse_t[:, None]
    np.exp(probs_t, out=probs_t)
    gs = student * inv_t  # (N,V) becomes p
    gs -= lse_s[:, None]
    np.exp(gs, out=gs)
    gs -= probs_t
    gs *= row_scale
    gs[~kept] = 0.0
    if not teacher_grad:
        return gs, None
    gt = teacher - student  # (N,V) becomes r - KL
    gt *= inv_t
    gt -= (lse_t - lse_s + loss / temperature**2)[:, None]
    gt *= probs_t
    gt *= row_scale
    gt[~kept] = 0.0
    return gs, gt


# ------------------------------------------------------------------------------- layer norm


def layer_norm_forward(x, w, b, eps):
    """y = (x - mean) * rstd * w + b over each row.   (N,C),(C,),(C,) -> (N,C),(N,),(N,)

    mean_n = (1/C) sum_j x[n, j];  var_n = (1/C) sum_j (x[n, j] - mean_n)^2 (biased);
    rstd_n = 1 / sqrt(var_n + eps). The variance is computed in two passes, from the centred
    values, so float32 keeps its precision when |mean| >> std (the one-pass E[x^2] - E[x]^2 does not).
    Returns (y, mean, rstd); mean and rstd are kept for the backward.
    """
    num_features = x.shape[-1]
    mean = x.mean(axis=-1)  # (N,)
    y = x - mean[:, None]  # (N,C) centred, becomes y
    var = _row_dot(y, y) / num_features  # (N,)
    rstd = 1.0 / np.sqrt(var + float(eps))  # (N,)
    y *= rstd[:, None]  # xhat
    y *= w
    y += b
    return y, mean, rstd


def layer_norm_backward(gy, x, w, mean, rstd):
    """Gradients of layer norm.   (N,C),(N,C),(C,),(N,),(N,) -> (N,C),(C,),(C,)

    xhat = (x - mean) * rstd;  gb = sum_n gy;  gw = sum_n gy * xhat;
    gx = rstd * (gy*w - mean_j(gy*w) - xhat * mean_j(gy*w*xhat))   (row-wise means over C).
    """
    num_features = x.shape[-1]
    xhat = x - mean[:, None]  # (N,C)
    xhat *= rstd[:, None]
    gb = gy.sum(axis=0)  # (C,)
    gw = np.einsum("nc,nc->c", gy, xhat)  # (C,)

    gxhat = gy * w  # (N,C) dL/dxhat, becomes gx
    mean_gxhat = gxhat.mean(axis=-1)  # (N,)
    mean_gxhat_xhat = _row_dot(gxhat, xhat) / num_features  # (N,)
    gx = gxhat
    gx -= mean_gxhat[:, None]
    xhat *= mean_gxhat_xhat[:, None]  # xhat is not needed any more
    gx -= xhat
    gx *= rstd[:, None]
    return gx, gw, gb


def add_layer_norm_forward(x, r, w, b, eps):
    """s = x + r;  y = layer_norm(s).   (N,C),(N,C),(C,),(C,) -> (N,C),(N,C),(N,),(N,)

    Returns (y, s, mean, rstd). The backward is layer_norm_backward on s, and since
    ds/dx = ds/dr = identity, dL/dx = dL/dr = dL/ds.
    """
    s = x + r  # (N,C) the residual stream
    y, mean, rstd = layer_norm_forward(s, w, b, eps)
    return y, s, mean, rstd


# -------------------------------------------------------------------------------- attention


def attention_forward(q, k, v, mask, is_causal, scale):
    """Scaled dot-product attention.   (B,Lq,D),(B,Lk,D),(B,Lk,Dv),(B,Lq,Lk)|None -> (B,Lq,Dv),(B,Lq,Lk)

    scores = scale * q k^T; key j is allowed for query i where mask[b, i, j] is True (all, without
    a mask) and, with is_causal, j <= i; probs = softmax of the scores over the allowed keys
    (disallowed keys get probability exactly 0); out = probs v. Returns (out, probs).

    Fully masked rows (no allowed key): probs 0 and out 0, never NaN. The mask may be a
    broadcast view (zero strides); it is only read.
    """
    num_queries, num_keys = q.shape[1], k.shape[1]
    scores = np.matmul(q, k.swapaxes(-1, -2))  # (B,Lq,Lk)
    scores *= float(scale)

    allowed = mask  # (B,Lq,Lk) bool, or None
    if is_causal:
        causal = np.tri(num_queries, num_keys, dtype=bool)  # (Lq,Lk) True where j <= i
        allowed = causal if allowed is None else np.logical_and(allowed, causal)
    if allowed is not None:
        np.copyto(scores, -np.inf, where=np.logical_not(allowed))

    # Masked softmax: a fully masked row has max -inf; shifting by 0 instead keeps exp(-inf) = 0
    # (not exp(nan)), and dividing by 1 instead of 0 keeps its probabilities 0.
    row_max = scores.max(axis=-1, keepdims=True)  # (B,Lq,1)
    row_max[row_max == -np.inf] = 0.0
    probs = scores
    probs -= row_max
    np.exp(probs, out=probs)
    denom = probs.sum(axis=-1, keepdims=True)  # (B,Lq,1)
    denom[denom == 0.0] = 1.0
    probs /= denom
    out = np.matmul(probs, v)  # (B,Lq,Dv)
    return out, probs


def attention_backward(q, k, v, probs, gout, scale):
    """Gradients of scaled dot-product attention.   -> gq (B,Lq,D), gk (B,Lk,D), gv (B,Lk,Dv)

    With P = probs and S = scale * q k^T:
    gv = P^T gout;  dP = gout v^T;  dS = P * (dP - rowsum(dP * P))  (softmax backward per row);
    gq = scale dS k;  gk = scale dS^T q.
    Disallowed keys have P = 0, so their dS is 0; fully masked rows give zero gradients.
    """
    gv = np.matmul(probs.swapaxes(-1, -2), gout)  # (B,Lk,Dv)
    dS = np.matmul(gout, v.swapaxes(-1, -2))  # (B,Lq,Lk) dP, becomes dS
    row_dot = np.einsum("bqk,bqk->bq", dS, probs)  # (B,Lq)
    dS -= row_dot[..., None]
    dS *= probs
    dS *= float(scale)  # fold the scale in once
    gq = np.matmul(dS, k)  # (B,Lq,D)
    gk = np.matmul(dS.swapaxes(-1, -2), q)  # (B,Lk,D)
    return gq, gk, gv


# ------------------------------------------------------------------------------ erf, normal cdf, gelu
#
# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969),
# as in his CALERF routine (netlib specfun): three rational approximations, each accurate to
# float64 round-off on its interval:
#   |z| <= 0.46875        erf(z)  = z P1(z^2) / Q1(z^2)
#   0.46875 < |z| <= 4    erfc(z) = exp(-z^2) P2(z) / Q2(z)
#   |z| > 4               erfc(z) = exp(-z^2) / z (1/sqrt(pi) + 1/z^2 P3(1/z^2) / Q3(1/z^2))
# with erfc(-z) = 2 - erfc(z). exp(-z^2) is evaluated as exp(-zr^2) exp(-(z - zr)(z + zr)) with
# zr = z rounded down to a multiple of 1/16, so the rounding of z^2 does not cost accuracy.

_ERF_A = (
    3.16112374387056560e00,
    1.13864154151050156e02,
    3.77485237685302021e02,
    3.20937758913846947e03,
    1.85777706184603153e-1,
)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_ERF_C = (
    5.64188496988670089e-1,
    8.88314979438837594e00,
    6.61191906371416295e01,
    2.98635138197400131e02,
    8.81952221241769090e02,
    1.71204761263407058e03,
    2.05107837782607147e03,
    1.23033935479799725e03,
    2.15311535474403846e-8,
)
_ERF_D = (
    1.57449261107098347e01,
    1.17693950891312499e02,
    5.37181101862009858e02,
    1.62138957456669019e03,
    3.29079923573345963e03,
    4.36261909014324716e03,
    3.43936767414372164e03,
    1.23033935480374942e03,
)
_ERF_P = (
    3.05326634961232344e-1,
    3.60344899949804439e-1,
    1.25781726111229246e-1,
    1.60837851487422766e-2,
    6.58749161529837803e-4,
    1.63153871373020978e-2,
)
_ERF_Q = (
    2.56852019228982242e00,
    1.87295284992346047e00,
    5.27905102951428412e-1,
    6.05183413124413191e-2,
    2.33520497626869185e-3,
)
_INV_SQRT_PI = 5.6418958354775628695e-1
_SQRT_HALF = 0.70710678118654752440
_INV_SQRT_2PI = 0.39894228040143267794
_TANH_K = 0.79788456080286535588  # sqrt(2/pi), the tanh GELU's constants
_TANH_C = 0.044715


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
_ERF32_ALPHA = (
    -1.60960333262415e-02,
    -2.95459980854025e-03,
    -7.34990630326855e-04,
    -5.69250639462346e-05,
    -2.10102402082508e-06,
    2.77068142495902e-08,
    -2.72614225801306e-10,
)
_ERF32_BETA = (
    -1.42647390514189e-02,
    -7.37332916720468e-03,
    -1.68282697438203e-03,
    -2.13374055278905e-04,
    -1.45660718464996e-05,
)


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
    large = y > 4.0  # NaN is in no interval: handled below
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


def _check_approximate(op, approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{op}: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_forward(x, approximate):
    """GELU of an array of any shape; keeps its dtype.   x -> y, same shape

    approximate="none":  y = x Phi(x)  (Phi by normal_cdf above);
    approximate="tanh":  y = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    """
    _check_approximate("gelu_forward", approximate)
    if approximate == "tanh":
        t = np.tanh(_TANH_K * (x + _TANH_C * (x * x * x)))
        t += 1.0
        t *= x
        t *= 0.5
        return t
    return x * normal_cdf(x)


def gelu_backward(x, gy, approximate):
    """dL/dx = gy * dy/dx of gelu_forward, recomputed from x.   x, gy -> gx, same shape

    approximate="none":  dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi);
    approximate="tanh":  dy/dx = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),
                         t = tanh(sqrt(2/pi) (x + 0.044715 x^3)).
    """
    _check_approximate("gelu_backward", approximate)
    if approximate == "tanh":
        x2 = x * x
        t = np.tanh(_TANH_K * (x + _TANH_C * (x2 * x)))
        dy = 0.5 * (1.0 + t) + (0.5 * _TANH_K) * x * (1.0 - t * t) * (1.0 + 3.0 * _TANH_C * x2)
        return gy * dy
    dy = np.exp(-0.5 * x * x)
    dy *= _INV_SQRT_2PI
    dy *= x
    dy += normal_cdf(x)
    return gy * dy


# -------------------------------------------------------------------------------- embedding


def embedding_backward(ids, gy, num_embeddings):
    """Scatter-add: gW[v] = sum of gy[i] over the rows i with ids[i] == v.  ids (N,) int64, gy (N, C).

    Sort the ids once, copy the rows of ids that occur once with one fancy assignment, and sum the
    runs of repeated ids with np.add.reduceat: faster than np.add.at (docs/tuning.md).
    """
    ids = np.asarray(ids)
    gy = np.asarray(gy)
    n, dim = gy.shape
    gw = np.zeros((num_embeddings, dim), dtype=gy.dtype)
    if n == 0:
        return gw
    order = np.argsort(ids, kind="stable")  # (N,) rows grouped by id
    sorted_ids = ids[order]
    is_start = np.empty(n, dtype=bool)  # first row of each run of equal ids
    is_start[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    lengths = np.diff(starts, append=n)
    single = lengths == 1
    gw[sorted_ids[starts[single]]] = gy[order[starts[single]]]
    if not single.all():
        repeated = ~single
        rows = order[np.repeat(repeated, lengths)]  # rows of the repeated ids, grouped by id
        run_lengths = lengths[repeated]
        offsets = np.zeros(len(run_lengths), dtype=np.intp)
        np.cumsum(run_lengths[:-1], out=offsets[1:])
        gw[sorted_ids[starts[repeated]]] = np.add.reduceat(gy[rows], offsets, axis=0)
    return gw


# ------------------------------------------------------------- recurrent cells, backpropagation through time
#
# Shapes: T time steps, B batch, H hidden size, G gates (RNN 1, GRU 3, LSTM 4). Sequences are time-major
# here: xw (T,B,G*H) holds the input projections x_t W_ih + b_ih of every step, computed by the caller in
# one matmul; the recurrence adds hw_t = h_{t-1} W_hh + b_hh (B,G*H) step by step. Gate order within G*H
# is PyTorch's: LSTM i f g o, GRU r z n. The derivations are in npgrad/ops/recurrent.py (Recurrent).
#
# The cell and sequence functions below take ``math``, the few functions that differ between ndarrays and
# Tensors (tanh, concatenate, stack), and use only operators the two share otherwise: the same lines run the
# NumPy reference on ndarrays and the create_graph VJP on Tensors (npgrad/ops/recurrent.py).

RECURRENT_MODES = {"rnn_tanh": 1, "gru": 3, "lstm": 4}  # mode -> gates G


class ArrayMath:
    """What the recurrent functions need beyond operators, for ndarrays."""

    tanh = staticmethod(np.tanh)
    concatenate = staticmethod(np.concatenate)
    stack = staticmethod(np.stack)


def _sigmoid(z, math):
    """sigma(z) = 1 / (1 + e^{-z}) = (1 + tanh(z / 2)) / 2: no overflow for any z, and differentiable through tanh."""
    return (math.tanh(z * 0.5) + 1.0) * 0.5


def cell_forward(mode, xw, hw, h_prev, c_prev, math=ArrayMath):
    """One step of the cell from its two projections.   xw, hw (B,G*H), h_prev (B,H), c_prev (B,H)|None

    Returns (acts, h, c): acts the activations the backward needs, (B,A*H) with A = 1 (RNN: h),
    4 (GRU: r z n hn) or 5 (LSTM: i f g o tanh(c)); h (B,H); c (B,H) for the LSTM, else None.
        RNN:  h = tanh(xw + hw)
        GRU:  r = sigma(xw_r + hw_r), z = sigma(xw_z + hw_z), n = tanh(xw_n + r * hn),  hn = hw_n,
              h = (1 - z) n + z h_prev
        LSTM: (i, f, g, o) = (sigma, sigma, tanh, sigma)(xw + hw),  c = f c_prev + i g,  h = o tanh(c)
    """
    size = h_prev.shape[-1]
    if mode == "rnn_tanh":
        h = math.tanh(xw + hw)
        return h, h, None
    if mode == "gru":
        r = _sigmoid(xw[:, :size] + hw[:, :size], math)
        z = _sigmoid(xw[:, size : 2 * size] + hw[:, size : 2 * size], math)
        hn = hw[:, 2 * size :]
        n = math.tanh(xw[:, 2 * size :] + r * hn)
        h = (1.0 - z) * n + z * h_prev
        return math.concatenate([r, z, n, hn], axis=-1), h, None
    pre = xw + hw  # (B,4H)
    i = _sigmoid(pre[:, :size], math)
    f = _sigmoid(pre[:, size : 2 * size], math)
    g = math.tanh(pre[:, 2 * size : 3 * size])
    o = _sigmoid(pre[:, 3 * size :], math)
    c = f * c_prev + i * g
    tanh_c = math.tanh(c)
    return math.concatenate([i, f, g, o, tanh_c], axis=-1), o * tanh_c, c


def cell_backward(mode, acts, h_prev, c_prev, dh, dc, math=ArrayMath):
    """The VJP of cell_forward.   -> dxw (B,G*H), dhw (B,G*H), dh_prev (B,H)|None, dc_prev (B,H)|None

    dxw/dhw are the gradients of the two projections; dh_prev and dc_prev only the direct paths (GRU's
    z h_prev, LSTM's f c_prev): the path through hw = h_prev W_hh is the caller's dhw W_hh^T.
    sigma' = sigma (1 - sigma), tanh' = 1 - tanh^2, written in the saved activations.
    """
    size = dh.shape[-1]
    if mode == "rnn_tanh":
        dpre = dh * (1.0 - acts * acts)
        return dpre, dpre, None, None
    if mode == "gru":
        r, z, n, hn = (acts[:, k * size : (k + 1) * size] for k in range(4))
        dn_pre = dh * (1.0 - z) * (1.0 - n * n)  # through h = (1 - z) n + z h_prev, then tanh
        dr_pre = dn_pre * hn * r * (1.0 - r)  # n's pre-activation is xw_n + r hn
        dz_pre = dh * (h_prev - n) * z * (1.0 - z)
        dxw = math.concatenate([dr_pre, dz_pre, dn_pre], axis=-1)
        dhw = math.concatenate([dr_pre, dz_pre, dn_pre * r], axis=-1)
        return dxw, dhw, dh * z, None
    i, f, g, o, tanh_c = (acts[:, k * size : (k + 1) * size] for k in range(5))
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)  # c reaches the loss directly and through h = o tanh(c)
    dpre = math.concatenate(
        [dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)],
        axis=-1,
    )
    return dpre, dpre, None, dc * f


def recurrent_steps_forward(mode, xw, w_hh, b_hh, h0, c0, keep, math=ArrayMath):
    """The cell over time.   xw (T,B,G*H), w_hh (H,G*H), b_hh (G*H,), h0 (B,H), c0 (B,H)|None, keep [(B,1)]|None

    keep[t] is 1.0 where step t of a sequence is real and 0.0 where it is padding: there the state is carried
    unchanged and the output is 0. Returns lists: ys [T x (B,H)], acts [T], hs [T+1] (h0 first), cs [T+1] (LSTM).
    """
    ys, acts, hs, cs = [], [], [h0], [c0]
    for t in range(xw.shape[0]):
        a, h, c = cell_forward(mode, xw[t], hs[t] @ w_hh + b_hh, hs[t], cs[t], math)
        acts.append(a)
        if keep is None:
            ys.append(h)
        else:
            ys.append(h * keep[t])
            h = ys[t] + hs[t] * (1.0 - keep[t])
            if c is not None:
                c = c * keep[t] + cs[t] * (1.0 - keep[t])
        hs.append(h)
        cs.append(c)
    return ys, acts, hs, cs


def recurrent_steps_backward(mode, gys, dh, dc, w_hh, acts, hs, cs, keep, math=ArrayMath):
    """Backpropagation through time: the VJP of recurrent_steps_forward as one loop from t = T-1 down to 0.

    gys [T x (B,H)] gradients of the outputs; dh, dc (B,H) those of the final states (dc None unless LSTM).
    Returns dxw [T x (B,G*H)], dhw [T x (B,G*H)], dh0, dc0.
    """
    steps = len(acts)
    dxws, dhws = [None] * steps, [None] * steps
    for t in range(steps - 1, -1, -1):
        dh_new, dc_new = gys[t] + dh, dc  # h_t feeds the output y_t and the next step
        if keep is not None:  # a padding step passes dh, dc through to h_{t-1}, c_{t-1} untouched
            dh_new, dh = dh_new * keep[t], dh * (1.0 - keep[t])
            if dc is not None:
                dc_new, dc = dc * keep[t], dc * (1.0 - keep[t])
        dxws[t], dhws[t], dh_direct, dc_direct = cell_backward(mode, acts[t], hs[t], cs[t], dh_new, dc_new, math)
        dh_prev = dhws[t] @ w_hh.T
        dh = dh_prev + dh if keep is not None else dh_prev
        if dh_direct is not None:
            dh = dh + dh_direct
        if dc_direct is not None:
            dc = dc_direct + dc if keep is not None else dc_direct
    return dxws, dhws, dh, dc


def recurrent_forward(mode, xw, w_hh, b_hh, h0, c0, mask):
    """Run the cell over time.   xw (T,B,G*H), w_hh (H,G*H), b_hh (G*H,), h0 (B,H), c0 (B,H)|None, mask (T,B)|None

    -> out (T+S,B,H): the outputs y_0..y_{T-1}, then the final h (and for the LSTM, S = 2, the final c);
    and what the backward needs: acts (T,B,A*H), hs (T+1,B,H) the states h_0..h_T, cs (T+1,B,H) (LSTM) or
    an empty array. mask: True where a step is real; the state skips padding steps, whose output is 0.
    """
    keep = None if mask is None else mask[:, :, None].astype(xw.dtype)  # (T,B,1)
    ys, acts, hs, cs = recurrent_steps_forward(mode, xw, w_hh, b_hh, h0, c0, keep)
    final = [hs[-1]] if c0 is None else [hs[-1], cs[-1]]
    out = np.stack(ys + final)
    cs_array = np.stack(cs) if c0 is not None else np.empty((0,) + h0.shape, dtype=xw.dtype)
    return out, np.stack(acts), np.stack(hs), cs_array


def recurrent_backward(mode, gout, w_hh, acts, hs, cs, mask):
    """Gradients of recurrent_forward.   gout (T+S,B,H) -> gxw (T,B,G*H), gw_hh (H,G*H), gb_hh (G*H,), gh0, gc0|None

    W_hh and b_hh act at every step, so their gradients sum over steps: gw_hh = sum_t h_t^T dhw_t, one
    matmul over the stacked (T*B) rows once the loop is done; gb_hh = sum_t sum_b dhw_t.
    """
    steps = acts.shape[0]
    keep = None if mask is None else mask[:, :, None].astype(acts.dtype)
    lstm = cs.shape[0] > 0
    dc = gout[steps + 1] if lstm else None
    dxws, dhws, dh0, dc0 = recurrent_steps_backward(
        mode, gout[:steps], gout[steps], dc, w_hh, acts, hs, cs if lstm else [None] * (steps + 1), keep
    )
    dhw = np.stack(dhws)  # (T,B,G*H)
    rows = steps * hs.shape[1]
    gw_hh = hs[:steps].reshape(rows, -1).T @ dhw.reshape(rows, -1)
    return np.stack(dxws), gw_hh, dhw.reshape(rows, -1).sum(axis=0), dh0, dc0
