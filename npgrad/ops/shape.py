"""Shape primitives: reshape, broadcast_to, transpose, swapaxes, indexing, concatenate, stack, where, masked_fill.

These move elements without changing their values, so each derivative is the inverse movement of
the gradient: reshape back, transpose by the inverse permutation, scatter back to the indexed
positions, split a concatenation. Each backward is written once, for arrays and Tensors alike
(``differentiable_backward = backward_on_tensors``): on Tensors its movements are these very
primitives, which makes them differentiable again. Where NumPy spells a movement differently
(``np.where``, the scatter), a small helper picks the array function or the primitive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._checks import check_axis
from ..function import Function, TensorBase, TensorLike, TensorResult, backward_on_tensors


def _data(x):
    return x.data if isinstance(x, TensorBase) else x


# ---------------------------------------------------------------------------------- reshape


def _shape_arg(op, shape):
    """Accept reshape((2, 3)), reshape(2, 3) and reshape([2, 3])."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    try:
        return tuple(int(n) for n in shape)
    except TypeError:
        raise TypeError(f"{op}: the shape must be ints or one tuple of ints, got {shape!r}") from None


class Reshape(Function):
    r"""out = x viewed with a new shape (same elements, same C order; -1 infers one axis).

    dL/dx = g reshaped to x's shape (reshaping is a permutation-free relabelling of elements).
    """

    @staticmethod
    def forward(ctx, x, shape=None):
        try:
            return np.reshape(x, shape)
        except ValueError:
            raise ValueError(
                f"reshape: cannot reshape an array of shape {np.shape(x)} ({np.size(x)} elements) into shape {shape}"
            ) from None

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.input_shapes[0])

    differentiable_backward = backward_on_tensors


def reshape(x: TensorLike, *shape: int | Sequence[int]) -> TensorResult:
    """x in a new shape: ``reshape(x, 2, 3)`` or ``reshape(x, (2, 3))``; -1 infers one axis (Reshape)."""
    return Reshape.apply(x, shape=_shape_arg("reshape", shape))


class BroadcastTo(Function):
    r"""out = x broadcast to ``shape`` (NumPy rules: prepend axes, stretch size-1 axes).

    dL/dx = g summed over the prepended and the stretched axes (the engine does that sum when a
    gradient comes back in a broadcast shape, so backward just returns g).
    """

    @staticmethod
    def forward(ctx, x, shape=None):
        try:
            return np.broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast shape {np.shape(x)} to {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, g):
        return g

    differentiable_backward = backward_on_tensors


def broadcast_to(x: TensorLike, shape: Sequence[int]) -> TensorResult:
    """x broadcast to ``shape`` (NumPy rules); the gradient is summed back (BroadcastTo)."""
    return BroadcastTo.apply(x, shape=tuple(shape))


# ---------------------------------------------------------------------------------- transpose


