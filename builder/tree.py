"""The normalized file tree an image is assembled into, before it becomes layers.

Every path is absolute POSIX, normalized, with parents created implicitly (0755, root:root) and
listed before their children. Each entry remembers the contents item that produced it
(``origin``, e.g. ``contents[2].tree``) and a :class:`Category` used to plan layers.

Adding a path twice is fine when both claims agree on type, content and attributes; otherwise a
:class:`~builder.errors.TreeConflictError` names both origins. A path beneath a file or a symlink
is a conflict as well. An implicit parent directory yields to an explicit directory entry.

This module does no I/O except hashing host files to compare two claims on the same path.
"""

from __future__ import annotations

import enum
import hashlib
import posixpath
from dataclasses import dataclass, replace
from pathlib import Path

from builder.errors import SourceError, TreeConflictError

__all__ = [
    "EntryKind",
    "Category",
    "Entry",
    "FileTree",
    "normalize_path",
    "default_mode",
    "sort_key",
    "IMPLICIT",
]

IMPLICIT = "implicit parent"
_PERM_MASK = 0o7777


class EntryKind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"

    @property
    def letter(self) -> str:
        return {"file": "-", "dir": "d", "symlink": "l", "hardlink": "h"}[self.value]


class Category(enum.StrEnum):
    """What an entry is, for layer planning; declared most-stable first."""

    SYSTEM = "system"  # accounts, generated empty directories, small /etc files
    RUNTIME = "runtime"  # interpreters and shared libraries: ELF closures, /usr/lib, /lib*, /usr/share
    APP = "app"  # the application's own files


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One path in the image.

    A FILE has either ``host_path`` (copied at write time) or ``data`` (inline bytes), and ``size``.
    A SYMLINK's ``target`` is the link text; a HARDLINK's ``target`` is the absolute image path
    of the file it links to (that file sorts earlier). ``mode`` is permission bits only (07777).
    """

    path: str
    kind: EntryKind
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    host_path: str | Path | None = None  # a str from directory walks: smaller than a Path
    data: bytes | None = None
    target: str | None = None
    category: Category = Category.APP
    origin: str = "kiln"
    source_index: int = -1
    implicit: bool = False  # a parent directory created because something lives beneath it

    def describe(self) -> str:
        """The origin, with the host path when there is one (for conflict messages)."""
        if self.host_path is not None:
            return f"{self.origin} ({self.host_path})"
        return self.origin


def normalize_path(path: str, *, what: str = "path") -> str:
    """An absolute, normalized POSIX path; refuses NUL, ``..`` components and the empty path."""
    if not path or "\x00" in path:
        raise SourceError(f"{what}: invalid image path {path!r}")
    if not path.startswith("/"):
        path = "/" + path
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceError(f"{what}: image path {path!r} contains '..'", hint="write the path without '..'")
    return "/" + "/".join(parts)


def sort_key(path: str) -> str:
    """Order by path components: parents before children, siblings by code point.

    The key is the path with each ``/`` made NUL, which sorts below every character a path
    component can hold (normalized paths have no NUL), so comparing keys compares components in
    turn; one string per path instead of a tuple of its components (100,000 paths sort in a
    fraction of the memory)."""
    return path.replace("/", "\x00")


def default_mode(host_mode: int, *, explicit: int | None) -> int:
    """The mode an image file gets: the manifest's, else 0755 if the host file is executable, else 0644."""
    if explicit is not None:
        return explicit & _PERM_MASK
    return 0o755 if host_mode & 0o111 else 0o644


