"""The Debian packages of a build in its SBOM and provenance.

Each package becomes an SPDX package with its name, version, supplier (the maintainer), declared
license (from a DEP-5 copyright file), the .deb's sha256 and download location, and its purl
(``pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12``); the image ``CONTAINS`` it and it
``CONTAINS`` every file of the image that it shipped (whether the file came in through the
``debian`` source itself or through a ``closure``/``tree`` reading ``sysroot: debian``). The
provenance lists every .deb as a resolved dependency. Both documents stay canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from typing import Any

from builder.debian.extract import DebianRoot
from builder.debian.licenses import spdx_expression
from builder.debian.prepare import PreparedDebian
from builder.tree import Entry, EntryKind
from manifests.canonical import canonical_json
from manifests.debianlock import LockedPackage
from manifests.oci import Platform

__all__ = ["file_packages", "add_debian_packages"]

_MAINTAINER = re.compile(r"\s*(.*?)\s*<([^>]*)>\s*\Z")


def _id(*parts: str) -> str:
    return "SPDXRef-DebianPackage-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _supplier(maintainer: str) -> str:
    m = _MAINTAINER.match(maintainer)
    if m is None or not m.group(1):
        return "Organization: Debian"
    return f"Organization: {m.group(1)} ({m.group(2)})"


def file_packages(entries: Iterable[Entry], root: DebianRoot) -> dict[str, tuple[str, str]]:
    """Image path -> (Debian package, host path) for every regular file of the image from the root."""
    owner = root.owner_of()
    base = os.path.realpath(root.path)
    out: dict[str, tuple[str, str]] = {}
    for e in entries:
        if e.kind is not EntryKind.FILE or e.host_path is None:
            continue
        host = os.path.realpath(e.host_path)
        if not host.startswith(base + "/"):
            continue
        pkg = owner.get("/" + host[len(base) + 1 :])
        if pkg is not None:
            out[e.path] = (pkg, host)
    return out


def _sha1_of(spdx_file: dict[str, Any], host: str) -> str:
    """The file's SHA1 (SPDX 2.3 wants one per file and derives verification codes from them),
    added to its checksums when the document does not have it yet."""
    for c in spdx_file.get("checksums", []):
        if c.get("algorithm") == "SHA1":
            return str(c["checksumValue"])
    h = hashlib.sha1(usedforsecurity=False)
    with open(host, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    digest = h.hexdigest()
    spdx_file.setdefault("checksums", []).insert(0, {"algorithm": "SHA1", "checksumValue": digest})
    return digest


def add_debian_packages(
    sbom: bytes, provenance: bytes, prepared: PreparedDebian, platform: Platform, entries: Iterable[Entry]
) -> tuple[bytes, bytes]:
    """``sbom`` and ``provenance`` with the Debian packages added (see the module docstring)."""
    root = prepared.root_for(platform)
    locked: dict[str, LockedPackage] = {p.name: p for p in prepared.lock.packages.get(root.architecture, ())}
    doc: dict[str, Any] = json.loads(sbom)
    distro = prepared.lock.distro
    spdx_files = {f["fileName"].removeprefix("."): f for f in doc.get("files", [])}
    owned: dict[str, list[str]] = {}  # package -> the SHA1 of each file it put into the image
    contains: list[dict[str, str]] = []
    for path, (name, host) in sorted(file_packages(entries, root).items()):
        spdx_file = spdx_files.get(path)
        pkg = locked.get(name)
        if spdx_file is None or pkg is None:
            continue
        owned.setdefault(name, []).append(_sha1_of(spdx_file, host))
        contains.append(
            {
                "spdxElementId": _id(pkg.name, pkg.version, pkg.architecture),
                "relationshipType": "CONTAINS",
                "relatedSpdxElement": spdx_file["SPDXID"],
            }
        )
    for info in root.packages:
        pkg = locked.get(info.name)
        if pkg is None:
            continue
        pid = _id(info.name, info.version, info.architecture)
        sha1s = owned.get(info.name)
        entry: dict[str, Any] = {
            "SPDXID": pid,
            "name": info.name,
            "versionInfo": info.version,
            "supplier": _supplier(info.maintainer),
            "downloadLocation": f"{prepared.mirror}/{pkg.filename}",
            # Analyzed where the image holds files of the package: the ones it CONTAINS.
            "filesAnalyzed": bool(sha1s),
            "checksums": [{"algorithm": "SHA256", "checksumValue": pkg.sha256}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": spdx_expression(info.licenses),
            "copyrightText": "NOASSERTION",
            "sourceInfo": f"built from Debian source package {info.source} {info.source_version}",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": pkg.purl(distro),
                }
            ],
        }
        if sha1s:
            code = hashlib.sha1("".join(sorted(sha1s)).encode(), usedforsecurity=False).hexdigest()
            entry["packageVerificationCode"] = {"packageVerificationCodeValue": code}
        doc["packages"].append(entry)
        doc["relationships"].append(
            {"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": pid}
        )
    doc["relationships"].extend(contains)
    prov: dict[str, Any] = json.loads(provenance)
    deps = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
    for pkg in sorted(locked.values(), key=lambda p: p.name):
        deps.append(
            {
                "uri": pkg.purl(distro),
                "digest": {"sha256": pkg.sha256},
                "annotations": {"kind": "deb", "filename": pkg.filename},
            }
        )
    return canonical_json(doc), canonical_json(prov)
