"""The content-addressed download cache of .debs (and verified Packages indexes).

Layout: ``CACHE/sha256/<hex>``, one file per blob, written only after its bytes hashed to the
name (temp file in the same directory, then ``os.replace``): nothing unverified is ever where a
verified blob is expected. ``CACHE`` is ``$KILN_CACHE`` or ``~/.cache/kiln/debian``.

:func:`ensure_debs` brings every package of a lock into the cache (downloads run in a few threads:
the archive's latency dominates a cold build), or, ``offline``, refuses naming the first missing one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from builder.debian.archive import DEFAULT_LIMITS, DebianLimits, Fetcher
from manifests.debianlock import LockedPackage
from manifests.errors import UnavailableError, VerificationError
from manifests.vocabulary import Reason

__all__ = ["default_cache", "blob_path", "ensure_debs", "DOWNLOAD_THREADS"]

DOWNLOAD_THREADS = 6
_CHUNK = 1 << 20


def default_cache() -> Path:
    env = os.environ.get("KILN_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "kiln" / "debian"


def blob_path(cache: Path, sha256: str) -> Path:
    return cache / "sha256" / sha256


class _HashingSink:
    """Hashes what it writes; more bytes than the lock's size is refused at once."""

    def __init__(self, fh: BinaryIO, pkg: LockedPackage) -> None:
        self.fh = fh
        self.pkg = pkg
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.pkg.size:
            raise _mismatch(self.pkg, "more bytes than", self.size)
        self.h.update(data)
        return self.fh.write(data)


def _mismatch(pkg: LockedPackage, got: str, size: int) -> VerificationError:
    return VerificationError(
        f".deb {pkg.name} {pkg.version} ({pkg.filename}): {got} the lock pins "
        f"({pkg.sha256}, {pkg.size} bytes; received {size})",
        reason=Reason.DIGEST,
        hint="the mirror served a package the lock does not pin",
    )


def _present(cache: Path, pkg: LockedPackage) -> bool:
    try:
        return blob_path(cache, pkg.sha256).stat().st_size == pkg.size
    except OSError:
        return False


def _check(pkg: LockedPackage, sink: _HashingSink) -> None:
    got = sink.h.hexdigest()
    if got != pkg.sha256 or sink.size != pkg.size:
        raise _mismatch(pkg, f"sha256 {got} is not what", sink.size)


def download_deb(
    fetcher: Fetcher, mirror: str, pkg: LockedPackage, cache: Path, limits: DebianLimits = DEFAULT_LIMITS
) -> Path:
    """Download one .deb into the cache, verified against the lock's size and sha256 (stage 3)."""
    dest = blob_path(cache, pkg.sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".dl-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            sink = _HashingSink(fh, pkg)
            url = f"{mirror.rstrip('/')}/{pkg.filename}"
            try:
                fetcher.fetch(url, sink, limit=limits.max_deb)  # type: ignore[arg-type]
            except UnavailableError as exc:
                if "HTTP 404" not in exc.message:
                    raise
                raise UnavailableError(
                    f".deb {pkg.name} {pkg.version}: the mirror no longer has {pkg.filename}",
                    hint="archives drop superseded versions at point releases: run kiln lock on the "
                    "manifest again, or pin a snapshot mirror",
                ) from exc
        _check(pkg, sink)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


def ensure_debs(
    packages: Sequence[LockedPackage],
    *,
    cache: Path,
    mirror: str,
    fetcher: Fetcher | None,
    offline: bool = False,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, Path]:
    """sha256 -> cached .deb path for every package, downloading the missing ones."""
    missing = [p for p in packages if not _present(cache, p)]
    if missing and (offline or fetcher is None):
        names = ", ".join(f"{p.name} {p.version}" for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UnavailableError(
            f"offline, and the download cache {cache} lacks {names}{more}",
            hint="build once online (or run kiln lock) to fill the cache",
        )
    if missing:
        assert fetcher is not None  # noqa: S101 - checked above
        total = sum(p.size for p in missing)
        progress(f"downloading {len(missing)} packages ({total} bytes)")
        with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS, thread_name_prefix="kiln-deb") as pool:
            list(pool.map(lambda p: download_deb(fetcher, mirror, p, cache), missing))
    return {p.sha256: blob_path(cache, p.sha256) for p in packages}
