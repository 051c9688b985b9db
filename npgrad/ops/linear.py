"""Linear layer primitive: x @ w + b as one GEMM over flattened rows.

x (..., in) is viewed as rows x2 (N, in), N = the product of the leading axes, so the forward
is one matrix product (N, in) @ (in, out) and the backward is two, never a batched matmul
with broadcast weight copies.
"""

from __future__ import annotations

import numpy as np

from ..function import Function, TensorLike, TensorResult


class Linear(Function):
    r"""y = x w + b,  x (..., in), w (in, out), b (out,) or None; with x2 = x as rows (N, in), g2 likewise (N, out):

    dL/dx = g w^T              (N, out)(out, in), reshaped to x's shape
    dL/dw = x2^T g2            (in, N)(N, out)
    dL/db = \sum_rows g2       (out,)

    backward reuses the saved row view x2 and picks the faster GEMM orientation for dL/dw;
    differentiable_backward rebuilds the rows from x in the graph (a saved view would be a
    constant there), so the two stay separate.
    """

    @staticmethod
    def forward(ctx, x, w, b=None):
        if np.ndim(w) != 2:
            raise ValueError(f"linear: weight must be 2-D (in, out), got shape {np.shape(w)}")
        if np.ndim(x) < 1 or np.shape(x)[-1] != w.shape[0]:
            raise ValueError(
                f"linear: input of shape {np.shape(x)} does not fit weight of shape {w.shape}: "
                f"the input's last axis must equal the weight's first axis ({w.shape[0]})"
            )
        if b is not None and np.shape(b) != (w.shape[1],):
            raise ValueError(
                f"linear: bias must have shape ({w.shape[1]},) to match weight {w.shape}, got {np.shape(b)}"
            )
        in_features, out_features = w.shape
        x2 = x.reshape(-1, in_features)  # (N, in): a view when x is contiguous
        y2 = x2 @ w  # (N, out): the one GEMM
        if b is not None:
            y2 += b  # in place: no temporary of y's size
        ctx.save_for_backward(x, w, x2)
        return y2.reshape(x.shape[:-1] + (out_features,))

    @staticmethod
    def backward(ctx, g):
        x, w, x2 = ctx.saved
        g2 = g.reshape(-1, w.shape[1])  # (N, out)
        gx = (g2 @ w.T).reshape(x.shape) if ctx.needs_input_grad[0] else None
        # The same numbers either way, but OpenBLAS is faster when the product's first (M) axis is the
        # longer of in/out: x2^T g2 (in, out) for in >= out, (g2^T x2)^T for in < out (docs/tuning.md).
        if not ctx.needs_input_grad[1]:
            gw = None
        elif w.shape[0] >= w.shape[1]:
            gw = x2.T @ g2  # (in, out)
        else:
            gw = (g2.T @ x2).T  # (in, out), a transposed view of (out, in)
        gb = g2.sum(axis=0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb

    @staticmethod
    def differentiable_backward(ctx, g):
        x, w, _ = ctx.saved_tensors
        in_features, out_features = w.shape
        g2 = g.reshape(-1, out_features)
        gx = (g2 @ w.T).reshape(x.shape) if ctx.needs_input_grad[0] else None
        gw = x.reshape(-1, in_features).T @ g2 if ctx.needs_input_grad[1] else None
        gb = g2.sum(axis=0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(x: TensorLike, w: TensorLike, b: TensorLike | None = None) -> TensorResult:
    """x @ w + b with w of shape (in, out), as one GEMM over the flattened leading axes of x."""
    return Linear.apply(x, w, b)
