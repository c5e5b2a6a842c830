"""Opening files that someone else may have put there: only regular files, never through a symlink.

An OCI layout directory (``oci:DIR``), a content store or a state directory is a tree of files
whose names kiln chooses but whose *kinds* it does not: a blob can be replaced by a FIFO (an
``open`` for reading then waits forever for a writer), a directory, a device (``/dev/zero`` never
ends) or a symbolic link to any of those or to a host file. :func:`open_regular` opens the last
path component without following a link and without blocking, and refuses anything that is not a
regular file with a :class:`~manifests.errors.DocumentError` naming the path. A missing file is
still :class:`FileNotFoundError`, so callers keep their own "missing" message.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from manifests.errors import DocumentError

__all__ = ["open_regular", "read_regular", "check_regular"]

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: Path) -> int:
    """The size of the regular file ``path`` (not a link); :class:`FileNotFoundError` if absent."""
    st = os.lstat(path)
    _require_regular(path, st.st_mode)
    return st.st_size


def open_regular(path: Path, *, follow: bool = False) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; with ``follow`` (a path the user chose,
    not one inside a tree someone else wrote) a symbolic link to a regular file is accepted too."""
    path = Path(path)
    try:
        fd = os.open(path, _FLAGS if follow else _FLAGS | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DocumentError(
                f"{path}: is a symbolic link, not a regular file",
                hint="replace it with the file itself",
            ) from None
        raise
    try:
        _require_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISLNK(mode):
        raise DocumentError(
            f"{path}: is a symbolic link, not a regular file", hint="replace it with the file itself"
        )
    if not stat.S_ISREG(mode):
        raise DocumentError(
            f"{path}: is {_kind(mode)}, not a regular file", hint="replace it with the file itself"
        )


def read_regular(path: Path, limit: int) -> bytes:
    """The whole of the regular file ``path``, refused past ``limit`` bytes (never read further)."""
    with open_regular(path) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise DocumentError(f"{path}: larger than the {limit}-byte cap")
    return data
