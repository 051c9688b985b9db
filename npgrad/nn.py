"""Modules: parameters, containers, state dicts, and the layers a Transformer is made of.

PyTorch-shaped and small. A :class:`Module` registers the :class:`Parameter`\\ s, sub-modules and
buffers assigned to its attributes (in assignment order), so ``named_parameters()``,
``state_dict()`` and ``train()/eval()`` walk the tree without any declaration beyond ordinary
attribute assignment::

    class MLP(nn.Module):
        def __init__(self, rng):
            super().__init__()
            self.fc1 = nn.Linear(4, 16, rng=rng)    # registered as "fc1" (weight "fc1.weight", ...)
            self.fc2 = nn.Linear(16, 3, rng=rng)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

Seeding. Every initialiser takes ``rng``: an ``np.random.Generator``, an int seed, or None for the
module-level default generator (seeded with 0 at import, reseeded by :func:`manual_seed`). Building
a model twice from generators with the same seed (``np.random.default_rng(seed)``, or
``manual_seed(seed)`` before each build) gives bit-identical weights, and the draws do not depend on
the dtype (they are made in float64 and then cast), so a float32 and a float64 build of one seed
hold the same weights up to rounding.

Layout: ``Linear`` keeps its weight as ``(in_features, out_features)`` and computes ``x @ w + b``
(``F.linear``), the transpose of PyTorch's ``nn.Linear.weight``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from typing import Any, Literal, NamedTuple, Self, TypeAlias, overload

import numpy as np
import numpy.typing as npt

from . import functional as F
from ._checks import FLOAT_DTYPES
from .ops.elementwise import manual_seed as seed_dropout
from .function import TensorLike
from .tensor import Tensor

__all__ = [
    "Parameter",
    "Module",
    "Linear",
    "Embedding",
    "LayerNorm",
    "Dropout",
    "ReLU",
    "GELU",
    "ModuleList",
    "Sequential",
    "ModuleDict",
    "StateDictError",
    "IncompatibleKeys",
    "manual_seed",
    "default_generator",
]


# ---------------------------------------------------------------------------------- seeding
_default_generator = np.random.default_rng(0)

#: What an initialiser's ``rng`` accepts: a Generator (used as is), an int seed, or None (the default generator).
RngLike: TypeAlias = np.random.Generator | int | None


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the default generators: initialisers' (``rng=None``) and dropout's (``F.dropout``/attention
    dropout with ``rng=None``). Also ``ng.manual_seed``."""
    global _default_generator
    _default_generator = np.random.default_rng(seed)
    seed_dropout(seed)
    return _default_generator


def default_generator() -> np.random.Generator:
    """The module-level generator that initialisers use when given ``rng=None``."""
    return _default_generator


def _as_generator(rng: RngLike, who: str) -> np.random.Generator:
    """``rng`` as a Generator: a Generator is used as is (its stream is shared), an int seeds a
    new one, None means the module-level default generator."""
    if rng is None:
        return _default_generator
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"{who}: rng must be an np.random.Generator, an int seed or None, got {type(rng).__name__}")


def _check_float_dtype(dtype: npt.DTypeLike, who: str) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{who}: dtype must be np.float32 or np.float64, got {dt}")
    return dt


