"""Scaled dot-product attention on (B,L,D) blocks (B = batch * heads), forward and backward.

NumPy twins: reference.attention_forward, attention_backward (npgrad/kernels/reference.py, section
"attention"). The batched products run in BLAS through np.matmul, which beat every Numba loop tried
for them (docs/tuning.md). Everything between the products (scale, mask, masked softmax; the softmax
backward) is one fused Numba pass over the (B,Lq,Lk) scores, in place: NumPy needs about ten passes
(and temporaries) for the same work.
"""

import numpy as np
from numba import njit

from .. import tuning
from ._inputs import _float_dtype, _prep
from ._intrinsics import _exp, _fmax, _row_dot
from ._jit import _JIT
from ._parallel import _chunks, _run


@njit(**_JIT)
def _attention_softmax_kernel(scores, mask, has_mask, is_causal, scale, start, stop):
    # In place: scores (B,Lq,Lk) = q k^T on entry, probs on exit. mask (Bm,Lq,Lk), Bm = B or 1.
    # Key j is allowed for query i where mask[b, i, j] (if has_mask) and j <= i (if is_causal);
    # disallowed keys get probability exactly 0; a row with no allowed key gets all zeros.
    num_queries, num_keys = scores.shape[1], scores.shape[2]
    T = scores.dtype.type
    shared_mask = mask.shape[0] == 1
    for b in range(start, stop):
        sb = scores[b]
        mb = mask[0] if shared_mask else mask[b]
        for i in range(num_queries):
            row = sb[i]
            last_key = min(num_keys, i + 1) if is_causal else num_keys
            row_max = T(-np.inf)
            num_allowed = 0
            for j in range(num_keys):
                allowed = j < last_key
                if has_mask:
                    allowed = allowed and mb[i, j]
                if allowed:
                    s = row[j] * scale
                    row[j] = s
                    row_max = _fmax(row_max, s)
                    num_allowed += 1
                else:
                    row[j] = T(-np.inf)
            if num_allowed == 0:
                for j in range(num_keys):
                    row[j] = T(0.0)
                continue
            total = T(0.0)
            for j in range(num_keys):
                p = _exp(row[j] - row_max)  # exp(-inf) = 0 for disallowed keys
                row[j] = p
                total += p
            inv_total = T(1.0) / total
            for j in range(num_keys):
                row[j] *= inv_total


def _prep_mask(mask, shape):
    """The mask as a C-contiguous bool array (Bm,Lq,Lk); a batch-broadcast view stays one slice."""
    num_batch = shape[0]
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"attention_forward: mask must be boolean (True = may attend), got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"attention_forward: mask must have shape {shape} (B,Lq,Lk), got {mask.shape}")
    if num_batch > 1 and mask.strides[0] == 0:  # np.broadcast_to over the batch: keep one copy
        mask = mask[:1]
    return _prep(mask, np.bool_)


def _check_attention_inputs(op, q, k, v):
    for name, array in (("q", q), ("k", k), ("v", v)):
        if np.ndim(array) != 3:
            raise ValueError(f"{op}: {name} must be 3-D (B, L, D), got shape {np.shape(array)}")


def attention_forward(q, k, v, mask, is_causal, scale):
    """Scaled dot-product attention.   (B,Lq,D),(B,Lk,D),(B,Lk,Dv),(B,Lq,Lk)|None -> out (B,Lq,Dv), probs (B,Lq,Lk)

    scores = scale q k^T; key j allowed where mask[b, i, j] (and j <= i with is_causal);
    probs = softmax over the allowed keys (others exactly 0); out = probs v.
    A row with no allowed key gets probs 0 and out 0 (never NaN).
    """
    dtype = _float_dtype("attention_forward", q)
    _check_attention_inputs("attention_forward", q, k, v)
    q, k, v = _prep(q, dtype), _prep(k, dtype), _prep(v, dtype)
    num_batch, num_queries, _ = q.shape
    num_keys = k.shape[1]
    if mask is None:
        mask_array = np.ones((1, 1, 1), dtype=np.bool_)  # unused; keeps a single kernel signature
    else:
        mask_array = _prep_mask(mask, (num_batch, num_queries, num_keys))
    # q k^T against a C-ordered copy of k^T where BLAS runs faster on it than on k's transposed view:
    # many queries, small heads (see tuning.py).
    head_size = q.shape[2]
    k_t = k.swapaxes(-1, -2)
    if num_queries >= tuning.ATTENTION_KT_COPY_MIN_QUERIES and head_size <= tuning.ATTENTION_KT_COPY_MAX_HEAD_SIZE:
        k_t = np.ascontiguousarray(k_t)
    probs = np.matmul(q, k_t)  # (B,Lq,Lk) scores, BLAS
    _run(
        _attention_softmax_kernel,
        _chunks(num_batch, num_queries * num_keys),
        probs,
        mask_array,
        mask is not None,
        bool(is_causal),
        dtype.type(scale),
    )
    out = np.matmul(probs, v)  # (B,Lq,Dv)
    return out, probs


@njit(**_JIT)
def _attention_softmax_backward_kernel(dprobs, probs, scale, start, stop):
    # In place, row by row: dS = scale * P * (dP - <dP, P>); dprobs (B,Lq,Lk) holds dP on entry.
    num_queries, num_keys = dprobs.shape[1], dprobs.shape[2]
    for b in range(start, stop):
        db = dprobs[b]
        pb = probs[b]
        for i in range(num_queries):
            drow = db[i]
            prow = pb[i]
            dot = _row_dot(drow, prow)
            for j in range(num_keys):
                drow[j] = scale * (prow[j] * (drow[j] - dot))


def attention_backward(q, k, v, probs, gout, scale):
    """gv = P^T gout;  dP = gout v^T;  dS = P (dP - rowsum(dP P));  gq = scale dS k;  gk = scale dS^T q.

    -> gq (B,Lq,D), gk (B,Lk,D), gv (B,Lk,Dv). Masked keys (P = 0) and fully masked rows give zeros.
    """
    dtype = _float_dtype("attention_backward", q)
    _check_attention_inputs("attention_backward", q, k, v)
    q, k, v = _prep(q, dtype), _prep(k, dtype), _prep(v, dtype)
    probs, gout = _prep(probs, dtype), _prep(gout, dtype)
    num_batch, num_queries, num_keys = probs.shape
    gv = np.matmul(probs.swapaxes(-1, -2), gout)  # (B,Lk,Dv)
    dscores = np.matmul(gout, v.swapaxes(-1, -2))  # (B,Lq,Lk) dP, becomes scale * dS
    _run(
        _attention_softmax_backward_kernel,
        _chunks(num_batch, num_queries * num_keys),
        dscores,
        probs,
        dtype.type(scale),
    )
    gq = np.matmul(dscores, k)  # (B,Lq,D)
    gk = np.matmul(dscores.swapaxes(-1, -2), q)  # (B,Lk,D)
    return gq, gk, gv
