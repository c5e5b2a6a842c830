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
from pathlib import Path

from builder.elf import Sysroot
from builder.errors import ClosureError

__all__ = ["MAX_DPKG_BYTES", "DpkgIndex", "owning_package"]

MAX_DPKG_BYTES = 256 << 20  # /var/lib/dpkg/status or one .list file


class DpkgIndex:
    """Which installed Debian package ships a file, from ``/var/lib/dpkg`` inside ``sysroot``.

    The index is built on first use. Paths in ``*.list`` files are compared after resolving
    their directories inside the sysroot, so ``/lib/x86_64-linux-gnu/libc.so.6`` (as listed on
    merged-/usr systems) matches the real file ``/usr/lib/x86_64-linux-gnu/libc.so.6``.
    """

    def __init__(self, sysroot: Path) -> None:
        self._root = Sysroot(Path(sysroot))
        self._by_name: dict[str, list[tuple[str, str]]] | None = None
        self._versions: dict[str, str] | None = None
        self._real_dirs: dict[str, str | None] = {}

    def _load(self) -> dict[str, list[tuple[str, str]]]:
        if self._by_name is not None:
            return self._by_name
        by_name: dict[str, list[tuple[str, str]]] = {}
        for listed in self._root.glob("/var/lib/dpkg/info/*.list"):
            package = posixpath.basename(listed)[: -len(".list")]
            text = self._root.read_text(listed, MAX_DPKG_BYTES) or ""
            for line in text.splitlines():
                if line.startswith("/") and line != "/":
                    by_name.setdefault(posixpath.basename(line), []).append((line, package))
        self._by_name = by_name
        return by_name

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
        if directory not in self._real_dirs:
            try:
                res = self._root.resolve(directory)
            except ClosureError:
                res = None
            self._real_dirs[directory] = res.real if res is not None else None
        return self._real_dirs[directory]

    def owning_package(self, image_path: str) -> str | None:
        """``"libc6:amd64 2.36-9+deb12u14"`` (or the bare package name without a status entry)."""
        real_dir = self._real_dir(posixpath.dirname(image_path)) or posixpath.dirname(image_path)
        base = posixpath.basename(image_path)
        owners = sorted(
            {
                package
                for listed, package in self._load().get(base, ())
                if self._real_dir(posixpath.dirname(listed)) == real_dir
            }
        )
        if not owners:
            return None
        package = owners[0]
        version = self._load_versions().get(package)
        return f"{package} {version}" if version else package

    def owning_package_of_host_path(self, host_path: Path) -> str | None:
        # Resolve the directory on the host (the sysroot may sit under a symlinked path); the
        # name itself is looked up inside the sysroot, where absolute links mean the sysroot.
        host = Path(os.path.realpath(Path(host_path).parent)) / Path(host_path).name
        try:
            relative = host.relative_to(self._root.root)
        except ValueError:
            return None
        return self.owning_package("/" + relative.as_posix())


@functools.lru_cache(maxsize=8)
def _dpkg_index(sysroot: str) -> DpkgIndex:
    return DpkgIndex(Path(sysroot))


def owning_package(host_path: Path, sysroot: Path = Path("/")) -> str | None:
    """The Debian package that ships ``host_path`` (a file inside ``sysroot``), or ``None``.

    The index of each sysroot is built once, on first use, and kept for the process; build a
    :class:`DpkgIndex` yourself when the sysroot's packages may change in between.
    """
    return _dpkg_index(os.path.realpath(sysroot)).owning_package_of_host_path(host_path)
