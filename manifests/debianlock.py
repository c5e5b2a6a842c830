"""The Debian lockfile: what ``kiln lock`` resolved, and the only thing ``kiln build`` reads.

A lock sits beside its image manifest (``python-web.yaml`` -> ``python-web.lock``). It records the
request it answers (suite, mirror, components, packages, exclude), the archive state it was
resolved from (the Release ``Date`` and the sha256 of the InRelease file whose signature was
verified), and per architecture every resolved package: name, version, architecture, source
package and version, the archive path, size and sha256, the maintainer (the SBOM's supplier) and
why it was chosen.

The file is JSON with sorted keys and two-space indentation (diffs read well in review); it is
written by :meth:`DebianLock.to_bytes` only, and read back by :meth:`DebianLock.from_bytes` with a
size cap and a typed error for every malformed field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from manifests.errors import DocumentError

__all__ = ["MAX_LOCK_BYTES", "LOCK_KIND", "LockRequest", "LockedPackage", "DebianLock", "LockError"]

MAX_LOCK_BYTES = 16 << 20
LOCK_KIND = "DebianLock"
LOCK_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*\Z")
_ARCH = re.compile(r"[a-z0-9][a-z0-9-]*\Z")


class LockError(DocumentError):
    """A lockfile is malformed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LockRequest:
    """What the manifest asked for; a lock answers exactly one request."""

    suite: str
    mirror: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ("amd64",)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "mirror": self.mirror,
            "components": list(self.components),
            "packages": list(self.packages),
            "exclude": list(self.exclude),
            "architectures": list(self.architectures),
        }

    def differences(self, other: LockRequest) -> list[str]:
        """What changed from ``self`` (the lock's) to ``other`` (the manifest's), in words."""
        out: list[str] = []
        for key in ("suite", "mirror"):
            a, b = getattr(self, key), getattr(other, key)
            if a != b:
                out.append(f"{key} {a} -> {b}")
        for key in ("components", "packages", "exclude", "architectures"):
            a, b = set(getattr(self, key)), set(getattr(other, key))
            if b - a:
                out.append(f"{key} added: {', '.join(sorted(b - a))}")
            if a - b:
                out.append(f"{key} removed: {', '.join(sorted(a - b))}")
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class LockedPackage:
    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    filename: str
    size: int
    sha256: str
    maintainer: str = ""
    reason: str = "requested"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "source": self.source,
            "source_version": self.source_version,
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "maintainer": self.maintainer,
            "reason": self.reason,
        }

    def purl(self, distro: str) -> str:
        """The package URL (purl-spec ``deb`` type), e.g.
        ``pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12``."""
        from urllib.parse import quote

        version = quote(self.version, safe=".-~:")
        return f"pkg:deb/debian/{self.name}@{version}?arch={self.architecture}&distro={distro}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DebianLock:
    request: LockRequest
    release_date: str  # the Release file's Date field, as written
    release_version: str  # the Release file's Version field (e.g. 12.15), "" if none
    inrelease_sha256: str
    packages: Mapping[str, tuple[LockedPackage, ...]]  # architecture -> packages sorted by name

    @property
    def distro(self) -> str:
        """``debian-12`` from the Release version (purl qualifier), or ``debian-<suite>``."""
        major = self.release_version.split(".", 1)[0]
        return f"debian-{major}" if major.isdigit() else f"debian-{self.request.suite}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": LOCK_KIND,
            "lockVersion": LOCK_VERSION,
            "request": self.request.to_dict(),
            "release": {
                "date": self.release_date,
                "version": self.release_version,
                "inrelease_sha256": self.inrelease_sha256,
            },
            "packages": {
                arch: [p.to_dict() for p in sorted(pkgs, key=lambda p: p.name)]
                for arch, pkgs in sorted(self.packages.items())
            },
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "lockfile") -> DebianLock:
        if len(data) > MAX_LOCK_BYTES:
            raise LockError(f"{source}: larger than {MAX_LOCK_BYTES} bytes")
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise LockError(f"{source}: not JSON: {exc}", hint="regenerate it with kiln lock") from exc
        return cls.from_dict(raw, source=source)

    @classmethod
    def from_dict(cls, raw: object, *, source: str = "lockfile") -> DebianLock:
        r = _Reader(source)
        d = r.mapping(raw, "")
        if d.get("kind") != LOCK_KIND or d.get("lockVersion") != LOCK_VERSION:
            raise LockError(
                f"{source}: not a kiln Debian lock (kind {LOCK_KIND}, lockVersion {LOCK_VERSION})",
                hint="regenerate it with kiln lock",
            )
        req = r.mapping(d.get("request"), "request")
        request = LockRequest(
            suite=r.text(req.get("suite"), "request.suite"),
            mirror=r.text(req.get("mirror"), "request.mirror"),
            components=r.texts(req.get("components"), "request.components"),
            packages=r.texts(req.get("packages"), "request.packages"),
            exclude=r.texts(req.get("exclude"), "request.exclude"),
            architectures=r.texts(req.get("architectures"), "request.architectures"),
        )
        rel = r.mapping(d.get("release"), "release")
        inrelease = r.text(rel.get("inrelease_sha256"), "release.inrelease_sha256")
        if not _HEX64.match(inrelease):
            raise LockError(f"{source}: release.inrelease_sha256: not 64 lowercase hex digits")
        packages: dict[str, tuple[LockedPackage, ...]] = {}
        for arch, items in r.mapping(d.get("packages"), "packages").items():
            if not _ARCH.match(arch):
                raise LockError(f"{source}: packages: invalid architecture {arch[:40]!r}")
            where = f"packages.{arch}"
            if not isinstance(items, list):
                raise LockError(f"{source}: {where}: expected a list")
            out = []
            for i, item in enumerate(items):
                out.append(r.package(item, f"{where}[{i}]"))
            packages[arch] = tuple(out)
        return cls(
            request=request,
            release_date=r.text(rel.get("date"), "release.date"),
            release_version=r.text(rel.get("version", ""), "release.version"),
            inrelease_sha256=inrelease,
            packages=packages,
        )


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> LockError:
        return LockError(
            f"{self.source}: {where or 'document'}: {message}", hint="regenerate it with kiln lock"
        )

    def mapping(self, value: object, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "expected a mapping")
        return value

    def text(self, value: object, where: str) -> str:
        if not isinstance(value, str) or len(value) > 4096:
            raise self.fail(where, "expected a string")
        return value

    def texts(self, value: object, where: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(where, "expected a list of strings")
        return tuple(self.text(v, f"{where}[{i}]") for i, v in enumerate(value))

    def package(self, value: object, where: str) -> LockedPackage:
        d = self.mapping(value, where)
        name = self.text(d.get("name"), f"{where}.name")
        if not _NAME.match(name):
            raise self.fail(f"{where}.name", f"invalid package name {name[:60]!r}")
        filename = self.text(d.get("filename"), f"{where}.filename")
        if filename.startswith("/") or ".." in filename.split("/") or not filename.endswith(".deb"):
            raise self.fail(f"{where}.filename", f"not a pool path of a .deb: {filename[:80]!r}")
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 40:
            raise self.fail(f"{where}.size", "expected a byte count")
        sha = self.text(d.get("sha256"), f"{where}.sha256")
        if not _HEX64.match(sha):
            raise self.fail(f"{where}.sha256", "not 64 lowercase hex digits")
        return LockedPackage(
            name=name,
            version=self.text(d.get("version"), f"{where}.version"),
            architecture=self.text(d.get("architecture"), f"{where}.architecture"),
            source=self.text(d.get("source"), f"{where}.source"),
            source_version=self.text(d.get("source_version"), f"{where}.source_version"),
            filename=filename,
            size=size,
            sha256=sha,
            maintainer=self.text(d.get("maintainer", ""), f"{where}.maintainer"),
            reason=self.text(d.get("reason", ""), f"{where}.reason"),
        )
