"""The primitives, grouped by family, and the Tensor methods that call them.

Each module holds Function subclasses: forward, backward and the derivative in the docstring.
This file only wires them to Tensor's operators and methods.
"""
import numpy as np

from ..tensor import Tensor
from .arithmetic import Add, Div, MatMul, Mul, Neg, Pow, Sub
from . import elementwise as _elementwise
from . import reduce as _reduce
from . import shape as _shape


def _t(x):
    return x


# ---------------------------------------------------------------------- arithmetic operators
Tensor.__add__ = lambda a, b: Add.apply(a, b)
Tensor.__radd__ = lambda a, b: Add.apply(b, a)
Tensor.__sub__ = lambda a, b: Sub.apply(a, b)
Tensor.__rsub__ = lambda a, b: Sub.apply(b, a)
Tensor.__mul__ = lambda a, b: Mul.apply(a, b)
Tensor.__rmul__ = lambda a, b: Mul.apply(b, a)
Tensor.__truediv__ = lambda a, b: Div.apply(a, b)
Tensor.__rtruediv__ = lambda a, b: Div.apply(b, a)
Tensor.__pow__ = lambda a, p: Pow.apply(a, p)
Tensor.__rpow__ = lambda a, b: Pow.apply(b, a)
Tensor.__neg__ = lambda a: Neg.apply(a)
Tensor.__matmul__ = lambda a, b: MatMul.apply(a, b)
Tensor.__rmatmul__ = lambda a, b: MatMul.apply(b, a)
Tensor.__pos__ = lambda a: a

# Comparisons give boolean data tensors (no gradient), as in PyTorch.
for _name, _op in (("__lt__", np.less), ("__le__", np.less_equal), ("__gt__", np.greater),
                   ("__ge__", np.greater_equal)):
    setattr(Tensor, _name, (lambda op: lambda a, b: Tensor(op(a.data, b.data if isinstance(b, Tensor) else b)))(_op))
Tensor.eq = lambda a, b: Tensor(np.equal(a.data, b.data if isinstance(b, Tensor) else b))

# ---------------------------------------------------------------------- reductions (reduce.py)
Tensor.sum = lambda x, axis=None, keepdims=False: _reduce.Sum.apply(x, axis=axis, keepdims=keepdims)
Tensor.mean = lambda x, axis=None, keepdims=False: _reduce.Mean.apply(x, axis=axis, keepdims=keepdims)
Tensor.max = lambda x, axis=None, keepdims=False: _reduce.Max.apply(x, axis=axis, keepdims=keepdims)

# ---------------------------------------------------------------------- shape ops (shape.py)
Tensor.reshape = _shape.reshape                 # x.reshape(2, 3), x.reshape((2, 3)), -1 allowed
Tensor.transpose = _shape.transpose             # x.transpose() reverses the axes, or x.transpose(1, 0, 2)
Tensor.swapaxes = _shape.swapaxes
Tensor.broadcast_to = _shape.broadcast_to
Tensor.T = property(lambda x: _shape.transpose(x))   # NumPy's .T: all axes reversed
Tensor.__getitem__ = _shape.getitem
Tensor.masked_fill = _shape.masked_fill

# ---------------------------------------------------------------------- elementwise (elementwise.py)
Tensor.exp = _elementwise.exp
Tensor.log = _elementwise.log
Tensor.tanh = _elementwise.tanh
Tensor.sqrt = _elementwise.sqrt
Tensor.relu = _elementwise.relu
Tensor.astype = _elementwise.astype
