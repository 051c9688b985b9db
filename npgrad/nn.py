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

LoRA (low-rank adapters on Linear layers): :class:`LoRALinear`, :func:`add_lora`, :func:`merge_lora`,
:func:`lora_parameters`, :func:`lora_state_dict`, :func:`load_lora_state_dict`, at the end of this file;
the LoRALinear docstring is the guide (how a training loop uses them).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from fnmatch import fnmatchcase
from typing import Any, Literal, NamedTuple, Self, TypeAlias, overload

import numpy as np
import numpy.typing as npt

from . import functional as F
from ._checks import FLOAT_DTYPES
from .ops.elementwise import _keep_mask, manual_seed as seed_dropout
from .ops.lora import lora_linear
from .function import TensorLike
from .tensor import Tensor, is_grad_enabled

__all__ = [
    "Parameter",
    "Module",
    "Linear",
    "Embedding",
    "LayerNorm",
    "Dropout",
    "ReLU",
    "GELU",
    "LSTM",
    "GRU",
    "RNN",
    "ModuleList",
    "Sequential",
    "ModuleDict",
    "StateDictError",
    "IncompatibleKeys",
    "manual_seed",
    "default_generator",
    "LoRALinear",
    "add_lora",
    "merge_lora",
    "lora_parameters",
    "lora_state_dict",
    "load_lora_state_dict",
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
class _RecurrentBase(Module):
    """A stack of ``num_layers`` recurrent layers of one ``mode`` (see :class:`LSTM`); subclasses fix the mode."""

    mode = "lstm"
    gates = 4

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = True,
        rng: RngLike = None,
        dtype: npt.DTypeLike = np.float32,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        self.input_size = _check_positive_int(input_size, "input_size", who)
        self.hidden_size = _check_positive_int(hidden_size, "hidden_size", who)
        self.num_layers = _check_positive_int(num_layers, "num_layers", who)
        self.batch_first = bool(batch_first)
        dt = _check_float_dtype(dtype, who)
        gen = _as_generator(rng, who)
        bound = 1.0 / math.sqrt(self.hidden_size)  # PyTorch's init: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))
        width = self.gates * self.hidden_size
        for layer in range(self.num_layers):
            rows = self.input_size if layer == 0 else self.hidden_size
            self.register_parameter(
                f"weight_ih_l{layer}", Parameter(gen.uniform(-bound, bound, (rows, width)).astype(dt))
            )
            self.register_parameter(
                f"weight_hh_l{layer}", Parameter(gen.uniform(-bound, bound, (self.hidden_size, width)).astype(dt))
            )
            for name in (f"bias_ih_l{layer}", f"bias_hh_l{layer}"):
                self.register_parameter(name, Parameter(gen.uniform(-bound, bound, width).astype(dt)) if bias else None)
        self.dropout = Dropout(dropout, rng=int(gen.integers(2**63)))  # between layers, its own stream

    def forward(self, x: TensorLike, state: Any = None, mask: np.ndarray | None = None) -> tuple[Tensor, Any]:
        """x (B,T,I) (or (T,B,I)) -> (y (B,T,H), final state).

        ``state``: h (L,B,H), or (h, c) for the LSTM (L = num_layers), zeros when None; the final state has the
        same form. For truncated BPTT pass the previous segment's final state detached (``h.detach()``).
        ``mask`` (B,T) (or (T,B)) bool, True where a step is real; padding steps leave the state unchanged.
        """
        lstm = self.mode == "lstm"
        finals_h: list[Any] = []
        finals_c: list[Any] = []
        for layer in range(self.num_layers):
            if layer > 0:
                x = self.dropout(x)
            layer_state = None
            if state is not None:
                layer_state = (state[0][layer], state[1][layer]) if lstm else state[layer]
            x, final = F.recurrent_layer(
                x,
                getattr(self, f"weight_ih_l{layer}"),
                getattr(self, f"weight_hh_l{layer}"),
                getattr(self, f"bias_ih_l{layer}"),
                getattr(self, f"bias_hh_l{layer}"),
                state=layer_state,
                mask=mask,
                mode=self.mode,
                batch_first=self.batch_first,
            )
            finals_h.append(final[0] if lstm else final)
            if lstm:
                finals_c.append(final[1])
        h = F.stack(finals_h)
        return x, ((h, F.stack(finals_c)) if lstm else h)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"dropout={self.dropout.p}, batch_first={self.batch_first}"
        )


