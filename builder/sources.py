"""Apply an image manifest's ``contents`` (then accounts, writable paths, volumes) into a file tree.

Items are applied in order; each entry records its origin (``contents[2].tree``) so a conflict or a
missing input names the manifest item. Host paths in ``files`` and ``tree`` are relative to the
manifest's directory. Directory walks do not follow symlinks (they are copied as symlinks); device
nodes, fifos and sockets are refused. Files of one ``files``/``tree`` source that share an inode on
the host become hard links in the image, linked to the one that sorts first.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from builder.errors import BuildError, ClosureError, SourceError
from builder.tree import Category, Entry, EntryKind, FileTree, default_mode, normalize_path, sort_key
from manifests.image import (
    DEBIAN_SYSROOT,
    ClosureSource,
    DebianSource,
    DirSource,
    FileSpec,
    FilesSource,
    ImageManifest,
    SymlinkSource,
    TreeSource,
)

if TYPE_CHECKING:
    from builder.debian.prepare import PreparedDebian

__all__ = ["InputRecord", "Assembly", "assemble", "category_for", "compile_glob", "TMP_DIRS"]

TMP_DIRS = frozenset({"/tmp", "/var/tmp"})  # noqa: S108 - image paths, not host temp files
_RUNTIME_PREFIXES = ("/usr/lib", "/usr/share", "/usr/libexec", "/usr/local/lib", "/lib")


@dataclass(frozen=True, slots=True, kw_only=True)
class InputRecord:
    """A host input the build used: ``path`` is relative to the manifest dir for ``files``,
    absolute for ``tree`` and ``closure``."""

    origin: str
    kind: str  # "files" | "tree" | "closure"
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Assembly:
    tree: FileTree
    inputs: tuple[InputRecord, ...]


def category_for(path: str, *, default: Category) -> Category:
    """RUNTIME for library locations (``/usr/lib*``, ``/lib*``, ``/usr/share``...), else ``default``."""
    for prefix in _RUNTIME_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return Category.RUNTIME
        # /lib64, /lib32, /usr/lib64, /usr/libx32 ...
        if prefix in ("/lib", "/usr/lib") and path.startswith(prefix):
            rest = path[len(prefix) :].split("/", 1)[0]
            if rest and rest.replace("x", "").isdigit():
                return Category.RUNTIME
    return default


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A glob over relative POSIX paths: ``**`` crosses ``/``, ``*`` and ``?`` do not, ``[..]`` classes."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern.startswith(("[!", "[^"), i) else i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("(?s:" + "".join(out) + r")\Z")


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    return any(compile_glob(p.strip("/")).match(rel) for p in patterns)


class _Assembler:
    def __init__(self, manifest: ImageManifest, debian: PreparedDebian | None = None) -> None:
        self.m = manifest
        self.base = Path(manifest.base_dir)
        self.tree = FileTree()
        self.inputs: list[InputRecord] = []
        self.debian = debian

    def host(self, src: str) -> Path:
        p = Path(src)
        return p if p.is_absolute() else self.base / p

    def debian_root(self, origin: str) -> Path:
        if self.debian is None:
            raise SourceError(
                f"{origin}: the manifest's debian packages were not prepared",
                hint="build with kiln build (it reads the lockfile beside the manifest)",
            )
        return self.debian.root_for(self.m.platform).path

    def run(self) -> Assembly:
        for i, item in enumerate(self.m.contents):
            where = f"contents[{i}]"
            if isinstance(item, FilesSource):
                for j, spec in enumerate(item.files):
                    self.files(spec, i, f"{where}.files[{j}]")
            elif isinstance(item, TreeSource):
                self.tree_source(item, i, f"{where}.tree")
            elif isinstance(item, ClosureSource):
                self.closure(item, i, f"{where}.closure")
            elif isinstance(item, SymlinkSource):
                path = normalize_path(item.path, what=f"{where}.symlink.path")
                self.tree.add(
                    Entry(
                        path=path,
                        kind=EntryKind.SYMLINK,
                        mode=0o777,
                        target=item.target,
                        category=category_for(path, default=Category.APP),
                        origin=f"{where}.symlink",
                        source_index=i,
                    )
                )
            elif isinstance(item, DebianSource):
                if not item.sysroot_only:
                    self.debian_packages(i, f"{where}.debian")
            elif isinstance(item, DirSource):
                self.tree.add(
                    Entry(
                        path=normalize_path(item.path, what=f"{where}.dir.path"),
                        kind=EntryKind.DIR,
                        mode=item.mode,
                        uid=item.uid,
                        gid=item.gid,
                        category=Category.SYSTEM,
                        origin=f"{where}.dir",
                        source_index=i,
                    )
                )
            else:  # pragma: no cover - the model is a closed union
                raise SourceError(f"{where}: unsupported contents item {type(item).__name__}")
        self.accounts()
        self.runtime_dirs()
        return Assembly(tree=self.tree, inputs=tuple(self.inputs))

    # -- files ----------------------------------------------------------------------------

    def files(self, spec: FileSpec, index: int, origin: str) -> None:
        src = self.host(spec.src)
        sys.audit("kiln.input", str(src), True)  # an input by its stat alone: for kiln.buildrecord
        try:
            st = os.stat(src)
        except OSError as exc:
            raise SourceError(
                f"{src}: {exc.strerror.lower() if exc.strerror else exc}",
                hint=f"paths in 'files' are relative to the manifest directory {self.base}",
                at=f"{origin}.src",
            ) from exc
        self.inputs.append(InputRecord(origin=origin, kind="files", path=spec.src))
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir != spec.src.endswith("/"):
            # The trailing / says which copy is meant (docs/manifest.md); a path that turns out to
            # be the other kind is a mistake to name, not a guess to make.
            raise SourceError(
                f"{src}: is a directory, and src does not end in '/'"
                if is_dir
                else f"{src}: is not a directory, but src ends in '/'",
                hint=f"write src: {spec.src.rstrip('/')}/ to copy the directory's contents"
                if is_dir
                else f"write src: {spec.src.rstrip('/')} to copy the file",
                at=f"{origin}.src",
            )
        if is_dir:
            dst = normalize_path(spec.dst, what=f"{origin}.dst")
            self.walk(
                src,
                dst,
                index=index,
                origin=origin,
                category=Category.APP,
                mode=spec.mode,
                dirmode=spec.dirmode,
                uid=spec.uid,
                gid=spec.gid,
                include=(),
                exclude=(),
            )
            return
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{src}: not a regular file or directory", at=f"{origin}.src")
        dst_text = spec.dst
        if dst_text.endswith("/"):
            dst_text += src.name
        dst = normalize_path(dst_text, what=f"{origin}.dst")
        self.tree.add(
            Entry(
                path=dst,
                kind=EntryKind.FILE,
                mode=default_mode(st.st_mode, explicit=spec.mode),
                uid=spec.uid,
                gid=spec.gid,
                size=st.st_size,
                host_path=src,
                category=Category.APP,
                origin=origin,
                source_index=index,
            )
        )

    # -- tree -----------------------------------------------------------------------------

    def debian_packages(self, index: int, origin: str) -> None:
        """Every path of the extracted packages, with the attributes their .debs gave it."""
        self.debian_root(origin)
        assert self.debian is not None  # noqa: S101 - checked by debian_root
        root = self.debian.root_for(self.m.platform)
        for e in root.entries:
            kind = {"dir": EntryKind.DIR, "symlink": EntryKind.SYMLINK}.get(e.kind, EntryKind.FILE)
            self.tree.add(
                Entry(
                    path=e.path,
                    kind=kind,
                    mode=0o777 if kind is EntryKind.SYMLINK else e.mode,
                    uid=e.uid,
                    gid=e.gid,
                    size=e.size if kind is EntryKind.FILE else 0,
                    host_path=root.path / e.path.lstrip("/") if kind is EntryKind.FILE else None,
                    target=e.target if kind is EntryKind.SYMLINK else None,
                    category=Category.RUNTIME if e.package is not None else Category.SYSTEM,
                    origin=f"{origin}:{e.package}" if e.package is not None else origin,
                    source_index=index,
                )
            )

    def tree_source(self, item: TreeSource, index: int, origin: str) -> None:
        if item.sysroot == DEBIAN_SYSROOT:
            src = self.debian_root(origin) / item.src.lstrip("/")
        else:
            src = self.host(item.src)
        if not src.is_dir():
            what = "not a directory" if src.exists() else "no such directory"
            raise SourceError(
                f"{src}: {what}",
                hint=f"tree sources are directories, relative to the manifest directory {self.base}",
                at=f"{origin}.src",
            )
        self.inputs.append(InputRecord(origin=origin, kind="tree", path=str(src.resolve())))
        dst = normalize_path(item.dst, what=f"{origin}.dst")
        self.walk(
            src,
            dst,
            index=index,
            origin=origin,
            category=category_for(dst, default=Category.APP),
            mode=item.mode,
            dirmode=item.dirmode,
            uid=item.uid,
            gid=item.gid,
            include=item.include,
            exclude=item.exclude,
        )

    def walk(
        self,
        src: Path,
        dst: str,
        *,
        index: int,
        origin: str,
        category: Category,
        mode: int | None,
        dirmode: int | None,
        uid: int,
        gid: int,
        include: Sequence[str],
        exclude: Sequence[str],
    ) -> None:
        """Copy the contents of host directory ``src`` to image directory ``dst``."""
        base = os.fspath(src)
        found = _scan(base, origin, exclude)
        dmode = 0o755 if dirmode is None else dirmode
        wanted_dirs: set[str] = set()
        for rec in found:
            if rec.kind == _DIR:
                if not include:
                    wanted_dirs.add(rec.rel)
            elif not include or _matches(rec.rel, include):
                parent = posixpath.dirname(rec.rel)
                while parent and parent not in wanted_dirs:
                    wanted_dirs.add(parent)
                    parent = posixpath.dirname(parent)
            else:
                rec.kind = _SKIPPED

        prefix = dst.rstrip("/") + "/"

        # The destination itself and every directory on the way carry the item's dirmode/owner.
        if dst != "/":
            self.tree.add(
                self._dir(path=dst, mode=dmode, uid=uid, gid=gid, cat=category, origin=origin, index=index)
            )
        for rel in sorted(wanted_dirs, key=lambda r: sort_key("/" + r)):
            self.tree.add(
                self._dir(
                    path=prefix + rel, mode=dmode, uid=uid, gid=gid, cat=category, origin=origin, index=index
                )
            )
        del wanted_dirs

        shared: dict[tuple[int, int], list[tuple[str, _Found]]] = {}
        for rec in found:
            if rec.kind in (_DIR, _SKIPPED):
                continue
            path = prefix + rec.rel
            host = base + "/" + rec.rel
            if rec.kind == _SYMLINK:
                self.tree.add(
                    Entry(
                        path=path,
                        kind=EntryKind.SYMLINK,
                        mode=0o777,
                        uid=uid,
                        gid=gid,
                        target=os.readlink(host),
                        category=category,
                        origin=origin,
                        source_index=index,
                    )
                )
            elif rec.inode is not None:
                # Files sharing an inode become one file and hard links to it.
                shared.setdefault(rec.inode, []).append((path, rec))
            else:
                self.tree.add(
                    self._file(
                        path=path,
                        rec=rec,
                        host=host,
                        fmode=mode,
                        uid=uid,
                        gid=gid,
                        cat=category,
                        origin=origin,
                        index=index,
                    )
                )
        for members in shared.values():
            members.sort(key=lambda m: sort_key(m[0]))
            leader, rec = members[0]
            self.tree.add(
                self._file(
                    path=leader,
                    rec=rec,
                    host=base + "/" + rec.rel,
                    fmode=mode,
                    uid=uid,
                    gid=gid,
                    cat=category,
                    origin=origin,
                    index=index,
                )
            )
            fmode = default_mode(rec.mode, explicit=mode)
            for path, _ in members[1:]:
                self.tree.add(
                    Entry(
                        path=path,
                        kind=EntryKind.HARDLINK,
                        mode=fmode,
                        uid=uid,
                        gid=gid,
                        target=leader,
                        category=category,
                        origin=origin,
                        source_index=index,
                    )
                )

    @staticmethod
    def _dir(*, path: str, mode: int, uid: int, gid: int, cat: Category, origin: str, index: int) -> Entry:
        return Entry(
            path=path,
            kind=EntryKind.DIR,
            mode=mode,
            uid=uid,
            gid=gid,
            category=cat,
            origin=origin,
            source_index=index,
        )

    @staticmethod
    def _file(
        *,
        path: str,
        rec: _Found,
        host: str,
        fmode: int | None,
        uid: int,
        gid: int,
        cat: Category,
        origin: str,
        index: int,
    ) -> Entry:
        return Entry(
            path=path,
            kind=EntryKind.FILE,
            mode=default_mode(rec.mode, explicit=fmode),
            uid=uid,
            gid=gid,
            size=rec.size,
            host_path=host,
            category=cat,
            origin=origin,
            source_index=index,
        )

    # -- closure --------------------------------------------------------------------------

    def closure(self, item: ClosureSource, index: int, origin: str) -> None:
        from builder.elf import resolve_closure

        debian = item.sysroot == DEBIAN_SYSROOT
        sysroot = self.debian_root(origin) if debian else self.host(item.sysroot)
        try:
            closure = resolve_closure(item.paths, sysroot)
        except ClosureError as exc:
            if exc.at is None:
                # The message names the path it is about first: point at that entry of paths.
                k = next((k for k, p in enumerate(item.paths) if exc.message.startswith(f"{p}:")), None)
                exc.at = f"{origin}.paths[{k}]" if k is not None else f"{origin}.paths"
            raise
        for f in closure.files:
            try:
                st = os.stat(f.host_path)
            except OSError as exc:
                raise SourceError(f"{origin}: {f.host_path}: {exc.strerror}") from exc
            self.inputs.append(InputRecord(origin=origin, kind="closure", path=str(f.host_path)))
            self.tree.add(
                Entry(
                    path=f.image_path,
                    kind=EntryKind.FILE,
                    mode=default_mode(st.st_mode, explicit=None),
                    size=st.st_size,
                    host_path=f.host_path,
                    category=Category.RUNTIME,
                    origin=origin,
                    source_index=index,
                )
            )
        for s in closure.symlinks:
            self.tree.add(
                Entry(
                    path=s.image_path,
                    kind=EntryKind.SYMLINK,
                    mode=0o777,
                    target=s.target,
                    category=Category.RUNTIME,
                    origin=origin,
                    source_index=index,
                )
            )

    # -- generated ------------------------------------------------------------------------

    def accounts(self) -> None:
        acct = self.m.accounts
        if acct is None:
            return
        group = acct.group or acct.user
        passwd = ["root:x:0:0:root:/root:/sbin/nologin"]
        groups = ["root:x:0:"]
        if acct.uid != 0:
            passwd.append(f"{acct.user}:x:{acct.uid}:{acct.gid}::{acct.home}:/sbin/nologin")
        if acct.gid != 0:
            groups.append(f"{group}:x:{acct.gid}:")
        for path, lines in (("/etc/passwd", passwd), ("/etc/group", groups)):
            data = ("\n".join(lines) + "\n").encode()
            self.tree.add(
                Entry(
                    path=path,
                    kind=EntryKind.FILE,
                    mode=0o644,
                    size=len(data),
                    data=data,
                    category=Category.SYSTEM,
                    origin="accounts",
                )
            )

    def runtime_dirs(self) -> None:
        acct = self.m.accounts
        uid, gid = (acct.uid, acct.gid) if acct is not None else (0, 0)
        for field_name, paths in (("writable", self.m.writable), ("volumes", self.m.volumes)):
            for k, raw in enumerate(paths):
                origin = f"{field_name}[{k}]"
                path = normalize_path(raw, what=origin)
                existing = self.tree.get(path)
                if existing is not None and not existing.implicit:
                    if existing.kind is not EntryKind.DIR:
                        raise SourceError(
                            f"{origin}: {path} is a {existing.kind} from {existing.describe()}",
                            hint="writable paths and volumes are directories",
                        )
                    continue
                tmp = field_name == "writable" and path in TMP_DIRS
                self.tree.add(
                    Entry(
                        path=path,
                        kind=EntryKind.DIR,
                        mode=0o1777 if tmp else 0o755,
                        uid=0 if tmp else uid,
                        gid=0 if tmp else gid,
                        category=Category.SYSTEM,
                        origin=origin,
                    )
                )


_DIR, _FILE, _SYMLINK, _SKIPPED = 0, 1, 2, 3


class _Found:
    """One path under a walked directory: what a walk keeps of it until it becomes an entry
    (strings and ints, no ``Path`` or ``stat_result``: 100,000 of them stay small)."""

    __slots__ = ("inode", "kind", "mode", "rel", "size")

    def __init__(self, rel: str, kind: int, mode: int, size: int, inode: tuple[int, int] | None) -> None:
        self.rel = rel  # relative to the walked directory, "/"-separated
        self.kind = kind
        self.mode = mode  # st_mode of a regular file (for its exec bits), else 0
        self.size = size
        self.inode = inode  # (st_dev, st_ino) of a file with other names, else None


def _scan(base: str, origin: str, exclude: Sequence[str]) -> list[_Found]:
    """Every path under host directory ``base`` (symlinks not followed), parents before children
    and siblings by name: an iterative walk on ``os.scandir`` (one ``lstat`` per entry, which
    scandir caches), no recursion, no ``Path`` per entry."""
    found: list[_Found] = []
    stack: list[tuple[str, str]] = [(base, "")]  # (host directory, its path relative to base)
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as it:
                children = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
        except OSError as exc:
            raise SourceError(f"{origin}: cannot list {directory}: {exc.strerror}") from exc
        subdirs: list[tuple[str, str]] = []
        for name, st in children:
            child_rel = f"{rel}/{name}" if rel else name
            if exclude and _matches(child_rel, exclude):
                continue
            m = st.st_mode
            if stat.S_ISDIR(m):
                found.append(_Found(child_rel, _DIR, 0, 0, None))
                subdirs.append((directory + "/" + name, child_rel))
            elif stat.S_ISREG(m):
                inode = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
                found.append(_Found(child_rel, _FILE, m, st.st_size, inode))
            elif stat.S_ISLNK(m):
                found.append(_Found(child_rel, _SYMLINK, 0, 0, None))
            else:
                raise SourceError(
                    f"{origin}: {directory}/{name}: is a {_special_kind(m)}; images hold only files, "
                    "directories and links",
                    # a files entry has no globs: the tree source is the one that can leave it out
                    hint="exclude it with an 'exclude' glob"
                    if ".tree" in origin
                    else "move it out of the directory, or copy the directory with a tree source "
                    "and an 'exclude' glob",
                )
        stack.extend(reversed(subdirs))
    return found


def _special_kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def assemble(manifest: ImageManifest, *, debian: PreparedDebian | None = None) -> Assembly:
    """Build the normalized tree for ``manifest`` (reads host metadata; file bytes are read later).

    ``debian``: the extracted packages of the manifest's ``debian`` source
    (:func:`builder.debian.prepare.prepare`).

    An input that is missing or unusable is reported where the manifest names it: the error keeps
    its type, its text becomes ``FILE:LINE:COL: contents[0].files[1].src: ...`` and its
    ``problems`` hold that one positioned problem (what ``--json`` lists).
    """
    try:
        return _Assembler(manifest, debian).run()
    except BuildError as exc:
        if exc.at is None or getattr(exc, "problems", None):
            raise
        problem = manifest.problem(exc.at, exc.message, exc.hint)
        exc.problems = (problem,)
        exc.message = str(problem)
        exc.hint = None  # now inside the problem's text, as a manifest's own problems carry theirs
        exc.args = (exc.message,)
        raise
