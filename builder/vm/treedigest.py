"""The tree digest: one sha256 naming a normalized file tree, the same for its OCI and VM images.

It is the sha256 of the canonical JSON list of every entry, in tree order:
``[path, kind, mode, uid, gid, size, content]`` where ``content`` is a file's ``sha256:`` digest,
a symlink's target or a hard link's target path (directories: ``""``). It depends on nothing but
the tree, so the ``dev.kiln.tree`` annotation of an OCI image and ``treeDigest`` of ``vm.json``
built from the same manifest are equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from builder.errors import SourceError
from builder.tree import Entry, EntryKind
from manifests.canonical import canonical_json
from manifests.digest import Digest

__all__ = ["tree_digest", "ANNOTATION"]

ANNOTATION = "dev.kiln.tree"
_CHUNK = 1 << 20


def _file_digest(entry: Entry) -> str:
    if entry.data is not None:
        return str(Digest.of(entry.data))
    h = hashlib.sha256()
    try:
        with open(str(entry.host_path), "rb") as fh:
            while block := fh.read(_CHUNK):
                h.update(block)
    except OSError as exc:
        raise SourceError(f"{entry.origin}: cannot read {entry.host_path}: {exc.strerror}") from exc
    return f"sha256:{h.hexdigest()}"


def tree_digest(entries: Iterable[Entry], known: Mapping[str, Digest] | None = None) -> Digest:
    """The digest of ``entries``; ``known`` maps file paths to content digests already computed."""
    known = known or {}
    h = hashlib.sha256()
    for e in entries:
        if e.kind is EntryKind.FILE:
            d = known.get(e.path)
            content = str(d) if d is not None else _file_digest(e)
            size = e.size
        else:
            content = e.target or ""
            size = 0
        h.update(canonical_json([e.path, str(e.kind), e.mode, e.uid, e.gid, size, content]))
        h.update(b"\n")
    return Digest(h.hexdigest())
