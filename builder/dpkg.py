"""Debian package ownership: which installed package ships a file, for the SBOM.

:class:`DpkgIndex` reads ``/var/lib/dpkg/info/*.list`` and ``/var/lib/dpkg/status`` inside a
sysroot (each file at most :data:`MAX_DPKG_BYTES`), resolving paths with the closure resolver's
:class:`~builder.elf.Sysroot`. :func:`owning_package` keeps one index per sysroot for the
process. :class:`OwnerLookup` (the SBOM's) answers from an :class:`OwnerIndex` kept once per
machine and dpkg state.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from builder.elf import Sysroot
from builder.errors import ClosureError
from manifests.atomic import atomic_write

__all__ = [
    "MAX_DPKG_BYTES",
    "MAX_INDEX_BYTES",
    "DpkgIndex",
    "OwnerIndex",
    "OwnerLookup",
    "cache_home",
    "owning_package",
]

MAX_DPKG_BYTES = 256 << 20  # /var/lib/dpkg/status or one .list file
_UNSET = object()


class DpkgIndex:
    """Which installed Debian package ships a file, from ``/var/lib/dpkg`` inside ``sysroot``.

    The index is built on first use: every path listed in ``*.list`` is keyed by its real,
    symlink-free path inside the sysroot, so ``/lib/x86_64-linux-gnu/libc.so.6`` (as listed on
    merged-/usr systems) matches the real file ``/usr/lib/x86_64-linux-gnu/libc.so.6``. Each
    listed directory is resolved once, from its already-resolved parent: one ``lstat`` per
    directory, and the sysroot's symlink resolver only where a component is a link.
    """

    def __init__(self, sysroot: Path) -> None:
        self._root = Sysroot(Path(sysroot))
        self._owners: dict[str, list[str]] | None = None
        self._versions: dict[str, str] | None = None
        self._real_dirs: dict[str, str | None] = {"/": "/"}

    def _lists(self) -> Iterator[tuple[str, str]]:
        """(package, text) for every ``*.list`` file, read from one safely resolved directory."""
        info = self._root.resolve("/var/lib/dpkg/info")
        if info is None or not stat.S_ISDIR(info.mode):
            return
        info_dir = self._root.host(info.real)
        try:
            names = sorted(n for n in os.listdir(info_dir) if n.endswith(".list"))
        except OSError:
            return
        dfd = os.open(info_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in names:
                # The open's audit event does not name dfd: say which directory ``name`` is in, so
                # kiln's warm-run record (kiln.buildrecord) does not take it as cwd-relative.
                sys.audit("kiln.dir_fd", info_dir)
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except OSError:
                    continue  # vanished, or a symlink: not a list dpkg wrote
                finally:
                    sys.audit("kiln.dir_fd", None)
                with os.fdopen(fd, "rb") as fh:
                    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                        continue
                    data = fh.read(MAX_DPKG_BYTES + 1)
                if len(data) > MAX_DPKG_BYTES:
                    raise ClosureError(f"/var/lib/dpkg/info/{name}: larger than {MAX_DPKG_BYTES} bytes")
                yield name[: -len(".list")], data.decode("utf-8", errors="replace")
        finally:
            os.close(dfd)

    def _load(self) -> dict[str, list[str]]:
        if self._owners is not None:
            return self._owners
        owners: dict[str, list[str]] = {}
        real_dirs = self._real_dirs
        for package, text in self._lists():
            for line in text.splitlines():
                # About 150,000 lines on a developer machine: plain string splitting, and each
                # directory resolved once (a dict hit afterwards).
                directory, slash, name = line.rpartition("/")
                if not slash or not line.startswith("/") or not name:
                    continue
                directory = directory or "/"
                real_dir = real_dirs[directory] if directory in real_dirs else self._real_dir(directory)
                if real_dir is not None:
                    key = f"{real_dir}/{name}" if real_dir != "/" else f"/{name}"
                    owners.setdefault(key, []).append(package)
        self._owners = owners
        return owners

    def _load_versions(self) -> dict[str, str]:
        if self._versions is not None:
            return self._versions
        versions: dict[str, str] = {}
        text = self._root.read_text("/var/lib/dpkg/status", MAX_DPKG_BYTES) or ""
        for stanza in text.split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line[:1] in {" ", "\t"}:
                    continue  # continuation of a multi-line field
                key, sep, value = line.partition(":")
                if sep:
                    fields[key.strip()] = value.strip()
            name, version = fields.get("Package"), fields.get("Version")
            if not name or not version or not fields.get("Status", "").endswith(" installed"):
                continue
            versions[name] = version
            if "Architecture" in fields:
                versions[f"{name}:{fields['Architecture']}"] = version
        self._versions = versions
        return versions

    def _real_dir(self, directory: str) -> str | None:
        """The symlink-free path of an image directory, or ``None`` if it is not a directory."""
        known = self._real_dirs.get(directory, _UNSET)
        if known is not _UNSET:
            return known  # type: ignore[return-value]
        parent = self._real_dir(posixpath.dirname(directory))
        real: str | None = None
        if parent is not None:
            candidate = posixpath.join(parent, posixpath.basename(directory))
            try:
                st = os.lstat(self._root.host(candidate))
            except OSError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                real = candidate
            elif st is not None and stat.S_ISLNK(st.st_mode):
                try:
                    res = self._root.resolve(candidate)
                except ClosureError:
                    res = None
                if res is not None and stat.S_ISDIR(res.mode):
                    real = res.real
        self._real_dirs[directory] = real
        return real

    def owning_packages(self, image_paths: Iterable[str]) -> dict[str, str | None]:
        """:meth:`owning_package` for many paths at once, reading the lists once and indexing only
        the lines whose file name is asked for (an image's files are a few percent of dpkg's)."""
        keys: dict[str, str] = {}
        for path in image_paths:
            directory = posixpath.dirname(path)
            keys[path] = posixpath.join(self._real_dir(directory) or directory, posixpath.basename(path))
        if self._owners is not None:
            found = {key: set(self._owners.get(key, ())) for key in keys.values()}
        else:
            wanted = set(keys.values())
            names = {posixpath.basename(key) for key in wanted}
            found = {key: set() for key in wanted}
            for package, text in self._lists():
                for line in text.splitlines():
                    directory, slash, name = line.rpartition("/")
                    if name not in names or not slash or not line.startswith("/"):
                        continue
                    real_dir = self._real_dir(directory or "/")
                    if real_dir is not None:
                        key = f"{real_dir}/{name}" if real_dir != "/" else f"/{name}"
                        if key in wanted:
                            found[key].add(package)
        return {path: self._describe(found[key]) for path, key in keys.items()}

    def _describe(self, packages: Iterable[str]) -> str | None:
        owners = sorted(packages)
        if not owners:
            return None
        version = self._load_versions().get(owners[0])
        return f"{owners[0]} {version}" if version else owners[0]

    def image_path_of(self, host_path: Path) -> str | None:
        """The path of a host file inside the sysroot (``None`` if it lies outside)."""
        # Resolve the directory on the host (the sysroot may sit under a symlinked path); the
        # name itself is looked up inside the sysroot, where absolute links mean the sysroot.
        host = Path(os.path.realpath(Path(host_path).parent)) / Path(host_path).name
        try:
            return "/" + host.relative_to(self._root.root).as_posix()
        except ValueError:
            return None

    def owning_package(self, image_path: str) -> str | None:
        """``"libc6:amd64 2.36-9+deb12u14"`` (or the bare package name without a status entry)."""
        real_dir = self._real_dir(posixpath.dirname(image_path)) or posixpath.dirname(image_path)
        return self._describe(self._load().get(posixpath.join(real_dir, posixpath.basename(image_path)), ()))

    def owning_package_of_host_path(self, host_path: Path) -> str | None:
        image_path = self.image_path_of(host_path)
        return None if image_path is None else self.owning_package(image_path)


@functools.lru_cache(maxsize=8)
def _dpkg_index(sysroot: str) -> DpkgIndex:
    return DpkgIndex(Path(sysroot))


def owning_package(host_path: Path, sysroot: Path = Path("/")) -> str | None:
    """The Debian package that ships ``host_path`` (a file inside ``sysroot``), or ``None``.

    The index of each sysroot is built once, on first use, and kept for the process; build a
    :class:`DpkgIndex` yourself when the sysroot's packages may change in between.
    """
    return _dpkg_index(os.path.realpath(sysroot)).owning_package_of_host_path(host_path)


# -- the machine-wide owner index -------------------------------------------------------------------

MAX_INDEX_BYTES = 64 << 20  # one cached index file, when it is read back
_INDEX_FORMAT = 1


def cache_home() -> Path | None:
    """``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``; ``None`` without a usable home."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "kiln"
    home = os.path.expanduser("~")
    return Path(home) / ".cache" / "kiln" if os.path.isabs(home) else None


