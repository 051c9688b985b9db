"""Float32 gradients equal float64 gradients to float32 round-off, for every fused primitive, on both backends.

Training runs in float32, but gradcheck checks derivatives in float64 (finite differences in float32
keep only 3-4 digits). This closes the gap: the same inputs, rounded to float32 once, go through the op
in float32 and in float64, and the float32 output and gradients must match the float64 ones within
``ulps * eps32 * sqrt(terms) * scale`` (npgrad.testing.assert_float32_matches_float64). The scale is the
magnitude of the terms that are summed into a result: the result's own magnitude, or, where the result
cancels (log_softmax's x - lse, cross-entropy's p - q, layer norm's centring, a dot product of mixed signs),
the magnitude of what cancels, computed below from the float64 inputs. A float32-only slip of 0.1% (some
8000 eps32) fails: see test_a_float32_only_error_is_caught (the helper's own tests are in test_testing.py).

Shapes are small and drawn by hypothesis; values are moderate (attention logits within a few units) so that
the magnitudes below bound the round-off without being loose. Inputs never hold -inf.
"""

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad.ops.loss import CrossEntropy
from npgrad.ops.norm import LayerNorm
from npgrad.testing import (
    assert_float32_matches_float64,
    attention_masks,
    axes,
    class_targets,
    float_arrays,
    shapes,
)

try:
    import numba  # noqa: F401

    BACKENDS = ["numpy", "numba"]
except ImportError:  # pragma: no cover - depends on the machine
    BACKENDS = ["numpy"]

# Legend: N rows, V classes, C features, B batch, H heads, Lq/Lk lengths, D head size.


def _f32(data, shape, low=-3.0, high=3.0):
    """A float32 array with values in [low, high] (uniform from a drawn seed: never degenerate)."""
    return data.draw(float_arrays(shape=shape, dtype=np.float32, min_value=low, max_value=high, from_seed=True))


def _abs_max(a):
    return float(np.max(np.abs(a))) if np.size(a) else 0.0


def _abs_product(a, b):
    """max (|a| @ |b|): the magnitude of the terms summed into the entries of a @ b."""
    a, b = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    return _abs_max(a @ b)


# ------------------------------------------------------------------------------ cases
# Each builder draws one example: (fn, inputs, upstream gradient g, scales for the cancelling results[, other
# keyword arguments of assert_float32_matches_float64]).


def _softmax(data):
    shape = data.draw(shapes(max_dims=3, max_side=5))
    axis = data.draw(axes(len(shape), allow_none=False, allow_tuple=False))
    x, g = _f32(data, shape), _f32(data, shape, -1.0, 1.0)
    # g_x = y (g - <g, y>): g - <g, y> cancels; its terms are of size |g| (y <= 1).
    return (lambda t: F.softmax(t, axis=axis)), [x], g, {0: _abs_max(g)}


def _log_softmax(data):
    shape = data.draw(shapes(max_dims=3, max_side=5))
    axis = data.draw(axes(len(shape), allow_none=False, allow_tuple=False))
    x, g = _f32(data, shape), _f32(data, shape, -1.0, 1.0)
    # out = x - lse (|lse| <= max|x| + log V) and g_x = g - exp(out) sum(g) both cancel.
    lse_bound = _abs_max(x) + np.log(shape[axis])
    return (
        (lambda t: F.log_softmax(t, axis=axis)),
        [x],
        g,
        {"output": _abs_max(x) + lse_bound, 0: _abs_max(g) + _abs_max(np.sum(g, axis=axis))},
    )


def _cross_entropy(data):
    lead = data.draw(shapes(min_dims=1, max_dims=2, max_side=4))
    num_classes = data.draw(st.integers(1, 6))
    ignore_index = data.draw(st.sampled_from([-100, 0]))
    target = data.draw(
        class_targets(shape=lead, num_classes=num_classes, ignore_index=ignore_index, ignore_fraction=0.5)
    )
    smoothing = data.draw(st.sampled_from([0.0, 0.1, 1.0]))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    x = _f32(data, lead + (num_classes,), -5.0, 5.0)
    g = _f32(data, lead if reduction == "none" else (), -1.0, 1.0)

    def fn(t):
        return F.cross_entropy(t, target, ignore_index=ignore_index, label_smoothing=smoothing, reduction=reduction)

    # loss_n = lse - (1 - eps) x_t - eps mean(x) cancels (to 0 for V = 1): terms |lse| + |x| per row, summed
    # for "sum"; g_x = gloss (p - q) with p, q in [0, 1] cancels (p = q = 1 for V = 1): terms |gloss|.
    rows = int(np.prod(lead))
    per_row = 2 * _abs_max(x) + np.log(num_classes)
    return fn, [x], g, {"output": per_row * (rows if reduction == "sum" else 1), 0: _abs_max(g)}


