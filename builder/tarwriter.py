"""Deterministic, streaming tar writer for image layers and archives.

The bytes depend only on the entries and ``mtime``: entries in the order given (callers pass the
tree's parents-first order), numeric uid/gid with empty user and group names, every mtime equal to
``mtime`` (the SOURCE_DATE_EPOCH), no atime/ctime, no device numbers. A PAX extended header appears
only when a field does not fit ustar (long or non-ASCII path or link target, huge size). The end of
the archive is two zero blocks, without padding to a 10 KiB record.

File contents are streamed in 1 MiB chunks, so memory stays flat; the uncompressed stream is hashed
as it is written (the layer's ``diff_id``) and so is each regular file, by sha256 and by the SHA1
that SPDX 2.3 requires of every file in the SBOM (one more pass over bytes already in memory,
cheaper than reading every file again when the SBOM is made). A large file's two hashes run on a
helper thread (:class:`_FileHashing`) while this thread reads on: the reading thread is a big
layer's critical path, and the hashes release the GIL, so they use the core the compressor leaves.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from builder.errors import BuildError, SourceError
from builder.tree import Entry, EntryKind
from manifests.digest import Digest

__all__ = [
    "Sink",
    "FileRecord",
    "TarStats",
    "write_tar",
    "tar_size",
    "header_bytes",
    "check_epoch",
    "BLOCK",
]

BLOCK = 512
_CHUNK = 1 << 20
# Files at least this big are hashed on the helper thread; smaller ones here, where hashing a few
# KiB costs less than handing it over.
_OFFLOAD = 256 << 10
_HASH_QUEUE = 8  # chunks in flight to the helper thread: bounds the memory it can hold
_END = b"\0" * (2 * BLOCK)
_MAX_EPOCH = 8**11 - 1  # largest mtime a ustar field holds without a PAX header


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRecord:
    """A regular file (or hard link to one) in the image: absolute path, content digests, size."""

    path: str
    sha256: Digest
    size: int
    sha1: str  # hex; SPDX 2.3 requires it of every file


@dataclass(frozen=True, slots=True, kw_only=True)
class TarStats:
    diff_id: Digest
    size: int
    entries: int
    files: tuple[FileRecord, ...]


def check_epoch(mtime: int) -> int:
    if isinstance(mtime, bool) or not isinstance(mtime, int) or mtime < 0:
        raise BuildError(f"source date epoch {mtime!r} must be a non-negative integer")
    if mtime > _MAX_EPOCH:
        raise BuildError(f"source date epoch {mtime} is too large (max {_MAX_EPOCH})")
    return mtime


def _tar_name(entry: Entry) -> str:
    name = entry.path.lstrip("/")
    return name + "/" if entry.kind is EntryKind.DIR else name


_TYPES = {
    EntryKind.FILE: b"0",  # tarfile.REGTYPE, DIRTYPE, SYMTYPE, LNKTYPE (a test holds them equal)
    EntryKind.DIR: b"5",
    EntryKind.SYMLINK: b"2",
    EntryKind.HARDLINK: b"1",
}
# After the link name: magic "ustar\0" version "00", empty user and group names, empty device
# numbers and an empty prefix, as tarfile writes them for a PAX-format archive.
_USTAR_TAIL = b"ustar\x0000" + b"\0" * (32 + 32 + 8 + 8 + 155) + b"\0" * 12
_SMALL_ID = 8**7  # uid/gid that fit 7 octal digits
_SMALL_SIZE = 8**11


def header_bytes(entry: Entry, *, mtime: int) -> bytes:
    """The header block(s) for ``entry`` (a PAX header first only if a field needs one).

    The common case (ASCII names and link targets of at most 100 bytes, ordinary ids and sizes) is
    framed here directly, byte for byte what :mod:`tarfile` writes for it (a test holds the two
    together) at a tenth of the cost; anything else goes through :mod:`tarfile`.
    """
    name = _tar_name(entry)
    kind = entry.kind
    if kind is EntryKind.SYMLINK:
        link = entry.target or ""
    elif kind is EntryKind.HARDLINK:
        link = (entry.target or "").lstrip("/")
    else:
        link = ""
    size = entry.size if kind is EntryKind.FILE else 0
    if (
        len(name) <= 100
        and len(link) <= 100
        and name.isascii()
        and link.isascii()
        and 0 <= entry.uid < _SMALL_ID
        and 0 <= entry.gid < _SMALL_ID
        and 0 <= size < _SMALL_SIZE
        and 0 <= mtime < _SMALL_SIZE
    ):
        head = b"%s%s%07o\0%07o\0%07o\0%011o\0%011o\0" % (
            name.encode("ascii"),
            b"\0" * (100 - len(name)),
            entry.mode & 0o7777,
            entry.uid,
            entry.gid,
            size,
            mtime,
        )
        tail = b"%s%s%s%s" % (_TYPES[kind], link.encode("ascii"), b"\0" * (100 - len(link)), _USTAR_TAIL)
        checksum = sum(head) + sum(tail) + 8 * 0x20  # the checksum field counts as eight spaces
        return b"%s%06o\0 %s" % (head, checksum, tail)
    return _tarfile_header(entry, mtime=mtime)


def _tarfile_header(entry: Entry, *, mtime: int) -> bytes:
    import tarfile  # the uncommon headers only: most builds never need it

    info = tarfile.TarInfo(_tar_name(entry))
    info.mode = entry.mode & 0o7777
    info.uid = entry.uid
    info.gid = entry.gid
    info.uname = ""
    info.gname = ""
    info.mtime = mtime
    if entry.kind is EntryKind.FILE:
        info.type = tarfile.REGTYPE
        info.size = entry.size
    elif entry.kind is EntryKind.DIR:
        info.type = tarfile.DIRTYPE
    elif entry.kind is EntryKind.SYMLINK:
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target or ""
    else:
        info.type = tarfile.LNKTYPE
        info.linkname = (entry.target or "").lstrip("/")
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> int:
    return -size % BLOCK


def tar_size(entries: Iterable[Entry], *, mtime: int) -> int:
    """The exact byte size :func:`write_tar` will produce, without reading any file."""
    total = len(_END)
    for e in entries:
        total += len(header_bytes(e, mtime=mtime))
        if e.kind is EntryKind.FILE:
            total += e.size + _padding(e.size)
    return total


class _Hashing:
    def __init__(self, sink: Sink, *, hashing: bool = True) -> None:
        self.sink = sink
        self.h = hashlib.sha256() if hashing else None
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.h is not None:
            self.h.update(data)
        self.size += len(data)
        self.sink.write(data)


def write_tar(
    entries: Iterable[Entry],
    sink: Sink,
    *,
    mtime: int,
    finish_hashed: Callable[[], Digest] | None = None,
) -> TarStats:
    """Write a tar of ``entries`` (in the given order) to ``sink``; returns its digest and stats.

    ``finish_hashed``: the sink hashes the stream itself (on another thread); called once after
    the last write, it finishes the sink and returns the stream's sha256. Without it the stream is
    hashed here.
    """
    check_epoch(mtime)
    out = _Hashing(sink, hashing=finish_hashed is None)
    hashing = _FileHashing()
    records: list[FileRecord | None] = []  # None: filled in once the helper thread is done
    deferred: list[tuple[int, str, _Hashes]] = []  # (index, path, the file's or its leader's hashes)
    try:
        count = _write_entries(entries, out, hashing, records, deferred, mtime=mtime)
    except BaseException:
        hashing.close(quiet=True)  # the error under way is the one to report
        raise
    hashing.close()
    for i, path, hashes in deferred:
        records[i] = hashes.record(path)
    diff_id = finish_hashed() if finish_hashed is not None else Digest(out.h.hexdigest())  # type: ignore[union-attr]
    return TarStats(diff_id=diff_id, size=out.size, entries=count, files=tuple(r for r in records if r))


def _write_entries(
    entries: Iterable[Entry],
    out: _Hashing,
    hashing: _FileHashing,
    records: list[FileRecord | None],
    deferred: list[tuple[int, str, _Hashes]],
    *,
    mtime: int,
) -> int:
    """The entries' headers and contents; each file's record appended to ``records``, or ``None``
    there and its hashes in ``deferred`` while the helper thread works on them. Returns the count."""
    by_path: dict[str, FileRecord | _Hashes] = {}  # for hard links to an earlier file
    count = 0
    for entry in entries:
        out.write(header_bytes(entry, mtime=mtime))
        count += 1
        if entry.kind is EntryKind.FILE:
            hashes = _write_content(entry, out, hashing)
            if hashes.offloaded:
                deferred.append((len(records), entry.path, hashes))
                records.append(None)
                by_path[entry.path] = hashes
            else:  # final now: a small file's hash objects are not kept
                rec = hashes.record(entry.path)
                records.append(rec)
                by_path[entry.path] = rec
        elif entry.kind is EntryKind.HARDLINK:
            leader = by_path.get(entry.target or "")
            if leader is None:
                raise BuildError(
                    f"{entry.path}: hard link to {entry.target}, which is not earlier in the same layer"
                )
            if isinstance(leader, _Hashes):
                deferred.append((len(records), entry.path, leader))
                records.append(None)
            else:
                records.append(
                    FileRecord(path=entry.path, sha256=leader.sha256, size=leader.size, sha1=leader.sha1)
                )
    out.write(_END)
    return count


class _Hashes:
    """One file's sha256 and SHA1, fed in order (here, or on the helper thread when ``offloaded``).
    :meth:`finish` turns them into hex digests and drops the hash objects, so a layer of many
    files keeps two short strings per file, not two hash states."""

    __slots__ = ("hex1", "hex256", "offloaded", "sha1", "sha256", "size")

    def __init__(self, size: int, *, offloaded: bool = False) -> None:
        self.sha256: Any = hashlib.sha256()
        self.sha1: Any = hashlib.sha1(usedforsecurity=False)
        self.size = size
        self.offloaded = offloaded
        self.hex256 = self.hex1 = ""

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.sha1.update(data)

    def finish(self) -> None:
        if self.sha256 is not None:
            self.hex256, self.hex1 = self.sha256.hexdigest(), self.sha1.hexdigest()
            self.sha256 = self.sha1 = None

    def record(self, path: str) -> FileRecord:
        self.finish()
        return FileRecord(path=path, sha256=Digest.trusted(self.hex256), size=self.size, sha1=self.hex1)


class _FileHashing:
    """The helper thread that hashes large files' chunks in the order they were read.

    Started on the first large file; :meth:`close` waits until every chunk handed over is hashed
    (so the digests are final) and stops the thread, also when the tar failed half-way. The
    chunks are bytes the reader does not touch again, and the queue bounds how many wait."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[_Hashes, bytes, bool] | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, work: queue.Queue[tuple[_Hashes, bytes, bool] | None]) -> None:
        try:
            while (item := work.get()) is not None:
                hashes, data, last = item
                hashes.update(data)
                if last:
                    hashes.finish()
        except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread by close()
            self._error = exc
            while work.get() is not None:  # keep the producer from blocking, until close()
                pass

    def update(self, hashes: _Hashes, data: bytes, last: bool) -> None:
        """Hash ``data`` next for ``hashes``; ``last``: the file's final chunk (then finished)."""
        if self._error is not None:
            raise self._error
        if self._queue is None:
            self._queue = queue.Queue(maxsize=_HASH_QUEUE)
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="kiln-file-hash", daemon=True
            )
            self._thread.start()
        self._queue.put((hashes, data, last))

    def close(self, *, quiet: bool = False) -> None:
        """Wait for the chunks handed over, stop the thread; raise what failed on it, unless
        ``quiet`` (another error is already on its way)."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None
        if self._error is not None and not quiet:
            raise self._error


def _open_source(entry: Entry) -> int:
    """A descriptor of ``entry``'s host file (``os.open``: a buffered file object per file cost
    more than reading it, for the small files most trees are made of)."""
    try:
        return os.open(str(entry.host_path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _unreadable(entry, exc) from exc


def _read_source(entry: Entry, fd: int, n: int) -> bytes:
    """Up to ``n`` bytes of the source; only its failures (not the output's) name the source."""
    try:
        return os.read(fd, n)
    except OSError as exc:
        raise _unreadable(entry, exc) from exc


def _unreadable(entry: Entry, exc: OSError) -> SourceError:
    return SourceError(f"{entry.origin}: cannot read {entry.host_path}: {exc.strerror}")


def _write_content(entry: Entry, out: _Hashing, hashing: _FileHashing) -> _Hashes:
    if entry.data is not None:
        hashes = _Hashes(entry.size)
        if len(entry.data) != entry.size:
            raise BuildError(f"{entry.path}: inline data is {len(entry.data)} bytes, not {entry.size}")
        out.write(entry.data)
        hashes.update(entry.data)
    else:
        hashes = _Hashes(entry.size, offloaded=entry.size >= _OFFLOAD)
        done = 0
        fd = _open_source(entry)
        try:
            while done < entry.size and (block := _read_source(entry, fd, min(_CHUNK, entry.size - done))):
                if hashes.offloaded:
                    hashing.update(hashes, block, done + len(block) >= entry.size)
                else:
                    hashes.update(block)
                out.write(block)  # its errors are the output's, not the source's
                done += len(block)
            grew = bool(_read_source(entry, fd, 1))
        finally:
            os.close(fd)
        if done != entry.size or grew:
            raise SourceError(
                f"{entry.origin}: {entry.host_path} changed size while the image was being built",
                hint="do not modify inputs during a build",
            )
    pad = _padding(entry.size)
    if pad:
        out.write(b"\0" * pad)
    return hashes
