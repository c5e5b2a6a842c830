"""The ``contents`` of an image manifest: the five kinds of items that put entries in the image.

``files`` (host files or directory copies, relative to the manifest), ``closure`` (ELF programs
with their libraries, resolved by the builder), ``tree`` (a host directory filtered by globs),
``symlink`` and ``dir``. :class:`ImageContentsChecker` validates each item into its dataclass from
:mod:`manifests.image` and declares what it puts at which image path, so that
:meth:`~manifests.image_paths.ImagePathChecker.check_declarations` can report clashes once the
whole document has been read. :mod:`manifests.image_parse` builds the full schema on top of it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from manifests.image import (
    DEBIAN_SYSROOT,
    DEFAULT_DEBIAN_MIRROR,
    ClosureSource,
    ContentItem,
    DebianSource,
    DirSource,
    FileSpec,
    FilesSource,
    SymlinkSource,
    TreeSource,
)
from manifests.image_paths import CONTROL_CHARS, MAX_PATH, Declared, ImagePathChecker
from manifests.source import join_index, join_key

__all__ = ["CONTENT_KINDS", "ImageContentsChecker"]

CONTENT_KINDS = ("files", "closure", "tree", "symlink", "dir", "debian")
_DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*\Z")
_SUITE = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}\Z")
_COMPONENT = re.compile(r"[a-z0-9][a-z0-9/-]{0,63}\Z")


class ImageContentsChecker(ImagePathChecker):
    """An :class:`ImagePathChecker` that also reads the ``contents`` list."""

    def contents(self, d: Mapping[str, Any]) -> tuple[ContentItem, ...]:
        """The ``contents`` list of the top-level mapping ``d``; every item's paths are declared."""
        if "contents" not in d:
            return ()
        items = self.sequence(d["contents"], "contents")
        if items is None:
            return ()
        if not items:
            self.report(
                "contents", "must not be empty", "list what goes into the image: " + ", ".join(CONTENT_KINDS)
            )
            return ()
        out: list[ContentItem] = []
        self._debian_at: str | None = None
        self._debian_users: list[str] = []
        for i, raw in enumerate(items):
            path = join_index("contents", i)
            item = self.mapping(raw, path)
            if item is None:
                continue
            kinds = [k for k in item if k in CONTENT_KINDS]
            if len(kinds) > 1:
                self.report(
                    path,
                    f"has both '{kinds[0]}' and '{kinds[1]}'",
                    "split it into one contents item per kind",
                )
                continue
            if not kinds:
                unknown = [k for k in item if k not in CONTENT_KINDS]
                if unknown:
                    self.keys(item, path, optional=CONTENT_KINDS)
                else:
                    self.report(path, "expected exactly one of: " + ", ".join(CONTENT_KINDS))
                continue
            self.keys(item, path, optional=CONTENT_KINDS)
            kind = kinds[0]
            value = item[kind]
            sub = join_key(path, kind)
            parsed: ContentItem | None
            if kind == "files":
                parsed = self._files(value, sub)
            elif kind == "closure":
                parsed = self._closure(value, sub)
            elif kind == "tree":
                parsed = self._tree(value, sub)
            elif kind == "symlink":
                parsed = self._symlink(value, sub)
            elif kind == "debian":
                parsed = self._debian(value, sub)
            else:
                parsed = self._dir(value, sub)
            if parsed is not None:
                out.append(parsed)
        if self._debian_at is None:
            for where in self._debian_users:
                self.report(where, "no debian source to read from", "add a contents item 'debian: {...}'")
        return tuple(out)

    def _debian(self, value: object, path: str) -> DebianSource | None:
        m = self.mapping(value, path)
        if m is None:
            return None
        self.keys(m, path, required=("suite", "packages"), optional=("mirror", "components", "exclude", "as"))
        if self._debian_at is not None:
            self.report(
                path, f"a second debian source (the first is {self._debian_at})", "merge them into one"
            )
            return None
        self._debian_at = path
        suite = None
        if "suite" in m:
            suite = self.matching(m["suite"], join_key(path, "suite"), _SUITE, "suite", "e.g. bookworm")
        mirror = DEFAULT_DEBIAN_MIRROR
        if "mirror" in m:
            where = join_key(path, "mirror")
            text = self.string(m["mirror"], where)
            if text is not None and (
                not text.startswith(("http://", "https://"))
                or CONTROL_CHARS.search(text)
                or " " in text
                or len(text) > 1024
            ):
                self.report(where, "must be an http:// or https:// URL", f"e.g. {DEFAULT_DEBIAN_MIRROR}")
            elif text is not None:
                mirror = text.rstrip("/")
        components: tuple[str, ...] | None = ("main",)
        if "components" in m:
            components = self._names(m["components"], join_key(path, "components"), _COMPONENT, "component")
            if components is not None and not components:
                self.report(join_key(path, "components"), "must not be empty", "e.g. [main]")
        packages = (
            self._names(m["packages"], join_key(path, "packages"), _DEB_NAME, "package name")
            if "packages" in m
            else None
        )
        if packages is not None and not packages:
            self.report(join_key(path, "packages"), "must not be empty", "list the packages to install")
        exclude: tuple[str, ...] | None = ()
        if "exclude" in m:
            exclude = self._names(m["exclude"], join_key(path, "exclude"), _DEB_NAME, "package name")
        sysroot_only = False
        if "as" in m:
            sysroot_only = self.choice(m["as"], join_key(path, "as"), ["sysroot"]) is not None
        if suite is None or packages is None or not packages or components is None or exclude is None:
            return None
        return DebianSource(
            suite=suite,
            packages=packages,
            mirror=mirror,
            components=components,
            exclude=exclude,
            sysroot_only=sysroot_only,
        )

    def _names(self, value: object, path: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...] | None:
        items = self.sequence(value, path, of=" of strings")
        if items is None:
            return None
        names = self.distinct(
            items,
            path,
            lambda raw, where: self.matching(
                raw, where, pattern, what, "lowercase letters, digits, '+', '-', '.'"
            ),
        )
        return tuple(names) if len(names) == len(items) else None

    def _files(self, value: object, path: str) -> FilesSource | None:
        items = self.sequence(value, path, of=" of {src, dst} mappings")
        if items is None:
            return None
        if not items:
            self.report(path, "must not be empty", "list at least one {src, dst}")
            return None
        specs: list[FileSpec] = []
        for i, raw in enumerate(items):
            spec = self._file_spec(raw, join_index(path, i))
            if spec is not None:
                specs.append(spec)
        return FilesSource(files=tuple(specs))

    def _file_spec(self, raw: object, path: str) -> FileSpec | None:
        m = self.mapping(raw, path)
        if m is None:
            return None
        self.keys(m, path, required=("src", "dst"), optional=("mode", "dirmode", "uid", "gid"))
        src = self.relative_src(m["src"], join_key(path, "src")) if "src" in m else None
        is_dir = src is not None and src.endswith("/")
        dst = None
        dst_path = join_key(path, "dst")
        if "dst" in m:
            dst = self.image_path(m["dst"], dst_path, allow_root=True, keep_slash=True)
        if src is not None and dst is not None:
            if is_dir and not dst.endswith("/"):
                self.report(
                    dst_path,
                    "must end in '/' when src is a directory (ends in '/')",
                    f"write '{dst}/'",
                )
                dst = None
            elif not is_dir and dst.endswith("/"):
                base = posixpath.basename(src.rstrip("/"))
                self.report(dst_path, "ends in '/' but src is a file", f"write the full path: '{dst}{base}'")
                dst = None
        mode = self.mode(m, path, "mode")
        dirmode = self.mode(m, path, "dirmode")
        if dirmode is not None and src is not None and not is_dir:
            self.report(
                join_key(path, "dirmode"),
                "applies only to directory copies",
                "end src in '/' to copy a directory, or remove dirmode",
            )
        uid = self.owner_id(m, path, "uid")
        gid = self.owner_id(m, path, "gid")
        if src is None or dst is None:
            return None
        if is_dir:
            if dst != "/":
                self.declare(dst.rstrip("/"), Declared.DIRECTORY, dst_path)
        else:
            self.declare(dst, Declared.FILE, dst_path)
        return FileSpec(src=src, dst=dst, mode=mode, dirmode=dirmode, uid=uid, gid=gid)

    def _closure(self, value: object, path: str) -> ClosureSource | None:
        m = self.mapping(value, path)
        if m is None:
            return None
        self.keys(m, path, required=("paths",), optional=("sysroot",))
        sysroot = "/"
        if "sysroot" in m:
            if m["sysroot"] == DEBIAN_SYSROOT:
                sysroot = DEBIAN_SYSROOT
                self._debian_users.append(join_key(path, "sysroot"))
            else:
                sysroot = self.host_path(m["sysroot"], join_key(path, "sysroot"), absolute=True) or "/"
        if "paths" not in m:
            return None
        paths_path = join_key(path, "paths")
        items = self.sequence(m["paths"], paths_path, of=" of absolute paths")
        if items is None:
            return None
        if not items:
            self.report(paths_path, "must not be empty", "list the executables to copy with their libraries")
            return None
        paths = self.distinct(items, paths_path, self._closure_path)
        for p, where in paths.items():
            self.declare_closure_path(p, where)
        if len(paths) != len(items):
            return None
        return ClosureSource(paths=tuple(paths), sysroot=sysroot)

    def _closure_path(self, raw: object, where: str) -> str | None:
        if isinstance(raw, str) and raw.endswith("/"):
            self.report(where, "must name a file, not a directory", "use a tree item for directories")
            return None
        return self.image_path(raw, where)

    def _tree(self, value: object, path: str) -> TreeSource | None:
        m = self.mapping(value, path)
        if m is None:
            return None
        self.keys(
            m,
            path,
            required=("src", "dst"),
            optional=("include", "exclude", "mode", "dirmode", "uid", "gid", "sysroot"),
        )
        sysroot = None
        if "sysroot" in m:
            sysroot = self.choice(m["sysroot"], join_key(path, "sysroot"), [DEBIAN_SYSROOT])
            if sysroot is not None:
                self._debian_users.append(join_key(path, "sysroot"))
        if sysroot is not None:
            src = self.image_path(m["src"], join_key(path, "src"), allow_root=True) if "src" in m else None
        else:
            src = self.host_path(m["src"], join_key(path, "src"), absolute=False) if "src" in m else None
        dst_path = join_key(path, "dst")
        dst = self.image_path(m["dst"], dst_path, allow_root=True) if "dst" in m else None
        include = self._globs(m, path, "include")
        exclude = self._globs(m, path, "exclude")
        mode = self.mode(m, path, "mode")
        dirmode = self.mode(m, path, "dirmode")
        uid = self.owner_id(m, path, "uid")
        gid = self.owner_id(m, path, "gid")
        if src is None or dst is None or include is None or exclude is None:
            return None
        if dst != "/":
            self.declare(dst, Declared.DIRECTORY, dst_path)
        return TreeSource(
            src=src,
            dst=dst,
            include=include,
            exclude=exclude,
            mode=mode,
            dirmode=dirmode,
            uid=uid,
            gid=gid,
            sysroot=sysroot,
        )

    def _globs(self, m: Mapping[str, Any], path: str, key: str) -> tuple[str, ...] | None:
        if key not in m:
            return ()
        where = join_key(path, key)
        globs = self.strings(m[key], where)
        if globs is None:
            return None
        ok = True
        for i, g in enumerate(globs):
            if not g or CONTROL_CHARS.search(g):
                what = "empty pattern" if not g else "pattern contains a control character"
                self.report(join_index(where, i), what)
                ok = False
        return globs if ok else None

    def _symlink(self, value: object, path: str) -> SymlinkSource | None:
        m = self.mapping(value, path)
        if m is None:
            return None
        self.keys(m, path, required=("path", "target"))
        link_path = join_key(path, "path")
        link = self.image_path(m["path"], link_path) if "path" in m else None
        target = None
        if "target" in m:
            target_path = join_key(path, "target")
            target = self.string(m["target"], target_path)
            if target is not None:
                if not target:
                    self.report(target_path, "empty target", "name the file the link points to")
                    target = None
                elif CONTROL_CHARS.search(target):
                    self.report(target_path, "contains a control character")
                    target = None
                elif len(target) > MAX_PATH:
                    self.report(target_path, f"longer than {MAX_PATH} characters")
                    target = None
        if link is None or target is None:
            return None
        self.declare(link, Declared.SYMLINK, link_path)
        return SymlinkSource(path=link, target=target)

    def _dir(self, value: object, path: str) -> DirSource | None:
        m = self.mapping(value, path)
        if m is None:
            return None
        self.keys(m, path, required=("path",), optional=("mode", "uid", "gid"))
        dir_path = join_key(path, "path")
        p = self.image_path(m["path"], dir_path) if "path" in m else None
        mode = self.mode(m, path, "mode")
        uid = self.owner_id(m, path, "uid")
        gid = self.owner_id(m, path, "gid")
        if p is None:
            return None
        item = DirSource(path=p, mode=0o755 if mode is None else mode, uid=uid, gid=gid)
        self.declare(p, Declared.DIRECTORY, dir_path, attrs=(item.mode, item.uid, item.gid))
        return item
