"""Argument checks shared across npgrad: one helper per kind of argument, one wording per mistake.

Each check runs where an argument is normalised anyway (an op's wrapper or forward, a constructor),
never in an inner loop, and raises an error that names the function, the argument and what is
allowed. Imports only NumPy, so every layer (ops, tensor, optim, gradcheck) may use it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: The dtypes a differentiable tensor (and a fused kernel's input) may have.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_axis(op: str, axis: Any, ndim: int, name: str = "axis", of: str = "an input") -> int:
    """One axis: an int in [-ndim, ndim) -> a non-negative int; otherwise a clear error naming ``op`` and ``name``.

    A wrong type (a float, None, a tuple: the op works along one axis) is a TypeError; an int out of
    range an ``AxisError`` (a ValueError and an IndexError, as NumPy raises). ``of`` describes what the
    axis indexes (``"the output"`` for stack, whose new axis may be ``ndim``).
    """
    allowed = f"an int in [{-ndim}, {ndim})"
    if not is_int(axis):
        hint = " (this op works along one axis)" if axis is None or isinstance(axis, (tuple, list)) else ""
        raise TypeError(
            f"{op}: {name} must be {allowed} for {of} with {ndim} axes, got {axis!r} ({type(axis).__name__}){hint}"
        )
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(
            f"{op}: axis {axis} is out of range for {of} with {ndim} axes ({name} must be {allowed})"
        )
    return int(axis) % ndim


def as_float_array(op: str, x: Any, what: str = "input") -> np.ndarray:
    """x as a float32 or float64 ndarray (kept as it is), or a clear TypeError naming ``op`` and ``what``.

    The fused ops (softmax, layer norm, cross-entropy, attention, GELU) accept exactly these two dtypes
    on every backend: the Numba kernels are compiled for them only, so float16 or longdouble is refused
    up front rather than working on one backend and failing inside a kernel on the other.
    """
    x = np.asarray(x)
    if x.dtype not in FLOAT_DTYPES:
        hint = " (convert with .astype(np.float32) first)" if x.dtype.kind == "f" else ""
        raise TypeError(f"{op}: {what} must be a floating-point array (float32 or float64), got dtype {x.dtype}{hint}")
    return x


def check_number(
    value: Any,
    name: str,
    who: str,
    low: float = 0.0,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = True,
) -> float:
    """A finite real in [low, high) (or the given openness; ``high`` None: no upper bound) as a float.

    A non-number (bool included) is a TypeError; NaN, an infinity or a value out of range a ValueError.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{who}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
        raise ValueError(f"{who}: {name} must be in {lo}{low}, {hi}, got {value!r}")
    return v


def check_int(value: Any, name: str, who: str, low: int | None = None) -> int:
    """An integer (Python or NumPy, not a bool and not a float such as 1.5 or 2.0), at least ``low``."""
    if not is_int(value):
        bound = "" if low is None else f" >= {low}"
        raise TypeError(f"{who}: {name} must be an integer{bound}, got {value!r} ({type(value).__name__})")
    if low is not None and value < low:
        raise ValueError(f"{who}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)