def _axes_arg(ndim, axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    if len(axes) == 0:
        return tuple(range(ndim))[::-1]
    out = tuple(check_axis("transpose", a, ndim, "each of axes") for a in axes)
    if len(out) != ndim or sorted(out) != list(range(ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation of the {ndim} axes of the input")
    return out


class Transpose(Function):
    r"""out = x with its axes permuted: out.shape[i] = x.shape[axes[i]].

    dL/dx = g transposed by the inverse permutation (argsort of axes).
    """

    @staticmethod
    def forward(ctx, x, axes=None):
        ctx.axes = axes
        return np.transpose(x, axes)

    @staticmethod
    def backward(ctx, g):
        inverse = tuple(sorted(range(len(ctx.axes)), key=ctx.axes.__getitem__))  # argsort of axes
        return g.transpose(inverse)

    differentiable_backward = backward_on_tensors


def transpose(x: TensorLike, *axes: int | Sequence[int]) -> TensorResult:
    """x with its axes permuted (all reversed when none are given) (Transpose)."""
    return Transpose.apply(x, axes=_axes_arg(np.ndim(_data(x)), axes))


class SwapAxes(Function):
    r"""out = x with axes a and b exchanged.   dL/dx = g with axes a and b exchanged back."""

    @staticmethod
    def forward(ctx, x, axis1=0, axis2=1):
        ndim = np.ndim(x)
        axis1, axis2 = check_axis("swapaxes", axis1, ndim, "axis1"), check_axis("swapaxes", axis2, ndim, "axis2")
        ctx.axis1, ctx.axis2 = axis1, axis2
        return np.swapaxes(x, axis1, axis2)

    @staticmethod
    def backward(ctx, g):
        return g.swapaxes(ctx.axis1, ctx.axis2)

    differentiable_backward = backward_on_tensors


def swapaxes(x: TensorLike, axis1: int, axis2: int) -> TensorResult:
    """x with axes ``axis1`` and ``axis2`` exchanged (SwapAxes)."""
    return SwapAxes.apply(x, axis1=axis1, axis2=axis2)


# ---------------------------------------------------------------------------------- indexing


def _normalize_key(key):
    """Unwrap Tensors in an index, turn lists into arrays; a tuple always comes back."""
    if not isinstance(key, tuple):
        key = (key,)
    out = []
    for k in key:
        k = _data(k)
        if isinstance(k, list):
            k = np.asarray(k)
        if isinstance(k, np.ndarray) and k.dtype.kind not in "biu":
            raise IndexError(f"index: arrays used as indices must be integer or boolean, got dtype {k.dtype}")
        out.append(k)
    return tuple(out)


def _is_basic(key):
    """Basic indexing (ints, slices, None, Ellipsis) selects each element at most once."""
    return all(
        k is None or k is Ellipsis or isinstance(k, (slice, int, np.integer)) and not isinstance(k, bool) for k in key
    )


def _selects_once(key):
    """True when no element of x can be selected twice: basic indexing or a single boolean mask."""
    if _is_basic(key):
        return True
    arrays = [k for k in key if isinstance(k, np.ndarray)]
    return (
        len(arrays) == 1
        and arrays[0].dtype == bool
        and all(k is Ellipsis or k is None or isinstance(k, slice) or isinstance(k, np.ndarray) for k in key)
    )


def _scatter(g, key, shape, dtype):
    """The adjoint of x[key]: a zero array of x's shape with g added at the indexed positions."""
    gx = np.zeros(shape, dtype=dtype)
    if _selects_once(key):
        gx[key] = g  # no position repeats: plain assignment
    else:
        np.add.at(gx, key, g)  # integer arrays may repeat a position: accumulate
    return gx


class Index(Function):
    r"""out = x[key]  (ints, slices, None/newaxis, Ellipsis, integer arrays, boolean masks).

    dL/dx = zeros_like(x) with g added at the selected positions: x[key] += g. A position
    selected k times (repeated integer indices) receives the sum of its k gradients.
    """

    @staticmethod
    def forward(ctx, x, key=None):
        ctx.key = key
        try:
            return x[key]
        except IndexError as e:
            raise IndexError(f"index: {e} (indexing an array of shape {np.shape(x)} with {_describe(key)})") from None

    @staticmethod
    def backward(ctx, g):
        if isinstance(g, TensorBase):  # create_graph: the scatter as a primitive
            return IndexScatter.apply(g, key=ctx.key, shape=ctx.input_shapes[0])
        return _scatter(g, ctx.key, ctx.input_shapes[0], ctx.input_dtypes[0])

    differentiable_backward = backward_on_tensors


class IndexScatter(Function):
    r"""out = zeros(shape) with g added at [key]: the adjoint of :class:`Index`.

    It is linear in g, so dL/dg = (dL/dout)[key]: indexing again.
    """

    @staticmethod
    def forward(ctx, g, key=None, shape=None):
        ctx.key = key
        return _scatter(g, key, shape, g.dtype)

    @staticmethod
    def backward(ctx, gout):
        return gout[ctx.key]

    differentiable_backward = backward_on_tensors


def _describe(key):
    parts = []
    for k in key:
        if isinstance(k, np.ndarray):
            parts.append(f"array(shape={k.shape}, dtype={k.dtype})")
        else:
            parts.append(repr(k))
    return "[" + ", ".join(parts) + "]"


def getitem(x: TensorLike, key: Any) -> TensorResult:
    """``x[key]`` (Index)."""
    return Index.apply(x, key=_normalize_key(key))


# ---------------------------------------------------------------------------------- concatenate / stack


def _check_tensors(op, tensors):
    if isinstance(tensors, (np.ndarray, TensorBase)):
        raise TypeError(f"{op}: expected a sequence of tensors, got a single {type(tensors).__name__}")
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{op}: needs at least one tensor")
    return tensors


class Concatenate(Function):
    r"""out = [x_0, x_1, ...] joined along ``axis``.

    dL/dx_k = the slice of g that x_k occupies along ``axis`` (g split at the cumulative sizes).
    """

    @staticmethod
    def forward(ctx, *xs, axis=0):
        axis = check_axis("concatenate", axis, np.ndim(xs[0]))
        try:
            out = np.concatenate(xs, axis=axis)
        except ValueError:  # AxisError is a ValueError too
            raise ValueError(
                f"concatenate: shapes {[np.shape(x) for x in xs]} cannot be joined along axis {axis}: "
                "all axes but that one must match"
            ) from None
        ctx.axis = axis
        ctx.bounds = np.cumsum([np.shape(x)[ctx.axis] for x in xs])[:-1]
        return out

    @staticmethod
    def backward(ctx, g):
        bounds = ctx.bounds.tolist()
        lead = (slice(None),) * ctx.axis
        return tuple(g[lead + (slice(a, b),)] for a, b in zip([0] + bounds, bounds + [g.shape[ctx.axis]]))

    differentiable_backward = backward_on_tensors


def concatenate(tensors: Sequence[TensorLike], axis: int = 0) -> TensorResult:
    """The tensors joined along an existing ``axis`` (Concatenate)."""
    return Concatenate.apply(*_check_tensors("concatenate", tensors), axis=axis)


class Stack(Function):
    r"""out = [x_0, x_1, ...] stacked along a new axis ``axis`` (all x_k of one shape).

    dL/dx_k = g taken at index k of the new axis.
    """

    @staticmethod
    def forward(ctx, *xs, axis=0):
        shapes = {np.shape(x) for x in xs}
        if len(shapes) > 1:
            raise ValueError(f"stack: all tensors must have the same shape, got {[np.shape(x) for x in xs]}")
        axis = check_axis("stack", axis, np.ndim(xs[0]) + 1, of="the stacked output")
        out = np.stack(xs, axis=axis)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        lead = (slice(None),) * ctx.axis
        return tuple(g[lead + (k,)] for k in range(g.shape[ctx.axis]))

    differentiable_backward = backward_on_tensors


def stack(tensors: Sequence[TensorLike], axis: int = 0) -> TensorResult:
    """The tensors (all of one shape) joined along a new ``axis`` (Stack)."""
    return Stack.apply(*_check_tensors("stack", tensors), axis=axis)


# ---------------------------------------------------------------------------------- where / masked_fill


def _as_bool_mask(op, name, mask):
    mask = _data(mask)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"{op}: {name} must be a boolean array (True/False), got dtype {mask.dtype}")
    return mask


class Where(Function):
    r"""out = where(cond, a, b): a where cond is True, b elsewhere (NumPy broadcasting of all three).

    dL/da = g * cond,  dL/db = g * (1 - cond)  (in the broadcast shape; the engine sums them
    back to a's and b's shapes). cond is data: no gradient.
    """

    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.cond = cond
        try:
            return np.where(cond, a, b)
        except ValueError:
            raise ValueError(
                f"where: cannot broadcast cond {np.shape(cond)}, a {np.shape(a)} and b {np.shape(b)} together"
            ) from None

    @staticmethod
    def backward(ctx, g):
        cond = ctx.cond
        ga = select(cond, g, 0) if ctx.needs_input_grad[1] else None
        gb = select(cond, 0, g) if ctx.needs_input_grad[2] else None
        return None, ga, gb

    differentiable_backward = backward_on_tensors


def select(cond: np.ndarray, a: TensorLike, b: TensorLike) -> TensorResult | np.ndarray:
    """np.where(cond, a, b) on arrays; the Where primitive when a or b is a Tensor (cond: boolean data).

    For a backward that serves arrays and (create_graph) Tensors alike."""
    if isinstance(a, TensorBase) or isinstance(b, TensorBase):
        return Where.apply(cond, a, b)
    return np.where(cond, a, b)


def where(cond: TensorLike, a: TensorLike, b: TensorLike) -> TensorResult:
    """a where cond else b; cond a boolean array or Tensor, a/b Tensors or scalars."""
    return Where.apply(_as_bool_mask("where", "cond", cond), a, b)


class MaskedFill(Function):
    r"""out = x with ``value`` where mask is True (mask broadcastable to x's shape).

    dL/dx = g * (1 - mask): zero where filled (the output there does not depend on x).
    ``value`` is a constant (a Python number or a 0-d array/Tensor's value): it gets no gradient.
    """

    @staticmethod
    def forward(ctx, x, mask=None, value=0.0):
        x_shape, mask_shape = np.shape(x), np.shape(mask)
        try:
            ok = np.broadcast_shapes(mask_shape, x_shape) == x_shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"masked_fill: mask of shape {mask_shape} does not broadcast to the input's shape {x_shape}"
            )
        ctx.mask = mask
        fill = np.asarray(value, dtype=x.dtype) if x.dtype.kind == "f" else np.asarray(value)
        return np.where(mask, fill, x)

    @staticmethod
    def backward(ctx, g):
        return select(ctx.mask, 0, g)

    differentiable_backward = backward_on_tensors


def masked_fill(x: TensorLike, mask: TensorLike, value: TensorLike) -> TensorResult:
    """x with ``value`` where ``mask`` (boolean, broadcastable to x) is True; gradient 0 there."""
    mask = _as_bool_mask("masked_fill", "mask", mask)
    fill = _data(value)
    if np.ndim(fill) != 0:
        raise ValueError(f"masked_fill: value must be a scalar, got shape {np.shape(fill)}")
    return MaskedFill.apply(x, mask=mask, value=fill)
