"""Tensor, the graph, and the reverse-mode engine.

A Tensor wraps one ``np.ndarray`` (``.data``). A tensor produced by a primitive carries
``grad_fn``, the :class:`~npgrad.function.Context` of that application: the graph is made of
those nodes, and each node points to its inputs' nodes (``ctx.parents``). Leaves are the
tensors the user created with ``requires_grad=True``; ``backward`` accumulates into their
``.grad``.

The engine (``_run_backward``) is iterative: a depth-first post-order walk gives a topological
order without Python recursion (a 10,000-op chain is fine), and each node's backward runs
once, after every consumer of its output has contributed its gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from . import _state
from ._checks import FLOAT_DTYPES
from .function import Context, TensorBase, TensorLike, set_tensor_class
from .ops import elementwise as _elementwise
from .ops import shape as _shape
from .ops.arithmetic import Add, Div, MatMul, Mul, Neg, Pow, Sub
from .ops.elementwise import Exp, Log, Relu, Sqrt, Tanh
from .ops.reduce import Max, Mean, Sum


class no_grad(contextlib.ContextDecorator):
    """Within this block (or decorated function) operations record no graph."""

    def __enter__(self) -> no_grad:
        self._prev = _state.grad_enabled
        _state.grad_enabled = False
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        _state.grad_enabled = self._prev
        return False


class enable_grad(contextlib.ContextDecorator):
    """Within this block operations record a graph again (e.g. inside ``no_grad``)."""

    def __enter__(self) -> enable_grad:
        self._prev = _state.grad_enabled
        _state.grad_enabled = True
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        _state.grad_enabled = self._prev
        return False


def is_grad_enabled() -> bool:
    """Whether operations record a graph now (False inside ``no_grad``)."""
    return _state.grad_enabled


# What a Tensor may hold: booleans, integers, floats, complex numbers (dtype kinds); never objects,
# strings, bytes, structured records or dates.
_DATA_KINDS = "biufc"
_KIND_NAMES = {
    "O": "Python objects",
    "U": "strings",
    "S": "bytes",
    "V": "raw or structured records",
    "M": "datetimes",
    "m": "timedeltas",
}


def _check_differentiable(dtype: np.dtype) -> None:
    """requires_grad=True is for float32 and float64 arrays only (what the kernels and the README support)."""
    if dtype in FLOAT_DTYPES:
        return
    if dtype.kind == "f":
        raise TypeError(
            f"requires_grad=True needs a float32 or float64 array, got dtype {dtype}: gradients are computed "
            "in float32 or float64 only. Convert with .astype(np.float32) (or float64) if you want a gradient."
        )
    raise TypeError(
        f"requires_grad=True needs a floating-point array (float32 or float64), got dtype {dtype}: "
        "integer and boolean tensors are data (indices, masks), not variables. "
        "Convert with .astype(np.float64) (or float32) if you want a gradient."
    )


# What the binary operators accept besides a Tensor: NumPy arrays and Python/NumPy scalars (constants).
Operand: TypeAlias = TensorLike
# A reduction's axes: None (all), an int (negative counts from the end), a tuple.
Axis: TypeAlias = int | tuple[int, ...] | None


class Tensor(TensorBase):
    """An ndarray with an optional gradient and a link to the primitive that produced it.

    Every operator and method below is a thin call of one primitive in :mod:`npgrad.ops`, where
    its forward, backward and derivative live; NumPy broadcasting applies, and the gradient is
    summed back to each input's shape.
    """

    __slots__ = ()
    # Make NumPy defer to our reflected operators: ``ndarray * Tensor`` -> ``Tensor.__rmul__``.
    __array_ufunc__ = None

    def __init__(
        self,
        data: TensorBase | npt.ArrayLike,
        requires_grad: bool = False,
        dtype: npt.DTypeLike | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(data, TensorBase):
            data = data.data
        arr = np.asarray(data, dtype=dtype)
        if arr.dtype.kind not in _DATA_KINDS:
            raise TypeError(
                f"a Tensor holds numbers or booleans, got dtype {arr.dtype} "
                f"({_KIND_NAMES.get(arr.dtype.kind, 'not numeric')}); convert the data to a numeric array first"
            )
        if requires_grad:
            _check_differentiable(arr.dtype)
        self.data = arr
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.grad_fn = None
        self.name = name

    # ------------------------------------------------------------------ basic properties
    shape = property(lambda self: self.data.shape, doc="The shape of ``data``.")
    dtype = property(lambda self: self.data.dtype, doc="The dtype of ``data`` (float32/float64 for variables).")
    ndim = property(lambda self: self.data.ndim, doc="The number of axes of ``data``.")
    size = property(lambda self: self.data.size, doc="The number of elements of ``data``.")
    is_leaf = property(
        lambda self: self.grad_fn is None,
        doc="True for a tensor the user made (or a constant); False for an op's output.",
    )

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self.data, prefix="tensor(", separator=", ", threshold=20)
        extra = ""
        if self.grad_fn is not None:
            extra = f", grad_fn={self.grad_fn.function.__name__}"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        return f"tensor({body}, dtype={self.dtype}{extra})"

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> Any:
        """The single element as a Python number (``ndarray.item``)."""
        return self.data.item()

    def tolist(self) -> Any:
        """The data as nested Python lists (``ndarray.tolist``)."""
        return self.data.tolist()

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag:
            _check_differentiable(self.data.dtype)
        self.requires_grad = bool(flag)
        return self

    def zero_grad(self) -> None:
        self.grad = None

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.data)

    def __int__(self) -> int:
        return int(self.data)

    # ------------------------------------------------------------------ arithmetic (ops/arithmetic.py)
    def __add__(self, other: Operand) -> Tensor:
        """self + other (Add)."""
        return Add.apply(self, other)

    def __radd__(self, other: Operand) -> Tensor:
        """other + self (Add)."""
        return Add.apply(other, self)

    def __sub__(self, other: Operand) -> Tensor:
        """self - other (Sub)."""
        return Sub.apply(self, other)

    def __rsub__(self, other: Operand) -> Tensor:
        """other - self (Sub)."""
        return Sub.apply(other, self)

    def __mul__(self, other: Operand) -> Tensor:
        """self * other (Mul)."""
        return Mul.apply(self, other)

    def __rmul__(self, other: Operand) -> Tensor:
        """other * self (Mul)."""
        return Mul.apply(other, self)

    def __truediv__(self, other: Operand) -> Tensor:
        """self / other (Div)."""
        return Div.apply(self, other)

    def __rtruediv__(self, other: Operand) -> Tensor:
        """other / self (Div)."""
        return Div.apply(other, self)

    def __pow__(self, exponent: Operand) -> Tensor:
        """self ** exponent (Pow); the exponent may be a constant or a Tensor."""
        return Pow.apply(self, exponent)

    def __rpow__(self, base: Operand) -> Tensor:
        """base ** self (Pow)."""
        return Pow.apply(base, self)

    def __neg__(self) -> Tensor:
        """-self (Neg)."""
        return Neg.apply(self)

    def __pos__(self) -> Tensor:
        """+self: self itself."""
        return self

    def __matmul__(self, other: Operand) -> Tensor:
        """self @ other (MatMul): batched over leading axes, 1-D operands promoted as NumPy does."""
        return MatMul.apply(self, other)

    def __rmatmul__(self, other: Operand) -> Tensor:
        """other @ self (MatMul)."""
        return MatMul.apply(other, self)

    # ------------------------------------------------------------------ comparisons: boolean data, no gradient
    def __lt__(self, other: Operand) -> Tensor:
        """self < other elementwise, as a boolean Tensor (data: no gradient, as in PyTorch)."""
        return Tensor(np.less(self.data, _data(other)))

    def __le__(self, other: Operand) -> Tensor:
        """self <= other elementwise, as a boolean Tensor (no gradient)."""
        return Tensor(np.less_equal(self.data, _data(other)))

    def __gt__(self, other: Operand) -> Tensor:
        """self > other elementwise, as a boolean Tensor (no gradient)."""
        return Tensor(np.greater(self.data, _data(other)))

    def __ge__(self, other: Operand) -> Tensor:
        """self >= other elementwise, as a boolean Tensor (no gradient)."""
        return Tensor(np.greater_equal(self.data, _data(other)))

    def eq(self, other: Operand) -> Tensor:
        """self == other elementwise, as a boolean Tensor (no gradient). ``==`` itself stays identity."""
        return Tensor(np.equal(self.data, _data(other)))

    # ------------------------------------------------------------------ reductions (ops/reduce.py)
    def sum(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        """Sum over ``axis`` (None: all axes; an int, negative int or tuple) (Sum)."""
        return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        """Mean over ``axis`` (Mean)."""
        return Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        """Maximum over ``axis``; tied maxima share the gradient equally (Max)."""
        return Max.apply(self, axis=axis, keepdims=keepdims)

    # ------------------------------------------------------------------ shape (ops/shape.py)
    def reshape(self, *shape: int | Sequence[int]) -> Tensor:
        """The same elements in a new shape: ``x.reshape(2, 3)``, ``x.reshape((2, 3))``; -1 infers one axis."""
        return _shape.reshape(self, *shape)

    def transpose(self, *axes: int | Sequence[int]) -> Tensor:
        """Axes permuted: ``x.transpose()`` reverses them, ``x.transpose(1, 0, 2)`` or ``x.transpose((1, 0, 2))``."""
        return _shape.transpose(self, *axes)

    def swapaxes(self, axis1: int, axis2: int) -> Tensor:
        """Axes ``axis1`` and ``axis2`` exchanged."""
        return _shape.swapaxes(self, axis1, axis2)

    def broadcast_to(self, shape: Sequence[int]) -> Tensor:
        """Broadcast to ``shape`` (NumPy rules); the gradient is summed back."""
        return _shape.broadcast_to(self, shape)

    @property
    def T(self) -> Tensor:
        """All axes reversed, as NumPy's ``.T``."""
        return _shape.transpose(self)

    def __getitem__(self, key: Any) -> Tensor:
        """``x[key]``: ints, slices, None, Ellipsis, integer arrays, boolean masks (Tensors allowed)."""
        return _shape.getitem(self, key)

    def masked_fill(self, mask: TensorLike, value: float) -> Tensor:
        """self with ``value`` where ``mask`` (boolean, broadcastable to self) is True; gradient 0 there."""
        return _shape.masked_fill(self, mask, value)

    # ------------------------------------------------------------------ elementwise (ops/elementwise.py)
    def exp(self) -> Tensor:
        """e ** self (Exp)."""
        return Exp.apply(self)

    def log(self) -> Tensor:
        """Natural logarithm (Log)."""
        return Log.apply(self)

    def tanh(self) -> Tensor:
        """Hyperbolic tangent (Tanh)."""
        return Tanh.apply(self)

    def sqrt(self) -> Tensor:
        """Square root (Sqrt)."""
        return Sqrt.apply(self)

    def relu(self) -> Tensor:
        """max(self, 0) (Relu)."""
        return Relu.apply(self)

    def astype(self, dtype: npt.DTypeLike) -> Tensor:
        """self as ``dtype``: differentiable between float dtypes; any other target gives plain data."""
        return _elementwise.astype(self, dtype)

    # ------------------------------------------------------------------ autograd
    def backward(self, grad: TensorLike | None = None, retain_graph: bool = False, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) * grad into every leaf's ``.grad``.

        ``grad`` defaults to 1 for a single-element tensor; any other output needs an explicit
        gradient of its own shape (the vector in the vector-Jacobian product).
        """
        if self.grad_fn is None and not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the computation "
                "had requires_grad=True (or it ran inside no_grad())."
            )
        grad = _root_grad(self, grad, create_graph)
        _run_backward([self], [grad], retain_graph=retain_graph or create_graph, create_graph=create_graph)


set_tensor_class(Tensor)  # Function.apply makes its outputs Tensors (function.py cannot import this module)


def _data(x):
    """The array inside a Tensor; anything else as it is."""
    return x.data if isinstance(x, TensorBase) else x


def _root_grad(t, grad, create_graph):
    if grad is None:
        if t.data.size != 1:
            raise RuntimeError(
                f"backward() without a gradient needs a single-element output, but this tensor has "
                f"shape {t.shape}. Reduce it first (e.g. y.sum().backward()) or pass the gradient "
                f"of the loss with respect to it: y.backward(g) with g of shape {t.shape}."
            )
        grad = np.ones_like(t.data)
    else:
        if isinstance(grad, Tensor):
            grad = grad if create_graph else grad.data
        else:
            grad = np.asarray(grad, dtype=t.dtype)
        if tuple(grad.shape) != tuple(t.shape):
            raise ValueError(f"backward(grad): grad has shape {tuple(grad.shape)} but the tensor has shape {t.shape}")
    if create_graph and not isinstance(grad, Tensor):
        grad = Tensor(grad)
    return grad


def _node_of(t):
    return t.grad_fn if t.grad_fn is not None else t


def _topological_order(roots):
    """Nodes reachable from ``roots``, every node after all of its parents (inputs)."""
    order, visited = [], set()
    stack = [(r, False) for r in roots]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if type(node) is Context:
            for p in node.parents:
                if p is not None and id(p) not in visited:
                    stack.append((p, False))
    return order


def _run_backward(outputs, grads, retain_graph=False, create_graph=False, inputs=None):
    """Reverse sweep. With ``inputs`` (ng.grad), return their gradients instead of touching .grad.

    Each node's backward runs once, with the sum of the gradients of all its consumers. With
    ``inputs``, only nodes on a path to one of them run (the rest of the graph is left intact).
    """
    roots = [_node_of(t) for t in outputs]
    pending = {}
    for node, g in zip(roots, grads):
        key = id(node)
        pending[key] = g if key not in pending else pending[key] + g
    order = _topological_order(roots)
    wanted = leads_to_wanted = None
    if inputs is not None:
        wanted = {id(_node_of(t)): None for t in inputs}
        leads_to_wanted = set()
        for node in order:  # parents come first, so one pass settles every node
            if type(node) is Context and any(
                p is not None and (id(p) in wanted or id(p) in leads_to_wanted) for p in node.parents
            ):
                leads_to_wanted.add(id(node))

    prev_enabled = _state.grad_enabled
    _state.grad_enabled = bool(create_graph)
    try:
        for node in reversed(order):
            key = id(node)
            g = pending.pop(key, None)
            if g is None:
                continue
            if type(node) is not Context:  # a leaf tensor
                if wanted is None:
                    _accumulate_leaf(node, g, create_graph)
                elif key in wanted:
                    wanted[key] = g
                continue
            if wanted is not None:
                if key in wanted:
                    wanted[key] = g
                if key not in leads_to_wanted:
                    continue
            ctx = node
            if ctx._released:
                ctx._check_not_released()
            fn = ctx.function
            if create_graph:
                if fn.differentiable_backward is None:
                    raise NotImplementedError(
                        f"create_graph=True: {fn.__name__} has no differentiable_backward, so its "
                        "gradient cannot be differentiated again."
                    )
                in_grads = fn.differentiable_backward(ctx, g)
            else:
                in_grads = fn.backward(ctx, g)
            parents = ctx.parents
            if type(in_grads) is not tuple:
                in_grads = (in_grads,)
            if len(in_grads) != len(parents):
                raise RuntimeError(
                    f"{fn.__name__}.backward returned {len(in_grads)} gradient(s) but forward took "
                    f"{len(parents)} argument(s): return one per argument (None where not differentiable)."
                )
            shapes, dtypes = ctx.input_shapes, ctx.input_dtypes
            for i in range(len(parents)):
                parent, gi = parents[i], in_grads[i]
                if parent is None or gi is None:
                    continue
                # Fast path: the usual gradient already has the input's shape and dtype.
                if not (type(gi) is np.ndarray and gi.shape == shapes[i] and gi.dtype == dtypes[i]):
                    if not create_graph and isinstance(gi, Tensor):
                        gi = gi.data  # a backward that returned Tensors: only the values matter here
                    gi = _fit(gi, shapes[i], dtypes[i], fn, i)
                pkey = id(parent)
                prev = pending.get(pkey)
                pending[pkey] = gi if prev is None else prev + gi
            if not retain_graph:
                ctx._release()
    finally:
        _state.grad_enabled = prev_enabled
    if wanted is not None:
        return [wanted[id(_node_of(t))] for t in inputs]
    return None


def _accumulate_leaf(leaf, g, create_graph):
    if create_graph:
        # .grad becomes a Tensor whose graph can be differentiated again.
        leaf.grad = g if leaf.grad is None else leaf.grad + g
    elif leaf.grad is None:
        # A fresh C-ordered copy: never alias a gradient buffer, and keep the layout of the
        # parameter (a GEMM may hand back a transposed view; optimizers stream over .grad).
        leaf.grad = np.array(g, dtype=leaf.data.dtype, copy=True, order="C")
    elif isinstance(leaf.grad, Tensor):
        # A create_graph gradient from an earlier backward: continue with a fresh plain array
        # (never write into that Tensor's array, which the user may hold).
        leaf.grad = leaf.grad.data + g
    else:
        leaf.grad += g


def _fit(g, shape, dtype, fn, index):
    """Sum a broadcast gradient back to the input's shape, and keep the input's dtype."""
    if not isinstance(g, Tensor):
        g = np.asarray(g)
    if tuple(g.shape) != tuple(shape):
        g = _unbroadcast(g, shape, fn, index)
    if dtype is not None and g.dtype != dtype:
        g = g.astype(dtype)  # on a Tensor, a differentiable cast: create_graph gradients stay connected
    return g


def _unbroadcast(g, shape, fn, index):
    gshape = tuple(g.shape)
    shape = tuple(shape)
    lead = len(gshape) - len(shape)
    ok = lead >= 0 and all(s == 1 or s == gs for s, gs in zip(shape, gshape[lead:]))
    if not ok:
        raise RuntimeError(
            f"{fn.__name__}.backward returned a gradient of shape {gshape} for argument {index}, "
            f"whose shape is {shape}; the gradient must have the input's shape (or broadcast to it)."
        )
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and gshape[lead + i] != 1)
    if axes:  # the same calls on an ndarray and on a (create_graph) Tensor
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def tensor(
    data: TensorBase | npt.ArrayLike,
    requires_grad: bool = False,
    dtype: npt.DTypeLike | None = None,
    name: str | None = None,
) -> Tensor:
    """Make a Tensor. Keeps the array's dtype (float32 stays float32) unless ``dtype`` is given.

    ``name`` is optional; gradcheck's error messages use it.
    """
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, name=name)


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Tensor | np.ndarray | Sequence[TensorLike | None] | None = None,
    create_graph: bool = False,
    retain_graph: bool | None = None,
    allow_unused: bool = False,
) -> Any:
    """Gradients of ``outputs`` with respect to ``inputs``, returned (not accumulated into .grad).

    With ``create_graph=True`` the returned gradients are Tensors whose own graph can be
    differentiated again (second derivatives, Hessian-vector products). Returns one gradient (an ndarray,
    a Tensor with ``create_graph=True``, None for an unused input with ``allow_unused=True``) for a single
    input Tensor, a tuple of them for a sequence of inputs.
    """
    single_input = isinstance(inputs, Tensor)
    outs: list[Tensor] = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins: list[Any] = [inputs] if isinstance(inputs, Tensor) else list(inputs)  # checked to be Tensors below
    grad_outs: Sequence[TensorLike | None]
    if grad_outputs is None:
        grad_outs = [None] * len(outs)
    elif isinstance(grad_outputs, (Tensor, np.ndarray)):
        grad_outs = [grad_outputs]
    else:
        grad_outs = grad_outputs
    for i, t in enumerate(ins):
        if not isinstance(t, Tensor):
            raise TypeError(f"ng.grad: input {i} is a {type(t).__name__}, not a Tensor")
        if not t.requires_grad:
            raise RuntimeError(f"ng.grad: input {i} (shape {t.shape}) does not require grad, so it has no gradient")
    if len(grad_outs) != len(outs):
        raise ValueError(f"ng.grad: {len(grad_outs)} grad_outputs for {len(outs)} outputs")
    roots = [_root_grad(o, g, create_graph) for o, g in zip(outs, grad_outs)]
    if retain_graph is None:
        retain_graph = create_graph
    result = _run_backward(outs, roots, retain_graph=retain_graph, create_graph=create_graph, inputs=ins)
    for i, (t, r) in enumerate(zip(ins, result)):
        if r is None:
            if not allow_unused:
                raise RuntimeError(
                    f"ng.grad: input {i} (shape {t.shape}) was not used to compute the outputs; "
                    "pass allow_unused=True to get None for it."
                )
        elif not create_graph:
            # A copy: gradients may share one buffer (a + b hands the same g to both) or be the caller's array.
            result[i] = np.array(r.data if isinstance(r, Tensor) else r, dtype=t.dtype, copy=True)
    return result[0] if single_input else tuple(result)
