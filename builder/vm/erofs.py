"""A deterministic EROFS writer in pure Python (uncompressed, no xattrs), readable by Linux >= 5.4.

Format choices (kernel ``fs/erofs/erofs_fs.h``): 4 KiB blocks; the superblock at byte 1024;
``meta_blkaddr`` 0, so a node id is an inode's byte offset / 32; every inode is an *extended*
inode (64 bytes: 32-bit uid/gid, 64-bit size, an mtime); data is ``FLAT_INLINE`` when the tail
(size % 4096) fits in the inode's metadata block after the inode, ``FLAT_PLAIN`` otherwise. Full
data blocks follow the metadata area in tree order. Directories hold ``.``, ``..`` and their
children sorted by name bytes, packed into blocks of 12-byte dirents followed by the names.

Everything comes from the tree: owners and modes from the entries, every time is ``mtime``, the
UUID is given by the caller (derived from content), inode numbers count in tree order. ADR 0014
explains why this writer instead of ``mkfs.erofs``.
"""

from __future__ import annotations

import posixpath
import stat
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import BinaryIO

from builder.errors import BuildError, SourceError
from builder.tree import Entry, EntryKind

__all__ = ["write_erofs", "BLOCK", "MAGIC"]

BLOCK = 4096
MAGIC = 0xE0F5E1E2
_SB_OFFSET = 1024
_INODE = 64  # extended inode
_SLOT = 32
_FIRST_INODE = _SB_OFFSET + 128  # nid 36, as mkfs.erofs places the root
_DIRENT = 12
_FLAT_PLAIN = 0
_FLAT_INLINE = 2
_FT = {EntryKind.FILE: 1, EntryKind.DIR: 2, EntryKind.SYMLINK: 7}
_CHUNK = 1 << 20
_MAX_NAME = 255  # EROFS_NAME_LEN


