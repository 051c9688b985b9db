"""Pure-NumPy reference kernels: the readable twins of the Numba kernels (numba_kernels.py).

Each function works on plain ndarrays; the derivative it implements is in the Function that
calls it (npgrad/ops/). Signatures are shared with numba_kernels.py exactly.
"""
import numpy as np
