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


def file_packages(entries: Iterable[Entry], root: DebianRoot) -> dict[str, str]:
    """Image path -> Debian package, for every regular file of the image from the root."""
    owner = root.owner_of()
    base = os.path.realpath(root.path)
    out: dict[str, str] = {}
    for e in entries:
        if e.kind is not EntryKind.FILE or e.host_path is None:
            continue
        host = os.path.realpath(e.host_path)
        if not host.startswith(base + "/"):
            continue
        pkg = owner.get("/" + host[len(base) + 1 :])
        if pkg is not None:
            out[e.path] = pkg
    return out


def add_debian_packages(
    sbom: bytes, provenance: bytes, prepared: PreparedDebian, platform: Platform, entries: Iterable[Entry]
) -> tuple[bytes, bytes]:
    """``sbom`` and ``provenance`` with the Debian packages added (see the module docstring)."""
    root = prepared.root_for(platform)
    locked: dict[str, LockedPackage] = {p.name: p for p in prepared.lock.packages.get(root.architecture, ())}
    files = file_packages(entries, root)
    doc: dict[str, Any] = json.loads(sbom)
    image_id = "SPDXRef-Image"
    distro = prepared.lock.distro
    file_ids = {f["fileName"].removeprefix("."): f["SPDXID"] for f in doc.get("files", [])}
    for info in root.packages:
        pkg = locked.get(info.name)
        if pkg is None:
            continue
        pid = _id(info.name, info.version, info.architecture)
        doc["packages"].append(
            {
                "SPDXID": pid,
                "name": info.name,
                "versionInfo": info.version,
                "supplier": _supplier(info.maintainer),
                "downloadLocation": f"{prepared.mirror}/{pkg.filename}",
                "filesAnalyzed": False,
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
        )
        doc["relationships"].append(
            {"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": pid}
        )
    for path, name in sorted(files.items()):
        info_pkg = locked.get(name)
        fid = file_ids.get(path)
        if info_pkg is None or fid is None:
            continue
        pid = _id(info_pkg.name, info_pkg.version, info_pkg.architecture)
        doc["relationships"].append(
            {"spdxElementId": pid, "relationshipType": "CONTAINS", "relatedSpdxElement": fid}
        )
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