@dataclass(slots=True)
class _Node:
    entry: Entry | None  # None: the root directory
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    size: int = 0
    nlink: int = 1
    ino: int = 0
    nid: int = 0
    layout: int = _FLAT_PLAIN
    blkaddr: int = 0
    inline: bytes = b""
    dir_body: bytearray | None = None
    children: list[tuple[bytes, _Node]] = field(default_factory=list)
    parent: _Node | None = None
    dirent_slots: list[tuple[int, _Node]] = field(default_factory=list)  # (offset in body, target)

    @property
    def full_blocks(self) -> int:
        if self.layout == _FLAT_INLINE:
            return self.size // BLOCK
        return -(-self.size // BLOCK)


def _dir_body(node: _Node) -> None:
    """Lay out a directory's dirents (node ids are patched in later)."""
    items = sorted([(b".", node), (b"..", node.parent or node), *node.children], key=lambda x: x[0])
    body = bytearray()
    slots: list[tuple[int, _Node]] = []
    i = 0
    while i < len(items):
        n = 0
        used = 0
        while i + n < len(items) and (n + 1) * _DIRENT + used + len(items[i + n][0]) <= BLOCK:
            used += len(items[i + n][0])
            n += 1
        if n == 0:
            raise BuildError(f"a file name is too long for EROFS: {items[i][0]!r}")
        start = len(body)
        nameoff = n * _DIRENT
        names = bytearray()
        for k in range(n):
            name, target = items[i + k]
            slots.append((start + k * _DIRENT, target))
            body += struct.pack("<QHBB", 0, nameoff + len(names), _FT[target.kind], 0)
            names += name
        body += names
        i += n
        if i < len(items):
            body += b"\0" * (BLOCK - (len(body) - start))
    node.dir_body = body
    node.dirent_slots = slots
    node.size = len(body)


def write_erofs(entries: list[Entry] | tuple[Entry, ...], out: BinaryIO, *, mtime: int, uuid: str) -> int:
    """Write an EROFS image of ``entries`` (parents first) to ``out``; returns its size in bytes."""
    root = _Node(entry=None, kind=EntryKind.DIR, mode=0o755, uid=0, gid=0, nlink=2)
    nodes: list[_Node] = [root]
    by_path: dict[str, _Node] = {"/": root}
    links: list[tuple[_Node, bytes, Entry]] = []
    for e in entries:
        parent = by_path.get(posixpath.dirname(e.path))
        if parent is None or parent.kind is not EntryKind.DIR:
            raise BuildError(f"{e.path}: its parent directory is not in the tree before it")
        name = posixpath.basename(e.path).encode("utf-8", "surrogateescape")
        if len(name) > _MAX_NAME:
            raise BuildError(f"{e.path}: a file name longer than {_MAX_NAME} bytes does not fit EROFS")
        if e.kind is EntryKind.HARDLINK:
            links.append((parent, name, e))
            continue
        node = _Node(entry=e, kind=e.kind, mode=e.mode, uid=e.uid, gid=e.gid)
        if e.kind is EntryKind.FILE:
            node.size = e.size
        elif e.kind is EntryKind.SYMLINK:
            node.inline = (e.target or "").encode("utf-8", "surrogateescape")
            node.size = len(node.inline)
        else:
            node.nlink = 2
            node.parent = parent
            parent.nlink += 1
        parent.children.append((name, node))
        by_path[e.path] = node
        nodes.append(node)
    for parent, name, e in links:
        leader = by_path.get(e.target or "")
        if leader is None or leader.kind is not EntryKind.FILE:
            raise BuildError(f"{e.path}: hard link to {e.target}, which is not a file in the tree")
        leader.nlink += 1
        parent.children.append((name, leader))
    for node in nodes:
        if node.kind is EntryKind.DIR:
            _dir_body(node)

    # Metadata area: inodes (with their inline tails) from nid 36 on.
    pos = _FIRST_INODE
    for ino, node in enumerate(nodes, start=1):
        node.ino = ino
        tail = node.size % BLOCK
        node.layout = _FLAT_INLINE if 0 < tail <= BLOCK - _INODE else _FLAT_PLAIN
        need = _INODE + (tail if node.layout == _FLAT_INLINE else 0)
        if pos % BLOCK + need > BLOCK:
            pos += -pos % BLOCK
        node.nid = pos // _SLOT
        pos += need
        pos += -pos % _SLOT
    meta_blocks = -(-pos // BLOCK)
    blk = meta_blocks
    for node in nodes:
        if node.full_blocks:
            node.blkaddr = blk
            blk += node.full_blocks
    total_blocks = blk

    # Directory bodies now know every node id.
    for node in nodes:
        if node.dir_body is not None:
            for offset, target in node.dirent_slots:
                struct.pack_into("<Q", node.dir_body, offset, target.nid)

    meta = bytearray(meta_blocks * BLOCK)
    struct.pack_into(
        "<IIIBBHQQIIII16s16sI",
        meta,
        _SB_OFFSET,
        MAGIC,
        0,  # checksum (feature SB_CHKSUM not set)
        0,  # feature_compat
        12,  # blkszbits
        0,  # sb_extslots
        root.nid,
        len(nodes),
        mtime,
        0,
        total_blocks,
        0,  # meta_blkaddr
        0,  # xattr_blkaddr
        uuidlib.UUID(uuid).bytes,
        b"",
        0,  # feature_incompat
    )
    for node in nodes:
        i_format = 1 | (node.layout << 1)
        kind_bits = {
            EntryKind.FILE: stat.S_IFREG,
            EntryKind.DIR: stat.S_IFDIR,
            EntryKind.SYMLINK: stat.S_IFLNK,
        }
        off = node.nid * _SLOT
        struct.pack_into(
            "<HHHHQIIIIQII16x",
            meta,
            off,
            i_format,
            0,  # xattr_icount
            kind_bits[node.kind] | node.mode,
            0,
            node.size,
            node.blkaddr,
            node.ino,
            node.uid,
            node.gid,
            mtime,
            0,
            node.nlink,
        )
        if node.layout == _FLAT_INLINE:
            tail_bytes = _tail(node)
            meta[off + _INODE : off + _INODE + len(tail_bytes)] = tail_bytes
    out.write(meta)
    written = len(meta)
    for node in nodes:
        if node.full_blocks:
            written += _write_blocks(node, out)
    if written != total_blocks * BLOCK:  # pragma: no cover - an internal inconsistency
        raise BuildError(f"erofs: wrote {written} bytes, planned {total_blocks * BLOCK}")
    return written


def _content(node: _Node) -> bytes | None:
    if node.dir_body is not None:
        return bytes(node.dir_body)
    if node.kind is EntryKind.SYMLINK:
        return node.inline
    return node.entry.data if node.entry is not None else None


def _tail(node: _Node) -> bytes:
    start = (node.size // BLOCK) * BLOCK
    data = _content(node)
    if data is not None:
        return data[start:]
    return _read_host(node, start, node.size - start)


def _read_host(node: _Node, offset: int, length: int) -> bytes:
    if node.entry is None:  # pragma: no cover - the root directory has a body
        raise BuildError("erofs: the root directory has no host file")
    try:
        with open(str(node.entry.host_path), "rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
    except OSError as exc:
        raise SourceError(f"{node.entry.origin}: cannot read {node.entry.host_path}: {exc.strerror}") from exc
    if len(data) != length:
        raise SourceError(
            f"{node.entry.origin}: {node.entry.host_path} changed size while the image was being built",
            hint="do not modify inputs during a build",
        )
    return data


def _write_blocks(node: _Node, out: BinaryIO) -> int:
    length = node.full_blocks * BLOCK
    want = min(length, node.size)
    data = _content(node)
    if data is not None:
        piece = data[:want]
        out.write(piece + b"\0" * (length - len(piece)))
        return length
    if node.entry is None:  # pragma: no cover - the root directory has a body
        raise BuildError("erofs: the root directory has no host file")
    done = 0
    try:
        with open(str(node.entry.host_path), "rb") as fh:
            while done < want and (block := fh.read(min(_CHUNK, want - done))):
                out.write(block)
                done += len(block)
    except OSError as exc:
        raise SourceError(f"{node.entry.origin}: cannot read {node.entry.host_path}: {exc.strerror}") from exc
    if done != want:
        raise SourceError(
            f"{node.entry.origin}: {node.entry.host_path} changed size while the image was being built",
            hint="do not modify inputs during a build",
        )
    out.write(b"\0" * (length - done))
    return length
