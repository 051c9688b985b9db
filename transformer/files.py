"""Writing files so that a crash never leaves half of one: the one atomic-write helper of the package."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import uuid
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


def _rename_exchange(a, b):
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False when unsupported here."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE) failed: {os.strerror(err)}")


def replace_directory(new, target):
    """Put the complete directory ``new`` at ``target`` atomically; an existing ``target`` is removed only afterwards
    (exchanged with ``new`` where Linux allows, else renamed aside to ``.<name>.old-*`` first)."""
    new, target = Path(new), Path(target)
    parent = target.parent
    if not target.exists():
        os.rename(new, target)
    elif _rename_exchange(new, target):
        shutil.rmtree(new)  # ``new`` now holds the previous checkpoint
    else:
        old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(new, target)
        fsync_path(parent, directory=True)
        shutil.rmtree(old)
    fsync_path(parent, directory=True)
