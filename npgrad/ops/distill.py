"""Soft-target losses for knowledge distillation: cross-entropy against target distributions, and the
temperature-scaled KL divergence between a student's and a teacher's logits, each one fused primitive.

Rows that do not count (padding) are dropped by ``mask`` (True = the row counts, as the padding masks of
transformer/data.py) and/or by a companion integer ``target`` equal to ``ignore_index`` (the target given to
``cross_entropy`` in the same step); "mean" averages over the kept rows only.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .._checks import as_float_array, check_int, check_number
from ..function import Function, TensorBase, TensorLike, TensorResult
from ..kernels import K
from .loss import REDUCTIONS
from .softmax import log_softmax, softmax

#: How far a row of ``target_probs`` may be from summing to 1 (summed in float64).
SUM_TOLERANCE = 1e-4


class SoftCrossEntropy(Function):
    r"""Cross-entropy of logits x (N, V) at temperature T against target distributions p (N, V).

    Per row n (rows of p are >= 0 and sum to 1; lse_n = log sum_j exp(x_nj / T)):
        loss_n = -sum_j p_nj log softmax(x_n / T)_j = lse_n - <p_n, x_n> / T,
    and loss_n = 0 on a row that is not kept. Reductions as cross_entropy's: "none" -> (N,); "sum";
    "mean" -> sum_n loss_n / M, M = number of kept rows (nan for M = 0).

    Jacobian of one row: d lse_n / dx_nj = softmax(x_n / T)_j / T, so
        d loss_n / dx_nj = (softmax(x_n / T)_j - p_nj) / T,
    and 0 on a row not kept. VJP with the upstream gradient gloss_n of loss_n:
        g_x[n, :] = (gloss_n / T) (softmax(x_n / T) - p_n),
    gloss_n = g (sum), g / M (mean) or g_n (none). With T = 1 and p = onehot(t) this is cross_entropy.
    No T^2 factor here (the loss is the plain cross-entropy of the softened student); kl_div has it.
    p is a constant: no gradient flows to target_probs (soft_cross_entropy refuses one that requires grad).
    backward runs the kernel (K.soft_cross_entropy_backward); differentiable_backward is the same
    formula in Tensor ops, with softmax(x / T) recomputed in the graph, for create_graph.
    """

    @staticmethod
    def forward(ctx, logits, target_probs, kept, temperature=1.0, reduction="mean"):
        num_classes = logits.shape[-1]
        logits_rows = logits.reshape(-1, num_classes)  # (N,V)
        target_rows = target_probs.reshape(-1, num_classes)  # (N,V)
        kept_rows = kept.reshape(-1)  # (N,) bool
        loss, lse = K.soft_cross_entropy_forward(logits_rows, target_rows, kept_rows, temperature)
        ctx.save_for_backward(logits, target_rows, kept_rows, lse)
        ctx.temperature, ctx.reduction = temperature, reduction
        ctx.num_kept = int(np.count_nonzero(kept_rows))
        return _reduce(loss, kept.shape, reduction, ctx.num_kept)

    @staticmethod
    def backward(ctx, g):
        logits, target_rows, kept_rows, lse = ctx.saved
        num_classes = logits.shape[-1]
        gloss = _row_gradients(ctx, g, kept_rows.shape[0])  # (N,)
        glogits = K.soft_cross_entropy_backward(
            logits.reshape(-1, num_classes), target_rows, lse, gloss, kept_rows, ctx.temperature
        )
        return glogits.reshape(logits.shape), None, None

    @staticmethod
    def differentiable_backward(ctx, g):
        # The same formula with Tensor ops: softmax(x / T) is a graph node, p a constant.
        logits, target_rows, kept_rows, _ = ctx.saved_tensors
        num_rows, num_classes = target_rows.shape
        inv_t = 1.0 / ctx.temperature
        probs = softmax(logits.reshape((num_rows, num_classes)) * inv_t, axis=-1)
        gloss = _row_gradients_tensor(ctx, g, kept_rows.data, logits.dtype) * inv_t  # (N,) gloss_n / T
        glogits = gloss.reshape((num_rows, 1)) * (probs - target_rows)
        return glogits.reshape(logits.shape), None, None


class KLDiv(Function):
    r"""T^2 KL(q || p) per row: q = softmax(t / T) the teacher's, p = softmax(s / T) the student's, (N, V).

    Per row n, with lse_s, lse_t the log-sum-exps of s_n / T and t_n / T and
        r_j = log q_j - log p_j = (t_j - s_j) / T - (lse_t - lse_s):
        loss_n = T^2 KL_n,   KL_n = sum_j q_j r_j  (>= 0; 0 iff q = p),
    0 on a row not kept; reductions as SoftCrossEntropy's ("mean" over kept rows). The factor T^2 is
    Hinton et al. 2015's: the gradient below is (p - q) / T times T^2, which keeps its size roughly
    independent of T (for large T, p - q ~ (s - t) / (V T)). "mean" over 2-D (N, V) logits equals
    PyTorch's F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T^2.

    Student: d KL_n / ds_j = (p_j - q_j) / T (q does not depend on s; d lse_s / ds_j = p_j / T), so
        g_s[n, :] = T gloss_n (p_n - q_n).
    Teacher: d q_j / dt_k = q_j (delta_jk - q_k) / T and d r_j / dt_k = (delta_jk - q_k) / T, so
        d KL_n / dt_k = sum_j [q_j (delta_jk - q_k) r_j + q_j (delta_jk - q_k)] / T = q_k (r_k - KL_n) / T,
        g_t[n, :] = T gloss_n q_n * (r_n - KL_n)       (computed only when the teacher requires grad).
    Both rows sum to 0 (a constant added to s_n or t_n changes nothing).
    backward runs the kernel (K.kl_div_backward); differentiable_backward is the same formulas in Tensor
    ops (p, q, log p, log q recomputed in the graph), for create_graph.
    """

    @staticmethod
    def forward(ctx, student, teacher, kept, temperature=1.0, reduction="mean"):
        num_classes = student.shape[-1]
        student_rows = student.reshape(-1, num_classes)  # (N,V)
        teacher_rows = teacher.reshape(-1, num_classes)  # (N,V)
        kept_rows = kept.reshape(-1)  # (N,) bool
        loss, lse_s, lse_t = K.kl_div_forward(student_rows, teacher_rows, kept_rows, temperature)
        ctx.save_for_backward(student, teacher, kept_rows, lse_s, lse_t, loss)
        ctx.temperature, ctx.reduction = temperature, reduction
        ctx.num_kept = int(np.count_nonzero(kept_rows))
        return _reduce(loss, kept.shape, reduction, ctx.num_kept)

    @staticmethod
    def backward(ctx, g):
        student, teacher, kept_rows, lse_s, lse_t, loss = ctx.saved
        num_classes = student.shape[-1]
        gloss = _row_gradients(ctx, g, kept_rows.shape[0])  # (N,)
        gs, gt = K.kl_div_backward(
            student.reshape(-1, num_classes),
            teacher.reshape(-1, num_classes),
            lse_s,
            lse_t,
            loss,
            gloss,
            kept_rows,
            ctx.temperature,
            ctx.needs_input_grad[1],
        )
        return gs.reshape(student.shape), None if gt is None else gt.reshape(teacher.shape), None

    @staticmethod
    def differentiable_backward(ctx, g):
        # The same formulas with Tensor ops: p, q, log p, log q are graph nodes of s and t.
        student, teacher, kept_rows, *_ = ctx.saved_tensors
        num_rows, num_classes = kept_rows.shape[0], student.shape[-1]
        temperature = ctx.temperature
        scaled_s = student.reshape((num_rows, num_classes)) * (1.0 / temperature)
        scaled_t = teacher.reshape((num_rows, num_classes)) * (1.0 / temperature)
        probs_t = softmax(scaled_t, axis=-1)
        scale = (_row_gradients_tensor(ctx, g, kept_rows.data, student.dtype) * temperature).reshape((num_rows, 1))
        gs = scale * (softmax(scaled_s, axis=-1) - probs_t)
        gt = None
        if ctx.needs_input_grad[1]:
            log_ratio = log_softmax(scaled_t, axis=-1) - log_softmax(scaled_s, axis=-1)  # r = log q - log p
            kl = (probs_t * log_ratio).sum(axis=-1, keepdims=True)
            gt = (scale * probs_t * (log_ratio - kl)).reshape(teacher.shape)
        return gs.reshape(student.shape), gt, None


def _reduce(loss, lead_shape, reduction, num_kept):
    """Per-row losses (N,) -> the reduction: (lead) for "none", a scalar for "sum" and "mean"."""
    if reduction == "none":
        return loss.reshape(lead_shape)
    total = loss.sum()
    if reduction == "sum":
        return total
    if num_kept == 0:  # every row dropped: nan (0 / 0), as cross_entropy and PyTorch
        return np.array(np.nan, dtype=loss.dtype)
    return total / loss.dtype.type(num_kept)


def _row_gradients(ctx, g, num_rows):
    """dL/dloss_n for every row from the gradient of the reduced loss.   -> (N,)"""
    g = np.asarray(g)
    if ctx.reduction == "none":
        return g.reshape(num_rows)
    if ctx.reduction == "mean":
        g = g / g.dtype.type(max(ctx.num_kept, 1))  # the kernels zero the dropped rows; no 0 / 0
    return np.full(num_rows, g, dtype=g.dtype)


def _row_gradients_tensor(ctx, g, kept_rows, dtype):
    """_row_gradients as a Tensor of g, 0 on the dropped rows.   -> (N,)"""
    weight = kept_rows.astype(dtype)  # (N,) 1 on kept rows
    if ctx.reduction == "none":
        return g.reshape((kept_rows.shape[0],)) * weight
    if ctx.reduction == "mean":
        weight = weight / max(ctx.num_kept, 1)
    return g * weight


# ------------------------------------------------------------------------------ the functions


def soft_cross_entropy(
    logits: TensorLike,
    target_probs: TensorLike,
    temperature: float = 1.0,
    mask: Any = None,
    target: Any = None,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> TensorResult:
    """Cross-entropy of ``logits`` (..., V) softened by ``temperature`` against ``target_probs`` (..., V).

    loss = -sum_j target_probs[..., j] * log_softmax(logits / temperature)[..., j] per row; its gradient is
    (softmax(logits / T) - target_probs) / T (no T^2 factor: see kl_div for Hinton's scaled loss). With
    T = 1 and one-hot targets this is ``cross_entropy``. ``target_probs`` is a constant: each row must be
    >= 0 and sum to 1 (within 1e-4), and a Tensor that requires grad is refused (to train both sides,
    use ``kl_div`` on the teacher's logits). A float dtype other than the logits' is cast to it.

    Rows to drop (padding): ``mask``, a boolean array of shape ``logits.shape[:-1]``, True = the row counts;
    and/or ``target``, integer class indices of that shape (as given to ``cross_entropy``), dropping the rows
    where it equals ``ignore_index``. Dropped rows are not checked, have loss 0 and gradient 0.
    ``reduction``: "mean" (over the kept rows; nan if none is kept), "sum", or "none" (``logits.shape[:-1]``).

    Errors: a shape mismatch, a negative or non-finite entry or a row not summing to 1 (among the kept rows),
    temperature <= 0, a mask of the wrong shape: ValueError naming the argument; logits or target_probs not
    float32/float64, a non-boolean mask or a non-integer target: TypeError (as every fused op).
    """
    who = "soft_cross_entropy"
    logits_data = as_float_array(who, logits.data if isinstance(logits, TensorBase) else logits, "logits")
    if isinstance(target_probs, TensorBase):
        if target_probs.requires_grad:
            raise ValueError(
                f"{who}: target_probs requires grad, but soft_cross_entropy treats it as a constant (a distribution "
                "checked on every call); pass target_probs.detach(), or use kl_div(student, teacher) on logits to "
                "differentiate both"
            )
        target_probs = target_probs.data
    probs = as_float_array(who, target_probs, "target_probs")
    _check_logits_shape(who, logits_data, "logits")
    if probs.shape != logits_data.shape:
        raise ValueError(
            f"{who}: target_probs shape {probs.shape} does not match logits shape {logits_data.shape} "
            "(one distribution over the last axis per row of logits)"
        )
    probs = probs.astype(logits_data.dtype, copy=False)
    temperature = check_number(temperature, "temperature", who, 0.0, None, low_open=True)
    reduction = _check_reduction(who, reduction)
    kept = _kept_rows(who, logits_data.shape[:-1], mask, target, ignore_index)
    _check_distributions(who, probs, kept)
    if not isinstance(logits, TensorBase):
        logits = logits_data
    return SoftCrossEntropy.apply(logits, probs, kept, temperature=temperature, reduction=reduction)


def kl_div(
    student_logits: TensorLike,
    teacher_logits: TensorLike,
    temperature: float = 1.0,
    mask: Any = None,
    target: Any = None,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> TensorResult:
    """T^2 KL(teacher || student) on the temperature-softened distributions over the last axis (Hinton et al. 2015).

    Per row: T^2 * sum_j q_j (log q_j - log p_j), q = softmax(teacher_logits / T), p = softmax(student_logits / T).
    The T^2 factor keeps the gradient's size independent of T: d/ds = T (p - q), d/dt = T q (log q - log p - KL).
    Both sides are differentiable: a teacher Tensor that requires grad receives its gradient (mutual learning);
    a teacher computed under ``ng.no_grad()`` or passed as an array is a constant. A teacher of another float
    dtype is cast to the student's.

    "mean" over 2-D (N, V) logits with every row kept equals PyTorch's
    ``F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T**2``; over more axes
    it averages over all kept rows (PyTorch's "batchmean" divides by the first axis only). "none" gives one
    loss per row (shape ``student_logits.shape[:-1]``), not PyTorch's per element.

    Rows to drop (padding): ``mask`` (boolean, shape ``student_logits.shape[:-1]``, True = the row counts)
    and/or a companion integer ``target`` equal to ``ignore_index``; "mean" averages over the kept rows
    (nan if none is kept). Errors: a shape mismatch, temperature <= 0, a mask of the wrong shape: ValueError
    naming the argument; non-float logits, a non-boolean mask or a non-integer target: TypeError.
    """
    who = "kl_div"
    student_data = as_float_array(
        who, student_logits.data if isinstance(student_logits, TensorBase) else student_logits, "student_logits"
    )
    teacher_data = as_float_array(
        who, teacher_logits.data if isinstance(teacher_logits, TensorBase) else teacher_logits, "teacher_logits"
    )
    _check_logits_shape(who, student_data, "student_logits")
    if teacher_data.shape != student_data.shape:
        raise ValueError(
            f"{who}: teacher_logits shape {teacher_data.shape} does not match student_logits shape "
            f"{student_data.shape} (the same rows and classes)"
        )
    temperature = check_number(temperature, "temperature", who, 0.0, None, low_open=True)
    reduction = _check_reduction(who, reduction)
    kept = _kept_rows(who, student_data.shape[:-1], mask, target, ignore_index)
    if not isinstance(student_logits, TensorBase):
        student_logits = student_data
    if teacher_data.dtype != student_data.dtype:
        if isinstance(teacher_logits, TensorBase) and teacher_logits.requires_grad:
            teacher_logits = teacher_logits.astype(student_data.dtype)  # type: ignore[attr-defined]  # in the graph
        else:
            teacher_logits = teacher_data.astype(student_data.dtype)
    elif not isinstance(teacher_logits, TensorBase):
        teacher_logits = teacher_data
    return KLDiv.apply(student_logits, teacher_logits, kept, temperature=temperature, reduction=reduction)


def _check_logits_shape(who, logits, name):
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{who}: {name} must have a non-empty last axis (the classes), got shape {logits.shape}")


def _check_reduction(who, reduction):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    return reduction


def _position(flat_index, shape):
    return tuple(int(i) for i in np.unravel_index(int(flat_index), shape)) if shape else ()


def _kept_rows(who, lead_shape, mask, target, ignore_index):
    """The rows that count, a bool array of ``lead_shape``: mask (True = counts) and target != ignore_index."""
    kept = np.ones(lead_shape, dtype=bool)
    if mask is not None:
        mask = np.asarray(mask.data if isinstance(mask, TensorBase) else mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"{who}: mask must be a boolean array (True = the row counts), got dtype {mask.dtype}")
        if mask.shape != lead_shape:
            raise ValueError(
                f"{who}: mask of shape {mask.shape} does not match the rows of the logits: expected shape "
                f"{lead_shape} (the logits without the class axis)"
            )
        kept &= mask
    if target is not None:
        ignore_index = check_int(ignore_index, "ignore_index", who)
        target = np.asarray(target.data if isinstance(target, TensorBase) else target)
        if target.dtype.kind not in "iu":
            raise TypeError(
                f"{who}: target must hold integer class indices (its rows equal to ignore_index are dropped), "
                f"got dtype {target.dtype}"
            )
        if target.shape != lead_shape:
            raise ValueError(
                f"{who}: target of shape {target.shape} does not match the rows of the logits: expected shape "
                f"{lead_shape} (the logits without the class axis)"
            )
        kept &= target != ignore_index
    return kept


def _check_distributions(who, probs, kept):
    """Every kept row of probs (..., V) is >= 0, finite and sums to 1 within SUM_TOLERANCE, or a ValueError."""
    negative = (probs < 0).any(axis=-1) & kept
    if negative.any():
        row = _position(np.argmax(negative), kept.shape)
        raise ValueError(
            f"{who}: target_probs must be a probability distribution over the last axis, but the row at position "
            f"{row} has a negative entry {float(probs[row].min())!r}"
        )
    sums = probs.sum(axis=-1, dtype=np.float64)
    bad = ~(np.abs(sums - 1.0) <= SUM_TOLERANCE) & kept  # NaN and inf fail too
    if bad.any():
        row = _position(np.argmax(bad), kept.shape)
        raise ValueError(
            f"{who}: target_probs must be a probability distribution over the last axis, but the row at position "
            f"{row} sums to {float(sums[row])!r} (must be 1 within {SUM_TOLERANCE:g})"
        )
