"""Fused kernels, forward + backward: npgrad's Numba kernels vs their NumPy twins vs PyTorch CPU.

    python -m benchmarks kernels [--repeat N] [--json] [--markdown] [--only NAME ...] [--threads 2]

For each fused op at the shapes of the reference configs (float32), one "run" is the forward
kernel followed by the backward kernel on fresh outputs (allocation included, as in training):

* ``numba``: npgrad.kernels.numba_kernels (compiled and cached before timing);
* ``numpy``: npgrad.kernels.reference, the pure-NumPy twins;
* ``torch``: the same work as PyTorch CPU ops with autograd (``torch.autograd.grad``), through the op
  twins of benchmarks/torch_twins.py (the differential tests' reference), when torch imports (it is
  only the optional ``bench`` extra; npgrad never imports it).

The machine is shared and its speed drifts: every repetition runs the three contenders one after
the other (rotating who goes first), and the table reports medians over repetitions, so the
ratios compare runs made at the same moment. Inputs (masks included) are built before timing.

Extra rows decide the matmul question: many tiny batched products (attention-sized) through
np.matmul (OpenBLAS per product), a Numba loop and torch.bmm, and a big 2-D product (BLAS).
``lstm_sequence`` is an LSTM layer over a window (the input projection, the sequence kernel with backpropagation
through time, the projection's backward) against torch.nn.LSTM forward + backward at the same shapes.
A copy of a (4096, 8000) float32 array with --threads threads measures the memory bandwidth that bounds
the row kernels.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np

from benchmarks.meta import load_average, run_meta

# Shapes: N rows, V classes, C features, B batch (sentences), H heads, L lengths, D head size.
ROWS, CLASSES = 4096, 8000  # output softmax / cross-entropy over the shared vocabulary
FEATURES = 256  # d_model: layer norm
BATCH, LENGTH = 128, 32  # sentence pairs x tokens
EMBED_VOCAB, EMBED_IDS = 8000, 4096
LABEL_SMOOTHING, IGNORE_INDEX = 0.1, -100
LSTM_STEPS, LSTM_BATCH, LSTM_HIDDEN = 64, 32, 256  # T, B, H = I: an LSTM LM layer's window


# ------------------------------------------------------------------------------------ cases


class Case:
    """One benchmark row: inputs built once, and a fwd+bwd callable per contender."""

    def __init__(self, name, shape, build):
        self.name, self.shape, self.build = name, shape, build


def _row_inputs(rng):
    x = rng.standard_normal((ROWS, CLASSES), dtype=np.float32) * 2  # (N,V)
    g = rng.standard_normal((ROWS, CLASSES), dtype=np.float32)  # (N,V)
    return x, g


def _softmax_case(log):
    def build(rng, kernels, peer):
        x, g = _row_inputs(rng)
        fwd = "log_softmax_forward" if log else "softmax_forward"
        bwd = "log_softmax_backward" if log else "softmax_backward"

        def make(module):
            forward, backward = getattr(module, fwd), getattr(module, bwd)
            return lambda: backward(forward(x), g)

        runs = {"numba": make(kernels["numba"]), "numpy": make(kernels["numpy"])}
        if peer is not None:
            torch = peer.torch
            xt, gt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(g)
            op = peer.log_softmax if log else peer.softmax
            runs["torch"] = lambda: torch.autograd.grad(op(xt, -1), xt, gt)
        return runs

    return build


def _cross_entropy_build(rng, kernels, peer):
    x, _ = _row_inputs(rng)
    target = rng.integers(0, CLASSES, ROWS)  # (N,)
    target[rng.random(ROWS) < 0.1] = IGNORE_INDEX  # ~10% padding
    gloss = np.full(ROWS, 1.0 / ROWS, dtype=np.float32)  # (N,) d mean / d loss

    def make(module):
        def run():
            loss, lse = module.cross_entropy_forward(x, target, IGNORE_INDEX, LABEL_SMOOTHING)
            return module.cross_entropy_backward(x, target, lse, gloss, IGNORE_INDEX, LABEL_SMOOTHING)

        return run

    runs = {"numba": make(kernels["numba"]), "numpy": make(kernels["numpy"])}
    if peer is not None:
        torch = peer.torch
        xt, tt, gt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(target), torch.from_numpy(gloss)
        runs["torch"] = lambda: torch.autograd.grad(
            peer.cross_entropy(xt, tt, ignore_index=IGNORE_INDEX, label_smoothing=LABEL_SMOOTHING, reduction="none"),
            xt,
            gt,
        )
    return runs


def _layer_norm_case(with_residual):
    def build(rng, kernels, peer):
        x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)  # (N,C)
        r = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)  # (N,C)
        g = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)  # (N,C)
        w = (1 + 0.1 * rng.standard_normal(FEATURES)).astype(np.float32)  # (C,)
        b = (0.1 * rng.standard_normal(FEATURES)).astype(np.float32)  # (C,)

        def make(module):
            if with_residual:

                def run():
                    y, s, mean, rstd = module.add_layer_norm_forward(x, r, w, b, 1e-5)
                    return module.layer_norm_backward(g, s, w, mean, rstd)  # gx = gr = gs
            else:

                def run():
                    y, mean, rstd = module.layer_norm_forward(x, w, b, 1e-5)
                    return module.layer_norm_backward(g, x, w, mean, rstd)

            return run

        runs = {"numba": make(kernels["numba"]), "numpy": make(kernels["numpy"])}
        if peer is not None:
            torch = peer.torch
            tx, tr, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, r, w, b))
            tg = torch.from_numpy(g)
            if with_residual:
                runs["torch"] = lambda: torch.autograd.grad(
                    peer.add_layer_norm(tx, tr, tw, tb, 1e-5), (tx, tr, tw, tb), tg
                )
            else:
                runs["torch"] = lambda: torch.autograd.grad(peer.layer_norm(tx, tw, tb, 1e-5), (tx, tw, tb), tg)
        return runs

    return build


def _attention_case(heads, head_size, causal):
    def build(rng, kernels, peer):
        flat = BATCH * heads
        q, k, v, g = (rng.standard_normal((flat, LENGTH, head_size), dtype=np.float32) for _ in range(4))
        scale = 1.0 / np.sqrt(head_size)
        if causal:
            mask = None  # is_causal does it
            torch_mask = None
        else:
            # padding mask: sentence b has lengths[b] real tokens; keys beyond are masked
            lengths = rng.integers(LENGTH // 2, LENGTH + 1, BATCH)
            key_ok = np.arange(LENGTH)[None, :] < lengths[:, None]  # (B,Lk)
            torch_mask = key_ok[:, None, None, :]  # (B,1,1,Lk)
            mask = np.ascontiguousarray(  # (B*H,Lq,Lk) as the op passes it
                np.broadcast_to(torch_mask, (BATCH, heads, LENGTH, LENGTH)).reshape(flat, LENGTH, LENGTH)
            )

        def make(module):
            def run():
                out, probs = module.attention_forward(q, k, v, mask, causal, scale)
                return module.attention_backward(q, k, v, probs, g, scale)

            return run

        runs = {"numba": make(kernels["numba"]), "numpy": make(kernels["numpy"])}
        if peer is not None:
            torch = peer.torch
            shape4 = (BATCH, heads, LENGTH, head_size)
            tq, tk, tv = (torch.from_numpy(a).view(shape4).requires_grad_() for a in (q, k, v))
            tg = torch.from_numpy(g).view(shape4)
            tmask = None if torch_mask is None else torch.from_numpy(torch_mask)
            runs["torch"] = lambda: torch.autograd.grad(
                peer.scaled_dot_product_attention(tq, tk, tv, mask=tmask, is_causal=causal, scale=scale),
                (tq, tk, tv),
                tg,
            )
        return runs

    return build


def _embedding_build(rng, kernels, peer):
    weight = rng.standard_normal((EMBED_VOCAB, FEATURES), dtype=np.float32)  # (V,C)
    # Zipf-like ids, as real tokens are: frequent ids repeat within a batch
    ids = np.minimum(rng.zipf(1.2, EMBED_IDS) - 1, EMBED_VOCAB - 1).astype(np.int64)  # (N,)
    g = rng.standard_normal((EMBED_IDS, FEATURES), dtype=np.float32)  # (N,C)

    def make(module):
        def run():
            weight[ids]  # the forward gather
            return module.embedding_backward(ids, g, EMBED_VOCAB)

        return run

    runs = {"numba": make(kernels["numba"]), "numpy": make(kernels["numpy"])}
    if peer is not None:
        torch = peer.torch
        tw, ti, tg = torch.from_numpy(weight).requires_grad_(), torch.from_numpy(ids), torch.from_numpy(g)
        runs["torch"] = lambda: torch.autograd.grad(peer.embedding(ti, tw), tw, tg)
    return runs


def _gelu_build(rng, kernels, peer):
    x = rng.standard_normal((ROWS, 4 * FEATURES), dtype=np.float32)  # (N, 4C) the MLP's hidden layer
    g = rng.standard_normal((ROWS, 4 * FEATURES), dtype=np.float32)

    def make(module):
        def run():
            module.gelu_forward(x, "none")
            return module.gelu_backward(x, g, "none")

        return run

    runs = {"numba": make(kernels["numba"]), "numpy": make(kernels["numpy"])}
    if peer is not None:
        torch = peer.torch
        xt, gt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(g)
        runs["torch"] = lambda: torch.autograd.grad(peer.gelu(xt), xt, gt)
    return runs


def _lstm_build(rng, kernels, peer):
    """An LSTM layer over a sequence, forward + backward to the input and every weight, against torch nn.LSTM.

    Ours: the input projections of all steps in one matmul, the sequence kernel (forward, then backpropagation
    through time), and the projection's backward (two matmuls), i.e. what F.lstm does minus the graph.
    """
    steps, batch, size = LSTM_STEPS, LSTM_BATCH, LSTM_HIDDEN
    x = rng.standard_normal((steps * batch, size), dtype=np.float32)  # (T*B,I) time-major rows
    w_ih = rng.uniform(-0.06, 0.06, (size, 4 * size)).astype(np.float32)  # (I,4H)
    w_hh = rng.uniform(-0.06, 0.06, (size, 4 * size)).astype(np.float32)  # (H,4H)
    b = rng.uniform(-0.06, 0.06, 4 * size).astype(np.float32)
    h0 = np.zeros((batch, size), dtype=np.float32)
    g = rng.standard_normal((steps + 2, batch, size), dtype=np.float32)  # outputs, then the final h and c
    g[steps:] = 0.0  # torch's run below differentiates the outputs only

    def make(module):
        def run():
            xw = (x @ w_ih + b).reshape(steps, batch, 4 * size)
            out, acts, hs, cs = module.recurrent_forward("lstm", xw, w_hh, b, h0, h0, None)
            gxw, gw_hh, gb, _, _ = module.recurrent_backward("lstm", g, w_hh, acts, hs, cs, None)
            gxw = gxw.reshape(steps * batch, 4 * size)
            return gxw @ w_ih.T, x.T @ gxw, gw_hh, gb

        return run

    runs = {"numba": make(kernels["numba"]), "numpy": make(kernels["numpy"])}
    if peer is not None:
        torch = peer.torch
        layer = torch.nn.LSTM(size, size)
        with torch.no_grad():
            layer.weight_ih_l0.copy_(torch.from_numpy(w_ih.T.copy()))
            layer.weight_hh_l0.copy_(torch.from_numpy(w_hh.T.copy()))
        xt = torch.from_numpy(x.reshape(steps, batch, size)).requires_grad_()
        gt = torch.from_numpy(g[:steps])
        params = tuple(layer.parameters())
        runs["torch"] = lambda: torch.autograd.grad(layer(xt)[0], (xt, *params), gt)
    return runs


# --- the matmul decision: is a Numba kernel worth having for batched / 2-D products?

_numba_bmm = None


def _numba_batched_matmul():
    """A straightforward Numba batched matmul (prange over the batch, axpy inner loop, SIMD)."""
    global _numba_bmm
    if _numba_bmm is None:
        from numba import njit, prange

        @njit(parallel=True, fastmath={"nsz", "arcp", "contract", "reassoc"}, cache=True)
        def bmm(a, b, out):  # (B,M,K) @ (B,K,N) -> (B,M,N)
            for batch in prange(a.shape[0]):
                ab, bb, ob = a[batch], b[batch], out[batch]
                for i in range(a.shape[1]):
                    orow = ob[i]
                    orow[:] = 0
                    for kk in range(a.shape[2]):
                        aik = ab[i, kk]
                        brow = bb[kk]
                        for j in range(b.shape[2]):
                            orow[j] += aik * brow[j]

        def run(a, b):
            out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=a.dtype)
            bmm(a, b, out)
            return out

        _numba_bmm = run
    return _numba_bmm


def _batched_matmul_build(rng, kernels, peer):
    # q k^T at attention shapes: (B*H, Lq, D) @ (B*H, D, Lk), B*H = 512, D = 64
    a = rng.standard_normal((BATCH * 4, LENGTH, 64), dtype=np.float32)
    b = rng.standard_normal((BATCH * 4, 64, LENGTH), dtype=np.float32)
    bmm = _numba_batched_matmul()
    runs = {"numba": lambda: bmm(a, b), "numpy": lambda: np.matmul(a, b)}
    if peer is not None:
        torch = peer.torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        runs["torch"] = lambda: torch.bmm(ta, tb)
    return runs


def _matmul_2d_build(rng, kernels, peer):
    # a feed-forward projection: (4096, 256) @ (256, 1024). The "numba" column is a Numba loop
    # over a batch of one, only to show how far a plain loop is from BLAS.
    a = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    b = rng.standard_normal((FEATURES, 4 * FEATURES), dtype=np.float32)
    bmm = _numba_batched_matmul()
    runs = {"numba": lambda: bmm(a[None], b[None]), "numpy": lambda: a @ b}
    if peer is not None:
        torch = peer.torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        runs["torch"] = lambda: ta @ tb
    return runs


CASES = [
    Case("softmax", f"{ROWS}x{CLASSES}", _softmax_case(log=False)),
    Case("log_softmax", f"{ROWS}x{CLASSES}", _softmax_case(log=True)),
    Case("cross_entropy", f"{ROWS}x{CLASSES} eps={LABEL_SMOOTHING} ~10% ignored", _cross_entropy_build),
    Case("layer_norm", f"{ROWS}x{FEATURES}", _layer_norm_case(with_residual=False)),
    Case("add_layer_norm", f"{ROWS}x{FEATURES}", _layer_norm_case(with_residual=True)),
    Case("attention_h4d64_pad", f"B={BATCH} H=4 D=64 L={LENGTH}x{LENGTH} padding mask", _attention_case(4, 64, False)),
    Case("attention_h4d64_causal", f"B={BATCH} H=4 D=64 L={LENGTH}x{LENGTH} causal", _attention_case(4, 64, True)),
    Case("attention_h8d32_pad", f"B={BATCH} H=8 D=32 L={LENGTH}x{LENGTH} padding mask", _attention_case(8, 32, False)),
    Case("attention_h8d32_causal", f"B={BATCH} H=8 D=32 L={LENGTH}x{LENGTH} causal", _attention_case(8, 32, True)),
    Case("embedding", f"{EMBED_IDS} ids -> {EMBED_VOCAB}x{FEATURES} (gather + scatter-add)", _embedding_build),
    Case("gelu", f"{ROWS}x{4 * FEATURES} exact (erf)", _gelu_build),
    Case(
        "lstm_sequence",
        f"T={LSTM_STEPS} B={LSTM_BATCH} I=H={LSTM_HIDDEN} (input projection + BPTT) vs nn.LSTM",
        _lstm_build,
    ),
    Case("matmul_batched_tiny", f"{BATCH * 4}x({LENGTH}x64 @ 64x{LENGTH}) forward only", _batched_matmul_build),
    Case("matmul_2d", f"{ROWS}x{FEATURES} @ {FEATURES}x{4 * FEATURES} forward only", _matmul_2d_build),
]


# -------------------------------------------------------------------------------- timing


def _memory_bandwidth(repeat):
    """GB/s of a Numba copy (numba.set_num_threads threads) of a (4096, 8000) float32 array (read + write bytes)."""
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def copy(src, dst):
        for n in prange(src.shape[0]):
            for j in range(src.shape[1]):
                dst[n, j] = src[n, j]

    src = np.ones((ROWS, CLASSES), dtype=np.float32)
    dst = np.empty_like(src)
    copy(src, dst)
    times = []
    for _ in range(max(3, repeat)):
        start = time.perf_counter()
        copy(src, dst)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times) / 1e9


def _threading_layer(numba):
    try:
        return numba.threading_layer()
    except ValueError:  # no prange function ran (e.g. --only without the matmul rows)
        return "not started"


def _time_case(runs, repeat):
    names = list(runs)
    for run in runs.values():  # warm-up: compile, fill caches, let allocators settle
        run()
        run()
    samples = {name: [] for name in names}
    for rep in range(repeat):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate who goes first
        for name in order:
            start = time.perf_counter()
            runs[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed repetitions per op (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="threads for Numba and PyTorch")
    parser.add_argument("--only", nargs="*", default=None, help="run only these ops (names as printed)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it imports")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for RESULTS.md)")
    args = parser.parse_args(argv)

    import numba
    from npgrad.kernels import numba_kernels, reference

    numba.set_num_threads(args.threads)  # the matmul/bandwidth helpers below use prange
    numba_kernels.set_num_threads(args.threads)  # the kernels' own thread pool
    peer = None  # benchmarks.torch_twins: PyTorch doing the same work
    if not args.no_torch:
        try:
            from benchmarks import torch_twins as peer

            peer.torch.set_num_threads(args.threads)
        except ImportError:
            peer = None
    kernels = {"numba": numba_kernels, "numpy": reference}

    cases = CASES if not args.only else [c for c in CASES if c.name in args.only]
    unknown = set(args.only or ()) - {c.name for c in CASES}
    if unknown:
        parser.error(f"unknown op(s) {sorted(unknown)}; choose from {[c.name for c in CASES]}")

    rng = np.random.default_rng(0)
    load_before = load_average()
    rows = []
    for case in cases:
        runs = case.build(rng, kernels, peer)
        ms = _time_case(runs, args.repeat)
        row = {"op": case.name, "shape": case.shape, "ms": ms, "numba_over_numpy": ms["numba"] / ms["numpy"]}
        if "torch" in ms:
            row["numba_over_torch"] = ms["numba"] / ms["torch"]
        rows.append(row)
        del runs
        if not (args.json or args.markdown):
            print(_format_row(row), flush=True)
    bandwidth = _memory_bandwidth(args.repeat)
    meta = run_meta(
        "kernels",
        argv,
        args.threads,
        load_before,
        peer and peer.torch,
        numba_threading_layer=_threading_layer(numba),
        dtype="float32",
        repeat=args.repeat,
        statistic="median",
        copy_bandwidth_GBps=bandwidth,
    )
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    elif args.markdown:
        print(_markdown(meta, rows))
    else:
        print(
            f"{args.threads}-thread copy bandwidth: {bandwidth:.1f} GB/s;  load average before/after: "
            f"{meta['load_average_before']} / {meta['load_average_after']}"
        )
        print(json.dumps({k: v for k, v in meta.items() if k not in ("load_average_before", "load_average_after")}))
    return 0


def _format_row(row):
    ms = row["ms"]
    torch_ms = f"{ms['torch']:9.2f}" if "torch" in ms else "        -"
    vs_torch = f"{row['numba_over_torch']:6.2f}" if "numba_over_torch" in row else "     -"
    return (
        f"{row['op']:<24} numba {ms['numba']:9.2f} ms  numpy {ms['numpy']:9.2f} ms  torch {torch_ms} ms  "
        f"numba/numpy {row['numba_over_numpy']:5.2f}  numba/torch {vs_torch}"
    )


def _markdown(meta, rows):
    from benchmarks.report import kernels_table

    return "\n".join(
        [
            kernels_table(rows),
            "",
            f"{meta['threads']}-thread copy bandwidth {meta['copy_bandwidth_GBps']:.1f} GB/s; load average before "
            f"{meta['load_average_before']}, after {meta['load_average_after']}; versions {meta['versions']}; "
            f"machine {meta['machine']}, {meta['cpus']} CPUs, {meta['threads']} threads "
            f"(kernels: their own thread pool; Numba prange layer {meta['numba_threading_layer']} for the "
            f"matmul/bandwidth helpers); median of {meta['repeat']}.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
