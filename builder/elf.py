"""ELF closures: an executable plus the interpreter and every shared library it needs.

:func:`resolve_closure` follows what glibc's dynamic loader would do at run time, but reads
files only (nothing is executed) and treats ``sysroot`` as ``/``:

- ``PT_INTERP`` of each given file is its interpreter (role ``interpreter``).
- ``DT_NEEDED`` names are loaded breadth-first per given file, as ``ld.so`` does. A name that
  matches the soname of an object already loaded for that file (the interpreter's
  ``ld-linux-x86-64.so.2`` needed by ``libc.so.6``, for instance) is not searched again.
- A name is searched, in order, in: the ``DT_RPATH`` of the object that needs it and of its
  loaders up to the executable (only when the object has no ``DT_RUNPATH``; objects that have a
  ``DT_RUNPATH`` contribute no ``DT_RPATH``), the object's own ``DT_RUNPATH``, the directories
  of ``/etc/ld.so.conf`` (``include`` globs followed; this stands in for ``ld.so.cache``), and
  the glibc defaults: ``/lib/<multiarch>``, ``/usr/lib/<multiarch>``, ``/lib``, ``/usr/lib``
  and, for 64-bit objects, ``/lib64`` and ``/usr/lib64``. ``DF_1_NODEFLIB`` drops the last two
  groups. ``$ORIGIN``/``${ORIGIN}`` are expanded; ``$LIB`` and ``$PLATFORM`` are refused (their
  value depends on how glibc was built). ``glibc-hwcaps`` subdirectories are not searched: the
  baseline library is always chosen.
- A candidate is taken only if it is a regular ``ET_DYN`` ELF file of the same class,
  byte order and machine as the object that needs it; others are skipped (and listed in the
  error if nothing fits).
- Paths are resolved component by component inside ``sysroot`` (at most 40 symlinks per
  lookup). Every symlink crossed on the way to a closure file is returned as a
  :class:`ClosureSymlink` with its target exactly as stored; the content is returned at its real,
  symlink-free path. A symlink whose target climbs above the sysroot is an error.

Libraries loaded with ``dlopen`` are invisible to this analysis and must be listed in ``paths``:
``libgcc_s.so.1`` (glibc loads it to unwind a cancelled or exiting thread), NSS modules
(``libnss_*.so.2``), gconv modules, and interpreters' extension modules.

Malformed or truncated ELF files raise :class:`~builder.errors.ClosureError` naming the file.
:class:`Sysroot` (path resolution inside the sysroot) is shared with :mod:`builder.dpkg`, which
answers which Debian package owns a closure file (for the SBOM).
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import posixpath
import re
import stat
import struct
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from builder.errors import ClosureError

__all__ = [
    "ClosureFile",
    "ClosureSymlink",
    "Closure",
    "resolve_closure",
    "Sysroot",
    "MAX_SYMLINK_HOPS",
]

MAX_SYMLINK_HOPS = 40  # the kernel's limit per path lookup
MAX_ELF_BYTES = 1 << 30  # larger "shared libraries" are refused, not parsed
MAX_DYNAMIC_TAGS = 1 << 16
MAX_CLOSURE_FILES = 1 << 16
MAX_CONF_BYTES = 1 << 20  # one ld.so.conf file
MAX_CONF_FILES = 256

ROLE_EXECUTABLE = "executable"
ROLE_INTERPRETER = "interpreter"
ROLE_LIBRARY = "library"
_ROLE_RANK = {ROLE_EXECUTABLE: 0, ROLE_INTERPRETER: 1, ROLE_LIBRARY: 2}

_ET_EXEC, _ET_DYN = 2, 3
_DF_1_NODEFLIB = 0x800
_DF_1_PIE = 0x08000000
_GLOB_MAGIC = re.compile(r"[*?\[]")
_REFUSED_DST = re.compile(r"\$(?:\{(?:LIB|PLATFORM)\}|(?:LIB|PLATFORM)(?![A-Za-z0-9_]))")
_ORIGIN_DST = re.compile(r"\$(?:\{ORIGIN\}|ORIGIN(?![A-Za-z0-9_]))")

# (e_machine, ELF class, little endian) -> Debian multiarch triplets, most likely first.
_MULTIARCH: dict[tuple[int, int, bool], tuple[str, ...]] = {
    (62, 64, True): ("x86_64-linux-gnu",),
    (62, 32, True): ("x86_64-linux-gnux32",),
    (3, 32, True): ("i386-linux-gnu",),
    (183, 64, True): ("aarch64-linux-gnu",),
    (40, 32, True): ("arm-linux-gnueabihf", "arm-linux-gnueabi"),
    (21, 64, True): ("powerpc64le-linux-gnu",),
    (21, 64, False): ("powerpc64-linux-gnu",),
    (22, 64, False): ("s390x-linux-gnu",),
    (243, 64, True): ("riscv64-linux-gnu",),
}

# What pyelftools (and the construct library under it) raise on hostile input, caught at the boundary.
# pyelftools itself is imported only when an ELF file is read (about 40 ms of start-up otherwise spent by
# every build, closure or not); its own ELFError is added to these where it is caught.
_ELF_ERRORS: tuple[type[BaseException], ...] = (
    struct.error,
    ValueError,  # includes UnicodeDecodeError
    IndexError,
    KeyError,
    TypeError,
    AssertionError,
    AttributeError,
    OverflowError,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClosureFile:
    """A regular file of the closure: where it goes in the image and where to read it."""

    image_path: str  # absolute, symlink-free path in the image
    host_path: Path  # regular file on the host (inside sysroot)
    role: str  # "executable" | "interpreter" | "library"
    needed_by: tuple[str, ...] = ()  # image paths of the objects whose DT_NEEDED named it, sorted
    soname: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class ClosureSymlink:
    """A symlink crossed while resolving a closure file; ``target`` is exactly as on the host."""

    image_path: str
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Closure:
    files: tuple[ClosureFile, ...]  # sorted by image_path, deduplicated
    symlinks: tuple[ClosureSymlink, ...]  # sorted, deduplicated


# --------------------------------------------------------------------------------------------
# Paths inside the sysroot


@dataclass(frozen=True, slots=True, kw_only=True)
class _Resolved:
    real: str  # symlink-free absolute image path
    links: tuple[ClosureSymlink, ...]
    mode: int  # st_mode of the final object


class Sysroot:
    """Resolves image paths inside a host directory treated as ``/``, never leaving it.

    ``resolve`` follows symlinks component by component (absolute targets mean the sysroot) and
    returns ``None`` for a path that does not exist; a symlink leaving the sysroot or a loop is a
    :class:`~builder.errors.ClosureError`. Answers are cached per instance.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self._cache: dict[str, _Resolved | None] = {}

    def host(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def resolve(self, path: str) -> _Resolved | None:
        """The real path of ``path`` and the symlinks crossed; ``None`` if it does not exist."""
        if not path.startswith("/"):
            raise ValueError(f"not an absolute image path: {path!r}")
        if path not in self._cache:
            self._cache[path] = self._walk(path)
        return self._cache[path]

    def _walk(self, path: str) -> _Resolved | None:
        real: list[str] = []
        links: list[ClosureSymlink] = []
        # Each pending component remembers the symlink whose target introduced it (for messages).
        pending: deque[tuple[str, ClosureSymlink | None]] = deque((c, None) for c in path.split("/"))
        hops = 0
        mode = stat.S_IFDIR | 0o755  # "/" itself
        while pending:
            comp, via = pending.popleft()
            if comp == "":
                continue
            if not stat.S_ISDIR(mode):
                return None  # ENOTDIR: a non-directory followed by more components
            if comp == ".":
                continue
            if comp == "..":
                if not real:
                    if via is None:  # "/.." is "/"
                        continue
                    raise ClosureError(
                        f"{path}: symlink {via.image_path} -> {via.target} leads outside the sysroot "
                        f"{self.root}",
                        hint="symlinks in a sysroot must stay inside it; fix the link or copy the file",
                    )
                real.pop()
                continue
            here = "/" + "/".join([*real, comp])
            # The answer depends on this path, found or not: tell an input recorder (kiln.buildrecord).
            sys.audit("kiln.input", str(self.host(here)), False)
            try:
                st = os.lstat(self.host(here))
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise ClosureError(f"{path}: cannot inspect {here}: {exc.strerror}") from exc
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ClosureError(
                        f"{path}: too many levels of symbolic links (more than {MAX_SYMLINK_HOPS}) at {here}",
                        hint="the sysroot contains a symlink loop",
                    )
                try:
                    target = os.readlink(self.host(here))
                except OSError as exc:
                    raise ClosureError(f"{path}: cannot read the symlink {here}: {exc.strerror}") from exc
                link = ClosureSymlink(image_path=here, target=target)
                links.append(link)
                if not target:
                    return None
                if target.startswith("/"):
                    real = []
                    mode = stat.S_IFDIR | 0o755
                pending.extendleft(reversed([(c, link) for c in target.split("/")]))
                continue
            real.append(comp)
            mode = st.st_mode
        return _Resolved(real="/" + "/".join(real), links=tuple(links), mode=mode)

    def listdir(self, image_dir: str) -> list[str]:
        res = self.resolve(image_dir)
        if res is None or not stat.S_ISDIR(res.mode):
            return []
        try:
            return sorted(os.listdir(self.host(res.real)))
        except OSError:
            return []

    def glob(self, pattern: str) -> list[str]:
        """Expand ``*``, ``?`` and ``[...]`` per component (no ``**``); sorted image paths."""
        found = ["/"]
        for comp in [c for c in pattern.split("/") if c]:
            step: list[str] = []
            for base in found:
                if _GLOB_MAGIC.search(comp):
                    hidden = comp.startswith(".")
                    step.extend(
                        posixpath.join(base, name)
                        for name in self.listdir(base)
                        if fnmatch.fnmatchcase(name, comp) and (hidden or not name.startswith("."))
                    )
                else:
                    candidate = posixpath.join(base, comp)
                    if self.resolve(candidate) is not None:
                        step.append(candidate)
            found = step
        return sorted(found)

    def read_text(self, image_path: str, limit: int) -> str | None:
        res = self.resolve(image_path)
        if res is None or not stat.S_ISREG(res.mode):
            return None
        try:
            with open(self.host(res.real), "rb") as fh:
                data = fh.read(limit + 1)
        except OSError:
            return None
        if len(data) > limit:
            raise ClosureError(f"{image_path}: larger than {limit} bytes; refusing to parse it")
        return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# ELF parsing


@dataclass(frozen=True, slots=True, kw_only=True)
class _Ident:
    elfclass: int  # 32 | 64
    little: bool
    machine: int
    etype: int

    @property
    def key(self) -> tuple[int, int, bool]:
        return (self.machine, self.elfclass, self.little)

    def describe(self) -> str:
        order = "LSB" if self.little else "MSB"
        return f"ELF{self.elfclass} {order} machine {self.machine}"


def _parse_ident(head: bytes) -> _Ident | None:
    """The identity fields of an ELF header, or ``None`` if ``head`` is not one."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] not in {1, 2} or head[5] not in {1, 2}:
        return None
    little = head[5] == 1
    etype, machine = struct.unpack("<HH" if little else ">HH", head[16:20])
    return _Ident(elfclass=32 * head[4], little=little, machine=machine, etype=etype)


@dataclass(frozen=True, slots=True, kw_only=True)
class _ElfInfo:
    ident: _Ident
    interp: str | None = None
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] | None = None  # None: no DT_RUNPATH at all
    soname: str | None = None
    flags_1: int = 0

    @property
    def is_program(self) -> bool:
        return self.ident.etype == _ET_EXEC or self.interp is not None or bool(self.flags_1 & _DF_1_PIE)


def _split_path_list(value: str) -> tuple[str, ...]:
    return tuple(value.split(":"))


def _tag_string(tag: object) -> str:
    name: str = tag.entry.d_tag  # type: ignore[attr-defined]
    value = getattr(tag, name[3:].lower())  # pyelftools sets .needed/.rpath/.runpath/.soname
    if not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


def _read_elf(fh: BinaryIO, ident: _Ident) -> _ElfInfo:
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import InterpSegment

    elf = ELFFile(fh)
    interp: str | None = None
    dynamic: DynamicSegment | None = None
    for seg in elf.iter_segments():
        if isinstance(seg, InterpSegment) and interp is None:
            interp = seg.get_interp_name()
        elif isinstance(seg, DynamicSegment) and dynamic is None:
            dynamic = seg
    needed: list[str] = []
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] | None = None
    soname: str | None = None
    flags_1 = 0
    if dynamic is not None:
        entsize = elf.structs.Elf_Dyn.sizeof()
        limit = min(MAX_DYNAMIC_TAGS, max(1, int(dynamic["p_filesz"]) // entsize))
        for tag in itertools.islice(dynamic.iter_tags(), limit):
            kind = tag.entry.d_tag
            if kind == "DT_NEEDED":
                needed.append(_tag_string(tag))
            elif kind == "DT_RPATH":
                rpath += _split_path_list(_tag_string(tag))
            elif kind == "DT_RUNPATH":
                runpath = (runpath or ()) + _split_path_list(_tag_string(tag))
            elif kind == "DT_SONAME":
                soname = _tag_string(tag)
            elif kind == "DT_FLAGS_1":
                flags_1 = int(tag.entry.d_val)
    return _ElfInfo(
        ident=ident,
        interp=interp,
        needed=tuple(needed),
        rpath=rpath,
        runpath=runpath,
        soname=soname,
        flags_1=flags_1,
    )


# --------------------------------------------------------------------------------------------
# The resolver


@dataclass(slots=True, kw_only=True)
class _Loaded:
    """An object loaded for one given file: where it was found and who loaded it."""

    info: _ElfInfo
    origin: str  # the directory $ORIGIN expands to
    loader: _Loaded | None
    real: str


@dataclass(slots=True, kw_only=True)
class _FileEntry:
    real: str
    role: str
    soname: str | None
    needed_by: set[str] = field(default_factory=set)


class _Resolver:
    def __init__(self, sysroot: Path) -> None:
        self.root = Sysroot(sysroot)
        self._infos: dict[str, _ElfInfo] = {}
        self._idents: dict[str, _Ident | None] = {}
        self._conf_dirs: tuple[str, ...] | None = None
        self.files: dict[str, _FileEntry] = {}
        self.links: set[ClosureSymlink] = set()

    # -- reading -----------------------------------------------------------------------------

    def ident(self, real: str) -> _Ident | None:
        if real not in self._idents:
            try:
                with open(self.root.host(real), "rb") as fh:
                    self._idents[real] = _parse_ident(fh.read(20))
            except OSError:
                self._idents[real] = None
        return self._idents[real]

    def info(self, real: str, shown: str) -> _ElfInfo:
        """Parse the ELF file at ``real``; ``shown`` names it in errors."""
        if real in self._infos:
            return self._infos[real]
        from elftools.common.exceptions import ELFError

        host = self.root.host(real)
        try:
            size = os.stat(host).st_size
            if size > MAX_ELF_BYTES:
                raise ClosureError(f"{shown}: {size} bytes is larger than the {MAX_ELF_BYTES} byte limit")
            with open(host, "rb") as fh:
                ident = _parse_ident(fh.read(20))
                if ident is None:
                    raise ClosureError(
                        f"{shown}: not an ELF file",
                        hint="closure takes ELF executables and libraries; copy other files with files",
                    )
                fh.seek(0)
                parsed = _read_elf(fh, ident)
        except (cast(type[BaseException], ELFError), *_ELF_ERRORS) as exc:
            raise ClosureError(
                f"{shown}: malformed or truncated ELF file ({exc or type(exc).__name__})",
                hint="the file is damaged or not a Linux ELF object",
            ) from exc
        except OSError as exc:
            raise ClosureError(f"{shown}: cannot read {host}: {exc.strerror}") from exc
        self._infos[real] = parsed
        return parsed

    def conf_dirs(self) -> tuple[str, ...]:
        if self._conf_dirs is None:
            dirs: list[str] = []
            self._read_conf("/etc/ld.so.conf", dirs, set())
            self._conf_dirs = tuple(dirs)
        return self._conf_dirs

    def _read_conf(self, path: str, dirs: list[str], seen: set[str]) -> None:
        res = self.root.resolve(path)
        if res is None or res.real in seen:
            return
        if len(seen) >= MAX_CONF_FILES:
            raise ClosureError(f"{path}: more than {MAX_CONF_FILES} ld.so.conf files are included")
        seen.add(res.real)
        text = self.root.read_text(path, MAX_CONF_BYTES)
        if text is None:
            return
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            word, *rest_list = line.split(None, 1)
            rest = rest_list[0] if rest_list else ""
            if word == "include":
                for pattern in rest.split():
                    absolute = (
                        pattern
                        if pattern.startswith("/")
                        else posixpath.join(posixpath.dirname(path), pattern)
                    )
                    for included in self.root.glob(absolute):
                        self._read_conf(included, dirs, seen)
            elif word == "hwcap":
                continue
            else:
                for entry in re.split(r"[\s,:]+", line):
                    directory = entry.split("=", 1)[0]  # legacy "dir=libtype"
                    if directory.startswith("/"):
                        dirs.append(directory.rstrip("/") or "/")

    # -- collecting --------------------------------------------------------------------------

    def add_file(self, real: str, role: str, soname: str | None, needed_by: str | None = None) -> None:
        entry = self.files.get(real)
        if entry is None:
            if len(self.files) >= MAX_CLOSURE_FILES:
                raise ClosureError(f"the closure has more than {MAX_CLOSURE_FILES} files")
            entry = self.files[real] = _FileEntry(real=real, role=role, soname=soname)
        elif _ROLE_RANK[role] < _ROLE_RANK[entry.role]:
            entry.role = role
        if needed_by is not None:
            entry.needed_by.add(needed_by)

    def closure(self) -> Closure:
        files = tuple(
            ClosureFile(
                image_path=e.real,
                host_path=self.root.host(e.real),
                role=e.role,
                needed_by=tuple(sorted(e.needed_by)),
                soname=e.soname,
            )
            for e in sorted(self.files.values(), key=lambda e: e.real)
        )
        return Closure(files=files, symlinks=tuple(sorted(self.links)))

    # -- one given file ----------------------------------------------------------------------

    def add_root(self, given: str) -> None:
        res = self.root.resolve(given)
        if res is None:
            raise ClosureError(f"{given}: no such file in sysroot {self.root.root}")
        if not stat.S_ISREG(res.mode):
            raise ClosureError(f"{given}: not a regular file (resolves to {res.real})")
        info = self.info(res.real, given)
        self.links.update(res.links)
        self.add_file(res.real, ROLE_EXECUTABLE if info.is_program else ROLE_LIBRARY, info.soname)
        # Names (DT_NEEDED names and sonames) already satisfied for this file -> real path.
        provided: dict[str, str] = {}
        loaded: set[str] = {res.real}
        if info.soname:
            provided[info.soname] = res.real
        if info.interp is not None:
            self._add_interpreter(given, info, provided, loaded)
        queue: deque[_Loaded] = deque(
            [_Loaded(info=info, origin=posixpath.dirname(res.real), loader=None, real=res.real)]
        )
        while queue:
            obj = queue.popleft()
            for name in obj.info.needed:
                if name in provided:
                    self.add_file(provided[name], ROLE_LIBRARY, None, needed_by=obj.real)
                    continue
                lib_info, lib_res, found_at = self._search(given, name, obj)
                provided[name] = lib_res.real
                self.links.update(lib_res.links)
                self.add_file(lib_res.real, ROLE_LIBRARY, lib_info.soname, needed_by=obj.real)
                if lib_res.real in loaded:
                    continue
                loaded.add(lib_res.real)
                if lib_info.soname:
                    provided.setdefault(lib_info.soname, lib_res.real)
                queue.append(
                    _Loaded(info=lib_info, origin=posixpath.dirname(found_at), loader=obj, real=lib_res.real)
                )

    def _add_interpreter(
        self, given: str, info: _ElfInfo, provided: dict[str, str], loaded: set[str]
    ) -> None:
        interp = info.interp or ""
        if not interp.startswith("/"):
            raise ClosureError(f"{given}: interpreter {interp!r} is not an absolute path")
        res = self.root.resolve(interp)
        if res is None or not stat.S_ISREG(res.mode):
            raise ClosureError(
                f"{given}: cannot find its interpreter {interp} in sysroot {self.root.root}",
                hint="install the C library (libc6) into the sysroot",
            )
        interp_info = self.info(res.real, interp)
        if interp_info.ident.key != info.ident.key:
            raise ClosureError(
                f"{given}: interpreter {interp} is {interp_info.ident.describe()}, "
                f"but the program is {info.ident.describe()}"
            )
        self.links.update(res.links)
        self.add_file(res.real, ROLE_INTERPRETER, interp_info.soname)
        loaded.add(res.real)
        for name in (interp_info.soname, posixpath.basename(interp)):
            if name:
                provided.setdefault(name, res.real)

    # -- searching ---------------------------------------------------------------------------

    def _expand(self, given: str, obj: _Loaded, entries: Iterable[str], tag: str) -> list[str]:
        dirs: list[str] = []
        for entry in entries:
            if not entry:
                continue  # glibc reads an empty entry as the working directory; kiln skips it
            if _REFUSED_DST.search(entry):
                raise ClosureError(
                    f"{given}: {obj.real} has {tag} entry {entry!r}; kiln does not expand $LIB or "
                    "$PLATFORM (their value depends on the C library build)",
                    hint="use absolute paths or $ORIGIN in RUNPATH",
                )
            expanded = _ORIGIN_DST.sub(lambda _m: obj.origin, entry)
            if not expanded.startswith("/"):
                raise ClosureError(
                    f"{given}: {obj.real} has {tag} entry {entry!r}, relative to the working directory",
                    hint="use $ORIGIN/... so the path is relative to the object",
                )
            dirs.append(expanded.rstrip("/") or "/")
        return dirs

    def search_dirs(self, given: str, obj: _Loaded) -> list[str]:
        dirs: list[str] = []
        if obj.info.runpath is None:
            node: _Loaded | None = obj
            while node is not None:
                if node.info.runpath is None:
                    dirs += self._expand(given, node, node.info.rpath, "RPATH")
                node = node.loader
        else:
            dirs += self._expand(given, obj, obj.info.runpath, "RUNPATH")
        if not obj.info.flags_1 & _DF_1_NODEFLIB:
            dirs += self.conf_dirs()
            dirs += _default_dirs(obj.info.ident)
        return list(dict.fromkeys(dirs))

    def _search(self, given: str, name: str, obj: _Loaded) -> tuple[_ElfInfo, _Resolved, str]:
        if "/" in name:
            if not name.startswith("/"):
                raise ClosureError(
                    f"{given}: {obj.real} needs {name!r}, a path relative to the working directory"
                )
            candidates = [name]
            searched: list[str] = []
        else:
            searched = self.search_dirs(given, obj)
            candidates = [posixpath.join(d, name) for d in searched]
        skipped: list[str] = []
        for candidate in candidates:
            try:
                res = self.root.resolve(candidate)
            except ClosureError as exc:
                raise ClosureError(
                    f"{given}: looking for {name} (needed by {obj.real}): {exc.message}", hint=exc.hint
                ) from exc
            if res is None or not stat.S_ISREG(res.mode):
                continue
            ident = self.ident(res.real)
            if ident is None:
                skipped.append(f"{candidate} (not ELF)")
            elif ident.key != obj.info.ident.key:
                skipped.append(f"{candidate} ({ident.describe()})")
            elif ident.etype != _ET_DYN:
                skipped.append(f"{candidate} (not a shared object)")
            else:
                return self.info(res.real, candidate), res, candidate
        where = ", ".join(searched) if searched else name
        message = f"{given}: cannot find {name} (needed by {obj.real}); searched: {where}"
        if skipped:
            message += "; skipped: " + ", ".join(skipped)
        raise ClosureError(
            message,
            hint="install the package that provides it into the sysroot, or add its directory to "
            "RUNPATH or /etc/ld.so.conf",
        )


def _default_dirs(ident: _Ident) -> list[str]:
    dirs: list[str] = []
    for triplet in _MULTIARCH.get(ident.key, ()):
        dirs += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
    dirs += ["/lib", "/usr/lib"]
    if ident.elfclass == 64:
        dirs += ["/lib64", "/usr/lib64"]
    return dirs


def _expand_paths(root: Sysroot, paths: Sequence[str]) -> list[str]:
    expanded: list[str] = []
    for path in paths:
        if not path.startswith("/"):
            raise ClosureError(
                f"closure path {path!r} is not absolute", hint="write paths as they are inside the sysroot"
            )
        if _GLOB_MAGIC.search(path):
            matches = root.glob(path)
            if not matches:
                raise ClosureError(f"closure pattern {path} matches nothing in sysroot {root.root}")
            expanded += matches
        else:
            expanded.append(path)
    return list(dict.fromkeys(expanded))


def resolve_closure(paths: Sequence[str], sysroot: Path) -> Closure:
    """Every file and symlink needed to run ``paths`` (absolute paths inside ``sysroot``).

    Raises :class:`~builder.errors.ClosureError` for missing files or libraries, non-ELF or
    malformed files, symlinks leaving the sysroot and symlink loops.
    """
    if not paths:
        raise ClosureError("closure needs at least one path")
    if not Path(sysroot).is_dir():
        raise ClosureError(f"sysroot {sysroot} is not a directory")
    resolver = _Resolver(Path(sysroot))
    for path in _expand_paths(resolver.root, paths):
        resolver.add_root(path)
    return resolver.closure()


# OCI architecture -> (e_machine, ELF class, little-endian) that runs there.
PLATFORM_MACHINES: dict[str, tuple[int, int, bool]] = {
    "amd64": (62, 64, True),  # EM_X86_64
    "arm64": (183, 64, True),  # EM_AARCH64
    "386": (3, 32, True),  # EM_386
    "arm": (40, 32, True),  # EM_ARM
    "ppc64le": (21, 64, True),  # EM_PPC64
    "s390x": (22, 64, False),  # EM_S390
    "riscv64": (243, 64, True),  # EM_RISCV
    "mips64le": (8, 64, True),  # EM_MIPS
    "loong64": (258, 64, True),  # EM_LOONGARCH
}
_MACHINE_NAMES = {62: "x86-64", 183: "aarch64", 3: "i386", 40: "arm", 21: "ppc64", 22: "s390", 243: "riscv"}


def check_platform_machines(files: Iterable[tuple[str, str | Path]], architecture: str) -> None:
    """Refuse an ELF file (``(image path, host path)`` pairs) built for another machine than
    ``architecture`` (an OCI architecture), naming the first one found. Non-ELF files and
    object files (``ET_REL``, e.g. kernel modules are not checked apart) pass."""
    wanted = PLATFORM_MACHINES.get(architecture)
    if wanted is None:
        return
    for image_path, host_path in files:
        try:  # os.open: a buffered file object per file cost more than the 20 bytes read
            fd = os.open(host_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                head = os.read(fd, 20)
            finally:
                os.close(fd)
        except OSError:
            continue  # reported by whoever reads the file next, with its origin
        ident = _parse_ident(head)
        if ident is None or ident.key == wanted:
            continue
        got = _MACHINE_NAMES.get(ident.machine, f"machine {ident.machine}")
        raise ClosureError(
            f"{image_path}: an ELF{ident.elfclass} {got} file in a linux/{architecture} image ({host_path})",
            hint="take the file from the platform's own packages or sysroot, or change the platform",
        )
