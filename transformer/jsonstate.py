"""Exact JSON for training state: what a checkpoint stores beside its safetensors weights.

Plain JSON where it is exact, and a few tagged forms where it is not:
``{"__int__": "123..."}`` for integers beyond 2**53 (PCG64 states are 128-bit; other JSON readers would round them),
``{"__float__": "nan"}`` for non-finite floats (strict JSON has none), ``{"__tuple__": [...]}``,
``{"__dict__": [[key, value], ...]}`` for dicts whose keys are not plain strings, ``{"__numpy__": dtype, "value": v}``
for NumPy scalars, ``{"__array__": {dtype, shape, base64}}`` for small arrays inline (e.g. an MT19937 key) and
``{"__tensor__": name}`` for an array stored in ``optimizer.safetensors``. Python's float repr round-trips exactly.

``decode_state`` only builds numbers, strings, containers and NumPy arrays from their bytes: nothing is executed.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import numpy as np

_EXACT_INT_LIMIT = 2**53


class StateError(ValueError):
    """A stored value is malformed (the message names where it was read)."""


def encode_state(value, where, tensor_sink=None):
    """Plain JSON for ``value``; arrays go to ``tensor_sink`` (name -> array) when given, else inline base64.

    ``where`` is the path of the value, used in tensor names and in error messages.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"checkpoint: cannot store {where} = {value!r} (NumPy scalar of dtype {value.dtype})")
        return {"__numpy__": value.dtype.str, "value": encode_state(value.item(), where)}
    if isinstance(value, int):
        return {"__int__": str(value)} if abs(value) > _EXACT_INT_LIMIT else value
    if isinstance(value, float):
        return value if np.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc" or value.dtype.hasobject:
            raise TypeError(f"checkpoint: cannot store array {where} of dtype {value.dtype} (numbers and bools only)")
        if tensor_sink is not None:
            name = where
            while name in tensor_sink:
                name += "_"
            tensor_sink[name] = np.ascontiguousarray(value)
            return {"__tensor__": name}
        data = np.ascontiguousarray(value)
        return {
            "__array__": {
                "dtype": data.dtype.str,
                "shape": list(data.shape),
                "base64": base64.b64encode(data.tobytes()).decode("ascii"),
            }
        }
    if isinstance(value, Mapping):
        items = list(value.items())
        if all(isinstance(k, str) and not k.startswith("__") for k, _ in items):
            return {k: encode_state(v, f"{where}.{k}", tensor_sink) for k, v in items}
        return {"__dict__": [[encode_state(k, where), encode_state(v, f"{where}.{k}", tensor_sink)] for k, v in items]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_state(v, f"{where}.{i}", tensor_sink) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_state(v, f"{where}.{i}", tensor_sink) for i, v in enumerate(value)]
    raise TypeError(
        f"checkpoint: cannot store {where} of type {type(value).__name__} "
        "(allowed: None, bool, int, float, str, list, tuple, dict, NumPy arrays and scalars)"
    )


def decode_state(value, where, tensors=None):
    """Inverse of :func:`_encode`. ``where`` names the JSON file in errors."""
    if isinstance(value, list):
        return [decode_state(v, where, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) >= 1 and all(k.startswith("__") for k in value) or "__numpy__" in value:
        try:
            if "__int__" in value:
                return int(value["__int__"])
            if "__float__" in value:
                text = value["__float__"]
                if text not in ("nan", "inf", "-inf"):
                    raise ValueError(f"bad float tag {text!r}")
                return float(text)
            if "__tuple__" in value:
                return tuple(decode_state(v, where, tensors) for v in value["__tuple__"])
            if "__dict__" in value:
                return {decode_state(k, where): decode_state(v, where, tensors) for k, v in value["__dict__"]}
            if "__numpy__" in value:
                dtype = safe_dtype(value["__numpy__"])
                return dtype.type(decode_state(value["value"], where))
            if "__array__" in value:
                spec = value["__array__"]
                dtype = safe_dtype(spec["dtype"])
                raw = base64.b64decode(spec["base64"], validate=True)
                return np.frombuffer(raw, dtype=dtype).reshape(spec["shape"]).copy()
            if "__tensor__" in value:
                name = value["__tensor__"]
                if tensors is None or name not in tensors:
                    raise KeyError(f"array {name!r} is not among the stored arrays")
                return tensors[name]
        except StateError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise StateError(f"{where}: malformed tagged value {str(value)[:120]}: {exc}") from None
        raise StateError(f"{where}: unknown tagged value {str(value)[:120]}")
    return {k: decode_state(v, where, tensors) for k, v in value.items()}


def safe_dtype(text):
    dtype = np.dtype(str(text))  # a dtype string is parsed, never evaluated
    if dtype.kind not in "biufc" or dtype.hasobject:
        raise ValueError(f"dtype {text!r} is not a numeric dtype")
    return dtype
