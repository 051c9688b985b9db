"""The benchmarks' own set-up: a timing taken with the wrong thread count is refused, not reported."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code, **env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_set_threads_refuses_numpy_loaded_with_another_setting():
    result = _run("import numpy\nfrom benchmarks.nanogpt import set_threads\nset_threads(1)")
    assert result.returncode != 0
    assert "numpy was imported before the benchmark could set 1 thread(s)" in result.stderr


def test_set_threads_before_numpy_sets_every_library():
    code = (
        "import os, sys\nfrom benchmarks.nanogpt import set_threads\nassert 'numpy' not in sys.modules\n"
        "set_threads(1)\nprint(os.environ['OPENBLAS_NUM_THREADS'], os.environ['NUMBA_NUM_THREADS'])"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]


def test_set_threads_accepts_numpy_loaded_with_the_same_setting():
    result = _run("import numpy\nfrom benchmarks.nanogpt import set_threads\nset_threads(1)", OPENBLAS_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr


def test_set_threads_overrides_the_environment():
    code = (
        "import os\nfrom benchmarks.nanogpt import set_threads\nset_threads(1)\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['NUMBA_NUM_THREADS'])"
    )
    result = _run(code, OPENBLAS_NUM_THREADS="4", NUMBA_NUM_THREADS="4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]
