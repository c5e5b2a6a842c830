"""Hostile DSSE envelopes and cosign signature manifests: refused before they cost CPU or memory.

Attacks:
- ``signature-flood``: an attestation envelope of 12 MB carrying 100,000 copies of one valid-looking
  ECDSA signature. Every signature was tried against every trusted key: 30 s of CPU for two keys,
  per layer, per verification. At most :data:`signing.dsse.MAX_SIGNATURES` are now read.
- ``layer-size-flood``: a ``.sig``/``.att`` manifest of 1,000 layers, each announcing 16 MiB (the
  per-layer cap): all were fetched into memory (16 GiB) before anything was checked. The sum of
  the announced sizes is now capped before the first fetch.
- any JSON shape at any field of an envelope or a signature manifest is a ``VerificationError``
  (hypothesis), never another exception.
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from signing.attestation import verify_attestation_layers
from signing.cosign import MAX_ARTIFACT_BYTES, MAX_LAYER_BYTES, CosignLayer, read_layers
from signing.dsse import MAX_SIGNATURES, Envelope, sign_envelope
from signing.signer import LocalSigner
from tests.signing.conftest import p256


def _flooded_envelope(signer: LocalSigner, copies: int) -> bytes:
    env = sign_envelope([signer], MediaType.IN_TOTO, b"{}").to_dict()
    one = env["signatures"][0]
    env["signatures"] = [dict(one, keyid=str(i)) for i in range(copies)]
    return json.dumps(env).encode()


def test_signature_flood_is_refused_before_any_verification() -> None:
    data = _flooded_envelope(p256(7), 100_000)
    with pytest.raises(
        VerificationError, match=f"100000 signatures, at most {MAX_SIGNATURES} are read"
    ) as info:
        Envelope.from_bytes(data)
    assert info.value.reason == "attestation"


def test_signature_flood_in_an_attestation_layer_is_refused() -> None:
    signer = p256(7)
    layer = CosignLayer(
        media_type=MediaType.DSSE_ENVELOPE, blob=_flooded_envelope(signer, MAX_SIGNATURES + 1)
    )
    with pytest.raises(VerificationError, match="signatures, at most"):
        verify_attestation_layers(
            [layer],
            image_digest=Digest.of(b"image"),
            keys=[p256(8).public_key, p256(9).public_key],
            predicate_type="https://spdx.dev/Document",
        )


def test_envelope_at_the_signature_cap_still_parses() -> None:
    env = Envelope.from_bytes(_flooded_envelope(p256(7), MAX_SIGNATURES))
    assert len(env.signatures) == MAX_SIGNATURES


def _manifest(layers: list[Descriptor]) -> bytes:
    config = Descriptor(media_type=MediaType.OCI_CONFIG, digest=Digest.of(b"{}"), size=2)
    return OCIManifest(config=config, layers=tuple(layers)).to_bytes()


def test_layer_size_flood_is_refused_before_any_fetch() -> None:
    fetched: list[Descriptor] = []

    def fetch(desc: Descriptor) -> bytes:
        fetched.append(desc)
        raise AssertionError("nothing may be fetched")

    layers = [
        Descriptor(
            media_type=MediaType.COSIGN_SIMPLESIGNING, digest=Digest.of(b"%d" % i), size=MAX_LAYER_BYTES
        )
        for i in range(1000)
    ]
    with pytest.raises(VerificationError, match=f"cap {MAX_ARTIFACT_BYTES}") as info:
        read_layers(_manifest(layers), fetch)
    assert info.value.reason == "manifest"
    assert fetched == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_GOOD_ENVELOPE: dict[str, Any] = {
    "payload": base64.b64encode(b"{}").decode(),
    "payloadType": MediaType.IN_TOTO,
    "signatures": [{"keyid": "k", "sig": base64.b64encode(b"sig").decode()}],
}


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(
        [
            "payload",
            "payloadType",
            "signatures",
            "signatures.0",
            "signatures.0.sig",
            "signatures.0.keyid",
            "extra",
        ]
    ),
    value=_json | st.text(alphabet="ABC=+/-_ \n\x00", max_size=12),
)
def test_fuzz_envelope_fields_of_any_type(field: str, value: object) -> None:
    doc: Any = json.loads(json.dumps(_GOOD_ENVELOPE))
    *parents, last = field.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    try:
        env = Envelope.from_bytes(json.dumps(doc).encode())
    except VerificationError:
        return
    env.verified_key_ids([p256(3).public_key])  # whatever parsed can be checked without raising


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()))
def test_fuzz_envelope_bytes(data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        Envelope.from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(
        [
            "layers",
            "layers.0",
            "layers.0.size",
            "layers.0.digest",
            "layers.0.annotations",
            "layers.0.mediaType",
            "config",
            "schemaVersion",
            "mediaType",
        ]
    ),
    value=_json,
)
def test_fuzz_signature_manifest_fields_of_any_type(field: str, value: object) -> None:
    blob = b"payload"
    good = json.loads(
        _manifest(
            [Descriptor(media_type=MediaType.COSIGN_SIMPLESIGNING, digest=Digest.of(blob), size=len(blob))]
        )
    )
    *parents, last = field.split(".")
    node: Any = good
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    with contextlib.suppress(VerificationError):
        read_layers(json.dumps(good).encode(), lambda _d: blob)