class LSTM(_RecurrentBase):
    """Long short-term memory layers (Hochreiter & Schmidhuber 1997, with forget gate), PyTorch's ``nn.LSTM``.

    Parameters per layer k, applied as ``x @ w``: ``weight_ih_lk`` (I,4H), ``weight_hh_lk`` (H,4H), ``bias_ih_lk``,
    ``bias_hh_lk`` (4H,), gates i f g o: the transposes of PyTorch's, so its weights load with ``.T``.
    ``dropout`` acts on the outputs of every layer but the last. ``batch_first`` is True by default (the
    project's (B,T,C) convention; PyTorch's default is time-major).
    """

    mode = "lstm"
    gates = 4


class GRU(_RecurrentBase):
    """Gated recurrent unit layers (Cho et al. 2014) with PyTorch's formulation and gate order r z n (see LSTM)."""

    mode = "gru"
    gates = 3


class RNN(_RecurrentBase):
    """Elman RNN layers with tanh: h_t = tanh(x_t W_ih + b_ih + h_{t-1} W_hh + b_hh) (see LSTM)."""

    mode = "rnn_tanh"
    gates = 1


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


# ---------------------------------------------------------------------------------- LoRA
_ADAPTER_NAMES = ("lora_A", "lora_B")


# ---------------------------------------------------------------------------------- checks
def _check_rank(rank: Any, in_features: int, out_features: int, who: str) -> int:
    if isinstance(rank, (bool, np.bool_)) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"{who}: rank must be a positive integer, got {rank!r} ({type(rank).__name__})")
    if rank <= 0:
        raise ValueError(f"{who}: rank must be a positive integer, got {rank!r}")
    limit = min(in_features, out_features)
    if rank > limit:
        raise ValueError(
            f"{who}: rank {rank} is larger than min(in_features, out_features) = {limit} "
            f"for a Linear of {in_features} -> {out_features} (a rank-{rank} update of it is no low-rank update)"
        )
    return int(rank)


def _check_alpha(alpha: Any, rank: int, who: str) -> float:
    if alpha is None:
        return float(rank)
    ok = not isinstance(alpha, (bool, np.bool_)) and isinstance(alpha, (int, float, np.integer, np.floating))
    if not ok or not (math.isfinite(float(alpha)) and alpha > 0):
        raise ValueError(
            f"{who}: alpha must be a finite number > 0 (the update is scaled by alpha / rank), got {alpha!r}"
        )
    return float(alpha)


def _check_dropout(dropout: Any, who: str) -> float:
    ok = not isinstance(dropout, (bool, np.bool_)) and isinstance(dropout, (int, float, np.integer, np.floating))
    if not ok or not (0.0 <= float(dropout) < 1.0):
        raise ValueError(f"{who}: dropout must be a probability in [0, 1), got {dropout!r}")
    return float(dropout)


