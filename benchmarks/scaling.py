"""Data-parallel scaling: tokens/s of the real training loop for 1 process x 1 thread, 1 x 2 threads, 2 ranks x 1 thread.

``python -m benchmarks scaling [--config multi30k_de_en] [--steps 12] [--warmup 2] [--repeats 1] [--json] [--write]``

Each contender is a real ``python -m transformer train`` (under ``mpiexec -n 2`` for the ranks) on the same config
and the same tokenizer (trained once, by ``prepare``), for ``warmup + steps`` updates; its target tokens/s is that of
the measured steps in its own JSON-lines log (target tokens of steps warmup+1..N over the loop's elapsed time between
them: the whole loop, batch fetching, allreduce and logging included; start-up and the final validation excluded).
The contenders alternate (``--repeats`` rounds, medians). Then ``mpiexec -n 2`` times one in-place Allreduce of the
gradient buffer (every parameter in float32, plus one flag per parameter and the loss: what a step sends), and a
stated model projects the throughput of 2-16 machines on 1 and 10 Gbit/s links.

``--write`` writes benchmarks/results/scaling.json (then run ``python -m benchmarks report``); ``--json`` prints it.
Needs the 'dist' extra (mpi4py, mpich) and the corpus (``TRANSFORMER_DATA``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = HERE / "results" / "scaling.json"
ORDER = 50
CONTENDERS = (("1 process x 1 thread", 1, 1), ("2 ranks x 1 thread", 2, 1), ("1 process x 2 threads", 1, 2))
# Projection: a ring allreduce sends 2 (M - 1) / M of the buffer per machine, in 2 (M - 1) messages.
LINKS = (("1 Gbit/s", 1e9 / 8, 50e-6), ("10 Gbit/s", 10e9 / 8, 20e-6))  # (name, bytes/s, latency per message)
MACHINES = (2, 4, 8, 16)


def mpiexec() -> str:
    found = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if found is None:
        sys.exit("scaling: no mpiexec; install the 'dist' extra (pip install -e '.[dist]')")
    return found


def environment(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "HYDRA_"))}
    for name in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def train_run(config: str, tokenizer: Path, run_dir: Path, ranks: int, threads: int, steps: int) -> list[dict]:
    """One contender: a real training run of ``steps`` updates; returns its log's train records."""
    run_dir.mkdir(parents=True)
    shutil.copytree(tokenizer, run_dir / "tokenizer")
    command = [sys.executable, "-m", "transformer", "train", "--config", config, "--run-dir", str(run_dir)]
    command += [f"train.max_steps={steps}", "train.max_minutes=0", "train.validate_every=1000000"]
    command += ["train.bleu_max_sentences=1", "train.log_every=1000000"]
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks), *command]
    run(command, threads)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "train"]


def run(command: list[str], threads: int = 1) -> str:
    """Run ``command`` with ``threads`` threads per process; its standard output (a failure ends the benchmark)."""
    done = subprocess.run(command, cwd=ROOT, env=environment(threads), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"scaling: {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def throughput(records: list[dict], warmup: int) -> tuple[float, float]:
    """(target tokens/s, mean target tokens per step) of the steps after ``warmup``."""
    by_step = {r["step"]: r for r in records}
    last = max(by_step)
    tokens = sum(by_step[s]["tokens"] for s in range(warmup + 1, last + 1))
    seconds = by_step[last]["elapsed"] - by_step[warmup]["elapsed"]
    return tokens / seconds, tokens / (last - warmup)


def probe(size: int, repeats: int) -> None:
    """Under mpiexec: print (rank 0) the median seconds of one in-place Allreduce of ``size`` float32 numbers."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    buffer = np.ones(size, dtype=np.float32)
    times = []
    for _ in range(repeats + 1):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times.append(time.perf_counter() - t0)
    if comm.Get_rank() == 0:
        print(json.dumps({"median_s": statistics.median(times[1:]), "min_s": min(times[1:])}))


def buffer_size(config_name: str, tokenizer: Path) -> tuple[int, int]:
    """(parameters, numbers per allreduce) of the config's model with the prepared tokenizer."""
    from transformer.config import load_config
    from transformer.model import Transformer, TransformerConfig
    from transformer.tokenizer import load_tokenizers

    config = load_config(config_name, [])
    src, tgt = load_tokenizers(tokenizer)
    model = Transformer(
        TransformerConfig(src_vocab_size=src.vocab_size, tgt_vocab_size=tgt.vocab_size, **config.get("model", {}))
    )
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.data.size for p in params)
    return total, total + len(params) + 1


