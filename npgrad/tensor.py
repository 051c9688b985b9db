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
from . import function as _function
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
        """Wrap an ndarray without checks: the output of ``ctx`` (or, with ctx None, a constant)."""
        t = cls.__new__(cls)
        t.data = data
        t.requires_grad = ctx is not None
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
                    p is not None and (id(p) in wanted or id(p) in leads_to_wanted) for p in node.parents):
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
    is_tensor = isinstance(g, Tensor)
    if not is_tensor:
        g = np.asarray(g)
    if tuple(g.shape) != tuple(shape):
        g = _unbroadcast(g, shape, fn, index)
    if dtype is not None and g.dtype != dtype:
        if is_tensor:
            from .ops.elementwise import astype

            g = astype(g, dtype)  # a differentiable cast: create_graph gradients stay connected
        else:
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


def tensor(data, requires_grad=False, dtype=None, name=None):
    """Make a Tensor. Keeps the array's dtype (float32 stays float32) unless ``dtype`` is given.

    ``name`` is optional; gradcheck's error messages use it.
    """
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, name=name)


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
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"ng.grad: input {i} is a {type(t).__name__}, not a Tensor")
        if not t.requires_grad:
            raise RuntimeError(f"ng.grad: input {i} (shape {t.shape}) does not require grad, so it has no gradient")
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"ng.grad: {len(grad_outputs)} grad_outputs for {len(outputs)} outputs")
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
            # A copy: gradients may share one buffer (a + b hands the same g to both) or be the caller's array.
            result[i] = np.array(r.data if isinstance(r, Tensor) else r, dtype=t.dtype, copy=True)
    return result[0] if single_input else tuple(result)


_function.Tensor = Tensor  # function.py wraps outputs in Tensors without importing this module
