"""glibc malloc defaults vs ``npgrad.retain_freed_memory()`` on the same training step, alternating in one process.

    python -m benchmarks allocator [--config seq2seq|lm] [--rounds 5] [--steps 2] [--json]

The step is ``benchmarks step``'s npgrad step (same model and batches). Each round runs ``--steps`` timed steps in
each mode (the order alternates between rounds), after one untimed step that lets the heap settle into the mode;
the mode is switched with ``mallopt`` ("default": 128 KiB mmap and trim thresholds, glibc's initial values, pinned —
which turns off glibc's own raising of the mmap threshold (up to 32 MiB) after a large free, so the baseline is
somewhat more pessimistic than an untouched process for arrays between 128 KiB and 32 MiB; larger ones, such as the
seq2seq logits, are mmapped either way; "retained": 1 GiB, as ``retain_freed_memory`` sets). Reported: median step time and median minor page
faults per step in each mode. Linux with glibc only.
"""

import argparse
import json
import resource
import statistics
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks allocator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=["seq2seq", "lm"], default="seq2seq")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from benchmarks.nanogpt import set_threads

    set_threads(args.threads)
    from npgrad import allocator

    def set_mode(retain):
        if not allocator.set_malloc_thresholds(allocator._THRESHOLD if retain else 128 << 10):
            raise SystemExit("allocator: needs glibc's mallopt (Linux), and it refused the setting")

    from benchmarks.step import ours_step_fn

    step, _ = ours_step_fn(args.config)
    for _ in range(2):
        step()  # compile kernels, fill Adam state
    times = {"default": [], "retained": []}
    faults = {"default": [], "retained": []}
    from benchmarks.meta import load_average, run_meta

    load_before = load_average()
    for round_ in range(args.rounds):
        modes = ("default", "retained") if round_ % 2 == 0 else ("retained", "default")
        for mode in modes:
            set_mode(mode == "retained")
            step()
            for _ in range(args.steps):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                step()
                times[mode].append(time.perf_counter() - start)
                faults[mode].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    report = {
        "config": args.config,
        "rounds": args.rounds,
        "steps": args.steps,
        "meta": run_meta("allocator", argv, args.threads, load_before),
        "median_step_s": {m: statistics.median(v) for m, v in times.items()},
        "median_faults_per_step": {m: statistics.median(v) for m, v in faults.items()},
        "step_s": times,
    }
    report["speedup"] = report["median_step_s"]["default"] / report["median_step_s"]["retained"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for mode in times:
            print(
                f"{mode:<9} median step {report['median_step_s'][mode] * 1e3:8.1f} ms   "
                f"median page faults a step {report['median_faults_per_step'][mode]:>8.0f}"
            )
        meta = report["meta"]
        print(f"speed-up {report['speedup']:.3f}; load {meta['load_average_before']} -> {meta['load_average_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
