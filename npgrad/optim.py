"""Optimizers (SGD, Adam, AdamW), gradient clipping by global norm, and learning-rate schedules.

The update rules are PyTorch's (``torch.optim``, single-tensor path), written out in each
``step`` with the same order of operations, so a float64 run follows PyTorch's to round-off.
Updates are in place, in the parameter's dtype, with NumPy ``out=`` into two scratch buffers
per dtype shared by all parameters: a step allocates nothing after the first.

Checkpoints: ``state_dict()`` returns plain data, ready for safetensors + JSON::

    {"type": "Adam",
     "hyperparameters": {"lr": 0.001, "betas": [0.9, 0.999], ...},   # JSON
     "param_steps": {"0": 12, "1": 12, ...},                            # JSON (ints)
     "arrays": {"0.exp_avg": ndarray, "0.exp_avg_sq": ndarray, ...}}   # safetensors

Parameters are keyed by their position in the list given to the optimizer, or by their names
when the optimizer was built from ``model.named_parameters()``. ``load_state_dict`` checks type,
keys, shapes, and casts arrays to the parameter dtype; after it, training continues exactly as if
it had not been interrupted.

Schedules set ``optimizer.lr``. Convention: the schedule's ``step_num`` is the 1-based number of
the optimizer update about to happen; the constructor sets the lr of update 1, and each
``schedule.step()`` (call it after ``optimizer.step()``) moves to the next update's lr.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

import numpy as np

from ._checks import check_number as _check_number
from .tensor import Tensor

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "clip_grad_norm_",
    "grad_norms",
    "LRSchedule",
    "InverseSqrtSchedule",
    "WarmupCosineSchedule",
    "ConstantSchedule",
]


#: What an optimizer takes as ``params``: Parameters (or float Tensors that require grad), or (name, parameter)
#: pairs such as ``model.named_parameters()``.
ParamsLike: TypeAlias = Iterable[Tensor] | Iterable[tuple[str, Tensor]]


def _grad_array(p: Tensor) -> np.ndarray | None:
    g = p.grad
    if g is None:
        return None
    return g.data if isinstance(g, Tensor) else g


# ---------------------------------------------------------------------------------- Optimizer
class Optimizer:
    """Base class: holds the parameters, the lr, per-parameter state, and the scratch buffers.

    ``params``: an iterable of Parameters (or float Tensors with ``requires_grad``), or of
    ``(name, parameter)`` pairs such as ``model.named_parameters()``. A parameter listed twice (the same
    Tensor object) is kept once and a ``UserWarning`` names it, as PyTorch warns about a parameter group
    with duplicate parameters: it would otherwise be updated twice per step. (``model.parameters()``
    already yields a tied weight once.) Subclasses implement ``_update(index, param, grad)``.
    """

    # Names of the per-parameter arrays a subclass keeps (for state_dict checks).
    _state_arrays: tuple[str, ...] = ()

    def __init__(self, params: ParamsLike, lr: float) -> None:
        who = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(
                f"{who}: params must be an iterable of parameters (e.g. model.parameters()), "
                "not a single Tensor; wrap it in a list"
            )
        self.params: list[Tensor] = []
        self.names: list[str] = []
        seen: dict[int, str | int] = {}  # id -> how the user named it (its name, else its position)
        for i, item in enumerate(params):
            name = None
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                name, item = item
            if not isinstance(item, Tensor):
                raise TypeError(f"{who}: parameter {name or i} is a {type(item).__name__}, not a Tensor/Parameter")
            if item.data.dtype.kind != "f":
                raise TypeError(f"{who}: parameter {name or i} has dtype {item.dtype}; only float arrays are optimized")
            if not item.requires_grad:
                raise ValueError(f"{who}: parameter {name or i} does not require grad")
            if id(item) in seen:
                warnings.warn(
                    f"{who}: parameter {name or i} is the same Tensor as parameter {seen[id(item)]}, "
                    "listed twice; it is kept once (updated once per step)",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            self.params.append(item)
            self.names.append(name if name is not None else str(len(self.names)))
            seen[id(item)] = name or i
        if not self.params:
            raise ValueError(f"{who}: got an empty parameter list")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"{who}: parameter names are not unique")
        self.lr = lr
        self.state: list[dict[str, np.ndarray]] = [dict() for _ in self.params]  # per parameter: _state_arrays
        self.param_steps = [0] * len(self.params)  # per parameter: updates applied (bias correction)
        self._scratch: dict[np.dtype, tuple[np.ndarray, np.ndarray]] = {}  # dtype -> (flat buffer a, b)

    # lr is checked on every assignment, schedules included.
    @property
    def lr(self) -> float:
        """The learning rate (checked to be a finite number >= 0 on every assignment)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check_number(value, "lr", type(self).__name__)

    def _scratch_for(self, p: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Two scratch arrays with p's shape and dtype, views of buffers shared by all params."""
        n = p.data.size
        bufs = self._scratch.get(p.data.dtype)
        if bufs is None or bufs[0].size < n:
            size = max(n, max((q.data.size for q in self.params if q.data.dtype == p.data.dtype), default=n))
            bufs = (np.empty(size, dtype=p.data.dtype), np.empty(size, dtype=p.data.dtype))
            self._scratch[p.data.dtype] = bufs
        return bufs[0][:n].reshape(p.data.shape), bufs[1][:n].reshape(p.data.shape)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``.grad = None``, PyTorch's default)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient (the others are skipped)."""
        for i, p in enumerate(self.params):
            g = _grad_array(p)
            if g is None:
                continue
            if g.shape != p.data.shape:
                raise ValueError(
                    f"{type(self).__name__}.step: parameter {self.names[i]} has shape "
                    f"{p.data.shape} but its grad has shape {g.shape}"
                )
            if g.dtype != p.data.dtype:
                g = g.astype(p.data.dtype)
            self.param_steps[i] += 1
            self._update(i, p.data, g)

    def _update(self, index: int, param: np.ndarray, grad: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -------------------------------------------------------------- checkpoints
    def _hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def _set_hyperparameters(self, hp: Mapping[str, Any]) -> None:
        self.lr = hp["lr"]

    def state_dict(self) -> dict[str, Any]:
        """Plain data (see the module docstring): JSON-able numbers and a flat dict of arrays."""
        arrays = {}
        for name, st in zip(self.names, self.state):
            for key, arr in st.items():
                arrays[f"{name}.{key}"] = arr.copy()
        return {
            "type": type(self).__name__,
            "hyperparameters": self._hyperparameters(),
            "param_steps": {name: int(s) for name, s in zip(self.names, self.param_steps)},
            "arrays": arrays,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyper-parameters, step counts and moment arrays saved by :meth:`state_dict`."""
        who = f"{type(self).__name__}.load_state_dict"
        for key in ("type", "hyperparameters", "param_steps", "arrays"):
            if key not in state_dict:
                raise ValueError(f"{who}: not an optimizer state dict (no '{key}' entry)")
        if state_dict["type"] != type(self).__name__:
            raise ValueError(f"{who}: the state dict is from a {state_dict['type']} optimizer")
        steps, arrays = state_dict["param_steps"], state_dict["arrays"]
        problems = []
        if set(steps) != set(self.names):
            problems.append(
                f"parameters differ: missing {sorted(set(self.names) - set(steps))}, "
                f"unexpected {sorted(set(steps) - set(self.names))}"
            )
        new_state: list[dict] = [dict() for _ in self.params]
        by_name = {name: i for i, name in enumerate(self.names)}
        for key, arr in arrays.items():
            name, _, what = key.rpartition(".")
            i = by_name.get(name)
            if i is None or what not in self._state_arrays:
                problems.append(f"unexpected array {key!r}")
                continue
            arr = np.asarray(arr)
            if arr.shape != self.params[i].data.shape:
                problems.append(f"{key!r}: shape {arr.shape}, but the parameter has shape {self.params[i].data.shape}")
                continue
            new_state[i][what] = np.array(arr, dtype=self.params[i].data.dtype, copy=True)
        for i, name in enumerate(self.names):
            if name in steps and int(steps[name]) > 0 and set(new_state[i]) != set(self._required_state()):
                problems.append(
                    f"parameter {name!r} has taken {steps[name]} steps but its arrays are "
                    f"{sorted(new_state[i])}, expected {sorted(self._required_state())}"
                )
        if problems:
            raise ValueError(
                f"{who}: the state dict does not fit this optimizer (nothing was loaded):\n  " + "\n  ".join(problems)
            )
        previous = self._hyperparameters()
        try:
            self._set_hyperparameters(state_dict["hyperparameters"])
        except (TypeError, ValueError):
            self._set_hyperparameters(previous)  # all or nothing: keep the optimizer as it was
            raise
        self.param_steps = [int(steps[name]) for name in self.names]
        self.state = new_state

    def _required_state(self) -> tuple[str, ...]:
        return self._state_arrays

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self._hyperparameters().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {hp})"


# ---------------------------------------------------------------------------------- SGD
class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``:

    .. code-block:: text

        g = grad + weight_decay * p
        b = g                                   (first step)
        b = momentum * b + (1 - dampening) * g  (later steps)
        g = g + momentum * b   if nesterov else  b
        p = p - lr * g
    """

    _state_arrays = ("momentum_buffer",)

    def __init__(
        self,
        params: ParamsLike,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self._set_hyperparameters(
            {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay, "nesterov": nesterov}
        )

    def _required_state(self) -> tuple[str, ...]:
        return self._state_arrays if self.momentum != 0 else ()

    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
        }

    def _set_hyperparameters(self, hp: Mapping[str, Any]) -> None:
        """Check and set (the constructor and load_state_dict): momentum in [0, 1), dampening in [0, 1],
        weight_decay >= 0, nesterov only with momentum > 0 and dampening 0."""
        self.lr = hp["lr"]
        self.momentum = _check_number(hp["momentum"], "momentum", "SGD", 0.0, 1.0)
        self.dampening = _check_number(hp["dampening"], "dampening", "SGD", 0.0, 1.0, high_open=False)
        self.weight_decay = _check_number(hp["weight_decay"], "weight_decay", "SGD")
        self.nesterov = bool(hp["nesterov"])
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening == 0")

    def _update(self, i, param, grad):
        a, b = self._scratch_for(self.params[i])
        if self.weight_decay != 0:
            np.multiply(param, self.weight_decay, out=a)  # g = grad + wd * p
            a += grad
            grad = a
        if self.momentum != 0:
            st = self.state[i]
            buf = st.get("momentum_buffer")
            if buf is None:
                st["momentum_buffer"] = buf = grad.copy()
            else:
                buf *= self.momentum  # b = m b + (1 - dampening) g
                if self.dampening != 0:
                    np.multiply(grad, 1.0 - self.dampening, out=b)
                    buf += b
                else:
                    buf += grad
            if self.nesterov:
                np.multiply(buf, self.momentum, out=b)  # g = g + m b
                if grad is not a:
                    np.add(grad, b, out=a)
                else:
                    a += b
                grad = a
            else:
                grad = buf
        np.multiply(grad, -self.lr, out=b)  # p = p - lr g
        param += b


# ---------------------------------------------------------------------------------- Adam
class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015) with PyTorch's bias correction, as ``torch.optim.Adam``:

    .. code-block:: text

        g = grad + weight_decay * p                         (L2 penalty; AdamW decouples it)
        m = m + (1 - beta1) * (g - m)                       (= beta1 m + (1 - beta1) g)
        v = beta2 * v + (1 - beta2) * g * g
        p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    with ``t`` the number of updates this parameter has received (1 for the first). Note that
    ``eps`` is added after the bias correction of ``sqrt(v)``, as in PyTorch.

    ``no_decay``: names of parameters (as given by ``named_parameters()``, or list positions as
    strings) that get no weight decay, as a second PyTorch parameter group with
    ``weight_decay=0`` would; nanoGPT exempts biases and LayerNorm weights (every 1-D parameter).
    """

    _state_arrays = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(
        self,
        params: ParamsLike,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        no_decay: Iterable[str] = (),
    ) -> None:
        super().__init__(params, lr)
        self._set_hyperparameters(
            {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "no_decay": no_decay}
        )

    def _set_no_decay(self, no_decay):
        if isinstance(no_decay, str):
            raise TypeError(
                f"{type(self).__name__}: no_decay must be a collection of parameter names, "
                f"not one string; wrap it: [{no_decay!r}]"
            )
        names = set(map(str, no_decay))
        unknown = sorted(names - set(self.names))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: no_decay names unknown parameter(s) {unknown}; the parameters are {self.names}"
            )
        self.no_decay = sorted(names)
        self._decays = [name not in names for name in self.names]  # per parameter: apply weight decay?

    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "no_decay": list(self.no_decay),
        }

    def _set_hyperparameters(self, hp: Mapping[str, Any]) -> None:
        """Check and set (the constructor and load_state_dict): betas in [0, 1), eps > 0, weight_decay >= 0."""
        who = type(self).__name__
        self.lr = hp["lr"]
        betas = hp["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_number(betas[0], "beta1", who, 0.0, 1.0), _check_number(betas[1], "beta2", who, 0.0, 1.0))
        self.eps = _check_number(hp["eps"], "eps", who, 0.0, low_open=True)  # it divides: 0 allows 0 / 0
        self.weight_decay = _check_number(hp["weight_decay"], "weight_decay", who)
        self._set_no_decay(hp.get("no_decay", ()))  # absent in checkpoints written before it existed

    def _update(self, i, param, grad):
        beta1, beta2 = self.betas
        lr, eps = self.lr, self.eps
        wd = self.weight_decay if self._decays[i] else 0.0
        a, b = self._scratch_for(self.params[i])
        st = self.state[i]
        if not st:
            st["exp_avg"] = np.zeros_like(param)
            st["exp_avg_sq"] = np.zeros_like(param)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        step = self.param_steps[i]

        if wd != 0:
            if self._decoupled:
                param *= 1.0 - lr * wd  # AdamW: p = p (1 - lr wd)
            else:
                np.multiply(param, wd, out=a)  # Adam: g = grad + wd p
                a += grad
                grad = a

        np.subtract(grad, m, out=b)  # m = m + (1 - beta1) (g - m)
        b *= 1.0 - beta1
        m += b
        v *= beta2  # v = beta2 v + ((1 - beta2) g) g
        np.multiply(grad, 1.0 - beta2, out=b)
        b *= grad
        v += b

        step_size = lr / (1.0 - beta1**step)
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        np.sqrt(v, out=b)  # denom = sqrt(v) / sqrt(bc2) + eps
        b /= bias_correction2_sqrt
        b += eps
        np.multiply(m, -step_size, out=a)  # p = p + (-step_size m) / denom
        a /= b
        param += a


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``:
    first ``p = p * (1 - lr * weight_decay)``, then the Adam update without an L2 term."""

    _decoupled = True

    def __init__(
        self,
        params: ParamsLike,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        no_decay: Iterable[str] = (),
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, no_decay=no_decay)


# ---------------------------------------------------------------------------------- clipping
def grad_norms(params: Tensor | Iterable[Tensor]) -> list[float]:
    """The L2 norm of each parameter's gradient (0.0 for a parameter without one), in the order given.

    These are the per-parameter norms that clipping by global L2 norm combines (``total = sqrt(sum(n_i^2))``); a
    caller that wants both (e.g. to log per-layer gradient norms) passes them to ``clip_grad_norm_(..., norms=)``
    so that each gradient is read once. Each squared norm is a BLAS dot (no temporary array) in float64.
    """
    return [math.sqrt(sq) for sq in _grad_squared_norms([params] if isinstance(params, Tensor) else params)]


def _grad_squared_norms(params: Iterable[Tensor]) -> list[float]:
    squares = []
    for p in params:
        g = _grad_array(p)
        flat = None if g is None else np.ravel(g)
        squares.append(0.0 if flat is None else float(np.dot(flat, flat)))
    return squares


def clip_grad_norm_(
    params: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    norms: list[float] | None = None,
) -> float:
    """Scale all gradients in place so that their global norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: ``total = ||(||g_1||, ..., ||g_n||)||`` (the norm of
    all gradients concatenated), every gradient is multiplied by ``min(1, max_norm / (total + 1e-6))``,
    and ``total`` (before clipping) is returned. Parameters without a gradient are skipped.
    ``norm_type`` is 2, any p >= 1, or ``inf`` (largest absolute value). ``norms``: the per-parameter L2
    norms already computed by ``grad_norms(params)`` (norm_type 2 only), used instead of reading the gradients again.
    """
    if isinstance(params, Tensor):
        params = [params]
    max_norm = _check_number(max_norm, "max_norm", "clip_grad_norm_")
    norm_type = float(norm_type)
    if not (norm_type >= 1 or norm_type == math.inf):
        raise ValueError(f"clip_grad_norm_: norm_type must be >= 1 or inf, got {norm_type!r}")
    params = list(params)
    if norms is not None and (norm_type != 2.0 or len(norms) != len(params)):
        raise ValueError(
            f"clip_grad_norm_: norms (from grad_norms) must hold one L2 norm per parameter ({len(params)}) and "
            f"norm_type must be 2; got {len(norms)} norms and norm_type {norm_type}"
        )
    grads = []
    for p in params:
        g = _grad_array(p)
        if g is not None:
            grads.append(g)
    if not grads:
        return 0.0
    if norm_type == math.inf:
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    elif norm_type == 2.0:
        total = math.sqrt(sum(_grad_squared_norms(params) if norms is None else [n * n for n in norms]))
    else:
        total = float(
            np.sum([np.linalg.norm(np.ravel(g), ord=norm_type) ** norm_type for g in grads]) ** (1.0 / norm_type)
        )
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of the gradients is {total}; pass error_if_nonfinite=False to clip anyway"
        )
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total


# ---------------------------------------------------------------------------------- schedules
class LRSchedule:
    """Base class: ``lr_at(step_num)`` is the formula; ``step()`` advances and sets ``optimizer.lr``.

    ``step_num`` is the 1-based number of the next optimizer update (the constructor sets the
    lr of update 1). Call ``schedule.step()`` after each ``optimizer.step()``.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: expected an npgrad.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.step_num = 1
        self.optimizer.lr = self.get_lr()

    def lr_at(self, step_num: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_lr(self) -> float:
        """The learning rate of the current update (``step_num``)."""
        return self.lr_at(self.step_num)

    def step(self) -> float:
        self.step_num += 1
        lr = self.get_lr()
        self.optimizer.lr = lr
        return lr

    def _hyperparameters(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """``{"type", "step_num", hyper-parameters...}``: numbers only (JSON)."""
        return {"type": type(self).__name__, "step_num": self.step_num, **self._hyperparameters()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        who = f"{type(self).__name__}.load_state_dict"
        if state_dict.get("type") != type(self).__name__:
            raise ValueError(f"{who}: the state dict is from a {state_dict.get('type')!r} schedule")
        for key in self._hyperparameters():
            if key not in state_dict:
                raise ValueError(f"{who}: missing entry {key!r}")
        for key in self._hyperparameters():
            setattr(self, key, state_dict[key])
        self.step_num = int(state_dict["step_num"])
        self.optimizer.lr = self.get_lr()

    def __repr__(self):
        hp = ", ".join(f"{k}={v}" for k, v in self._hyperparameters().items())
        return f"{type(self).__name__}({hp}, step_num={self.step_num})"


def _check_steps(value: int, name: str, who: str, allow_zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{who}: {name} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return int(value)


class InverseSqrtSchedule(LRSchedule):
    r"""The paper's schedule (Vaswani et al. 2017, eq. 3): linear warmup, then decay as ``1/sqrt(step)``.

    With ``d_model``: ``lr = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``.
    With ``peak_lr`` instead: ``lr = peak_lr * min(step / warmup, sqrt(warmup / step))``.
    Either way the peak is at ``step == warmup_steps`` (``factor * (d_model * warmup)^-0.5`` for
    the first form). With ``warmup_steps == 0`` it is the pure decay ``(.) * step^-0.5``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        d_model: int | None = None,
        peak_lr: float | None = None,
        warmup_steps: int = 4000,
        factor: float = 1.0,
    ) -> None:
        who = "InverseSqrtSchedule"
        if (d_model is None) == (peak_lr is None):
            raise ValueError(f"{who}: give exactly one of d_model (the paper's form) and peak_lr")
        self.d_model = None if d_model is None else _check_steps(d_model, "d_model", who, allow_zero=False)
        self.peak_lr = None if peak_lr is None else _check_number(peak_lr, "peak_lr", who)
        self.warmup_steps = _check_steps(warmup_steps, "warmup_steps", who)
        self.factor = _check_number(factor, "factor", who)
        super().__init__(optimizer)

    def lr_at(self, step_num: int) -> float:
        s = max(int(step_num), 1)
        w = self.warmup_steps
        if self.d_model is not None:
            scale = self.factor * self.d_model**-0.5
            return scale * (min(s**-0.5, s * w**-1.5) if w > 0 else s**-0.5)
        # __init__ sets exactly one of d_model and peak_lr, so here peak_lr is a float
        return self.peak_lr * (min(s / w, math.sqrt(w / s)) if w > 0 else s**-0.5)  # type: ignore[operator]

    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "d_model": self.d_model,
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "factor": self.factor,
        }


