"""What an image was made of, for its SBOM and provenance.

Every regular file taken from the host becomes an :class:`~builder.attestations.Input` with the
sha256 of the bytes that went into the image and, for closure and tree inputs, the Debian package
that ships it when dpkg knows. Paths of ``files`` inputs are kept relative to the manifest's
directory, so the records (and the image) do not depend on where the checkout lives.

Package owners come from :class:`builder.dpkg.OwnerLookup`: dpkg's lists are indexed once per
machine and dpkg state, and a directory dpkg ships nothing in costs one set lookup.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from builder.attestations import Input, SbomPackage, timestamp
from builder.dpkg import OwnerLookup
from builder.records import write_provenance, write_spdx
from builder.tarwriter import FileRecord, Sink
from builder.tree import Entry, EntryKind
from manifests.digest import Digest
from manifests.image import DEBIAN_SYSROOT, ClosureSource, ImageManifest
from manifests.version import VERSION as _kiln_version

__all__ = ["OwnerLookup", "collect_inputs", "write_attestations", "manifest_digest"]

_ORIGIN = re.compile(r"^contents\[(\d+)\]\.(files|tree|closure)\b")


def _input_uri(host: str | Path, kind: str, base_dir: Path) -> str:
    if kind == "files":
        with contextlib.suppress(ValueError):
            return Path(os.path.relpath(host, base_dir)).as_posix()
    return os.fspath(host)  # a POSIX path already (the same string for a walk's entries)


def collect_inputs(
    manifest: ImageManifest,
    entries: Iterable[Entry],
    files: Sequence[FileRecord],
    owners: OwnerLookup,
) -> tuple[Input, ...]:
    """One Input per host file that went into the image (deduplicated, sorted)."""
    digests = {f.path: f.sha256 for f in files}
    base = Path(manifest.base_dir).resolve()
    # Per contents item: its kind and the sysroot to ask dpkg in (None: none), or None to skip it.
    items: dict[str, tuple[str, Path | None] | None] = {}
    root = Path("/")
    found: list[Input] = []
    for entry in entries:
        if entry.kind is not EntryKind.FILE or entry.host_path is None:
            continue
        digest = digests.get(entry.path)
        if digest is None:
            continue
        if entry.origin not in items:
            items[entry.origin] = _input_kind(manifest, entry.origin, root)
        how = items[entry.origin]
        if how is None:
            continue
        kind, sysroot = how
        package = owners.owner(entry.host_path, sysroot) if sysroot is not None else None
        found.append(
            Input(kind=kind, uri=_input_uri(entry.host_path, kind, base), sha256=digest.hex, package=package)
        )
    owners.save()
    found.sort(key=lambda i: (i.kind, i.uri, i.sha256))  # stable: the first of equals stays first
    unique: list[Input] = []
    for i in found:  # one Input per (kind, uri, sha256)
        if not unique or (unique[-1].kind, unique[-1].uri, unique[-1].sha256) != (i.kind, i.uri, i.sha256):
            unique.append(i)
    return tuple(unique)


def _input_kind(manifest: ImageManifest, origin: str, root: Path) -> tuple[str, Path | None] | None:
    """The input kind of the contents item ``origin`` names and the sysroot dpkg answers for, or
    ``None`` for items whose files are not inputs (generated, or a pinned Debian package's)."""
    m = _ORIGIN.match(origin)
    if m is None:
        return None
    kind = m.group(2)
    item = manifest.contents[int(m.group(1))]
    if getattr(item, "sysroot", None) == DEBIAN_SYSROOT:
        return None  # a pinned package's file: builder.debian.sbom records it with its package
    if kind == "closure" and isinstance(item, ClosureSource):
        return kind, Path(item.sysroot)
    if kind == "tree":
        return kind, root
    return kind, None


def manifest_digest(manifest: ImageManifest) -> Digest:
    """sha256 of the manifest file as written (what the provenance names as the build's input)."""
    try:
        return Digest.of(Path(manifest.source).read_bytes())
    except OSError:
        return Digest.of(manifest.source.encode("utf-8"))


def write_attestations(
    manifest: ImageManifest,
    sbom: Sink,
    provenance: Sink,
    *,
    image_digest: Digest,
    files: Sequence[FileRecord],
    inputs: Sequence[Input],
    source_date_epoch: int,
    reference: str | None = None,
    packages: Sequence[SbomPackage] = (),
) -> None:
    """Write the SBOM (a bare SPDX 2.3 document) into ``sbom`` and the SLSA provenance (an in-toto
    statement) into ``provenance``, as canonical JSON streams (:mod:`builder.records`):
    deterministic for the same image and inputs.

    ``reference`` (default ``name:version``) is the provenance's subject name, and the name
    ``kiln attest`` gives the SBOM's statement, so both name the image alike. ``packages`` adds
    packages the SBOM lists beside those dpkg named (the Debian lock's hook)."""
    arch = manifest.platform.architecture
    write_spdx(
        sbom,
        manifest.name,
        manifest.version,
        image_digest,
        files,
        inputs,
        timestamp(source_date_epoch),
        tool_version=_kiln_version,
        packages=packages,
        arch=arch,
    )
    write_provenance(
        provenance,
        reference or f"{manifest.name}:{manifest.version}",
        image_digest,
        manifest_digest(manifest),
        inputs,
        _kiln_version,
        source_date_epoch=source_date_epoch or None,
        manifest_uri=Path(manifest.source).name,
        arch=arch,
    )