def _layer_norm_options(s, w, b, g, magnitude=None, eps=1e-5):
    """Scales and terms for layer norm at s (float64; ``magnitude`` = |s| unless s was itself a rounded sum).

    Centring s - mean cancels: xhat's round-off is relative to (|s| + |mean|) rstd, not to xhat. Then
    y = xhat w + b may cancel; gx = rstd (h - mean h - xhat mean(h xhat)), h = g w, cancels (to 0 for C = 1),
    with xhat's error entering its last term and rstd's; gw = sum_rows g xhat and gb = sum_rows g sum rows.
    """
    s, g = np.asarray(s, np.float64), np.asarray(g, np.float64)
    magnitude = np.abs(s) if magnitude is None else magnitude
    w = np.ones(s.shape[-1]) if w is None else np.asarray(w, np.float64)
    rows, g_rows = s.reshape(-1, s.shape[-1]), g.reshape(-1, s.shape[-1])
    mean, rstd = rows.mean(axis=-1, keepdims=True), 1.0 / np.sqrt(rows.var(axis=-1, keepdims=True) + eps)
    xhat_terms = _abs_max((magnitude.reshape(rows.shape) + np.abs(mean)) * rstd)
    xhat = _abs_max((rows - mean) * rstd)
    h = _abs_max(g_rows * w)
    return {
        "output": xhat_terms * _abs_max(w) + (0.0 if b is None else _abs_max(b)),
        "gx": _abs_max(rstd) * h * (2.0 + xhat_terms * (1.0 + 2.0 * xhat)),
        "gw": _abs_max(np.abs(g_rows).sum(axis=0)) * xhat_terms,
        "gb": _abs_max(np.abs(g_rows).sum(axis=0)),
    }, {"terms": max(rows.shape)}  # the longest sum: over the features or over the rows


def _layer_norm(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3, max_side=6))
    num_features = shape[-1]
    x, g = _f32(data, shape), _f32(data, shape, -1.0, 1.0)
    affine = data.draw(st.booleans())
    w = _f32(data, (num_features,), 0.5, 2.0) * np.float32(data.draw(st.sampled_from([1, -1]))) if affine else None
    b = _f32(data, (num_features,)) if affine else None
    scales, options = _layer_norm_options(x, w, b, g)
    result_scales = {"output": scales["output"], 0: scales["gx"]}
    if affine:
        result_scales.update({1: scales["gw"], 2: scales["gb"]})
        return (lambda t, w, b: F.layer_norm(t, w, b)), [x, w, b], g, result_scales, options
    return (lambda t: F.layer_norm(t)), [x], g, result_scales, options


def _add_layer_norm(data):
    shape = data.draw(shapes(min_dims=2, max_dims=3, max_side=6))
    num_features = shape[-1]
    x, g = _f32(data, shape), _f32(data, shape, -1.0, 1.0)
    residual = _f32(data, shape[data.draw(st.integers(0, len(shape) - 1)) :])  # broadcast over leading axes
    w, b = _f32(data, (num_features,), 0.5, 2.0), _f32(data, (num_features,))
    # s = x + residual is rounded once in float32: its terms are |x| + |residual|.
    s = x.astype(np.float64) + residual
    scales, options = _layer_norm_options(s, w, b, g, magnitude=np.abs(x) + np.abs(residual.astype(np.float64)))
    copies = x.size // residual.size  # the residual's gradient sums its broadcast copies
    options["terms"] = max(options["terms"], copies)
    return (
        (lambda t, r, w, b: F.add_layer_norm(t, r, w, b)),
        [x, residual, w, b],
        g,
        {"output": scales["output"], 0: scales["gx"], 1: scales["gx"] * copies, 2: scales["gw"], 3: scales["gb"]},
        options,
    )