class WarmupCosineSchedule(LRSchedule):
    r"""nanoGPT's schedule: linear warmup to ``peak_lr``, cosine decay to ``min_lr``, then constant.

    .. code-block:: text

        step <= warmup:          lr = peak_lr * step / warmup
        warmup < step <= total:  lr = min_lr + 0.5 (1 + cos(pi r)) (peak_lr - min_lr),
                                 r = (step - warmup) / (total - warmup)
        step > total:            lr = min_lr

    (``step`` is 1-based, so update ``warmup_steps`` runs at ``peak_lr`` and update
    ``total_steps`` at ``min_lr``; nanoGPT's 0-based ``it`` is ``step - 1``.)
    """

    def __init__(
        self, optimizer: Optimizer, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0
    ) -> None:
        who = "WarmupCosineSchedule"
        self.peak_lr = _check_number(peak_lr, "peak_lr", who)
        self.min_lr = _check_number(min_lr, "min_lr", who)
        if self.min_lr > self.peak_lr:
            raise ValueError(f"{who}: min_lr ({min_lr}) is larger than peak_lr ({peak_lr})")
        self.warmup_steps = _check_steps(warmup_steps, "warmup_steps", who)
        self.total_steps = _check_steps(total_steps, "total_steps", who, allow_zero=False)
        if self.total_steps < self.warmup_steps:
            raise ValueError(f"{who}: total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})")
        super().__init__(optimizer)

    def lr_at(self, step_num: int) -> float:
        s, w, t = max(int(step_num), 1), self.warmup_steps, self.total_steps
        if s <= w:
            return self.peak_lr * s / w
        if s > t:
            return self.min_lr
        ratio = (s - w) / (t - w)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.peak_lr - self.min_lr)

    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "min_lr": self.min_lr,
        }


class ConstantSchedule(LRSchedule):
    """A constant ``lr`` (default: the optimizer's current lr), after an optional linear warmup:
    ``lr * min(1, step / warmup_steps)``."""

    def __init__(self, optimizer: Optimizer, lr: float | None = None, warmup_steps: int = 0) -> None:
        who = "ConstantSchedule"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{who}: expected an npgrad.optim.Optimizer, got {type(optimizer).__name__}")
        self.lr = _check_number(optimizer.lr if lr is None else lr, "lr", who)
        self.warmup_steps = _check_steps(warmup_steps, "warmup_steps", who)
        super().__init__(optimizer)

    def lr_at(self, step_num: int) -> float:
        s = max(int(step_num), 1)
        if self.warmup_steps and s < self.warmup_steps:
            return self.lr * s / self.warmup_steps
        return self.lr

    def _hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "warmup_steps": self.warmup_steps}
