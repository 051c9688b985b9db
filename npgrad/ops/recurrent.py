r"""Recurrent networks: the Elman (tanh) RNN, GRU and LSTM cells, and the sequence op that runs a cell over time
with backpropagation through time (BPTT) as one loop.

Shapes: T time steps, B batch, I input size, H hidden size, G gates (RNN 1, GRU 3, LSTM 4). Weights act as
``x @ w`` like every matrix in this package: w_ih (I, G*H), w_hh (H, G*H), biases (G*H,), gate order
PyTorch's (LSTM i f g o, GRU r z n; torch's ``weight_ih_l0`` is our ``w_ih.T``).

Split of the work (as cuDNN does it): the input projections of all steps, xw = x W_ih + b_ih (T,B,G*H), do
not depend on the state, so the caller computes them in one large matmul (F.linear); the primitive
:class:`Recurrent` is only the recurrence, whose step t needs h_{t-1}. The cell math is written once, in
npgrad/kernels/reference.py (cell_forward, cell_backward), for ndarrays and Tensors alike; the Numba twin
(npgrad/kernels/numba_kernels/recurrent.py) fuses each step's element-wise work into one pass.
"""

from __future__ import annotations

import numpy as np

from .._checks import as_float_array
from ..function import Function, TensorBase, TensorLike, TensorResult
from ..kernels import K
from ..kernels.reference import RECURRENT_MODES, recurrent_steps_backward, recurrent_steps_forward
from .elementwise import tanh
from .linear import linear
from .shape import concatenate, getitem, reshape, stack, swapaxes


class TensorMath:
    """What the recurrent functions need beyond operators, for Tensors (the create_graph VJP)."""

    tanh = staticmethod(tanh)
    concatenate = staticmethod(concatenate)
    stack = staticmethod(stack)


class Recurrent(Function):
    r"""A cell run over time.   xw (T,B,G*H), w_hh (H,G*H), b_hh (G*H,), h0 (B,H), c0 (B,H) (LSTM) -> (T+S,B,H)

    The output stacks the T outputs y_t, then the final h_T and, for the LSTM (S = 2), the final c_T (one
    array, since a primitive returns one; F.lstm etc. split it with views). ``mask`` (T,B) bool, True where
    a step is real: at a padding step the state passes through unchanged and y_t = 0, so the final state of
    each sequence is the one after its last real step (PyTorch's packed sequences).

    Forward, with hw_t = h_{t-1} W_hh + b_hh and sigma(a) = 1 / (1 + e^{-a}):
        RNN   h_t = tanh(xw_t + hw_t)
        GRU   r = sigma(xw_r + hw_r), z = sigma(xw_z + hw_z), n = tanh(xw_n + r * hw_n),
              h_t = (1 - z) n + z h_{t-1}
        LSTM  i, f, o = sigma(a_i), sigma(a_f), sigma(a_o), g = tanh(a_g) with a = xw_t + hw_t (one matmul
              h_{t-1} W_hh for the four gates), c_t = f c_{t-1} + i g, h_t = o tanh(c_t)
    and with a mask m_t in {0, 1} per sequence: h_t = m_t h~_t + (1 - m_t) h_{t-1}, y_t = m_t h~_t (same for c).

    Backward through time. The loss depends on h_t through y_t and through step t+1, so going from t = T-1
    down to 0 with the carried gradients dh = dL/dh_t (initially dL/dh_T from the output) and dc = dL/dc_t:
        dh~ = m_t (dL/dy_t + dh),   dc~ = m_t dc,      the rest, (1 - m_t) dh and (1 - m_t) dc, goes to t-1;
    the cell's local derivatives (sigma' = sigma (1 - sigma), tanh' = 1 - tanh^2) give
        RNN   da = dh~ (1 - h_t^2)                                                    (dxw_t = dhw_t = da)
        LSTM  dc~ += dh~ o (1 - tanh^2 c_t)          (c_t reaches the loss also through h_t = o tanh c_t)
              da_i = dc~ g i (1 - i),  da_f = dc~ c_{t-1} f (1 - f),  da_g = dc~ i (1 - g^2),
              da_o = dh~ tanh(c_t) o (1 - o),  dc_{t-1} += dc~ f                      (dxw_t = dhw_t = da)
        GRU   da_n = dh~ (1 - z)(1 - n^2),  da_r = da_n hw_n r (1 - r),  da_z = dh~ (h_{t-1} - n) z (1 - z),
              dxw_t = (da_r, da_z, da_n),  dhw_t = (da_r, da_z, r da_n),  dh_{t-1} += dh~ z
    and since hw_t = h_{t-1} W_hh + b_hh:  dh_{t-1} += dhw_t W_hh^T. W_hh and b_hh are shared by all steps,
    so their gradients are sums over steps: dW_hh = sum_t h_{t-1}^T dhw_t (one matmul over the stacked T*B
    rows after the loop), db_hh = sum_{t,b} dhw_t. dh0, dc0 are the carried gradients after step 0.
    The forward saves the activations (i f g o tanh c, or r z n hw_n) and the states, so no exp or tanh is
    recomputed in the backward.

    Truncated BPTT: pass a previous segment's final state as a constant (``state.detach()``): the gradient
    then stops at the segment boundary while the state carries on (nn.LSTM / transformer.rnn do this).

    backward runs K.recurrent_backward (the loop above on ndarrays, or the Numba twin);
    differentiable_backward recomputes the forward and runs the same loop on Tensors
    (reference.recurrent_steps_forward/backward with TensorMath), for second derivatives.
    """

    @staticmethod
    def forward(ctx, xw, w_hh, b_hh, h0, c0=None, mode="lstm", mask=None):
        xw, w_hh, b_hh, h0, c0, mask = _check_recurrent(xw, w_hh, b_hh, h0, c0, mode, mask)
        out, acts, hs, cs = K.recurrent_forward(mode, xw, w_hh, b_hh, h0, c0, mask)
        ctx.save_for_backward(xw, w_hh, b_hh, h0, c0, acts, hs, cs)
        ctx.mode, ctx.mask = mode, mask
        return out

    @staticmethod
    def backward(ctx, g):
        _, w_hh, _, _, c0, acts, hs, cs = ctx.saved
        gxw, gw_hh, gb_hh, gh0, gc0 = K.recurrent_backward(ctx.mode, g, w_hh, acts, hs, cs, ctx.mask)
        return gxw, gw_hh, gb_hh, gh0, (gc0 if c0 is not None else None)

    @staticmethod
    def differentiable_backward(ctx, g):
        xw, w_hh, b_hh, h0, c0 = ctx.saved_tensors[:5]
        mode, steps = ctx.mode, xw.shape[0]
        keep = None if ctx.mask is None else ctx.mask[:, :, None].astype(xw.dtype)
        _, acts, hs, cs = recurrent_steps_forward(mode, xw, w_hh, b_hh, h0, c0, keep, TensorMath)
        dxws, dhws, dh0, dc0 = recurrent_steps_backward(
            mode, [g[t] for t in range(steps)], g[steps], g[steps + 1] if c0 is not None else None, w_hh, acts, hs,
            cs, keep, TensorMath,
        )  # fmt: skip
        dhw = stack(dhws)  # (T,B,G*H)
        rows = steps * h0.shape[0]
        gw_hh = stack(hs[:steps]).reshape((rows, -1)).T @ dhw.reshape((rows, -1))
        return stack(dxws), gw_hh, dhw.reshape((rows, -1)).sum(axis=0), dh0, dc0


