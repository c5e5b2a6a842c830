"""The build's SBOM and provenance written as streams of canonical JSON (ADR 0024).

The documents are the ones :mod:`builder.attestations` describes: the same SPDX 2.3 document that
:func:`~builder.attestations.spdx_document` builds through spdx-tools' model, and the same SLSA v1
statement as :func:`~builder.attestations.slsa_provenance`, byte for byte after
:func:`~manifests.canonical.canonical_json` (tests hold each pair together, and validate the
SBOM with spdx-tools' parser and validator). What differs is memory: a tree of 100,000 files gave
an SBOM model of ~360 MB and a provenance of ~100 MB of dicts. Here the small top of each document
is a dict serialized canonically with a marker string where a long list goes (files,
relationships, resolved dependencies); the long lists are written element by element in their
place, each element formatted on its own (:mod:`builder.jsonstream`). Nothing proportional to
the file count is held beyond the caller's file records and a few strings per file while they
are written.

The provenance's structure is still checked against in-toto-attestation's messages: the statement
and the predicate without its dependencies, then one dependency of every distinct shape (its keys
and its annotations' keys) as a ``ResourceDescriptor``, before that shape is first written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from builder.attestations import (
    SLSA_PROVENANCE_V1,
    Input,
    SbomPackage,
    debian_package,
    dependency,
    image_purl,
    in_toto_statement,
    provenance_predicate,
)
from builder.jsonstream import json_string, marker, write_canonical
from manifests.canonical import canonical_json
from manifests.digest import Digest

__all__ = ["SpdxFile", "write_spdx", "write_provenance"]

_NAMESPACE_BASE = "https://kiln.dev/spdx"
_IMAGE_ID = "SPDXRef-Image"


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class SpdxFile(Protocol):
    """What the SBOM needs of a file: :class:`builder.tarwriter.FileRecord` has it."""

    @property
    def path(self) -> str: ...
    @property
    def sha256(self) -> Digest: ...
    @property
    def size(self) -> int: ...
    @property
    def sha1(self) -> str: ...


def _spdx_id(prefix: str, part: str) -> str:
    return f"SPDXRef-{prefix}-{hashlib.sha256(part.encode('utf-8')).hexdigest()[:32]}"


def _created(text: str) -> str:
    """``created`` as spdx-tools writes it back: the time parsed, or the epoch if unparsable."""
    try:
        when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        when = datetime.fromtimestamp(0, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _checksums(*pairs: tuple[str, str | None]) -> list[dict[str, str]]:
    return [{"algorithm": algo, "checksumValue": value} for algo, value in pairs if value]


def _purl_refs(purl: str | None) -> list[dict[str, str]]:
    if not purl:
        return []
    return [{"referenceCategory": "PACKAGE_MANAGER", "referenceLocator": purl, "referenceType": "purl"}]


def _package(key: str, pkg: SbomPackage) -> dict[str, Any]:
    """A package the image CONTAINS, as spdx-tools' converter writes it (empty lists left out)."""
    doc: dict[str, Any] = {
        "SPDXID": _spdx_id("Package", key),
        "downloadLocation": pkg.download_location or "NOASSERTION",
        "filesAnalyzed": False,
        "name": pkg.name,
        "primaryPackagePurpose": "LIBRARY",
        "supplier": "NOASSERTION",
    }
    if checksums := _checksums(("SHA256", pkg.sha256)):
        doc["checksums"] = checksums
    if refs := _purl_refs(pkg.purl):
        doc["externalRefs"] = refs
    if pkg.version is not None:
        doc["versionInfo"] = pkg.version
    return doc


_FILE = (
    b'{"SPDXID":"%s","checksums":[%s{"algorithm":"SHA256","checksumValue":"%s"}],'
    b'"comment":"size %d","fileName":%s}'
)


def _file_json(f: SpdxFile) -> bytes:
    """One file object: keys in canonical order, the path the only free text."""
    sha1 = b'{"algorithm":"SHA1","checksumValue":"%s"},' % f.sha1.encode("ascii") if f.sha1 else b""
    return _FILE % (
        _spdx_id("File", f.path).encode("ascii"),
        sha1,
        f.sha256.hex.encode("ascii"),
        f.size,
        json_string("./" + f.path.lstrip("/")),
    )


def _contains(element: str) -> bytes:
    return b'{"relatedSpdxElement":"%s","relationshipType":"CONTAINS","spdxElementId":"%s"}' % (
        element.encode("ascii"),
        _IMAGE_ID.encode("ascii"),
    )


def _namespace_hash(
    name: str, version: str, image_digest: Digest, records: Sequence[SpdxFile], wanted: list[str]
) -> str:
    """sha256 of ``canonical_json([name, version, digest, [path + sha256 ...], wanted])``,
    fed piece by piece."""
    h = hashlib.sha256()
    h.update(canonical_json([name, version, str(image_digest)])[:-1] + b",[")
    for i, f in enumerate(records):
        piece = json_string(f.path + f.sha256.hex)
        h.update(b"," + piece if i else piece)
    h.update(b"]," + canonical_json(wanted) + b"]")
    return h.hexdigest()


