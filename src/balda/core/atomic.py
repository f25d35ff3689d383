"""Atomic file writes: the one place where balda makes a file appear all at once.

``atomic_write(path, write)`` calls ``write(f)`` on a temporary file in the destination folder,
flushes and fsyncs it, then renames it over ``path`` with :func:`os.replace` (atomic on POSIX), and
fsyncs the folder. A reader (or a resumed run) sees the old file or the new one, never a
half-written one, whatever moment the process is killed at; a failed write leaves no temp file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Optional


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], None], before_rename: Optional[Callable[[], None]] = None
) -> Path:
    """Write ``path`` through ``write(fileobj)`` atomically; ``before_rename`` is a test hook."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except OSError:  # pragma: no cover - not every filesystem allows a directory fsync
        pass
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())