def _check_positive_int(value: int, name: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _loadable(src: np.dtype, dst: np.dtype) -> bool:
    """May an array of dtype ``src`` be loaded (cast) into one of dtype ``dst``? Any real number
    goes into a float array (float64 -> float32 included: checkpoints cross precisions); other
    targets (integer/boolean buffers) take only the same kind of data."""
    if dst.kind == "f":
        return src.kind in "fiu"
    return np.can_cast(src, dst, casting="same_kind")


# ---------------------------------------------------------------------------------- Parameter
class Parameter(Tensor):
    """A Tensor that a Module treats as one of its trainable weights (``requires_grad=True``).

    Only floating-point arrays (float32 or float64) can be parameters. The array is not copied.
    """

    __slots__ = ()

    def __init__(
        self, data: Tensor | npt.ArrayLike, requires_grad: bool = True, dtype: npt.DTypeLike | None = None
    ) -> None:
        if isinstance(data, Tensor):
            data = data.data
        arr = np.asarray(data, dtype=dtype)
        if arr.dtype.kind != "f":
            raise TypeError(
                f"Parameter needs a floating-point array, got dtype {arr.dtype}; "
                "integer and boolean data belong in a buffer (Module.register_buffer)."
            )
        if arr.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"Parameter needs a float32 or float64 array, got dtype {arr.dtype}; "
                "convert with .astype(np.float32) (or float64)"
            )
        super().__init__(arr, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


# ---------------------------------------------------------------------------------- errors
class StateDictError(ValueError):
    """A state dict that does not fit the module; the message lists every problem at once."""


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` skipped."""

    missing_keys: list
    unexpected_keys: list


# ---------------------------------------------------------------------------------- Module
class Module:
    """Base class of every layer and model.

    Assigning a :class:`Parameter` or a :class:`Module` to an attribute registers it; assigning
    ``None`` to a registered name keeps the slot (e.g. ``self.bias = None``); arrays that are not
    trained go through :meth:`register_buffer`. Subclasses call ``super().__init__()`` first and
    define ``forward``; calling the module calls ``forward``.
    """

    def __init__(self) -> None:
        # object.__setattr__: these must exist before our __setattr__ can register anything.
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -------------------------------------------------------------- attribute registration
    def _registries(self) -> tuple[OrderedDict[str, Any], OrderedDict[str, Any], OrderedDict[str, Any]]:
        try:
            d = self.__dict__
            return d["_parameters"], d["_buffers"], d["_modules"]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__}: assign parameters and sub-modules only after calling "
                "super().__init__() in __init__"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, (Parameter, Module)):
            params, buffers, modules = self._registries()
            for registry in (params, buffers, modules):
                registry.pop(name, None)
            self.__dict__.pop(name, None)
            self._non_persistent_buffers.discard(name)
            (params if isinstance(value, Parameter) else modules)[name] = value
            return
        d = self.__dict__
        if "_parameters" in d:
            params, buffers, modules = d["_parameters"], d["_buffers"], d["_modules"]
            if name in params:
                if value is not None:
                    raise TypeError(
                        f"{type(self).__name__}.{name} is a parameter: assign an nn.Parameter or None, "
                        f"not {type(value).__name__}"
                    )
                params[name] = None
                return
            if name in modules:
                if value is not None:
                    raise TypeError(
                        f"{type(self).__name__}.{name} is a sub-module: assign an nn.Module or None, "
                        f"not {type(value).__name__}"
                    )
                modules[name] = None
                return
            if name in buffers:
                if value is not None and not isinstance(value, np.ndarray):
                    raise TypeError(
                        f"{type(self).__name__}.{name} is a buffer: assign an np.ndarray or None, "
                        f"not {type(value).__name__}"
                    )
                buffers[name] = value
                return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when ordinary lookup fails: look in the registries.
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for registry in ("_parameters", "_buffers", "_modules"):
            if name in self.__dict__.get(registry, ()):
                del self.__dict__[registry][name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))

    def _check_new_name(self, name: str, what: str) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(
                f"{type(self).__name__}.register_{what}: name must be a non-empty string without '.', got {name!r}"
            )
        if name in self.__dict__ and name not in self._parameters and name not in self._buffers:
            raise KeyError(f"{type(self).__name__}.register_{what}: attribute '{name}' already exists")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (a Parameter, or None for an empty slot) under ``name``."""
        self._check_new_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"register_parameter('{name}'): expected an nn.Parameter or None, got {type(param).__name__}"
            )
        self._buffers.pop(name, None)
        self._modules.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name: str, array: np.ndarray | Tensor | None, persistent: bool = True) -> None:
        """Register a non-trainable array (e.g. a sinusoidal position table, a causal mask).

        Buffers follow the module through ``to_dtype`` (floating ones only) and, when
        ``persistent``, appear in ``state_dict``. ``array`` may be None (an empty slot). It is
        stored as given (not copied); a Tensor is unwrapped to its array.
        """
        self._check_new_name(name, "buffer")
        if isinstance(array, Tensor):
            array = array.data
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"register_buffer('{name}'): expected an np.ndarray or None, got {type(array).__name__}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = array
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register ``module`` under ``name`` (what attribute assignment does; for computed names)."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"add_module: name must be a non-empty string without '.', got {name!r}")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module('{name}'): expected an nn.Module or None, got {type(module).__name__}")
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)
        self._modules[name] = module

    # -------------------------------------------------------------- the call
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # -------------------------------------------------------------- traversal
    def named_modules(
        self, prefix: str = "", memo: set[int] | None = None, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """(dotted name, module) for this module and every descendant, depth first, each once."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            yield from child.named_modules(prefix + ("." if prefix else "") + name, memo, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, child in self.named_children():
            yield child

    def _named_members(
        self, registry: str, prefix: str, recurse: bool, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Any]]:
        seen = set()
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None:
                    continue
                if remove_duplicate:
                    if id(value) in seen:
                        continue
                    seen.add(id(value))
                yield module_prefix + ("." if module_prefix else "") + name, value

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter), in registration order. A parameter shared by several modules
        (tied embeddings) is yielded once, under the first name it is reached by."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, np.ndarray]]:
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn: Callable[[Module], object]) -> Self:
        """Call ``fn(module)`` on every descendant (children first) and then on self; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar weights, each shared parameter counted once."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # -------------------------------------------------------------- modes and gradients
    def train(self, mode: bool = True) -> Self:
        """Set training mode (dropout active) on this module and every descendant; returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode): mode must be a bool, got {type(mode).__name__}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Self:
        """Evaluation mode (dropout off): ``train(False)``."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``.grad = None``)."""
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag: bool = True) -> Self:
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def to_dtype(self, dtype: npt.DTypeLike) -> Self:
        """Convert every parameter and every floating-point buffer to ``dtype`` (float32 or
        float64), in place; integer and boolean buffers are left alone. Gradients are converted
        too. Returns self. Build the optimizer after converting (its moments keep their dtype)."""
        dt = _check_float_dtype(dtype, "to_dtype")
        for p in self.parameters():
            if p.data.dtype != dt:
                p.data = p.data.astype(dt)
                if p.grad is not None:
                    p.grad = np.asarray(getattr(p.grad, "data", p.grad)).astype(dt)
        for m in self.modules():
            for name, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f" and b.dtype != dt:
                    m._buffers[name] = b.astype(dt)
        return self

    # -------------------------------------------------------------- state dicts
    def _state_items(self, prefix: str = "") -> Iterator[tuple[str, Module, str, str]]:
        """(name, owner module, registry, local name) for every entry of the state dict.

        Unlike named_parameters, a shared parameter appears under every name it is reachable
        by (as in PyTorch), so a state dict loads into a model whichever alias it uses.
        """
        for module_prefix, module in self.named_modules(prefix=prefix):
            dot = "." if module_prefix else ""
            for name, p in module._parameters.items():
                if p is not None:
                    yield module_prefix + dot + name, module, "_parameters", name
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers:
                    yield module_prefix + dot + name, module, "_buffers", name

    def state_dict(self, prefix: str = "") -> OrderedDict[str, np.ndarray]:
        """Dotted name -> a copy of the array, for every parameter and persistent buffer.

        Parameters first, then buffers, module by module in registration order. The arrays are
        copies: later training does not change a state dict already taken.
        """
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for name, module, registry, local in self._state_items(prefix):
            value = getattr(module, registry)[local]
            out[name] = np.array(value.data if isinstance(value, Tensor) else value, copy=True)
        return out

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray | Tensor], strict: bool = True) -> IncompatibleKeys:
        """Copy the arrays of ``state_dict`` into this module's parameters and buffers.

        Values are cast to the dtype of the parameter/buffer they go into (a float64 checkpoint
        loads into a float32 model). Every problem is reported in one :class:`StateDictError`:
        missing keys, unexpected keys (both only when ``strict``) and mis-shaped keys (always).
        Nothing is modified unless the whole state dict fits. Returns the skipped keys.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict expects a mapping name -> array, got {type(state_dict).__name__}")
        expected = OrderedDict(
            (name, (module, registry, local)) for name, module, registry, local in self._state_items()
        )
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        mis_shaped, unreadable, plan = [], [], []
        for key, value in state_dict.items():
            if key not in expected:
                continue
            module, registry, local = expected[key]
            target = getattr(module, registry)[local]
            target_array = target.data if isinstance(target, Tensor) else target
            try:
                array = np.asarray(value.data if isinstance(value, Tensor) else value)
            except Exception as exc:  # noqa: BLE001 - reported in the user's terms below
                unreadable.append(f"{key!r}: {type(value).__name__} is not an array ({exc})")
                continue
            if not _loadable(array.dtype, target_array.dtype):
                unreadable.append(f"{key!r}: dtype {array.dtype} cannot be loaded into {target_array.dtype}")
                continue
            if array.shape != target_array.shape:
                mis_shaped.append((key, target_array.shape, array.shape))
                continue
            plan.append((key, target_array, array, module, registry, local))
        # A shared parameter is saved under each of its names: if the values disagree, which one
        # should win? Refuse rather than let the last alias silently override the first.
        first_by_target: dict[int, tuple] = {}
        conflicts = []
        for key, target_array, array, *_ in plan:
            first = first_by_target.setdefault(id(target_array), (key, array))
            if first[0] != key and not np.array_equal(first[1], array):
                conflicts.append(f"{first[0]!r} and {key!r} name one shared parameter but hold different values")
        problems = []
        if strict and missing:
            problems.append(f"missing keys (in the model, not in the state dict): {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys (in the state dict, not in the model): {unexpected}")
        if mis_shaped:
            problems.append(
                "mis-shaped keys:\n"
                + "\n".join(
                    f"    {k!r}: the model expects shape {tuple(exp)}, the state dict has {tuple(got)}"
                    for k, exp, got in mis_shaped
                )
            )
        if unreadable:
            problems.append("unreadable values:\n" + "\n".join(f"    {u}" for u in unreadable))
        if conflicts:
            problems.append("conflicting aliases:\n" + "\n".join(f"    {c}" for c in conflicts))
        if problems:
            raise StateDictError(
                f"load_state_dict into {type(self).__name__}: the state dict does not fit "
                "(nothing was loaded).\n  " + "\n  ".join(problems)
            )
        for _, target_array, array, module, registry, local in plan:
            if target_array.flags.writeable:
                # In place, cast to the target's dtype: whatever holds the array sees the new values.
                np.copyto(target_array, array, casting="unsafe")
            else:  # e.g. an array memory-mapped from a file: give the module its own copy
                fresh = np.array(array, dtype=target_array.dtype, copy=True)
                target = getattr(module, registry)[local]
                if isinstance(target, Tensor):
                    target.data = fresh
                else:
                    getattr(module, registry)[local] = fresh
        return IncompatibleKeys(missing, unexpected)

    # -------------------------------------------------------------- random generators
    def named_generators(self) -> Iterator[tuple[str, np.random.Generator]]:
        """(module name, np.random.Generator) for every descendant that owns an ``rng`` (Dropout)."""
        for name, m in self.named_modules():
            rng = m.__dict__.get("rng")
            if isinstance(rng, np.random.Generator):
                yield name, rng

    def rng_state_dict(self) -> dict[str, Mapping[str, Any]]:
        """Module name -> ``rng.bit_generator.state`` (a JSON-serialisable dict of ints and
        strings) for every generator in the tree: save it to resume dropout masks exactly."""
        return {name: rng.bit_generator.state for name, rng in self.named_generators()}

    def load_rng_state_dict(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore the generators saved by :meth:`rng_state_dict`; names must match exactly."""
        gens = dict(self.named_generators())
        missing = [k for k in gens if k not in states]
        unexpected = [k for k in states if k not in gens]
        if missing or unexpected:
            raise StateDictError(
                f"load_rng_state_dict into {type(self).__name__}: missing generators {missing}, "
                f"unexpected generators {unexpected}"
            )
        for name, rng in gens.items():
            rng.bit_generator.state = states[name]

    # -------------------------------------------------------------- printing
    def extra_repr(self) -> str:
        """The part inside the parentheses of this module's repr line (override in layers)."""
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        head = f"{type(self).__name__}({extra}" if extra else f"{type(self).__name__}("
        if extra:
            head += ","
        return head + "\n" + "\n".join(lines) + "\n)"


# ---------------------------------------------------------------------------------- layers
class Linear(Module):
    """``y = x @ weight + bias`` with ``weight`` of shape ``(in_features, out_features)``.

    Init (Glorot & Bengio 2010, "Xavier uniform", as the Transformer literature uses for
    projections): ``weight ~ U(-a, a)`` with ``a = sqrt(6 / (in_features + out_features))``, so
    the variance ``2 / (in + out)`` keeps activations and gradients at a steady scale; bias zero.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rng: RngLike = None,
        dtype: npt.DTypeLike = np.float32,
    ) -> None:
        super().__init__()
        self.in_features = _check_positive_int(in_features, "in_features", "Linear")
        self.out_features = _check_positive_int(out_features, "out_features", "Linear")
        dt = _check_float_dtype(dtype, "Linear")
        gen = _as_generator(rng, "Linear")
        bound = math.sqrt(6.0 / (self.in_features + self.out_features))
        self.weight = Parameter(gen.uniform(-bound, bound, size=(self.in_features, self.out_features)).astype(dt))
        if bias:
            self.bias = Parameter(np.zeros(self.out_features, dtype=dt))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: TensorLike) -> Tensor:
        # x (..., in) -> (..., out)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``dim``; ``forward(ids)`` looks rows up.

    Init: ``weight ~ N(0, std^2)`` with ``std = dim ** -0.5`` unless ``init_std`` is given. That is
    the Transformer convention (fairseq, tensor2tensor): the model multiplies embeddings by
    ``sqrt(dim)``, which brings them back to unit scale, the scale of the positional encodings
    they are added to. With tied input/output embeddings it also makes the initial logits of
    order 1. The ``padding_idx`` row starts at zero and gets no gradient, so it stays zero.
    """

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        padding_idx: int | None = None,
        rng: RngLike = None,
        dtype: npt.DTypeLike = np.float32,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = _check_positive_int(num_embeddings, "num_embeddings", "Embedding")
        self.dim = _check_positive_int(dim, "dim", "Embedding")
        dt = _check_float_dtype(dtype, "Embedding")
        if padding_idx is not None:
            if (
                isinstance(padding_idx, bool)
                or not isinstance(padding_idx, (int, np.integer))
                or not (-self.num_embeddings <= padding_idx < self.num_embeddings)
            ):
                raise ValueError(
                    f"Embedding: padding_idx must be an int in [-{self.num_embeddings}, {self.num_embeddings}), "
                    f"got {padding_idx!r}"
                )
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        std = self.dim**-0.5 if init_std is None else float(init_std)
        if not (std >= 0 and math.isfinite(std)):
            raise ValueError(f"Embedding: init_std must be a finite number >= 0, got {init_std!r}")
        self.init_std = std
        gen = _as_generator(rng, "Embedding")
        weight = gen.normal(0.0, std, size=(self.num_embeddings, self.dim)).astype(dt)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.weight = Parameter(weight)

    def forward(self, ids: Tensor | npt.ArrayLike) -> Tensor:
        # ids (...) integer -> (..., dim)
        out = F.embedding(ids, self.weight)
        if self.padding_idx is None:
            return out
        ids_array = ids.data if isinstance(ids, Tensor) else np.asarray(ids)
        is_pad = ids_array == self.padding_idx
        if not is_pad.any():
            return out
        # Zero the padding positions through the graph, so the padding row gets no gradient
        # (d out / d weight[pad] is multiplied by 0) and its output is exactly 0 whatever the row holds.
        keep = (~is_pad)[..., None].astype(self.weight.dtype)
        return out * keep

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.dim}{pad}"


class LayerNorm(Module):
    """Layer normalisation over the last axis (size ``dim``): ``F.layer_norm(x, weight, bias, eps)``.
    ``weight`` starts at ones and ``bias`` at zeros (the identity affine map)."""

    def __init__(self, dim: int, eps: float = 1e-5, dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__()
        self.dim = _check_positive_int(dim, "dim", "LayerNorm")
        if not (eps > 0):
            raise ValueError(f"LayerNorm: eps must be > 0, got {eps!r}")
        self.eps = float(eps)
        dt = _check_float_dtype(dtype, "LayerNorm")
        self.weight = Parameter(np.ones(self.dim, dtype=dt))
        self.bias = Parameter(np.zeros(self.dim, dtype=dt))

    def forward(self, x: TensorLike) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """Zero each element with probability ``p`` in training mode, scale the rest by ``1/(1-p)``.

    Each Dropout owns ``self.rng``, an ``np.random.Generator``: from ``rng`` (an int seed makes a
    new generator; a Generator is used as given, its stream shared), or, with ``rng=None``, a new
    generator seeded by one draw from the module-level default generator, so a model built after
    ``manual_seed(s)`` has the same dropout streams every time. For exact resume, save
    ``self.rng.bit_generator.state`` (``Module.rng_state_dict()`` collects them all) and restore it.
    In eval mode, or with ``p == 0``, it returns its input and draws nothing.
    """

    def __init__(self, p: float = 0.1, rng: RngLike = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not (0.0 <= p <= 1.0):
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        if rng is None:
            rng = np.random.default_rng(int(_default_generator.integers(2**63)))
        self.rng = _as_generator(rng, "Dropout")

    def forward(self, x: Tensor) -> Tensor:  # (an ndarray works too; in eval mode it comes back as is)
        if not self.training or self.p == 0.0:
            return x
        return F.dropout(x, self.p, training=True, rng=self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLU(Module):
    """``max(x, 0)`` as a module (for Sequential)."""

    def forward(self, x: TensorLike) -> Tensor:
        return F.relu(x)


class GELU(Module):
    """GELU as a module; ``approximate="none"`` (exact, erf) or ``"tanh"``."""

    def __init__(self, approximate: Literal["none", "tanh"] = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: TensorLike) -> Tensor:
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


# ---------------------------------------------------------------------------------- containers
class ModuleList(Module):
    """A list of modules, registered as "0", "1", ... (so their parameters are "0.weight", ...)."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, idx: int) -> str:
        n = len(self._modules)
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise TypeError(f"ModuleList indices must be integers or slices, not {type(idx).__name__}")
        if not -n <= idx < n:
            raise IndexError(f"ModuleList index {idx} out of range for length {n}")
        return str(int(idx) % n)

    @overload
    def __getitem__(self, idx: int) -> Module: ...
    @overload
    def __getitem__(self, idx: slice) -> Self: ...

    def __getitem__(self, idx: int | slice) -> Module | Self:
        if isinstance(idx, slice):
            return type(self)(list(self._modules.values())[idx])
        return self._modules[self._index(idx)]

    def __setitem__(self, idx: int, module: Module) -> None:
        self.add_module(self._index(idx), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Self:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append: expected an nn.Module, got {type(module).__name__}")
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> Self:
        for m in modules:
            self.append(m)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ModuleList has no forward: iterate over it in the parent's forward")


class Sequential(ModuleList):
    """Modules applied one after the other: ``Sequential(a, b)(x) == b(a(x))``."""

    def __init__(self, *modules: Any) -> None:  # modules, or one list/tuple of them
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        super().__init__(modules)

    @overload
    def __getitem__(self, idx: int) -> Module: ...
    @overload
    def __getitem__(self, idx: slice) -> Self: ...

    def __getitem__(self, idx: int | slice) -> Module | Self:
        if isinstance(idx, slice):
            return Sequential(*list(self._modules.values())[idx])
        return super().__getitem__(idx)

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x


class ModuleDict(Module):
    """A dict of modules, registered under their keys (insertion order)."""

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] | None = None) -> None:
        super().__init__()
        if modules is not None:
            for name, m in modules.items() if hasattr(modules, "items") else modules:
                self[name] = m

    def __getitem__(self, name: str) -> Module:
        return self._modules[name]

    def __setitem__(self, name: str, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict['{name}']: expected an nn.Module, got {type(module).__name__}")
        self.add_module(name, module)

    def __delitem__(self, name: str) -> None:
        del self._modules[name]

    def __contains__(self, name: object) -> bool:
        return name in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def keys(self) -> KeysView[str]:
        return self._modules.keys()

    def values(self) -> ValuesView[Module]:
        return self._modules.values()

    def items(self) -> ItemsView[str, Module]:
        return self._modules.items()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ModuleDict has no forward: pick its modules in the parent's forward")
