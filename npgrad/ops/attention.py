r"""Attention primitives: scaled dot-product attention and multi-head attention.

Shapes: B batch, H heads, Lq query length, Lk key length, D head size (Dv for values),
C = H * D model width; "lead" is any tuple of leading (batch) axes, flattened to one axis for
the kernels.

Fully masked rows (a query with no allowed key, e.g. a padding query whose keys are all
padding): policy "zeros". The row's attention weights are all 0, so its output is 0 (plus the
output bias in multi-head attention), and every gradient through it is 0 and finite, never NaN.
(PyTorch's math backend gives NaN there.) Such rows carry no information and are normally ignored
by the loss (ignore_index), so a 0 is the useful answer.

Dropout on the attention weights (training and dropout_p > 0): P' = P * M / (1 - p) with
M ~ Bernoulli(1 - p) drawn from the given ``np.random.Generator``; the output is P' V. It is
computed here with the reference math (the kernels have no dropout): probabilities from the
kernel, then the products and their backward below.
"""

from __future__ import annotations

import math

import numpy as np

from ..function import Function, TensorBase, TensorLike, TensorResult
from ..kernels import K
from .elementwise import _keep_mask, default_rng
from .shape import stack
from .softmax import as_float_array, softmax


# ------------------------------------------------------------------------------ shared math


def _check_dropout(op, dropout_p, training, rng):
    dropout_p = float(dropout_p)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{op}: dropout_p must be in [0, 1], got {dropout_p}")
    if not training or dropout_p == 0.0:
        return 0.0, None
    if rng is None:
        rng = default_rng()  # seeded; ng.manual_seed reseeds it
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{op}: rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return dropout_p, rng


def _mask_array(op, mask, expected_shape):
    """The boolean mask broadcast (a view, no copy) to ``expected_shape``, or None; clear errors."""
    if mask is None:
        return None
    if isinstance(mask, TensorBase):
        mask = mask.data
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{op}: mask must be boolean (True = may attend), got dtype {mask.dtype}")
    try:
        return np.broadcast_to(mask, expected_shape)
    except ValueError:
        raise ValueError(
            f"{op}: mask of shape {mask.shape} does not broadcast to the expected shape {tuple(expected_shape)}"
        ) from None


def _attention_core_forward(q, k, v, mask, is_causal, scale, dropout_p, rng):
    """(B,Lq,D),(B,Lk,D),(B,Lk,Dv),(B,Lq,Lk)|None -> out (B,Lq,Dv), probs (B,Lq,Lk), keep (B,Lq,Lk)|None"""
    out, probs = K.attention_forward(q, k, v, mask, is_causal, scale)
    if dropout_p == 0.0:
        return out, probs, None
    keep = _keep_mask(rng, probs.shape, dropout_p)  # (B,Lq,Lk) bool, P(keep) = 1 - p
    out = np.matmul(_dropped(probs, keep, dropout_p), v)  # the kernel's P V is replaced
    return out, probs, keep


def _dropped(probs, keep, dropout_p):
    """P' = P * M / (1 - p) (all zeros when p = 1)."""
    dropped = probs * keep
    dropped *= 0.0 if dropout_p == 1.0 else 1.0 / (1.0 - dropout_p)
    return dropped


def _attention_core_backward(q, k, v, probs, keep, dropout_p, gout, scale):
    """Gradients of _attention_core_forward: -> gq (B,Lq,D), gk (B,Lk,D), gv (B,Lk,Dv)."""
    if keep is None:
        return K.attention_backward(q, k, v, probs, gout, scale)
    keep_scale = _dropped(np.ones_like(probs), keep, dropout_p)  # (B,Lq,Lk) M / (1 - p)
    return _attention_vjp(q, k, v, probs, keep_scale, gout, scale)


