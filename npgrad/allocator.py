"""Keep freed memory in the process for the next training step instead of handing it back to the OS.

Why: a training step allocates and frees the same large arrays every step; at the Multi30k configuration the
(B*T, V) logits and their gradient alone are ~130 MB each. glibc's malloc serves every block above its mmap
threshold with a fresh ``mmap`` and unmaps it on ``free`` (and trims the heap top above its trim threshold), so each
step the kernel hands out, page-faults in and zeroes the same memory again. Keeping the blocks removes those page
faults and makes the step faster at about the same peak memory (the freed blocks are reused for the next step's
arrays of the same sizes rather than held on top of them): ``python -m benchmarks allocator`` measures it, and
benchmarks/RESULTS.md has the current figures.

The price: memory freed after the peak is not returned to the OS until the process ends (it is reused by later
allocations). That suits a process whose job is training or decoding, which is why the ``transformer`` command
line calls this at start (``TRANSFORMER_RETAIN_MEMORY=0`` turns it off); a library import never does it silently.
PyTorch users get the same effect from jemalloc/tcmalloc via ``LD_PRELOAD``; this needs nothing installed.
"""

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h: mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
# Blocks below this come from (and go back to) the heap's free lists; 1 GiB covers every array of the
# configurations in configs/ (the largest, the logits of a 4096-token batch x 8000 pieces, is 131 MB).
_THRESHOLD = 1 << 30

_applied = False


def retain_freed_memory():
    """Raise glibc malloc's mmap and trim thresholds to 1 GiB for this process. -> True if now in effect.

    Returns False where it does not apply: not Linux, a C library without a working ``mallopt`` (musl's returns
    0), or a glibc that refuses a 1 GiB threshold (mallopt(3) documents a 32 MiB cap on 64-bit; glibc 2.36 here
    accepts it). Idempotent. Results of any computation are unaffected; only where freed
    memory goes changes.
    """
    global _applied
    if not _applied:
        _applied = set_malloc_thresholds(_THRESHOLD)
    return _applied


def set_malloc_thresholds(threshold):
    """glibc ``mallopt``: mmap and trim thresholds both to ``threshold`` bytes. -> True if glibc accepted both.

    The mechanism behind :func:`retain_freed_memory`; ``benchmarks/allocator.py`` also uses it to switch back to
    glibc's initial 128 KiB for its A/B. False (nothing changed) off Linux or without a working ``mallopt``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded into this process
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1 and mallopt(_M_TRIM_THRESHOLD, int(threshold)) == 1
