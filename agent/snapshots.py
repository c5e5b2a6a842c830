"""Layer snapshots: every layer unpacked once, keyed by its diff_id; roots composed of them.

A deploy used to unpack every layer of an image again into a root of its own; docker unpacks only
the layers it does not have. Here the content store's layers are unpacked once each into
``STATE/snapshots/<diff_id-hex>`` by the same hardened unpacker (:mod:`agent.unpack`: no-follow
lookups, path caps, the image's work budget, the free-space margin, iterative removal) with two
differences that make a snapshot an overlayfs lower layer on its own:

- an OCI whiteout ``.wh.NAME`` becomes overlayfs' whiteout, a character device 0/0 named ``NAME``
  (unless this same layer has its own ``NAME``: a whiteout only hides lower layers), and an opaque
  marker ``.wh..wh..opq`` becomes the ``trusted.overlay.opaque=y`` attribute of its directory;
- the uncompressed stream is hashed while it is unpacked and must equal the diff_id (the compressed
  digest was verified by the store when the blob arrived, and is checked again in the same pass),
  and the snapshot's **fingerprint is computed in the same pass** from what was written (a model
  of the tree: paths, types, modes, owners, sizes, content digests taken while writing, link
  targets, whiteouts, opaque directories), not by reading the tree back. :func:`snapshot_fingerprint`
  reads a snapshot back for drift detection and yields the same value for an untouched snapshot.

:mod:`agent.compose` composes an instance root of snapshots (a read-only overlayfs).
:meth:`SnapshotStore.gc` removes the snapshots no kept root references, keeping the most recently
used unreferenced ones within a disk budget.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.unpack import (
    _NOFOLLOW_DIR,
    _OPQ,
    Layer,
    _Budget,
    _Refused,
    _translate,
    _Tree,
    _unpack_one,
    _write_all,
    remove_tree,
    walk_tree,
)
from manifests.atomic import atomic_write, fsync_dir
from manifests.bounded import JsonCaps, read_json_object
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError, ParseError

__all__ = ["SNAPSHOTS", "TOP_PREFIX", "Snapshot", "SnapshotStore", "snapshot_fingerprint"]

SNAPSHOTS = "snapshots"
OPAQUE_XATTR = "trusted.overlay.opaque"
_EMPTY = "empty"
_TRASH = ".trash-"
TOP_PREFIX = "m-"
_CHUNK = 1 << 20
_RECORD_CAPS = JsonCaps(max_bytes=1 << 20, max_depth=6)
_DEFAULT_BUDGET = 1 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """One layer unpacked: where, its fingerprint, and what unpacking it counted."""

    diff_id: Digest
    path: Path
    fingerprint: str
    bytes: int  # uncompressed tar bytes
    entries: int


# -- unpacking one layer into a snapshot --------------------------------------------------------


@dataclass(slots=True)
class _Node:
    """What the fingerprint needs of one entry; hard links share one node (one inode)."""

    kind: str  # d f l c
    uid: int
    gid: int
    mode: int = 0
    size: int = 0
    sha: str = ""
    link: str = ""


@dataclass(slots=True)
class _SnapshotTree(_Tree):
    """:class:`agent.unpack._Tree` writing overlayfs whiteouts and modelling what it writes."""

    nodes: dict[tuple[str, ...], _Node] = field(default_factory=dict)
    opaque: set[tuple[str, ...]] = field(default_factory=set)
    written: int = 0
    current: tuple[str, ...] = ()

    def _owner(self, uid: int, gid: int) -> tuple[int, int]:
        return (uid, gid) if self.chown else (os.geteuid(), os.getegid())

    def open_dir(self, parts: tuple[str, ...], *, create: bool) -> int | None:
        fd = _Tree.open_dir(self, parts, create=create)
        if create:
            for i in range(1, len(parts) + 1):
                if parts[:i] not in self.nodes:
                    self.nodes[parts[:i]] = _Node("d", *self._owner(0, 0))
        return fd

    def apply(self, m: Any, content: Any) -> None:
        self.current = tuple(p for p in m.name.split("/") if p not in ("", "."))
        _Tree.apply(self, m, content)

    def _forget(self, parts: tuple[str, ...]) -> None:
        node = self.nodes.pop(parts, None)
        self.opaque.discard(parts)
        if node is not None and node.kind == "d":
            n = len(parts)
            for key in [k for k in self.nodes if len(k) > n and k[:n] == parts]:
                del self.nodes[key]
            self.opaque -= {k for k in self.opaque if len(k) > n and k[:n] == parts}

    def _dir(self, dfd: int, parts: tuple[str, ...], base: str, m: Any) -> None:
        old = self.nodes.get(parts)
        if old is None or old.kind != "d":
            self._forget(parts)
        _Tree._dir(self, dfd, parts, base, m)
        self.nodes[parts] = _Node("d", *self._owner(m.uid, m.gid))

    def _file(self, dfd: int, base: str, m: Any, content: Any) -> None:
        parts = self.current
        if m.size > self.limits.max_file_bytes:
            raise _Refused(f"file of {m.size} bytes exceeds the {self.limits.max_file_bytes}-byte cap")
        self.budget.reserve(m.size, "a file")
        self._clear(dfd, base)
        self._forget(parts)
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd
        )
        h = hashlib.sha256()
        n = 0
        try:
            while chunk := content.read(_CHUNK):
                h.update(chunk)
                _write_all(fd, chunk)
                n += len(chunk)
            if self.chown:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode)
        finally:
            os.close(fd)
        self.written += n
        uid, gid = self._owner(m.uid, m.gid)
        self.nodes[parts] = _Node("f", uid, gid, mode=m.mode & 0o7777, size=n, sha=h.hexdigest())

    def _symlink(self, dfd: int, parent: tuple[str, ...], base: str, m: Any) -> None:
        _Tree._symlink(self, dfd, parent, base, m)
        parts = (*parent, base)
        self._forget(parts)
        self.nodes[parts] = _Node("l", *self._owner(m.uid, m.gid), mode=0o777, link=m.link)

    def _hardlink(self, dfd: int, parts: tuple[str, ...], base: str, m: Any) -> None:
        _Tree._hardlink(self, dfd, parts, base, m)
        target = self.nodes.get(tuple(p for p in m.link.split("/") if p not in ("", ".")))
        if target is None or target.kind != "f":  # never: _Tree checked it is a file of this layer
            raise _Refused(f"hardlink target {m.link!r} is not a file of this layer")
        self._forget(parts)
        self.nodes[parts] = target

    def _whiteout(self, parent: tuple[str, ...], base: str) -> None:
        if base == _OPQ:
            dfd = self.open_dir(parent, create=True)
            assert dfd is not None  # noqa: S101 - create=True never returns None
            try:
                os.setxattr(dfd, OPAQUE_XATTR, b"y")
            finally:
                os.close(dfd)
            self.opaque.add(parent)
            return
        if base.startswith(".wh..wh."):
            return  # other AUFS metadata (.wh..wh.plnk and friends): ignored
        victim = base[4:]
        if victim in ("", ".", ".."):
            raise _Refused(f"whiteout of {victim!r}")
        parts = (*parent, victim)
        if parts in self.layer_paths:
            return  # this layer's own entry: a whiteout only hides lower layers
        dfd = self.open_dir(parent, create=True)
        assert dfd is not None  # noqa: S101 - create=True never returns None
        try:
            self._clear(dfd, victim)
            os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dfd)
        finally:
            os.close(dfd)
        self._forget(parts)
        self.nodes[parts] = _Node("c", *self._owner(os.geteuid(), os.getegid()))
        self.layer_paths.add(parts)

    def fingerprint(self) -> str:
        """The value :func:`snapshot_fingerprint` reads back from the finished tree."""
        h = hashlib.sha256()
        if () in self.opaque:
            h.update(b"R\0opaque\n")
        for parts in sorted(self.nodes):
            node = self.nodes[parts]
            path = b"".join(b"/" + os.fsencode(p) for p in parts)
            if node.kind == "d":
                mode = self.dir_modes.get(parts, 0o755) & 0o7777
                head = b"%s\0%o\0%d\0%d\0" % (path, mode, node.uid, node.gid)
                h.update(b"d\0" + head + (b"opaque" if parts in self.opaque else b"") + b"\n")
            elif node.kind == "f":
                head = b"%s\0%o\0%d\0%d\0" % (path, node.mode, node.uid, node.gid)
                h.update(b"f\0" + head + b"%d\0%s\n" % (node.size, node.sha.encode()))
            elif node.kind == "l":
                head = b"%s\0%o\0%d\0%d\0" % (path, 0o777, node.uid, node.gid)
                h.update(b"l\0" + head + os.fsencode(node.link) + b"\n")
            else:
                head = b"%s\0%o\0%d\0%d\0" % (path, 0, node.uid, node.gid)
                h.update(b"o\0" + head + b"%o\0%d\n" % (stat.S_IFCHR, 0))
        return f"sha256:{h.hexdigest()}"


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def snapshot_fingerprint(path: Path) -> str:
    """Read a snapshot back: the fingerprint its unpack recorded, if nothing in it changed.

    Iterative and no-follow like :func:`agent.unpack.root_fingerprint`, over the same facts plus
    whiteouts (device numbers) and opaque directories.
    """
    h = hashlib.sha256()
    fd = os.open(path, _NOFOLLOW_DIR)
    if _is_opaque(fd):  # never raises: an unreadable attribute is "not opaque"
        h.update(b"R\0opaque\n")
    walk_tree(fd, lambda dir_fd, prefix, name: _snapshot_entry(dir_fd, prefix, name, h))
    return f"sha256:{h.hexdigest()}"


def _snapshot_entry(dfd: int, prefix: bytes, name: str, h: Any) -> int | None:
    path = prefix + b"/" + os.fsencode(name)
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    head = b"%s\0%o\0%d\0%d\0" % (path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    if stat.S_ISDIR(st.st_mode):
        sub = os.open(name, _NOFOLLOW_DIR, dir_fd=dfd)
        h.update(b"d\0" + head + (b"opaque" if _is_opaque(sub) else b"") + b"\n")
        return sub
    if stat.S_ISREG(st.st_mode):
        content = hashlib.sha256()
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        with os.fdopen(fd, "rb") as fh:
            while block := fh.read(_CHUNK):
                content.update(block)
        h.update(b"f\0" + head + b"%d\0%s\n" % (st.st_size, content.hexdigest().encode()))
    elif stat.S_ISLNK(st.st_mode):
        h.update(b"l\0" + head + os.fsencode(os.readlink(name, dir_fd=dfd)) + b"\n")
    else:
        h.update(b"o\0" + head + b"%o\0%d\n" % (stat.S_IFMT(st.st_mode), st.st_rdev))
    return None


# -- the snapshot store ---------------------------------------------------------------------------


class SnapshotStore:
    """``STATE/snapshots``: one directory per layer (``<diff_id-hex>`` and its ``.json`` record),
    the mountpoint layers (``m-<hash>``) and one empty directory.

    ``written`` and ``unpacked`` count what this object unpacked (bytes of file content, layers),
    for tests and the benchmark. ``overlay`` is None until the first mount says whether overlayfs
    works here (False forces the full-copy fallback).
    """

    def __init__(
        self, state_dir: Path, *, overlay: bool | None = None, budget: int = _DEFAULT_BUDGET
    ) -> None:
        self.dir = Path(state_dir) / SNAPSHOTS
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.overlay = overlay
        if any(c in str(self.dir) for c in ",:\\"):
            self.overlay = False  # the overlay mount option cannot name such a path
        self.budget = budget
        self.written = 0
        self.unpacked: list[Digest] = []

    def path(self, name: str) -> Path:
        return self.dir / name

    def get(self, diff_id: Digest) -> Snapshot | None:
        """The snapshot of ``diff_id`` if it is complete (its directory and its record)."""
        final = self.dir / diff_id.hex
        try:
            with open(self.dir / f"{diff_id.hex}.json", "rb") as fh:
                doc = read_json_object(fh.read(4097), what="snapshot record", caps=_RECORD_CAPS)
        except (OSError, ParseError):
            return None
        fp, size, entries = doc.get("fingerprint"), doc.get("bytes"), doc.get("entries")
        if not isinstance(fp, str) or not isinstance(size, int) or not isinstance(entries, int):
            return None
        if not final.is_dir():
            return None
        return Snapshot(diff_id=diff_id, path=final, fingerprint=fp, bytes=size, entries=entries)

    def ensure(self, layer: Layer, *, allow_setuid: bool, budget: _Budget) -> Snapshot:
        """The snapshot of ``layer`` (unpacked now unless present), counted in the image's budget."""
        if layer.diff_id is None:
            raise DocumentError(f"layer {layer.digest}: no diff_id to key its snapshot by")
        have = self.get(layer.diff_id)
        if have is not None:
            with contextlib.suppress(OSError):
                os.utime(have.path)
            budget.entries += have.entries
            budget.total += have.bytes
            if budget.entries > budget.limits.max_entries or budget.total > budget.limits.max_total_bytes:
                _translate(_Refused("the image exceeds its entry or byte cap"), f"layer {layer.digest}")
            return have
        hexd = layer.diff_id.hex
        final = self.dir / hexd
        tmp = self.dir / f"{hexd}.tmp"
        remove_tree(tmp)
        remove_tree(final)
        os.mkdir(tmp, 0o755)
        os.chmod(tmp, 0o755)  # noqa: S103 - the root of an image is world-readable, like any /
        root_fd = os.open(tmp, _NOFOLLOW_DIR)
        budget.space_dir = str(tmp)
        tree = _SnapshotTree(
            root_fd=root_fd,
            allow_setuid=allow_setuid,
            chown=os.geteuid() == 0,
            limits=budget.limits,
            budget=budget,
        )
        entries, total = budget.entries, budget.total
        try:
            _unpack_one(tree, layer, budget)
            tree.finish(())
            fingerprint = tree.fingerprint()
        except BaseException as exc:
            os.close(root_fd)
            root_fd = -1
            remove_tree(tmp)
            _translate(exc, f"layer {layer.digest}")
            raise
        finally:
            if root_fd >= 0:
                os.close(root_fd)
        snap = Snapshot(
            diff_id=layer.diff_id,
            path=final,
            fingerprint=fingerprint,
            bytes=budget.total - total,
            entries=budget.entries - entries,
        )
        os.replace(tmp, final)
        atomic_write(
            self.dir / f"{hexd}.json",
            canonical_json(
                {
                    "diff_id": str(layer.diff_id),
                    "layer": str(layer.digest),
                    "fingerprint": fingerprint,
                    "bytes": snap.bytes,
                    "entries": snap.entries,
                }
            ),
        )
        fsync_dir(self.dir)
        self.written += tree.written
        self.unpacked.append(layer.diff_id)
        return snap

    def empty(self) -> Path:
        path = self.dir / _EMPTY
        path.mkdir(mode=0o755, exist_ok=True)
        return path

    def mountpoint_layer(self, dirs: Sequence[tuple[str, int, int, int]]) -> str:
        """The shared layer holding ``dirs`` (path, mode, uid, gid; parents first); its name."""
        name = TOP_PREFIX + hashlib.sha256(canonical_json([list(d) for d in dirs])).hexdigest()[:32]
        final = self.dir / name
        if final.is_dir():
            return name
        tmp = self.dir / f"{name}.tmp"
        remove_tree(tmp)
        os.mkdir(tmp, 0o755)
        os.chmod(tmp, 0o755)  # noqa: S103 - the root of an image is world-readable, like any /
        try:
            for path, mode, uid, gid in dirs:
                target = tmp / path
                target.mkdir(mode=0o700)
                os.chown(target, uid, gid, follow_symlinks=False)
                os.chmod(target, mode, follow_symlinks=False)
            os.replace(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
        fsync_dir(self.dir)
        return name

    def fingerprint_of(self, name: str, cache: dict[str, str] | None = None) -> str:
        """``name``'s fingerprint read back now ("missing" if it is gone), once per ``cache``."""
        if cache is not None and name in cache:
            return cache[name]
        try:
            fp = snapshot_fingerprint(self.dir / name)
        except OSError:
            fp = "missing"
        if cache is not None:
            cache[name] = fp
        return fp

    def discard_altered(self, names: Iterable[str]) -> tuple[Path, ...]:
        """Set aside the layer snapshots among ``names`` that no longer match their record (drift
        repair unpacks them again from verified blobs) and the mountpoint layers (always made
        again); returns where they went. They are renamed to ``.trash-`` names, not removed:
        instances still running from them keep their files until they are replaced; the caller
        removes them then, or :meth:`gc` does."""
        aside: list[Path] = []
        for name in names:
            if name == _EMPTY:
                continue
            if not name.startswith(TOP_PREFIX):
                snap = self.get(Digest(name))
                if snap is not None and self.fingerprint_of(name) == snap.fingerprint:
                    continue
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{name}.json").unlink()
            target = self.dir / f"{_TRASH}{name}-{secrets.token_hex(4)}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.dir / name, target)
                aside.append(target)
        if aside:
            fsync_dir(self.dir)
        return tuple(aside)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{name}.json").unlink()
        remove_tree(self.dir / name)

    def names(self) -> list[str]:
        with os.scandir(self.dir) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))

    def gc(self, keep: Iterable[str], *, budget: int | None = None) -> tuple[str, ...]:
        """Remove every snapshot not in ``keep`` except the most recently used ones that fit in
        ``budget`` bytes (default: the store's), and every interrupted unpack; returns the names."""
        keep = set(keep) | {_EMPTY}
        limit = self.budget if budget is None else budget
        removed: list[str] = []
        spare: list[tuple[float, str, int]] = []
        for name in self.names():
            if name.endswith(".tmp") or name.startswith(_TRASH):
                remove_tree(self.dir / name)
                removed.append(name)
                continue
            if name in keep:
                continue
            size = 0
            if not name.startswith(TOP_PREFIX):
                try:
                    snap = self.get(Digest(name))
                except DocumentError:
                    snap = None
                if snap is None:
                    self.remove(name)
                    removed.append(name)
                    continue
                size = snap.bytes
            try:
                used = os.stat(self.dir / name).st_mtime  # touched by every composition using it
            except OSError:
                used = 0.0
            spare.append((used, name, size))
        total = 0
        for _used, name, size in sorted(spare, reverse=True):  # most recently used first
            total += size
            if total > limit:
                self.remove(name)
                removed.append(name)
        if removed:
            fsync_dir(self.dir)
        return tuple(removed)
