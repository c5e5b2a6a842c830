"""The build's SBOM (SPDX 2.3 JSON) and provenance (SLSA v1 in an in-toto Statement v1).

Pure functions: values in, JSON-ready dicts out. Deterministic by construction: SPDX ids and the
document namespace are derived from content hashes (no uuid4), lists are sorted, and no
wall-clock time appears unless the caller passes one derived from ``SOURCE_DATE_EPOCH``
(:func:`timestamp`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from manifests.canonical import canonical_json
from manifests.digest import Digest

__all__ = [
    "Input",
    "FileRecord",
    "SbomPackage",
    "debian_package",
    "STATEMENT_V1",
    "SLSA_PROVENANCE_V1",
    "SPDX_PREDICATE",
    "BUILD_TYPE",
    "BUILDER_ID",
    "timestamp",
    "spdx_document",
    "slsa_provenance",
    "in_toto_statement",
]

STATEMENT_V1 = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
SPDX_PREDICATE = "https://spdx.dev/Document"
BUILD_TYPE = "https://kiln.dev/build/v1"
BUILDER_ID = "https://kiln.dev/builder"
_NAMESPACE_BASE = "https://kiln.dev/spdx"


@dataclass(frozen=True, slots=True, kw_only=True)
class Input:
    """One build input: ``kind`` is ``file``, ``closure`` (an ELF closure member), ``package``
    or ``oci``; ``uri`` is its path or URI; ``package`` the host package it came from, if known."""

    kind: str
    uri: str
    sha256: str
    package: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRecord:
    """One file in the image. SPDX 2.3 asks for a SHA1 too; give it when it is known."""

    path: str
    sha256: str
    size: int
    sha1: str | None = None


def timestamp(source_date_epoch: int | None) -> str:
    """RFC 3339 UTC time for ``SOURCE_DATE_EPOCH`` (0 when unset: no wall clock)."""
    return datetime.fromtimestamp(source_date_epoch or 0, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _id(prefix: str, *parts: str) -> str:
    h = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:32]
    return f"SPDXRef-{prefix}-{h}"


def _files(files: Iterable[FileRecord | tuple[str, str, int]]) -> list[FileRecord]:
    out = [f if isinstance(f, FileRecord) else FileRecord(path=f[0], sha256=f[1], size=f[2]) for f in files]
    return sorted(out, key=lambda f: f.path)


@dataclass(frozen=True, slots=True, kw_only=True)
class SbomPackage:
    """A package whose files are in the image (a Debian package, for now), as the SBOM lists it.

    The hook for other inputs: the Debian lock adds its packages (with the ``.deb``'s sha256 and
    download location) through ``attestation_documents(..., packages=...)``.
    """

    name: str
    version: str | None = None
    purl: str | None = None
    download_location: str | None = None  # NOASSERTION when not known
    sha256: str | None = None  # of the package file itself, when kiln had it


def debian_package(owner: str, *, arch: str) -> SbomPackage:
    """An SbomPackage from dpkg's answer ``name[:arch][ version]`` for an installed host package."""
    head, _, version = owner.partition(" ")
    name, _, pkg_arch = head.partition(":")
    qualifiers = f"?arch={pkg_arch or arch}"
    purl = f"pkg:deb/debian/{name}" + (f"@{quote(version, safe='')}" if version else "") + qualifiers
    return SbomPackage(name=name, version=version or None, purl=purl)


def _verification_code(records: Sequence[FileRecord]) -> str:
    """SPDX 2.3 section 7.9: SHA1 over the sorted, concatenated SHA1s of the package's files."""
    sha1s = sorted(f.sha1 or "" for f in records)
    return hashlib.sha1("".join(sha1s).encode("ascii"), usedforsecurity=False).hexdigest()


def image_purl(name: str, version: str, image_digest: Digest) -> str:
    # purl-spec "oci": the name is the last path segment, the rest is repository_url.
    repo, _, last = name.rpartition("/")
    quals = [f"repository_url={quote(name, safe='/:')}"] if repo else []
    quals.append(f"tag={quote(version, safe='')}")
    return f"pkg:oci/{quote(last.lower(), safe='')}@sha256%3A{image_digest.hex}?{'&'.join(quals)}"


