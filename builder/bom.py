"""What an image was made of, for its SBOM and provenance.

Every regular file taken from the host becomes an :class:`~builder.attestations.Input` with the
sha256 of the bytes that went into the image and, for closure and tree inputs, the Debian package
that ships it when dpkg knows. Paths of ``files`` inputs are kept relative to the manifest's
directory, so the records (and the image) do not depend on where the checkout lives.

Looking up package owners means reading every ``/var/lib/dpkg/info/*.list`` (about half a second
here), so answers are cached beside the build cache, keyed by the identity of dpkg's ``status``
file (which dpkg rewrites on every install or removal): an unchanged rebuild reads nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from builder.attestations import FileRecord as SpdxFile
from builder.attestations import Input, SbomPackage, slsa_provenance, spdx_document, timestamp
from builder.dpkg import DpkgIndex
from builder.tarwriter import FileRecord
from builder.tree import Entry, EntryKind
from manifests.atomic import atomic_write
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.image import DEBIAN_SYSROOT, ClosureSource, ImageManifest
from manifests.version import VERSION as _kiln_version

__all__ = ["OwnerLookup", "collect_inputs", "attestation_documents", "manifest_digest"]

_ORIGIN = re.compile(r"^contents\[(\d+)\]\.(files|tree|closure)\b")
_MAX_OWNER_CACHE = 16 * 1024 * 1024


class OwnerLookup:
    """Host path -> owning Debian package, per sysroot, with an optional persistent cache."""

    def __init__(self, cache_dir: Path | None) -> None:
        self._cache_dir = cache_dir
        self._tables: dict[str, tuple[Path | None, dict[str, str | None], DpkgIndex]] = {}
        self._dirty: set[str] = set()
        self._real: dict[Path, str] = {}  # sysroot as given -> its real path (asked per file)

    def _key(self, sysroot: Path) -> str:
        key = self._real.get(sysroot)
        if key is None:
            key = self._real[sysroot] = os.path.realpath(sysroot)
        return key

    def _table(self, sysroot: Path) -> tuple[Path | None, dict[str, str | None], DpkgIndex]:
        key = self._key(sysroot)
        if key in self._tables:
            return self._tables[key]
        answers: dict[str, str | None] = {}
        path: Path | None = None
        if self._cache_dir is not None:
            try:
                st = os.stat(Path(key) / "var/lib/dpkg/status")
                ident = f"{key}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                ident = f"{key}\0no-dpkg"
            path = self._cache_dir / "dpkg-owners" / f"{hashlib.sha256(ident.encode()).hexdigest()}.json"
            with contextlib.suppress(OSError, ValueError):
                if path.stat().st_size <= _MAX_OWNER_CACHE:
                    loaded = json.loads(path.read_bytes())
                    if isinstance(loaded, dict):
                        answers = {
                            k: v
                            for k, v in loaded.items()
                            if isinstance(k, str) and isinstance(v, str | None)
                        }
        table = (path, answers, DpkgIndex(Path(key)))
        self._tables[key] = table
        return table

    def prefetch(self, host_paths: Iterable[Path], sysroot: Path) -> None:
        """Answer many paths with one pass over dpkg's lists (the misses only)."""
        _, answers, index = self._table(sysroot)
        missing: dict[str, str] = {}
        for host_path in host_paths:
            name = str(host_path)
            if name not in answers and name not in missing:
                image_path = index.image_path_of(host_path)
                if image_path is None:
                    answers[name] = None
                else:
                    missing[name] = image_path
        if missing:
            found = index.owning_packages(missing.values())
            for name, image_path in missing.items():
                answers[name] = found[image_path]
            self._dirty.add(self._key(sysroot))

    def owner(self, host_path: Path, sysroot: Path) -> str | None:
        _, answers, index = self._table(sysroot)
        name = str(host_path)
        if name not in answers:
            answers[name] = index.owning_package_of_host_path(host_path)
            self._dirty.add(self._key(sysroot))
        return answers[name]

    def save(self) -> None:
        """Persist new answers; a cache that cannot be written only costs time."""
        for key in sorted(self._dirty):
            path, answers, _ = self._tables[key]
            if path is None:
                continue
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, canonical_json(answers), durable=False)
        self._dirty.clear()


