"""A full training step (forward, backward, optimizer update): npgrad vs the same model in PyTorch.

    python -m benchmarks step [--config seq2seq lm] [--repeat N] [--threads 2] [--no-memory] [--json]

Two reference configurations, float32, both contenders on the same integer batches:

* ``seq2seq``: transformer.model.Transformer, d_model 256, 3+3 layers, 4 heads, d_ff 1024, one shared
  vocabulary of 8000 with the output projection tied to it, sinusoidal positions, post-LN, dropout 0.1
  (embeddings, every sub-layer output, the feed-forward hidden layer; none on attention weights),
  batch 128 x 32 source and 32 target tokens (no padding: 4096 target tokens), label smoothing 0.1,
  Adam(0.9, 0.98, eps 1e-9).
* ``lm``: nanoGPT's CPU recipe: decoder-only, 4 layers, 4 heads, width 128, context 64, batch 12,
  vocabulary 65 (characters), pre-LN, exact GELU, learned positions, no biases, tied output, no
  dropout, AdamW(0.9, 0.99, weight decay 0.1) with gradient clipping at norm 1.0, as nanoGPT's loop.

The PyTorch models are the twins of benchmarks/torch_twins.py, built from the same config fields: the same
layers in the same order (fused q/k/v projection, ``F.scaled_dot_product_attention``, ``F.layer_norm``), so
both sides do the same arithmetic; their weights are PyTorch's own initialisation (the same weights are not
needed for timing).

Timing: both models live in this process; every repetition runs one step of each, alternating who goes
first, and the table reports medians and the ratio npgrad / PyTorch (the machine is shared and drifts,
so only steps measured side by side are compared). Peak resident memory: each contender runs a few
steps alone in a fresh subprocess (``python -m benchmarks.step --worker CONFIG CONTENDER``) and reports
its peak resident size (VmHWM), so neither pollutes the other's figure; the resident size right after imports and
model construction is printed beside it (PyTorch's runtime alone is a few hundred MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks.meta import import_torch, load_average, print_result, run_meta

# Legend: B batch, S source length, T target length, C width, H heads, V vocabulary, F feed-forward width.
CONFIGS = {
    "seq2seq": dict(
        vocab=8000,
        d_model=256,
        heads=4,
        layers=3,
        d_ff=1024,
        batch=128,
        src_len=32,
        tgt_len=32,
        dropout=0.1,
        label_smoothing=0.1,
        lr=5e-4,
        betas=(0.9, 0.98),
        eps=1e-9,
    ),
    "lm": dict(
        vocab=65,
        d_model=128,
        heads=4,
        layers=4,
        d_ff=512,
        batch=12,
        ctx=64,
        dropout=0.0,
        lr=1e-3,
        betas=(0.9, 0.99),
        eps=1e-8,
        weight_decay=0.1,
        clip=1.0,
    ),
}
PAD, BOS = 0, 2
N_BATCHES = 4  # distinct batches cycled through (the same ones for both contenders)


def make_batches(name, seed=0):
    """Integer batches shared by both contenders: seq2seq (src, tgt_in, tgt_out), lm (ids, targets)."""
    cfg = CONFIGS[name]
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(N_BATCHES):
        if name == "seq2seq":
            src = rng.integers(4, cfg["vocab"], size=(cfg["batch"], cfg["src_len"]))  # (B, S)
            tgt = rng.integers(4, cfg["vocab"], size=(cfg["batch"], cfg["tgt_len"] + 1))  # (B, T+1)
            tgt[:, 0] = BOS
            batches.append((src, tgt[:, :-1].copy(), tgt[:, 1:].copy()))
        else:
            ids = rng.integers(0, cfg["vocab"], size=(cfg["batch"], cfg["ctx"] + 1))  # (B, T+1)
            batches.append((ids[:, :-1].copy(), ids[:, 1:].copy()))
    return batches


def model_fields(name):
    """The model of config ``name`` as TransformerConfig / LMConfig fields (npgrad's config and the twin's arguments)."""
    cfg = CONFIGS[name]
    if name == "seq2seq":
        return dict(
            src_vocab_size=cfg["vocab"],
            tgt_vocab_size=cfg["vocab"],
            d_model=cfg["d_model"],
            n_heads=cfg["heads"],
            num_encoder_layers=cfg["layers"],
            num_decoder_layers=cfg["layers"],
            d_ff=cfg["d_ff"],
            dropout=cfg["dropout"],
            norm_first=False,
            positional="sinusoidal",
            share_embeddings=True,
            tie_output=True,
            pad_id=PAD,
            dtype="float32",
            seed=0,
        )
    return dict(
        vocab_size=cfg["vocab"],
        d_model=cfg["d_model"],
        n_heads=cfg["heads"],
        n_layers=cfg["layers"],
        d_ff=cfg["d_ff"],
        block_size=cfg["ctx"],
        dropout=0.0,
        activation="gelu",
        norm_first=True,
        positional="learned",
        tie_output=True,
        bias=False,
        dtype="float32",
        seed=0,
    )


def _step_fn(name, model, optimizer, batches, clip):
    """-> step(): one training step on the next batch (cycling): forward, loss, backward, [clip,] update."""
    smoothing = CONFIGS[name].get("label_smoothing", 0.0)
    counter = [0]

    def step():
        *inputs, target = batches[counter[0] % N_BATCHES]
        counter[0] += 1
        logits = model(*inputs)  # (B, T, V)
        loss = model.loss(logits, target, label_smoothing=smoothing)
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            clip()
        optimizer.step()
        return loss.item()

    model.train()
    return step


def ours_step_fn(name):
    """-> (step() running one training step on the next batch, model)."""
    import npgrad as ng
    from npgrad import optim
    from transformer.model import LanguageModel, LMConfig, Transformer, TransformerConfig

    cfg = CONFIGS[name]
    if name == "seq2seq":
        model = Transformer(TransformerConfig(**model_fields(name)))
        opt = optim.Adam(model.parameters(), lr=cfg["lr"], betas=cfg["betas"], eps=cfg["eps"])
        clip = None
    else:
        model = LanguageModel(LMConfig(**model_fields(name)))
        opt = optim.AdamW(
            model.parameters(), lr=cfg["lr"], betas=cfg["betas"], eps=cfg["eps"], weight_decay=cfg["weight_decay"]
        )
        clip = lambda: optim.clip_grad_norm_(opt.params, cfg["clip"])  # noqa: E731
    assert ng.get_backend() in ("numba", "numpy")
    return _step_fn(name, model, opt, make_batches(name), clip), model


def torch_step_fn(name, torch):
    """-> (step(), model): the same model (benchmarks/torch_twins.py) and step in PyTorch (float32, its own
    initial weights)."""
    from benchmarks import torch_twins

    cfg = CONFIGS[name]
    if name == "seq2seq":
        model = torch_twins.Seq2SeqTwin(**model_fields(name))
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=cfg["betas"], eps=cfg["eps"])
        clip = None
    else:
        model = torch_twins.LanguageModelTwin(**model_fields(name))
        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg["lr"], betas=cfg["betas"], eps=cfg["eps"], weight_decay=cfg["weight_decay"]
        )
        clip = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])  # noqa: E731
    batches = [tuple(torch.from_numpy(a) for a in b) for b in make_batches(name)]
    return _step_fn(name, model, opt, batches, clip), model


# ================================================================================================ running


def _set_threads(threads):
    try:
        from npgrad.kernels import numba_kernels

        numba_kernels.set_num_threads(threads)
    except ImportError:
        pass


def _pin_blas_threads(threads, argv):
    """OpenBLAS (NumPy) reads its thread count at import: re-run this command with it pinned to ``threads``."""
    wanted = str(threads)
    if os.environ.get("OPENBLAS_NUM_THREADS") == wanted and os.environ.get("OMP_NUM_THREADS") == wanted:
        return
    env = dict(os.environ, OPENBLAS_NUM_THREADS=wanted, OMP_NUM_THREADS=wanted)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + argv, env)


def _retain_freed_memory(parser):
    from npgrad.allocator import retain_freed_memory

    if not retain_freed_memory():
        parser.error("--retain-freed-memory: not available here (needs Linux with glibc)")


def _maxrss_mib():
    """Peak resident size of this process. VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a
    worker forked from the (large) benchmark process would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def worker(name, contender, steps, threads):
    """Run ``steps`` training steps of one contender alone; print its memory figures as JSON."""
    _set_threads(threads)
    if contender == "torch":
        torch = import_torch(threads)
        if torch is None:
            print(json.dumps({"error": "torch not installed"}))
            return 1
        step, _ = torch_step_fn(name, torch)
    else:
        step, _ = ours_step_fn(name)
    rss_ready = _rss_mib()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "config": name,
                "contender": contender,
                "steps": steps,
                "rss_ready_MiB": rss_ready,
                "peak_rss_MiB": _maxrss_mib(),
                "step_s": times,
            }
        )
    )
    return 0


