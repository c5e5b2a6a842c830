"""The content-addressed build cache: compressed layers keyed by what they compress.

A key is (diff_id, compression, library+version, level): the same uncompressed layer compressed by
the same library version at the same level always gives the same bytes, so the result can be reused.
Layout under the cache root::

    blobs/sha256/<hex>          compressed layer blobs, named by their digest
    layers/<key-hash>.json      {"key": {...}, "digest": "sha256:...", "size": N}
    stat/<stat-key>.json        {"diff_id", "tar_size", "entries", "files": [[path, sha256, size, sha1]...]}
    builds/<build-key>.json     a whole build's result: its index entry, config, manifest, SBOM and
                                provenance blobs (kept in blobs/ too), layers and files

The ``stat/`` entries let an unchanged rebuild skip reading its inputs at all, as git's index does:
a stat key hashes every entry's metadata and, for host files, their device, inode, size, mtime and
ctime (any write to a file changes its ctime, which no user can set). A hit names the layer's
diff_id and per-file digests; the blob itself is still re-hashed when it is linked out.

Entries and blobs are written atomically. A hit is only used after the blob is re-hashed while it
is copied out; a blob that does not match (corrupt, truncated, edited) is evicted, and the caller
rebuilds the layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.jsonstream import json_string, marker, write_canonical
from builder.tarwriter import FileRecord
from manifests.atomic import atomic_write, atomic_writer
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError, KilnError, VerificationError
from manifests.layout import OCILayout
from manifests.oci import parse_json_object

__all__ = ["CacheKey", "CacheEntry", "StatEntry", "BuildCache"]

_MAX_ENTRY_BYTES = 4096
_MAX_STAT_ENTRY_BYTES = 64 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheKey:
    diff_id: Digest
    compression: str
    library: str
    level: int

    def to_dict(self) -> dict[str, object]:
        return {
            "diff_id": str(self.diff_id),
            "compression": self.compression,
            "library": self.library,
            "level": self.level,
        }

    @property
    def id(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheEntry:
    key: CacheKey
    digest: Digest
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StatEntry:
    """What a layer's tar was, for inputs with a given stat identity."""

    diff_id: Digest
    tar_size: int
    entries: int
    files: Sequence[FileRecord]  # path, sha256, size, sha1 (for the SBOM)


