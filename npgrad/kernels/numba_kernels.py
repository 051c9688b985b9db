"""Numba kernels: the same functions and signatures as reference.py, jitted.

Functions missing here fall back to the reference implementation.
"""
import numba  # noqa: F401
