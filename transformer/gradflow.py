"""Gradient flow: per-layer gradient norms and update/weight ratios, measured on the steps the log records.

On every ``log_every``-th step the training loop asks for a record::

    {"type": "gradients", "step": 100,
     "grad_norm": {"src_embed": 0.41, "encoder_layers.0.self_attn": 0.12, ...},     # ||g|| of the layer
     "update_ratio": {"src_embed": 3.1e-4, "encoder_layers.0.self_attn": 9.8e-4, ...}}  # ||w_new - w|| / ||w||

A layer is a parameter group: the parameters under one sub-module of a numbered layer
(``encoder_layers.0.self_attn``, ``layers.3.feed_forward``, ``decoder_layers.1.norm2``), or under one top-level module
elsewhere (``src_embed``, ``final_norm``). Layers appear in the model's order. The gradient norms are the per-parameter
norms gradient clipping combines into its total (``npgrad.optim.grad_norms``, handed on to ``clip_grad_norm_``), so
a logging step reads each gradient once, as every other step does; the update ratio needs a copy of the weights
before the optimizer step, taken on logging steps only. Other steps do nothing here.

A layer whose gradient norm is non-finite, or vanishes (at most ``VANISHING`` times the largest layer's norm in the
same step: a millionth of the signal, or exactly zero), is named in the record (``nonfinite``, ``vanishing``) and in
a warning on the training output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from npgrad import optim
from npgrad.tensor import Tensor

# A layer's gradient norm at or below this fraction of the largest layer's norm (same step) counts as vanished.
VANISHING = 1e-6


def layer_of(name: str) -> str:
    """The layer (parameter group) a parameter belongs to: ``encoder_layers.0.self_attn.qkv.weight`` ->
    ``encoder_layers.0.self_attn``; ``src_embed.weight`` -> ``src_embed``; a bare name is its own group."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and i > 0:
            return ".".join(parts[: min(i + 2, len(parts) - 1)])
    return parts[0]


class GradientFlow:
    """Per-layer measurements over an optimizer's parameters (their names say the layers)."""

    def __init__(self, names: Sequence[str], params: Sequence[Tensor]):
        self.params = list(params)
        self.layers: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            self.layers.setdefault(layer_of(name), []).append(i)

    def grad_norms(self) -> list[float]:
        """Per-parameter gradient norms, to be handed to ``clip_grad_norm_(norms=)`` and then to ``record``."""
        return optim.grad_norms(self.params)

    def snapshot(self) -> list[np.ndarray]:
        """The weights before the optimizer step (what the update ratio compares against)."""
        return [p.data.copy() for p in self.params]

    def record(self, norms: Sequence[float], before: Sequence[np.ndarray] | None = None) -> dict:
        """The log record's fields: per-layer gradient norms, update ratios (when ``before`` is given; it is
        overwritten), and the layers whose gradient is non-finite or vanishes."""
        grad = {layer: _root_sum_squares(norms[i] for i in members) for layer, members in self.layers.items()}
        record: dict = {"grad_norm": grad}
        if before is not None:
            update, weight = [], []
            for p, old in zip(self.params, before):
                weight.append(float(np.dot(np.ravel(old), np.ravel(old))))
                np.subtract(p.data, old, out=old)  # old becomes the update, in place: no second copy
                update.append(float(np.dot(np.ravel(old), np.ravel(old))))
            record["update_ratio"] = {
                layer: _ratio(sum(update[i] for i in members), sum(weight[i] for i in members))
                for layer, members in self.layers.items()
            }
        nonfinite, vanishing = problems(grad)
        if nonfinite:
            record["nonfinite"] = nonfinite
        if vanishing:
            record["vanishing"] = vanishing
        return record


def _root_sum_squares(values) -> float:
    return math.sqrt(sum(v * v for v in values))


def _ratio(update_sq: float, weight_sq: float) -> float:
    if weight_sq == 0.0:
        return math.inf if update_sq > 0 else 0.0
    return math.sqrt(update_sq / weight_sq)


def problems(grad: dict[str, float]) -> tuple[list[str], list[str]]:
    """(non-finite layers, vanishing layers) of one step's per-layer gradient norms."""
    nonfinite = [layer for layer, n in grad.items() if not math.isfinite(n)]
    finite = [n for n in grad.values() if math.isfinite(n)]
    largest = max(finite, default=0.0)
    vanishing = [layer for layer, n in grad.items() if math.isfinite(n) and n <= VANISHING * largest]
    return nonfinite, vanishing


def warning(step: int, record: dict) -> str | None:
    """The one-line warning for a record with non-finite or vanishing layers, or None."""
    said = []
    grad = record["grad_norm"]
    if record.get("nonfinite"):
        said.append("non-finite gradient in " + ", ".join(f"{layer} ({grad[layer]})" for layer in record["nonfinite"]))
    if record.get("vanishing"):
        largest = max((n for n in grad.values() if math.isfinite(n)), default=0.0)
        said.append(
            f"vanishing gradient (norm <= {VANISHING:g} x the largest layer's, {largest:.3g}) in "
            + ", ".join(f"{layer} ({grad[layer]:.3g})" for layer in record["vanishing"])
        )
    return f"step {step}: " + "; ".join(said) if said else None
