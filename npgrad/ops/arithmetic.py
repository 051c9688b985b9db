"""Arithmetic primitives: + - * / ** neg and @, with NumPy broadcasting.

Every backward returns the gradient in the broadcast (output) shape; the engine sums it back
to each input's shape, which is the derivative of broadcasting (a copy along an axis has the
sum along that axis as its vector-Jacobian product).

Each backward but Pow's uses only operators that ndarrays and Tensors share, so it also serves
``create_graph=True`` (``differentiable_backward = backward_on_tensors``).
"""

import numpy as np

from ..function import Function, backward_on_tensors


def _binary(name, op, a, b):
    try:
        return op(a, b)
    except ValueError:
        raise ValueError(f"{name}: cannot broadcast shapes {np.shape(a)} and {np.shape(b)}") from None


class Add(Function):
    r"""out = a + b.   dL/da = g,  dL/db = g."""

    @staticmethod
    def forward(ctx, a, b):
        return _binary("add", np.add, a, b)

    @staticmethod
    def backward(ctx, g):
        return g, g

    differentiable_backward = backward_on_tensors


class Sub(Function):
    r"""out = a - b.   dL/da = g,  dL/db = -g."""

    @staticmethod
    def forward(ctx, a, b):
        return _binary("sub", np.subtract, a, b)

    @staticmethod
    def backward(ctx, g):
        return g, -g

    differentiable_backward = backward_on_tensors


class Mul(Function):
    r"""out = a * b.   dL/da = g b,  dL/db = g a."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _binary("mul", np.multiply, a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return (g * b if ctx.needs_input_grad[0] else None, g * a if ctx.needs_input_grad[1] else None)

    differentiable_backward = backward_on_tensors


class Div(Function):
    r"""out = a / b.   dL/da = g / b,  dL/db = -g a / b^2."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _binary("div", np.divide, a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        ga = g / b if ctx.needs_input_grad[0] else None
        gb = -g * a / (b * b) if ctx.needs_input_grad[1] else None
        return ga, gb

    differentiable_backward = backward_on_tensors


class Neg(Function):
    r"""out = -a.   dL/da = -g."""

    @staticmethod
    def forward(ctx, a):
        return np.negative(a)

    @staticmethod
    def backward(ctx, g):
        return -g

    differentiable_backward = backward_on_tensors


class Pow(Function):
    r"""out = a ** p.   dL/da = g p a^(p-1),  dL/dp = g a^p log(a)  (p may be a constant).

    Two backwards: on arrays dL/dp takes log(a) as 0 where a <= 0 (np.where, silenced warnings),
    which has no Tensor counterpart; the Tensor one (create_graph) uses a.log().
    """

    @staticmethod
    def forward(ctx, a, p):
        out = _binary("pow", np.power, a, p)
        ctx.save_for_backward(a, p, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, p, out = ctx.saved
        ga = g * p * np.power(a, p - 1) if ctx.needs_input_grad[0] else None
        gp = None
        if ctx.needs_input_grad[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                gp = g * out * np.where(a > 0, np.log(np.where(a > 0, a, 1)), 0)
        return ga, gp

    @staticmethod
    def differentiable_backward(ctx, g):
        a, p, out = ctx.saved_tensors
        ga = g * p * a ** (p - 1) if ctx.needs_input_grad[0] else None
        gp = g * out * a.log() if ctx.needs_input_grad[1] else None
        return ga, gp


class MatMul(Function):
    r"""out = a @ b (batched over leading axes, NumPy broadcasting; 1-D operands as NumPy promotes them).

    For 2-D a (n,k), b (k,m):   dL/da = g b^T  (n,m)(m,k),   dL/db = a^T g  (k,n)(n,m).
    Batched: the same per matrix; broadcast batch axes are summed by the engine.
    """

    @staticmethod
    def forward(ctx, a, b):
        a_nd, b_nd = np.ndim(a), np.ndim(b)
        if a_nd == 0 or b_nd == 0:
            raise ValueError(f"matmul: both operands need at least 1 axis, got shapes {np.shape(a)} and {np.shape(b)}")
        ka = a.shape[-1]
        kb = b.shape[-2] if b_nd > 1 else b.shape[0]
        if ka != kb:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} are not aligned: the last axis of a ({ka}) "
                f"must equal the {'second-to-last' if b_nd > 1 else 'only'} axis of b ({kb})"
            )
        ctx.save_for_backward(a, b)
        try:
            return np.matmul(a, b)
        except ValueError:
            raise ValueError(f"matmul: batch axes of shapes {a.shape} and {b.shape} do not broadcast") from None

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        a2, b2, g2 = _as_matrices(a, b, g)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = g2 @ b2.swapaxes(-1, -2)
            if a.ndim == 1:
                ga = ga[..., 0, :]
        if ctx.needs_input_grad[1]:
            gb = a2.swapaxes(-1, -2) @ g2
            if b.ndim == 1:
                gb = gb[..., 0]
        return ga, gb

    differentiable_backward = backward_on_tensors


def _as_matrices(a, b, g):
    """Promote 1-D operands (and the matching output gradient) to matrices, as matmul does (arrays or Tensors)."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = g
    if a.ndim == 1 and b.ndim == 1:
        g2 = g.reshape((1, 1))
    elif a.ndim == 1:
        g2 = g[..., None, :]
    elif b.ndim == 1:
        g2 = g[..., :, None]
    return a2, b2, g2
