"""Image signatures: cosign storage known answers, openssl interop, and the tamper table."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from manifests.digest import Digest
from manifests.errors import ManifestError, VerificationError
from manifests.layout import OCILayout
from manifests.oci import Descriptor
from signing.cosign import (
    SIGNATURE_ANNOTATION,
    CosignLayer,
    build_artifact,
    read_layers,
    signature_layer,
    signature_tag,
)
from signing.image import sign_image, stored_layers, verify_image
from signing.keys import KeyAlgorithm, PublicKey
from signing.payload import SimpleSigningPayload
from signing.policy import TrustPolicy
from signing.signer import LocalSigner
from signing.store import LayoutStore
from signing.verify import Identity, verify_signature_layers, verify_signature_manifest
from tests.signing.conftest import flip

IMG = Digest("1f" * 32)
OTHER = Digest("2e" * 32)
ID = Identity(repository="reg.example/app", tag="v1")


def payload(ref: str = "reg.example/app:v1", digest: Digest = IMG) -> bytes:
    return SimpleSigningPayload(docker_reference=ref, manifest_digest=digest).to_bytes()


def signed(signer: LocalSigner, data: bytes) -> CosignLayer:
    return signature_layer(data, signer.sign(data))


# -- known answers ---------------------------------------------------------------------------------


def hand_built_cosign_manifest(payload_bytes: bytes, sig_b64: str) -> tuple[bytes, dict[str, bytes]]:
    """A signature manifest as cosign writes it (Go struct field order, not canonical), by hand."""
    pdig = "sha256:" + Digest.of(payload_bytes).hex
    config = (
        '{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],'
        f'"os":"","rootfs":{{"type":"layers","diff_ids":["{pdig}"]}},"config":{{}}}}'
    ).encode()
    cdig = "sha256:" + Digest.of(config).hex
    manifest = (  # %-format keeps the JSON braces readable
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'  # noqa: UP031
        '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%d,"digest":"%s"},'
        '"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":%d,"digest":"%s",'
        '"annotations":{"dev.cosignproject.cosign/signature":"%s"}}]}'
        % (len(config), cdig, len(payload_bytes), pdig, sig_b64)
    ).encode()
    return manifest, {cdig: config, pdig: payload_bytes}


def test_known_answer_cosign_signature_manifest_verifies(alice: LocalSigner) -> None:
    p = payload()
    manifest, blobs = hand_built_cosign_manifest(p, base64.b64encode(alice.sign(p)).decode())
    verify_signature_manifest(
        manifest, lambda d: blobs[str(d.digest)], image_digest=IMG, identity=ID, keys=[alice.public_key]
    )


def test_our_writer_matches_the_published_shape(alice: LocalSigner) -> None:
    p = payload()
    sig = alice.sign(p)
    art = build_artifact([signature_layer(p, sig)])
    manifest, blobs = hand_built_cosign_manifest(p, base64.b64encode(sig).decode())
    # Same config bytes (cosign's 233-byte shape for one layer) and the same document, modulo key order.
    assert art.config in blobs.values()
    assert len(art.config) == 233
    assert json.loads(art.manifest.to_bytes()) == json.loads(manifest)


def test_second_signature_appends_a_layer(alice: LocalSigner, bob: LocalSigner) -> None:
    art = build_artifact([signed(alice, payload())])
    art2 = build_artifact([*art.layers, signed(bob, payload())])
    assert len(art2.manifest.layers) == 2
    cfg = json.loads(art2.config)
    assert len(cfg["rootfs"]["diff_ids"]) == 2
    assert len(cfg["history"]) == 2


def test_signature_tag() -> None:
    assert signature_tag(IMG) == "sha256-" + "1f" * 32 + ".sig"


# -- openssl interop -------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_verifies_our_p256_signature(tmp_path: Path, alice: LocalSigner) -> None:
    p = payload()
    (tmp_path / "payload").write_bytes(p)
    (tmp_path / "sig").write_bytes(alice.sign(p))
    (tmp_path / "key.pub").write_bytes(alice.public_key.to_pem())
    ok = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "key.pub", "-signature", "sig", "payload"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "Verified OK" in ok.stdout
    (tmp_path / "payload").write_bytes(flip(p, 5))
    bad = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "key.pub", "-signature", "sig", "payload"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_we_verify_an_openssl_signature(tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "k.pem"],
        cwd=tmp_path,
        check=True,
    )
    subprocess.run(
        ["openssl", "ec", "-in", "k.pem", "-pubout", "-out", "k.pub"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    p = payload()
    (tmp_path / "payload").write_bytes(p)
    subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", "k.pem", "-out", "sig", "payload"], cwd=tmp_path, check=True
    )
    key = PublicKey.from_pem((tmp_path / "k.pub").read_bytes(), expect=KeyAlgorithm.ECDSA_P256)
    layer = signature_layer(p, (tmp_path / "sig").read_bytes())
    verify_signature_layers([layer], image_digest=IMG, identity=ID, keys=[key])


# -- tamper table (pure) ---------------------------------------------------------------------------


def _raw_rs(signer: LocalSigner, data: bytes) -> bytes:
    r, s = decode_dss_signature(signer.sign(data))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _layer_with_sig(data: bytes, sig: bytes) -> CosignLayer:
    return signature_layer(data, sig)


def _flipped_payload(signer: LocalSigner) -> list[CosignLayer]:
    p = payload()
    sig = signer.sign(p)
    return [_layer_with_sig(flip(p, 40), sig)]


def _flipped_signature(signer: LocalSigner) -> list[CosignLayer]:
    p = payload()
    sig = signer.sign(p)
    return [_layer_with_sig(p, flip(sig, len(sig) - 3))]


TAMPER = [
    # (name, layers builder, verify kwargs override, reason, message)
    (
        "flipped byte in the payload",
        _flipped_payload,
        {},
        "signature",
        "does not verify with any of 1 trusted key",
    ),
    ("flipped byte in the signature", _flipped_signature, {}, "signature", "does not verify"),
    ("wrong key", lambda s: [signed(s, payload())], {"keys": "bob"}, "signature", "does not verify with any"),
    (
        "payload digest for another image",
        lambda s: [signed(s, payload(digest=OTHER))],
        {},
        "digest",
        f"payload is for image {OTHER}, not {IMG}",
    ),
    (
        "signature for another repository",
        lambda s: [signed(s, payload(ref="reg.example/evil:v1"))],
        {},
        "identity",
        "signature is for repository 'reg.example/evil', expected 'reg.example/app'",
    ),
    (
        "signature for another tag",
        lambda s: [signed(s, payload(ref="reg.example/app:v0"))],
        {},
        "identity",
        "signature is for tag 'v0' of 'reg.example/app', expected tag 'v1'",
    ),
    (
        "payload with an extra key",
        lambda s: [signed(s, payload()[:-1] + b',"extra":1}')],
        {},
        "payload",
        "unknown key 'extra'",
    ),
    (
        "payload with a duplicate key",
        lambda s: [signed(s, payload()[:-1] + b',"optional":{}}')],
        {},
        "payload",
        "duplicate key 'optional'",
    ),
    (
        "payload with trailing garbage",
        lambda s: [signed(s, payload() + b"\x00junk")],
        {},
        "payload",
        "5 trailing bytes",
    ),
    (
        "raw r||s where DER is expected",
        lambda s: [_layer_with_sig(payload(), _raw_rs(s, payload()))],
        {},
        "signature",
        "ECDSA signature is not ASN.1 DER",
    ),
    (
        "threshold 2 met by the same key twice",
        lambda s: [signed(s, payload()), signed(s, payload())],
        {"threshold": 2},
        "threshold",
        "1 distinct trusted key",
    ),
    (
        "signature annotation not base64",
        lambda s: [
            CosignLayer(
                media_type="application/vnd.dev.cosign.simplesigning.v1+json",
                blob=payload(),
                annotations={SIGNATURE_ANNOTATION: "***"},
            )
        ],
        {},
        "signature",
        "not standard base64",
    ),
    (
        "no signature annotation",
        lambda s: [
            CosignLayer(media_type="application/vnd.dev.cosign.simplesigning.v1+json", blob=payload())
        ],
        {},
        "signature",
        "no dev.cosignproject.cosign/signature annotation",
    ),
]


@pytest.mark.parametrize(
    ("name", "build", "override", "reason", "message"), TAMPER, ids=[t[0] for t in TAMPER]
)
def test_tamper_table(
    *, name, build, override, reason, message, alice: LocalSigner, bob: LocalSigner
) -> None:  # type: ignore[no-untyped-def]
    layers = build(alice)
    keys = [bob.public_key] if override.get("keys") == "bob" else [alice.public_key]
    with pytest.raises(VerificationError, match=message) as info:
        verify_signature_layers(
            layers, image_digest=IMG, identity=ID, keys=keys, threshold=override.get("threshold", 1)
        )
    assert info.value.reason == reason


def test_untagged_identity_accepts_any_tag_of_the_repository(alice: LocalSigner) -> None:
    verify_signature_layers(
        [signed(alice, payload(ref="reg.example/app:v7"))],
        image_digest=IMG,
        identity=Identity(repository="reg.example/app"),
        keys=[alice.public_key],
    )


def test_threshold_two_distinct_keys(alice: LocalSigner, bob: LocalSigner) -> None:
    layers = [signed(alice, payload()), signed(bob, payload())]
    verify_signature_layers(
        layers, image_digest=IMG, identity=ID, keys=[alice.public_key, bob.public_key], threshold=2
    )


def test_one_good_layer_among_bad_ones_passes(alice: LocalSigner) -> None:
    layers = [signed(alice, payload(digest=OTHER)), signed(alice, payload())]
    verify_signature_layers(layers, image_digest=IMG, identity=ID, keys=[alice.public_key])


def test_ed25519_signatures(carol_ed25519: LocalSigner) -> None:
    verify_signature_layers(
        [signed(carol_ed25519, payload())], image_digest=IMG, identity=ID, keys=[carol_ed25519.public_key]
    )
    bad = [_layer_with_sig(payload(), b"\x00" * 63)]
    with pytest.raises(VerificationError, match="63 bytes, expected 64"):
        verify_signature_layers(bad, image_digest=IMG, identity=ID, keys=[carol_ed25519.public_key])


def test_rsa_key_offered_for_a_p256_policy() -> None:
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(VerificationError, match="unsupported public key type RSA-2048") as info:
        PublicKey.from_pem(rsa_pem, expect=KeyAlgorithm.ECDSA_P256)
    assert info.value.reason == "key"


def test_an_empty_policy_refuses(alice: LocalSigner) -> None:
    from datetime import UTC, datetime

    with pytest.raises(ManifestError, match="the file is empty"):
        TrustPolicy.from_bytes(b"")
    with pytest.raises(VerificationError, match="trust policy is empty") as info:
        TrustPolicy().evaluate(
            repository="reg.example/app",
            tag="v1",
            image_digest=IMG,
            signatures=[signed(alice, payload())],
            now=datetime(2025, 1, 1, tzinfo=UTC),
        )
    assert info.value.reason == "policy"


def test_storage_flip_in_payload_blob_is_a_digest_error(alice: LocalSigner) -> None:
    art = build_artifact([signed(alice, payload())])
    blobs = dict(art.blobs.items())
    pdig = art.manifest.layers[0].digest
    blobs[pdig] = flip(blobs[pdig], 3)
    with pytest.raises(VerificationError, match="digest mismatch") as info:
        read_layers(art.manifest.to_bytes(), lambda d: blobs[d.digest])
    assert info.value.reason == "digest"


def test_malformed_signature_manifest(alice: LocalSigner) -> None:
    with pytest.raises(VerificationError, match="schemaVersion must be 2") as info:
        read_layers(b'{"schemaVersion":1}', lambda d: b"")
    assert info.value.reason == "manifest"


# -- images in an OCI layout -----------------------------------------------------------------------


def test_sign_and_verify_layout_image(image_layout: tuple[OCILayout, Descriptor], alice: LocalSigner) -> None:
    layout, root = image_layout
    store = LayoutStore(layout)
    assert sign_image(store, root, alice, reference="reg.example/app:v1") == (root.digest,)
    assert store.lookup_tag(signature_tag(root.digest)) is not None
    assert verify_image(store, root, identity=ID, keys=[alice.public_key]) == (root.digest,)


def test_second_sign_appends_and_threshold_two(
    image_layout: tuple[OCILayout, Descriptor], alice: LocalSigner, bob: LocalSigner
) -> None:
    layout, root = image_layout
    store = LayoutStore(layout)
    sign_image(store, root, alice, reference="reg.example/app:v1")
    sign_image(store, root, bob, reference="reg.example/app:v1")
    assert len(stored_layers(store, signature_tag(root.digest))) == 2
    verify_image(store, root, identity=ID, keys=[alice.public_key, bob.public_key], threshold=2)


def test_index_and_every_platform_manifest_are_signed(
    index_layout: tuple[OCILayout, Descriptor], alice: LocalSigner
) -> None:
    layout, root = index_layout
    store = LayoutStore(layout)
    signed_digests = sign_image(store, root, alice, reference="reg.example/app:v2")
    assert len(signed_digests) == 3
    ident = Identity(repository="reg.example/app", tag="v2")
    assert verify_image(store, root, identity=ident, keys=[alice.public_key]) == signed_digests
    # Drop one platform's signature: the index alone is not enough.
    layout.untag(signature_tag(signed_digests[2]))
    with pytest.raises(VerificationError, match=f"no signature for {signed_digests[2]}"):
        verify_image(store, root, identity=ident, keys=[alice.public_key])


def test_flipped_byte_in_the_image_manifest(
    image_layout: tuple[OCILayout, Descriptor], alice: LocalSigner
) -> None:
    layout, root = image_layout
    store = LayoutStore(layout)
    sign_image(store, root, alice, reference="reg.example/app:v1")
    path = layout.blob_path(root.digest)
    path.write_bytes(flip(path.read_bytes(), 10))
    with pytest.raises(VerificationError, match="digest mismatch") as info:
        verify_image(store, root, identity=ID, keys=[alice.public_key])
    assert info.value.reason == "digest"


def test_flipped_byte_in_a_layer_blob(image_layout: tuple[OCILayout, Descriptor], alice: LocalSigner) -> None:
    layout, root = image_layout
    store = LayoutStore(layout)
    sign_image(store, root, alice, reference="reg.example/app:v1")
    from manifests.oci import OCIManifest

    layer = OCIManifest.from_bytes(layout.read_blob(root.digest)).layers[0]
    path = layout.blob_path(layer.digest)
    path.write_bytes(flip(path.read_bytes(), 0))
    with pytest.raises(VerificationError, match="digest mismatch") as info:
        verify_image(store, root, identity=ID, keys=[alice.public_key])
    assert info.value.reason == "digest"
    # Signatures alone still verify: the blob check is what caught it.
    verify_image(store, root, identity=ID, keys=[alice.public_key], check_blobs=False)


def test_unsigned_image(image_layout: tuple[OCILayout, Descriptor], alice: LocalSigner) -> None:
    layout, root = image_layout
    with pytest.raises(VerificationError, match="no signature for") as info:
        verify_image(LayoutStore(layout), root, identity=ID, keys=[alice.public_key])
    assert info.value.reason == "signature"
