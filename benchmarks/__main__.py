"""``python -m benchmarks COMMAND [options]``: run one benchmark; ``python -m benchmarks`` lists them.

To add a benchmark, write ``benchmarks/NAME.py`` with ``main(argv: list[str]) -> int | None`` (argv
excludes the command name; use argparse with ``prog="python -m benchmarks NAME"``) and add one
line to ``COMMANDS``. Modules are imported only when their command runs, so a benchmark that
needs PyTorch does not slow the others down.
"""

import importlib
import sys

# command name -> (module, one-line description)
COMMANDS = {
    "kernels": ("benchmarks.kernels", "fused kernels (numba vs numpy vs PyTorch CPU), forward+backward"),
    "step": ("benchmarks.step", "full training step (seq2seq, LM) vs the same model in PyTorch; peak memory"),
    "step-ab": (
        "benchmarks.step_ab",
        "training-step time of two commits, interleaved fresh processes (a change's cost)",
    ),
    "decode": ("benchmarks.decode", "greedy and beam-5 decoding with and without the KV cache"),
    "pipeline": ("benchmarks.pipeline", "the real training pipeline's tokens/s vs the bare step on the same batches"),
    "nanogpt": ("benchmarks.nanogpt", "nanoGPT's CPU recipe, 2000 iterations, npgrad vs PyTorch: wall time, val loss"),
    "allocator": ("benchmarks.allocator", "glibc malloc defaults vs npgrad.retain_freed_memory() on one training step"),
    "nanogpt-split": (
        "benchmarks.nanogpt_split",
        "the nanoGPT iteration by phase: npgrad, npgrad with PyTorch's GEMMs, PyTorch",
    ),
    "scaling": (
        "benchmarks.scaling",
        "data-parallel training on MPI: 1 process x 1 or 2 threads vs 2 ranks x 1 thread; allreduce cost, projection",
    ),
    "export-check": (
        "benchmarks.peers",
        "exactness of the transformers / CTranslate2 exports: logits, greedy lines, beam-5 BLEU",
    ),
    "gradflow": ("benchmarks.gradflow", "the cost of a gradient-flow logging step against an ordinary training step"),
    "road": (
        "benchmarks.road",
        "n-gram, feed-forward, LSTM and Transformer LMs on tiny Shakespeare / WikiText-2 at step budgets",
    ),
    "report": ("benchmarks.report", "write benchmarks/RESULTS.md from the result files in benchmarks/results/"),
}


def usage():
    lines = ["usage: python -m benchmarks COMMAND [options]   (COMMAND --help for its options)", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown benchmark {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