def _input_uri(host: Path, kind: str, base_dir: Path) -> str:
    if kind == "files":
        with contextlib.suppress(ValueError):
            return Path(os.path.relpath(host, base_dir)).as_posix()
    return host.as_posix()


def collect_inputs(
    manifest: ImageManifest,
    entries: Iterable[Entry],
    files: Sequence[FileRecord],
    owners: OwnerLookup,
) -> tuple[Input, ...]:
    """One Input per host file that went into the image (deduplicated, sorted)."""
    digests = {f.path: f.sha256 for f in files}
    base = Path(manifest.base_dir).resolve()
    taken: list[tuple[Entry, str, Path | None]] = []  # entry, kind, sysroot to ask dpkg in
    for entry in entries:
        if entry.kind is not EntryKind.FILE or entry.host_path is None or entry.path not in digests:
            continue
        m = _ORIGIN.match(entry.origin)
        if m is None:
            continue
        kind = m.group(2)
        item = manifest.contents[int(m.group(1))]
        if getattr(item, "sysroot", None) == DEBIAN_SYSROOT:
            continue  # a pinned package's file: builder.debian.sbom records it with its package
        sysroot: Path | None = None
        if kind == "closure" and isinstance(item, ClosureSource):
            sysroot = Path(item.sysroot)
        elif kind == "tree":
            sysroot = Path("/")
        taken.append((entry, kind, sysroot))
    by_sysroot: dict[Path, list[Path]] = {}
    for entry, _, sysroot in taken:
        if sysroot is not None and entry.host_path is not None:
            by_sysroot.setdefault(sysroot, []).append(entry.host_path)
    for sysroot, paths in by_sysroot.items():
        owners.prefetch(paths, sysroot)
    seen: dict[tuple[str, str, str], Input] = {}
    for entry, kind, sysroot in taken:
        assert entry.host_path is not None  # noqa: S101 - filtered above
        package = owners.owner(entry.host_path, sysroot) if sysroot is not None else None
        uri = _input_uri(entry.host_path, kind, base)
        sha = digests[entry.path].hex
        seen.setdefault((kind, uri, sha), Input(kind=kind, uri=uri, sha256=sha, package=package))
    owners.save()
    return tuple(seen[k] for k in sorted(seen))


def manifest_digest(manifest: ImageManifest) -> Digest:
    """sha256 of the manifest file as written (what the provenance names as the build's input)."""
    try:
        return Digest.of(Path(manifest.source).read_bytes())
    except OSError:
        return Digest.of(manifest.source.encode("utf-8"))


def attestation_documents(
    manifest: ImageManifest,
    *,
    image_digest: Digest,
    files: Sequence[FileRecord],
    inputs: Sequence[Input],
    source_date_epoch: int,
    reference: str | None = None,
    packages: Sequence[SbomPackage] = (),
) -> tuple[bytes, bytes]:
    """The SBOM (a bare SPDX 2.3 document) and the SLSA provenance (an in-toto statement), as
    canonical JSON: deterministic for the same image and inputs.

    ``reference`` (default ``name:version``) is the provenance's subject name, and the name
    ``kiln attest`` gives the SBOM's statement, so both name the image alike. ``packages`` adds
    packages the SBOM lists beside those dpkg named (the Debian lock's hook)."""
    arch = manifest.platform.architecture
    spdx_files = [SpdxFile(path=f.path, sha256=f.sha256.hex, size=f.size, sha1=f.sha1) for f in files]
    sbom = spdx_document(
        manifest.name,
        manifest.version,
        image_digest,
        spdx_files,
        inputs,
        timestamp(source_date_epoch),
        tool_version=_kiln_version,
        packages=packages,
        arch=arch,
    )
    provenance = slsa_provenance(
        reference or f"{manifest.name}:{manifest.version}",
        image_digest,
        manifest_digest(manifest),
        inputs,
        _kiln_version,
        source_date_epoch=source_date_epoch or None,
        manifest_uri=Path(manifest.source).name,
        arch=arch,
    )
    return canonical_json(sbom), canonical_json(provenance)
