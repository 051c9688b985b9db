"""Performance thresholds, in one place: each was tuned on one machine and may want retuning on another.

None of these changes a result, only which (equivalent) code path runs. Each constant says why it
exists and which benchmark decides it; the measurements behind the current values are in
docs/tuning.md. Retune by editing the value here and comparing the benchmark before and after in
the same run (the machines drift: compare only within one run, at the same ``--threads``).

Imports nothing, so that any module (including those that must not import numba) can read it.
"""

# Numba kernels: a thread is given at least this many elements (rows x row length), otherwise the
# work stays in the calling thread: below it, handing a chunk to the pool costs more than it saves.
# Decided by: the softmax timing script in docs/tuning.md ("Threads"), one thread vs two by input size.
MIN_WORK_PER_THREAD = 1 << 15

# Attention forward (Numba backend): q k^T is computed with a C-ordered copy of k^T instead of k's
# transposed view only for blocks with at least this many queries and at most this head size, where
# OpenBLAS ran faster on the copy; elsewhere (decoding, one query a row; D = 64) the view was faster.
# Decided by: the np.matmul timing in docs/tuning.md ("Attention"); end to end, python -m benchmarks nanogpt
# (64 queries, head size 32) and python -m benchmarks decode (one query a row).
ATTENTION_KT_COPY_MIN_QUERIES = 64
ATTENTION_KT_COPY_MAX_HEAD_SIZE = 32

# Embedding backward (Numba backend): threads split the columns in whole cache lines of this many bytes,
# so no two threads write to the same line (no false sharing). 64 bytes on x86-64 and most ARM cores.
# Decided by: the CPU's cache line size (getconf LEVEL1_DCACHE_LINESIZE); python -m benchmarks kernels --only embedding --threads 2
CACHE_LINE_BYTES = 64
