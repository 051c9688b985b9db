"""The optional extras: heavier libraries a feature needs, imported only by that feature.

``require("matplotlib.pyplot", "plot", "plot")`` returns the module, or raises :class:`MissingExtra` whose one line
names the extra to install; the CLI prints it like any other user error. The extras are declared in pyproject.toml:
plot (matplotlib), dist (mpi4py, mpich), export (transformers, torch CPU, ctranslate2), rouge (rouge-score),
bench (torch).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """A feature's optional library is not installed; the message says which extra brings it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtra` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtra(
            f"{feature} needs {module.split('.')[0]}, which is not installed (import failed: {error}); install the "
            f"'{extra}' extra: pip install -e '.[{extra}]' (from a checkout) or pip install 'npgrad-transformer[{extra}]'"
        ) from None


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend (files only: no screen is needed or opened)."""
    matplotlib = require("matplotlib", "plot", "drawing pictures")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "plot", "drawing pictures")