def measure_memory(name, contender, steps, threads, retain_freed_memory=False):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.step",
            "--worker",
            name,
            contender,
            "--steps",
            str(steps),
            "--threads",
            str(threads),
        ]
        + (["--retain-freed-memory"] if retain_freed_memory else []),
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1])


def time_config(name, repeat, torch, warmup=2):
    """Interleaved steps of both contenders -> {contender: [seconds]}."""
    runs = {"npgrad": ours_step_fn(name)[0]}
    if torch is not None:
        runs["torch"] = torch_step_fn(name, torch)[0]
    names = list(runs)
    for run in runs.values():
        for _ in range(warmup):  # compile Numba kernels, fill the optimizer state, settle allocators
            run()
    samples = {n: [] for n in names}
    for rep in range(repeat):
        order = names if rep % 2 == 0 else names[::-1]
        for n in order:
            start = time.perf_counter()
            runs[n]()
            samples[n].append(time.perf_counter() - start)
    return samples


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument(
        "--repeat", type=int, default=None, help="interleaved timed steps per contender (default: 10 seq2seq, 40 lm)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-steps", type=int, default=3, help="steps run by each memory subprocess")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    parser.add_argument(
        "--retain-freed-memory",
        action="store_true",
        help="npgrad.retain_freed_memory() first (glibc malloc keeps freed blocks; both contenders)",
    )
    args = parser.parse_args(argv)

    _pin_blas_threads(args.threads, ["-m", "benchmarks", "step"] + list(sys.argv[2:] if argv is None else argv))
    _set_threads(args.threads)
    if args.retain_freed_memory:
        _retain_freed_memory(parser)
    torch = None if args.no_torch else import_torch(args.threads)
    if torch is None and not args.json:
        print("PyTorch not installed: timing npgrad alone (pip install '.[bench]' for the comparison)")
    load_before = load_average()
    results = []
    for name in args.config:
        repeat = args.repeat or (10 if name == "seq2seq" else 40)
        samples = time_config(name, repeat, torch)
        row = {
            "config": name,
            "repeat": repeat,
            "median_s": {n: statistics.median(v) for n, v in samples.items()},
            "min_s": {n: min(v) for n, v in samples.items()},
        }
        if "torch" in samples:
            row["ratio"] = row["median_s"]["npgrad"] / row["median_s"]["torch"]
            # Ratio of each side-by-side pair, then its median: robust to drift between repetitions.
            row["median_pair_ratio"] = statistics.median(a / b for a, b in zip(samples["npgrad"], samples["torch"]))
        if not args.no_memory:
            row["memory"] = {
                c: measure_memory(name, c, args.memory_steps, args.threads, args.retain_freed_memory)
                for c in (["npgrad", "torch"] if torch is not None else ["npgrad"])
            }
            mem = row["memory"]
            if torch is not None and "peak_rss_MiB" in mem["npgrad"] and "peak_rss_MiB" in mem["torch"]:
                row["memory_ratio"] = mem["npgrad"]["peak_rss_MiB"] / mem["torch"]["peak_rss_MiB"]
        results.append(row)
        if not args.json:
            print(_format_row(row), flush=True)
    meta = run_meta(
        "step",
        argv,
        args.threads,
        load_before,
        torch,
        dtype="float32",
        statistic="median",
        configs={n: CONFIGS[n] for n in args.config},
    )
    print_result(meta, results, args.json)
    return 0


def _format_row(row):
    med = row["median_s"]
    parts = [f"{row['config']:<8} npgrad {med['npgrad'] * 1e3:8.1f} ms"]
    if "torch" in med:
        parts.append(
            f"torch {med['torch'] * 1e3:8.1f} ms  ratio {row['ratio']:.2f} "
            f"(median of pair ratios {row['median_pair_ratio']:.2f})"
        )
    mem = row.get("memory")
    if mem:
        for c, m in mem.items():
            if "peak_rss_MiB" in m:
                parts.append(f"{c} peak {m['peak_rss_MiB']:.0f} MiB (ready {m['rss_ready_MiB']:.0f})")
            else:
                parts.append(f"{c} memory: failed ({m.get('error', '')[-200:]!r})")
        if "memory_ratio" in row:
            parts.append(f"memory ratio {row['memory_ratio']:.2f}")
    return "  ".join(parts)


def _worker_main(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step --worker")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "CONTENDER"), required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retain-freed-memory", action="store_true")
    args = parser.parse_args(argv)
    if args.retain_freed_memory:
        _retain_freed_memory(parser)
    return worker(args.worker[0], args.worker[1], args.steps, args.threads)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
