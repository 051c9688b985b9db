"""The primitives, grouped by family: one Function subclass per primitive, with its forward, its
backward and the derivative in its docstring.

arithmetic (+ - * / ** neg @), elementwise (exp log tanh sqrt relu gelu dropout astype), reduce
(sum mean max), shape (reshape transpose swapaxes indexing concatenate stack where masked_fill),
softmax, loss (cross-entropy), norm (layer norm), linear, embedding, attention.

These modules depend only on :mod:`npgrad.function` (and the kernels); :class:`npgrad.tensor.Tensor`
sits above them and calls them from its operators and methods.
"""
