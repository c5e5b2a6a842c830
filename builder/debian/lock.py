"""Making, checking and explaining a Debian lock (:class:`~manifests.debianlock.DebianLock`).

:func:`make_lock` runs the whole trust chain (InRelease, Packages) and resolution for every
architecture of a request; :func:`check_lock` compares a lock with the manifest's request and
refuses a stale one naming the difference; :func:`why` explains a package from the reasons the lock
records, without the network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from builder.debian.archive import (
    DEFAULT_KEYRING,
    DEFAULT_LIMITS,
    DebianLimits,
    Fetcher,
    fetch_index,
    fetch_release,
    release_time,
)
from builder.debian.resolve import resolve
from manifests.debianlock import DebianLock, LockedPackage, LockRequest
from manifests.errors import KilnError, VerificationError
from manifests.vocabulary import Reason

__all__ = ["StaleLockError", "make_lock", "check_lock", "why", "lock_path_for", "load_lock"]


class StaleLockError(KilnError):
    """The manifest asks for something other than what its lock pins."""


def lock_path_for(manifest_path: Path) -> Path:
    """``examples/web.yaml`` -> ``examples/web.lock``."""
    return manifest_path.with_suffix(".lock")


def load_lock(path: Path) -> DebianLock:
    from manifests.debianlock import MAX_LOCK_BYTES

    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_LOCK_BYTES + 1)
    except FileNotFoundError:
        raise StaleLockError(
            f"{path}: no lockfile for the manifest's debian packages",
            hint=f"run: kiln lock {path.with_suffix('.yaml')}",
        ) from None
    return DebianLock.from_bytes(data, source=str(path))


def make_lock(
    request: LockRequest,
    *,
    fetcher: Fetcher,
    keyring: Path = DEFAULT_KEYRING,
    cache: Path | None = None,
    limits: DebianLimits = DEFAULT_LIMITS,
    progress: Callable[[str], None] = lambda _m: None,
    previous: DebianLock | None = None,
) -> DebianLock:
    """Resolve ``request`` from the archive. ``previous``: the lock being replaced; a Release
    dated before it (same suite and mirror) is refused as a rollback."""
    release = fetch_release(fetcher, request.mirror, request.suite, keyring=keyring, limits=limits)
    if previous is not None and (previous.request.suite, previous.request.mirror) == (
        request.suite,
        request.mirror,
    ):
        before = release_time(previous.release_date, "Date")
        if release_time(release.date, "Date") < before:
            raise VerificationError(
                f"InRelease: dated {release.date}, older than the Release the lock was made from "
                f"({previous.release_date})",
                reason=Reason.ROLLBACK,
                hint="the mirror serves an older archive state; use an up-to-date mirror",
            )
    progress(f"{request.suite}: InRelease verified ({release.date})")
    packages: dict[str, tuple[LockedPackage, ...]] = {}
    for arch in request.architectures:
        index = fetch_index(
            fetcher,
            request.mirror,
            release,
            request.components,
            arch,
            cache=cache,
            limits=limits,
            progress=progress,
        )
        result = resolve(index, request.packages, request.exclude)
        packages[arch] = tuple(
            LockedPackage(
                name=c.record.name,
                version=c.record.version,
                architecture=c.record.architecture,
                source=c.record.source,
                source_version=c.record.source_version,
                filename=c.record.filename,
                size=c.record.size,
                sha256=c.record.sha256,
                maintainer=c.record.maintainer,
                reason=c.reason,
            )
            for c in result.choices
        )
        progress(f"{arch}: {len(result.choices)} packages resolved from {len(index)} in the index")
    return DebianLock(
        request=request,
        release_date=release.date,
        release_version=release.version,
        inrelease_sha256=release.inrelease_sha256,
        packages=packages,
    )


def check_lock(lock: DebianLock, request: LockRequest, *, source: str) -> None:
    """Refuse a lock that does not answer ``request`` (naming every difference)."""
    diffs = lock.request.differences(request)
    if diffs:
        raise StaleLockError(
            f"{source}: the lock is stale: the manifest's debian source changed ({'; '.join(diffs)})",
            hint="run kiln lock on the manifest, or build with --update-lock",
        )


def why(lock: DebianLock, name: str, architecture: str | None = None) -> list[str]:
    """The chain of reasons from a requested package down to ``name``."""
    arch = architecture or (lock.request.architectures[0] if lock.request.architectures else "amd64")
    by_name = {p.name: p for p in lock.packages.get(arch, ())}
    if name not in by_name:
        raise KilnError(f"{name} is not in the lock ({arch})", hint="kiln lock --why names a locked package")
    lines: list[str] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None and current not in seen:
        seen.add(current)
        pkg = by_name[current]
        lines.append(f"{pkg.name} {pkg.version}: {pkg.reason}")
        parent = pkg.reason.split(" ", 1)[0] if pkg.reason != "requested" else None
        current = parent if parent in by_name else None
    return lines
