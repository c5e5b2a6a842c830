"""A deterministic newc (``070701``) cpio writer, the format the kernel unpacks an initramfs from.

Every header field comes from the entry (mode, uid, gid, size) or from the order of the entries
(inode numbers count from 1); mtime is the build's timestamp, device numbers and check are 0. A
hard-link group shares one inode number and ``nlink``; its data travels with the group's first
member in the archive, later members have size 0 (the kernel's unpacker links them to the first).
The archive ends with ``TRAILER!!!`` and is padded to a multiple of 512 bytes.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Sequence

from builder.errors import BuildError, SourceError
from builder.tarwriter import Sink
from builder.tree import Entry, EntryKind

__all__ = ["write_cpio", "cpio_header", "TRAILER"]

TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20
_MAX = 0xFFFFFFFF


def cpio_header(
    name: str, *, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int
) -> bytes:
    """One newc header plus the NUL-terminated name, padded to 4 bytes."""
    for what, value in (("inode", ino), ("uid", uid), ("gid", gid), ("size", size), ("mtime", mtime)):
        if not 0 <= value <= _MAX:
            raise BuildError(f"{name}: {what} {value} does not fit a newc cpio header")
    raw = name.encode("utf-8", "surrogateescape") + b"\0"
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, 0, 0, len(raw), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = head + raw
    return out + b"\0" * (-len(out) % 4)


def _kind_bits(entry: Entry) -> int:
    if entry.kind is EntryKind.DIR:
        return stat.S_IFDIR
    if entry.kind is EntryKind.SYMLINK:
        return stat.S_IFLNK
    return stat.S_IFREG


def write_cpio(entries: Sequence[Entry] | Iterable[Entry], sink: Sink, *, mtime: int) -> int:
    """Write ``entries`` (parents first, as :meth:`FileTree.entries` orders them) to ``sink``;
    returns the number of bytes written. The root directory is implied (``.``) and written first."""
    entries = list(entries)
    # Hard-link groups: the leader (a FILE) and the HARDLINK entries naming it.
    members: dict[str, int] = {}
    for e in entries:
        if e.kind is EntryKind.HARDLINK:
            members[e.target or ""] = members.get(e.target or "", 1) + 1
    written = 0

    def put(data: bytes) -> None:
        nonlocal written
        sink.write(data)
        written += len(data)

    put(cpio_header(".", ino=1, mode=stat.S_IFDIR | 0o755, uid=0, gid=0, nlink=2, mtime=mtime, size=0))
    by_path = {e.path: e for e in entries if e.kind is not EntryKind.HARDLINK}
    inodes = {e.path: ino for ino, e in enumerate(by_path.values(), start=2)}
    carried: set[str] = set()  # hard-link groups whose data is already in the archive
    for e in entries:
        name = e.path.lstrip("/")
        leader = e
        if e.kind is EntryKind.HARDLINK:
            found = by_path.get(e.target or "")
            if found is None or found.kind is not EntryKind.FILE:
                raise BuildError(f"{e.path}: hard link to {e.target}, which is not a file in the tree")
            leader = found
        ino = inodes[leader.path]
        link = leader.target if leader.kind is EntryKind.SYMLINK else None
        body = (link or "").encode("utf-8", "surrogateescape")
        if leader.kind is EntryKind.FILE:
            nlink = members.get(leader.path, 1)
            first = leader.path not in carried  # the group's first member carries the data
            carried.add(leader.path)
            size = leader.size if first else 0
        else:
            nlink = 2 if leader.kind is EntryKind.DIR else 1
            first, size = False, len(body)
        head = cpio_header(
            name,
            ino=ino,
            mode=_kind_bits(leader) | leader.mode,
            uid=leader.uid,
            gid=leader.gid,
            nlink=nlink,
            mtime=mtime,
            size=size,
        )
        put(head)
        if first:
            _copy(leader, put)
            put(b"\0" * (-leader.size % 4))
        elif body:
            put(body + b"\0" * (-len(body) % 4))
    put(cpio_header(TRAILER, ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, size=0))
    put(b"\0" * (-written % 512))
    return written


def _copy(entry: Entry, put: Callable[[bytes], None]) -> None:
    if entry.data is not None:
        if len(entry.data) != entry.size:
            raise BuildError(f"{entry.path}: inline data is {len(entry.data)} bytes, not {entry.size}")
        put(entry.data)
        return
    done = 0
    try:
        with open(str(entry.host_path), "rb") as fh:
            while done < entry.size and (block := fh.read(min(_CHUNK, entry.size - done))):
                put(block)
                done += len(block)
            grew = bool(fh.read(1))
    except OSError as exc:
        raise SourceError(f"{entry.origin}: cannot read {entry.host_path}: {exc.strerror}") from exc
    if done != entry.size or grew:
        raise SourceError(
            f"{entry.origin}: {entry.host_path} changed size while the image was being built",
            hint="do not modify inputs during a build",
        )
