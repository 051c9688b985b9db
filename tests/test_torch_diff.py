"""Differential tests against PyTorch (float64): forward values and gradients of the fused ops.

The PyTorch side is benchmarks/torch_twins.py, the twins the kernel benchmark times, which take npgrad's
conventions (cross_entropy's class axis last, boolean masks True = may attend, weights applied as x @ w).
Skipped cleanly when torch is not installed (it is optional: the ``bench`` extra); npgrad never
imports it. PyTorch's sdpa gives NaN for fully masked rows, so those are avoided (our zeros policy is
tested in test_ops_fused.py).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from benchmarks import torch_twins as TT  # noqa: E402

import npgrad as ng  # noqa: E402
from npgrad import functional as F  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-12)


def pair(a):
    """The same float64 array as an npgrad leaf and a torch leaf."""
    return ng.tensor(a.copy(), requires_grad=True), torch.tensor(a.copy(), requires_grad=True)


def backward_both(ours, theirs, g):
    ours.backward(g)
    theirs.backward(torch.tensor(g))


def close(a, b):
    np.testing.assert_allclose(a, b.detach().numpy() if hasattr(b, "detach") else b, **TOL)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_family(name, axis):
    r = np.random.default_rng(0)
    x, xt = pair(r.standard_normal((3, 4, 5)) * 4)
    ours, theirs = getattr(F, name)(x, axis=axis), getattr(TT, name)(xt, axis=axis)
    close(ours.data, theirs)
    backward_both(ours, theirs, r.standard_normal(ours.shape))
    close(x.grad, xt.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.7])
@pytest.mark.parametrize("lead", [(6,), (2, 4)])
def test_cross_entropy(reduction, eps, lead):
    r = np.random.default_rng(1)
    V = 7
    x, xt = pair(r.standard_normal(lead + (V,)) * 3)
    target = r.integers(0, V, size=lead)
    target.reshape(-1)[[1, 3]] = 5  # ignore_index, a valid class here
    ours = F.cross_entropy(x, target, ignore_index=5, label_smoothing=eps, reduction=reduction)
    theirs = TT.cross_entropy(xt, torch.tensor(target), ignore_index=5, label_smoothing=eps, reduction=reduction)
    close(ours.data, theirs)
    backward_both(ours, theirs, r.standard_normal(ours.shape))
    close(x.grad, xt.grad)


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient_like_torch():
    x, xt = pair(np.random.default_rng(2).standard_normal((3, 4)))
    ours = F.cross_entropy(x, np.full(3, -100))
    theirs = TT.cross_entropy(xt, torch.full((3,), -100))
    assert np.isnan(ours.item()) and torch.isnan(theirs).item()
    ours.backward()
    theirs.backward()
    close(x.grad, xt.grad)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_and_add_layer_norm(affine):
    r = np.random.default_rng(3)
    C = 6
    xa, ra = r.standard_normal((2, 3, C)) * 3 + 1, r.standard_normal((2, 3, C))
    wa, ba = r.standard_normal(C), r.standard_normal(C)
    g = r.standard_normal((2, 3, C))
    for fused in (False, True):
        x, xt = pair(xa)
        res, rt = pair(ra)
        w, wt = pair(wa) if affine else (None, None)
        b, bt = pair(ba) if affine else (None, None)
        ours = F.add_layer_norm(x, res, w, b, eps=1e-5) if fused else F.layer_norm(x, w, b, eps=1e-5)
        theirs = TT.add_layer_norm(xt, rt, wt, bt, eps=1e-5) if fused else TT.layer_norm(xt, wt, bt, eps=1e-5)
        close(ours.data, theirs)
        backward_both(ours, theirs, g)
        close(x.grad, xt.grad)
        if fused:
            close(res.grad, rt.grad)
        if affine:
            close(w.grad, wt.grad)
            close(b.grad, bt.grad)


@pytest.mark.parametrize("case", ["plain", "mask", "causal", "scale"])
def test_scaled_dot_product_attention(case):
    r = np.random.default_rng(4)
    (q, qt), (k, kt), (v, vt) = (pair(r.standard_normal(s)) for s in ((2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7)))
    kwargs = {}
    if case == "mask":
        mask = r.random((2, 1, 4, 6)) < 0.6
        mask[..., 0] = True  # no fully masked row (torch gives NaN)
        kwargs = dict(mask=mask), dict(mask=torch.tensor(mask))
    elif case == "causal":
        kwargs = dict(is_causal=True), dict(is_causal=True)
    elif case == "scale":
        kwargs = dict(scale=0.37), dict(scale=0.37)
    ours_kw, theirs_kw = kwargs if kwargs else ({}, {})
    ours = F.scaled_dot_product_attention(q, k, v, **ours_kw)
    theirs = TT.scaled_dot_product_attention(qt, kt, vt, **theirs_kw)
    close(ours.data, theirs)
    backward_both(ours, theirs, r.standard_normal(ours.shape))
    for a, b in ((q, qt), (k, kt), (v, vt)):
        close(a.grad, b.grad)


def test_multi_head_attention_against_torch_composition():
    r = np.random.default_rng(5)
    B, Lq, Lk, C, H = 2, 4, 5, 8, 2
    (x, xt), (mem, mt) = pair(r.standard_normal((B, Lq, C))), pair(r.standard_normal((B, Lk, C)))
    weights = [pair(r.standard_normal((C, C)) / np.sqrt(C)) for _ in range(4)]
    biases = [pair(r.standard_normal(C)) for _ in range(4)]
    pad = np.array([[True] * 5, [True, True, True, False, False]])[:, None, None, :]  # (B,1,1,Lk)
    ours = F.multi_head_attention(x, mem, mem, H, *(w for w, _ in weights), *(b for b, _ in biases), mask=pad)

    theirs = TT.multi_head_attention(
        xt, mt, mt, H, *(w for _, w in weights), *(b for _, b in biases), mask=torch.tensor(pad)
    )
    close(ours.data, theirs)
    backward_both(ours, theirs, r.standard_normal(ours.shape))
    for a, b in [(x, xt), (mem, mt)] + weights + biases:
        close(a.grad, b.grad)
