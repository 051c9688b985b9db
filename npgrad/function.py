"""Function: one primitive = one forward and one hand-written backward, on plain ndarrays.

A primitive subclasses :class:`Function` and writes two static methods::

    class Sin(ng.Function):
        @staticmethod
        def forward(ctx, a):                 # plain ndarrays in, one ndarray out
            ctx.save_for_backward(a)
            return np.sin(a)

        @staticmethod
        def backward(ctx, grad):             # dL/dout -> one dL/dinput per forward input
            (a,) = ctx.saved
            return grad * np.cos(a)          # d sin(a)/da = cos(a)

    y = Sin.apply(x)                          # x a Tensor: records the graph edge

``apply`` unwraps Tensor arguments to their ndarrays, runs ``forward`` and, when gradients are
being recorded and some input needs one, attaches a :class:`Context` to the output: the node of
the graph. The engine in :mod:`npgrad.tensor` walks those nodes in reverse topological order.

Non-tensor arguments (axes, flags, python numbers) are passed through unchanged and get a
gradient of ``None``. ``backward`` may return gradients in the broadcast shape of an input;
the engine sums them back to the input's shape (and casts them to the input's dtype), so the
backward can be written exactly as the formula reads.

Second derivatives (``create_graph=True``): a primitive may also define
``differentiable_backward(ctx, grad)``, the same derivative written with Tensor operations so
that the backward pass itself is recorded. There ``grad`` is a Tensor and ``ctx.saved_tensors``
returns the saved arrays as Tensors connected to the graph.
"""
from __future__ import annotations

import numpy as np

from . import _state


class Context:
    """The graph node of one primitive application: what backward needs, and the edges.

    ``parents[i]`` is, for the i-th forward argument, the node its gradient flows to: the
    producing Context of a non-leaf tensor, the leaf Tensor itself, or None (no gradient).
    """

    __slots__ = (
        "function", "parents", "needs_input_grad", "input_shapes", "input_dtypes",
        "saved", "_saved_sources", "_output_data", "_released", "__dict__", "__weakref__",
    )

    def __init__(self, function):
        self.function = function
        self.saved = ()
        self._saved_sources = None
        self._released = False

    def save_for_backward(self, *arrays):
        """Keep arrays for backward. Freed after backward unless ``retain_graph=True``."""
        self.saved = arrays

    @property
    def saved_tensors(self):
        """The saved arrays as Tensors connected to the graph (for ``differentiable_backward``).

        A saved array that is one of the forward inputs becomes that input's graph handle, the
        forward output becomes a handle on this node, anything else becomes a constant.
        """
        from .tensor import Tensor

        self._check_not_released()
        out = []
        for arr, source in zip(self.saved, self._saved_sources or ((None, None),) * len(self.saved)):
            kind, index = source
            if kind == "input":
                parent = self.parents[index]
                if isinstance(parent, Tensor):
                    out.append(parent)  # a leaf: itself
                elif parent is None:
                    out.append(Tensor(arr))
                else:
                    out.append(Tensor._from_node(arr, parent))
            elif kind == "output":
                out.append(Tensor._from_node(arr, self))
            else:
                out.append(Tensor(arr) if isinstance(arr, np.ndarray) else arr)
        return tuple(out)

    def _check_not_released(self):
        if self._released:
            raise RuntimeError(
                f"backward through {self.function.__name__} a second time: its saved arrays were "
                "freed after the first backward. Pass retain_graph=True to the first backward "
                "if you need to differentiate the same graph twice."
            )


class Function:
    """Base class of every primitive. Subclasses define static ``forward`` and ``backward``."""

    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    # Optional: the backward written with Tensor ops, used when create_graph=True.
    differentiable_backward = None

    @classmethod
    def apply(cls, *args, **kwargs):
        from .tensor import Tensor

        arrays = []
        needs = []
        any_needs = False
        for a in args:
            if isinstance(a, Tensor):
                arrays.append(a.data)
                needs.append(a.requires_grad)
                any_needs = any_needs or a.requires_grad
            else:
                arrays.append(a)
                needs.append(False)

        record = any_needs and _state.grad_enabled
        ctx = Context(cls)
        out = cls.forward(ctx, *arrays, **kwargs)
        if not isinstance(out, np.ndarray):
            out = np.asarray(out)
        if not record:
            return Tensor(out)

        ctx.needs_input_grad = tuple(needs)
        ctx.parents = tuple(
            (a.grad_fn if a.grad_fn is not None else a) if n else None for a, n in zip(args, needs)
        )
        ctx.input_shapes = tuple(np.shape(a) for a in arrays)
        ctx.input_dtypes = tuple(getattr(a, "dtype", None) for a in arrays)
        if ctx.saved and (cls.differentiable_backward is not None):
            ctx._saved_sources = tuple(_source_of(s, arrays, out) for s in ctx.saved)
        return Tensor._from_node(out, ctx)


def _source_of(saved, arrays, out):
    if saved is out:
        return ("output", None)
    for i, a in enumerate(arrays):
        if saved is a:
            return ("input", i)
    return (None, None)
