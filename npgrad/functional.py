"""The user-facing functions (``from npgrad import functional as F``).

Each name is implemented next to its primitive(s) in npgrad/ops/; this module only gathers them.
"""

from .ops.attention import multi_head_attention, packed_self_attention, scaled_dot_product_attention
from .ops.distill import kl_div, soft_cross_entropy
from .ops.elementwise import dropout, exp, gelu, log, relu, sqrt, tanh
from .ops.embedding import embedding
from .ops.linear import linear
from .ops.loss import cross_entropy
from .ops.norm import add_layer_norm, layer_norm
from .ops.recurrent import gru, gru_cell, lstm, lstm_cell, recurrent, recurrent_layer, rnn, rnn_cell
from .ops.shape import concatenate, masked_fill, stack, where
from .ops.softmax import log_softmax, softmax

__all__ = [
    "softmax",
    "log_softmax",
    "cross_entropy",
    "soft_cross_entropy",
    "kl_div",
    "layer_norm",
    "add_layer_norm",
    "scaled_dot_product_attention",
    "multi_head_attention",
    "packed_self_attention",
    "linear",
    "embedding",
    "dropout",
    "relu",
    "gelu",
    "exp",
    "log",
    "tanh",
    "sqrt",
    "masked_fill",
    "where",
    "concatenate",
    "stack",
    "recurrent",
    "recurrent_layer",
    "lstm",
    "gru",
    "rnn",
    "lstm_cell",
    "gru_cell",
    "rnn_cell",
]