class FileTree:
    """A mutable builder of a normalized tree; :meth:`entries` is the deterministic result."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._digests: dict[str, str] = {}
        self._sorted: tuple[Entry, ...] | None = None  # entries(), until the next add()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path in self._entries

    def get(self, path: str) -> Entry | None:
        return self._entries.get(normalize_path(path))

    def entries(self) -> tuple[Entry, ...]:
        """Every entry, sorted parents-first by path components (sorted once, until the next add)."""
        if self._sorted is None:
            self._sorted = tuple(self._entries[p] for p in sorted(self._entries, key=sort_key))
        return self._sorted

    def add(self, entry: Entry) -> Entry:
        """Add ``entry`` (its path normalized), creating parents; returns the entry as stored."""
        self._sorted = None
        path = normalize_path(entry.path, what=entry.origin)
        if path == "/":
            raise SourceError(f"{entry.origin}: cannot replace the image root '/'")
        if path != entry.path or entry.mode & ~_PERM_MASK:
            entry = replace(entry, path=path, mode=entry.mode & _PERM_MASK)
        path = entry.path  # one string per path for the key and the entry, not two equal ones
        if entry.kind is EntryKind.FILE and (entry.host_path is None) == (entry.data is None):
            raise ValueError("a file entry needs exactly one of host_path and data")
        if entry.kind in (EntryKind.SYMLINK, EntryKind.HARDLINK) and not entry.target:
            raise SourceError(f"{entry.origin}: {path}: a link needs a target")
        if entry.kind is EntryKind.HARDLINK:
            entry = replace(entry, target=normalize_path(entry.target or "", what=entry.origin))
        self._ensure_parents(path, entry)
        existing = self._entries.get(path)
        if existing is None:
            self._entries[path] = entry
            return entry
        if existing.kind is EntryKind.DIR and entry.kind is EntryKind.DIR:
            if existing.implicit:
                self._entries[path] = entry
                return entry
            if entry.implicit:
                return existing
        self._check_same(existing, entry)
        return existing

    def _ensure_parents(self, path: str, child: Entry) -> None:
        parent = posixpath.dirname(path)
        chain: list[str] = []
        while parent != "/":
            known = self._entries.get(parent)
            if known is not None and known.kind is EntryKind.DIR:
                break  # a directory in the tree already has all of its parents
            chain.append(parent)
            parent = posixpath.dirname(parent)
        for p in reversed(chain):
            existing = self._entries.get(p)
            if existing is None:
                self._entries[p] = Entry(
                    path=p,
                    kind=EntryKind.DIR,
                    mode=0o755,
                    category=child.category,
                    origin=IMPLICIT,
                    implicit=True,
                )
            elif existing.kind is not EntryKind.DIR:
                raise TreeConflictError(
                    f"{child.path}: {child.describe()} puts a path beneath the {existing.kind} {p} "
                    f"from {existing.describe()}",
                    hint="a path cannot live under a file or a symlink; change one destination",
                )

    def _check_same(self, a: Entry, b: Entry) -> None:
        diffs: list[str] = []
        if a.kind is not b.kind:
            diffs.append(f"type {a.kind} vs {b.kind}")
        else:
            if a.mode != b.mode:
                diffs.append(f"mode {a.mode:04o} vs {b.mode:04o}")
            if (a.uid, a.gid) != (b.uid, b.gid):
                diffs.append(f"owner {a.uid}:{a.gid} vs {b.uid}:{b.gid}")
            if a.target != b.target:
                diffs.append(f"target {a.target!r} vs {b.target!r}")
            if a.kind is EntryKind.FILE and (a.size != b.size or self._digest(a) != self._digest(b)):
                diffs.append("content")
        if diffs:
            if b.kind is EntryKind.DIR and a.kind is EntryKind.DIR:
                hint = "give both directory claims the same mode and owner"
            else:
                hint = "remove one of the two, or make them identical"
            raise TreeConflictError(
                f"{a.path}: claimed by {a.describe()} and by {b.describe()} with different "
                f"{', '.join(diffs)}",
                hint=hint,
            )

    def _digest(self, entry: Entry) -> str:
        if entry.data is not None:
            return hashlib.sha256(entry.data).hexdigest()
        host = str(entry.host_path)
        cached = self._digests.get(host)
        if cached is None:
            h = hashlib.sha256()
            try:
                with open(host, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
            except OSError as exc:
                raise SourceError(f"{entry.origin}: cannot read {host}: {exc.strerror}") from exc
            cached = self._digests[host] = h.hexdigest()
        return cached
