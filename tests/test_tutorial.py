"""docs/tutorial.ipynb runs top to bottom (executed by nbclient in a fresh kernel of this Python, on this checkout's
code) and is stored without outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
NOTEBOOK = DOCS / "tutorial.ipynb"


def test_the_notebook_is_stored_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code, "no code cells"
    for number, cell in enumerate(code, 1):
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
            f"code cell {number} holds outputs: clear them before committing (Jupyter: Edit > Clear All Outputs; "
            "or jupyter nbconvert --clear-output --inplace docs/tutorial.ipynb)"
        )


def test_the_tutorial_runs_top_to_bottom(monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The native kernel is this interpreter (sys.executable); the notebook's first cell puts the checkout first on
    # sys.path, so the kernel runs the code under test whether or not it is installed.
    assert sys.executable
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name=NATIVE_KERNEL_NAME, resources={"metadata": {"path": str(DOCS)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "Softplus: True" in text and "WrongSoftplus:" in text
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) >= 3  # Jacobians, loss, attention