def _attention_vjp(q, k, v, probs, keep_scale, gout, scale):
    """The attention VJP written once for ndarrays and Tensors alike (only @ * - sum swapaxes).

    With P' = P * keep_scale (keep_scale None: P' = P):
        gv = P'^T gout;  dP' = gout v^T;  dP = dP' * keep_scale;
        dS = P * (dP - rowsum(dP * P));  gq = scale dS k;  gk = scale dS^T q.
    """
    dropped = probs if keep_scale is None else probs * keep_scale
    gv = dropped.swapaxes(-1, -2) @ gout
    dP = gout @ v.swapaxes(-1, -2)
    if keep_scale is not None:
        dP = dP * keep_scale
    dS = probs * (dP - (dP * probs).sum(axis=-1, keepdims=True))
    gq = (dS @ k) * scale
    gk = (dS.swapaxes(-1, -2) @ q) * scale
    return gq, gk, gv


def _allowed_keys(mask, is_causal, scores_shape):
    """Boolean array of ``scores_shape`` (..., Lq, Lk): True where key j is allowed for query i."""
    num_queries, num_keys = scores_shape[-2:]
    allowed = np.ones(scores_shape, dtype=bool) if mask is None else np.broadcast_to(mask, scores_shape)
    if is_causal:
        allowed = allowed & np.tri(num_queries, num_keys, dtype=bool)
    return allowed


def _attention_probs_tensor(q, k, mask, is_causal, scale):
    """P = masked softmax(scale q k^T) as a graph of Tensor ops (for create_graph).

    The row shift is a constant (softmax does not depend on it, so its derivative is exact);
    disallowed scores are multiplied by 0 before exp (no overflow) and their exp by 0 after,
    and a fully masked row divides 0 by 1: zeros, as in the kernel.
    """
    scores = (q @ k.swapaxes(-1, -2)) * scale  # (..., Lq, Lk)
    if mask is None and not is_causal:
        return softmax(scores, axis=-1)
    allowed = _allowed_keys(mask, is_causal, scores.shape)
    allowed_f = allowed.astype(scores.dtype)
    with np.errstate(invalid="ignore"):
        shift = np.where(allowed, scores.data, -np.inf).max(axis=-1, keepdims=True)
    fully_masked = shift == -np.inf
    shift[fully_masked] = 0.0
    exps = ((scores - shift) * allowed_f).exp() * allowed_f
    return exps / (exps.sum(axis=-1, keepdims=True) + fully_masked.astype(scores.dtype))


# ------------------------------------------------------------------- scaled dot-product attention


