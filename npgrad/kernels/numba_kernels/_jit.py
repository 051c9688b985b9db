"""How the kernels are compiled: the fastmath flag sets, the kernels' jit options, and their disk cache.

fastmath: the kernels use ``_FAST`` = reassociation (so sums vectorise into several partial sums),
contraction into FMA, reciprocal and signed-zero freedom. These change results only at float32 /
float64 round-off, which the tests check against the reference. ``nnan``/``ninf`` are NOT set:
NaN and inf in inputs propagate as in NumPy, and the attention mask logic may compare with -inf.

The disk cache (``cache=True``): Numba keys a cached function on the source of its own file only, so a
kernel compiled with an older ``_exp`` from _intrinsics.py would be loaded again after ``_exp`` changed.
``_PackageSourceLocator`` makes the kernels of this package go stale together: their cache stamp is a
hash of every module here and of reference.py (whose erf constants the GELU kernels compile in).
"""

import functools
import hashlib
import os

from numba.core import caching

# Not 'nnan'/'ninf' (see above), nor 'afn' (approximate libm functions).
_FAST = {"nsz", "arcp", "contract", "reassoc"}
# The exp functions must not be reassociated: x - n*ln2_hi - n*ln2_lo would become
# x - n*(ln2_hi + ln2_lo), undoing the exact range reduction (19 ulp instead of 1).
_EXP_FLAGS = {"nsz", "contract"}
# Every kernel: compiled once per signature and cached on disk; releases the GIL so that the
# thread pool (_parallel.py) runs chunks concurrently.
_JIT = dict(nogil=True, fastmath=_FAST, cache=True)
# The same without fastmath, for a kernel that must add in exactly the serial order.
_JIT_EXACT = dict(nogil=True, cache=True)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_REFERENCE = os.path.join(os.path.dirname(_PACKAGE_DIR), "reference.py")


def _sources():
    """The files whose code or constants the cached kernels compile in."""
    names = sorted(name for name in os.listdir(_PACKAGE_DIR) if name.endswith(".py"))
    return [os.path.join(_PACKAGE_DIR, name) for name in names] + [_REFERENCE]


@functools.lru_cache(maxsize=None)
def _hash_sources(stats):
    digest = hashlib.sha256()
    for path, _, _ in stats:
        with open(path, "rb") as source:
            digest.update(path.encode() + b"\0" + source.read())
    return digest.hexdigest()


def _sources_stamp():
    """A hash of every source file: re-read only when a file's modification time or size changed."""
    stats = []
    for path in _sources():
        st = os.stat(path)
        stats.append((path, st.st_mtime_ns, st.st_size))
    return _hash_sources(tuple(stats))


class _PackageSourceLocator:
    """Numba's own cache locator for a kernel of this package (same directory, same file names), with
    the source stamp of the whole package instead of the kernel's own file."""

    def __init__(self, inner):
        self._inner = inner

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        return _sources_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _PACKAGE_DIR or not os.path.isfile(py_file):
            return None  # not ours, or not a plain file (a zip): Numba's locators decide
        for locator_class in _locator_classes:
            if locator_class is not cls:
                inner = locator_class.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
        return None


# Registered before any kernel module is imported (they all import this module first), i.e. before
# their dispatchers create their caches. If a Numba release renames this list, caching still works,
# with Numba's per-file staleness.
_cache_impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
_locator_classes = getattr(_cache_impl, "_locator_classes", None)
if isinstance(_locator_classes, list) and _PackageSourceLocator not in _locator_classes:
    _locator_classes.insert(0, _PackageSourceLocator)
