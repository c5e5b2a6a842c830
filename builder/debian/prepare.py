"""From an image manifest to the extracted Debian roots its build reads, through its lock only.

:func:`prepare` is what ``kiln build`` calls before building a manifest with a ``debian`` source:
it loads the lock beside the manifest, refuses it when stale (or re-locks with ``update_lock``),
brings the pinned .debs into the download cache (or, ``offline``, refuses naming what is missing)
and extracts one root per architecture. The build then reads files from those roots only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.debian.archive import DEFAULT_KEYRING, Fetcher, HttpFetcher
from builder.debian.cache import default_cache, ensure_debs
from builder.debian.extract import DebianRoot, materialize
from builder.debian.lock import check_lock, load_lock, lock_path_for, make_lock
from builder.errors import SourceError
from manifests.atomic import atomic_write
from manifests.debianlock import DebianLock, LockRequest
from manifests.errors import KilnError
from manifests.image import DebianSource, ImageManifest
from manifests.oci import Platform

__all__ = ["PreparedDebian", "debian_source", "debian_arch", "request_for", "prepare", "lock_manifest"]

# OCI architecture (GOARCH) -> Debian architecture
_DEBIAN_ARCH = {
    "amd64": "amd64",
    "arm64": "arm64",
    "386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64le": "mips64el",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedDebian:
    lock: DebianLock
    mirror: str
    roots: Mapping[str, DebianRoot]  # Debian architecture -> extracted root

    def root_for(self, platform: Platform) -> DebianRoot:
        arch = debian_arch(platform)
        root = self.roots.get(arch)
        if root is None:
            raise SourceError(f"no Debian packages were prepared for {platform}", hint="run kiln lock again")
        return root


def debian_arch(platform: Platform) -> str:
    if platform.architecture == "arm":
        return "armhf" if platform.variant in (None, "v7") else "armel"
    arch = _DEBIAN_ARCH.get(platform.architecture)
    if arch is None:
        raise SourceError(f"Debian has no architecture for platform {platform}")
    return arch


def debian_source(manifest: ImageManifest) -> DebianSource | None:
    return next((c for c in manifest.contents if isinstance(c, DebianSource)), None)


def _platforms(manifest: ImageManifest) -> tuple[Platform, ...]:
    platforms = getattr(manifest, "platforms", ())
    return tuple(platforms) or (manifest.platform,)


def request_for(manifest: ImageManifest) -> LockRequest | None:
    src = debian_source(manifest)
    if src is None:
        return None
    return LockRequest(
        suite=src.suite,
        mirror=src.mirror,
        components=src.components,
        packages=src.packages,
        exclude=src.exclude,
        architectures=tuple(dict.fromkeys(debian_arch(p) for p in _platforms(manifest))),
    )


def lock_manifest(
    manifest: ImageManifest,
    manifest_path: Path,
    *,
    fetcher: Fetcher | None = None,
    keyring: Path = DEFAULT_KEYRING,
    cache: Path | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> tuple[Path, DebianLock]:
    """Resolve the manifest's debian source and write its lock beside it."""
    request = request_for(manifest)
    if request is None:
        raise SourceError(f"{manifest_path}: the manifest has no debian source to lock")
    path = lock_path_for(manifest_path)
    previous = None
    if path.exists():
        with contextlib.suppress(KilnError):
            previous = load_lock(path)
    lock = make_lock(
        request,
        fetcher=fetcher or HttpFetcher(),
        keyring=keyring,
        cache=cache if cache is not None else default_cache(),
        progress=progress,
        previous=previous,
    )
    atomic_write(path, lock.to_bytes())
    return path, lock


def prepare(
    manifest: ImageManifest,
    manifest_path: Path,
    *,
    cache: Path | None = None,
    offline: bool = False,
    update_lock: bool = False,
    fetcher: Fetcher | None = None,
    keyring: Path = DEFAULT_KEYRING,
    progress: Callable[[str], None] = lambda _m: None,
) -> PreparedDebian | None:
    """The roots of the manifest's debian source, or ``None`` when it has none."""
    request = request_for(manifest)
    if request is None:
        return None
    cache = cache if cache is not None else default_cache()
    path = lock_path_for(manifest_path)
    if update_lock:
        if offline:
            raise SourceError("--update-lock needs the archive; it cannot be combined with --offline")
        path, lock = lock_manifest(
            manifest, manifest_path, fetcher=fetcher, keyring=keyring, cache=cache, progress=progress
        )
        progress(f"wrote {path}")
    else:
        lock = load_lock(path)
        check_lock(lock, request, source=str(path))
    roots: dict[str, DebianRoot] = {}
    for arch in request.architectures:
        packages = lock.packages.get(arch, ())
        debs = ensure_debs(
            packages,
            cache=cache,
            mirror=request.mirror,
            fetcher=None if offline else (fetcher or HttpFetcher()),
            offline=offline,
            progress=progress,
        )
        roots[arch] = materialize(packages, architecture=arch, debs=debs, cache=cache, progress=progress)
    return PreparedDebian(lock=lock, mirror=request.mirror, roots=roots)
