"""Atomic file writes: temp file in the same directory, fsync, ``os.replace``, fsync the directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_writer", "fsync_dir", "naming"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def naming(target: Path) -> Iterator[None]:
    """Let an OSError from the block name ``target`` (what the user asked for), not a temp file.

    The error keeps its class and errno (callers may test them); only the file name changes, so
    ``kiln: error: keys/image.key: No such file or directory`` instead of
    ``.image.key.x1y2.tmp: No such file or directory``.
    """
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a file object; on clean exit its content replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched. An OSError of
    these steps names ``path`` (see :func:`naming`); one the caller's block raises is its own.
    """
    path = Path(path)
    with naming(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            with naming(path):
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
        with naming(path):
            os.chmod(tmp, mode)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        with naming(path.parent):
            fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    with atomic_writer(path, mode=mode, durable=durable) as fh:
        fh.write(data)