def project(rate_machine: float, tokens_per_step: float, buffer_bytes: int) -> list[list[str]]:
    """Rows of the projection table (see the notes for the model)."""
    compute = tokens_per_step / rate_machine
    rows = []
    for name, bandwidth, latency in LINKS:
        for m in MACHINES:
            comm = 2 * (m - 1) / m * buffer_bytes / bandwidth + 2 * (m - 1) * latency
            rate = m * tokens_per_step / (compute + comm)
            rows.append(
                [name, str(m), f"{comm * 1e3:,.0f} ms", f"{rate:,.0f}", f"{rate / (m * rate_machine) * 100:.0f}%"]
            )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="multi30k_de_en")
    parser.add_argument("--steps", type=int, default=12, help="measured updates per contender")
    parser.add_argument("--warmup", type=int, default=2, help="updates before the measured ones")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the three contenders (medians)")
    parser.add_argument("--tokenizer", help="an existing tokenizer directory of the config (skips prepare)")
    parser.add_argument("--json", action="store_true", help="print the result file's JSON")
    parser.add_argument("--write", action="store_true", help=f"write {RESULT.relative_to(ROOT)}")
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)  # (internal: run under mpiexec)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe, 20)
        return 0
    os.environ.update({k: v for k, v in environment(1).items() if k.endswith("_NUM_THREADS")})
    from benchmarks.meta import load_average, machine

    work = Path(tempfile.mkdtemp(prefix="scaling-bench-"))
    try:
        if args.tokenizer:
            tokenizer = Path(args.tokenizer).resolve()
        else:
            print("training the tokenizer (prepare) ...", file=sys.stderr)
            run([sys.executable, "-m", "transformer", "prepare", "--config", args.config, "--run-dir", str(work / "p")])
            tokenizer = work / "p" / "tokenizer"
        load_before = load_average()
        rates: dict[str, list[float]] = {name: [] for name, _, _ in CONTENDERS}
        per_step: list[float] = []
        for round_ in range(args.repeats):
            for name, ranks, threads in CONTENDERS:
                print(f"round {round_ + 1}: {name} ...", file=sys.stderr)
                records = train_run(
                    args.config,
                    tokenizer,
                    work / f"r{round_}-{ranks}x{threads}",
                    ranks,
                    threads,
                    args.warmup + args.steps,
                )
                rate, tokens = throughput(records, args.warmup)
                rates[name].append(rate)
                per_step.append(tokens)
                print(f"  {rate:,.0f} target tokens/s ({tokens:,.0f} per step)", file=sys.stderr)
        parameters, numbers = buffer_size(args.config, tokenizer)
        buffer_bytes = 4 * numbers
        probed = run([mpiexec(), "-n", "2", sys.executable, "-m", "benchmarks.scaling", "--probe", str(numbers)])
        allreduce = json.loads(probed.strip().splitlines()[-1])
        load_after = load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in rates.items()}
    base = median["1 process x 1 thread"]
    tokens_per_step = statistics.median(per_step)
    speedup = median["2 ranks x 1 thread"] / base
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    command = f"TRANSFORMER_DATA=... python -m benchmarks scaling --steps {args.steps} --warmup {args.warmup} " + (
        f"--repeats {args.repeats} --write"
    )
    result = {
        "title": "Data-parallel scaling on MPI (issue 15)",
        "order": ORDER,
        "kind": "table",
        "source": "re-measured",
        "about": (
            f"Target tokens/s of the real training loop (`python -m transformer train`, `{args.config}`, its global "
            f"batch of train.max_tokens padded tokens, Adam, clipping) for {args.steps} updates after {args.warmup} "
            "of warm-up, read from each run's JSON-lines log (start-up and the final validation excluded): one "
            "process with 1 thread, one with 2 threads (OPENBLAS/NUMBA_NUM_THREADS=2), and 2 MPI ranks of 1 thread "
            "each (`mpiexec -n 2`, each rank half of every global batch, one allreduce of the gradients per step). "
            "The contenders alternate in one invocation"
            + (f" ({args.repeats} rounds, medians)" if args.repeats > 1 else "")
            + ". Then the time of one in-place float32 Allreduce of the gradient buffer between the 2 ranks (shared "
            "memory; median of 20), and a projection to 2-16 machines (model in the notes)."
        ),
        "command": command,
        "machine": f"{machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": commit.stdout.strip() or "unknown",
        "load": f"{load_before} before, {load_after} after (1, 5, 15 minutes) on {os.cpu_count()} CPUs",
        "tables": [
            {
                "caption": "Throughput of the training loop (target tokens/s)",
                "columns": ["contender", "tokens/s", "vs 1 x 1", "runs"],
                "rows": [
                    [name, f"{median[name]:,.0f}", f"{median[name] / base:.2f}x", " / ".join(f"{r:,.0f}" for r in v)]
                    for name, v in rates.items()
                ],
            },
            {
                "caption": "Communication per step",
                "columns": ["quantity", "value"],
                "rows": [
                    ["parameters (float32)", f"{parameters:,}"],
                    ["allreduce buffer (gradients, a flag per parameter, the loss)", f"{buffer_bytes / 1e6:.1f} MB"],
                    ["allreduces per step", "1 (+ one 8-byte allreduce agreeing whether to stop)"],
                    [
                        "one allreduce, 2 ranks on this machine (median / min)",
                        f"{allreduce['median_s'] * 1e3:.1f} / {allreduce['min_s'] * 1e3:.1f} ms",
                    ],  # fmt: skip
                    ["target tokens per step (median)", f"{tokens_per_step:,.0f}"],
                    ["step time of 2 ranks", f"{tokens_per_step / median['2 ranks x 1 thread']:.2f} s"],
                ],
            },
            {
                "caption": "Projection: M machines like this one (2 ranks each), each with its own batch of "
                "train.max_tokens (the global batch M times larger)",
                "columns": ["link", "machines", "allreduce", "tokens/s", "efficiency"],
                "rows": project(median["2 ranks x 1 thread"], tokens_per_step, buffer_bytes),
            },
        ],
        "notes": [
            f"2 ranks x 1 thread: {speedup:.2f}x the tokens/s of 1 process x 1 thread (target >= 1.6x: "
            f"{'met' if speedup >= 1.6 else 'not met'}); 1 process x 2 threads: "
            f"{median['1 process x 2 threads'] / base:.2f}x.",
            "Projection model: step time = compute + allreduce, no overlap (the allreduce follows the backward). "
            "compute = the measured 2-rank step time of this machine (its batch, its local allreduce included); "
            "allreduce = a ring over M machines, 2 (M - 1) / M x buffer bytes / link bandwidth + 2 (M - 1) x latency "
            "(50 us at 1 Gbit/s, 20 us at 10 Gbit/s), at the full line rate. tokens/s = M x tokens per step / step "
            "time; efficiency = that over M x this machine's measured tokens/s. A real link reaches 80-95% of its "
            "line rate; the global batch grows with M (set train.max_tokens = M x the config's to keep each "
            "machine's share), so the learning rate may want retuning.",
        ],
        "result": {
            "tokens_per_s": rates,
            "median_tokens_per_s": median,
            "tokens_per_step": tokens_per_step,
            "parameters": parameters,
            "buffer_bytes": buffer_bytes,
            "allreduce_s": allreduce,
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
    }
    cpus = os.cpu_count() or 1
    if load_before and max(load_before[0], (load_after or [0])[0]) > 1.5 * cpus:
        result["notes"].append(
            f"The machine was oversubscribed (load average {load_before[0]} before, {(load_after or ['?'])[0]} after, "
            f"on {cpus} CPUs): the operating system shares the CPUs among all runnable processes, so 2 ranks get "
            "about twice the share of 1 process, and a 2-thread process waits for pre-empted threads. The ratios "
            "are then not those of an idle machine; the projection's efficiencies are optimistic too, as the "
            "measured compute is slow: re-run on a quiet machine."
        )
    if args.write:
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULT}; now run: python -m benchmarks report", file=sys.stderr)
    if args.json or not args.write:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