class OwnerIndex:
    """Every file dpkg lists in one sysroot, by real directory, with its owner already described.

    Built once from ``*.list`` and ``status`` (about half a second), then kept under
    :func:`cache_home` in two files named by the identity of dpkg's ``status`` file (which dpkg
    rewrites on every install or removal): the set of directories dpkg ships files in (small,
    read first) and the owners by directory (read only when an asked directory is in the set).
    A path in any other directory costs one set lookup. Files are written atomically and refused
    when read back if larger than :data:`MAX_INDEX_BYTES` or malformed (then rebuilt).
    """

    def __init__(self, sysroot: str, cache_dir: Path | None) -> None:
        self.root = sysroot
        self._cache_dir = cache_dir
        self._stem: str | None = None
        if cache_dir is not None:
            status = os.path.join(sysroot, "var/lib/dpkg/status")
            sys.audit("kiln.input", status, True)  # what the SBOM says depends on it: kiln.buildrecord
            try:
                st = os.stat(status)
                ident = f"{_INDEX_FORMAT}\0{sysroot}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                ident = f"{_INDEX_FORMAT}\0{sysroot}\0no-dpkg"
            self._stem = hashlib.sha256(ident.encode()).hexdigest()
        self._dirs: frozenset[str] | None = None
        self._owners: dict[str, dict[str, str]] | None = None

    def _path(self, what: str) -> Path | None:
        if self._cache_dir is None or self._stem is None:
            return None
        return self._cache_dir / "dpkg-index" / f"{self._stem}.{what}.json"

    def directories(self) -> frozenset[str]:
        """Every real directory (inside the sysroot) that dpkg lists a file in."""
        if self._dirs is None:
            loaded = _read_json(self._path("dirs"))
            if isinstance(loaded, list) and all(isinstance(d, str) for d in loaded):
                self._dirs = frozenset(loaded)
            else:
                self._dirs = frozenset(self._build())
        return self._dirs

    def owners_in(self, directory: str) -> dict[str, str]:
        """File name -> ``"package version"`` for the files dpkg lists in ``directory``."""
        if directory not in self.directories():
            return {}
        if self._owners is None:
            loaded = _read_json(self._path("owners"))
            self._owners = _valid_owners(loaded) if loaded is not None else None
            if self._owners is None or set(self._owners) != self.directories():
                self._build()
        assert self._owners is not None  # noqa: S101 - set by _build
        return self._owners.get(directory, {})

    def _build(self) -> dict[str, dict[str, str]]:
        index = DpkgIndex(Path(self.root))
        by_dir: dict[str, dict[str, str]] = {}
        for key, packages in index._load().items():
            directory, _, name = key.rpartition("/")
            desc = index._describe(packages)
            if desc is not None:
                by_dir.setdefault(directory or "/", {})[name] = desc
        self._owners = by_dir
        self._dirs = frozenset(by_dir)
        dirs_path, owners_path = self._path("dirs"), self._path("owners")
        if dirs_path is not None and owners_path is not None:
            with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
                dirs_path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(owners_path, _dumps(by_dir), durable=False)
                atomic_write(dirs_path, _dumps(sorted(by_dir)), durable=False)  # last: it vouches
        return by_dir


