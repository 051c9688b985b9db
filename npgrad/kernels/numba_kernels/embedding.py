"""Embedding backward: the scatter-add of the output gradient's rows into the weight's gradient.

NumPy twin: reference.embedding_backward (npgrad/kernels/reference.py, section "embedding").
"""

import numpy as np
from numba import njit

from .. import tuning
from ._inputs import _check_2d, _float_dtype, _prep
from ._jit import _JIT_EXACT
from ._parallel import _chunks, _run


@njit(**_JIT_EXACT)
def _embedding_backward_kernel(ids, gy, gw, start, stop):
    # gw[ids[n], start:stop] += gy[n, start:stop]. Threads get disjoint column ranges (whole
    # 64-byte cache lines), so no two threads write the same memory, and every element receives
    # its additions in the order of n, as a serial scatter-add (np.add.at) does.
    for n in range(ids.shape[0]):
        gyrow = gy[n]
        gwrow = gw[ids[n]]
        for c in range(start, stop):
            gwrow[c] += gyrow[c]


def embedding_backward(ids, gy, num_embeddings):
    """gW[e, :] = sum over n with ids[n] == e of gy[n, :]   (scatter-add).   (N,),(N,C) -> (num_embeddings, C)

    ids must already be valid (0 <= id < num_embeddings; the op checks them).
    """
    dtype = _float_dtype("embedding_backward", gy)
    _check_2d("embedding_backward", gy=gy)
    ids = _prep(np.reshape(ids, -1), np.int64)
    gy = _prep(gy, dtype)
    if ids.shape[0] != gy.shape[0]:
        raise ValueError(f"embedding_backward: {ids.shape[0]} ids but gy has {gy.shape[0]} rows")
    num_features = gy.shape[1]
    gw = np.zeros((int(num_embeddings), num_features), dtype=dtype)
    per_line = tuning.CACHE_LINE_BYTES // gy.itemsize  # elements in a cache line
    lines = -(-num_features // per_line)
    chunks = [
        (min(num_features, a * per_line), min(num_features, b * per_line))
        for a, b in _chunks(lines, per_line * ids.shape[0])
    ]
    _run(_embedding_backward_kernel, chunks, ids, gy, gw)
    return gw