class BuildCache:
    """A cache directory (created on first store). Safe to share between sequential builds."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _entry_path(self, key: CacheKey) -> Path:
        return self.root / "layers" / f"{key.id}.json"

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / "sha256" / digest.hex

    def lookup(self, key: CacheKey) -> CacheEntry | None:
        """The recorded entry for ``key`` if it is well-formed and its blob has the right size."""
        path = self._entry_path(key)
        try:
            with open(path, "rb") as fh:
                data = fh.read(_MAX_ENTRY_BYTES + 1)
            doc = parse_json_object(data, what=str(path), limit=_MAX_ENTRY_BYTES)
            if doc.get("key") != key.to_dict():
                raise DocumentError(f"{path}: key mismatch")
            size = doc.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise DocumentError(f"{path}: bad size")
            digest = Digest.parse(str(doc.get("digest")))
            if self.blob_path(digest).stat().st_size != size:
                raise DocumentError(f"{path}: blob size differs")
        except FileNotFoundError:
            return None
        except (OSError, KilnError):
            self.evict(key)
            return None
        return CacheEntry(key=key, digest=digest, size=size)

    def fetch(self, key: CacheKey, layout: OCILayout) -> CacheEntry | None:
        """Link (or copy) a hit into ``layout`` and re-hash it there; ``None`` on a miss or corruption."""
        entry = self.lookup(key)
        if entry is None:
            return None
        try:
            layout.link_blob(self.blob_path(entry.digest), entry.digest, size=entry.size)
        except (OSError, VerificationError):
            self.evict(key)
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(entry.digest).unlink()  # corrupt: never link it again
            return None
        return entry

    def store(self, key: CacheKey, blob: Path, *, digest: Digest, size: int) -> CacheEntry:
        """Record ``blob`` (already verified as ``digest``) under ``key``: linked, or copied."""
        self.store_blob_file(blob, digest=digest, size=size)
        (self.root / "layers").mkdir(parents=True, exist_ok=True)
        entry = CacheEntry(key=key, digest=digest, size=size)
        doc = {"key": key.to_dict(), "digest": str(digest), "size": size}
        atomic_write(self._entry_path(key), canonical_json(doc), durable=False)
        return entry

    def has_layers(self) -> bool:
        """Whether any layer is cached at all (if not, looking a layer up by content is pointless)."""
        try:
            with os.scandir(self.root / "layers") as it:
                return any(e.name.endswith(".json") for e in it)
        except OSError:
            return False

    def _stat_path(self, stat_key: str) -> Path:
        return self.root / "stat" / f"{stat_key}.json"

    def lookup_stat(self, stat_key: str) -> StatEntry | None:
        path = self._stat_path(stat_key)
        try:
            with open(path, "rb") as fh:
                data = fh.read(_MAX_STAT_ENTRY_BYTES + 1)
            doc = parse_json_object(data, what=str(path), limit=_MAX_STAT_ENTRY_BYTES)
            files = doc.get("files")
            tar_size, entries = doc.get("tar_size"), doc.get("entries")
            if not isinstance(files, list) or not all(
                isinstance(f, list)
                and len(f) == 4  # an entry from before SHA1 was kept is a miss, and is replaced
                and isinstance(f[0], str)
                and isinstance(f[2], int)
                and isinstance(f[3], str)
                for f in files
            ):
                raise DocumentError(f"{path}: bad files")
            if not isinstance(tar_size, int) or not isinstance(entries, int):
                raise DocumentError(f"{path}: bad sizes")
            return StatEntry(
                diff_id=Digest.parse(str(doc.get("diff_id"))),
                tar_size=tar_size,
                entries=entries,
                files=tuple(
                    FileRecord(path=f[0], sha256=Digest.parse(str(f[1])), size=f[2], sha1=f[3]) for f in files
                ),
            )
        except FileNotFoundError:
            return None
        except (OSError, KilnError):
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def store_stat(self, stat_key: str, entry: StatEntry) -> None:
        files = marker("files")
        doc = {
            "diff_id": str(entry.diff_id),
            "tar_size": entry.tar_size,
            "entries": entry.entries,
            "files": files,
        }
        (self.root / "stat").mkdir(parents=True, exist_ok=True)
        with atomic_writer(self._stat_path(stat_key), durable=False) as fh:
            write_canonical(fh, doc, {files: _file_rows(entry.files)})

    def store_blob_file(self, blob: Path, *, digest: Digest, size: int, link: bool = True) -> None:
        """Keep the file ``blob`` (already verified as ``digest``) by its digest: hard-linked
        (if ``link`` and possible), else copied; never read into memory (an SBOM of 100,000 files
        is tens of MB). A copy keeps the cache's blob apart from the output's."""
        dest = self.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and dest.stat().st_size == size:
            return
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".store-", suffix=".tmp")
        os.close(fd)
        try:
            if not link or not _hard_link(blob, tmp):
                shutil.copyfile(blob, tmp)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _build_path(self, build_key: str) -> Path:
        return self.root / "builds" / f"{build_key}.json"

    def lookup_build(self, build_key: str) -> dict[str, Any] | None:
        """A whole build's recorded result, or ``None`` (missing or unreadable: then it is removed)."""
        path = self._build_path(build_key)
        try:
            with open(path, "rb") as fh:
                data = fh.read(_MAX_STAT_ENTRY_BYTES + 1)
            return parse_json_object(data, what=str(path), limit=_MAX_STAT_ENTRY_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, KilnError):
            self.forget_build(build_key)
            return None

    def store_build(self, build_key: str, record: dict[str, Any], *, files: Sequence[FileRecord]) -> None:
        """Record a build: ``record`` with its ``files`` under the key ``"files"`` (streamed: an
        image of 100,000 files makes a record of ~15 MB)."""
        rows = marker("files")
        (self.root / "builds").mkdir(parents=True, exist_ok=True)
        with atomic_writer(self._build_path(build_key), durable=False) as fh:
            write_canonical(fh, {**record, "files": rows}, {rows: _file_rows(files)})

    def forget_build(self, build_key: str) -> None:
        with contextlib.suppress(OSError):
            self._build_path(build_key).unlink()

    def evict(self, key: CacheKey) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._entry_path(key).unlink()


def _hard_link(source: Path, tmp: str) -> bool:
    """Replace the placeholder ``tmp`` with a hard link to ``source``; ``False`` if not possible."""
    try:
        os.unlink(tmp)
        os.link(source, tmp)
    except OSError:
        return False
    return True


def _file_rows(files: Sequence[FileRecord]) -> Iterator[bytes]:
    """``[path, "sha256:...", size, sha1]`` per file, as canonical JSON."""
    for f in files:
        yield b'[%s,"sha256:%s",%d,%s]' % (
            json_string(f.path),
            f.sha256.hex.encode(),
            f.size,
            json_string(f.sha1),
        )
