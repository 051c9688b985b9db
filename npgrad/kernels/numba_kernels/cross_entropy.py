"""Cross-entropy with label smoothing and an ignored class index, over the rows of (N,V) logits.

NumPy twins: reference.cross_entropy_forward, cross_entropy_backward (npgrad/kernels/reference.py,
section "cross-entropy"). The forward reads each row of logits from memory once; the backward writes
the gradient without materialising a one-hot or the softmax.
"""

import numpy as np
from numba import njit

from ._inputs import _check_2d, _float_dtype, _prep
from ._intrinsics import _exp, _row_max
from ._jit import _JIT
from ._parallel import _chunks, _run


@njit(**_JIT)
def _cross_entropy_forward_kernel(logits, target, ignore_index, smoothing, loss, lse, start, stop):
    # Per row, one read of the logits from memory: the max, then the exp-sum and the sum (in
    # cache). loss = lse - (1-eps) x[t] - (eps/V) sum_j x[j]; 0 on ignored rows.
    num_classes = logits.shape[1]
    T = logits.dtype.type
    keep = T(1.0) - smoothing
    smooth_per_class = smoothing / T(num_classes)
    for n in range(start, stop):
        row = logits[n]
        row_max = _row_max(row)
        # The exp-sum and the plain sum in one loop: two add reductions vectorise together; a max
        # and an add reduction in one loop did not (several times slower).
        exp_sum = T(0.0)
        row_sum = T(0.0)
        for j in range(num_classes):
            exp_sum += _exp(row[j] - row_max)
            row_sum += row[j]
        row_lse = row_max + np.log(exp_sum)
        lse[n] = row_lse
        t = target[n]
        if t == ignore_index:
            loss[n] = T(0.0)
        elif smoothing == T(0.0):
            # Without smoothing the sum is not part of the loss: a -inf logit (a masked vocabulary entry)
            # must not enter it as 0 * -inf = NaN (the NumPy twin skips the term the same way).
            loss[n] = row_lse - row[t]
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
    _run(
        _cross_entropy_forward_kernel,
        _chunks(*logits.shape),
        logits,
        target,
        np.int64(ignore_index),
        dtype.type(label_smoothing),
        loss,
        lse,
    )
    return loss, lse


@njit(**_JIT)
def _cross_entropy_backward_kernel(logits, target, lse, gloss, ignore_index, smoothing, glogits, start, stop):
    # glogits_n = gloss_n * (exp(x_n - lse_n) - eps/V), then -= gloss_n (1-eps) at t_n; 0 if ignored.
    num_classes = logits.shape[1]
    T = logits.dtype.type
    keep = T(1.0) - smoothing
    smooth_per_class = smoothing / T(num_classes)
    for n in range(start, stop):
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
    _run(
        _cross_entropy_backward_kernel,
        _chunks(*logits.shape),
        logits,
        target,
        lse,
        gloss,
        np.int64(ignore_index),
        dtype.type(label_smoothing),
        glogits,
    )
    return glogits
