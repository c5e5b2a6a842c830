"""Image archives: an OCI layout as one tarball, the docker-archive ``manifest.json``, and a reader.

``oci-archive`` is the layout directory as a deterministic tar (same writer as layers: sorted,
numeric root ownership, every mtime the SOURCE_DATE_EPOCH, modes 0644/0755).

``docker-archive`` is the layout *plus* a ``manifest.json`` that ``docker load`` reads
(``[{"Config": "blobs/sha256/<hex>", "RepoTags": ["name:version"], "Layers": [...]}]``), as Docker
25 writes its own ``docker save`` output; older engines ignore the OCI files. Its layers are
uncompressed tars, which every engine version loads.

:class:`ArchiveReader` reads such tarballs as untrusted input: only regular members with plain
relative names are indexed, with caps on member count and on what is read into memory.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from builder.errors import BuildError
from builder.tarwriter import Sink, write_tar
from builder.tree import Entry, EntryKind, FileTree
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError
from manifests.oci import MAX_DOCUMENT_BYTES

__all__ = ["layout_entries", "write_layout_tar", "docker_manifest", "ArchiveReader", "MAX_MEMBERS"]

MAX_MEMBERS = 100_000


def layout_entries(root: Path) -> tuple[Entry, ...]:
    """The files of a layout directory (recursively) as tree entries, normalized for archiving."""
    tree = FileTree()
    root = Path(root)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise BuildError(f"{path}: unexpected non-regular file in an image layout")
        if path.is_dir():
            tree.add(Entry(path="/" + rel, kind=EntryKind.DIR, mode=0o755, origin="layout"))
        else:
            tree.add(
                Entry(
                    path="/" + rel,
                    kind=EntryKind.FILE,
                    mode=0o644,
                    size=path.stat().st_size,
                    host_path=path,
                    origin="layout",
                )
            )
    return tree.entries()


def write_layout_tar(root: Path, sink: Sink, *, mtime: int) -> Digest:
    """Write the layout directory ``root`` as a deterministic tar into ``sink``; returns its digest."""
    return write_tar(layout_entries(root), sink, mtime=mtime).diff_id


def docker_manifest(*, config: Digest, layers: Sequence[Digest], repo_tag: str) -> bytes:
    """The ``manifest.json`` of a docker-archive, pointing at the layout's blobs."""
    doc = [
        {
            "Config": f"blobs/sha256/{config.hex}",
            "RepoTags": [repo_tag],
            "Layers": [f"blobs/sha256/{d.hex}" for d in layers],
        }
    ]
    return canonical_json(doc)


class ArchiveReader:
    """Random access to the regular members of an image tarball (untrusted)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._tar = tarfile.open(self.path, mode="r:")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as exc:
            raise DocumentError(f"{self.path}: not a readable tar archive: {exc}") from exc
        try:
            self._members = self._index()
        except tarfile.TarError as exc:
            self._tar.close()
            raise DocumentError(f"{self.path}: corrupt tar archive: {exc}") from exc
        except BaseException:
            self._tar.close()
            raise

    def _index(self) -> dict[str, tarfile.TarInfo]:
        members: dict[str, tarfile.TarInfo] = {}
        for count, info in enumerate(self._tar, start=1):
            if count > MAX_MEMBERS:
                raise DocumentError(f"{self.path}: more than {MAX_MEMBERS} members")
            name = _clean(info.name)
            if name is not None and info.isreg():
                members[name] = info
        return members

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._members))

    def has(self, name: str) -> bool:
        return name in self._members

    def size(self, name: str) -> int:
        return self._info(name).size

    def _info(self, name: str) -> tarfile.TarInfo:
        info = self._members.get(name)
        if info is None:
            raise DocumentError(f"{self.path}: no member {name!r}")
        return info

    def read(self, name: str, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        info = self._info(name)
        if info.size > limit:
            raise DocumentError(f"{self.path}: {name} is {info.size} bytes, over the {limit}-byte cap")
        return self.open(name).read()

    def open(self, name: str) -> IO[bytes]:
        fh = self._tar.extractfile(self._info(name))
        if fh is None:  # pragma: no cover - regular members always have a file object
            raise DocumentError(f"{self.path}: cannot read {name}")
        return fh

    def info(self) -> dict[str, Any]:
        return {"path": str(self.path), "members": len(self._members)}


def _clean(name: str) -> str | None:
    """A safe relative member name, or ``None`` (absolute, ``..``, empty, NUL)."""
    if not name or "\x00" in name or name.startswith("/"):
        return None
    norm = posixpath.normpath(name)
    if norm in (".", "..") or norm.startswith("../"):
        return None
    return norm
