"""npgrad's modules import one another in one direction only: tensor.py -> ops/* -> function.py -> kernels.

Read from the source with ``ast`` (every import statement, at module level or inside a function),
so a late import that only hides a cycle at run time is caught as well. Imports under
``if TYPE_CHECKING:`` are the one exception: they never run (they let a lower layer name ``Tensor`` in
its annotations).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "npgrad"


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package=PACKAGE):
    return {_module_name(p): p for p in sorted(package.rglob("*.py"))}


def _resolve(importer, is_package, node, known):
    """The npgrad modules an import statement loads: the module and its parent packages, except npgrad
    itself and the importer's own packages (those are already being imported when the importer runs)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:
            base = importer.split(".") if is_package else importer.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names]
    loaded = set()
    own_packages = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    for target in targets:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):  # npgrad.ops.shape loads npgrad.ops and npgrad.ops.shape
            name = ".".join(parts[:i])
            if name in known and name not in own_packages:
                loaded.add(name)
    return loaded


def _type_checking_only(tree):
    """The nodes under ``if TYPE_CHECKING:`` (read by a type checker, never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped |= {id(child) for statement in node.body for child in ast.walk(statement)}
    return skipped


def _import_graph(package=PACKAGE):
    modules = _modules(package)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = _type_checking_only(tree)
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped:
                edges |= _resolve(name, path.name == "__init__.py", node, modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def _find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read_from_the_source():
    graph = _import_graph()
    assert "npgrad.tensor" in graph and "npgrad.ops.elementwise" in graph
    assert {"npgrad.ops.arithmetic", "npgrad.function"} <= graph["npgrad.tensor"] | {
        m for dep in graph["npgrad.tensor"] for m in graph[dep]
    }
    assert "npgrad.function" in graph["npgrad.ops.elementwise"]


def test_npgrad_imports_have_no_cycle():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("lower", ["npgrad.function", "npgrad.ops", "npgrad.kernels"])
def test_lower_layers_do_not_import_the_layers_above(lower):
    graph = _import_graph()
    above = {"npgrad.tensor", "npgrad.nn", "npgrad.functional", "npgrad.optim", "npgrad.gradcheck"}
    for name, deps in graph.items():
        if name == lower or name.startswith(lower + "."):
            assert not deps & above, f"{name} imports {sorted(deps & above)}"


def test_an_ops_module_imports_on_its_own():
    code = (
        "import sys, numpy as np\n"
        "import npgrad.ops.elementwise as e\n"
        "assert 'npgrad.tensor' in sys.modules\n"  # npgrad/__init__ runs first, as for any submodule
        "y = e.exp(np.zeros(2))\n"
        "assert type(y).__name__ == 'Tensor' and hasattr(y, 'backward')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_tensor_methods_are_in_the_class_body():
    import npgrad as ng

    for name in (
        "__add__",
        "__radd__",
        "__matmul__",
        "sum",
        "mean",
        "max",
        "reshape",
        "transpose",
        "swapaxes",
        "T",
        "__getitem__",
        "masked_fill",
        "exp",
        "log",
        "tanh",
        "sqrt",
        "relu",
        "astype",
        "eq",
        "__lt__",
    ):
        assert name in vars(ng.Tensor), f"Tensor.{name} is not defined in the class body"
        assert vars(ng.Tensor)[name].__doc__, f"Tensor.{name} has no docstring"


# ---------------------------------------------------------------------------------------------- transformer
# The house reads top to bottom: cli -> train/tasks -> model -> layers -> attention -> (data, positional) and the
# leaves (config, files, jsonstate, console); npgrad never imports transformer.
TRANSFORMER = ROOT / "transformer"
LOWER_THAN = {
    "transformer.train": {"transformer.cli"},
    "transformer.attention_maps": {"transformer.cli", "transformer.train", "transformer.tasks", "transformer.model"},
    "transformer.dist": {"transformer.cli", "transformer.train", "transformer.tasks", "transformer.model"},
    "transformer.backtranslate": {"transformer.cli", "transformer.train"},
    "transformer.mixing": {"transformer.cli", "transformer.train", "transformer.tasks", "transformer.model"},
    "transformer.summarise": {"transformer.cli", "transformer.train"},
    "transformer.dialogue": {"transformer.cli", "transformer.train"},
    "transformer.dialogue_corpora": {"transformer.cli", "transformer.train", "transformer.tasks", "transformer.model"},
    "transformer.tasks": {"transformer.cli", "transformer.train"},
    "transformer.classify": {"transformer.cli", "transformer.train"},  # a task (text classification, masked LM)
    "transformer.model": {"transformer.cli", "transformer.train", "transformer.tasks", "transformer.rnn"},
    "transformer.rnn": {"transformer.cli", "transformer.train", "transformer.tasks"},
    "transformer.classifier": {"transformer.cli", "transformer.train", "transformer.tasks", "transformer.classify"},
    "transformer.layers": {"transformer.cli", "transformer.train", "transformer.tasks", "transformer.model"},
    "transformer.attention": {
        "transformer.cli",
        "transformer.train",
        "transformer.tasks",
        "transformer.model",
        "transformer.layers",
    },
    # export reads checkpoints and builds models; it imports no training code
    "transformer.export_hf": {"transformer.cli", "transformer.train", "transformer.tasks"},
    "transformer.export_ct2": {"transformer.cli", "transformer.train", "transformer.tasks"},
}
# plot.py reads logs and draws them: no training, task or model code.
LOWER_THAN["transformer.plot"] = {
    *LOWER_THAN["transformer.attention"],
    "transformer.attention",
    "transformer.checkpoint",
}
LEAVES = (
    "transformer.data",
    "transformer.positional",
    "transformer.config",
    "transformer.files",
    "transformer.jsonstate",
    "transformer.console",
    "transformer.extras",
    "transformer.gradflow",
)


def test_transformer_imports_have_no_cycle():
    cycle = _find_cycle(_import_graph(TRANSFORMER))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_transformer_layers_import_only_downwards():
    graph = _import_graph(TRANSFORMER)
    for name, above in LOWER_THAN.items():
        assert not graph[name] & above, f"{name} imports {sorted(graph[name] & above)}"
    for leaf in LEAVES:
        assert graph[leaf] <= {"transformer.data"}, f"{leaf} imports {sorted(graph[leaf])}"


def test_npgrad_never_imports_transformer():
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            modules = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            assert not any(m.split(".")[0] in ("transformer", "benchmarks") for m in modules), name
