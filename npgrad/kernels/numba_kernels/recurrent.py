"""Recurrent cells over time (RNN tanh, GRU, LSTM), forward and backpropagation through time.

NumPy twins: reference.recurrent_forward, recurrent_backward (npgrad/kernels/reference.py, section "recurrent
cells"), same signatures and results; the derivation is in npgrad/ops/recurrent.py (Recurrent).

Each time step is one BLAS product (h_{t-1} W_hh forward, dhw_t W_hh^T backward) and one jitted pass over the
step's (B, G*H) gates that does all the element-wise work: bias, the sigmoids and tanhs (through the
vectorisable _exp: Numba's np.tanh is a scalar libm call here), the cell update, the mask, and writing the saved
activations and states. The reference makes ~20 NumPy passes a step for the same. The time loop itself stays in
Python: the product needs BLAS, which jitted code reaches only through SciPy (not a dependency). No SciPy, no
threads here: a step's element-wise work is small next to its product, which OpenBLAS threads itself.
"""

import numpy as np
from numba import njit

from ..reference import RECURRENT_MODES
from ._inputs import _float_dtype, _prep
from ._intrinsics import _exp
from ._jit import _JIT

# error_model="numpy": no exception branch on the divisions (1 / (1 + e)), which would keep the loops scalar.
_RNN_JIT = dict(_JIT, error_model="numpy")
_SAVED_ACTIVATIONS = {"rnn_tanh": 1, "gru": 4, "lstm": 5}  # A: acts (T,B,A*H), as in reference.cell_forward


@njit(**_RNN_JIT)
def _gates(xw_row, hw_row, b, scale, out):
    # out[j] = sigma(a_j) where scale[j] = 1 and tanh(a_j) = 2 sigma(2 a_j) - 1 where scale[j] = 2,
    # a = xw + hw + b: one branch-free loop over all gates, so that it vectorises.
    one = out.dtype.type(1.0)
    for j in range(out.shape[0]):
        k = scale[j]
        out[j] = k / (one + _exp(-k * (xw_row[j] + hw_row[j] + b[j]))) - (k - one)


@njit(**_RNN_JIT)
def _lstm_forward_step(xw, hw, b, scale, c_prev, h_prev, keep, has_mask, acts, y, h, c):
    # xw, hw (B,4H), b (4H,), c_prev, h_prev (B,H), keep (B,) -> acts (B,5H) i f g o tanh(c); y, h, c (B,H)
    size = h_prev.shape[1]
    T = xw.dtype.type
    one, two = T(1.0), T(2.0)
    for row in range(xw.shape[0]):
        a_row = acts[row]
        _gates(xw[row], hw[row], b, scale, a_row[: 4 * size])
        i, f, g, o = a_row[:size], a_row[size : 2 * size], a_row[2 * size : 3 * size], a_row[3 * size : 4 * size]
        tanh_c = a_row[4 * size :]
        c_old, h_old, c_new, h_new, y_row = c_prev[row], h_prev[row], c[row], h[row], y[row]
        for j in range(size):
            cell = f[j] * c_old[j] + i[j] * g[j]
            tanh_c[j] = two / (one + _exp(-two * cell)) - one
            c_new[j] = cell
            h_new[j] = o[j] * tanh_c[j]
            y_row[j] = h_new[j]
        if has_mask and not keep[row]:  # a padding step: the state passes through, the output is 0
            c_new[:] = c_old
            h_new[:] = h_old
            y_row[:] = T(0.0)


@njit(**_RNN_JIT)
def _gru_forward_step(xw, hw, b, scale, h_prev, keep, has_mask, acts, y, h):
    # xw, hw (B,3H), b (3H,), h_prev (B,H) -> acts (B,4H) r z n hn (hn = h_prev W_hn + b_hn); y, h (B,H)
    size = h_prev.shape[1]
    T = xw.dtype.type
    one, two = T(1.0), T(2.0)
    for row in range(xw.shape[0]):
        x_row, hw_row, a_row = xw[row], hw[row], acts[row]
        _gates(x_row[: 2 * size], hw_row[: 2 * size], b[: 2 * size], scale[: 2 * size], a_row[: 2 * size])
        r, z, n, hn = a_row[:size], a_row[size : 2 * size], a_row[2 * size : 3 * size], a_row[3 * size :]
        x_n, hw_n, b_n, h_old, h_new, y_row = (
            x_row[2 * size :],
            hw_row[2 * size :],
            b[2 * size :],
            h_prev[row],
            h[row],
            y[row],
        )
        for j in range(size):
            hn[j] = hw_n[j] + b_n[j]
            n[j] = two / (one + _exp(-two * (x_n[j] + r[j] * hn[j]))) - one
            h_new[j] = (one - z[j]) * n[j] + z[j] * h_old[j]
            y_row[j] = h_new[j]
        if has_mask and not keep[row]:
            h_new[:] = h_old
            y_row[:] = T(0.0)


