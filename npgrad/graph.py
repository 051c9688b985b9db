"""The computation graph of an expression as Graphviz DOT text: ``ng.graph(y)``.

Nodes, from the inputs down to the output:

* a **primitive** (box): the Function's name and its output's shape and dtype, e.g. ``Softmax  (4, 7) float64``;
  the expression's own output has a double border;
* a **leaf** the gradient flows to (ellipse, yellow): its ``name`` if it has one, shape and dtype;
* a **parameter** (``nn.Parameter``, ellipse, green): its name in ``params`` (e.g. ``model.named_parameters()``);
* a **constant** input that gets no gradient (an array, or a tensor that does not require grad; grey, small).

An edge ``a -> b`` means a is an input of b, labelled with the argument's position when b has several inputs.
The graph is read from ``grad_fn`` / ``Context.parents``, exactly what ``backward`` will walk, so it shows the
graph as it is: after ``backward()`` without ``retain_graph`` it is still there (only saved arrays are freed).

``ng.graph(y, path="g.svg")`` also renders it with Graphviz's ``dot`` program (the format from the suffix: svg,
png, pdf; ``.dot``/``.gv`` writes the text itself). Without ``dot`` on the PATH it raises ``GraphvizNotFound``,
whose one line says how to install it; the DOT text needs nothing (paste it into any Graphviz viewer).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .function import Context
from .tensor import Tensor, _topological_order

__all__ = ["graph", "GraphvizNotFound"]


class GraphvizNotFound(RuntimeError):
    """``graph(..., path=)`` needs Graphviz's ``dot`` program to render a picture, and it is not installed."""


# Primitives take the default node style; leaves, parameters and constants override it.
_DEFAULTS = [
    'node [shape=box, style="rounded,filled", fillcolor="#dbe9f6", fontname="Helvetica", fontsize=11];',
    'edge [color="#666666", fontsize=9];',
]
_STYLE = {
    "leaf": 'shape=ellipse, style=filled, fillcolor="#fff2b3"',
    "param": 'shape=ellipse, style=filled, fillcolor="#cdebc5"',
    "const": 'style="filled,dashed", fillcolor="#eeeeee", fontcolor="#555555", fontsize=10',
}


def _describe(shape: tuple[int, ...], dtype) -> str:
    shown = "scalar" if tuple(shape) == () else str(tuple(shape))
    return f"{shown} {np.dtype(dtype).name}" if dtype is not None else shown


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def graph(
    outputs: Tensor | Sequence[Tensor],
    path: str | Path | None = None,
    params: Iterable[tuple[str, Tensor]] | None = None,
) -> str:
    """The graph that produced ``outputs`` (a tensor or several) as DOT text; with ``path``, also rendered there.

    ``params``: (name, tensor) pairs, e.g. ``model.named_parameters()``, naming the leaves they contain.
    """
    roots = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    if not roots or not all(isinstance(t, Tensor) for t in roots):
        raise TypeError("graph: expected a Tensor or a sequence of Tensors (the outputs of an expression)")
    names = {id(p): name for name, p in (params or ())}
    nodes = [t.grad_fn if t.grad_fn is not None else t for t in roots]
    order = _topological_order(nodes)
    ids = {id(node): f"n{i}" for i, node in enumerate(order)}
    # A primitive's output shape and dtype: as its consumers received it (the roots: from the tensors themselves).
    produced: dict[int, tuple[tuple[int, ...], Any]] = {id(n): (t.shape, t.dtype) for n, t in zip(nodes, roots)}
    for node in order:
        if type(node) is Context:
            for parent, shape, dtype in zip(node.parents, node.input_shapes, node.input_dtypes):
                if parent is not None:
                    produced.setdefault(id(parent), (shape, dtype))
    outs = {id(n) for n in nodes}
    lines = ["digraph npgrad {", *("  " + line for line in _DEFAULTS)]
    constants = 0
    for node in order:
        key = ids[id(node)]
        if type(node) is Context:
            shape, dtype = produced.get(id(node), ((), None))
            label = f"{node.function.__name__}\n{_describe(shape, dtype)}"
            extra = ", peripheries=2" if id(node) in outs else ""
            lines.append(f"  {key} [label={_quote(label)}{extra}];")
            several = sum(1 for s in node.input_dtypes if s is not None) > 1
            for position, (parent, shape, dtype) in enumerate(zip(node.parents, node.input_shapes, node.input_dtypes)):
                edge = f" [label={_quote(str(position))}]" if several else ""
                if parent is not None:
                    lines.append(f"  {ids[id(parent)]} -> {key}{edge};")
                elif dtype is not None:  # an array argument that takes no gradient
                    constant = f"c{constants}"
                    constants += 1
                    lines.append(
                        f"  {constant} [label={_quote('constant ' + _describe(shape, dtype))}, {_STYLE['const']}];"
                    )
                    lines.append(f"  {constant} -> {key}{edge};")
        else:
            is_param = id(node) in names or type(node).__name__ == "Parameter"
            name = names.get(id(node)) or getattr(node, "name", None) or ("parameter" if is_param else "leaf")
            label = f"{name}\n{_describe(node.shape, node.dtype)}"
            style = _STYLE["param" if is_param else "leaf"]
            extra = ", peripheries=2" if id(node) in outs else ""
            lines.append(f"  {key} [label={_quote(label)}, {style}{extra}];")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if path is not None:
        render(text, path)
    return text


def render(text: str, path: str | Path) -> Path:
    """Write DOT ``text`` to ``path``: as text for .dot/.gv, else drawn by ``dot`` in the suffix's format."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind in ("dot", "gv"):
        path.write_text(text, encoding="utf-8")
        return path
    if kind not in ("svg", "png", "pdf"):
        raise ValueError(f"graph: path {path} must end in .svg, .png, .pdf (drawn by dot) or .dot/.gv (the text)")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotFound(
            f"graph: drawing {path} needs Graphviz's 'dot' program, which is not on the PATH (install graphviz: "
            "apt install graphviz, brew install graphviz or conda install graphviz); the DOT text itself needs "
            "nothing: ng.graph(y) returns it, path='g.dot' writes it"
        )
    subprocess.run([dot, f"-T{kind}", "-o", str(path)], input=text.encode("utf-8"), check=True)
    return path
