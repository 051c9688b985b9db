"""The fused ops give the same values and gradients on the Numba kernels as on the NumPy reference.

(Kernel-level equality is tested with the kernels; this checks the ops' use of them: flattened
rows, strided and broadcast inputs, masks as broadcast views, fully masked rows, float32/float64.)
A handful of fixed cases, so that only a few kernel signatures get compiled.
"""

import numpy as np
import pytest

import npgrad as ng
from npgrad import functional as F

try:
    ng.set_backend(ng.get_backend())  # resolves the default
    import numba  # noqa: F401
except Exception:  # pragma: no cover - depends on the machine
    pytest.skip("numba is not available", allow_module_level=True)


def run(fn, arrays, backend):
    """fn(*leaves) and every leaf's gradient (upstream gradient fixed), under ``backend``."""
    with ng.use_backend(backend):
        leaves = [ng.tensor(a.copy(), requires_grad=True) for a in arrays]
        out = fn(*leaves)
        g = np.random.default_rng(0).standard_normal(out.shape).astype(out.dtype)
        out.backward(g)
        return [out.data] + [leaf.grad for leaf in leaves]


def cases(dtype):
    r = np.random.default_rng(1)
    x = r.standard_normal((3, 4, 6)).astype(dtype) * 3
    w, b = r.standard_normal(6).astype(dtype), r.standard_normal(6).astype(dtype)
    target = np.array([[0, 5, -100, 2], [1, 1, 3, -100], [4, 0, 2, 5]])
    q, k, v = (r.standard_normal(s).astype(dtype) for s in ((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4)))
    pad = np.array([[True, True, True, False, False], [False] * 5])[:, None, None, :]  # (B,1,1,Lk), item 1 empty
    return {
        "softmax": (lambda x: F.softmax(x, axis=1), [x]),
        "log_softmax(strided)": (lambda x: F.log_softmax(x[:, ::2], axis=-1), [x]),
        "cross_entropy": (lambda x: F.cross_entropy(x, target, label_smoothing=0.1), [x]),
        "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b), [x, w, b]),
        "add_layer_norm": (lambda x, r, w: F.add_layer_norm(x, r, w, None), [x, x[::-1].copy(), w]),
        "attention(padding mask)": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=pad), [q, k, v]),
        "attention(causal)": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v]),
        "mha(padding mask)": (
            lambda x, wq, wk: F.multi_head_attention(x, x, x, 2, wq, wk, wq, wk, mask=pad[:, :, :, :4]),
            [x[:2, :, :4], x[0, :, :4], x[1, :, :4]],
        ),
    }


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numba_and_numpy_backends_agree(dtype):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    for name, (fn, arrays) in cases(dtype).items():
        reference = run(fn, arrays, "numpy")
        jitted = run(fn, arrays, "numba")
        for i, (a, b) in enumerate(zip(jitted, reference)):
            assert a.dtype == dtype, (name, i)
            assert np.all(np.isfinite(a)), (name, i)
            np.testing.assert_allclose(a, b, **tol, err_msg=f"{name}: {'output' if i == 0 else f'grad {i - 1}'}")
