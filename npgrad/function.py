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
returns the saved arrays as Tensors connected to the graph. A backward that uses only what
ndarrays and Tensors share (``+ - * / @``, comparisons, ``.reshape``, ``.transpose``,
``.swapaxes``, indexing, ``.sum``) is written once: ``differentiable_backward =
backward_on_tensors`` runs that same ``backward`` on Tensors. A separate ``differentiable_backward``
is left only where ``backward`` calls something Tensors do not have (a fused kernel, ``np.*``).

Layering: ``tensor.py -> ops/* -> function.py``. This module sits below the primitives and never
imports :mod:`npgrad.tensor`: it knows tensors through :class:`TensorBase`, the storage that
:class:`npgrad.tensor.Tensor` extends with its operators and methods. ``Tensor`` is registered with
:func:`set_tensor_class` when it is defined, and ``apply`` makes its outputs of that class (as
HIPS autograd's tracer makes an ``ArrayBox`` after ``ArrayBox.register``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Self, TypeAlias

import numpy as np

from . import _state

if TYPE_CHECKING:  # the type checker's view only: at run time nothing here imports tensor.py
    from .tensor import Tensor


class TensorBase:
    """What the graph machinery needs of a tensor: its array, whether a gradient flows to it, its node.

    ``data`` is the wrapped ndarray; ``grad_fn`` the :class:`Context` that produced it (None for a
    leaf or a constant). :class:`npgrad.tensor.Tensor` is the class users see; it adds the
    constructor, the operators and ``backward``. Test against this class (``isinstance(x,
    TensorBase)``) where a module below ``tensor.py`` needs to recognise a tensor.
    """

    __slots__ = ("data", "requires_grad", "grad", "grad_fn", "name", "__weakref__")
    data: np.ndarray
    requires_grad: bool
    grad: np.ndarray | None
    grad_fn: Context | None
    name: str | None

    @classmethod
    def _from_node(cls, data: np.ndarray, ctx: Context | None) -> Self:
        """Wrap an ndarray without checks: the output of ``ctx`` (or, with ctx None, a constant)."""
        t = cls.__new__(cls)
        t.data = data
        t.requires_grad = ctx is not None
        t.grad = None
        t.grad_fn = ctx
        t.name = None
        return t


# npgrad.tensor registers Tensor (set_tensor_class); typed Any so that what apply builds reads as a Tensor.
_tensor_class: Any = TensorBase

#: What an operation accepts as a tensor argument: a tensor, or an array or a number (a constant).
TensorLike: TypeAlias = TensorBase | np.ndarray | np.generic | float

#: What an operation returns: an instance of the registered class, ``npgrad.tensor.Tensor``. This module and
#: ``ops/`` sit below ``tensor.py`` and never import it at run time; the type checker alone reads the name
#: (the import under ``TYPE_CHECKING`` above, which tests/test_import_layers.py allows because it never runs).
TensorResult: TypeAlias = "Tensor"


def set_tensor_class(cls: type[TensorBase]) -> None:
    """Make :meth:`Function.apply` and :attr:`Context.saved_tensors` return instances of ``cls``.

    Called once, by :mod:`npgrad.tensor` right after it defines ``Tensor`` (a subclass of
    :class:`TensorBase`), so that this module needs no import of the class above it.
    """
    global _tensor_class
    if not (isinstance(cls, type) and issubclass(cls, TensorBase)):
        raise TypeError(f"set_tensor_class: expected a subclass of TensorBase, got {cls!r}")
    _tensor_class = cls


def constant(array: np.ndarray) -> TensorResult:
    """A tensor holding ``array`` (an ndarray) outside any graph: no gradient flows to it."""
    return _tensor_class._from_node(array, None)


class Context:
    """The graph node of one primitive application: what backward needs, and the edges.

    ``parents[i]`` is, for the i-th forward argument, the node its gradient flows to: the
    producing Context of a non-leaf tensor, the leaf Tensor itself, or None (no gradient).
    ``input_shapes``/``input_dtypes`` describe the forward arguments (``()``/None for non-arrays).
    Saved arrays, and any attribute a forward set (``ctx.mask = ...``), are freed after backward
    unless ``retain_graph=True``.
    """

    __slots__ = (
        "function",
        "parents",
        "needs_input_grad",
        "input_shapes",
        "input_dtypes",
        "saved",
        "_sources",
        "__dict__",
        "__weakref__",
    )
    _released = False  # set on the instance when backward frees the saved arrays
    function: type[Function]
    parents: tuple[Context | TensorBase | None, ...]  # set by Function.apply when it records the node
    needs_input_grad: tuple[bool, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    input_dtypes: tuple[np.dtype | None, ...]
    saved: tuple[Any, ...]
    _sources: tuple[tuple[int, ...], int] | None

    def __init__(self, function: type[Function]) -> None:
        self.function = function
        self.saved = ()
        self._sources = None

    def save_for_backward(self, *arrays: Any) -> None:
        """Keep arrays for backward. Freed after backward unless ``retain_graph=True``."""
        self.saved = arrays

    @property
    def saved_tensors(self) -> tuple[Any, ...]:
        """The saved arrays as Tensors connected to the graph (for ``differentiable_backward``).

        A saved array that is one of the forward inputs becomes that input's graph handle, the
        forward output becomes a handle on this node, any other array becomes a constant, and
        anything that is not an array (None, numbers) is returned as it is.
        """
        self._check_not_released()
        arg_ids, out_id = self._sources if self._sources is not None else ((), None)
        out: list[Any] = []
        for arr in self.saved:
            if not isinstance(arr, np.ndarray):
                out.append(arr)
                continue
            key = id(arr)  # saved arrays are alive since forward, so equal ids mean the same object
            if key == out_id:
                out.append(_tensor_class._from_node(arr, self))
            elif key in arg_ids:
                parent = self.parents[arg_ids.index(key)]
                if parent is None:
                    out.append(constant(arr))
                elif type(parent) is Context:
                    out.append(_tensor_class._from_node(arr, parent))
                else:
                    out.append(parent)  # a leaf: itself
            else:
                out.append(constant(arr))
        return tuple(out)

    def _check_not_released(self) -> None:
        if self._released:
            raise RuntimeError(
                f"backward through {self.function.__name__} a second time: its saved arrays were "
                "freed after the first backward. Pass retain_graph=True to the first backward "
                "if you need to differentiate the same graph twice."
            )

    def _release(self) -> None:
        """Free what backward needed (saved arrays and forward's attributes such as masks)."""
        self.saved = ()
        self._sources = None
        d = self.__dict__
        if d:
            d.clear()
        self._released = True


class _SavedAsTensors:
    """A Context seen by :func:`backward_on_tensors`: ``saved`` holds the saved arrays as graph Tensors."""

    __slots__ = ("_ctx", "saved")

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.saved = ctx.saved_tensors

    def __getattr__(self, name: str) -> Any:  # needs_input_grad, input_shapes, what forward set (ctx.axes), ...
        return getattr(self._ctx, name)


def backward_on_tensors(ctx: Context, grad: Any) -> Any:
    """A primitive's own ``backward`` run on Tensors: ``differentiable_backward = backward_on_tensors``.

    For a backward written only with operations that ndarrays and Tensors share. With
    ``create_graph=True``, ``grad`` is a Tensor and ``ctx.saved`` reads as :attr:`Context.saved_tensors`,
    so the very lines of ``backward`` record the graph of the gradient: one formula, written once.
    """
    return ctx.function.backward(_SavedAsTensors(ctx), grad)


class Function:
    """Base class of every primitive. Subclasses define static ``forward`` and ``backward``."""

    @staticmethod
    def forward(ctx: Context, *args: Any, **kwargs: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:  # pragma: no cover - abstract
        """One gradient per forward argument (a tuple when there are several; None where not differentiable).

        ``ctx`` is the :class:`Context` (or, under :func:`backward_on_tensors`, a view of it whose ``saved``
        holds Tensors); ``grad`` an ndarray (a Tensor under ``create_graph=True``).
        """
        raise NotImplementedError

    # Optional: the backward written with Tensor ops, used when create_graph=True
    # (``backward_on_tensors`` when ``backward`` itself works on Tensors).
    differentiable_backward: ClassVar[Callable[[Context, Any], Any] | None] = None

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> TensorResult:
        """Run forward on the arrays inside ``args``; record a graph node when a gradient is wanted.

        This is the per-operation overhead of the engine, so it is kept to plain loops: no
        generator expressions, no numpy calls other than the forward itself.
        """
        arrays: list[Any] = []
        record = False
        for a in args:
            if isinstance(a, TensorBase):
                arrays.append(a.data)
                if a.requires_grad:
                    record = True
            else:
                arrays.append(a)

        ctx = Context(cls)
        out = cls.forward(ctx, *arrays, **kwargs)
        if type(out) is not np.ndarray:
            out = _as_output_array(cls, out)
        if not (record and _state.grad_enabled):
            return _tensor_class._from_node(out, None)

        parents = tuple(
            [
                (a if a.grad_fn is None else a.grad_fn) if isinstance(a, TensorBase) and a.requires_grad else None
                for a in args
            ]
        )
        ctx.parents = parents
        ctx.needs_input_grad = tuple([p is not None for p in parents])
        ctx.input_shapes = tuple([getattr(x, "shape", ()) for x in arrays])
        ctx.input_dtypes = tuple([getattr(x, "dtype", None) for x in arrays])
        if ctx.saved and cls.differentiable_backward is not None:
            # Remember which saved arrays are inputs or the output (by identity), for saved_tensors.
            ctx._sources = (tuple(map(id, arrays)), id(out))
        return _tensor_class._from_node(out, ctx)


def _as_output_array(cls: type[Function], out: Any) -> np.ndarray:
    """forward's result as an ndarray (NumPy scalars are fine); a clear error for anything else."""
    if isinstance(out, (np.ndarray, np.generic, int, float, bool)):
        return np.asarray(out)
    what = "a Tensor" if isinstance(out, TensorBase) else f"a {type(out).__name__}"
    raise TypeError(
        f"{cls.__name__}.forward returned {what}: forward works on plain ndarrays and must return "
        "exactly one ndarray (unwrap Tensors with .data; one Function per output)."
    )
