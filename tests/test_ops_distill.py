"""The distillation losses: soft_cross_entropy and kl_div (npgrad/ops/distill.py).

Gradients against finite differences (float64, hypothesis-drawn shapes, temperatures, dropped rows and
reductions), second derivatives (gradgradcheck), the properties each loss must have (KL >= 0, KL(p || p) = 0,
soft CE with one-hot targets = cross_entropy, the T^2 scaling, "mean" over kept rows only), the errors users
see, and PyTorch's F.kl_div(..., reduction="batchmean") * T^2 (skipped without torch). These run on the NumPy
reference kernels; tests/test_kernels_distill.py checks the Numba twins and float32 on both backends.
Legend: N rows, V classes, T temperature.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad.testing import assert_gradients_close, class_targets, float_arrays, shapes

FEW = settings(max_examples=max(8, settings().max_examples // 2), deadline=None)
REDUCTIONS = ["mean", "sum", "none"]


@pytest.fixture(autouse=True, scope="module")
def numpy_backend():
    with ng.use_backend("numpy"):
        yield


def rng(seed=0):
    return np.random.default_rng(seed)


def t(a, grad=True):
    return ng.tensor(a, requires_grad=grad)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_reduce(per_row, kept, reduction):
    per_row = np.where(kept, per_row, 0.0)
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.sum() / kept.sum()


@st.composite
def distill_case(draw, min_side=1):
    """(logits (..., V), a second array of logits, rows to drop as (keyword arguments, kept), T, reduction)."""
    lead = draw(shapes(min_dims=1, max_dims=2, max_side=4))
    num_classes = draw(st.integers(min_side, 5))
    x = draw(float_arrays(shape=lead + (num_classes,), min_value=-3, max_value=3))
    y = draw(float_arrays(shape=lead + (num_classes,), min_value=-3, max_value=3))
    target = draw(class_targets(lead, num_classes, ignore_index=-1, ignore_fraction=0.5))
    kept = target != -1
    rows = draw(st.sampled_from(["target", "mask", "all"]))
    drop = {"target": dict(target=target, ignore_index=-1), "mask": dict(mask=kept), "all": {}}[rows]
    if rows == "all":
        kept = np.ones(lead, bool)
    temperature = draw(st.sampled_from([0.5, 1.0, 3.0]))
    reduction = draw(st.sampled_from(REDUCTIONS))
    return x, y, drop, kept, temperature, reduction


# ------------------------------------------------------------------------------ values


@FEW
@given(distill_case())
def test_values_match_numpy_formulas(case):
    x, y, drop, kept, temperature, reduction = case
    p = np_softmax(y)
    soft = F.soft_cross_entropy(x, p, temperature=temperature, reduction=reduction, **drop)
    expected = -(p * np.log(np_softmax(x / temperature))).sum(-1)
    np.testing.assert_allclose(soft.data, np_reduce(expected, kept, reduction), rtol=1e-10, atol=1e-12)
    kl = F.kl_div(x, y, temperature=temperature, reduction=reduction, **drop)
    q, ps = np_softmax(y / temperature), np_softmax(x / temperature)
    expected = temperature**2 * (q * (np.log(q) - np.log(ps))).sum(-1)
    np.testing.assert_allclose(kl.data, np_reduce(expected, kept, reduction), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------ gradcheck (float64)


@FEW
@given(distill_case())
def test_gradcheck_soft_cross_entropy(case):
    x, y, drop, _, temperature, reduction = case
    p = np_softmax(y)
    assert_gradients_close(
        lambda a: F.soft_cross_entropy(a, p, temperature=temperature, reduction=reduction, **drop), [t(x)]
    )


@FEW
@given(distill_case(), st.booleans())
def test_gradcheck_kl_div_student_and_teacher(case, teacher_grad):
    x, y, drop, _, temperature, reduction = case
    inputs = [t(x), t(y, grad=teacher_grad)]
    assert_gradients_close(lambda a, b: F.kl_div(a, b, temperature=temperature, reduction=reduction, **drop), inputs)
    if not teacher_grad:
        assert inputs[1].grad is None


@settings(max_examples=4, deadline=None)
@given(distill_case())
def test_gradgradcheck_both_losses(case):
    x, y, drop, _, temperature, reduction = case
    p = np_softmax(y)
    assert ng.gradgradcheck(
        lambda a: F.soft_cross_entropy(a, p, temperature=temperature, reduction=reduction, **drop), [x], mode="full"
    )
    assert ng.gradgradcheck(
        lambda a, b: F.kl_div(a, b, temperature=temperature, reduction=reduction, **drop), [x, y], mode="full"
    )
    assert ng.gradgradcheck(  # the teacher a constant: the student's second derivative alone
        lambda a: F.kl_div(a, y, temperature=temperature, reduction=reduction, **drop), [x], mode="full"
    )


def test_gradients_are_the_documented_formulas():
    r = rng(1)
    x, y = r.standard_normal((4, 6)) * 2, r.standard_normal((4, 6)) * 2
    kept = np.array([True, False, True, True])
    temperature = 2.5
    p, ps, q = np_softmax(y), np_softmax(x / temperature), np_softmax(y / temperature)
    xt = t(x)
    F.soft_cross_entropy(xt, p, temperature=temperature, mask=kept).backward()
    np.testing.assert_allclose(xt.grad, (ps - p) / temperature / 3 * kept[:, None], rtol=1e-12, atol=1e-15)
    st_, tt = t(x), t(y)
    F.kl_div(st_, tt, temperature=temperature, mask=kept, reduction="sum").backward()
    np.testing.assert_allclose(st_.grad, temperature * (ps - q) * kept[:, None], rtol=1e-12, atol=1e-15)
    log_ratio = np.log(q) - np.log(ps)
    kl = (q * log_ratio).sum(-1, keepdims=True)
    np.testing.assert_allclose(tt.grad, temperature * q * (log_ratio - kl) * kept[:, None], rtol=1e-10, atol=1e-14)
    assert np.all(st_.grad[~kept] == 0) and np.all(tt.grad[~kept] == 0)
    np.testing.assert_allclose(st_.grad.sum(-1), 0, atol=1e-14)  # shift invariance: rows sum to 0
    np.testing.assert_allclose(tt.grad.sum(-1), 0, atol=1e-14)


# ------------------------------------------------------------------------------ properties


@FEW
@given(distill_case(min_side=2))
def test_kl_is_non_negative_and_zero_for_equal_distributions(case):
    x, y, drop, kept, temperature, _ = case
    kl = F.kl_div(x, y, temperature=temperature, reduction="none", **drop).data
    scale = temperature**2 * (np.abs(x).max() + np.abs(y).max() + 1)
    assert np.all(kl >= -1e-13 * scale)
    same = t(x)
    loss = F.kl_div(same, same, temperature=temperature, reduction="sum", **drop)
    assert loss.item() == 0.0
    loss.backward()  # student and teacher gradients cancel (q (r - KL) = 0 and p - q = 0)
    np.testing.assert_allclose(same.grad, 0.0, atol=1e-15)
    # Shifting a whole row of either side changes nothing.
    shifted = F.kl_div(x + 7.0, y - 2.0, temperature=temperature, reduction="none", **drop).data
    np.testing.assert_allclose(shifted, kl, rtol=1e-9, atol=1e-11 * scale)


@FEW
@given(st.data(), st.sampled_from(REDUCTIONS), st.sampled_from([0.0, 0.2]))
def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy(data, reduction, smoothing):
    lead = data.draw(shapes(min_dims=1, max_dims=2, max_side=4))
    num_classes = data.draw(st.integers(1, 5))
    x = data.draw(float_arrays(shape=lead + (num_classes,), min_value=-4, max_value=4))
    target = data.draw(class_targets(lead, num_classes, ignore_index=-100, ignore_fraction=0.5))
    q = np.full(x.shape, smoothing / num_classes)  # smoothed one-hot, rows of ignored targets too
    q[..., :] += (1 - smoothing) * (np.arange(num_classes) == np.maximum(target, 0)[..., None])
    a, b = t(x), t(x)
    ours = F.soft_cross_entropy(a, q, target=target, reduction=reduction)
    ce = F.cross_entropy(b, target, label_smoothing=smoothing, reduction=reduction)
    np.testing.assert_allclose(ours.data, ce.data, rtol=1e-12, atol=1e-13)
    g = rng().standard_normal(ce.shape)
    ours.backward(g)
    ce.backward(g)
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12, atol=1e-14)


def test_temperature_scaling():
    r = rng(3)
    x, y = r.standard_normal((5, 7)), r.standard_normal((5, 7))
    for temperature in (0.5, 2.0, 4.0):
        # Softening the logits by T is dividing them by T.
        soft = F.soft_cross_entropy(x, np_softmax(y), temperature=temperature).item()
        assert soft == pytest.approx(F.soft_cross_entropy(x / temperature, np_softmax(y)).item(), rel=1e-12)
        kl = F.kl_div(x, y, temperature=temperature).item()
        assert kl == pytest.approx(temperature**2 * F.kl_div(x / temperature, y / temperature).item(), rel=1e-12)
    # Hinton's T^2: for large T the student gradient tends to (x - y - mean(x - y)) / (N V), independent of T,
    # where the unscaled KL's gradient shrinks as 1 / T^2.
    diff = x - y
    limit = (diff - diff.mean(-1, keepdims=True)) / diff.size
    for temperature in (50.0, 500.0):
        xt = t(x)
        F.kl_div(xt, y, temperature=temperature).backward()
        np.testing.assert_allclose(xt.grad, limit, rtol=0, atol=5 / temperature * np.abs(limit).max())


def test_mean_counts_kept_rows_only_and_dropped_rows_are_never_read():
    r = rng(4)
    x, y = r.standard_normal((2, 3, 5)), r.standard_normal((2, 3, 5))
    mask = np.array([[True, True, False], [True, False, False]])
    p = np_softmax(y)
    p_padded = np.where(mask[..., None], p, 0.0)  # padding rows hold no distribution: not checked
    x_padded = np.where(mask[..., None], x, np.nan)  # nor read into the loss or gradient
    for fn, other in ((F.soft_cross_entropy, p_padded), (F.kl_div, np.where(mask[..., None], y, np.nan))):
        xt = t(x_padded)
        per_row = fn(x_padded, other, mask=mask, reduction="none").data
        assert np.all(per_row[~mask] == 0)
        loss = fn(xt, other, mask=mask)
        assert loss.item() == pytest.approx(per_row[mask].mean(), rel=1e-12)
        loss.backward()
        assert np.all(xt.grad[~mask] == 0) and np.all(np.isfinite(xt.grad))
        # a companion target with ignore_index drops the same rows
        target = np.where(mask, 1, -100)
        assert fn(x_padded, other, target=target).item() == pytest.approx(loss.item(), rel=1e-15)
        # nothing kept: nan for "mean" (0 / 0, as cross_entropy), 0 for "sum", zero gradients
        xt = t(x)
        empty = fn(xt, np.where(mask[..., None], other, 0.0) if fn is F.soft_cross_entropy else y, mask=mask & False)
        assert np.isnan(empty.item())
        empty.backward()
        assert np.all(xt.grad == 0)


def test_dtypes_and_mixed_teacher_precision():
    r = rng(5)
    x32 = r.standard_normal((3, 4)).astype(np.float32)
    y64 = r.standard_normal((3, 4))
    xt = t(x32)
    loss = F.soft_cross_entropy(xt, np_softmax(y64), temperature=2.0)  # float64 targets cast to float32
    loss.backward()
    assert loss.dtype == np.float32 and xt.grad.dtype == np.float32
    xt, yt = t(x32), t(y64)
    loss = F.kl_div(xt, yt, temperature=2.0)  # a float64 teacher: computed in the student's float32
    loss.backward()
    assert loss.dtype == np.float32 and xt.grad.dtype == np.float32 and yt.grad.dtype == np.float64
    with ng.no_grad():
        teacher = t(y64) * 1.0
    assert F.kl_div(t(x32), teacher).dtype == np.float32


# ------------------------------------------------------------------------------ errors


def test_soft_cross_entropy_errors_name_the_argument():
    x, p = np.zeros((2, 3, 4)), np.full((2, 3, 4), 0.25)
    with pytest.raises(ValueError, match=r"target_probs shape \(2, 4\) does not match logits shape \(2, 3, 4\)"):
        F.soft_cross_entropy(x, p[0, :2])
    bad = p.copy()
    bad[1, 2] = [0.5, 0.5, 0.5, -0.5]
    with pytest.raises(ValueError, match=r"target_probs .* row at position \(1, 2\) has a negative entry -0.5"):
        F.soft_cross_entropy(x, bad)
    bad[1, 2] = [0.5, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"target_probs .* row at position \(1, 2\) sums to 2.0 \(must be 1"):
        F.soft_cross_entropy(x, bad)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"target_probs .* position \(1, 2\) sums to nan"):
        F.soft_cross_entropy(x, bad)
    F.soft_cross_entropy(x, bad, mask=np.array([[True] * 3, [True, True, False]]))  # a dropped row is not checked
    for temperature in (0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="soft_cross_entropy: temperature must be in"):
            F.soft_cross_entropy(x, p, temperature=temperature)
    with pytest.raises(TypeError, match="temperature must be a real number"):
        F.soft_cross_entropy(x, p, temperature="2")
    with pytest.raises(TypeError, match=r"logits must be a floating-point array .* got dtype int64"):
        F.soft_cross_entropy(x.astype(np.int64), p)
    with pytest.raises(TypeError, match=r"target_probs must be a floating-point array .* got dtype float16"):
        F.soft_cross_entropy(x, p.astype(np.float16))
    with pytest.raises(ValueError, match="target_probs requires grad.*treats it as a constant"):
        F.soft_cross_entropy(x, t(p))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.soft_cross_entropy(x, p, reduction="batchmean")
    with pytest.raises(ValueError, match="logits must have a non-empty last axis"):
        F.soft_cross_entropy(np.zeros(()), np.ones(()))


def test_kl_div_errors_name_the_argument():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"teacher_logits shape \(2, 3, 5\) does not match student_logits"):
        F.kl_div(x, np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="kl_div: temperature must be in"):
        F.kl_div(x, x, temperature=0.0)
    with pytest.raises(TypeError, match=r"teacher_logits must be a floating-point array .* got dtype int64"):
        F.kl_div(x, x.astype(np.int64))
    with pytest.raises(TypeError, match=r"student_logits must be a floating-point array"):
        F.kl_div(x.astype(np.float16), x)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 2\) does not match .* expected shape \(2, 3\)"):
        F.kl_div(x, x, mask=np.ones((3, 2), bool))
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        F.kl_div(x, x, mask=np.ones((2, 3)))
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        F.kl_div(x, x, target=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"target of shape \(2,\) does not match"):
        F.kl_div(x, x, target=np.ones(2, np.int64))
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        F.kl_div(x, x, target=np.ones((2, 3), np.int64), ignore_index=1.5)


# ------------------------------------------------------------------------------ PyTorch


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_div_is_torch_batchmean_times_t_squared(temperature):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    r = rng(6)
    s, tch = r.standard_normal((6, 9)) * 3, r.standard_normal((6, 9)) * 3
    ours_s, ours_t = t(s), t(tch)
    ours = F.kl_div(ours_s, ours_t, temperature=temperature)
    theirs_s, theirs_t = torch.tensor(s, requires_grad=True), torch.tensor(tch, requires_grad=True)
    theirs = (
        tf.kl_div(
            tf.log_softmax(theirs_s / temperature, -1), tf.softmax(theirs_t / temperature, -1), reduction="batchmean"
        )
        * temperature**2
    )
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-12)
    ours.backward()
    theirs.backward()
    np.testing.assert_allclose(ours_s.grad, theirs_s.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ours_t.grad, theirs_t.grad.numpy(), rtol=1e-10, atol=1e-14)
    # soft_cross_entropy = torch's cross_entropy with probability targets on the softened logits
    p = np_softmax(tch)
    soft = F.soft_cross_entropy(s, p, temperature=temperature, reduction="none")
    expected = tf.cross_entropy(torch.tensor(s) / temperature, torch.tensor(p), reduction="none")
    np.testing.assert_allclose(soft.data, expected.numpy(), rtol=1e-12)