@njit(**_RNN_JIT)
def _rnn_forward_step(xw, hw, b, scale, h_prev, keep, has_mask, acts, y, h):
    # xw, hw (B,H), b (H,) -> acts (B,H) = tanh(xw + hw + b); y, h (B,H)
    for row in range(xw.shape[0]):
        _gates(xw[row], hw[row], b, scale, acts[row])
        h[row] = acts[row]
        y[row] = acts[row]
        if has_mask and not keep[row]:
            h[row] = h_prev[row]
            y[row] = xw.dtype.type(0.0)


_TANH_GATES = {"rnn_tanh": (0,), "gru": (), "lstm": (2,)}  # gates computed by _gates as tanh (scale 2)


def recurrent_forward(mode, xw, w_hh, b_hh, h0, c0, mask):
    """The cell over time.   xw (T,B,G*H), w_hh (H,G*H), b_hh (G*H,), h0 (B,H), c0 (B,H)|None, mask (T,B)|None
    -> out (T+S,B,H), acts (T,B,A*H), hs (T+1,B,H), cs (T+1,B,H) or (0,B,H)."""
    dtype = _float_dtype("recurrent_forward", xw)
    xw, w_hh, b_hh, h0 = (_prep(a, dtype) for a in (xw, w_hh, b_hh, h0))
    steps, batch, _ = xw.shape
    size = h0.shape[1]
    lstm = mode == "lstm"
    out = np.empty((steps + (2 if lstm else 1), batch, size), dtype=dtype)
    acts = np.empty((steps, batch, _SAVED_ACTIVATIONS[mode] * size), dtype=dtype)
    hs = np.empty((steps + 1, batch, size), dtype=dtype)
    hs[0] = h0
    cs = np.empty((steps + 1 if lstm else 0, batch, size), dtype=dtype)
    if lstm:
        cs[0] = c0
    has_mask = mask is not None
    keep = np.ascontiguousarray(mask) if has_mask else np.ones((steps, batch), dtype=np.bool_)
    gates = RECURRENT_MODES[mode]
    hw = np.empty((batch, gates * size), dtype=dtype)  # (B,G*H) h_{t-1} W_hh, one buffer
    scale = np.ones((gates, size), dtype=dtype)  # (G,H) 1: a sigmoid gate, 2: a tanh (see _gates)
    scale[list(_TANH_GATES[mode])] = 2.0
    scale = scale.reshape(-1)
    for t in range(steps):
        np.matmul(hs[t], w_hh, out=hw)
        if lstm:
            _lstm_forward_step(
                xw[t], hw, b_hh, scale, cs[t], hs[t], keep[t], has_mask, acts[t], out[t], hs[t + 1], cs[t + 1]
            )
        elif mode == "gru":
            _gru_forward_step(xw[t], hw, b_hh, scale, hs[t], keep[t], has_mask, acts[t], out[t], hs[t + 1])
        else:
            _rnn_forward_step(xw[t], hw, b_hh, scale, hs[t], keep[t], has_mask, acts[t], out[t], hs[t + 1])
    out[steps] = hs[steps]
    if lstm:
        out[steps + 1] = cs[steps]
    return out, acts, hs, cs


@njit(**_RNN_JIT)
def _lstm_backward_step(gy, dh, dh_mm, dc, acts, c_prev, keep, has_mask, da):
    # In: gy (B,H) dL/dy_t; dh + dh_mm dL/dh_t (carried, and dhw_{t+1} W_hh^T); dc (B,H) dL/dc_t.
    # Out: da (B,4H) dL/d(pre-activations); dh, dc overwritten with the direct parts of dL/dh_{t-1}, dL/dc_{t-1}.
    size = gy.shape[1]
    T = gy.dtype.type
    one = T(1.0)
    for row in range(gy.shape[0]):
        a_row, d_row = acts[row], da[row]
        real = not has_mask or keep[row]
        for j in range(size):
            i, f, g, o, tanh_c = (
                a_row[j],
                a_row[size + j],
                a_row[2 * size + j],
                a_row[3 * size + j],
                a_row[4 * size + j],
            )
            dh_total = dh[row, j] + dh_mm[row, j]
            dh_new = gy[row, j] + dh_total
            dc_new = dc[row, j]
            if real:
                dh[row, j] = T(0.0)
                dc[row, j] = T(0.0)
            else:  # a padding step: the carried gradients pass through, the cell sees none
                dh[row, j] = dh_total
                dh_new = T(0.0)
                dc_new = T(0.0)
            dc_new += dh_new * o * (one - tanh_c * tanh_c)
            d_row[j] = dc_new * g * i * (one - i)
            d_row[size + j] = dc_new * c_prev[row, j] * f * (one - f)
            d_row[2 * size + j] = dc_new * i * (one - g * g)
            d_row[3 * size + j] = dh_new * tanh_c * o * (one - o)
            dc[row, j] += dc_new * f


