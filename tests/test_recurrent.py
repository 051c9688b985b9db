"""Recurrent cells and backpropagation through time (npgrad/ops/recurrent.py): gradients of every order, masks,
initial and final states, truncated BPTT, the Numba twin, PyTorch's nn.LSTM/GRU/RNN, and a tiny LSTM LM that
learns a short text by heart.

Legend: T time steps, B batch, I input size, H hidden size, G gates (RNN 1, GRU 3, LSTM 4).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad import nn
from npgrad.kernels import reference
from npgrad.testing import assert_float32_matches_float64

MODES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}
LAYERS = {"lstm": F.lstm, "gru": F.gru, "rnn_tanh": F.rnn}
BACKENDS = ["numpy", "numba"]


def _numba_or_skip(backend):
    if backend == "numba":
        pytest.importorskip("numba")


def _case(mode, steps, batch, size, seed=0, dtype=np.float64, masked=True):
    """Inputs of the sequence op: xw (T,B,G*H), w_hh (H,G*H), b_hh, h0 (B,H), c0 (B,H)|None, mask (T,B)|None."""
    rng = np.random.default_rng(seed)
    width = MODES[mode] * size
    xw = rng.standard_normal((steps, batch, width)).astype(dtype)
    w_hh = (rng.standard_normal((size, width)) / np.sqrt(size)).astype(dtype)
    b_hh = rng.standard_normal(width).astype(dtype) * 0.5
    h0 = rng.standard_normal((batch, size)).astype(dtype) * 0.5
    c0 = rng.standard_normal((batch, size)).astype(dtype) if mode == "lstm" else None
    mask = None
    if masked:
        mask = rng.random((steps, batch)) < 0.7
        mask[0, 0] = False  # a padding step before a real one (left padding) and after one
        mask[-1, -1] = False
    return xw, w_hh, b_hh, h0, c0, mask


def _op(mode, mask):
    """The sequence op as a function of its differentiable inputs (c0 only for the LSTM)."""
    if mode == "lstm":
        return lambda xw, w, b, h0, c0: F.recurrent(xw, w, b, h0, c0, mode=mode, mask=mask)
    return lambda xw, w, b, h0: F.recurrent(xw, w, b, h0, None, mode=mode, mask=mask)


def _inputs(case):
    xw, w, b, h0, c0, _ = case
    return [xw, w, b, h0] + ([c0] if c0 is not None else [])


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", list(MODES))
@settings(max_examples=4)
@given(
    steps=st.integers(1, 4),
    batch=st.integers(1, 3),
    size=st.integers(1, 3),
    masked=st.booleans(),
    seed=st.integers(0, 99),
)
def test_sequence_op_gradcheck(backend, mode, steps, batch, size, masked, seed):
    _numba_or_skip(backend)
    case = _case(mode, steps, batch, size, seed, masked=masked)
    with ng.use_backend(backend):
        assert ng.gradcheck(_op(mode, case[5]), _inputs(case))


@pytest.mark.parametrize("mode", list(MODES))
def test_sequence_op_gradgradcheck_with_mask_and_initial_state(mode):
    case = _case(mode, 3, 2, 2, seed=1)
    assert ng.gradgradcheck(_op(mode, case[5]), _inputs(case))


@pytest.mark.parametrize("mode", list(MODES))
def test_cells_gradcheck_and_gradgradcheck(mode):
    rng = np.random.default_rng(2)
    batch, inputs, size = 2, 3, 2
    width = MODES[mode] * size
    x, w_ih, w_hh = (
        rng.standard_normal((batch, inputs)),
        rng.standard_normal((inputs, width)),
        rng.standard_normal((size, width)),
    )
    b_ih, b_hh, h, c = (
        rng.standard_normal(width),
        rng.standard_normal(width),
        rng.standard_normal((batch, size)),
        rng.standard_normal((batch, size)),
    )
    if mode == "lstm":
        fn = lambda x, wi, wh, bi, bh, h, c: F.lstm_cell(x, (h, c), wi, wh, bi, bh)  # noqa: E731
        args = [x, w_ih, w_hh, b_ih, b_hh, h, c]
    else:
        cell = F.gru_cell if mode == "gru" else F.rnn_cell
        fn = lambda x, wi, wh, bi, bh, h: cell(x, h, wi, wh, bi, bh)  # noqa: E731
        args = [x, w_ih, w_hh, b_ih, b_hh, h]
    assert ng.gradcheck(fn, args)
    assert ng.gradgradcheck(fn, args)


@pytest.mark.parametrize("mode", list(MODES))
def test_float32_gradients_match_float64(mode):
    case = _case(mode, 5, 3, 4, seed=3, dtype=np.float32)
    assert_float32_matches_float64(_op(mode, case[5]), _inputs(case))


# ----------------------------------------------------------------------------- the Numba twin


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", list(MODES))
def test_numba_twin_equals_numpy_reference(mode, dtype):
    numba_kernels = pytest.importorskip("npgrad.kernels.numba_kernels")
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    for masked in (False, True):
        xw, w_hh, b_hh, h0, c0, mask = _case(mode, 6, 3, 5, seed=4, dtype=dtype, masked=masked)
        ref = reference.recurrent_forward(mode, xw, w_hh, b_hh, h0, c0, mask)
        jit = numba_kernels.recurrent_forward(mode, xw, w_hh, b_hh, h0, c0, mask)
        for a, b in zip(jit, ref):
            assert a.dtype == dtype and a.shape == b.shape
            np.testing.assert_allclose(a, b, **tol)
        gout = np.random.default_rng(5).standard_normal(ref[0].shape).astype(dtype)
        ref_grads = reference.recurrent_backward(mode, gout, w_hh, *ref[1:], mask)
        jit_grads = numba_kernels.recurrent_backward(mode, gout, w_hh, *jit[1:], mask)
        for a, b in zip(jit_grads, ref_grads):
            if b is None:
                assert a is None
            else:
                assert a.dtype == dtype
                np.testing.assert_allclose(a, b, **tol)


# ----------------------------------------------------------------------------- masks, states, truncation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", list(MODES))
def test_padding_leaves_outputs_zero_and_final_state_of_the_last_real_step(mode, backend):
    _numba_or_skip(backend)
    rng = np.random.default_rng(6)
    batch, steps, inputs, size = 2, 5, 3, 4
    layer = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[mode](inputs, size, rng=7, dtype=np.float64)
    x = rng.standard_normal((batch, steps, inputs))
    mask = np.array([[True] * 5, [True, True, True, False, False]])  # item 1: 3 real steps, right padding
    with ng.use_backend(backend):
        y, state = layer(x, mask=mask)
        alone_y, alone_state = layer(x[1:, :3])
    np.testing.assert_array_equal(y.data[1, 3:], 0.0)
    np.testing.assert_allclose(y.data[1, :3], alone_y.data[0], rtol=1e-12, atol=1e-14)
    finals = state if mode == "lstm" else (state,)
    alone_finals = alone_state if mode == "lstm" else (alone_state,)
    for final, alone in zip(finals, alone_finals):
        np.testing.assert_allclose(final.data[:, 1], alone.data[:, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", list(MODES))
def test_truncated_bptt_carries_the_state_and_cuts_the_gradient(mode):
    rng = np.random.default_rng(8)
    layer = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[mode](3, 4, num_layers=2, rng=9, dtype=np.float64)
    x = ng.tensor(rng.standard_normal((2, 6, 3)), requires_grad=True)
    whole, _ = layer(x)
    first, state = layer(x[:, :3])
    detached = tuple(s.detach() for s in state) if mode == "lstm" else state.detach()
    second, _ = layer(x[:, 3:], state=detached)
    # Forward: the segments continue exactly where the whole sequence would be.
    np.testing.assert_allclose(np.concatenate([first.data, second.data], axis=1), whole.data, rtol=1e-12, atol=1e-14)
    # Backward: the second segment's loss reaches no input of the first segment.
    (second * second).sum().backward()
    np.testing.assert_array_equal(x.grad[:, :3], 0.0)
    assert np.abs(x.grad[:, 3:]).max() > 0


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_get_one_line_errors():
    xw, w, b, h0, c0, mask = _case("lstm", 3, 2, 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        F.recurrent(xw, w, b, h0, c0, mode="lstmm")
    with pytest.raises(ValueError, match=r"w_hh has shape \(2, 6\), expected \(2, 8\)"):
        F.recurrent(xw, w[:, :6], b, h0, c0)
    with pytest.raises(ValueError, match="c0"):
        F.recurrent(xw, w, b, h0, None, mode="lstm")
    with pytest.raises(ValueError, match=r"mask must be a boolean array of shape \(T, B\)"):
        F.recurrent(xw, w, b, h0, c0, mask=mask.T)
    with pytest.raises(ValueError, match="empty"):
        F.recurrent(xw[:0], w, b, h0, c0)


# ----------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("mode", list(MODES))
def test_equals_torch_given_the_same_weights(mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    batch, steps, inputs, size, layers = 3, 5, 4, 6, 2
    peer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}[mode](
        inputs, size, num_layers=layers, batch_first=True
    ).double()
    ours = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[mode](inputs, size, num_layers=layers, dtype=np.float64)
    for name, p in peer.named_parameters():
        getattr(ours, name).data[...] = p.detach().numpy().T
    x = rng.standard_normal((batch, steps, inputs))
    h0 = rng.standard_normal((layers, batch, size))
    c0 = rng.standard_normal((layers, batch, size))
    lengths = [5, 3, 1]
    mask = np.arange(steps)[None, :] < np.array(lengths)[:, None]
    upstream = rng.standard_normal((batch, steps, size)) * mask[:, :, None]

    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, lengths, batch_first=True)
    out, state_t = peer(packed, (h0t, c0t) if mode == "lstm" else h0t)
    yt, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
    finals_t = state_t if mode == "lstm" else (state_t,)
    ((yt * torch.tensor(upstream)).sum() + sum((s**2).sum() for s in finals_t)).backward()

    xs, h0s, c0s = (ng.tensor(a, requires_grad=True) for a in (x, h0, c0))
    y, state = ours(xs, (h0s, c0s) if mode == "lstm" else h0s, mask=mask)
    finals = state if mode == "lstm" else (state,)
    ((y * upstream).sum() + sum((s * s).sum() for s in finals)).backward()

    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y.data, yt.detach().numpy(), **tol)
    for ours_final, peer_final in zip(finals, finals_t):
        np.testing.assert_allclose(ours_final.data, peer_final.detach().numpy(), **tol)
    np.testing.assert_allclose(xs.grad, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(h0s.grad, h0t.grad.numpy(), **tol)
    if mode == "lstm":
        np.testing.assert_allclose(c0s.grad, c0t.grad.numpy(), **tol)
    for name, p in peer.named_parameters():
        np.testing.assert_allclose(getattr(ours, name).grad, p.grad.numpy().T, err_msg=name, **tol)


def test_lstm_cell_equals_torch_lstm_cell():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    peer = torch.nn.LSTMCell(3, 4).double()
    x, h, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    ht, ct = peer(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
    weights = [p.detach().numpy().T for p in (peer.weight_ih, peer.weight_hh, peer.bias_ih, peer.bias_hh)]
    h1, c1 = F.lstm_cell(x, (h, c), *weights)
    np.testing.assert_allclose(h1.data, ht.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c1.data, ct.detach().numpy(), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- it learns


def test_tiny_lstm_language_model_overfits_a_short_text():
    text = "the cat sat on the mat. "
    vocab = sorted(set(text))
    ids = np.array([vocab.index(ch) for ch in text])[None]  # (1,T)
    rng = np.random.default_rng(12)
    embed, lstm, head = (
        nn.Embedding(len(vocab), 16, rng=rng),
        nn.LSTM(16, 32, rng=rng),
        nn.Linear(32, len(vocab), rng=rng),
    )
    params = list(embed.parameters()) + list(lstm.parameters()) + list(head.parameters())
    opt = ng.optim.Adam(params, lr=0.03)
    for _ in range(120):
        y, _ = lstm(embed(ids[:, :-1]))
        loss = F.cross_entropy(head(y), ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
