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
import os
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
            x2 = x.reshape(-1, w.shape[0])                                       # (N, in)
            y2 = mm(x2, w)                                                       # (N, out)
            if b is not None:
                y2 += b
            ctx.save_for_backward(x, w, x2)
            return y2.reshape(x.shape[:-1] + (w.shape[1],))

        @staticmethod
        def backward(ctx, g):
            x, w, x2 = ctx.saved
            g2 = g.reshape(-1, w.shape[1])                                       # (N, out)
            gx = mm(g2, w.T).reshape(x.shape) if ctx.needs_input_grad[0] else None
            gw = mm(x2.T, g2) if ctx.needs_input_grad[1] else None
            gb = g2.sum(axis=0) if ctx.needs_input_grad[2] else None
            return gx, gw, gb

    return Linear, TorchGemmLinear


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from benchmarks.nanogpt import set_threads
    set_threads(args.threads)
    try:
        import torch
    except ImportError:
        print("nanogpt-split needs PyTorch (pip install 'npgrad[bench]')", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    import numpy as np
    import npgrad as ng
    from benchmarks import nanogpt as nb
    from transformer.config import load_config
    from transformer.model import LMConfig
    from transformer.train import train_settings

    config = load_config("shakespeare_char")
    settings = train_settings({**config["train"], "max_steps": 2000})
    model_section = dict(config["model"])
    model_section.setdefault("seed", 1337)
    data_args = nb.parse_args(["--iters", str(args.iters)] + (["--data-dir", args.data_dir] if args.data_dir else []))
    probe = LMConfig(vocab_size=65, **model_section)
    data = nb.Data(data_args, probe.block_size, int(settings["batch_size"]), 0.9)
    model_cfg = LMConfig(vocab_size=data.tokenizer.vocab_size, **model_section)
    ours = nb.NpgradContender(model_cfg, settings, None)
    theirs = nb.TorchContender(torch, model_cfg, settings, ours.state())
    ours.warm_up(model_cfg, data.batches[0])
    theirs.warm_up(model_cfg, data.batches[0])
    linear, torch_gemm_linear = _torch_gemm_linear(torch)
    numpy_apply, torch_apply = linear.apply, torch_gemm_linear.apply
    F = ours.F

    def npgrad_iteration(x, y):
        t0 = time.perf_counter()
        ours.optimizer.zero_grad()
        logits = ours.model(x)                                                   # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        ng.optim.clip_grad_norm_(ours.optimizer.params, settings["clip_norm"])
        t3 = time.perf_counter()
        ours.optimizer.step()
        ours.schedule.step()
        float(loss.data)
        return t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3

    def torch_iteration(x, y):
        t0 = time.perf_counter()
        theirs.iteration += 1
        for group in theirs.optimizer.param_groups:
            group["lr"] = theirs.lr_at(theirs.iteration)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        logits = theirs.model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        theirs.optimizer.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(theirs.model.parameters(), settings["clip_norm"])
        t3 = time.perf_counter()
        theirs.optimizer.step()
        loss.item()
        return t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3

    contenders = {"npgrad": (npgrad_iteration, numpy_apply),
                  "npgrad, torch GEMMs": (npgrad_iteration, torch_apply),
                  "pytorch": (torch_iteration, numpy_apply)}
    times = {name: [] for name in contenders}
    load_before = list(os.getloadavg())
    try:
        for turn, start in enumerate(range(0, args.iters, args.chunk)):
            names = list(contenders) if turn % 2 == 0 else list(contenders)[::-1]
            for name in names:
                iteration, apply = contenders[name]
                linear.apply = apply
                for x, y in data.batches[start:start + args.chunk]:
                    times[name].append(iteration(x, y))
    finally:
        linear.apply = numpy_apply
    report = {"benchmark": "nanoGPT recipe iteration, split by phase", "iters": args.iters, "chunk": args.chunk,
              "threads": args.threads, "load_before": [round(v, 2) for v in load_before],
              "load_after": [round(v, 2) for v in os.getloadavg()], "ms_median": {}}
    for name, rows in times.items():
        median = np.median(np.asarray(rows[args.chunk:]) * 1000, axis=0)
        report["ms_median"][name] = dict(zip(("forward", "backward", "clip", "optimizer"), map(float, median)),
                                         total=float(median.sum()))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['benchmark']}: {args.iters} iterations each, chunks of {args.chunk}, {args.threads} thread(s); "
          f"load {report['load_before']} -> {report['load_after']}")
    print("\n| contender | forward | backward | clip | optimizer | sum (ms; medians per phase) |\n|---|---:|---:|---:|---:|---:|")
    for name, m in report["ms_median"].items():
        print(f"| {name} | {m['forward']:.1f} | {m['backward']:.1f} | {m['clip']:.2f} | {m['optimizer']:.2f} "
              f"| {m['total']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
