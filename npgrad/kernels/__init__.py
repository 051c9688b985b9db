"""Kernels for the hot paths, and the one switch that selects them.

Two backends implement the same functions with the same signatures:

* ``reference`` (backend name ``"numpy"``): pure NumPy, the readable twin; always available.
* ``numba_kernels`` (backend name ``"numba"``): a package of Numba-jitted kernels, one module per
  kernel family, compiled lazily on first call and cached on disk; imported only when the backend
  is first used, so ``import npgrad`` stays fast.

``tuning`` holds the performance thresholds (which equivalent code path runs), with the benchmark
that decides each; docs/tuning.md has the measurements behind them.

Ops call kernels through ``K``: ``K.softmax_forward(x)`` resolves to the active backend's
function, falling back to the reference for any function the Numba backend does not define.

Select with ``ng.set_backend("numba" | "numpy")``, the ``NPGRAD_BACKEND`` environment variable,
or ``with ng.use_backend("numpy"): ...``. The default is ``numba`` when Numba imports.
"""

import contextlib
import importlib
import os

from . import reference

BACKENDS = ("numba", "numpy")
_modules = {"numpy": reference}
_active = None


def _numba_available():
    try:
        importlib.import_module("numba")
        return True
    except Exception:  # pragma: no cover - depends on the machine
        return False


def _load(name):
    if name not in _modules:
        if name == "numba":
            from . import numba_kernels  # noqa: F401  (imports numba)

            _modules["numba"] = numba_kernels
    return _modules[name]


def set_backend(name):
    """Select the kernel backend: "numba" or "numpy"."""
    global _active
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "numba" and not _numba_available():
        raise RuntimeError("backend 'numba' requested but numba cannot be imported; use 'numpy'")
    _active = name


def get_backend():
    global _active
    if _active is None:
        env = os.environ.get("NPGRAD_BACKEND")
        if env:
            set_backend(env.strip().lower())
        else:
            _active = "numba" if _numba_available() else "numpy"
    return _active


@contextlib.contextmanager
def use_backend(name):
    """``with use_backend("numpy"): ...`` selects a backend for the block only."""
    prev = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(prev)


class _Dispatch:
    """Attribute access resolves to the active backend's kernel (reference as fallback)."""

    def __getattr__(self, name):
        backend = _active or get_backend()
        fn = getattr(_load(backend), name, None)
        if fn is None:
            fn = getattr(reference, name)
        return fn


K = _Dispatch()