def spdx_document(  # noqa: PLR0917 - the agreed signature: (name, version, digest, files, inputs, created)
    name: str,
    version: str,
    image_digest: Digest,
    files: Sequence[FileRecord | tuple[str, str, int]],
    inputs: Sequence[Input],
    created: str,
    *,
    tool_version: str = "0",
    packages: Sequence[SbomPackage] = (),
    arch: str = "amd64",
) -> dict[str, Any]:
    """An SPDX 2.3 JSON document built with spdx-tools' model (ADR 0019).

    The image is the described package (``CONTAINER``, its manifest digest as checksum, a
    ``pkg:oci`` purl, ``filesAnalyzed`` with the verification code); it CONTAINS every file (SHA1
    and SHA256) and every package its files came from (Debian packages with a ``pkg:deb`` purl,
    ``filesAnalyzed: false``, so nothing is said to be *in* them). Host paths are not packages.
    """
    from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
    from spdx_tools.spdx.model import (
        Actor,
        ActorType,
        Checksum,
        ChecksumAlgorithm,
        CreationInfo,
        Document,
        ExternalPackageRef,
        ExternalPackageRefCategory,
        File,
        Package,
        PackagePurpose,
        PackageVerificationCode,
        Relationship,
        RelationshipType,
        SpdxNoAssertion,
    )

    def purl_ref(purl: str) -> ExternalPackageRef:
        return ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl)

    records = _files(files)
    image_id = "SPDXRef-Image"
    spdx_files = []
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, image_id)]
    for f in records:
        fid = _id("File", f.path)
        checksums = [Checksum(ChecksumAlgorithm.SHA256, f.sha256)]
        if f.sha1:
            checksums.insert(0, Checksum(ChecksumAlgorithm.SHA1, f.sha1))
        spdx_files.append(
            File(name="./" + f.path.lstrip("/"), spdx_id=fid, checksums=checksums, comment=f"size {f.size}")
        )
        relationships.append(Relationship(image_id, RelationshipType.CONTAINS, fid))
    image = Package(
        spdx_id=image_id,
        name=name,
        version=version,
        download_location=SpdxNoAssertion(),
        files_analyzed=True,
        verification_code=PackageVerificationCode(_verification_code(records)),
        checksums=[Checksum(ChecksumAlgorithm.SHA256, image_digest.hex)],
        external_references=[purl_ref(image_purl(name, version, image_digest))],
        primary_package_purpose=PackagePurpose.CONTAINER,
    )
    wanted: dict[str, SbomPackage] = {}
    for i in inputs:
        if i.package:
            pkg = debian_package(i.package, arch=arch)
            wanted.setdefault(pkg.purl or pkg.name, pkg)
    for pkg in packages:
        wanted[pkg.purl or pkg.name] = pkg  # the caller's record (a lock's) knows more than dpkg
    spdx_packages = [image]
    for key, pkg in sorted(wanted.items()):
        pid = _id("Package", key)
        spdx_packages.append(
            Package(
                spdx_id=pid,
                name=pkg.name,
                version=pkg.version,
                download_location=pkg.download_location or SpdxNoAssertion(),
                files_analyzed=False,
                supplier=SpdxNoAssertion(),
                checksums=[Checksum(ChecksumAlgorithm.SHA256, pkg.sha256)] if pkg.sha256 else [],
                external_references=[purl_ref(pkg.purl)] if pkg.purl else [],
                primary_package_purpose=PackagePurpose.LIBRARY,
            )
        )
        relationships.append(Relationship(image_id, RelationshipType.CONTAINS, pid))
    content = hashlib.sha256(
        canonical_json(
            [name, version, str(image_digest), [f.path + f.sha256 for f in records], sorted(wanted)]
        )
    ).hexdigest()
    info = CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id="SPDXRef-DOCUMENT",
        name=f"{name}-{version}",
        document_namespace=f"{_NAMESPACE_BASE}/{quote(name, safe='')}-{quote(version, safe='')}-{content}",
        creators=[Actor(ActorType.TOOL, f"kiln-{tool_version}")],
        created=_parse_time(created),
        data_license="CC0-1.0",
    )
    document = Document(
        creation_info=info, packages=spdx_packages, files=spdx_files, relationships=relationships
    )
    result: dict[str, Any] = DocumentConverter().convert(document)
    return result


