"""Reading a Debian archive with its trust chain: InRelease -> Packages -> .deb.

1. ``dists/SUITE/InRelease`` is verified with ``gpgv`` against the archive keyring (Debian's
   ``debian-archive-keyring`` by default). The Release text kiln reads is what ``gpgv`` wrote as
   the signed content, never the clear-signed file itself, so nothing outside the signature is
   ever read. TLS is not part of the trust: plain http mirrors are fine.
2. Each ``COMPONENT/binary-ARCH/Packages{.xz,.gz,}`` is fetched (by hash when the Release offers
   ``Acquire-By-Hash``) and must have the size and sha256 the Release lists.
3. Each .deb must have the size and sha256 of its Packages stanza (``kiln lock``) or of the lock
   (``kiln build``); :mod:`builder.debian.cache` enforces that while it downloads.

A refusal is a :class:`~manifests.errors.VerificationError` whose message names the stage
(``InRelease``, ``Packages index``, ``.deb``). What fetches is a :class:`Fetcher`; the real one
(:class:`HttpFetcher`) uses ``urllib`` with caps on size and time.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from builder.debian.index import PackageIndex, parse_stanza
from manifests.errors import UnavailableError, VerificationError
from manifests.vocabulary import Reason

__all__ = [
    "DEFAULT_KEYRING",
    "DEFAULT_MIRROR",
    "DebianLimits",
    "DEFAULT_LIMITS",
    "Fetcher",
    "HttpFetcher",
    "Release",
    "verify_inrelease",
    "fetch_release",
    "fetch_index",
]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class DebianLimits:
    """Caps on what an archive may send (one place, documented defaults)."""

    max_inrelease: int = 16 << 20
    max_index: int = 256 << 20  # a compressed Packages file
    max_index_text: int = 1 << 30  # ... and once decompressed
    max_deb: int = 2 << 30
    max_deb_unpacked: int = 8 << 30  # uncompressed bytes of one .deb's data.tar
    max_entries: int = 200_000  # tar members of one .deb
    timeout: float = 60.0  # seconds without progress on one connection


DEFAULT_LIMITS = DebianLimits()


class Fetcher(Protocol):
    """What downloads: ``fetch(url, sink, limit)`` writes at most ``limit`` bytes to ``sink``."""

    def fetch(self, url: str, sink: BinaryIO, *, limit: int) -> None: ...


class HttpFetcher:
    """http(s) through urllib; every refusal of the network is :class:`UnavailableError`."""

    def __init__(self, limits: DebianLimits = DebianLimits()) -> None:
        self.limits = limits

    def fetch(self, url: str, sink: BinaryIO, *, limit: int) -> None:
        if not url.startswith(("http://", "https://")):
            raise UnavailableError(f"{url}: only http and https mirrors are supported")
        req = urllib.request.Request(url, headers={"User-Agent": "kiln"})  # noqa: S310 - scheme checked
        try:
            with urllib.request.urlopen(req, timeout=self.limits.timeout) as resp:  # noqa: S310
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise UnavailableError(f"{url}: {length} bytes is more than the cap of {limit}")
                got = 0
                while chunk := resp.read(_CHUNK):
                    got += len(chunk)
                    if got > limit:
                        raise UnavailableError(f"{url}: more than the cap of {limit} bytes")
                    sink.write(chunk)
        except urllib.error.HTTPError as exc:
            raise UnavailableError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UnavailableError(f"{url}: {reason}", hint="is the mirror reachable?") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """The verified Release text of a suite and what kiln uses from it."""

    suite: str
    codename: str
    version: str
    date: str
    by_hash: bool
    sha256: dict[str, tuple[int, str]]  # path under dists/SUITE -> (size, sha256)
    inrelease_sha256: str


def fetch_bytes(fetcher: Fetcher, url: str, limit: int) -> bytes:
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as tmp:
        fetcher.fetch(url, tmp, limit=limit)  # type: ignore[arg-type]
        tmp.seek(0)
        return tmp.read()


def verify_inrelease(data: bytes, keyring: Path) -> str:
    """The signed text of an InRelease file whose signature ``gpgv`` verifies with ``keyring``."""
    gpgv = shutil.which("gpgv")
    if gpgv is None:
        raise UnavailableError("gpgv is not installed", hint="apt-get install gpgv")
    if not keyring.is_file():
        raise UnavailableError(f"{keyring}: no such keyring", hint="apt-get install debian-archive-keyring")
    with tempfile.TemporaryDirectory(prefix="kiln-gpgv-") as tmp:
        signed = Path(tmp) / "InRelease"
        out = Path(tmp) / "Release"
        signed.write_bytes(data)
        proc = subprocess.run(
            [gpgv, "--quiet", "--keyring", str(keyring), "--output", str(out), str(signed)],
            capture_output=True,
            timeout=60,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "GNUPGHOME": tmp},
        )
        if proc.returncode != 0:
            said = " ".join(proc.stderr.decode("utf-8", "replace").split())[:300]
            raise VerificationError(
                f"InRelease: the signature does not verify with {keyring}: {said}",
                reason=Reason.SIGNATURE,
                hint="the archive or something between it and you is not what the keyring trusts",
            )
        return out.read_bytes().decode("utf-8", "replace")


def release_time(text: str, what: str) -> datetime:
    """A Release date field (RFC 2822, UTC) as an aware datetime; refused when unreadable."""
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        when = None
    if when is None or when.tzinfo is None:
        raise VerificationError(f"InRelease: {what} {text[:60]!r} is not a date", reason=Reason.SIGNATURE)
    return when


def _release(text: str, inrelease_sha256: str, suite: str, now: datetime) -> Release:
    fields = parse_stanza(text)
    codename, name = fields.get("Codename", ""), fields.get("Suite", "")
    if suite not in (codename, name):
        raise VerificationError(
            f"InRelease: signed for suite {name or '?'} ({codename or '?'}), not {suite}",
            reason=Reason.SIGNATURE,
            hint="a mirror may not answer one suite with another's signed Release",
        )
    if "Valid-Until" in fields and release_time(fields["Valid-Until"], "Valid-Until") < now:
        raise VerificationError(
            f"InRelease: expired (Valid-Until {fields['Valid-Until']})",
            reason=Reason.EXPIRED,
            hint="the mirror serves an outdated Release (a freeze or replay); try another mirror",
        )
    release_time(fields.get("Date", ""), "Date")
    table: dict[str, tuple[int, str]] = {}
    for line in fields.get("SHA256", "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and len(parts[0]) == 64:
            table[parts[2]] = (int(parts[1]), parts[0].lower())
    return Release(
        suite=name,
        codename=codename,
        version=fields.get("Version", ""),
        date=fields.get("Date", ""),
        by_hash=fields.get("Acquire-By-Hash", "no") == "yes",
        sha256=table,
        inrelease_sha256=inrelease_sha256,
    )


def fetch_release(
    fetcher: Fetcher,
    mirror: str,
    suite: str,
    *,
    keyring: Path,
    limits: DebianLimits = DebianLimits(),
    now: datetime | None = None,
) -> Release:
    """Download ``dists/SUITE/InRelease`` and verify it (stage 1): signature, suite, dates."""
    data = fetch_bytes(fetcher, f"{mirror.rstrip('/')}/dists/{suite}/InRelease", limits.max_inrelease)
    text = verify_inrelease(data, keyring)
    return _release(text, hashlib.sha256(data).hexdigest(), suite, now or datetime.now(UTC))


def fetch_index(
    fetcher: Fetcher,
    mirror: str,
    release: Release,
    components: tuple[str, ...],
    architecture: str,
    *,
    cache: Path | None = None,
    limits: DebianLimits = DebianLimits(),
    progress: Callable[[str], None] = lambda _m: None,
) -> PackageIndex:
    """Every component's Packages index for ``architecture``, each verified against the Release
    (stage 2); verified indexes are kept in ``cache`` by sha256."""
    index = PackageIndex(architecture)
    base = f"{mirror.rstrip('/')}/dists/{release.codename or release.suite}"
    for component in components:
        stem = f"{component}/binary-{architecture}/Packages"
        choice = next((stem + ext for ext in (".xz", ".gz", "") if stem + ext in release.sha256), None)
        if choice is None:
            raise VerificationError(
                f"Packages index {stem}: not listed in the signed Release",
                reason=Reason.DIGEST,
                hint=f"does the suite have component {component} for {architecture}?",
            )
        size, sha = release.sha256[choice]
        if size > limits.max_index:
            raise UnavailableError(f"Packages index {choice}: {size} bytes is over the cap")
        data = _cached(cache, sha)
        if data is None:
            progress(f"fetching {choice} ({size} bytes)")
            data = None
            if release.by_hash:  # immune to the index changing between the Release and the fetch
                with contextlib.suppress(UnavailableError):
                    by_hash = f"{base}/{component}/binary-{architecture}/by-hash/SHA256/{sha}"
                    data = fetch_bytes(fetcher, by_hash, limits.max_index)
            if data is None:
                data = fetch_bytes(fetcher, f"{base}/{choice}", limits.max_index)
            got = hashlib.sha256(data).hexdigest()
            if len(data) != size or got != sha:
                raise VerificationError(
                    f"Packages index {choice}: sha256 {got} ({len(data)} bytes) does not match "
                    f"the signed Release ({sha}, {size} bytes)",
                    reason=Reason.DIGEST,
                    hint="the mirror served an index the archive did not sign",
                )
            _store(cache, sha, data)
        text = _decompress(data, choice, limits.max_index_text)
        index.add_text(text, where=f"Packages index {choice}")
    return index


def _decompress(data: bytes, name: str, limit: int) -> str:
    try:
        if name.endswith(".xz"):
            dec = lzma.LZMADecompressor()
            raw = dec.decompress(data, max_length=limit + 1)
        elif name.endswith(".gz"):
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                raw = gz.read(limit + 1)
        else:
            raw = data
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise VerificationError(
            f"Packages index {name}: cannot decompress: {exc}", reason=Reason.DIGEST
        ) from exc
    if len(raw) > limit:
        raise UnavailableError(f"Packages index {name}: more than {limit} bytes uncompressed")
    return raw.decode("utf-8", "replace")


def _cached(cache: Path | None, sha: str) -> bytes | None:
    if cache is None:
        return None
    path = cache / "sha256" / sha
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return data


def _store(cache: Path | None, sha: str, data: bytes) -> None:
    if cache is None:
        return
    from manifests.atomic import atomic_write

    with contextlib.suppress(OSError):
        (cache / "sha256").mkdir(parents=True, exist_ok=True)
        atomic_write(cache / "sha256" / sha, data, durable=False)
