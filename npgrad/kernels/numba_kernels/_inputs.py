"""Input checks and preparation shared by the kernel wrappers.

A wrapper checks the dtype (float32 or float64; the output keeps it) and copies strided, read-only or
mixed-dtype input to one C-contiguous array of that dtype, so each jitted kernel is compiled for at
most two signatures (float32 and float64, C layout) and never reads strides it did not expect.
"""

import numpy as np


def _float_dtype(op, array):
    dtype = np.asarray(array).dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{op}: expected a float32 or float64 array, got {dtype}")
    return dtype


def _prep(array, dtype):
    """C-contiguous, writeable (one Numba type per dtype), of the given dtype; copies only if needed."""
    array = np.ascontiguousarray(array, dtype=dtype)
    if not array.flags.writeable:  # read-only arrays would be a separate Numba signature
        array = array.copy()
    return array


def _check_2d(op, **arrays):
    for name, array in arrays.items():
        if np.ndim(array) != 2:
            raise ValueError(f"{op}: {name} must be 2-D (rows, features), got shape {np.shape(array)}")


def _check_same_shape(op, **arrays):
    shapes = {name: np.shape(array) for name, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{op}: shapes must match, got " + ", ".join(f"{n} {s}" for n, s in shapes.items()))
