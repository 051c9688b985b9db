"""What recording gradient flow costs: a logging step against an ordinary step of the same run.

``python -m benchmarks gradflow [--config multi30k_de_en_student] [--steps 8] [--threads 1] [--json]``

Builds the translation task of a config exactly as ``python -m transformer train`` does, then alternates, on one
model and one batch (the stream's first, fed again every step, so both kinds do the same work), ``Trainer.train_step()`` (an ordinary step: the code path of every step that is not a
``log_every``-th one, unchanged by gradient flow) and ``Trainer.train_step(measure_gradients=True)`` (a logging
step: per-parameter gradient norms, a copy of the weights, per-layer norms and update ratios). Times are the
process's CPU time (user + system: the machines are shared, wall time swings with the load), medians; the
gradient-flow work itself (``GradientFlow.grad_norms`` + ``snapshot`` + ``record``) is also timed on its own, on the
real gradients.
``--json`` prints a results file (``kind: table``) for benchmarks/results/gradflow.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from benchmarks.pipeline import training_benchmark_args, translation_trainer


def main(argv=None):
    args = training_benchmark_args(
        "gradflow", __doc__, argv, "multi30k_de_en_student", 8, "measured steps of each kind"
    )

    from benchmarks.meta import load_average, run_meta
    from npgrad.allocator import retain_freed_memory

    retain_freed_memory()  # as the transformer command does: the weight copy must not push the step's arrays to mmap
    task, trainer = translation_trainer(args.config, ["train.clip_norm=1.0"])
    trainer.model.train()
    flow = trainer.gradient_flow
    parameters = sum(p.data.size for p in flow.params)

    batch = task.next_batch()
    task.next_batch = lambda: batch  # the same work for both kinds of step
    tokens = task.batch_tokens(batch)

    def timed_step(measure):
        t0 = time.process_time()
        trainer.train_step(measure)
        return 1000 * (time.process_time() - t0)

    timed_step(False)  # warm-up: Numba compilation, first touch of the buffers
    timed_step(True)
    load_before = load_average()
    ordinary_ms, logging_ms, flow_ms = [], [], []
    for i in range(args.steps):
        # ABBA order: neither kind always follows the other (caches, the machine's drift).
        for measure in (False, True) if i % 2 == 0 else (True, False):
            (logging_ms if measure else ordinary_ms).append(timed_step(measure))
        t0 = time.process_time()  # the gradient-flow work alone, on the gradients the last step left
        norms, before = flow.grad_norms(), flow.snapshot()
        flow.record(norms, before)
        flow_ms.append(1000 * (time.process_time() - t0))
    med = statistics.median
    result = {
        "config": args.config,
        "steps": args.steps,
        "batch_target_tokens": tokens,
        "parameters": parameters,
        "layers": len(flow.layers),
        "ordinary_step_cpu_ms": med(ordinary_ms),
        "logging_step_cpu_ms": med(logging_ms),
        "gradient_flow_cpu_ms": med(flow_ms),
        "logging_minus_ordinary_cpu_ms": med([b - a for a, b in zip(ordinary_ms, logging_ms)]),
        "meta": run_meta("gradflow", argv, args.threads, load_before),
    }
    share = result["gradient_flow_cpu_ms"] / result["ordinary_step_cpu_ms"]
    ratio = result["logging_step_cpu_ms"] / result["ordinary_step_cpu_ms"]
    if not args.json:
        print(
            f"{args.config}: ordinary step {result['ordinary_step_cpu_ms']:.0f} ms CPU, logging step "
            f"{result['logging_step_cpu_ms']:.0f} ms ({ratio:.3f}x); the gradient-flow work alone "
            f"{result['gradient_flow_cpu_ms']:.1f} ms = {100 * share:.1f}% of an ordinary step"
        )
        return 0
    meta = result["meta"]
    document = {
        "title": "Gradient flow: the cost of a logging step (issue 11)",
        "order": 20,
        "kind": "table",
        "source": "re-measured",
        "about": (
            f"`Trainer.train_step()` (an ordinary step; every step that is not a `log_every`-th one runs this path, "
            "unchanged by gradient flow) alternating with `Trainer.train_step(measure_gradients=True)` (a logging step: "
            "the per-parameter gradient norms clipping reuses, a copy of the weights, per-layer norms and "
            f"update/weight ratios) on one model of `{args.config}` (corpus and SentencePiece "
            "built as `train` does, from `TRANSFORMER_DATA=/work/shared/data`), clipping on (train.clip_norm=1), freed memory retained as by the `transformer` command, "
            f"{args.threads} thread, the same batch ({tokens:,} target tokens) every step, {args.steps} steps of each "
            "kind after a warm-up step of each, in ABBA order; medians of the process's CPU time (user + system). The gradient-flow "
            "work is also timed alone on the real gradients."
        ),
        "command": meta["command"],
        "machine": f"{meta['machine']}, {meta['cpus']} CPUs, a KVM VM shared with other agents",
        "date": meta["date"][:10],
        "commit": _commit(),
        "load": f"{meta['load_average_before']} before, {meta['load_average_after']} after (1/5/15-minute)",
        "tables": [
            {
                "caption": f"{args.config}: {parameters:,} trained parameters in {len(flow.layers)} layers",
                "columns": ["measure", "median"],
                "align": "lr",
                "rows": [
                    ["ordinary step, ms CPU", f"{result['ordinary_step_cpu_ms']:.0f}"],
                    ["logging step, ms CPU", f"{result['logging_step_cpu_ms']:.0f}"],
                    ["logging / ordinary", f"{ratio:.3f}"],
                    ["logging - ordinary, paired steps, ms CPU", f"{result['logging_minus_ordinary_cpu_ms']:.0f}"],
                    ["gradient-flow work alone, ms CPU", f"{result['gradient_flow_cpu_ms']:.1f}"],
                    ["gradient-flow work / ordinary step", f"{100 * share:.1f}%"],
                ],
            }
        ],
        "result_raw": result,
    }
    print(json.dumps(document, indent=2))
    return 0


def _commit():
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
