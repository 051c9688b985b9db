"""Numba kernels: the same functions, signatures and results as reference.py, jitted and fused.

Every public function is a thin Python wrapper with exactly the signature of its NumPy twin in
reference.py. The wrapper checks and prepares its inputs (_inputs.py), allocates the outputs with
NumPy and hands everything to a jitted ``_..._kernel`` that fills them, split over threads
(_parallel.py). The kernels are ``@njit(cache=True, nogil=True)`` (_jit.py): compiled on first call
(under a second each), then loaded from the on-disk cache (``__pycache__``) by later processes. This
package is imported only when the ``numba`` backend is first used (npgrad/kernels/__init__.py), so
``import npgrad`` never pays for ``import numba``.

Modules, one per kernel family, each naming its twin in reference.py:

* softmax.py        softmax and log-softmax, forward and backward
* cross_entropy.py  cross-entropy with label smoothing and ignore_index
* soft_targets.py   distillation losses: soft-target cross-entropy and temperature-scaled KL divergence
* layer_norm.py     layer norm, residual-add + layer norm, and their backward
* attention.py      the fused masked softmax between BLAS products, forward and backward
* embedding.py      the embedding backward (scatter-add)
* gelu.py           GELU, exact and tanh, forward and backward
* recurrent.py      RNN/GRU/LSTM over time: one fused element-wise pass per step around the BLAS product, and BPTT

and the building blocks: _intrinsics.py (LLVM intrinsics, a vectorisable exp, erf and the normal
CDF, row reductions), _parallel.py (the thread pool and the row chunks), _inputs.py (dtype and shape
checks, contiguous copies), _jit.py (fastmath flags, jit options, the disk cache). Performance
thresholds live in npgrad/kernels/tuning.py, the measurements behind the design in docs/tuning.md.

Shapes: N rows, V classes (row length), C features, B batch (every leading axis flattened,
batch * heads for attention), Lq queries, Lk keys, D head size (Dv for values).
"""

from . import _jit  # noqa: F401  (first: registers the kernels' cache locator before any kernel is compiled)
from ._parallel import get_num_threads, set_num_threads
from .attention import attention_backward, attention_forward
from .cross_entropy import cross_entropy_backward, cross_entropy_forward
from .embedding import embedding_backward
from .gelu import gelu_backward, gelu_forward
from .recurrent import recurrent_backward, recurrent_forward
from .layer_norm import add_layer_norm_forward, layer_norm_backward, layer_norm_forward
from .soft_targets import kl_div_backward, kl_div_forward, soft_cross_entropy_backward, soft_cross_entropy_forward
from .softmax import log_softmax_backward, log_softmax_forward, softmax_backward, softmax_forward

__all__ = [
    "softmax_forward",
    "softmax_backward",
    "log_softmax_forward",
    "log_softmax_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "soft_cross_entropy_forward",
    "soft_cross_entropy_backward",
    "kl_div_forward",
    "kl_div_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "add_layer_norm_forward",
    "attention_forward",
    "attention_backward",
    "embedding_backward",
    "gelu_forward",
    "gelu_backward",
    "recurrent_forward",
    "recurrent_backward",
    "set_num_threads",
    "get_num_threads",
]
