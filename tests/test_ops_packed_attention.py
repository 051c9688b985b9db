"""F.packed_self_attention: multi-head self-attention on a fused q/k/v projection (B, L, 3C) -> (B, L, C).

It must be the unpacked path (split the projection into heads with views and index ops,
F.scaled_dot_product_attention, merge the heads) in value and in gradient, for every mask kind,
causal order, fully masked rows and dropout; pass finite-difference checks (first and second order,
float64); keep float32; and reject bad inputs with errors in the user's terms.
Legend: B batch, L sequence length, H heads, D head size, C = H D width.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad.testing import assert_gradients_close, attention_masks

FEW = settings(max_examples=max(6, settings().max_examples // 2), deadline=None)


@pytest.fixture(autouse=True, scope="module")
def numpy_backend():
    with ng.use_backend("numpy"):
        yield


def rng(seed=0):
    return np.random.default_rng(seed)


def unpacked_self_attention(qkv, num_heads, **kwargs):
    """The reference: split (B, L, 3C) into q, k, v heads (B, H, L, D), attention, merge to (B, L, C)."""
    batch, length, packed_width = qkv.shape
    head_size = packed_width // (3 * num_heads)
    heads = qkv.reshape(batch, length, 3, num_heads, head_size).transpose(2, 0, 3, 1, 4)  # (3, B, H, L, D)
    out = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], **kwargs)  # (B, H, L, D)
    return out.transpose(0, 2, 1, 3).reshape(batch, length, num_heads * head_size)


def masks(B, H, L):
    """Every mask layout the transformer and users pass, each with at least one fully masked row."""
    padding = np.ones((B, 1, 1, L), bool)
    padding[-1, ..., :] = False  # a whole sequence of padding: every row fully masked
    padding[0, ..., L - 1 :] = False
    random = rng(9).random((B, H, L, L)) < 0.6
    random[0, -1, 1] = False  # one fully masked row in one head
    return {"none": None, "padding": padding, "square": np.tri(L, dtype=bool)[::-1].copy(), "per_head": random}


@pytest.mark.parametrize("mask_kind", ["none", "padding", "square", "per_head"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_equals_the_unpacked_path_forward_and_backward(mask_kind, is_causal, dropout_p):
    B, L, H, D = 3, 5, 2, 3
    qkv = rng(1).standard_normal((B, L, 3 * H * D))
    g = rng(2).standard_normal((B, L, H * D))
    mask = masks(B, H, L)[mask_kind]
    results = []
    for fn in (F.packed_self_attention, unpacked_self_attention):
        x = ng.tensor(qkv, requires_grad=True)
        # the same seed: both draw the same dropout keep-mask of shape (B*H, L, L)
        out = fn(x, H, mask=mask, is_causal=is_causal, dropout_p=dropout_p, rng=rng(3))
        out.backward(ng.tensor(g))
        results.append((out.data, x.grad))
    (out, grad), (ref_out, ref_grad) = results
    assert out.shape == (B, L, H * D) and grad.shape == qkv.shape
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(grad))


def test_gradient_columns_go_to_their_part_and_head():
    # Only head 1 of the output is used: the gradient of head 0's q, k and v columns must be exactly 0,
    # and head 1's columns of each part non-zero (a layout mix-up would move them).
    B, L, H, D = 2, 4, 2, 3
    C = H * D
    x = ng.tensor(rng(4).standard_normal((B, L, 3 * C)), requires_grad=True)
    out = F.packed_self_attention(x, H, is_causal=True)
    (out[:, :, D:] * ng.tensor(rng(5).standard_normal((B, L, D)))).sum().backward()
    grad = x.grad
    for part in range(3):
        np.testing.assert_array_equal(grad[..., part * C : part * C + D], 0.0)
        assert np.abs(grad[..., part * C + D : (part + 1) * C]).max() > 1e-6


def test_fully_masked_rows_give_zeros_and_zero_gradients():
    B, L, H, D = 2, 3, 2, 2
    qkv = rng(6).standard_normal((B, L, 3 * H * D))
    padding = np.array([[True, True, False], [False, False, False]])[:, None, None, :]  # item 1: all padding
    x = ng.tensor(qkv, requires_grad=True)
    out = F.packed_self_attention(x, H, mask=padding)
    np.testing.assert_array_equal(out.data[1], 0.0)
    out.sum().backward()
    grad = x.grad
    np.testing.assert_array_equal(grad[1], 0.0)
    assert np.all(np.isfinite(grad)) and np.abs(grad[0]).max() > 0


@st.composite
def packed_inputs(draw):
    B, L, H, D = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    qkv = rng(draw(st.integers(0, 2**16))).standard_normal((B, L, 3 * H * D))
    kind = draw(st.sampled_from(["none", "random", "padding", "causal"]))
    mask = (
        None
        if kind == "none"
        else draw(
            attention_masks(
                (B, H) if kind == "random" else (B,) if kind == "padding" else (),
                L,
                L,
                allow_fully_masked=True,
                kind=kind,
            )
        )
    )
    if kind == "padding":
        mask = mask[:, None]  # (B, 1, 1, L)
    return qkv, H, mask


@FEW
@given(packed_inputs(), st.booleans(), st.sampled_from([None, 0.7]), st.sampled_from([0.0, 0.4]))
def test_gradcheck_packed_self_attention(inputs, is_causal, scale, dropout_p):
    qkv, H, mask = inputs
    # A fixed seed on every call: the same dropout mask, so the function is deterministic.
    assert_gradients_close(
        lambda x: F.packed_self_attention(
            x, H, mask=mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p, rng=rng(7)
        ),
        [ng.tensor(qkv, requires_grad=True)],
    )


def test_second_derivatives():
    qkv = rng(8).standard_normal((2, 3, 6))  # B 2, L 3, H 1, D 2
    padding = np.array([[True, True, False], [False, False, False]])[:, None, None, :]
    ng.gradgradcheck(lambda x: F.packed_self_attention(x, 1, mask=padding), [ng.tensor(qkv, requires_grad=True)])
    qkv = rng(9).standard_normal((1, 3, 12))  # H 2, D 2
    ng.gradgradcheck(
        lambda x: F.packed_self_attention(x, 2, is_causal=True, dropout_p=0.5, rng=rng(1)),
        [ng.tensor(qkv, requires_grad=True)],
    )


def test_float32_stays_float32():
    B, L, H, D = 2, 4, 2, 4
    qkv = rng(10).standard_normal((B, L, 3 * H * D)).astype(np.float32)
    x = ng.tensor(qkv, requires_grad=True)
    out = F.packed_self_attention(x, H, is_causal=True, mask=np.ones((B, 1, 1, L), bool))
    assert out.dtype == np.float32
    out.sum().backward()
    grad = x.grad
    assert grad.dtype == np.float32
    x64 = ng.tensor(qkv.astype(np.float64), requires_grad=True)
    ref = F.packed_self_attention(x64, H, is_causal=True)
    np.testing.assert_allclose(out.data, ref.data, rtol=1e-5, atol=1e-6)


def test_eval_mode_ignores_dropout():
    qkv = rng(11).standard_normal((2, 3, 12))
    plain = F.packed_self_attention(qkv, 2).data
    np.testing.assert_array_equal(F.packed_self_attention(qkv, 2, dropout_p=0.5, training=False).data, plain)
    assert not np.array_equal(F.packed_self_attention(qkv, 2, dropout_p=0.5, rng=rng(0)).data, plain)


def test_errors_name_the_problem():
    qkv = np.zeros((2, 3, 12))
    with pytest.raises(ValueError, match=r"packed_self_attention: qkv must have shape \(B, L, 3C\)"):
        F.packed_self_attention(np.zeros((3, 12)), 2)
    with pytest.raises(ValueError, match="num_heads=5"):
        F.packed_self_attention(qkv, 5)
    with pytest.raises(ValueError, match="num_heads=0"):
        F.packed_self_attention(qkv, 0)
    with pytest.raises(TypeError, match="mask must be boolean"):
        F.packed_self_attention(qkv, 2, mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="does not broadcast"):
        F.packed_self_attention(qkv, 2, mask=np.ones((4, 4), bool))
    with pytest.raises(TypeError, match="floating-point"):
        F.packed_self_attention(np.zeros((2, 3, 12), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="dropout_p"):
        F.packed_self_attention(qkv, 2, dropout_p=2.0)
