"""The image manifest: what a person writes to describe one container image.

This module holds the document model (frozen dataclasses). Parsing and validation with
``FILE:LINE:COL: dotted.path: message (hint)`` errors live in :mod:`manifests.image_parse`;
:func:`manifests.image_parse.load_image_manifest` is the entry point.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from manifests.errors import Problem
from manifests.mediatypes import Compression
from manifests.oci import Platform
from manifests.vmspec import VMSpec

__all__ = [
    "FileSpec",
    "FilesSource",
    "ClosureSource",
    "TreeSource",
    "SymlinkSource",
    "DirSource",
    "DebianSource",
    "DEBIAN_SYSROOT",
    "DEFAULT_DEBIAN_MIRROR",
    "ContentItem",
    "Accounts",
    "Port",
    "HttpCheck",
    "TcpCheck",
    "ExecCheck",
    "HealthCheck",
    "LayerStrategy",
    "LayerPolicy",
    "ImageManifest",
    "API_VERSION",
]

API_VERSION = "kiln.dev/v1"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSpec:
    """One ``files`` entry: a host file or directory copied to ``dst``.

    ``src`` is relative to the manifest's directory; a trailing ``/`` on ``src`` copies a
    directory's contents recursively into ``dst`` (which then also ends in ``/``).
    ``mode``/``dirmode`` include setuid/setgid/sticky bits only when written explicitly
    (e.g. ``"04755"``); ``None`` means the default (0644 files, 0755 executables and dirs).
    """

    src: str
    dst: str
    mode: int | None = None
    dirmode: int | None = None
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FilesSource:
    files: tuple[FileSpec, ...]


DEBIAN_SYSROOT = "debian"  # ``sysroot: debian``: read from the manifest's debian source
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClosureSource:
    """ELF executables plus every shared library they need, resolved inside ``sysroot``
    (a host directory, or :data:`DEBIAN_SYSROOT`: the manifest's extracted Debian packages)."""

    paths: tuple[str, ...]
    sysroot: str = "/"


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeSource:
    """A host directory copied recursively, filtered by globs (``**`` matches across ``/``)."""

    src: str
    dst: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    mode: int | None = None
    dirmode: int | None = None
    uid: int = 0
    gid: int = 0
    sysroot: str | None = None  # DEBIAN_SYSROOT: ``src`` is an absolute path in the debian source


@dataclass(frozen=True, slots=True, kw_only=True)
class DebianSource:
    """Debian packages, resolved by ``kiln lock`` into the manifest's lockfile and extracted
    (merged /usr, no maintainer scripts). ``sysroot_only`` (``as: sysroot``): nothing is copied
    whole; ``closure`` and ``tree`` items with ``sysroot: debian`` read from it."""

    suite: str
    packages: tuple[str, ...]
    mirror: str = DEFAULT_DEBIAN_MIRROR
    components: tuple[str, ...] = ("main",)
    exclude: tuple[str, ...] = ()
    sysroot_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SymlinkSource:
    path: str
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DirSource:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


ContentItem = FilesSource | ClosureSource | TreeSource | SymlinkSource | DirSource | DebianSource


@dataclass(frozen=True, slots=True, kw_only=True)
class Accounts:
    """The image's run-time user; kiln writes a minimal /etc/passwd and /etc/group."""

    user: str
    uid: int
    gid: int
    group: str | None = None  # defaults to the user name
    home: str = "/nonexistent"


@dataclass(frozen=True, slots=True, kw_only=True)
class Port:
    number: int
    protocol: str = "tcp"  # tcp | udp

    def __str__(self) -> str:
        return f"{self.number}/{self.protocol}"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpCheck:
    port: int
    path: str = "/"


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpCheck:
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecCheck:
    command: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    check: HttpCheck | TcpCheck | ExecCheck
    interval: float = 2.0  # seconds
    timeout: float = 1.0
    retries: int = 3


class LayerStrategy(enum.StrEnum):
    AUTO = "auto"  # interpreters/shared libraries apart from application files
    SINGLE = "single"  # everything in one layer
    PER_SOURCE = "per-source"  # one layer per contents item (merged down to ``max``)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerPolicy:
    strategy: LayerStrategy = LayerStrategy.AUTO
    max: int = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class PythonPolicy:
    """``python:``: bake deterministic CPython bytecode into the tree (ADR 0023).

    ``optimize`` is the level the image's interpreter runs at (0, or 1/2 for ``-O``/``-OO``):
    it decides the ``.pyc`` names the interpreter looks for.
    """

    bytecode: bool = False
    optimize: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageManifest:
    """A validated image manifest. ``base_dir`` is the manifest file's directory."""

    name: str
    version: str
    platform: Platform
    contents: tuple[ContentItem, ...]
    # ``platforms: [...]``: one image per platform under one OCI index (``platform`` is the first).
    platforms: tuple[Platform, ...] = ()
    accounts: Accounts | None = None
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    ports: tuple[Port, ...] = ()
    writable: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    health: HealthCheck | None = None
    labels: tuple[tuple[str, str], ...] = ()
    layers: LayerPolicy = LayerPolicy()
    compression: Compression = Compression.GZIP
    compression_level: int | None = None  # None: the compression's default level
    vm: VMSpec | None = None  # the `vm:` section: how to build a VM image of the same tree
    python: PythonPolicy = PythonPolicy()
    source: str = "<memory>"  # the manifest file's path, for messages
    base_dir: Path = Path()
    # Where each value was written (dotted path -> line, column), so a problem found later (a
    # missing input) is reported at its place in the file. Not part of the manifest's value.
    positions: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def problem(self, path: str, message: str, hint: str | None = None) -> Problem:
        """A positioned Problem about the value at dotted ``path`` (or its nearest ancestor)."""
        for candidate in _ancestors(path):
            if candidate in self.positions:
                line, col = self.positions[candidate]
                return Problem(file=self.source, line=line, col=col, path=path, message=message, hint=hint)
        return Problem(file=self.source, line=None, col=None, path=path, message=message, hint=hint)


def _ancestors(path: str) -> list[str]:
    """``a.b[2].c``, ``a.b[2]``, ``a.b``, ``a``."""
    out = [path]
    while path:
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
        if path:
            out.append(path)
    return out
