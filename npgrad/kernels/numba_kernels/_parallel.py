"""The kernels' threads: one contiguous chunk of rows (or batch entries) per thread, on a small pool.

Each kernel works on a range of rows ``[start, stop)``; a wrapper splits the rows with ``_chunks`` and
runs the chunks concurrently with ``_run`` (the kernels release the GIL), the first chunk in the
calling thread. Small inputs (under ``tuning.MIN_WORK_PER_THREAD`` elements a thread) run in the
calling thread alone, with no hand-off at all. This replaces Numba's ``parallel=True``/``prange``,
which compiled several times slower, launched threads even for a 5-row softmax, and whose GNU
OpenMP layer is not fork-safe (docs/tuning.md). ``set_num_threads(n)`` changes the count (default:
the CPUs this process may use, capped by ``NUMBA_NUM_THREADS``).
"""

import concurrent.futures
import os
import threading

import numba

from .. import tuning

_num_threads = None
_pool = None
_pool_lock = threading.Lock()


def get_num_threads():
    """Threads the kernels use (default: the CPUs this process may use, capped by NUMBA_NUM_THREADS)."""
    if _num_threads is not None:
        return _num_threads
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, numba.config.NUMBA_NUM_THREADS))


def set_num_threads(count):
    """Use ``count`` threads (>= 1) in the kernels from now on; None restores the default."""
    global _num_threads
    if count is not None and (int(count) != count or count < 1):
        raise ValueError(f"set_num_threads: expected a positive integer or None, got {count!r}")
    _num_threads = None if count is None else int(count)


def _reset_pool_after_fork():
    # A forked child inherits the pool object but not its threads: start a fresh one on demand.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_reset_pool_after_fork)


def _get_pool(workers):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="npgrad-kernel")
        return _pool


def _chunks(num_items, work_per_item):
    """[(start, stop), ...]: num_items split in one contiguous chunk per thread (fewer for little work)."""
    threads = min(get_num_threads(), num_items, max(1, num_items * work_per_item // tuning.MIN_WORK_PER_THREAD))
    threads = max(1, threads)
    return [(num_items * c // threads, num_items * (c + 1) // threads) for c in range(threads)]


def _run(kernel, chunks, *args):
    """kernel(*args, start, stop) for every chunk, concurrently; the first chunk in this thread."""
    if len(chunks) == 1:
        kernel(*args, *chunks[0])
        return
    futures = [_get_pool(len(chunks) - 1).submit(kernel, *args, *chunk) for chunk in chunks[1:]]
    try:
        kernel(*args, *chunks[0])
    finally:
        for future in futures:
            future.result()