def _parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(0, tz=UTC)


def in_toto_statement(
    predicate_type: str, predicate: Mapping[str, Any], subject: Sequence[tuple[str, Digest]]
) -> dict[str, Any]:
    """An in-toto Statement v1 about ``subject`` (name, digest) pairs, built and validated with
    in-toto-attestation's Statement (ADR 0019)."""
    if not subject:
        raise ValueError("an in-toto statement needs at least one subject")
    from google.protobuf import json_format
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    subjects = [ResourceDescriptor(name=n, digest={"sha256": d.hex}).pb for n, d in subject]
    statement = Statement(subjects, predicate_type, dict(predicate))
    statement.validate()
    result: dict[str, Any] = json_format.MessageToDict(statement.pb, preserving_proto_field_name=False)
    # The predicate went through a protobuf Struct, which only has doubles: give back the caller's
    # values (same JSON text for strings and objects, and integers stay integers).
    result["predicate"] = dict(predicate)
    return result


def dependency(i: Input, arch: str) -> dict[str, Any]:
    """A resolvedDependencies entry: a URI for what has one, the path a person knows as ``name``."""
    d: dict[str, Any] = {"name": i.uri, "digest": {"sha256": i.sha256}, "annotations": {"kind": i.kind}}
    if i.uri.startswith("/"):
        d["uri"] = PurePosixPath(i.uri).as_uri()  # a host file: file:///usr/lib/...
    elif "://" in i.uri or i.uri.startswith("pkg:"):
        d["uri"] = i.uri
    # else: a file of the checkout, relative to the manifest (no absolute URI without the checkout
    # path, which would make the record differ between checkouts): name and digest identify it.
    if i.package:
        d["annotations"]["package"] = i.package
        purl = debian_package(i.package, arch=arch).purl
        if purl:
            d["annotations"]["purl"] = purl
    return d


def provenance_predicate(
    subject_digest: Digest,
    manifest_digest: Digest,
    builder_version: str,
    deps: list[Any],
    *,
    source_date_epoch: int | None,
    manifest_uri: str,
) -> dict[str, Any]:
    """The SLSA v1 provenance predicate around ``deps`` (its resolvedDependencies), unchecked:
    :func:`slsa_provenance` and the streamed writer in builder.records both build it here."""
    run: dict[str, Any] = {"builder": {"id": BUILDER_ID, "version": {"kiln": builder_version}}}
    metadata: dict[str, Any] = {
        "invocationId": hashlib.sha256(
            canonical_json([str(manifest_digest), str(subject_digest), builder_version])
        ).hexdigest()
    }
    if source_date_epoch is not None:
        metadata["startedOn"] = metadata["finishedOn"] = timestamp(source_date_epoch)
    run["metadata"] = metadata
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "manifest": {"uri": manifest_uri, "digest": {"sha256": manifest_digest.hex}},
            },
            "resolvedDependencies": deps,
        },
        "runDetails": run,
    }


def slsa_provenance(
    subject_name: str,
    subject_digest: Digest,
    manifest_digest: Digest,
    inputs: Sequence[Input],
    builder_version: str,
    *,
    source_date_epoch: int | None = None,
    manifest_uri: str = "kiln.yaml",
    arch: str = "amd64",
) -> dict[str, Any]:
    """A SLSA provenance v1 statement for the image. ``startedOn``/``finishedOn`` only when
    ``SOURCE_DATE_EPOCH`` is given (both are that time). The predicate is checked against
    in-toto-attestation's SLSA v1 Provenance message (unknown fields refused) before it is used."""
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2

    deps = [dependency(i, arch) for i in sorted(inputs, key=lambda i: (i.uri, i.sha256, i.kind))]
    predicate = provenance_predicate(
        subject_digest,
        manifest_digest,
        builder_version,
        deps,
        source_date_epoch=source_date_epoch,
        manifest_uri=manifest_uri,
    )
    json_format.ParseDict(predicate, provenance_pb2.Provenance(), ignore_unknown_fields=False)
    return in_toto_statement(SLSA_PROVENANCE_V1, predicate, [(subject_name, subject_digest)])