# ---------------------------------------------------------------------------------- the layer
class LoRALinear(Module):
    """A Linear with a trainable low-rank update: ``x @ W + b + (alpha/rank) * dropout(x) @ lora_A @ lora_B``.

    ``LoRALinear(linear, rank, alpha=None, dropout=0.0, rng=None)`` (or :meth:`from_linear`) wraps ``linear``:
    its weight and bias Parameters are shared (registered here as ``weight``/``bias``, so state-dict names
    stay those of the Linear) and frozen (``requires_grad=False``). ``lora_A`` (in, rank) ~ U(-1/sqrt(in),
    1/sqrt(in)) drawn from ``rng`` (Generator, int seed or None for the default generator; draws made in float64
    and cast, as every npgrad initialiser), ``lora_B`` (rank, out) = 0, both of the weight's dtype.
    ``alpha`` defaults to ``rank`` (scaling 1). ``dropout`` in [0, 1) applies to the adapter's input only,
    in training mode; its generator (``self.rng``, seeded by one draw from ``rng``) is saved by
    ``Module.rng_state_dict``.

    ``weight`` reads as the effective weight (see "How the layer is applied" below); ``base_weight`` is the
    Parameter.

    LoRA in npgrad, the guide (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

    An adapted layer keeps the pretrained (frozen) ``W`` and ``b`` and learns a rank-r update::

        y = x @ W + b + (alpha / r) * dropout(x) @ A @ B        A (in, r), B (r, out)

    ``A`` starts Kaiming-uniform (``U(-1/sqrt(in), 1/sqrt(in))``, as loralib and PEFT draw it) and ``B`` at zero, so a
    freshly adapted model computes exactly (bit for bit) what the base model computes.

    Fine-tuning a pretrained model with adapters (what a training loop does)::

        model = LanguageModel(config)
        model.load_state_dict(base_checkpoint)  # the pretrained weights, before the adapters
        names = nn.add_lora(model, ["*.qkv", "*.out_proj"], rank=8, alpha=16, dropout=0.0, rng=seed)
        opt = optim.AdamW(nn.lora_parameters(model), lr=1e-3)  # only the A/B pairs: the rest is frozen
        ...  # train as usual: loss.backward(); opt.step()
        adapters = nn.lora_state_dict(model)  # adapter tensors only: "layers.0.self_attn.qkv.lora_A", ...
        # later: rebuild the base model, add_lora(...) with the same patterns, rank and alpha, then
        nn.load_lora_state_dict(model, adapters)  # strict: missing/unexpected/mis-shaped keys -> StateDictError
        nn.merge_lora(model)  # plain Linear layers again, W + (alpha/r) A B: export, fast decoding

    * :func:`add_lora` replaces, in place, every ``nn.Linear`` whose dotted module name matches one of ``patterns``
      (``fnmatch`` on the full name: ``"*.qkv"`` matches ``layers.0.self_attn.qkv``) by a :class:`LoRALinear` that
      *shares* the Linear's weight and bias Parameters (no copy). Each pattern must match at least one Linear.
      With ``freeze_base=True`` (the default) every parameter of the model that is not an adapter gets
      ``requires_grad=False``: no gradient is computed for it, and to train some of them too (layer norms, say) call
      ``p.requires_grad_(True)`` on them afterwards. State-dict names of the base weights do not change
      (``...qkv.weight``, ``...qkv.bias``); the adapters add ``...qkv.lora_A`` and ``...qkv.lora_B``, so a full
      ``state_dict()`` of an adapted model loads only into an adapted model, and a base checkpoint should be loaded
      before ``add_lora`` (or with ``strict=False``).
      Names in the Transformer models (transformer/attention.py, layers.py, model.py): self-attention ``*.self_attn.qkv``
      (C, 3C), cross-attention ``*.cross_attn.q_proj`` (C, C) and ``*.cross_attn.kv_proj`` (C, 2C), every attention's
      ``*.out_proj`` (C, C), the feed-forward's ``*.feed_forward.linear1`` (C, F) and ``*.feed_forward.linear2``
      (F, C), and the untied ``output_proj`` (C, V).
    * The optimizer refuses a parameter with ``requires_grad=False`` (``ValueError: parameter ... does not require
      grad``): pass it only trainable ones, :func:`lora_parameters` (the A/B pairs, named) or
      ``[(n, p) for n, p in model.named_parameters() if p.requires_grad]`` when more than the adapters train.
    * :meth:`LoRALinear.merge` folds ``(alpha/r) A B`` into ``W`` (computed in float64, rounded once) and
      :meth:`LoRALinear.unmerge` takes it out again, both to round-off; while merged the layer is a plain Linear
      (fast decoding) and A/B get no gradient. The base Parameter is shared, so merging changes it for every holder.
      A full ``state_dict()`` taken while merged holds the merged W: save adapters with :func:`lora_state_dict`.
    * :func:`merge_lora` replaces every LoRALinear by a plain ``nn.Linear`` holding ``W + (alpha/r) A B`` (a new
      array: the shared base Parameter is left alone) and returns the model: the export format.

    How the layer is applied. ``layer(x)`` runs the fused primitive ``npgrad.ops.lora.lora_linear`` (forward and
    backward in one node, the adapter dropout included; see its docstring for the measurement: 1.17x the frozen
    base layer's time, against 1.32x for the same sum composed from F.linear and @). The Transformer layers,
    however, apply their projections as ``F.linear(x, layer.weight, layer.bias)``, without calling the module.
    For them, ``LoRALinear.weight`` is the *effective* weight ``W + (alpha/r) A B`` (a Tensor in the graph, so A and B
    get their gradients; bit-identical to W while B = 0), and the base Parameter is ``LoRALinear.base_weight``
    (also what ``named_parameters``/``state_dict`` list under "weight"). That path is exact but costs the (in, out)
    weight gradient (1.5x the base layer) and cannot apply adapter dropout: reading ``.weight`` of a layer with
    ``dropout > 0`` in training mode raises, naming the fix (call ``layer(x)`` in the model, or use ``dropout=0``).
    Calling the modules (``self.qkv(x)`` instead of ``F.linear(x, self.qkv.weight, self.qkv.bias)``) in
    transformer/attention.py and layers.py is what enables dropout and the faster path; for decoding, merge first
    (the effective weight is recomputed at every read).
    """

    def __init__(
        self,
        linear: Linear,
        rank: int,
        alpha: float | None = None,
        dropout: float = 0.0,
        rng: RngLike = None,
    ) -> None:
        super().__init__()
        if not isinstance(linear, Linear):
            raise TypeError(f"LoRALinear: expected an nn.Linear to adapt, got {type(linear).__name__}")
        who = f"LoRALinear({linear.in_features} -> {linear.out_features})"
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rank = _check_rank(rank, self.in_features, self.out_features, who)
        self.alpha = _check_alpha(alpha, self.rank, who)
        self.dropout = _check_dropout(dropout, who)
        self.scaling = self.alpha / self.rank
        gen = _as_generator(rng, "LoRALinear")
        base = linear._parameters["weight"]
        base.requires_grad_(False)
        self.register_parameter("weight", base)  # the shared Parameter (``self.weight`` reads the effective one)
        if linear.bias is not None:
            linear.bias.requires_grad_(False)
            self.bias = linear.bias
        else:
            self.register_parameter("bias", None)
        dt = base.data.dtype
        bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) of loralib/PEFT
        self.lora_A = Parameter(gen.uniform(-bound, bound, size=(self.in_features, self.rank)).astype(dt))
        self.lora_B = Parameter(np.zeros((self.rank, self.out_features), dtype=dt))
        if self.dropout > 0.0:
            self.rng = np.random.default_rng(int(gen.integers(2**63)))
        self.merged = False

    @classmethod
    def from_linear(
        cls, linear: Linear, rank: int, alpha: float | None = None, dropout: float = 0.0, rng: RngLike = None
    ) -> LoRALinear:
        """The adapted layer for ``linear`` (sharing and freezing its weight and bias): ``LoRALinear(...)``."""
        return cls(linear, rank, alpha, dropout, rng)

    # -------------------------------------------------------------- the weights
    @property
    def base_weight(self) -> Parameter:
        """The frozen (in, out) Parameter shared with the adapted Linear (holding W + s A B while merged)."""
        return self._parameters["weight"]

    @property
    def weight(self) -> Tensor:
        """The weight this layer applies: ``W + (alpha/r) A B`` (a graph Tensor), or W itself while merged.

        For callers that apply the layer as ``F.linear(x, layer.weight, layer.bias)``. Adapter dropout cannot be
        applied that way: in training mode with ``dropout > 0`` (and gradients on) this raises.
        """
        base = self.base_weight
        if self.merged:
            return base
        if self.dropout > 0.0 and self.training and is_grad_enabled():
            raise RuntimeError(
                f"{self!r}: its .weight was read to apply the layer as F.linear(x, layer.weight, layer.bias), "
                f"which cannot apply the adapter's dropout ({self.dropout}); call the layer instead (layer(x)), "
                "or build the adapters with dropout=0"
            )
        return base + (self.lora_A @ self.lora_B) * self.scaling

    def delta_weight(self) -> np.ndarray:
        """``(alpha/r) A B`` as a float64 (in, out) array (no graph)."""
        a = self.lora_A.data.astype(np.float64)
        b = self.lora_B.data.astype(np.float64)
        return (a @ b) * self.scaling

    def merge(self) -> None:
        """Fold ``(alpha/r) A B`` into the base weight (float64 sum, rounded once); no-op if already merged."""
        if self.merged:
            return
        w = self.base_weight
        w.data = (w.data.astype(np.float64) + self.delta_weight()).astype(w.data.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """Take ``(alpha/r) A B`` out of the base weight again (to round-off); no-op if not merged."""
        if not self.merged:
            return
        w = self.base_weight
        w.data = (w.data.astype(np.float64) - self.delta_weight()).astype(w.data.dtype)
        self.merged = False

    def to_linear(self) -> Linear:
        """A plain ``nn.Linear`` with weight ``W + (alpha/r) A B`` (new arrays; the shared base is not modified)
        and a copy of the bias; the Parameters keep the base's ``requires_grad``."""
        base = self.base_weight
        linear = Linear(self.in_features, self.out_features, bias=self.bias is not None, rng=0, dtype=base.dtype)
        merged = base.data if self.merged else (base.data.astype(np.float64) + self.delta_weight())
        linear.weight = Parameter(np.array(merged, dtype=base.dtype), requires_grad=base.requires_grad)
        if self.bias is not None:
            linear.bias = Parameter(self.bias.data.copy(), requires_grad=self.bias.requires_grad)
        return linear

    # -------------------------------------------------------------- the call
    def forward(self, x: TensorLike) -> Tensor:
        # x (..., in) -> (..., out)
        w = self.base_weight
        if self.merged:
            return F.linear(x, w, self.bias)
        mask = None
        if self.training and self.dropout > 0.0:
            shape = np.asarray(getattr(x, "data", x)).shape
            mask = _keep_mask(self.rng, shape, self.dropout).astype(w.dtype) * (1.0 / (1.0 - self.dropout))
        return lora_linear(x, w, self.bias, self.lora_A, self.lora_B, self.scaling, mask)

    def extra_repr(self) -> str:
        merged = ", merged" if self.merged else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"rank={self.rank}, alpha={self.alpha:g}, dropout={self.dropout:g}{merged}"
        )


