"""Embedding lookup and its scatter-add gradient.

out[..., :] = W[ids[...], :] gathers rows; the derivative scatters each output row's gradient
back to the row it was read from, summing where an id occurs several times. The scatter lives
in the kernels (``K.embedding_backward``) because it is a hot path of every training step.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..function import Function, TensorBase, TensorLike, TensorResult
from ..kernels import K
from .shape import IndexScatter


def _check_ids(ids, num_embeddings):
    """Integer ids within [0, V); else an error naming the first bad position and value."""
    if ids.dtype.kind not in "iu":
        raise TypeError(
            f"embedding: ids must be an integer array, got dtype {ids.dtype}"
            + (
                " (float ids are refused: round them and convert with .astype(np.int64))"
                if ids.dtype.kind == "f"
                else ""
            )
        )
    if ids.size == 0:
        return
    lo, hi = ids.min(), ids.max()
    if lo < 0 or hi >= num_embeddings:
        bad = np.argwhere((ids < 0) | (ids >= num_embeddings))[0]
        position = tuple(int(i) for i in bad)
        value = int(ids[position])
        raise IndexError(
            f"embedding: id {value} at position {position if ids.ndim != 1 else position[0]} is out of range "
            f"for a table of {num_embeddings} rows (valid ids are 0..{num_embeddings - 1})"
        )


class Embedding(Function):
    r"""out[p, :] = W[ids[p], :] for every position p of ids (any shape); W is (V, C).

    dL/dW[v, :] = \sum_{p : ids[p] = v} g[p, :]   (a scatter-add; rows never looked up get 0).
    ids are data: no gradient. backward runs the kernel K.embedding_backward; differentiable_backward
    is the same scatter as a primitive (shape.IndexScatter), for create_graph.
    """

    @staticmethod
    def forward(ctx, ids, weight):
        if np.ndim(weight) != 2:
            raise ValueError(f"embedding: weight must be 2-D (num_embeddings, dim), got shape {np.shape(weight)}")
        ids = np.asarray(ids)
        _check_ids(ids, weight.shape[0])
        ctx.ids = ids
        return np.take(weight, ids, axis=0)  # ids.shape + (C,)

    @staticmethod
    def backward(ctx, g):
        num_embeddings, dim = ctx.input_shapes[1]
        flat_ids = ctx.ids.reshape(-1).astype(np.int64, copy=False)  # (N,)
        g2 = g.reshape(-1, dim)  # (N, C)
        return None, K.embedding_backward(flat_ids, g2, num_embeddings)

    @staticmethod
    def differentiable_backward(ctx, g):
        # The scatter is linear in g; its own derivative is the gather again (shape.Index).
        return None, IndexScatter.apply(g, key=(ctx.ids,), shape=ctx.input_shapes[1])


def embedding(ids: TensorBase | npt.ArrayLike, weight: TensorLike) -> TensorResult:
    """Rows of ``weight`` (V, C) selected by integer ``ids`` (array or Tensor, any shape) -> ids.shape + (C,)."""
    if isinstance(ids, TensorBase):
        ids = ids.data
    ids = np.asarray(ids)
    return Embedding.apply(ids, weight)