def _allowed(mask, is_causal, scores_shape):
    lq, lk = scores_shape[-2:]
    allowed = np.ones(scores_shape, bool) if mask is None else np.broadcast_to(mask, scores_shape)
    return allowed & np.tri(lq, lk, dtype=bool) if is_causal else allowed


def _attention_terms(q, k, v, g, terms, allowed, scale, dropout_p):
    """Magnitudes (float64, elementwise) of the terms summed into attention's output and gradients.

    The forward and backward of ScaledDotProductAttention with every factor replaced by its magnitude and
    every difference by a sum: out = P' v; dP = g v^T; dS = P (dP - rowsum(dP P)); gq = scale dS k;
    gk = scale dS^T q; gv = P'^T g, with P' <= P / (1 - p) under dropout. ``q, k`` are the values (for P),
    ``terms`` the magnitudes (q_t, k_t, v_t, g_t) of the terms that made q, k, v and g. (The round-off of
    S = scale q k^T reaches P as a relative error ~ eps |S|: within the allowance for the logits of a few
    units drawn here, so P itself is not inflated.)
    """
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    q_t, k_t, v_t, g_t = (np.abs(np.asarray(a, np.float64)) for a in terms)
    scores = scale * (q @ np.swapaxes(k, -1, -2))
    scores = np.where(allowed, scores, -np.inf)
    shift = scores.max(axis=-1, keepdims=True)
    shift[~np.isfinite(shift)] = 0.0
    exps = np.exp(scores - shift)
    sums = exps.sum(axis=-1, keepdims=True)
    probs = exps / np.where(sums > 0, sums, 1.0)  # fully masked rows: 0
    p_t = probs / (1.0 - dropout_p)
    dp_t = (g_t @ np.swapaxes(v_t, -1, -2)) / (1.0 - dropout_p)
    ds_t = p_t * (dp_t + (dp_t * p_t).sum(axis=-1, keepdims=True))
    return {
        "out": p_t @ v_t,
        "gq": scale * ds_t @ k_t,
        "gk": scale * np.swapaxes(ds_t, -1, -2) @ q_t,
        "gv": np.swapaxes(p_t, -1, -2) @ g_t,
    }


def _scaled_dot_product_attention(data):
    batch = data.draw(shapes(min_dims=1, max_dims=2, max_side=2))
    lq, lk, d, dv = (data.draw(st.integers(1, 4)) for _ in range(4))
    kind = data.draw(st.sampled_from(["none", "random", "padding", "causal", "is_causal"]))
    mask = None
    if kind in ("random", "padding", "causal"):
        mask = data.draw(attention_masks(batch=batch, lq=lq, lk=lk, kind=kind))
    is_causal = kind == "is_causal"
    dropout_p = data.draw(st.sampled_from([0.0, 0.0, 0.3]))
    q, k, v = _f32(data, batch + (lq, d), -2, 2), _f32(data, batch + (lk, d), -2, 2), _f32(data, batch + (lk, dv))
    g = _f32(data, batch + (lq, dv), -1.0, 1.0)

    def fn(q, k, v):
        return F.scaled_dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, dropout_p=dropout_p, rng=np.random.default_rng(3)
        )  # the same dropout mask every run

    t = _attention_terms(
        q, k, v, g, (q, k, v, g), _allowed(mask, is_causal, batch + (lq, lk)), 1 / np.sqrt(d), dropout_p
    )
    return (
        fn,
        [q, k, v],
        g,
        {"output": _abs_max(t["out"]), 0: _abs_max(t["gq"]), 1: _abs_max(t["gk"]), 2: _abs_max(t["gv"])},
    )


