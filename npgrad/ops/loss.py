"""Cross-entropy: log-softmax + negative log-likelihood fused, with label smoothing and ignore_index."""

from __future__ import annotations

from typing import Literal

import numpy as np

from .._checks import check_int, check_number
from ..function import Function, TensorBase, TensorLike, TensorResult
from ..kernels import K
from .softmax import as_float_array, softmax

REDUCTIONS = ("mean", "sum", "none")


class CrossEntropy(Function):
    r"""Cross-entropy of logits x (N, V) against integer targets t (N,), PyTorch's rules.

    Per row n (eps = label_smoothing, p = softmax(x_n), lse_n = log sum_j exp x_nj):
        loss_n = (1 - eps) (-log p_{t_n}) + eps mean_j(-log p_j)
               = lse_n - (1 - eps) x_{n,t_n} - (eps / V) sum_j x_nj,
    and loss_n = 0 where t_n == ignore_index. That is the cross-entropy against the smoothed
    target distribution q_n = (1 - eps) onehot(t_n) + eps / V (which sums to 1).
    Reductions: "none" -> loss (N,); "sum" -> sum_n loss_n; "mean" -> sum_n loss_n / M with
    M = number of non-ignored rows (M = 0 gives nan, as PyTorch: 0 / 0).

    Jacobian of one row: d lse_n / dx_nj = p_j, so
        d loss_n / dx_nj = p_j - (1 - eps) delta_{j, t_n} - eps / V = p_j - q_nj,
    and 0 for an ignored row. VJP with the upstream gradient gloss_n of loss_n:
        g_x[n, :] = gloss_n (p_n - q_n),
    where gloss_n = g (sum), g / M (mean) or g_n (none). Each row sums to 0 (p and q both sum to 1).
    The kernel never materialises q: it subtracts eps / V everywhere and 1 - eps at t_n.
    backward runs that kernel (K.cross_entropy_backward); differentiable_backward is the same
    formula in Tensor ops, with p recomputed in the graph, for create_graph.
    """

    @staticmethod
    def forward(ctx, logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
        num_classes = logits.shape[-1]
        logits_rows = logits.reshape(-1, num_classes)  # (N,V)
        target_rows = target.reshape(-1)  # (N,)
        loss, lse = K.cross_entropy_forward(logits_rows, target_rows, ignore_index, label_smoothing)
        num_kept = int(np.count_nonzero(target_rows != ignore_index))
        ctx.save_for_backward(logits, target_rows, lse)
        ctx.ignore_index, ctx.label_smoothing = ignore_index, label_smoothing
        ctx.reduction, ctx.num_kept = reduction, num_kept
        if reduction == "none":
            return loss.reshape(target.shape)
        total = loss.sum()
        if reduction == "sum":
            return total
        if num_kept == 0:  # every target ignored: PyTorch returns nan (0 / 0); no warning here
            return np.array(np.nan, dtype=loss.dtype)
        return total / loss.dtype.type(num_kept)

    @staticmethod
    def backward(ctx, g):
        logits, target_rows, lse = ctx.saved
        num_classes = logits.shape[-1]
        gloss = _row_gradients(ctx, g, target_rows.shape[0])  # (N,)
        glogits = K.cross_entropy_backward(
            logits.reshape(-1, num_classes), target_rows, lse, gloss, ctx.ignore_index, ctx.label_smoothing
        )
        return glogits.reshape(logits.shape), None

    @staticmethod
    def differentiable_backward(ctx, g):
        # The same formula with Tensor ops, so that the gradient can be differentiated again:
        # p = softmax(x) is recomputed as a graph node (lse is a constant, not connected to x).
        # The smoothed target q is a constant here; materialising it is fine off the hot path.
        logits, target_rows, _ = ctx.saved_tensors
        target_rows = target_rows.data
        num_rows, num_classes = target_rows.shape[0], logits.shape[-1]
        eps = ctx.label_smoothing
        kept = target_rows != ctx.ignore_index  # (N,) bool
        smoothed = np.full((num_rows, num_classes), eps / num_classes, dtype=logits.dtype)
        smoothed[np.flatnonzero(kept), target_rows[kept]] += 1.0 - eps
        probs = softmax(logits.reshape((num_rows, num_classes)), axis=-1)
        if ctx.reduction == "none":
            gloss = g.reshape((num_rows,)) * kept.astype(logits.dtype)
        else:
            weight = kept.astype(logits.dtype)  # (N,) 1 on counted rows
            if ctx.reduction == "mean":
                weight = weight / max(ctx.num_kept, 1)
            gloss = g * weight
        glogits = gloss.reshape((num_rows, 1)) * (probs - smoothed)
        return glogits.reshape(logits.shape), None


def _row_gradients(ctx, g, num_rows):
    """dL/dloss_n for every row from the gradient of the reduced loss.   -> (N,)"""
    g = np.asarray(g)
    if ctx.reduction == "none":
        return g.reshape(num_rows)
    if ctx.reduction == "mean":
        # With every row ignored the kernel zeroes every row anyway; avoid 0 / 0 here.
        g = g / g.dtype.type(max(ctx.num_kept, 1))
    return np.full(num_rows, g, dtype=g.dtype)


def cross_entropy(
    logits: TensorLike,
    target: TensorLike,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> TensorResult:
    """Cross-entropy between ``logits`` (..., V) and integer class ``target`` (...), as PyTorch.

    The class axis is the LAST axis of ``logits`` (PyTorch puts it second; for 2-D inputs they
    agree). ``target`` is an integer Tensor or ndarray of shape ``logits.shape[:-1]``; entries equal
    to ``ignore_index`` contribute 0 loss and 0 gradient. ``label_smoothing`` eps in [0, 1] mixes
    the one-hot target with the uniform distribution: (1 - eps) * nll + eps * mean_j(-log p_j).
    ``reduction``: "mean" (over the non-ignored positions; nan if every position is ignored,
    as in PyTorch), "sum", or "none" (shape ``target.shape``).

    Errors: a target out of [0, V) that is not ``ignore_index`` raises IndexError naming the first
    bad position, its value and V; mismatched shapes raise ValueError naming both; an ``ignore_index``
    that is not an integer, a ``label_smoothing`` outside [0, 1] or an unknown ``reduction`` is refused.
    """
    logits_data = logits.data if isinstance(logits, TensorBase) else logits
    logits_data = as_float_array("cross_entropy", logits_data, "logits")
    ignore_index = check_int(ignore_index, "ignore_index", "cross_entropy")
    target = _check_target(logits_data, target, ignore_index)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"cross_entropy: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}"
        )
    label_smoothing = check_number(label_smoothing, "label_smoothing", "cross_entropy", 0.0, 1.0, high_open=False)
    if not isinstance(logits, TensorBase):
        logits = logits_data
    return CrossEntropy.apply(
        logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction
    )


def _check_target(logits, target, ignore_index):
    """The target as an int64 ndarray of shape logits.shape[:-1], or a clear error."""
    if isinstance(target, TensorBase):
        target = target.data
    target = np.asarray(target)
    if logits.ndim == 0:
        raise ValueError("cross_entropy: logits must have at least one axis (the classes), got a scalar")
    if target.dtype.kind not in "iu":
        raise TypeError(
            f"cross_entropy: target must hold integer class indices, got dtype {target.dtype} "
            "(class probabilities as targets are not supported)"
        )
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: target shape {target.shape} does not match logits shape {logits.shape}: "
            f"expected target of shape {logits.shape[:-1]} (logits without the class axis, which is last)"
        )
    target = target.astype(np.int64, copy=False)
    num_classes = logits.shape[-1]
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), target.shape) if target.ndim else ()
        raise IndexError(
            f"cross_entropy: target {int(target[first])} at position {tuple(int(i) for i in first)} is out of "
            f"range for {num_classes} classes (valid: 0..{num_classes - 1}, or ignore_index={ignore_index})"
        )
    return target
