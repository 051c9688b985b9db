"""Shape primitives: reshape, transpose, swapaxes, indexing, concatenate, stack, where, masked_fill."""
import numpy as np

from ..function import Function


def concatenate(tensors, axis=0):
    raise NotImplementedError


def stack(tensors, axis=0):
    raise NotImplementedError


def where(cond, a, b):
    raise NotImplementedError
