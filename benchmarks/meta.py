"""What every benchmark's ``--json`` output says about its run: ``{"meta": run_meta(...), ...}``; and the peer.

The command, the date, the machine (CPU model from lscpu, CPU count), the thread count, the library versions and
the load average before and after (the machines are shared: the load says how far to trust a figure).
``benchmarks report`` reads these fields from the result files in benchmarks/results/.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys


def machine():
    """The CPU model as lscpu names it (platform.processor() is often empty on Linux)."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return model


def load_average():
    """(1, 5, 15)-minute load averages rounded to 2 decimals, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions(torch=None):
    """Python, npgrad, numpy (and its BLAS), numba and, when given, torch versions. Imports numpy: call it after
    the benchmark has set its thread counts."""
    import numpy as np

    import npgrad

    out = {"python": platform.python_version(), "npgrad": npgrad.__version__, "numpy": np.__version__}
    try:
        import numba

        out["numba"] = numba.__version__
    except ImportError:
        out["numba"] = None
    if torch is not None:
        out["torch"] = torch.__version__
    blas = "unknown"
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # older NumPy: no dict mode
        pass
    out["numpy_blas"] = blas
    return out


def run_meta(name, argv, threads, load_before, torch=None, **extra):
    """The ``meta`` block of benchmark ``name`` run with ``argv`` (None: ``sys.argv[1:]``, the module run directly),
    ``load_before`` taken before timing started; ``extra`` adds the benchmark's own settings."""
    args = list(sys.argv[1:] if argv is None else argv)
    meta = {
        "command": " ".join(["python -m benchmarks", name] + args),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "versions": versions(torch),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    meta.update(extra)
    return meta


def print_result(meta, results, as_json):
    """``--json``: {"meta", "results"} as one document; otherwise the meta on one line (after the rows, printed as they
    were measured)."""
    print(json.dumps({"meta": meta, "results": results}, indent=2) if as_json else json.dumps(meta))


def import_torch(threads):
    """torch set to ``threads`` threads, or None when it is not installed (it is only the ``bench`` extra)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch
