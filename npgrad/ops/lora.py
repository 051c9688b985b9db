"""LoRA primitive: a Linear layer plus a low-rank update (Hu et al. 2021), forward and backward in one node.

    y = x W + b + s (m * x) A B          x (..., in), W (in, out), b (out,) or None,
                                         A (in, r), B (r, out), s = alpha / r, m the dropout mask or 1

Why a fused primitive rather than ``F.linear(x, W, b) + (dropout(x) @ A @ B) * s``: composed, the rank-r update
costs more than its arithmetic, because it makes (N, out) temporaries (x A B, its scaled copy, the sum; in the
backward the add's and the scale's gradients) and passes over the output and its gradient several times. Here the
update rides on the base GEMM: the forward is one product [x | s h] (N, in + r) @ [W ; B] (in + r, out), the
backward one product g [W ; B]^T (N, in + r) that yields g W^T and g B^T in a single pass over g (and, when W
trains, one [x | s h]^T g for dW and dB); the scale is applied to the (N, r) intermediates; a frozen W's gradient
(an (in, N)(N, out) GEMM as costly as the forward) is skipped.

Measured on x (4096, 256) float32 (requires grad), W (256, 1024) and b frozen, r = 8, one OpenBLAS thread on an
AMD EPYC VM (load 0.7), forward + backward, median of 30 (a one-off timing of the four functions below with
time.perf_counter, not a tracked benchmark):

    the base Linear alone (W frozen)              45.8 ms   1.00
    fused (this primitive)                        53.4 ms   1.17
    composed from F.linear, @ and *               60.6 ms   1.32
    F.linear(x, W + s A B, b) (effective weight)  68.9 ms   1.50   (it pays for the (in, out) weight gradient)

so the fused primitive is what ``nn.LoRALinear`` calls; its first version (a separate x A B GEMM added into the
output in place) was no faster than the composed graph (61 ms): the concatenated GEMMs are where the gain is.
The price is memory: the forward keeps [x | s h] (N, in + r), a copy of the input, for the backward.
"""

from __future__ import annotations

import numpy as np

from ..function import Function, TensorLike, TensorResult


