"""Where the nanoGPT recipe's iteration goes: forward, backward, clipping, optimizer — npgrad vs PyTorch.

    python -m benchmarks nanogpt-split [--iters 240] [--chunk 20] [--threads 1] [--json] [--data-dir DIR]

A diagnostic behind the wall-time ratio of ``python -m benchmarks nanogpt`` (the same model, weights,
batches and optimizer settings; see that module). Three contenders alternate in chunks of ``--chunk``
iterations so that they share the machine's load:

* ``npgrad``: the recipe's iteration as the ``nanogpt`` benchmark runs it;
* ``npgrad, torch GEMMs``: the same, with the 17 ``Linear`` forward products and 34 backward products
  computed by ``torch.matmul`` on the same (zero-copy) arrays instead of NumPy's BLAS. Everything else
  is npgrad. This isolates how much of the gap is the BLAS library (NumPy's OpenBLAS vs the kernels
  PyTorch's CPU build ships) rather than the engine, the kernels or the optimizer;
* ``pytorch``: nanoGPT's model in PyTorch.

The models keep training through the chunks (the timings do not depend on the values). Each phase is
timed separately; the table gives medians over the iterations after the first chunk.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks nanogpt-split", description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=240, help="iterations per contender")
    p.add_argument("--chunk", type=int, default=20, help="iterations per turn when alternating contenders")
    p.add_argument("--threads", type=int, default=1, help="BLAS/Numba/PyTorch threads")
    p.add_argument("--data-dir", help="cache directory holding tinyshakespeare/ (default TRANSFORMER_DATA)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.iters <= args.chunk:
        p.error("--iters must exceed --chunk (the first chunk is not counted)")
    return args


def _torch_gemm_linear(torch):
    """npgrad's Linear with its products done by torch.matmul on the same arrays (a diagnostic twin)."""
    from npgrad.ops.linear import Linear

    def mm(a, b):
        return torch.from_numpy(a).matmul(torch.from_numpy(b)).numpy()

    class TorchGemmLinear(Linear):
        @staticmethod
        def forward(ctx, x, w, b=None):
            x2 = x.reshape(-1, w.shape[0])  # (N, in)
            y2 = mm(x2, w)  # (N, out)
            if b is not None:
                y2 += b
            ctx.save_for_backward(x, w, x2)
            return y2.reshape(x.shape[:-1] + (w.shape[1],))

        @staticmethod
        def backward(ctx, g):
            x, w, x2 = ctx.saved
            g2 = g.reshape(-1, w.shape[1])  # (N, out)
            gx = mm(g2, w.T).reshape(x.shape) if ctx.needs_input_grad[0] else None
            gw = mm(x2.T, g2) if ctx.needs_input_grad[1] else None
            gb = g2.sum(axis=0) if ctx.needs_input_grad[2] else None
            return gx, gw, gb

    return Linear, TorchGemmLinear


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from benchmarks import nanogpt as nb

    nb.set_threads(args.threads)
    from benchmarks.meta import import_torch, load_average, run_meta

    torch = import_torch(args.threads)
    if torch is None:
        print("nanogpt-split needs PyTorch (pip install 'npgrad[bench]')", file=sys.stderr)
        return 2
    import numpy as np

    # The recipe's model, weights, batches and schedule (over its 2000 iterations), as `benchmarks nanogpt` has them.
    recipe = nb.parse_args(["--iters", str(args.iters)] + (["--data-dir", args.data_dir] if args.data_dir else []))
    data, model_cfg, ours, theirs = nb.setup(recipe, torch, max_steps=2000)
    ours.warm_up(model_cfg, data.batches[0])
    theirs.warm_up(model_cfg, data.batches[0])
    linear, torch_gemm_linear = _torch_gemm_linear(torch)
    numpy_apply, torch_apply = linear.apply, torch_gemm_linear.apply

    def timed(contender):
        """-> iteration(x, y) returning the seconds of each phase of contender.step."""

        def iteration(x, y):
            stamps = [time.perf_counter()]
            contender.step(x, y, mark=lambda phase: stamps.append(time.perf_counter()))
            return np.diff(stamps)

        return iteration

    contenders = {
        "npgrad": (timed(ours), numpy_apply),
        "npgrad, torch GEMMs": (timed(ours), torch_apply),
        "pytorch": (timed(theirs), numpy_apply),
    }
    times = {name: [] for name in contenders}
    load_before = load_average()
    try:
        for turn, start in enumerate(range(0, args.iters, args.chunk)):
            names = list(contenders) if turn % 2 == 0 else list(contenders)[::-1]
            for name in names:
                iteration, apply = contenders[name]
                linear.apply = apply
                for x, y in data.batches[start : start + args.chunk]:
                    times[name].append(iteration(x, y))
    finally:
        linear.apply = numpy_apply
    report = {
        "benchmark": "nanoGPT recipe iteration, split by phase",
        "iters": args.iters,
        "chunk": args.chunk,
        "meta": run_meta("nanogpt-split", argv, args.threads, load_before, torch, dtype="float32"),
        "ms_median": {},
    }
    for name, rows in times.items():
        median = np.median(np.asarray(rows[args.chunk :]) * 1000, axis=0)
        report["ms_median"][name] = dict(zip(nb.PHASES, map(float, median)), total=float(median.sum()))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    meta = report["meta"]
    print(
        f"{report['benchmark']}: {args.iters} iterations each, chunks of {args.chunk}, {args.threads} thread(s); "
        f"load {meta['load_average_before']} -> {meta['load_average_after']}"
    )
    print(
        "\n| contender | forward | backward | clip | optimizer | sum (ms; medians per phase) |\n|---|---:|---:|---:|---:|---:|"
    )
    for name, m in report["ms_median"].items():
        print(
            f"| {name} | {m['forward']:.1f} | {m['backward']:.1f} | {m['clip']:.2f} | {m['optimizer']:.2f} "
            f"| {m['total']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