def _check_recurrent(xw, w_hh, b_hh, h0, c0, mode, mask):
    """The inputs as arrays of one float dtype, or a one-line error naming the input and the expected shape."""
    op = "recurrent"
    if mode not in RECURRENT_MODES:
        raise ValueError(f"{op}: mode must be one of {', '.join(RECURRENT_MODES)}, got {mode!r}")
    gates = RECURRENT_MODES[mode]
    xw, w_hh, b_hh, h0 = (as_float_array(op, a, n) for a, n in ((xw, "xw"), (w_hh, "w_hh"), (b_hh, "b_hh"), (h0, "h0")))
    if h0.ndim != 2:
        raise ValueError(f"{op}: h0 must have shape (B, H), got {h0.shape}")
    batch, size = h0.shape
    expected = {"xw": (None, batch, gates * size), "w_hh": (size, gates * size), "b_hh": (gates * size,)}
    for name, a in (("xw", xw), ("w_hh", w_hh), ("b_hh", b_hh)):
        want = expected[name]
        if a.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, a.shape)):
            shape = ", ".join("T" if w is None else str(w) for w in want)
            raise ValueError(f"{op}: {name} has shape {a.shape}, expected ({shape}) for {mode} with h0 {h0.shape}")
    if xw.shape[0] == 0:
        raise ValueError(f"{op}: the sequence is empty (xw has shape {xw.shape}): at least one time step is needed")
    if (c0 is None) != (mode != "lstm"):
        raise ValueError(f"{op}: c0 (the cell state) is needed by the lstm mode and only by it; mode is {mode!r}")
    if c0 is not None:
        c0 = as_float_array(op, c0, "c0")
        if c0.shape != h0.shape:
            raise ValueError(f"{op}: c0 has shape {c0.shape}, expected the shape of h0 {h0.shape}")
    if mask is not None:
        mask = np.asarray(mask.data if isinstance(mask, TensorBase) else mask)
        if mask.dtype != np.bool_ or mask.shape != xw.shape[:2]:
            raise ValueError(
                f"{op}: mask must be a boolean array of shape (T, B) = {xw.shape[:2]} (True = a real step), "
                f"got {mask.dtype} of shape {mask.shape}"
            )
    dtype = np.result_type(xw, w_hh, b_hh, h0, *(() if c0 is None else (c0,)))
    cast = lambda a: None if a is None else a.astype(dtype, copy=False)  # noqa: E731
    return cast(xw), cast(w_hh), cast(b_hh), cast(h0), cast(c0), mask


