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

import numpy as np

from . import _state
from .function import Context


class no_grad(contextlib.ContextDecorator):
    """Within this block (or decorated function) operations record no graph."""

    def __enter__(self):
        self._prev = _state.grad_enabled
        _state.grad_enabled = False
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False


class enable_grad(contextlib.ContextDecorator):
    """Within this block operations record a graph again (e.g. inside ``no_grad``)."""

    def __enter__(self):
        self._prev = _state.grad_enabled
        _state.grad_enabled = True
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False


def is_grad_enabled():
    return _state.grad_enabled


_FLOAT_KINDS = ("f",)


class Tensor:
    """An ndarray with an optional gradient and a link to the primitive that produced it."""

    __slots__ = ("data", "requires_grad", "grad", "grad_fn", "name", "__weakref__")
    # Make NumPy defer to our reflected operators: ``ndarray * Tensor`` -> ``Tensor.__rmul__``.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False, dtype=None, name=None):
        if isinstance(data, Tensor):
            data = data.data
        arr = np.asarray(data, dtype=dtype)
        if requires_grad and arr.dtype.kind not in _FLOAT_KINDS:
            raise TypeError(
                f"requires_grad=True needs a floating-point array, got dtype {arr.dtype}: "
                "integer and boolean tensors are data (indices, masks), not variables. "
                "Convert with .astype(np.float64) (or float32) if you want a gradient."
            )
        self.data = arr
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.grad_fn = None
        self.name = name

    @classmethod
    def _from_node(cls, data, ctx):
        t = cls.__new__(cls)
        t.data = data
        t.requires_grad = True
        t.grad = None
        t.grad_fn = ctx
        t.name = None
        return t

    # ------------------------------------------------------------------ basic properties
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self.grad_fn is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(self.data, prefix="tensor(", separator=", ", threshold=20)
        extra = ""
        if self.grad_fn is not None:
            extra = f", grad_fn={self.grad_fn.function.__name__}"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        return f"tensor({body}, dtype={self.dtype}{extra})"

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def tolist(self):
        return self.data.tolist()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, flag=True):
        if flag and self.data.dtype.kind not in _FLOAT_KINDS:
            raise TypeError(f"requires_grad=True needs a floating-point array, got dtype {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def zero_grad(self):
        self.grad = None

    def __bool__(self):
        return bool(self.data)

    def __float__(self):
        return float(self.data)

    def __int__(self):
        return int(self.data)

    # ------------------------------------------------------------------ autograd
    def backward(self, grad=None, retain_graph=False, create_graph=False):
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

    # Operators and methods are attached in npgrad/ops/__init__.py (one place per primitive).


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
    """Reverse sweep. With ``inputs`` (ng.grad), return their gradients instead of touching .grad."""
    roots = [_node_of(t) for t in outputs]
    pending = {}
    for node, g in zip(roots, grads):
        key = id(node)
        pending[key] = g if key not in pending else pending[key] + g
    wanted = None
    if inputs is not None:
        wanted = {id(_node_of(t)): None for t in inputs}

    prev_enabled = _state.grad_enabled
    _state.grad_enabled = bool(create_graph)
    try:
        for node in reversed(_topological_order(roots)):
            key = id(node)
            g = pending.pop(key, None)
            if g is None:
                continue
            if wanted is not None and key in wanted:
                wanted[key] = g
                if type(node) is not Context:
                    continue
            if type(node) is not Context:  # a leaf tensor
                if wanted is None:
                    _accumulate_leaf(node, g, create_graph)
                continue
            ctx = node
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
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            if len(in_grads) != len(ctx.parents):
                raise RuntimeError(
                    f"{fn.__name__}.backward returned {len(in_grads)} gradient(s) but forward took "
                    f"{len(ctx.parents)} argument(s): return one per argument (None where not differentiable)."
                )
            for i, (parent, gi) in enumerate(zip(ctx.parents, in_grads)):
                if parent is None or gi is None:
                    continue
                gi = _fit(gi, ctx.input_shapes[i], ctx.input_dtypes[i], fn, i)
                pkey = id(parent)
                prev = pending.get(pkey)
                pending[pkey] = gi if prev is None else prev + gi
            if not retain_graph:
                ctx.saved = ()
                ctx._released = True
    finally:
        _state.grad_enabled = prev_enabled
    if wanted is not None:
        return [wanted[id(_node_of(t))] for t in inputs]
    return None


def _accumulate_leaf(leaf, g, create_graph):
    if create_graph:
        leaf.grad = g if leaf.grad is None else leaf.grad + g
    elif leaf.grad is None:
        leaf.grad = np.array(g, dtype=leaf.data.dtype, copy=True)
    else:
        if isinstance(leaf.grad, Tensor):
            leaf.grad = leaf.grad.data
        leaf.grad += g


def _fit(g, shape, dtype, fn, index):
    """Sum a broadcast gradient back to the input's shape, and keep the input's dtype."""
    is_tensor = isinstance(g, Tensor)
    gshape = g.shape if is_tensor else np.shape(g)
    if tuple(gshape) != tuple(shape):
        g = _unbroadcast(g, shape, fn, index)
    if not is_tensor:
        g = np.asarray(g)
        if dtype is not None and g.dtype != dtype:
            g = g.astype(dtype)
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
    if isinstance(g, Tensor):
        if axes:
            g = g.sum(axis=axes, keepdims=True)
        return g.reshape(shape)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def tensor(data, requires_grad=False, dtype=None):
    """Make a Tensor. Keeps the array's dtype (float32 stays float32) unless ``dtype`` is given."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def grad(outputs, inputs, grad_outputs=None, create_graph=False, retain_graph=None, allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs``, returned (not accumulated into .grad).

    With ``create_graph=True`` the returned gradients are Tensors whose own graph can be
    differentiated again (second derivatives, Hessian-vector products).
    """
    single_input = isinstance(inputs, Tensor)
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if single_input else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, (Tensor, np.ndarray)):
        grad_outputs = [grad_outputs]
    for t in inputs:
        if not t.requires_grad:
            raise RuntimeError("ng.grad: an input does not require grad, so it has no gradient")
    roots = [_root_grad(o, g, create_graph) for o, g in zip(outputs, grad_outputs)]
    if retain_graph is None:
        retain_graph = create_graph
    result = _run_backward(outputs, roots, retain_graph=retain_graph, create_graph=create_graph, inputs=inputs)
    for i, (t, r) in enumerate(zip(inputs, result)):
        if r is None:
            if not allow_unused:
                raise RuntimeError(
                    f"ng.grad: input {i} (shape {t.shape}) was not used to compute the outputs; "
                    "pass allow_unused=True to get None for it."
                )
        elif not create_graph:
            result[i] = np.asarray(r.data if isinstance(r, Tensor) else r, dtype=t.dtype)
    return result[0] if single_input else tuple(result)