def _heads(a, num_heads):
    """(B, L, C) -> (B, H, L, D)."""
    batch, length, width = a.shape
    return a.reshape(batch, length, num_heads, width // num_heads).transpose(0, 2, 1, 3)


def _merged(a):
    """(B, H, L, D) -> (B*L, C)."""
    batch, num_heads, length, head_size = a.shape
    return a.transpose(0, 2, 1, 3).reshape(batch * length, num_heads * head_size)


def _multi_head_attention(data):
    batch, heads, head_size = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    lq, lk = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 3))  # one key: gq = 0 (SDPA draws it)
    width = heads * head_size
    mask = data.draw(st.one_of(st.none(), attention_masks(batch=(batch, 1), lq=lq, lk=lk, kind="padding")))
    is_causal = data.draw(st.booleans())
    query, kv = _f32(data, (batch, lq, width), -1.5, 1.5), _f32(data, (batch, lk, width), -1.5, 1.5)
    w_q, w_k, w_v, w_o = (_f32(data, (width, width), -1, 1) for _ in range(4))
    b_q, b_k, b_v, b_o = (_f32(data, (width,), -1, 1) for _ in range(4))
    g = _f32(data, (batch, lq, width), -1.0, 1.0)

    def fn(query, kv, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o):
        return F.multi_head_attention(
            query, kv, kv, heads, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, mask=mask, is_causal=is_causal
        )

    # The projections x w + b (values, and terms |x| |w| + |b|), attention on the heads, the output projection;
    # each gradient of a projection is a product with the attention gradient's terms.
    a = lambda x: np.abs(x.astype(np.float64))  # noqa: E731
    values = [_heads(x @ w + b, heads) for x, w, b in ((query, w_q, b_q), (kv, w_k, b_k), (kv, w_v, b_v))]
    terms = [_heads(a(x) @ a(w) + a(b), heads) for x, w, b in ((query, w_q, b_q), (kv, w_k, b_k), (kv, w_v, b_v))]
    g_t = _heads(a(g) @ a(w_o).T, heads)
    t = _attention_terms(
        *values, None, terms + [g_t], _allowed(mask, is_causal, (batch, heads, lq, lk)), 1 / np.sqrt(head_size), 0.0
    )
    g_rows = a(g).reshape(-1, width)
    gq, gk, gv = _merged(t["gq"]), _merged(t["gk"]), _merged(t["gv"])
    q_rows, kv_rows = a(query).reshape(-1, width), a(kv).reshape(-1, width)
    return (
        fn,
        [query, kv, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o],
        g,
        {
            "output": _abs_max(_merged(t["out"]) @ a(w_o) + a(b_o)),
            0: _abs_max(gq @ a(w_q).T),
            1: _abs_max(gk @ a(w_k).T + gv @ a(w_v).T),
            2: _abs_max(q_rows.T @ gq),
            3: _abs_max(kv_rows.T @ gk),
            4: _abs_max(kv_rows.T @ gv),
            5: _abs_max(_merged(t["out"]).T @ g_rows),
            6: _abs_max(gq.sum(axis=0)),
            7: _abs_max(gk.sum(axis=0)),
            8: _abs_max(gv.sum(axis=0)),
            9: _abs_max(g_rows.sum(axis=0)),
        },
        {"terms": max(width, batch * lq, batch * lk)},
    )  # the longest sum: a projection or over the rows


def _packed_self_attention(data):
    batch, heads, head_size, length = (
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(1, 3)),
        data.draw(st.integers(1, 4)),
    )
    width = heads * head_size
    kind = data.draw(st.sampled_from(["none", "padding", "is_causal"]))
    mask = (
        data.draw(attention_masks(batch=(batch, 1), lq=length, lk=length, kind="padding"))
        if kind == "padding"
        else None
    )
    is_causal = kind == "is_causal"
    dropout_p = data.draw(st.sampled_from([0.0, 0.3]))
    qkv, g = _f32(data, (batch, length, 3 * width), -2, 2), _f32(data, (batch, length, width), -1.0, 1.0)

    def fn(qkv):
        return F.packed_self_attention(
            qkv, heads, mask=mask, is_causal=is_causal, dropout_p=dropout_p, rng=np.random.default_rng(3)
        )

    q, k, v = (_heads(part, heads) for part in np.split(qkv, 3, axis=-1))
    t = _attention_terms(
        q,
        k,
        v,
        None,
        (q, k, v, _heads(g, heads)),
        _allowed(mask, is_causal, (batch, heads, length, length)),
        1 / np.sqrt(head_size),
        dropout_p,
    )
    return fn, [qkv], g, {"output": _abs_max(t["out"]), 0: max(_abs_max(t[key]) for key in ("gq", "gk", "gv"))}


