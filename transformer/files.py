"""Writing files so that a crash never leaves half of one: the one atomic-write helper of the package."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path, directory=False) -> None:
    """Flush a file (or, with ``directory=True``, a directory's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (for files in a staging directory that is renamed as a whole)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomic(path, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` (str: UTF-8) all at once: written to a hidden temporary file beside it,
    flushed to the disk, then renamed over it. A crash leaves either the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_durable(temporary, data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_path(path.parent, directory=True)
    return path
