"""Soft-target losses for distillation over the rows of (N,V) logits: cross-entropy against target
distributions, and the temperature-scaled KL divergence between two sets of logits; forward and backward.

NumPy twins: reference.soft_cross_entropy_forward, soft_cross_entropy_backward, kl_div_forward,
kl_div_backward (npgrad/kernels/reference.py, section "soft targets"). Per row, the logits are read from
memory once; the passes over a row (max, exp-sum, dot product) run in cache, and neither softmax is
materialised.
"""

import numpy as np
from numba import njit

from ._inputs import _check_2d, _check_same_shape, _float_dtype, _prep
from ._intrinsics import _exp, _row_max
from ._jit import _JIT
from ._parallel import _chunks, _run


@njit(**_JIT)
def _scaled_lse(row, inv_t):
    # log sum_j exp(row[j] / T), shifted by max(row) / T.
    row_max = _row_max(row)
    total = row.dtype.type(0.0)
    for j in range(row.shape[0]):
        total += _exp((row[j] - row_max) * inv_t)
    return row_max * inv_t + np.log(total)


@njit(**_JIT)
def _soft_cross_entropy_forward_kernel(logits, target, kept, inv_t, loss, lse, start, stop):
    # loss = lse(x / T) - <p, x> / T per row; 0 on rows not kept.
    T = logits.dtype.type
    for n in range(start, stop):
        row = logits[n]
        row_lse = _scaled_lse(row, inv_t)
        lse[n] = row_lse  # on every row, as the reference
        if not kept[n]:
            loss[n] = T(0.0)
            continue
        prow = target[n]
        dot = T(0.0)
        for j in range(row.shape[0]):
            dot += prow[j] * row[j]
        loss[n] = row_lse - dot * inv_t


def soft_cross_entropy_forward(logits, target, kept, temperature):
    """loss_n = lse(x_n / T) - <p_n, x_n> / T (0 on rows not kept).   (N,V),(N,V),(N,) -> loss (N,), lse (N,)"""
    dtype = _float_dtype("soft_cross_entropy_forward", logits)
    _check_2d("soft_cross_entropy_forward", logits=logits, target=target)
    _check_same_shape("soft_cross_entropy_forward", logits=logits, target=target)
    logits, target = _prep(logits, dtype), _prep(target, dtype)
    kept = _prep(kept, np.bool_)
    num_rows = logits.shape[0]
    loss = np.empty(num_rows, dtype=dtype)
    lse = np.empty(num_rows, dtype=dtype)
    inv_t = dtype.type(1.0 / float(temperature))
    _run(_soft_cross_entropy_forward_kernel, _chunks(*logits.shape), logits, target, kept, inv_t, loss, lse)
    return loss, lse


@njit(**_JIT)
def _soft_cross_entropy_backward_kernel(logits, target, lse, gloss, kept, inv_t, glogits, start, stop):
    # glogits_n = (gloss_n / T) (exp(x_n / T - lse_n) - p_n); 0 on rows not kept.
    T = logits.dtype.type
    for n in range(start, stop):
        grow = glogits[n]
        if not kept[n]:
            for j in range(grow.shape[0]):
                grow[j] = T(0.0)
            continue
        row = logits[n]
        prow = target[n]
        g = gloss[n] * inv_t
        row_lse = lse[n]
        for j in range(row.shape[0]):
            grow[j] = g * (_exp(row[j] * inv_t - row_lse) - prow[j])


def soft_cross_entropy_backward(logits, target, lse, gloss, kept, temperature):
    """glogits[n, :] = (gloss_n / T) (softmax(x_n / T) - p_n); 0 on rows not kept.   -> (N,V)"""
    dtype = _float_dtype("soft_cross_entropy_backward", logits)
    _check_2d("soft_cross_entropy_backward", logits=logits, target=target)
    _check_same_shape("soft_cross_entropy_backward", logits=logits, target=target)
    logits, target = _prep(logits, dtype), _prep(target, dtype)
    lse, gloss, kept = _prep(lse, dtype), _prep(gloss, dtype), _prep(kept, np.bool_)
    glogits = np.empty_like(logits)
    inv_t = dtype.type(1.0 / float(temperature))
    _run(_soft_cross_entropy_backward_kernel, _chunks(*logits.shape), logits, target, lse, gloss, kept, inv_t, glogits)
    return glogits