def _embedding(data):
    num_embeddings, dim = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    ids = data.draw(class_targets(shape=shapes(min_dims=1, max_dims=2, max_side=5), num_classes=num_embeddings))
    weight = _f32(data, (num_embeddings, dim))
    g = _f32(data, ids.shape + (dim,), -1.0, 1.0)
    # dL/dW[v] = sum of the g rows that looked v up: repeated ids sum (and may cancel) |g| terms.
    terms = np.zeros((num_embeddings, dim))
    np.add.at(terms, ids.reshape(-1), np.abs(g.reshape(-1, dim)))
    return (lambda w: F.embedding(ids, w)), [weight], g, {0: _abs_max(terms)}


def _linear(data):
    lead = data.draw(shapes(min_dims=1, max_dims=2, max_side=4))
    c_in, c_out = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    x, w, g = _f32(data, lead + (c_in,)), _f32(data, (c_in, c_out)), _f32(data, lead + (c_out,), -1.0, 1.0)
    x2, g2 = x.reshape(-1, c_in), g.reshape(-1, c_out)
    scales = {0: _abs_product(g2, w.T), 1: _abs_product(x2.T, g2)}  # dot products of mixed signs cancel
    options = {"terms": max(x2.shape + g2.shape)}  # the longest sum: c_in, c_out or rows
    if data.draw(st.booleans()):
        b = _f32(data, (c_out,))
        scales.update({"output": _abs_product(x2, w) + _abs_max(b), 2: _abs_max(np.abs(g2).sum(axis=0))})
        return (lambda x, w, b: F.linear(x, w, b)), [x, w, b], g, scales, options
    scales["output"] = _abs_product(x2, w)
    return (lambda x, w: F.linear(x, w)), [x, w], g, scales, options


def _gelu(data):
    approximate = data.draw(st.sampled_from(["none", "tanh"]))
    x = _f32(data, data.draw(shapes(min_dims=0, max_dims=3, max_side=5)), -6.0, 6.0)
    g = _f32(data, x.shape, -1.0, 1.0)
    # y = x Phi(x) with Phi from a float32 erf that is accurate absolutely (~5e-7), not relatively, in the tail;
    # dy/dx = Phi(x) + x phi(x) likewise: terms of size |x| and |g| (1 + |x|).
    return (
        (lambda t: F.gelu(t, approximate=approximate)),
        [x],
        g,
        {"output": _abs_max(x), 0: _abs_max(np.abs(g) * (1 + np.abs(x)))},
    )


def _dropout(data):
    x = _f32(data, data.draw(shapes(max_dims=3, max_side=5)))
    p = data.draw(st.sampled_from([0.1, 0.5, 0.9]))
    g = _f32(data, x.shape, -1.0, 1.0)
    # A fresh generator with a fixed seed per run: both dtypes drop the same elements.
    return (lambda t: F.dropout(t, p, training=True, rng=np.random.default_rng(11))), [x], g, {}


CASES = {
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "cross_entropy": _cross_entropy,
    "layer_norm": _layer_norm,
    "add_layer_norm": _add_layer_norm,
    "scaled_dot_product_attention": _scaled_dot_product_attention,
    "multi_head_attention": _multi_head_attention,
    "packed_self_attention": _packed_self_attention,
    "embedding": _embedding,
    "linear": _linear,
    "gelu": _gelu,
    "dropout": _dropout,
}


def check_case(name, data, backend):
    fn, inputs, g, scales, *options = CASES[name](data)
    with ng.use_backend(backend):
        assert_float32_matches_float64(fn, inputs, grad_output=g, scales=scales, **(options[0] if options else {}))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_float32_gradients_equal_float64_gradients(name, backend, data):
    check_case(name, data, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, primitive", [("cross_entropy", CrossEntropy), ("layer_norm", LayerNorm)])
def test_a_float32_only_error_is_caught(name, primitive, backend, monkeypatch):
    # A backward that is 0.1% off in float32 only (right in float64, so gradcheck cannot see it).
    right = primitive.backward

    def wrong(ctx, g):
        grad, *others = right(ctx, g)
        return (grad * np.float32(1.001) if grad.dtype == np.float32 else grad, *others)

    monkeypatch.setattr(primitive, "backward", staticmethod(wrong))

    @settings(max_examples=20, deadline=None, database=None, derandomize=True, phases=[Phase.generate])  # no shrinking
    @given(data=st.data())
    def check(data):
        check_case(name, data, backend)

    with pytest.raises(AssertionError, match="the gradient of input 0 differs between float32 and float64"):
        check()