def recurrent(
    xw: TensorLike,
    w_hh: TensorLike,
    b_hh: TensorLike,
    h0: TensorLike,
    c0: TensorLike | None = None,
    mode: str = "lstm",
    mask: np.ndarray | None = None,
) -> TensorResult:
    """The sequence op, time-major: xw (T,B,G*H) the input projections -> (T+S,B,H) outputs then final states.

    See :class:`Recurrent`. Most code calls :func:`lstm`, :func:`gru` or :func:`rnn` instead.
    """
    return Recurrent.apply(xw, w_hh, b_hh, h0, c0, mode=mode, mask=mask)


def recurrent_layer(
    x: TensorLike,
    w_ih: TensorLike,
    w_hh: TensorLike,
    b_ih: TensorLike | None = None,
    b_hh: TensorLike | None = None,
    state: TensorLike | tuple[TensorLike, TensorLike] | None = None,
    mask: np.ndarray | None = None,
    mode: str = "lstm",
    batch_first: bool = True,
) -> tuple[TensorResult, TensorResult | tuple[TensorResult, TensorResult]]:
    """One recurrent layer over a sequence: x (B,T,I) (or (T,B,I)) -> (y (B,T,H), final state).

    ``state`` is h0 (B,H), or (h0, c0) for the LSTM; zeros when None. The final state has the same form.
    ``mask`` (B,T) (or (T,B)) bool, True where a step is real.
    """
    if mode not in RECURRENT_MODES:
        raise ValueError(f"recurrent: mode must be one of {', '.join(RECURRENT_MODES)}, got {mode!r}")
    w_hh_data = w_hh.data if isinstance(w_hh, TensorBase) else np.asarray(w_hh)
    size = w_hh_data.shape[0]
    x_data = x.data if isinstance(x, TensorBase) else np.asarray(x)
    if x_data.ndim != 3:
        raise ValueError(
            f"recurrent: x must have shape {'(B, T, I)' if batch_first else '(T, B, I)'}, got {x_data.shape}"
        )
    steps, batch = (x_data.shape[1], x_data.shape[0]) if batch_first else x_data.shape[:2]
    dtype = np.result_type(x_data.dtype, w_hh_data.dtype)
    xt = swapaxes(x, 0, 1) if batch_first else x  # (T,B,I): each step's rows contiguous after the projection
    xw = linear(xt, w_ih, b_ih)  # (T,B,G*H) all input projections in one matmul
    if b_hh is None:
        b_hh = np.zeros(w_hh_data.shape[1], dtype=dtype)
    if mode == "lstm":
        h0, c0 = (None, None) if state is None else state  # type: ignore[misc]
    else:
        h0, c0 = state, None
    zeros = np.zeros((batch, size), dtype=dtype)
    h0 = zeros if h0 is None else h0
    if mode == "lstm" and c0 is None:
        c0 = zeros
    if mask is not None and batch_first:
        mask = np.asarray(mask.data if isinstance(mask, TensorBase) else mask).T
    out = Recurrent.apply(xw, w_hh, b_hh, h0, c0, mode=mode, mask=mask)
    y = getitem(out, slice(0, steps))
    y = swapaxes(y, 0, 1) if batch_first else y
    final = (getitem(out, steps), getitem(out, steps + 1)) if mode == "lstm" else getitem(out, steps)
    return y, final


def lstm(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, mask=None, batch_first=True):
    """An LSTM layer: x (B,T,I) -> (y (B,T,H), (h_n, c_n)). w_ih (I,4H), w_hh (H,4H), gates i f g o."""
    return recurrent_layer(x, w_ih, w_hh, b_ih, b_hh, state, mask, "lstm", batch_first)


def gru(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, mask=None, batch_first=True):
    """A GRU layer: x (B,T,I) -> (y (B,T,H), h_n). w_ih (I,3H), w_hh (H,3H), gates r z n (PyTorch's)."""
    return recurrent_layer(x, w_ih, w_hh, b_ih, b_hh, state, mask, "gru", batch_first)


def rnn(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, mask=None, batch_first=True):
    """An Elman RNN layer with tanh: x (B,T,I) -> (y (B,T,H), h_n). w_ih (I,H), w_hh (H,H)."""
    return recurrent_layer(x, w_ih, w_hh, b_ih, b_hh, state, mask, "rnn_tanh", batch_first)


def _cell(mode, x, state, w_ih, w_hh, b_ih, b_hh):
    x3 = reshape(x, (1,) + np.shape(x.data if isinstance(x, TensorBase) else x))
    _, final = recurrent_layer(x3, w_ih, w_hh, b_ih, b_hh, state, None, mode, batch_first=False)
    return final


def lstm_cell(x, state, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step: x (B,I), state (h, c) (B,H) each -> (h', c'). The sequence op with T = 1."""
    return _cell("lstm", x, state, w_ih, w_hh, b_ih, b_hh)


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step: x (B,I), h (B,H) -> h'. The sequence op with T = 1."""
    return _cell("gru", x, h, w_ih, w_hh, b_ih, b_hh)


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """One Elman (tanh) RNN step: x (B,I), h (B,H) -> h' = tanh(x W_ih + b_ih + h W_hh + b_hh)."""
    return _cell("rnn_tanh", x, h, w_ih, w_hh, b_ih, b_hh)