# ---------------------------------------------------------------------------------- model surgery
def _replace_children(model: Module, replace: dict[int, Module]) -> Module:
    """Put ``replace[id(child)]`` wherever ``child`` is registered in the tree; the new root is returned."""
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if child is not None and id(child) in replace:
                module._modules[name] = replace[id(child)]
    return replace.get(id(model), model)


def add_lora(
    model: Module,
    patterns: str | Iterable[str],
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    rng: RngLike = None,
    freeze_base: bool = True,
) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` whose dotted name matches a pattern by a :class:`LoRALinear`, in place.

    ``patterns``: fnmatch patterns on the full module name (a string or a list of them), e.g.
    ``["*.qkv", "*.out_proj"]``; each must match at least one Linear. ``rank``, ``alpha`` (default ``rank``),
    ``dropout``: as :class:`LoRALinear`, the same for every layer. ``rng``: one generator (or seed) for all the
    A initialisations, drawn layer by layer in module order. ``freeze_base``: freeze every non-adapter
    parameter of the model (the adapted layers' weights and biases are frozen in any case).

    Everything is checked before the model is touched: an empty pattern list, a pattern that matches nothing (the
    message lists the model's Linear names), an already adapted layer, a bad rank (0, negative, not an int, larger
    than min(in, out) of a matched layer), alpha <= 0 and dropout outside [0, 1) raise one ValueError.
    Returns the names of the adapted layers, in module order.
    """
    who = f"add_lora({type(model).__name__})"
    if not isinstance(model, Module):
        raise TypeError(f"add_lora: model must be an nn.Module, got {type(model).__name__}")
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    if not pats or not all(isinstance(p, str) and p for p in pats):
        raise ValueError(f"{who}: patterns must be a non-empty list of non-empty strings, got {patterns!r}")
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, (Linear, LoRALinear))]
    linear_names = [n or "<root>" for n, m in candidates if isinstance(m, Linear)]
    matched: dict[str, Linear] = {}
    for pattern in pats:
        hits = [(n, m) for n, m in candidates if fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(
                f"{who}: pattern {pattern!r} matches no Linear layer (patterns match full dotted names, "
                f"e.g. '*.qkv'); the model's Linear layers are: {', '.join(linear_names) or 'none'}"
            )
        for n, m in hits:
            if isinstance(m, LoRALinear):
                raise ValueError(f"{who}: {n!r} (matched by {pattern!r}) already has a LoRA adapter")
            assert isinstance(m, Linear)
            matched[n] = m
    # Check every argument against every matched layer before changing anything.
    for n, m in matched.items():
        _check_rank(rank, m.in_features, m.out_features, f"{who}: layer {n!r} ({m.in_features} -> {m.out_features})")
    alpha_value = _check_alpha(alpha, int(rank), who)
    dropout_value = _check_dropout(dropout, who)
    if not isinstance(freeze_base, bool):
        raise ValueError(f"{who}: freeze_base must be a bool, got {freeze_base!r}")
    gen = _as_generator(rng, "add_lora")
    names = [n for n, _ in candidates if n in matched]  # module order
    replace: dict[int, Module] = {}
    for n in names:
        linear = matched[n]
        if id(linear) not in replace:  # a Linear registered under two names gets one adapter
            replace[id(linear)] = LoRALinear(linear, rank, alpha_value, dropout_value, gen)
    if freeze_base:
        model.requires_grad_(False)
    for adapted in replace.values():
        assert isinstance(adapted, LoRALinear)
        adapted.lora_A.requires_grad_(True)
        adapted.lora_B.requires_grad_(True)
    new_root = _replace_children(model, replace)
    if new_root is not model:
        raise ValueError(f"{who}: the model itself is a Linear: use nn.LoRALinear.from_linear(model, ...) instead")
    return names


def _adapters(model: Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model: Module) -> Module:
    """Replace every :class:`LoRALinear` in ``model`` by a plain ``nn.Linear`` holding ``W + (alpha/r) A B``.

    In place (the shared base Parameters are not modified: the merged weights are new arrays); returns the
    model, or the new Linear when ``model`` itself is a LoRALinear. The result has no adapter left: its
    state dict is the base model's layout (the export format). Parameters keep their ``requires_grad``
    (frozen ones stay frozen: ``model.requires_grad_(True)`` to fine-tune it all).
    """
    if not isinstance(model, Module):
        raise TypeError(f"merge_lora: model must be an nn.Module, got {type(model).__name__}")
    replace: dict[int, Module] = {id(m): m.to_linear() for _, m in _adapters(model)}
    return _replace_children(model, replace)


def lora_parameters(model: Module) -> list[tuple[str, Parameter]]:
    """(name, Parameter) of every adapter matrix (``...lora_A``, ``...lora_B``): what the optimizer should get."""
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in _ADAPTER_NAMES and p.requires_grad]


def _adapter_shapes(model: Module) -> OrderedDict[str, tuple[Parameter, tuple[int, ...]]]:
    out: OrderedDict[str, tuple[Parameter, tuple[int, ...]]] = OrderedDict()
    for prefix, m in _adapters(model):
        dot = "." if prefix else ""
        for local in _ADAPTER_NAMES:
            p = m._parameters[local]
            out[prefix + dot + local] = (p, p.data.shape)
    return out


def lora_state_dict(model: Module) -> OrderedDict[str, np.ndarray]:
    """Only the adapter tensors, as copies: ``{"layers.0.self_attn.qkv.lora_A": (in, r), "...lora_B": (r, out)}``.

    Rank and alpha are not in it: rebuild the adapters with the same ``add_lora`` arguments before loading
    (the rank is checked through the shapes, alpha cannot be).
    """
    adapters = _adapter_shapes(model)
    if not adapters:
        raise ValueError(f"lora_state_dict: {type(model).__name__} has no LoRA adapter (call add_lora first)")
    return OrderedDict((name, np.array(p.data, copy=True)) for name, (p, _) in adapters.items())


def load_lora_state_dict(model: Module, state_dict: Mapping[str, Any]) -> None:
    """Load adapter tensors saved by :func:`lora_state_dict` into the adapters of ``model``; strict.

    Keys must match exactly: a missing adapter key, a key that is not an adapter of ``model`` (a base weight
    included), a shape that differs (another rank) or a value that is not a real array raise one
    :class:`~npgrad.nn.StateDictError` (a ValueError) listing every problem; nothing is loaded unless
    everything fits. Values are cast to the adapters' dtype.
    """
    if not hasattr(state_dict, "items"):
        raise TypeError(f"load_lora_state_dict expects a mapping name -> array, got {type(state_dict).__name__}")
    expected = _adapter_shapes(model)
    who = f"load_lora_state_dict into {type(model).__name__}"
    if not expected:
        raise StateDictError(f"{who}: the model has no LoRA adapter (call add_lora with the same patterns first)")
    problems = []
    merged = [n for n, m in _adapters(model) if m.merged]
    if merged:
        problems.append(f"merged adapters (call unmerge() first, or the loaded A/B would not match W): {merged}")
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        problems.append(f"missing adapter keys (in the model, not in the state dict): {missing}")
    if unexpected:
        problems.append(f"unexpected keys (not adapters of the model): {unexpected}")
    plan = []
    for key, value in state_dict.items():
        if key not in expected:
            continue
        param, shape = expected[key]
        array = np.asarray(value.data if isinstance(value, Tensor) else value)
        if not _loadable(array.dtype, param.data.dtype):
            problems.append(f"{key!r}: dtype {array.dtype} cannot be loaded into {param.data.dtype}")
        elif array.shape != shape:
            problems.append(
                f"{key!r}: the model expects shape {shape}, the state dict has {array.shape} "
                "(adapters of another rank or layer size?)"
            )
        else:
            plan.append((param, array))
    if problems:
        raise StateDictError(f"{who}: the adapters do not fit (nothing was loaded).\n  " + "\n  ".join(problems))
    for param, array in plan:
        if param.data.flags.writeable:
            np.copyto(param.data, array, casting="unsafe")  # in place: an optimizer holding it sees the values
        else:
            param.data = np.array(array, dtype=param.data.dtype, copy=True)
