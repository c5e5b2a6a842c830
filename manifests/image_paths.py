"""Paths in an image manifest: how they are written, and what may be declared at each one.

:class:`ImagePathChecker` is the :class:`~manifests.fields.FieldChecker` that the image manifest schema
(:mod:`manifests.image_contents`, :mod:`manifests.image_parse`) is built on. It adds three things:

- Path rules. Image paths (``dst``, ``path``, ``workdir``, ``writable``...) are absolute, have no
  ``..``, no control characters, no surrounding whitespace and at most :data:`MAX_PATH`
  characters; they lose ``//`` and ``/./`` (a ``files`` directory copy keeps its trailing ``/``).
  Host paths (``files`` ``src``, ``tree`` ``src``, ``sysroot``) follow the same text rules but may
  be relative to the manifest's directory and may contain ``..``.
- Declarations. Every contents item declares what it puts where (a file, a directory or a symlink).
  Once the whole document is read, :meth:`ImagePathChecker.check_declarations` reports two
  different kinds at one path, one destination declared twice (closures may share files), a
  directory declared again with other attributes, an entry under a file or a symlink, a ``workdir``
  that is a file, and ``writable``/``volumes`` paths that are not directories or are in both lists.
- The attributes of an entry: ``mode``/``dirmode`` as quoted octal strings (an unquoted number is
  refused as ambiguous: YAML 1.1 reads ``0644`` as octal, ``644`` as decimal) and numeric
  ``uid``/``gid`` from 0 to :data:`MAX_ID`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from manifests.fields import CONTROL_CHARS, FieldChecker
from manifests.source import SourceDocument, join_index, join_key

__all__ = [
    "MAX_ID",
    "MAX_PATH",
    "CONTROL_CHARS",
    "GLOB_MAGIC",
    "Declared",
    "ImagePathChecker",
    "normalize_image_path",
    "normalize_host_path",
    "parse_mode",
]

MAX_ID = 2**32 - 2  # 2**32 - 1 is (uid_t)-1, "no change" to chown
MAX_PATH = 4096
GLOB_MAGIC = re.compile(r"[*?\[]")
_MODE = re.compile(r"0?[0-7]{3,4}\Z")


def parse_mode(text: str) -> int | None:
    """An octal mode string (``"644"``, ``"0644"``, ``"04755"``) as an int, or ``None``."""
    if not _MODE.match(text):
        return None
    return int(text, 8)


class Declared(enum.StrEnum):
    """What a contents item puts at an image path (the words appear in messages)."""

    DIRECTORY = "directory"
    FILE = "file"
    SYMLINK = "symlink"

    @property
    def with_article(self) -> str:
        return f"a {self.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Decl:
    path: str  # normalized absolute image path, no trailing slash
    kind: Declared
    where: str  # dotted path of the declaring value
    attrs: tuple[int, int, int] | None = None  # (mode, uid, gid) of a ``dir`` item
    shared: bool = False  # closure files: the same host file may be listed by several closures


def _parents(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:n]) for n in range(1, len(parts))]


def normalize_image_path(text: str) -> str:
    """An absolute image path without empty or ``.`` components (no validation)."""
    comps = [p for p in text.split("/") if p not in ("", ".")]
    return "/" + "/".join(comps)


def normalize_host_path(text: str, *, keep_slash: bool) -> str:
    """Drop empty and ``.`` components; keep ``..`` (a host path may leave the manifest's dir)."""
    absolute = text.startswith("/")
    comps = [p for p in text.split("/") if p not in ("", ".")]
    body = "/".join(comps)
    norm = "/" + body if absolute else (body or ".")
    if keep_slash and text.endswith(("/", "/.")) and norm != "/":
        norm += "/"
    return norm


class ImagePathChecker(FieldChecker):
    """A FieldChecker with the path accessors and the declaration bookkeeping of image manifests."""

    def __init__(self, doc: SourceDocument) -> None:
        super().__init__(doc)
        self._decls: list[_Decl] = []
        self._glob_prefixes: list[tuple[str, str]] = []  # (literal directory prefix, where)

    # -- path rules

    def image_path(
        self, value: object, where: str, *, allow_root: bool = False, keep_slash: bool = False
    ) -> str | None:
        """An absolute path inside the image, normalized; ``None`` (reported) if unusable."""
        text = self.string(value, where)
        if text is None:
            return None
        if not self.path_text(text, where):
            return None
        if not text.startswith("/"):
            self.report(where, "must be an absolute path", f"write '/{text.removeprefix('./')}'")
            return None
        parts = text.split("/")
        if ".." in parts:
            self.report(where, "must not contain '..'", "write the path it leads to")
            return None
        comps = [p for p in parts if p not in ("", ".")]
        norm = "/" + "/".join(comps)
        if not comps and not allow_root:
            self.report(where, "must not be the root directory")
            return None
        if keep_slash and comps and (text.endswith(("/", "/."))):
            norm += "/"
        return norm

    def path_text(self, text: str, where: str) -> bool:
        """Whether ``text`` is usable as a path at all (reported if not)."""
        if not text:
            self.report(where, "empty path")
            return False
        if CONTROL_CHARS.search(text):
            self.report(where, "path contains a control character", "remove it")
            return False
        if text != text.strip():
            self.report(where, "path has leading or trailing whitespace", "remove the spaces")
            return False
        if len(text) > MAX_PATH:
            self.report(where, f"path longer than {MAX_PATH} characters")
            return False
        return True

    def relative_src(self, value: object, where: str) -> str | None:
        """A ``files`` src: relative to the manifest directory, ``..`` allowed, trailing ``/`` kept."""
        text = self.string(value, where)
        if text is None or not self.path_text(text, where):
            return None
        if text.startswith("/"):
            self.report(
                where,
                "must be relative to the manifest's directory",
                "use a tree item to copy from an absolute host path",
            )
            return None
        return normalize_host_path(text, keep_slash=True)

    def host_path(self, value: object, where: str, *, absolute: bool) -> str | None:
        """A path on the build host (tree src, sysroot): absolute, or relative to the manifest."""
        text = self.string(value, where)
        if text is None or not self.path_text(text, where):
            return None
        if absolute and not text.startswith("/"):
            self.report(where, "must be an absolute path", f"write '/{text.removeprefix('./')}'")
            return None
        return normalize_host_path(text, keep_slash=False)

    # -- entry attributes

    def mode(self, m: Mapping[str, Any], path: str, key: str) -> int | None:
        """``m[key]`` as a mode (``None`` when absent or reported)."""
        if key not in m:
            return None
        where = join_key(path, key)
        value = m[key]
        if isinstance(value, int) and not isinstance(value, bool):
            raw = self.doc.raw.get(where, str(value))
            if raw.startswith("0o"):  # TOML's octal integer: the string form drops the "o"
                raw = "0" + raw[2:]
            self.report(where, "ambiguous unquoted mode", f'quote it: {self.assignment(key)} "{raw}"')
            return None
        text = self.string(value, where)
        if text is None:
            return None
        mode = parse_mode(text)
        if mode is None:
            self.invalid(where, "mode", text, 'write an octal string such as "0644" or "0755"')
        return mode

    def owner_id(self, m: Mapping[str, Any], path: str, key: str) -> int:
        """``m[key]`` as a uid or gid (0 when absent or not an integer)."""
        if key not in m:
            return 0
        value = self.bounded(m[key], join_key(path, key), 0, MAX_ID)
        return 0 if value is None else value

    # -- declarations

    def declare(
        self,
        path: str,
        kind: Declared,
        where: str,
        *,
        attrs: tuple[int, int, int] | None = None,
        shared: bool = False,
    ) -> None:
        """Record that the value at ``where`` puts ``kind`` at the normalized image ``path``."""
        self._decls.append(_Decl(path=path, kind=kind, where=where, attrs=attrs, shared=shared))

    def declare_closure_path(self, path: str, where: str) -> None:
        """A closure ``paths`` item: a shared file, or for a glob its literal leading directories."""
        if not GLOB_MAGIC.search(path):
            self.declare(path, Declared.FILE, where, shared=True)
            return
        prefix: list[str] = []
        for comp in path.split("/")[1:-1]:
            if GLOB_MAGIC.search(comp):
                break
            prefix.append(comp)
        if prefix:
            self._glob_prefixes.append(("/" + "/".join(prefix), where))

    def check_declarations(
        self, workdir: str | None, writable: tuple[str, ...], volumes: tuple[str, ...]
    ) -> None:
        """Report every clash between the declarations and the run-time directories."""
        first = self._deciding_declarations()
        for decl in self._decls:
            self._check_parents(decl.path, decl.where, first)
        for prefix, where in self._glob_prefixes:
            self._check_parents(prefix + "/x", where, first)
        self._check_run_time_dirs(workdir, writable, volumes, first)

    def _deciding_declarations(self) -> dict[str, _Decl]:
        """The declaration that decides each path; a path declared twice incompatibly is reported."""
        first: dict[str, _Decl] = {}
        for decl in self._decls:
            prior = first.get(decl.path)
            if prior is None:
                first[decl.path] = decl
            elif prior.kind != decl.kind:
                self.report(
                    decl.where,
                    f"conflicting entries: {decl.kind.with_article} here, "
                    f"{prior.kind.with_article} at {prior.where}",
                    "a path is either a file, a directory or a symlink",
                )
            elif decl.kind is Declared.DIRECTORY:
                if prior.attrs is not None and decl.attrs is not None and prior.attrs != decl.attrs:
                    self.report(
                        decl.where,
                        f"directory declared again with another mode or owner (first at {prior.where})",
                        "declare each directory once",
                    )
                elif prior.attrs is None and decl.attrs is not None:
                    first[decl.path] = decl  # the dir item decides the directory's attributes
            elif not (prior.shared and decl.shared):
                self.report(
                    decl.where,
                    f"duplicate destination (first declared at {prior.where})",
                    "each path may be declared once",
                )
        return first

    def _check_run_time_dirs(
        self,
        workdir: str | None,
        writable: tuple[str, ...],
        volumes: tuple[str, ...],
        first: Mapping[str, _Decl],
    ) -> None:
        """The working directory, writable paths and volumes must be directories in the image."""
        if workdir is not None:
            owner = first.get(workdir)
            if owner is not None and owner.kind is Declared.FILE:
                self.report(
                    "workdir",
                    f"declared as a file at {owner.where}",
                    "the working directory must be a directory",
                )
        both: dict[str, str] = {}
        for key, dirs in (("writable", writable), ("volumes", volumes)):
            noun = "writable paths" if key == "writable" else "volumes"
            for p in dirs:
                where = self._list_where(key, p)
                owner = first.get(p)
                if owner is not None and owner.kind is not Declared.DIRECTORY:
                    self.report(
                        where,
                        f"declared as {owner.kind.with_article} at {owner.where}",
                        f"{noun} must be directories",
                    )
                    continue
                self._check_parents(p, where, first)
                if key == "writable":
                    both[p] = where
                elif p in both:
                    self.report(
                        where,
                        f"also listed in {both[p]}",
                        "a path is either writable (tmpfs) or a volume (persistent), not both",
                    )

    def _list_where(self, key: str, value: str) -> str:
        """The dotted path of the first item in ``d[key]`` that normalizes to ``value``."""
        items = self.doc.data.get(key)
        if isinstance(items, list):
            for i, raw in enumerate(items):
                if isinstance(raw, str) and normalize_image_path(raw) == value:
                    return join_index(key, i)
        return key  # pragma: no cover - every listed path came from the document

    def _check_parents(self, path: str, where: str, first: Mapping[str, _Decl]) -> None:
        for parent in _parents(path):
            owner = first.get(parent)
            if owner is not None and owner.kind is not Declared.DIRECTORY:
                hint = (
                    "put it under the symlink's target instead"
                    if owner.kind is Declared.SYMLINK
                    else "a file cannot contain other entries"
                )
                self.report(
                    where, f"parent {parent} is declared as {owner.kind.with_article} at {owner.where}", hint
                )
                return
