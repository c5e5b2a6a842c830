"""Simple-signing payloads (strict parsing) and DSSE envelopes (PAE vectors, round trips)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope as SslibEnvelope

from manifests.digest import Digest
from manifests.errors import VerificationError
from signing.dsse import DsseSignature, Envelope, pae, sign_envelope, sslib_pae
from signing.payload import SimpleSigningPayload, split_reference
from signing.signer import LocalSigner

D = Digest("ab" * 32)
GOOD = (
    b'{"critical":{"identity":{"docker-reference":"reg.example/app:1"},'
    b'"image":{"docker-manifest-digest":"sha256:' + b"ab" * 32 + b'"},'
    b'"type":"cosign container image signature"},"optional":null}'
)


def test_payload_bytes_are_exactly_cosigns_shape() -> None:
    p = SimpleSigningPayload(docker_reference="reg.example/app:1", manifest_digest=D)
    assert p.to_bytes() == GOOD
    assert SimpleSigningPayload.from_bytes(GOOD) == p


def test_payload_optional_round_trip() -> None:
    p = SimpleSigningPayload(docker_reference="r/a", manifest_digest=D, optional={"creator": "kiln", "n": 1})
    back = SimpleSigningPayload.from_bytes(p.to_bytes())
    assert back.to_bytes() == p.to_bytes()
    assert dict(back.optional or {}) == {"creator": "kiln", "n": 1}


BAD_PAYLOADS = [
    ("extra key", GOOD.replace(b',"optional":null}', b',"optional":null,"x":1}'), "payload: unknown key 'x'"),
    ("extra critical key", GOOD.replace(b'"type"', b'"x":1,"type"'), "critical: unknown key 'x'"),
    (
        "duplicate key",
        GOOD.replace(b',"optional":null}', b',"optional":null,"optional":{}}'),
        "duplicate key 'optional'",
    ),
    ("trailing garbage", GOOD + b"garbage", "7 trailing bytes after the JSON object"),
    ("trailing newline", GOOD + b"\n", "1 trailing bytes after the JSON object"),
    ("missing optional", GOOD.replace(b',"optional":null', b""), "payload: missing key 'optional'"),
    (
        "case-folded key",
        GOOD.replace(b"docker-manifest-digest", b"Docker-manifest-digest"),
        "critical.image: unknown key 'Docker-manifest-digest'",
    ),
    (
        "wrong type",
        GOOD.replace(b"cosign container image signature", b"atomic container signature"),
        "critical.type is 'atomic container signature'",
    ),
    ("bad digest", GOOD.replace(b"sha256:", b"sha512:"), "invalid digest"),
    ("not json", b"{", "not valid JSON"),
    ("not utf-8", b"\xff", "not UTF-8"),
    ("array", b"[]", "payload must be an object"),
    (
        "optional list",
        GOOD.replace(b'"optional":null', b'"optional":[]'),
        "optional must be an object or null",
    ),
    (
        "empty reference",
        GOOD.replace(b"reg.example/app:1", b""),
        "docker-reference must be a non-empty string",
    ),
    ("huge", b" " * 70_000, "exceeds the 65536-byte cap"),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_PAYLOADS, ids=[b[0] for b in BAD_PAYLOADS])
def test_payload_parse_refusals(name: str, data: bytes, message: str) -> None:
    with pytest.raises(VerificationError, match=message) as info:
        SimpleSigningPayload.from_bytes(data)
    assert info.value.reason == "payload"


@settings(max_examples=150)
@given(
    ref=st.text(min_size=1, max_size=40),
    hexd=st.binary(min_size=32, max_size=32).map(bytes.hex),
    optional=st.none()
    | st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
)
def test_payload_round_trip_property(ref: str, hexd: str, optional: dict[str, object] | None) -> None:
    p = SimpleSigningPayload(docker_reference=ref, manifest_digest=Digest(hexd), optional=optional)
    data = p.to_bytes()
    assert SimpleSigningPayload.from_bytes(data).to_bytes() == data


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_payload_parser_never_crashes(data: bytes) -> None:
    reason = "payload"
    try:
        SimpleSigningPayload.from_bytes(data)
    except VerificationError as exc:
        reason = exc.reason
    assert reason == "payload"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("reg.example/app:1", ("reg.example/app", "1")),
        ("reg.example:5000/app", ("reg.example:5000/app", None)),
        ("reg.example:5000/app:v2", ("reg.example:5000/app", "v2")),
        ("app", ("app", None)),
    ],
)
def test_split_reference(ref: str, expected: tuple[str, str | None]) -> None:
    assert split_reference(ref) == expected


# -- DSSE ------------------------------------------------------------------------------------------


def test_pae_matches_the_dsse_spec_vector() -> None:
    # From the DSSE v1 protocol document's worked example.
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


@settings(max_examples=150)
@given(ptype=st.text(max_size=40), payload=st.binary(max_size=200))
def test_pae_matches_securesystemslib(ptype: str, payload: bytes) -> None:
    assert pae(ptype, payload) == SslibEnvelope(payload, ptype, {}).pae() == sslib_pae(ptype, payload)


def test_envelope_sign_verify_and_bytes_round_trip(alice: LocalSigner, bob: LocalSigner) -> None:
    env = sign_envelope([alice, bob], "application/vnd.in-toto+json", b'{"a":1}')
    data = env.to_bytes()
    back = Envelope.from_bytes(data)
    assert back == env
    assert back.to_bytes() == data
    assert back.verify([alice.public_key, bob.public_key], threshold=2) == b'{"a":1}'
    assert back.signatures[0].keyid == alice.public_key.dsse_key_id


def test_envelope_is_readable_by_securesystemslib(alice: LocalSigner) -> None:
    import json

    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import SSlibKey

    env = sign_envelope([alice], "t", b"body")
    sslib = SslibEnvelope.from_dict(json.loads(env.to_bytes()))
    # A key securesystemslib builds itself (its own key id): its verify pairs signatures and keys
    # by keyid, so kiln's keyid must be that one.
    key = SSlibKey.from_crypto(serialization.load_der_public_key(alice.public_key.der))
    assert key.keyid in sslib.verify([key], 1)


def test_envelope_threshold_counts_distinct_keys(alice: LocalSigner) -> None:
    env = sign_envelope([alice, alice], "t", b"x")
    with pytest.raises(VerificationError, match="1 distinct trusted key") as info:
        env.verify([alice.public_key], threshold=2)
    assert info.value.reason == "threshold"


def test_envelope_wrong_key(alice: LocalSigner, bob: LocalSigner) -> None:
    env = sign_envelope([alice], "t", b"x")
    with pytest.raises(VerificationError, match="no DSSE signature verifies") as info:
        env.verify([bob.public_key])
    assert info.value.reason == "signature"


def test_envelope_payload_type_is_signed(alice: LocalSigner) -> None:
    env = sign_envelope([alice], "t", b"x")
    swapped = Envelope(payload_type="u", payload=env.payload, signatures=env.signatures)
    with pytest.raises(VerificationError, match="no DSSE signature verifies"):
        swapped.verify([alice.public_key])


BAD_ENVELOPES = [
    ("unknown key", b'{"payload":"","payloadType":"t","signatures":[],"x":1}', "unknown key 'x'"),
    (
        "duplicate",
        b'{"payload":"","payload":"","payloadType":"t","signatures":[]}',
        "duplicate key 'payload'",
    ),
    ("bad b64", b'{"payload":"!!","payloadType":"t","signatures":[]}', "payload is not valid base64"),
    ("sig not list", b'{"payload":"","payloadType":"t","signatures":{}}', "signatures must be a list"),
    (
        "sig extra",
        b'{"payload":"","payloadType":"t","signatures":[{"sig":"","z":1}]}',
        r"signatures\[0\]: unknown key 'z'",
    ),
    ("type missing", b'{"payload":"","signatures":[]}', "payloadType must be a string"),
    ("not json", b"nope", "not valid JSON"),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_ENVELOPES, ids=[b[0] for b in BAD_ENVELOPES])
def test_envelope_parse_refusals(name: str, data: bytes, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        Envelope.from_bytes(data)


def test_envelope_with_no_signatures() -> None:
    env = Envelope(payload_type="t", payload=b"", signatures=())
    with pytest.raises(VerificationError, match="no signatures"):
        env.verify([])


def test_dsse_signature_base64_is_standard(alice: LocalSigner) -> None:
    env = Envelope(
        payload_type="t", payload=b"\xfb\xff", signatures=(DsseSignature(keyid="", sig=b"\xfb\xff"),)
    )
    d = env.to_dict()
    assert d["payload"] == base64.b64encode(b"\xfb\xff").decode() == "+/8="
