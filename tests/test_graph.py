"""ng.graph: the computation graph as Graphviz DOT text (node = primitive with output shape and dtype, leaves and
parameters told apart, edge = input), rendered by ``dot`` when it is installed, one clear error when it is not."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import npgrad as ng
from npgrad import functional as F
from npgrad import nn
from npgrad.graph import GraphvizNotFound

NODE = re.compile(r'^\s*(\w+) \[label="([^"]*)"(?:, ([^\]]*))?\];$')
EDGE = re.compile(r'^\s*(\w+) -> (\w+)(?: \[label="(\d+)"\])?;$')


def parse(dot):
    """({node id: (label lines, attributes)}, [(from, to, position)])."""
    nodes, edges = {}, []
    for line in dot.splitlines():
        if m := NODE.match(line):
            nodes[m[1]] = (m[2].split("\\n"), m[3] or "")
        elif m := EDGE.match(line):
            edges.append((m[1], m[2], m[3]))
    return nodes, edges


def by_label(nodes):
    return {lines[0]: key for key, (lines, _) in nodes.items()}


def test_the_readme_softmax_example():
    x = ng.tensor(np.random.randn(4, 7), requires_grad=True, name="x")
    y = F.softmax(x, axis=-1)
    loss = (y * y).sum()
    dot = ng.graph(loss)
    assert dot.startswith("digraph npgrad {") and dot.rstrip().endswith("}")
    nodes, edges = parse(dot)
    assert sorted(lines[0] for lines, _ in nodes.values()) == ["Mul", "Softmax", "Sum", "x"]
    key = by_label(nodes)
    assert nodes[key["x"]][0][1] == "(4, 7) float64" and "ellipse" in nodes[key["x"]][1]
    assert nodes[key["Softmax"]][0][1] == "(4, 7) float64" and nodes[key["Softmax"]][1] == ""  # the default: a box
    assert "node [shape=box" in dot
    assert nodes[key["Sum"]][0][1] == "scalar float64" and "peripheries=2" in nodes[key["Sum"]][1]
    # y feeds both inputs of the product: two numbered edges from one node
    assert sorted(edges) == sorted(
        [
            (key["x"], key["Softmax"], None),
            (key["Softmax"], key["Mul"], "0"),
            (key["Softmax"], key["Mul"], "1"),
            (key["Mul"], key["Sum"], None),
        ]
    )
    loss.backward()  # the graph is still there afterwards: it is what backward walked
    assert ng.graph(loss) == dot


def test_parameters_constants_and_float32():
    layer = nn.Linear(3, 2)
    inputs = ng.tensor(np.ones((5, 3), dtype=np.float32))  # no gradient: a constant
    out = F.relu(layer(inputs))
    nodes, edges = parse(ng.graph(out, params=[("layer." + n, p) for n, p in layer.named_parameters()]))
    key = by_label(nodes)
    assert {"layer.weight", "layer.bias", "constant (5, 3) float32", "Relu"} <= set(key)
    assert "#cdebc5" in nodes[key["layer.weight"]][1]  # parameters are green, leaves yellow
    assert nodes[key["Relu"]][0][1] == "(5, 2) float32"
    into = {(a, pos) for a, b, pos in edges if b == key["Linear"]}
    assert (key["constant (5, 3) float32"], "0") in into and (key["layer.weight"], "1") in into
    # a leaf can be the output itself; several outputs share their graph
    w = ng.tensor(np.ones(3), requires_grad=True)
    a, b = w.exp(), w * 2.0
    nodes, edges = parse(ng.graph([a, b]))
    assert sorted(lines[0] for lines, _ in nodes.values()) == ["Exp", "Mul", "leaf"]
    assert len(edges) == 2
    with pytest.raises(TypeError, match="expected a Tensor"):
        ng.graph(np.ones(3))


def test_rendering(tmp_path, monkeypatch):
    x = ng.tensor(np.ones(3), requires_grad=True)
    y = x.tanh().sum()
    ng.graph(y, path=tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == ng.graph(y)
    with pytest.raises(ValueError, match="must end in"):
        ng.graph(y, path=tmp_path / "g.txt")
    if shutil.which("dot"):
        ng.graph(y, path=tmp_path / "g.svg")
        assert "<svg" in (tmp_path / "g.svg").read_text()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GraphvizNotFound, match="needs Graphviz's 'dot' program") as raised:
        ng.graph(y, path=tmp_path / "g.png")
    assert "\n" not in str(raised.value) and not (tmp_path / "g.png").exists()
