"""The SBOM and provenance a build stored about an image (OCI 1.1 referrers in its layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.cmd_sign import build_records
from manifests.digest import Digest
from manifests.layout import OCILayout
from signing.attestation import PredicateKind


def record_bytes(layout: Path, digest: Digest | None = None) -> dict[PredicateKind, bytes]:
    lay = OCILayout.open(layout)
    return build_records(lay, digest if digest is not None else lay.resolve(None).digest)


def sbom_of(layout: Path, digest: Digest | None = None) -> dict[str, Any]:
    return json.loads(record_bytes(layout, digest)[PredicateKind.SPDX])  # type: ignore[no-any-return]