def _dumps(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _read_json(path: Path | None) -> object:
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_INDEX_BYTES:
                return None
            data = fh.read(size + 1)  # one byte more: a file that grew since is refused below
        if len(data) > size:
            return None
        return json.loads(data)
    except (OSError, ValueError):
        return None


def _valid_owners(loaded: object) -> dict[str, dict[str, str]] | None:
    if not isinstance(loaded, dict):
        return None
    for directory, names in loaded.items():
        if not isinstance(directory, str) or not isinstance(names, dict):
            return None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
            return None
    return loaded


class OwnerLookup:
    """Host path -> owning Debian package, for the SBOM, through one :class:`OwnerIndex` per sysroot.

    Each host directory is resolved once (one ``realpath``), not each file; a directory dpkg ships
    nothing in answers ``None`` for all its files without reading more than the directory set.
    """

    def __init__(self, cache_dir: Path | None = None, *, use_machine_cache: bool = True) -> None:
        if cache_dir is None and use_machine_cache:
            cache_dir = cache_home()
        self._cache_dir = cache_dir
        self._indexes: dict[Path, OwnerIndex] = {}
        self._dirs: dict[tuple[Path, str], str | None] = {}  # (sysroot, host dir) -> image dir

    def _index(self, sysroot: Path) -> OwnerIndex:
        index = self._indexes.get(sysroot)
        if index is None:
            index = self._indexes[sysroot] = OwnerIndex(os.path.realpath(sysroot), self._cache_dir)
        return index

    def _image_dir(self, host_dir: str, sysroot: Path, index: OwnerIndex) -> str | None:
        key = (sysroot, host_dir)
        if key in self._dirs:
            return self._dirs[key]
        real = os.path.realpath(host_dir)
        root = index.root
        if root == "/":
            image_dir: str | None = real
        elif real == root:
            image_dir = "/"
        elif real.startswith(root + "/"):
            image_dir = real[len(root) :]
        else:
            image_dir = None
        self._dirs[key] = image_dir
        return image_dir

    def prefetch(self, host_paths: Iterable[str | Path], sysroot: Path) -> None:
        """Nothing to do ahead of time: kept for callers that announce their paths."""
        del host_paths, sysroot

    def owner(self, host_path: str | Path, sysroot: Path) -> str | None:
        """``"libc6:amd64 2.36-9+deb12u14"`` for a file dpkg ships in ``sysroot``, else ``None``."""
        index = self._index(sysroot)
        host_dir, _, name = str(host_path).rpartition("/")
        image_dir = self._image_dir(host_dir or "/", sysroot, index)
        if image_dir is None:
            return None
        return index.owners_in(image_dir).get(name)

    def save(self) -> None:
        """Nothing to save: an index is written when it is built."""