class LoRALinear(Function):
    r"""y = x W + b + s (m * x) A B,  with x2 = x as rows (N, in), g2 = dL/dy as rows (N, out), x_d = m * x2,
    h = x_d A (N, r) and t = s g2 B^T (N, r):

    dL/dx = g2 W^T + m * (t A^T)        (N, in), reshaped to x's shape
    dL/dW = x2^T g2                     (in, out)   (skipped for a frozen W)
    dL/db = \sum_rows g2                (out,)
    dL/dA = x_d^T t                     (in, r)
    dL/dB = s h^T g2                    (r, out)

    Computed as [x2 | s h] [W ; B] forward and g2 [W ; B]^T = [g2 W^T | g2 B^T] backward (module docstring).
    ``mask`` is the dropout mask already scaled by 1/(1-p) (inverted dropout), of x's shape, or None
    (no dropout: m = 1). It is a constant: no gradient flows to it. ``scale`` is the Python float s.
    """

    @staticmethod
    def forward(ctx, x, w, b, a, bm, scale=1.0, mask=None):
        in_features, out_features = w.shape
        rank = a.shape[1]
        if a.shape != (in_features, rank) or bm.shape != (rank, out_features):
            raise ValueError(
                f"lora_linear: A {a.shape} and B {bm.shape} do not fit weight {w.shape}: "
                f"A must be (in, r) = ({in_features}, r) and B (r, out) = (r, {out_features})"
            )
        if np.ndim(x) < 1 or np.shape(x)[-1] != in_features:
            raise ValueError(
                f"lora_linear: input of shape {np.shape(x)} does not fit weight of shape {w.shape}: "
                f"the input's last axis must equal the weight's first axis ({in_features})"
            )
        x2 = x.reshape(-1, in_features)  # (N, in)
        xd = None if mask is None else x2 * mask.reshape(-1, in_features)
        dtype = np.result_type(x2, w, a, bm)
        # One GEMM for base and update: [x2 | s h] (N, in + r) @ [W ; B] (in + r, out), h = x_d A.
        xe = np.empty((x2.shape[0], in_features + rank), dtype=dtype)
        xe[:, :in_features] = x2
        np.multiply(x2 @ a if xd is None else xd @ a, scale, out=xe[:, in_features:])
        we = np.concatenate([w, bm]).astype(dtype, copy=False)  # (in + r, out)
        y2 = xe @ we
        if b is not None:
            y2 += b
        ctx.save_for_backward(x, w, bm, a, we, xe, xd, mask)  # w, bm: for differentiable_backward
        ctx.scale = scale
        return y2.reshape(x.shape[:-1] + (out_features,))

    @staticmethod
    def backward(ctx, g):
        x, _, _, a, we, xe, xd, mask = ctx.saved
        s = ctx.scale
        in_features = a.shape[0]
        out_features = we.shape[1]
        need_x, need_w, need_b, need_a, need_bm = ctx.needs_input_grad[:5]
        g2 = g.reshape(-1, out_features)  # (N, out)
        gx = ga = t = None
        if need_x:
            ge = g2 @ we.T  # (N, in + r) = [g2 W^T | g2 B^T]: one pass over g2 for both
            t = ge[:, in_features:] * s  # (N, r)
            gxd = t @ a.T  # (N, in)
            if mask is not None:
                gxd *= mask.reshape(-1, in_features)
            gx2 = ge[:, :in_features]
            gx2 += gxd
            gx = np.ascontiguousarray(gx2).reshape(x.shape)
        elif need_a:
            t = (g2 @ we[in_features:].T) * s
        if need_a:
            ga = (xe[:, :in_features] if xd is None else xd).T @ t  # (in, r)
        gw = gbm = None
        if need_w:  # dL/dW and dL/dB together: [x2 | s h]^T g2 (in + r, out)
            gwe = xe.T @ g2
            gw, gbm = gwe[:in_features], (gwe[in_features:] if need_bm else None)
        elif need_bm:
            gbm = xe[:, in_features:].T @ g2  # (s h)^T g2 (r, out)
        gb = g2.sum(axis=0) if need_b else None
        return gx, gw, gb, ga, gbm

    @staticmethod
    def differentiable_backward(ctx, g):
        # The same formulas on Tensors (create_graph=True); x, W, A, B are graph handles, the mask a constant.
        x, w, bm, a, _, _, _, mask = ctx.saved_tensors
        s = ctx.scale
        in_features, out_features = w.shape
        need_x, need_w, need_b, need_a, need_bm = ctx.needs_input_grad[:5]
        g2 = g.reshape(-1, out_features)
        x2 = x.reshape(-1, in_features)
        xd = x2 if mask is None else x2 * mask.reshape(-1, in_features)
        t = (g2 @ bm.T) * s
        gx = None
        if need_x:
            gxd = t @ a.T
            if mask is not None:
                gxd = gxd * mask.reshape(-1, in_features)
            gx = (g2 @ w.T + gxd).reshape(x.shape)
        gw = x2.T @ g2 if need_w else None
        gb = g2.sum(axis=0) if need_b else None
        ga = xd.T @ t if need_a else None
        gbm = ((xd @ a) * s).T @ g2 if need_bm else None
        return gx, gw, gb, ga, gbm


def lora_linear(
    x: TensorLike,
    w: TensorLike,
    b: TensorLike | None,
    a: TensorLike,
    bm: TensorLike,
    scale: float,
    mask: np.ndarray | None = None,
) -> TensorResult:
    """``x @ w + b + scale * ((mask * x) @ a) @ bm`` as one node (w (in, out), a (in, r), bm (r, out)).

    ``mask``: None, or the inverted-dropout mask (x's shape, entries 0 or 1/(1-p)) applied to the adapter's
    input only. ``nn.LoRALinear`` is the layer that calls it.
    """
    return LoRALinear.apply(x, w, b, a, bm, scale=float(scale), mask=mask)