@njit(**_RNN_JIT)
def _gru_backward_step(gy, dh, dh_mm, acts, h_prev, keep, has_mask, dxw, dhw):
    # Out: dxw, dhw (B,3H) the gradients of the two projections; dh overwritten with the direct part of dL/dh_{t-1}.
    size = gy.shape[1]
    T = gy.dtype.type
    one = T(1.0)
    for row in range(gy.shape[0]):
        a_row = acts[row]
        real = not has_mask or keep[row]
        for j in range(size):
            r, z, n, hn = a_row[j], a_row[size + j], a_row[2 * size + j], a_row[3 * size + j]
            dh_total = dh[row, j] + dh_mm[row, j]
            dh_new = gy[row, j] + dh_total
            if real:
                dh[row, j] = dh_new * z
            else:
                dh[row, j] = dh_total
                dh_new = T(0.0)
            dn = dh_new * (one - z) * (one - n * n)
            dr = dn * hn * r * (one - r)
            dz = dh_new * (h_prev[row, j] - n) * z * (one - z)
            dxw[row, j], dxw[row, size + j], dxw[row, 2 * size + j] = dr, dz, dn
            dhw[row, j], dhw[row, size + j], dhw[row, 2 * size + j] = dr, dz, dn * r


@njit(**_RNN_JIT)
def _rnn_backward_step(gy, dh, dh_mm, acts, keep, has_mask, da):
    T = gy.dtype.type
    one = T(1.0)
    for row in range(gy.shape[0]):
        real = not has_mask or keep[row]
        for j in range(gy.shape[1]):
            dh_total = dh[row, j] + dh_mm[row, j]
            h = acts[row, j]
            if real:
                da[row, j] = (gy[row, j] + dh_total) * (one - h * h)
                dh[row, j] = T(0.0)
            else:
                da[row, j] = T(0.0)
                dh[row, j] = dh_total


def recurrent_backward(mode, gout, w_hh, acts, hs, cs, mask):
    """Backpropagation through time.   gout (T+S,B,H) -> gxw (T,B,G*H), gw_hh (H,G*H), gb_hh (G*H,), gh0, gc0|None"""
    dtype = _float_dtype("recurrent_backward", acts)
    gout, w_hh, acts, hs, cs = (_prep(a, dtype) for a in (gout, w_hh, acts, hs, cs))
    steps, batch, _ = acts.shape
    size = hs.shape[2]
    lstm = mode == "lstm"
    width = RECURRENT_MODES[mode] * size
    w_hh_t = np.ascontiguousarray(w_hh.T)  # (G*H,H)
    gxw = np.empty((steps, batch, width), dtype=dtype)
    dhw = np.empty_like(gxw) if mode == "gru" else gxw  # RNN and LSTM: the two projections' gradients agree
    dh = gout[steps].copy()  # (B,H) carried dL/dh_t, without the dhw_{t+1} W_hh^T part (dh_mm)
    dc = gout[steps + 1].copy() if lstm else dh
    dh_mm = np.zeros((batch, size), dtype=dtype)
    has_mask = mask is not None
    keep = np.ascontiguousarray(mask) if has_mask else np.ones((steps, batch), dtype=np.bool_)
    for t in range(steps - 1, -1, -1):
        if lstm:
            _lstm_backward_step(gout[t], dh, dh_mm, dc, acts[t], cs[t], keep[t], has_mask, gxw[t])
        elif mode == "gru":
            _gru_backward_step(gout[t], dh, dh_mm, acts[t], hs[t], keep[t], has_mask, gxw[t], dhw[t])
        else:
            _rnn_backward_step(gout[t], dh, dh_mm, acts[t], keep[t], has_mask, gxw[t])
        np.matmul(dhw[t], w_hh_t, out=dh_mm)
    dh += dh_mm
    rows = steps * batch
    dhw_rows = dhw.reshape(rows, width)
    gw_hh = hs[:steps].reshape(rows, size).T @ dhw_rows
    return gxw, gw_hh, dhw_rows.sum(axis=0), dh, (dc if lstm else None)
