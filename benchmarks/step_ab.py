"""Training-step time of two commits, side by side: did a change slow the step down?

    python -m benchmarks step-ab OLD NEW [--config seq2seq lm] [--rounds 6] [--steps 8] [--threads 1] [--json]

Each commit's tree is exported (``git archive``, no checkout touched) into a temporary directory. Every round
starts one fresh process per commit, alternating which goes first; a process builds benchmarks/step.py's model of
each config with its own commit's code (the same reference configs, batches and optimizer), runs 2 warm-up steps
(Numba compiles, the optimizer state fills), then times ``--steps`` steps: wall time and the process's CPU time
(user + sys, which a loaded machine inflates far less: a pre-empted process is not charged for the wait). The table
gives, per config, the median step time of each commit over all rounds and the ratio NEW / OLD with a 95% bootstrap interval (the machine is
shared: only steps measured in the same run, interleaved, are compared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.meta import load_average, print_result, run_meta

ROOT = Path(__file__).resolve().parents[1]
CLOCKS = ("wall", "cpu")

WORKER = """
import json, sys, time
from benchmarks.step import ours_step_fn
import transformer
configs, steps = sys.argv[1].split(","), int(sys.argv[2])
out = {"transformer": transformer.__file__}
for name in configs:
    step, _ = ours_step_fn(name)
    for _ in range(2):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    out[name] = {"wall": wall, "cpu": cpu}
print(json.dumps(out))
"""


def export_commit(commit: str, directory: Path) -> Path:
    """The tree of ``commit`` in ``directory`` (git archive | tar): the code as committed, nothing else."""
    directory.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def run_worker(tree: Path, configs, steps, threads):
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, ",".join(configs), str(steps)], cwd=tree, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker in {tree} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not str(Path(result["transformer"]).resolve()).startswith(str(tree.resolve())):
        raise RuntimeError(f"the worker in {tree} imported {result['transformer']}, not its own tree's code")
    return result


def bootstrap_ratio_interval(old, new, draws=4000, seed=0):
    """A 95% bootstrap interval of median(new) / median(old) (each resampled with replacement)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    old, new = np.asarray(old), np.asarray(new)
    ratios = [np.median(rng.choice(new, len(new))) / np.median(rng.choice(old, len(old))) for _ in range(draws)]
    low, high = np.percentile(ratios, [2.5, 97.5])
    return [round(float(low), 3), round(float(high), 3)]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks step-ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the commit before the change")
    parser.add_argument("new", help="the commit with the change")
    parser.add_argument("--config", nargs="+", choices=["seq2seq", "lm"], default=["seq2seq", "lm"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per process, after 2 warm-up steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    load_before = load_average()
    samples = {(commit, name, clock): [] for commit in ("old", "new") for name in args.config for clock in CLOCKS}
    with tempfile.TemporaryDirectory(prefix="step-ab-") as temporary:
        trees = {
            "old": export_commit(args.old, Path(temporary) / "old"),
            "new": export_commit(args.new, Path(temporary) / "new"),
        }
        for round_number in range(args.rounds):
            order = ["old", "new"] if round_number % 2 == 0 else ["new", "old"]
            for commit in order:
                result = run_worker(trees[commit], args.config, args.steps, args.threads)
                for name in args.config:
                    for clock in CLOCKS:
                        samples[(commit, name, clock)] += result[name][clock]
            print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    for name in args.config:
        for clock in CLOCKS:
            old, new = (samples[(commit, name, clock)] for commit in ("old", "new"))
            rows.append(
                {
                    "config": name,
                    "clock": clock,
                    "old_ms": round(statistics.median(old) * 1e3, 1),
                    "new_ms": round(statistics.median(new) * 1e3, 1),
                    "ratio_new_old": round(statistics.median(new) / statistics.median(old), 3),
                    "ratio_95_interval": bootstrap_ratio_interval(old, new),
                    "steps_each": len(old),
                    "old_samples_ms": [round(x * 1e3, 1) for x in old],
                    "new_samples_ms": [round(x * 1e3, 1) for x in new],
                }
            )
    meta = run_meta("step-ab", argv, args.threads, load_before, old=args.old, new=args.new)
    if not args.json:
        for row in rows:
            print(
                f"{row['config']:>8} {row['clock']:>4}: old {row['old_ms']:.1f} ms, new {row['new_ms']:.1f} ms, new/old "
                f"{row['ratio_new_old']:.3f} (95%: {row['ratio_95_interval'][0]:.2f} - {row['ratio_95_interval'][1]:.2f}; "
                f"median of {row['steps_each']} steps each)"
            )
    print_result(meta, rows, args.json)
    return 0