class ScaledDotProductAttention(Function):
    r"""out = softmax(scale q k^T + mask) v over leading axes; scale = 1/sqrt(D) by default.

    Forward (per leading index): S = scale q k^T (Lq, Lk); disallowed keys (mask False, or j > i
    with is_causal) are excluded; P = softmax of each row over the allowed keys (0 elsewhere;
    a fully masked row is all 0); P' = P, or P * M / (1 - p) with dropout; out = P' v.

    Backward, with g = dL/dout:
        dL/dv  = P'^T g                                   (out is linear in v)
        dL/dP' = g v^T,  dL/dP = dL/dP' * M / (1 - p)     (dropout is a fixed elementwise scale)
        dL/dS  = P * (dL/dP - rowsum(dL/dP * P))          (softmax VJP per row, see Softmax;
                                                           disallowed entries have P = 0, so 0)
        dL/dq  = scale dL/dS k,   dL/dk = scale dL/dS^T q  (S = scale q k^T is bilinear)
    Broadcast leading axes of q, k, v get their gradients summed back by the engine.
    backward runs the kernel K.attention_backward (or _attention_vjp with dropout) on the saved P;
    differentiable_backward recomputes P in the graph and runs _attention_vjp, the same VJP on Tensors.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask=None, is_causal=False, scale=None, dropout_p=0.0, rng=None):
        op = "scaled_dot_product_attention"
        q, k, v = (as_float_array(op, a, name) for a, name in ((q, "q"), (k, "k"), (v, "v")))
        for a, name in ((q, "q"), (k, "k"), (v, "v")):
            if a.ndim < 2:
                raise ValueError(f"{op}: {name} must have at least 2 axes (..., L, D), got shape {a.shape}")
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(f"{op}: q of shape {q.shape} and k of shape {k.shape} must have the same last axis (D)")
        if k.shape[-2] != v.shape[-2]:
            raise ValueError(
                f"{op}: k of shape {k.shape} and v of shape {v.shape} must have the same number of keys (axis -2)"
            )
        try:
            lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        except ValueError:
            raise ValueError(
                f"{op}: the leading axes of q {q.shape}, k {k.shape} and v {v.shape} do not broadcast"
            ) from None
        (num_queries, head_size), num_keys, value_size = q.shape[-2:], k.shape[-2], v.shape[-1]
        batch = math.prod(lead)
        scale = 1.0 / math.sqrt(head_size) if scale is None else float(scale)
        mask = _mask_array(op, mask, lead + (num_queries, num_keys))

        # (B,Lq,D), (B,Lk,D), (B,Lk,Dv), (B,Lq,Lk): views unless broadcasting forces a copy. An input
        # that already has the leading axes is not passed through broadcast_to: its read-only view would
        # make the Numba kernels copy even a contiguous input (they take writeable arrays only).
        def rows(a, length, size):
            full = a if a.shape[:-2] == lead else np.broadcast_to(a, lead + a.shape[-2:])
            return full.reshape(batch, length, size)

        q3, k3, v3 = rows(q, num_queries, head_size), rows(k, num_keys, head_size), rows(v, num_keys, value_size)
        mask3 = None if mask is None else mask.reshape(batch, num_queries, num_keys)
        out, probs, keep = _attention_core_forward(q3, k3, v3, mask3, is_causal, scale, dropout_p, rng)

        ctx.save_for_backward(q, k, v, q3, k3, v3, probs, keep)
        ctx.lead, ctx.scale, ctx.dropout_p = lead, scale, dropout_p
        ctx.mask, ctx.is_causal = mask, is_causal
        return out.reshape(lead + (num_queries, value_size))

    @staticmethod
    def backward(ctx, g):
        q, k, v, q3, k3, v3, probs, keep = ctx.saved
        g3 = g.reshape(v3.shape[0], q3.shape[1], v3.shape[2])
        gq, gk, gv = _attention_core_backward(q3, k3, v3, probs, keep, ctx.dropout_p, g3, ctx.scale)
        lead = ctx.lead
        return (gq.reshape(lead + q.shape[-2:]), gk.reshape(lead + k.shape[-2:]), gv.reshape(lead + v.shape[-2:]))

    @staticmethod
    def differentiable_backward(ctx, g):
        q, k, v, _, _, _, _, keep = ctx.saved_tensors
        probs = _attention_probs_tensor(q, k, ctx.mask, ctx.is_causal, ctx.scale)
        keep_scale = None
        if keep is not None:
            keep_scale = _dropped(np.ones(keep.shape, dtype=probs.dtype), keep.data, ctx.dropout_p)
            keep_scale = keep_scale.reshape(probs.shape)
        return _attention_vjp(q, k, v, probs, keep_scale, g, ctx.scale)


def scaled_dot_product_attention(
    q: TensorLike,
    k: TensorLike,
    v: TensorLike,
    mask: TensorLike | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    rng: np.random.Generator | None = None,
    training: bool = True,
) -> TensorResult:
    """softmax(q k^T * scale, over allowed keys) v.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> (..., Lq, Dv); leading axes broadcast.
    ``mask``: boolean, broadcastable to (..., Lq, Lk), True = may attend. ``is_causal=True``
    additionally forbids key j > query i (aligned at the start); with a mask, both apply.
    ``scale`` defaults to 1/sqrt(D). ``dropout_p`` drops attention weights when ``training``
    (rescaling by 1/(1-p)), drawing from ``rng`` (a np.random.Generator; a fresh one if None).
    A query with no allowed key gets output 0 and zero gradients (never NaN).
    """
    dropout_p, rng = _check_dropout("scaled_dot_product_attention", dropout_p, training, rng)
    return ScaledDotProductAttention.apply(
        q, k, v, mask=mask, is_causal=bool(is_causal), scale=scale, dropout_p=dropout_p, rng=rng
    )


# -------------------------------------------------------------------------- multi-head attention


def _split_heads(y, batch, length, num_heads):
    """(B*L, C) or (B, L, C) -> (B, H, L, D): head h takes features h*D..(h+1)*D-1 (ndarray or Tensor)."""
    head_size = y.shape[-1] // num_heads
    return y.reshape((batch, length, num_heads, head_size)).transpose(0, 2, 1, 3)


def _merge_heads(y):
    """(B, H, L, D) -> (B, L, C): the inverse of _split_heads (ndarray or Tensor)."""
    batch, num_heads, length, head_size = y.shape
    return y.transpose(0, 2, 1, 3).reshape((batch, length, num_heads * head_size))


def _project(x_rows, w, b):
    """x @ w + b on rows.   (N,C) -> (N,C)"""
    y = x_rows @ w
    if b is not None:
        y += b
    return y


class MultiHeadAttention(Function):
    r"""Multi-head attention as one primitive: projections, H heads of attention, output projection.

    Forward (rows flattened: query (B*Lq, C), key/value (B*Lk, C); weights (C, C) applied as x @ w):
        Q = query w_q + b_q,  K = key w_k + b_k,  V = value w_v + b_v
        Q_h, K_h, V_h = head h's D columns of Q, K, V, reshaped (B, H, L, D)
        O_h = attention(Q_h, K_h, V_h)          (ScaledDotProductAttention, scale 1/sqrt(D))
        A = concat_h O_h  (B*Lq, C);   out = A w_o + b_o

    Backward, g = dL/dout (B*Lq, C); each step is the VJP of one line above, in reverse:
        dL/dw_o = A^T g,  dL/db_o = sum_rows g,  dL/dA = g w_o^T
        dL/dO_h = head h's columns of dL/dA
        dL/dQ_h, dL/dK_h, dL/dV_h = attention VJP (see ScaledDotProductAttention)
        dL/dQ = concat_h dL/dQ_h, etc.
        dL/dw_q = query^T dL/dQ,  dL/db_q = sum_rows dL/dQ,  dL/dquery = dL/dQ w_q^T   (same for k, v)
    (A linear map Y = X W + b has VJPs dX = dY W^T, dW = X^T dY, db = sum_rows dY.) When the same
    tensor is passed as query, key and value (self-attention), the engine sums its three gradients.
    backward uses the kernels and the saved heads; differentiable_backward recomputes the projections
    and P in the graph (the saved heads would be constants there) and runs the same VJPs on Tensors.
    """

    @staticmethod
    def forward(
        ctx,
        query,
        key,
        value,
        w_q,
        w_k,
        w_v,
        w_o,
        b_q,
        b_k,
        b_v,
        b_o,
        num_heads=1,
        mask=None,
        is_causal=False,
        dropout_p=0.0,
        rng=None,
    ):
        query, key, value = _check_mha_inputs(query, key, value, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, num_heads)
        batch, num_queries, width = query.shape
        num_keys = key.shape[1]
        head_size = width // num_heads
        scale = 1.0 / math.sqrt(head_size)
        mask = _mask_array("multi_head_attention", mask, (batch, num_heads, num_queries, num_keys))

        def heads(x, w, b, length):  # (B, L, C) -> (B*H, L, D) contiguous for the kernels
            return _split_heads(_project(x.reshape(-1, width), w, b), batch, length, num_heads).reshape(
                batch * num_heads, length, head_size
            )

        q_heads = heads(query, w_q, b_q, num_queries)  # (B*H, Lq, D)
        k_heads = heads(key, w_k, b_k, num_keys)  # (B*H, Lk, D)
        v_heads = heads(value, w_v, b_v, num_keys)  # (B*H, Lk, D)
        mask3 = None if mask is None else mask.reshape(batch * num_heads, num_queries, num_keys)
        o_heads, probs, keep = _attention_core_forward(
            q_heads, k_heads, v_heads, mask3, is_causal, scale, dropout_p, rng
        )
        concat = _merge_heads(o_heads.reshape(batch, num_heads, num_queries, head_size))
        concat = concat.reshape(batch * num_queries, width)  # (B*Lq, C)
        out = _project(concat, w_o, b_o)

        zeros = np.zeros(width, dtype=query.dtype)  # stands in for absent biases
        ctx.save_for_backward(
            query,
            key,
            value,
            w_q,
            w_k,
            w_v,
            w_o,
            *(zeros if b is None else b for b in (b_q, b_k, b_v, b_o)),
            q_heads,
            k_heads,
            v_heads,
            probs,
            concat,
            *(() if keep is None else (keep,)),
        )
        # keep (the dropout mask) is saved only when there is one: a None among the saved arrays
        # would be mistaken for an absent (None) bias argument by Context.saved_tensors.
        ctx.num_heads, ctx.scale, ctx.dropout_p = num_heads, scale, dropout_p
        ctx.mask, ctx.is_causal = mask, is_causal
        return out.reshape(batch, num_queries, width)

    @staticmethod
    def backward(ctx, g):
        (query, key, value, w_q, w_k, w_v, w_o, _, _, _, _, q_heads, k_heads, v_heads, probs, concat, *keep) = ctx.saved
        keep = keep[0] if keep else None
        needs = ctx.needs_input_grad
        batch, num_queries, width = query.shape
        num_heads = ctx.num_heads
        g_rows = g.reshape(-1, width)  # (B*Lq, C)

        g_w_o = concat.T @ g_rows if needs[6] else None
        g_b_o = g_rows.sum(axis=0) if needs[10] else None
        g_concat = g_rows @ w_o.T  # (B*Lq, C)
        g_o_heads = _split_heads(g_concat, batch, num_queries, num_heads).reshape(q_heads.shape)
        g_heads = _attention_core_backward(q_heads, k_heads, v_heads, probs, keep, ctx.dropout_p, g_o_heads, ctx.scale)

        grads = [None] * 11
        grads[6], grads[10] = g_w_o, g_b_o
        for i, (x, w, g_h) in enumerate(zip((query, key, value), (w_q, w_k, w_v), g_heads)):
            if not (needs[i] or needs[3 + i] or needs[7 + i]):
                continue
            length = x.shape[1]
            g_proj = _merge_heads(g_h.reshape(batch, num_heads, length, -1)).reshape(-1, width)  # (B*L, C)
            if needs[i]:
                grads[i] = (g_proj @ w.T).reshape(x.shape)
            if needs[3 + i]:
                grads[3 + i] = x.reshape(-1, width).T @ g_proj
            if needs[7 + i]:
                grads[7 + i] = g_proj.sum(axis=0)
        return tuple(grads)

    @staticmethod
    def differentiable_backward(ctx, g):
        # The same VJPs with Tensor ops on (B, H, L, D) heads; the projections are recomputed in the
        # graph so that second derivatives see how Q, K, V and P depend on the inputs.
        (query, key, value, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, _, _, _, _, _, *keep) = ctx.saved_tensors
        keep = keep[0] if keep else None
        batch, num_queries, width = query.shape
        num_keys, num_heads = key.shape[1], ctx.num_heads

        q_heads = _split_heads(query @ w_q + b_q, batch, num_queries, num_heads)  # (B, H, Lq, D)
        k_heads = _split_heads(key @ w_k + b_k, batch, num_keys, num_heads)  # (B, H, Lk, D)
        v_heads = _split_heads(value @ w_v + b_v, batch, num_keys, num_heads)  # (B, H, Lk, D)
        probs = _attention_probs_tensor(q_heads, k_heads, ctx.mask, ctx.is_causal, ctx.scale)
        keep_scale = None
        if keep is not None:
            keep_scale = _dropped(np.ones(keep.shape, dtype=probs.dtype), keep.data, ctx.dropout_p)
            keep_scale = keep_scale.reshape(probs.shape)
        dropped = probs if keep_scale is None else probs * keep_scale
        concat = _merge_heads(dropped @ v_heads)  # (B, Lq, C)

        g_rows = g.reshape((batch * num_queries, width))
        g_w_o = concat.reshape((batch * num_queries, width)).T @ g_rows
        g_b_o = g_rows.sum(axis=0)
        g_o_heads = _split_heads(g @ w_o.T, batch, num_queries, num_heads)
        g_heads = _attention_vjp(q_heads, k_heads, v_heads, probs, keep_scale, g_o_heads, ctx.scale)
        grads = [None] * 11
        grads[6], grads[10] = g_w_o, g_b_o
        for i, (x, w, g_h) in enumerate(zip((query, key, value), (w_q, w_k, w_v), g_heads)):
            g_proj = _merge_heads(g_h)  # (B, L, C)
            grads[i] = g_proj @ w.T
            grads[3 + i] = x.reshape((-1, width)).T @ g_proj.reshape((-1, width))
            grads[7 + i] = g_proj.reshape((-1, width)).sum(axis=0)
        return tuple(grads)


def _check_mha_inputs(query, key, value, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, num_heads):
    op = "multi_head_attention"
    query, key, value = (as_float_array(op, a, name) for a, name in ((query, "query"), (key, "key"), (value, "value")))
    if query.ndim != 3:
        raise ValueError(f"{op}: query must have shape (B, Lq, C), got {query.shape}")
    batch, _, width = query.shape
    if key.ndim != 3 or key.shape[0] != batch or key.shape[2] != width:
        raise ValueError(f"{op}: key must have shape (B={batch}, Lk, C={width}), got {key.shape}")
    if value.shape != key.shape:
        raise ValueError(f"{op}: value must have the shape of key {key.shape}, got {value.shape}")
    if not isinstance(num_heads, (int, np.integer)) or num_heads < 1 or width % num_heads:
        raise ValueError(f"{op}: num_heads={num_heads!r} must be a positive integer dividing the model width {width}")
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("w_o", w_o)):
        if np.shape(w) != (width, width):
            raise ValueError(f"{op}: {name} must have shape ({width}, {width}), got {np.shape(w)}")
    for name, b in (("b_q", b_q), ("b_k", b_k), ("b_v", b_v), ("b_o", b_o)):
        if b is not None and np.shape(b) != (width,):
            raise ValueError(f"{op}: {name} must have shape ({width},) or be None, got {np.shape(b)}")
    return query, key, value


def multi_head_attention(
    query: TensorLike,
    key: TensorLike,
    value: TensorLike,
    num_heads: int,
    w_q: TensorLike,
    w_k: TensorLike,
    w_v: TensorLike,
    w_o: TensorLike,
    b_q: TensorLike | None = None,
    b_k: TensorLike | None = None,
    b_v: TensorLike | None = None,
    b_o: TensorLike | None = None,
    mask: TensorLike | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    rng: np.random.Generator | None = None,
    training: bool = True,
) -> TensorResult:
    """Multi-head attention: out = concat_h attention(query w_q + b_q, key w_k + b_k, value w_v + b_v)_h w_o + b_o.

    query (B, Lq, C), key and value (B, Lk, C); weights (C, C) applied as x @ w, biases (C,) or
    None; heads split from the last axis in order (head h = features h*D..(h+1)*D-1, D = C / H).
    ``mask``: boolean, broadcastable to (B, H, Lq, Lk), True = may attend (a (B, 1, 1, Lk) padding
    mask or an (Lq, Lk) causal mask both work). ``is_causal``, ``dropout_p``, ``rng``, ``training``
    as in :func:`scaled_dot_product_attention`. Returns (B, Lq, C).
    """
    dropout_p, rng = _check_dropout("multi_head_attention", dropout_p, training, rng)
    return MultiHeadAttention.apply(
        query,
        key,
        value,
        w_q,
        w_k,
        w_v,
        w_o,
        b_q,
        b_k,
        b_v,
        b_o,
        num_heads=num_heads,
        mask=mask,
        is_causal=bool(is_causal),
        dropout_p=dropout_p,
        rng=rng,
    )


# ----------------------------------------------------------------- packed self-attention (fused q/k/v)


def _packed_heads(qkv, batch, length, num_heads):
    """(B, L, 3C) -> (3, B, H, L, D) view: part p (0 q, 1 k, 2 v), head h = columns p*C + h*D .. + D-1."""
    head_size = qkv.shape[-1] // (3 * num_heads)
    return qkv.reshape((batch, length, 3, num_heads, head_size)).transpose(2, 0, 3, 1, 4)


class PackedSelfAttention(Function):
    r"""Multi-head self-attention on a packed q/k/v projection: (B, L, 3C) -> merged heads (B, L, C).

    qkv is the output of one fused projection x @ [w_q | w_k | w_v] laid out as [q | k | v] along
    the last axis, heads in order within each part. With the head split
        split(qkv)[p, b, h, i, d] = qkv[b, i, p C + h D + d]        (p = 0 q, 1 k, 2 v)
    and the head merge  merge(O)[b, i, h D + d] = O[b, h, i, d], the forward is
        out = merge(attention(split(qkv)[0], split(qkv)[1], split(qkv)[2]))
    with attention per (b, h) as in ScaledDotProductAttention (mask, causal order, dropout).

    Backward, g = dL/dout (B, L, C). split and merge are permutations of entries (each output entry
    is exactly one input entry), so their VJPs are the inverse permutations:
        dL/dO = merge^{-1}(g) = g reshaped (B, L, H, D), transposed to (B, H, L, D)
        dL/dQ, dL/dK, dL/dV = attention VJP at dL/dO (see ScaledDotProductAttention)
        dL/dqkv = split^{-1}(stack(dL/dQ, dL/dK, dL/dV)): each of the three lands in its own
                  columns of one (B, L, 3C) buffer.
    Every entry of qkv feeds exactly one of Q, K, V, so the buffer is written once per entry: no
    zero-filled scatter per part and no sum of three full-size gradients, which is what splitting
    with three index ops costs. (That in-place buffer is arrays-only: differentiable_backward builds
    the same gradient with stack + transpose + reshape, P recomputed in the graph.)
    """

    @staticmethod
    def forward(ctx, qkv, num_heads=1, mask=None, is_causal=False, scale=None, dropout_p=0.0, rng=None):
        op = "packed_self_attention"
        qkv = as_float_array(op, qkv, "qkv")
        if qkv.ndim != 3:
            raise ValueError(f"{op}: qkv must have shape (B, L, 3C), got {qkv.shape}")
        batch, length, packed_width = qkv.shape
        if not isinstance(num_heads, (int, np.integer)) or num_heads < 1 or packed_width % (3 * num_heads):
            raise ValueError(
                f"{op}: num_heads={num_heads!r} must be a positive integer and 3 * num_heads must "
                f"divide the packed width {packed_width} (qkv of shape {qkv.shape})"
            )
        head_size = packed_width // (3 * num_heads)
        scale = 1.0 / math.sqrt(head_size) if scale is None else float(scale)
        mask = _mask_array(op, mask, (batch, num_heads, length, length))

        # One copy into the kernels' layout; q, k, v are contiguous (B*H, L, D) views of it.
        heads = np.ascontiguousarray(_packed_heads(qkv, batch, length, num_heads))  # (3, B, H, L, D)
        q3, k3, v3 = (heads[p].reshape(batch * num_heads, length, head_size) for p in range(3))
        mask3 = None if mask is None else mask.reshape(batch * num_heads, length, length)
        out, probs, keep = _attention_core_forward(q3, k3, v3, mask3, is_causal, scale, dropout_p, rng)

        ctx.save_for_backward(qkv, heads, probs, *(() if keep is None else (keep,)))
        ctx.num_heads, ctx.scale, ctx.dropout_p = num_heads, scale, dropout_p
        ctx.mask, ctx.is_causal = mask, is_causal
        return _merge_heads(out.reshape(batch, num_heads, length, head_size))  # (B, L, C)

    @staticmethod
    def backward(ctx, g):
        qkv, heads, probs, *keep = ctx.saved
        keep = keep[0] if keep else None
        _, batch, num_heads, length, head_size = heads.shape
        q3, k3, v3 = (heads[p].reshape(batch * num_heads, length, head_size) for p in range(3))
        g_heads = _split_heads(g, batch, length, num_heads)  # (B, H, L, D) view
        g3 = np.ascontiguousarray(g_heads).reshape(q3.shape)  # (B*H, L, D)
        grads = _attention_core_backward(q3, k3, v3, probs, keep, ctx.dropout_p, g3, ctx.scale)

        g_qkv = np.empty(qkv.shape, dtype=qkv.dtype)  # (B, L, 3C)
        g_parts = _packed_heads(g_qkv, batch, length, num_heads)  # (3, B, H, L, D) view
        for p, g_part in enumerate(grads):  # each column once
            g_parts[p] = g_part.reshape(batch, num_heads, length, head_size)
        return g_qkv

    @staticmethod
    def differentiable_backward(ctx, g):
        # The same VJP with Tensor ops: split (views + index), attention VJP with the probabilities
        # recomputed in the graph, then the inverse permutation (stack + transpose + reshape).
        qkv, *_ = ctx.saved_tensors
        batch, length, packed_width = qkv.shape
        num_heads = ctx.num_heads
        parts = _packed_heads(qkv, batch, length, num_heads)  # (3, B, H, L, D)
        q, k, v = parts[0], parts[1], parts[2]
        probs = _attention_probs_tensor(q, k, ctx.mask, ctx.is_causal, ctx.scale)  # (B, H, L, L)
        keep_scale = None
        if len(ctx.saved) > 3:
            keep = ctx.saved[3]
            keep_scale = _dropped(np.ones(keep.shape, dtype=probs.dtype), keep, ctx.dropout_p)
            keep_scale = keep_scale.reshape(probs.shape)
        g_heads = _split_heads(g, batch, length, num_heads)  # (B, H, L, D)
        g_q, g_k, g_v = _attention_vjp(q, k, v, probs, keep_scale, g_heads, ctx.scale)
        g_parts = stack([g_q, g_k, g_v], axis=0)  # (3, B, H, L, D)
        return g_parts.transpose(1, 3, 0, 2, 4).reshape((batch, length, packed_width))


def packed_self_attention(
    qkv: TensorLike,
    num_heads: int,
    mask: TensorLike | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    rng: np.random.Generator | None = None,
    training: bool = True,
) -> TensorResult:
    """Multi-head self-attention on a fused q/k/v projection, before the output projection.

    qkv (B, L, 3C): [q | k | v] along the last axis (as ``x @ w_qkv`` with w_qkv (C, 3C) = [w_q | w_k | w_v]),
    head h of each part = its features h*D..(h+1)*D-1, D = C / H. Returns the merged heads (B, L, C):
    concat_h softmax(scale q_h k_h^T, over allowed keys) v_h. ``mask``: boolean, broadcastable to
    (B, H, L, L), True = may attend (a (B, 1, 1, L) padding mask, an (L, L) mask); ``is_causal``,
    ``scale`` (default 1/sqrt(D)), ``dropout_p``, ``rng``, ``training`` as in
    :func:`scaled_dot_product_attention`. Equal to splitting qkv into heads, calling
    scaled_dot_product_attention and merging, with a backward that writes the q, k and v gradients
    into one (B, L, 3C) buffer.
    """
    dropout_p, rng = _check_dropout("packed_self_attention", dropout_p, training, rng)
    return PackedSelfAttention.apply(
        qkv, num_heads=num_heads, mask=mask, is_causal=bool(is_causal), scale=scale, dropout_p=dropout_p, rng=rng
    )
