"""Debian package ownership: which installed package ships a file, for the SBOM.

:class:`DpkgIndex` reads ``/var/lib/dpkg/info/*.list`` and ``/var/lib/dpkg/status`` inside a
sysroot (each file at most :data:`MAX_DPKG_BYTES`), resolving paths with the closure resolver's
:class:`~builder.elf.Sysroot`. :func:`owning_package` keeps one index per sysroot for the process;
:mod:`builder.bom` caches answers across builds.
"""

from __future__ import annotations

import functools
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from builder.elf import Sysroot
from builder.errors import ClosureError

__all__ = ["MAX_DPKG_BYTES", "DpkgIndex", "owning_package"]

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
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except OSError:
                    continue  # vanished, or a symlink: not a list dpkg wrote
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
