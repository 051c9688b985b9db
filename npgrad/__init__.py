"""npgrad: a minimal reverse-mode autograd on NumPy arrays, every derivative written by hand."""

from .allocator import retain_freed_memory
from .function import Context, Function
from .kernels import get_backend, set_backend, use_backend
from .tensor import Tensor, enable_grad, grad, is_grad_enabled, no_grad, tensor
from .ops.shape import concatenate, stack, where
from . import functional
from . import nn, optim
from .nn import manual_seed
from .gradcheck import (
    GradcheckError,
    gradcheck,
    gradgradcheck,
    hessian,
    hvp,
    jacobian,
    numerical_hessian,
    numerical_jacobian,
)
from .graph import GraphvizNotFound, graph

__version__ = "0.1.0"

__all__ = [
    "Tensor",
    "tensor",
    "Function",
    "Context",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "grad",
    "set_backend",
    "get_backend",
    "use_backend",
    "concatenate",
    "stack",
    "where",
    "functional",
    "gradcheck",
    "gradgradcheck",
    "GradcheckError",
    "jacobian",
    "numerical_jacobian",
    "hessian",
    "numerical_hessian",
    "hvp",
    "graph",
    "GraphvizNotFound",
    "nn",
    "optim",
    "manual_seed",
    "retain_freed_memory",
]
