"""Layer norm and residual-add + layer norm."""
import numpy as np

from ..function import Function



def add_layer_norm(*args, **kwargs):
    raise NotImplementedError


def layer_norm(*args, **kwargs):
    raise NotImplementedError