def _verification_code(records: Sequence[SpdxFile]) -> str:
    """SPDX 2.3 section 7.9: SHA1 over the sorted, concatenated SHA1s of the package's files."""
    h = hashlib.sha1(usedforsecurity=False)
    for sha1 in sorted(f.sha1 or "" for f in records):
        h.update(sha1.encode("ascii"))
    return h.hexdigest()


def write_spdx(  # noqa: PLR0917 - spdx_document's signature, plus the sink
    sink: _Sink,
    name: str,
    version: str,
    image_digest: Digest,
    files: Sequence[SpdxFile],
    inputs: Sequence[Input],
    created: str,
    *,
    tool_version: str = "0",
    packages: Sequence[SbomPackage] = (),
    arch: str = "amd64",
) -> None:
    """Write the SBOM :func:`builder.attestations.spdx_document` describes (as canonical JSON)."""
    records = sorted(files, key=lambda f: f.path)
    wanted: dict[str, SbomPackage] = {}
    for i in inputs:
        if i.package:
            pkg = debian_package(i.package, arch=arch)
            wanted.setdefault(pkg.purl or pkg.name, pkg)
    for pkg in packages:
        wanted[pkg.purl or pkg.name] = pkg  # the caller's record (a lock's) knows more than dpkg
    keys = sorted(wanted)
    image: dict[str, Any] = {
        "SPDXID": _IMAGE_ID,
        "checksums": _checksums(("SHA256", image_digest.hex)),
        "downloadLocation": "NOASSERTION",
        "externalRefs": _purl_refs(image_purl(name, version, image_digest)),
        "filesAnalyzed": True,
        "name": name,
        "packageVerificationCode": {"packageVerificationCodeValue": _verification_code(records)},
        "primaryPackagePurpose": "CONTAINER",
        "versionInfo": version,
    }
    content = _namespace_hash(name, version, image_digest, records, keys)
    files_mark, relations_mark = marker("files"), marker("relationships")
    skeleton: dict[str, Any] = {
        "SPDXID": "SPDXRef-DOCUMENT",
        "creationInfo": {"created": _created(created), "creators": [f"Tool: kiln-{tool_version}"]},
        "dataLicense": "CC0-1.0",
        "documentNamespace": f"{_NAMESPACE_BASE}/{quote(name, safe='')}-{quote(version, safe='')}-{content}",
        "name": f"{name}-{version}",
        "packages": [image, *(_package(k, wanted[k]) for k in keys)],
        "relationships": relations_mark,
        "spdxVersion": "SPDX-2.3",
    }
    lists: dict[str, Iterable[bytes]] = {relations_mark: _relationships(records, keys)}
    if records:  # spdx-tools leaves an empty list out
        skeleton["files"] = files_mark
        lists[files_mark] = (_file_json(f) for f in records)
    write_canonical(sink, skeleton, lists)


def _relationships(records: Sequence[SpdxFile], package_keys: Sequence[str]) -> Iterator[bytes]:
    yield b'{"relatedSpdxElement":"%s","relationshipType":"DESCRIBES","spdxElementId":"SPDXRef-DOCUMENT"}' % (
        _IMAGE_ID.encode("ascii")
    )
    for f in records:
        yield _contains(_spdx_id("File", f.path))
    for key in package_keys:
        yield _contains(_spdx_id("Package", key))


def write_provenance(  # noqa: PLR0917 - slsa_provenance's signature, plus the sink
    sink: _Sink,
    subject_name: str,
    subject_digest: Digest,
    manifest_digest: Digest,
    inputs: Sequence[Input],
    builder_version: str,
    *,
    source_date_epoch: int | None = None,
    manifest_uri: str = "kiln.yaml",
    arch: str = "amd64",
) -> None:
    """Write the statement :func:`builder.attestations.slsa_provenance` makes (canonical JSON)."""
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import resource_descriptor_pb2

    predicate = provenance_predicate(
        subject_digest,
        manifest_digest,
        builder_version,
        [],
        source_date_epoch=source_date_epoch,
        manifest_uri=manifest_uri,
    )
    definition: dict[str, Any] = predicate["buildDefinition"]
    json_format.ParseDict(predicate, provenance_pb2.Provenance(), ignore_unknown_fields=False)
    mark = marker("resolvedDependencies")
    definition["resolvedDependencies"] = mark
    statement = in_toto_statement(SLSA_PROVENANCE_V1, predicate, [(subject_name, subject_digest)])

    def deps() -> Iterator[bytes]:
        shapes: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
        for i in sorted(inputs, key=lambda i: (i.uri, i.sha256, i.kind)):
            d = dependency(i, arch)
            shape = (tuple(d), tuple(d["annotations"]))
            if shape not in shapes:  # the message checks shapes; values are strings either way
                message = resource_descriptor_pb2.ResourceDescriptor()
                json_format.ParseDict(d, message, ignore_unknown_fields=False)
                shapes.add(shape)
            yield canonical_json(d)

    write_canonical(sink, statement, {mark: deps()})