@njit(**_JIT)
def _kl_div_forward_kernel(student, teacher, kept, temperature, loss, lse_s, lse_t, start, stop):
    # r_j = (t_j - s_j) / T - (lse_t - lse_s);  loss = T^2 sum_j q_j r_j,  q_j = exp(t_j / T - lse_t).
    T = student.dtype.type
    inv_t = T(1.0) / temperature
    for n in range(start, stop):
        srow = student[n]
        trow = teacher[n]
        s_lse = _scaled_lse(srow, inv_t)
        t_lse = _scaled_lse(trow, inv_t)
        lse_s[n] = s_lse  # on every row, as the reference
        lse_t[n] = t_lse
        if not kept[n]:
            loss[n] = T(0.0)
            continue
        shift = t_lse - s_lse
        total = T(0.0)
        for j in range(srow.shape[0]):
            q = _exp(trow[j] * inv_t - t_lse)
            total += q * ((trow[j] - srow[j]) * inv_t - shift)
        loss[n] = total * temperature * temperature


def kl_div_forward(student, teacher, kept, temperature):
    """loss_n = T^2 KL(softmax(t_n / T) || softmax(s_n / T)) (0 on rows not kept).

    (N,V),(N,V),(N,) -> loss (N,), lse_s (N,), lse_t (N,)
    """
    dtype = _float_dtype("kl_div_forward", student)
    _check_2d("kl_div_forward", student=student, teacher=teacher)
    _check_same_shape("kl_div_forward", student=student, teacher=teacher)
    student, teacher, kept = _prep(student, dtype), _prep(teacher, dtype), _prep(kept, np.bool_)
    num_rows = student.shape[0]
    loss, lse_s, lse_t = (np.empty(num_rows, dtype=dtype) for _ in range(3))
    _run(
        _kl_div_forward_kernel,
        _chunks(*student.shape),
        student,
        teacher,
        kept,
        dtype.type(temperature),
        loss,
        lse_s,
        lse_t,
    )
    return loss, lse_s, lse_t


@njit(**_JIT)
def _kl_div_backward_kernel(
    student, teacher, lse_s, lse_t, loss, gloss, kept, temperature, teacher_grad, gs, gt, start, stop
):
    # gs = T gloss (p - q);  gt = T gloss q (r - KL), KL = loss / T^2 (only with teacher_grad); 0 on rows not kept.
    T = student.dtype.type
    inv_t = T(1.0) / temperature
    for n in range(start, stop):
        gsrow = gs[n]
        if not kept[n]:
            for j in range(gsrow.shape[0]):
                gsrow[j] = T(0.0)
            if teacher_grad:
                gtrow = gt[n]
                for j in range(gtrow.shape[0]):
                    gtrow[j] = T(0.0)
            continue
        srow = student[n]
        trow = teacher[n]
        g = gloss[n] * temperature
        s_lse = lse_s[n]
        t_lse = lse_t[n]
        for j in range(srow.shape[0]):
            gsrow[j] = g * (_exp(srow[j] * inv_t - s_lse) - _exp(trow[j] * inv_t - t_lse))
        if teacher_grad:
            gtrow = gt[n]
            shift = t_lse - s_lse + loss[n] / (temperature * temperature)
            for j in range(trow.shape[0]):
                q = _exp(trow[j] * inv_t - t_lse)
                gtrow[j] = g * q * ((trow[j] - srow[j]) * inv_t - shift)


def kl_div_backward(student, teacher, lse_s, lse_t, loss, gloss, kept, temperature, teacher_grad):
    """gs = T gloss_n (p_n - q_n); gt = T gloss_n q_n (r_n - KL_n) or None; 0 on rows not kept.   -> gs, gt"""
    dtype = _float_dtype("kl_div_backward", student)
    _check_2d("kl_div_backward", student=student, teacher=teacher)
    _check_same_shape("kl_div_backward", student=student, teacher=teacher)
    student, teacher = _prep(student, dtype), _prep(teacher, dtype)
    lse_s, lse_t, loss, gloss = (_prep(a, dtype) for a in (lse_s, lse_t, loss, gloss))
    kept = _prep(kept, np.bool_)
    gs = np.empty_like(student)
    gt = np.empty_like(teacher) if teacher_grad else np.empty((0, student.shape[1]), dtype=dtype)
    _run(
        _kl_div_backward_kernel,
        _chunks(*student.shape),
        student,
        teacher,
        lse_s,
        lse_t,
        loss,
        gloss,
        kept,
        dtype.type(temperature),
        bool(teacher_grad),
        gs,
        gt,
    )
    return gs, (gt if teacher_grad else None)
