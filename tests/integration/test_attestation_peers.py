"""The records of every example, read by the libraries of their formats (acceptance 3).

- spdx-tools parses and validates each SBOM (SPDX 2.3): no validation message at all;
- in-toto-attestation parses the provenance strictly (unknown fields refused) into its Statement and
  SLSA v1 Provenance messages, and validates the statement;
- securesystemslib verifies the DSSE envelopes `kiln attest` wrote, with keys it builds itself;
- the SBOM's and the provenance's statements name the image alike.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from cryptography.hazmat.primitives import serialization

from kiln.cli import main
from kiln.cmd_sign import build_records
from manifests.layout import OCILayout
from signing.attestation import PredicateKind
from signing.cosign import attestation_tag
from tests.integration.helpers import EXAMPLE_MANIFESTS, EXAMPLES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=sorted(EXAMPLE_MANIFESTS))
def attested(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    name = request.param
    base = tmp_path_factory.mktemp(f"peers-{name}")
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_PASSWORD", "peer-test")
    mp.setenv("KILN_CACHE_DIR", str(base / "cache"))
    try:
        out = base / "img"
        assert main(["build", str(EXAMPLES / EXAMPLE_MANIFESTS[name]), "-o", str(out), "-q"]) == 0
        assert main(["key", "generate", "--out", str(base / "k"), "-q"]) == 0
        assert main(["attest", "--key", str(base / "k.key"), "-q", f"oci:{out}"]) == 0
    finally:
        mp.undo()
    layout = OCILayout.open(out)
    image = layout.resolve(None)
    return {
        "layout": layout,
        "image": image,
        "pub": base / "k.pub",
        "records": build_records(layout, image.digest),
    }


def test_spdx_tools_validates_the_sbom(attested: dict[str, Any]) -> None:
    from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    raw = json.loads(attested["records"][PredicateKind.SPDX])
    document = JsonLikeDictParser().parse(raw)
    assert validate_full_spdx_document(document) == []
    assert document.files
    for f in document.files:
        assert {c.algorithm.name for c in f.checksums} >= {"SHA1", "SHA256"}, f.name
    assert not [p.name for p in document.packages if p.name.startswith("/")]  # no host paths as packages
    image = next(p for p in document.packages if p.spdx_id == "SPDXRef-Image")
    assert image.checksums[0].value == attested["image"].digest.hex
    purls = {ref.locator for p in document.packages for ref in p.external_references}
    assert any(u.startswith("pkg:oci/") for u in purls)
    assert any(u.startswith("pkg:deb/debian/") for u in purls)  # the host packages the files came from


def test_in_toto_attestation_parses_the_provenance_strictly(attested: dict[str, Any]) -> None:
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    raw = attested["records"][PredicateKind.SLSAPROVENANCE]
    pb = json_format.Parse(raw, statement_pb2.Statement(), ignore_unknown_fields=False)
    Statement.copy_from_pb(pb).validate()
    assert pb.predicate_type == "https://slsa.dev/provenance/v1"
    assert pb.subject[0].digest["sha256"] == attested["image"].digest.hex
    predicate = json.loads(raw)["predicate"]
    prov = json_format.ParseDict(predicate, provenance_pb2.Provenance(), ignore_unknown_fields=False)
    deps = prov.build_definition.resolved_dependencies
    assert deps
    for dep in deps:
        assert dep.digest["sha256"]
        if dep.uri:
            assert urlparse(dep.uri).scheme in ("file", "pkg", "https"), dep.uri
        else:
            assert not dep.name.startswith("/"), dep.name  # a checkout file, relative to the manifest
    assert any(dep.uri.startswith("file:///") for dep in deps)


def _envelopes(attested: dict[str, Any]) -> list[dict[str, Any]]:
    layout: OCILayout = attested["layout"]
    desc = layout.tags()[attestation_tag(attested["image"].digest)]
    manifest = json.loads(layout.read_blob(desc.digest))
    return [json.loads(layout.read_blob(type(desc.digest).parse(x["digest"]))) for x in manifest["layers"]]


def test_securesystemslib_verifies_kilns_envelopes(attested: dict[str, Any]) -> None:
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    pem = Path(attested["pub"]).read_bytes()
    key = SSlibKey.from_crypto(serialization.load_pem_public_key(pem))  # its own key id
    envelopes = _envelopes(attested)
    assert len(envelopes) == 2
    names = {}
    for doc in envelopes:
        envelope = Envelope.from_dict(doc)
        assert key.keyid in envelope.verify([key], 1)
        statement = json.loads(base64.b64decode(doc["payload"]))
        names[statement["predicateType"]] = [s["name"] for s in statement["subject"]]
    # The SBOM's and the provenance's statements name the image alike.
    assert names["https://spdx.dev/Document"] == names["https://slsa.dev/provenance/v1"]
    assert names["https://spdx.dev/Document"][0].endswith(":1.0.0")
