"""Trust policy parsing and evaluation; attestations in DSSE stored as cosign stores them."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

import pytest

from builder.attestations import SPDX_PREDICATE, in_toto_statement, slsa_provenance, spdx_document
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import ManifestError, VerificationError
from manifests.layout import OCILayout
from manifests.oci import Descriptor
from signing.attestation import PredicateKind, make_attestation_layer, verify_attestation_layers
from signing.cosign import attestation_tag, build_artifact, signature_layer
from signing.dsse import Envelope
from signing.image import attest_image, stored_layers, verify_image_attestations
from signing.payload import SimpleSigningPayload
from signing.policy import TrustPolicy, repository_glob
from signing.signer import LocalSigner
from signing.store import LayoutStore

IMG = Digest("1f" * 32)
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def indent(pem: bytes) -> str:
    return textwrap.indent(pem.decode(), "      ")


def policy_yaml(alice: LocalSigner, bob: LocalSigner, *, rule: str) -> bytes:
    return (
        "version: 1\nkeys:\n"
        f"  alice:\n    algorithm: ecdsa-p256\n    public_key: |\n{indent(alice.public_key.to_pem())}"
        f"  bob:\n    public_key: |\n{indent(bob.public_key.to_pem())}"
        f"rules:\n{rule}"
    ).encode()


def sig(signer: LocalSigner, ref: str = "reg.example/apps/web:v1"):  # type: ignore[no-untyped-def]
    p = SimpleSigningPayload(docker_reference=ref, manifest_digest=IMG).to_bytes()
    return signature_layer(p, signer.sign(p))


def provenance_layer(signer: LocalSigner, digest: Digest = IMG):  # type: ignore[no-untyped-def]
    st = slsa_provenance("reg.example/apps/web", digest, Digest("bb" * 32), [], "0.1.0")
    return make_attestation_layer([signer], canonical_json(st))


@pytest.mark.parametrize(
    ("pattern", "repo", "hit"),
    [
        ("reg.example/apps/*", "reg.example/apps/web", True),
        ("reg.example/apps/*", "reg.example/apps/web/x", False),
        ("reg.example/**", "reg.example/apps/web/x", True),
        ("reg.example/app?", "reg.example/apps", True),
        ("reg.example/app.", "reg.example/apps", False),
    ],
)
def test_repository_glob(pattern: str, repo: str, hit: bool) -> None:
    assert bool(repository_glob(pattern).match(repo)) is hit


def test_threshold_policy_two_keys(alice: LocalSigner, bob: LocalSigner) -> None:
    rule = "  - repositories: ['reg.example/apps/*']\n    keys: [alice, bob]\n    threshold: 2\n"
    policy = TrustPolicy.from_bytes(policy_yaml(alice, bob, rule=rule))
    kwargs = {"repository": "reg.example/apps/web", "tag": "v1", "image_digest": IMG, "now": NOW}
    policy.evaluate(signatures=[sig(alice), sig(bob)], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="1 distinct policy key") as info:
        policy.evaluate(signatures=[sig(alice), sig(alice)], **kwargs)  # type: ignore[arg-type]
    assert info.value.reason == "threshold"


def test_policy_repository_not_covered(alice: LocalSigner, bob: LocalSigner) -> None:
    rule = "  - repositories: ['reg.example/apps/*']\n    keys: [alice]\n"
    policy = TrustPolicy.from_bytes(policy_yaml(alice, bob, rule=rule))
    with pytest.raises(
        VerificationError, match=r"no trust policy rule covers repository 'reg.example/other'"
    ) as info:
        policy.evaluate(
            repository="reg.example/other", tag=None, image_digest=IMG, signatures=[sig(alice)], now=NOW
        )
    assert info.value.reason == "policy"


def test_policy_key_not_allowed_for_repository(alice: LocalSigner, bob: LocalSigner) -> None:
    rule = "  - repositories: ['reg.example/apps/*']\n    keys: [alice]\n"
    policy = TrustPolicy.from_bytes(policy_yaml(alice, bob, rule=rule))
    with pytest.raises(VerificationError, match="does not verify") as info:
        policy.evaluate(
            repository="reg.example/apps/web", tag="v1", image_digest=IMG, signatures=[sig(bob)], now=NOW
        )
    assert info.value.reason == "signature"


def test_policy_expiry(alice: LocalSigner, bob: LocalSigner) -> None:
    data = policy_yaml(alice, bob, rule="  - repositories: ['**']\n    keys: [alice]\n").replace(
        b"version: 1\n", b"version: 1\nexpires: 2025-01-01T00:00:00Z\n"
    )
    policy = TrustPolicy.from_bytes(data)
    with pytest.raises(VerificationError, match="trust policy expired") as info:
        policy.evaluate(
            repository="reg.example/apps/web", tag="v1", image_digest=IMG, signatures=[sig(alice)], now=NOW
        )
    assert info.value.reason == "expired"


def test_policy_required_attestations(alice: LocalSigner, bob: LocalSigner) -> None:
    rule = "  - repositories: ['reg.example/apps/*']\n    keys: [alice]\n    attestations: [slsaprovenance]\n"
    policy = TrustPolicy.from_bytes(policy_yaml(alice, bob, rule=rule))
    common = {"repository": "reg.example/apps/web", "tag": "v1", "image_digest": IMG, "now": NOW}
    policy.evaluate(signatures=[sig(alice)], attestations=[provenance_layer(alice)], **common)  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match=r"no https://slsa.dev/provenance/v1 attestation") as info:
        policy.evaluate(signatures=[sig(alice)], attestations=[], **common)  # type: ignore[arg-type]
    assert info.value.reason == "attestation"
    with pytest.raises(VerificationError, match="no signature verifies with a trusted key"):
        policy.evaluate(signatures=[sig(alice)], attestations=[provenance_layer(bob)], **common)  # type: ignore[arg-type]


def test_empty_policy_from_rules_list(alice: LocalSigner, bob: LocalSigner) -> None:
    # One parser (manifests.trustpolicy) for files and trust roots: an empty rule list is an error
    # when the document is read, never a policy that could be evaluated.
    with pytest.raises(ManifestError, match="rules: must not be empty") as info:
        TrustPolicy.from_bytes(
            policy_yaml(alice, bob, rule="  []\n").replace(b"rules:\n  []", b"rules: []"), source="p.yaml"
        )
    assert "an empty policy allows nothing" in str(info.value)
    # A loaded policy without rules (a trust root with no images section) still refuses.
    with pytest.raises(VerificationError, match="trust policy is empty") as refused:
        TrustPolicy().evaluate(repository="r", tag=None, image_digest=IMG, signatures=[sig(alice)], now=NOW)
    assert refused.value.reason == "policy"


BAD_POLICIES = [
    ("unknown top key", "version: 1\nrulez: []\n", "p.yaml:2:1: rulez: unknown key (did you mean 'rules'?)"),
    ("bad version", "version: 2\n", "p.yaml:1:1: version: unsupported version 2 (use version: 1)"),
    ("bad expires", "expires: soon\n", "p.yaml:1:1: expires: invalid time 'soon'"),
    (
        "naive expires",
        "expires: 2030-01-01T00:00:00\n",
        "p.yaml:1:1: expires: invalid time '2030-01-01T00:00:00' (write an RFC 3339 UTC time",
    ),
    (
        "rule unknown key",
        "rules:\n  - repositories: [a]\n    keys: []\n    treshold: 2\n",
        "p.yaml:4:5: rules[0].treshold: unknown key (did you mean 'threshold'?)",
    ),
    (
        "rule undefined key",
        "rules:\n  - repositories: [a]\n    keys: [nobody]\n",
        "p.yaml:3:12: rules[0].keys[0]: unknown key 'nobody' (define it under keys)",
    ),
    (
        "rule missing repos",
        "rules:\n  - keys: [a]\n",
        "p.yaml:2:5: rules[0].repositories: missing required key",
    ),
    (
        "bad key pem",
        "keys:\n  k:\n    public_key: nope\n",
        "p.yaml:3:5: keys.k.public_key: not a PEM public key",
    ),
    (
        "bad algorithm",
        "keys:\n  k:\n    algorithm: rsa\n    public_key: x\n",
        "p.yaml:3:5: keys.k.algorithm: unknown value 'rsa' (expected one of: ecdsa-p256, ed25519)",
    ),
    ("not yaml", "a: [", "p.yaml:1:5: invalid YAML"),
    ("rules not list", "rules: {}\n", "p.yaml:1:1: rules: expected a list of rules, got mapping"),
    ("no keys", "rules: []\n", "p.yaml:1:1: keys: missing required key"),
    ("empty keys", "keys: {}\nrules: []\n", "p.yaml:1:1: keys: must not be empty"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_POLICIES, ids=[b[0] for b in BAD_POLICIES])
def test_policy_parse_errors(name: str, text: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        TrustPolicy.from_bytes(text.encode(), source="p.yaml")
    assert message in str(info.value)


def test_policy_collects_every_problem() -> None:
    with pytest.raises(ManifestError) as info:
        TrustPolicy.from_bytes(b"version: 3\nfoo: 1\nrules: {}\n", source="p.yaml")
    assert len(info.value.problems) == 4  # keys missing, version, foo, rules not a list
    lines = [(p.line or 0, p.col or 0) for p in info.value.problems]
    assert lines == sorted(lines)  # in position order, like every manifests/ parser


def test_policy_threshold_above_key_count(alice: LocalSigner, bob: LocalSigner) -> None:
    rule = "  - repositories: ['*']\n    keys: [alice, alice]\n    threshold: 2\n"
    message = r"rules\[0\].threshold: out of range \(1 to 1, the distinct keys named\)"
    with pytest.raises(ManifestError, match=message):
        TrustPolicy.from_bytes(policy_yaml(alice, bob, rule=rule), source="p.yaml")


def test_policy_rsa_key_for_p256_is_refused(alice: LocalSigner, bob: LocalSigner) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    text = f"keys:\n  r:\n    algorithm: ecdsa-p256\n    public_key: |\n{indent(rsa_pem)}".encode()
    with pytest.raises(ManifestError, match="unsupported public key type RSA-2048"):
        TrustPolicy.from_bytes(text, source="p.yaml")


# -- attestations ----------------------------------------------------------------------------------


def test_attestation_round_trip_and_layer_format(alice: LocalSigner) -> None:
    layer = provenance_layer(alice)
    assert layer.media_type == "application/vnd.dsse.envelope.v1+json"
    slsa = "https://slsa.dev/provenance/v1"
    assert layer.annotations == {"dev.cosignproject.cosign/signature": "", "predicateType": slsa}
    env = Envelope.from_bytes(layer.blob)
    assert env.payload_type == "application/vnd.in-toto+json"
    got = verify_attestation_layers([layer], image_digest=IMG, keys=[alice.public_key], predicate_type=slsa)
    assert got[0].predicate["runDetails"]["builder"]["version"] == {"kiln": "0.1.0"}


def test_attestation_for_another_image(alice: LocalSigner) -> None:
    with pytest.raises(VerificationError, match="statement subject does not name") as info:
        verify_attestation_layers(
            [provenance_layer(alice, Digest("99" * 32))],
            image_digest=IMG,
            keys=[alice.public_key],
            predicate_type=PredicateKind.SLSAPROVENANCE.predicate_type,
        )
    assert info.value.reason == "digest"


def test_attestation_threshold_counts_distinct_keys(alice: LocalSigner) -> None:
    layers = [provenance_layer(alice), provenance_layer(alice)]
    with pytest.raises(VerificationError, match="1 distinct trusted key") as info:
        verify_attestation_layers(
            layers,
            image_digest=IMG,
            keys=[alice.public_key],
            predicate_type=PredicateKind.SLSAPROVENANCE.predicate_type,
            threshold=2,
        )
    assert info.value.reason == "threshold"


def test_attestation_tampered_envelope_payload(alice: LocalSigner) -> None:
    layer = provenance_layer(alice)
    env = Envelope.from_bytes(layer.blob)
    forged = Envelope(
        payload_type=env.payload_type,
        payload=env.payload.replace(b"0.1.0", b"6.6.6"),
        signatures=env.signatures,
    )
    from signing.cosign import attestation_layer

    with pytest.raises(VerificationError, match="no signature verifies") as info:
        verify_attestation_layers(
            [attestation_layer(forged.to_bytes(), "https://slsa.dev/provenance/v1")],
            image_digest=IMG,
            keys=[alice.public_key],
            predicate_type="https://slsa.dev/provenance/v1",
        )
    assert info.value.reason == "signature"


def test_attest_and_verify_in_a_layout(
    image_layout: tuple[OCILayout, Descriptor], alice: LocalSigner
) -> None:
    layout, root = image_layout
    store = LayoutStore(layout)
    sbom = spdx_document("web", "1", root.digest, [("a", "11" * 32, 1)], [], "1970-01-01T00:00:00Z")
    attest_image(
        store, root, [alice], canonical_json(in_toto_statement(SPDX_PREDICATE, sbom, [("web", root.digest)]))
    )
    prov = slsa_provenance("web", root.digest, Digest("bb" * 32), [], "0.1.0")
    attest_image(store, root, [alice], canonical_json(prov))
    assert len(stored_layers(store, attestation_tag(root.digest))) == 2
    got = verify_image_attestations(store, root, keys=[alice.public_key], predicate_type=SPDX_PREDICATE)
    assert got[0].predicate["spdxVersion"] == "SPDX-2.3"


def test_cosign_artifact_blobs_cover_manifest(alice: LocalSigner) -> None:
    art = build_artifact([provenance_layer(alice)])
    assert set(art.blobs) == {art.manifest.config.digest, *(d.digest for d in art.manifest.layers)}


# -- policy objects ----------------------------------------------------------------------------------


def signed_image(*layers):  # type: ignore[no-untyped-def]
    from signing.policy import SignedImage
    from signing.verify import Identity

    return SignedImage(
        identity=Identity(repository="reg.example/apps/web", tag="v1"), digest=IMG, signatures=layers
    )


def test_empty_all_of_and_any_of_refuse(alice: LocalSigner) -> None:
    from signing.policy import AllOf, AnyOf

    for empty in (AllOf(()), AnyOf(())):
        with pytest.raises(VerificationError, match=r"empty .* policy allows nothing") as info:
            empty.verify(signed_image(sig(alice)), now=NOW)
        assert info.value.reason == "policy"


def test_all_of_and_any_of_compose(alice: LocalSigner, bob: LocalSigner) -> None:
    from signing.policy import AllOf, AnyOf, SignedBy

    by_alice = SignedBy(keys=(alice.public_key,))
    by_bob = SignedBy(keys=(bob.public_key,))
    image = signed_image(sig(alice))
    AnyOf((by_bob, by_alice)).verify(image, now=NOW)
    AllOf((by_alice,)).verify(image, now=NOW)
    with pytest.raises(VerificationError, match="does not verify") as info:
        AllOf((by_alice, by_bob)).verify(image, now=NOW)
    assert info.value.reason == "signature"
    with pytest.raises(VerificationError, match="does not verify"):
        AnyOf((by_bob,)).verify(image, now=NOW)


def test_unsafe_no_op_says_so_every_time(caplog: pytest.LogCaptureFixture) -> None:
    from signing.policy import UnsafeNoOp

    policy = UnsafeNoOp()
    assert "unsafe" in policy.name
    with caplog.at_level("WARNING", logger="signing.policy"):
        policy.verify(signed_image(), now=NOW)
        policy.verify(signed_image(), now=NOW)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "WITHOUT verification" in r.message]
    assert len(warnings) == 2


def test_policy_rules_all_apply(alice: LocalSigner, bob: LocalSigner) -> None:
    rule = (
        "  - repositories: ['reg.example/**']\n    keys: [alice]\n"
        "  - repositories: ['reg.example/apps/*']\n    keys: [bob]\n"
    )
    policy = TrustPolicy.from_bytes(policy_yaml(alice, bob, rule=rule))
    assert [r.name for r in policy.for_repository("reg.example/apps/web").policies] == ["rule 0", "rule 1"]
    policy.verify(signed_image(sig(alice), sig(bob)), now=NOW)
    with pytest.raises(VerificationError, match="does not verify"):
        policy.verify(signed_image(sig(alice)), now=NOW)
