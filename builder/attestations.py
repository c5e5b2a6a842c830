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
from typing import Any

from manifests.canonical import canonical_json
from manifests.digest import Digest

__all__ = [
    "Input",
    "FileRecord",
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


def spdx_document(  # noqa: PLR0917 - the agreed signature: (name, version, digest, files, inputs, created)
    name: str,
    version: str,
    image_digest: Digest,
    files: Sequence[FileRecord | tuple[str, str, int]],
    inputs: Sequence[Input],
    created: str,
    *,
    tool_version: str = "0",
) -> dict[str, Any]:
    """An SPDX 2.3 JSON document: the image package, every file (sha256), every input, and the
    host packages inputs came from."""
    records = _files(files)
    ins = sorted(inputs, key=lambda i: (i.kind, i.uri, i.sha256))
    image_id = "SPDXRef-Image"
    packages: list[dict[str, Any]] = [
        {
            "SPDXID": image_id,
            "name": name,
            "versionInfo": version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": image_digest.hex}],
            "primaryPackagePurpose": "CONTAINER",
        }
    ]
    relationships: list[dict[str, str]] = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id}
    ]
    spdx_files: list[dict[str, Any]] = []
    for f in records:
        fid = _id("File", f.path)
        checksums = [{"algorithm": "SHA256", "checksumValue": f.sha256}]
        if f.sha1:
            checksums.insert(0, {"algorithm": "SHA1", "checksumValue": f.sha1})
        spdx_files.append(
            {
                "SPDXID": fid,
                "fileName": "./" + f.path.lstrip("/"),
                "checksums": checksums,
                "comment": f"size {f.size}",
            }
        )
        relationships.append(
            {"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": fid}
        )
    host_packages: dict[str, str] = {}
    for i in ins:
        iid = _id("Input", i.kind, i.uri, i.sha256)
        pkg: dict[str, Any] = {
            "SPDXID": iid,
            "name": i.uri,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": i.sha256}],
            "comment": f"kiln input kind: {i.kind}",
        }
        if i.package:
            pkg["sourceInfo"] = f"from host package {i.package}"
            host_packages.setdefault(i.package, _id("HostPackage", i.package))
            relationships.append(
                {
                    "spdxElementId": host_packages[i.package],
                    "relationshipType": "CONTAINS",
                    "relatedSpdxElement": iid,
                }
            )
        packages.append(pkg)
        relationships.append(
            {"spdxElementId": image_id, "relationshipType": "GENERATED_FROM", "relatedSpdxElement": iid}
        )
    for pname, pid in sorted(host_packages.items()):
        packages.append(
            {
                "SPDXID": pid,
                "name": pname,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                "supplier": "NOASSERTION",
                "primaryPackagePurpose": "OPERATING-SYSTEM",
                "comment": "host package an input came from",
            }
        )
    content = hashlib.sha256(
        canonical_json([name, version, str(image_digest), [f.path + f.sha256 for f in records]])
    ).hexdigest()
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{name}-{version}",
        "documentNamespace": f"{_NAMESPACE_BASE}/{name}-{version}-{content}",
        "creationInfo": {"created": created, "creators": [f"Tool: kiln-{tool_version}"]},
        "packages": packages,
        "files": spdx_files,
        "relationships": relationships,
    }


def in_toto_statement(
    predicate_type: str, predicate: Mapping[str, Any], subject: Sequence[tuple[str, Digest]]
) -> dict[str, Any]:
    """An in-toto Statement v1 about ``subject`` (name, digest) pairs."""
    if not subject:
        raise ValueError("an in-toto statement needs at least one subject")
    return {
        "_type": STATEMENT_V1,
        "subject": [{"name": n, "digest": {"sha256": d.hex}} for n, d in subject],
        "predicateType": predicate_type,
        "predicate": dict(predicate),
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
) -> dict[str, Any]:
    """A SLSA provenance v1 statement for the image. ``startedOn``/``finishedOn`` only when
    ``SOURCE_DATE_EPOCH`` is given (both are that time)."""
    deps = []
    for i in sorted(inputs, key=lambda i: (i.uri, i.sha256, i.kind)):
        d: dict[str, Any] = {"uri": i.uri, "digest": {"sha256": i.sha256}, "annotations": {"kind": i.kind}}
        if i.package:
            d["annotations"]["package"] = i.package
        deps.append(d)
    run: dict[str, Any] = {"builder": {"id": BUILDER_ID, "version": {"kiln": builder_version}}}
    metadata: dict[str, Any] = {
        "invocationId": hashlib.sha256(
            canonical_json([str(manifest_digest), str(subject_digest), builder_version])
        ).hexdigest()
    }
    if source_date_epoch is not None:
        metadata["startedOn"] = metadata["finishedOn"] = timestamp(source_date_epoch)
    run["metadata"] = metadata
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "manifest": {"uri": manifest_uri, "digest": {"sha256": manifest_digest.hex}},
            },
            "resolvedDependencies": deps,
        },
        "runDetails": run,
    }
    return in_toto_statement(SLSA_PROVENANCE_V1, predicate, [(subject_name, subject_digest)])
