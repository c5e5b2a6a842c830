"""Trust root documents: the YAML people write, the canonical payload, strict parsing."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from manifests.errors import ManifestError, VerificationError
from manifests.trustroot import (
    ATTESTATION_KINDS,
    KEY_ALGORITHMS,
    TrustRoot,
    normalize_pem,
    parse_trust_root,
    pem_key_id,
)
from signing.attestation import PredicateKind
from signing.keys import KeyAlgorithm, public_key_of


def key(n: int) -> tuple[str, str]:
    pub = public_key_of(ec.derive_private_key(1000 + n, ec.SECP256R1()))
    return pub.to_pem().decode(), pub.key_id


(P1, K1), (P2, K2), (P3, K3) = key(1), key(2), key(3)


def block(pem: str, indent: int) -> str:
    return "|\n" + textwrap.indent(pem, " " * indent)


def root_doc(
    *,
    root: str | None = None,
    releases: str | None = None,
    images: str | None = None,
    extra: str = "",
    head: str = "apiVersion: kiln.dev/v1\nkind: TrustRoot\nversion: 1\nexpires: 2030-01-01T00:00:00Z\n",
) -> bytes:
    root = root if root is not None else f"root:\n  keys:\n    - {block(P1, 6)}  threshold: 1\n"
    releases = (
        releases
        if releases is not None
        else f"releases:\n  keys:\n    - {block(P2, 6)}    - {block(P3, 6)}  threshold: 2\n"
    )
    images = (
        images
        if images is not None
        else "images:\n  keys:\n    team:\n      public_key: "
        + block(P3, 8)
        + "  rules:\n    - repositories: ['registry.example/team/**']\n      keys: [team]\n"
    )
    return (head + root + releases + images + extra).encode()


def parse(data: bytes) -> TrustRoot:
    return parse_trust_root(data, source="root.yaml")


def test_vocabularies_match_signing() -> None:
    assert set(ATTESTATION_KINDS) == {k.value for k in PredicateKind}
    assert set(KEY_ALGORITHMS) == {a.value for a in KeyAlgorithm}


def test_valid_root() -> None:
    r = parse(root_doc())
    assert (r.version, r.expires) == (1, datetime(2030, 1, 1, tzinfo=UTC))
    assert r.root.key_ids == (K1,)
    assert r.releases.key_ids == tuple(sorted((K2, K3)))
    assert (r.releases.threshold, r.releases.channels) == (2, ("*",))
    assert r.images is not None
    assert [k.name for k in r.images.keys] == ["team"]
    assert r.images.rules[0].repositories == ("registry.example/team/**",)
    assert dict(r.keys) == {K1: P1, K2: P2, K3: P3}
    # canonical payload, the YAML rendering and the strict parser all agree
    assert TrustRoot.from_payload(r.to_bytes()) == r
    assert parse(r.to_yaml().encode()) == r
    assert parse(r.to_bytes()) == r  # JSON is YAML


def test_key_ids_refer_to_keys_given_elsewhere() -> None:
    r = parse(root_doc(root=f"root:\n  keys: ['{K2}']\n"))
    assert r.root.key_ids == (K2,)
    table = f"keys:\n  {K1}: {block(P1, 4)}"
    r = parse(root_doc(root=f"root:\n  keys: ['{K1}']\n", extra=table))
    assert r.pem(K1) == P1


def test_pem_whitespace_is_normalized() -> None:
    messy = "  " + P1.replace("\n", "\n\n") + "  "
    assert pem_key_id(messy) == K1
    assert normalize_pem(messy) == P1
    assert pem_key_id("-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----") is None


INVALID = [
    (
        "threshold above keys",
        root_doc(root=f"root:\n  keys:\n    - {block(P1, 6)}  threshold: 2\n"),
        ["root.yaml:12:3: root.threshold: out of range (1 to 1, the number of distinct keys)"],
    ),
    (
        "same key twice",
        root_doc(releases=f"releases:\n  keys:\n    - {block(P2, 6)}    - '{K2}'\n  threshold: 2\n"),
        [
            "root.yaml:20:7: releases.keys[1]: the same key as releases.keys[0] "
            "(a key counts once towards a threshold)",
            "root.yaml:21:3: releases.threshold: out of range (1 to 1, the number of distinct keys)",
        ],
    ),
    (
        "unknown key id",
        root_doc(root="root:\n  keys: ['" + "ab" * 32 + "']\n"),
        [
            "root.yaml:6:10: root.keys[0]: unknown key id abababababababab... "
            "(give its PEM here or under keys:)"
        ],
    ),
    (
        "not a key",
        root_doc(root="root:\n  keys: [hello]\n"),
        [
            "root.yaml:6:10: root.keys[0]: not a public key or key id (write a PEM public key "
            "(-----BEGIN PUBLIC KEY-----) or the 64-hex id of a key given elsewhere)"
        ],
    ),
    (
        "broken pem",
        root_doc(
            root="root:\n  keys: ['-----BEGIN PUBLIC KEY-----\n\n    AAAA\n\n    -----END PUBLIC KEY-----']\n"
        ),
        [
            "root.yaml:6:10: root.keys[0]: not a PEM public key "
            "(expected -----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----)"
        ],
    ),
    (
        "empty role",
        root_doc(root="root:\n  keys: []\n"),
        ["root.yaml:6:3: root.keys: must not be empty (list the public keys of this role)"],
    ),
    (
        "misspelled role key",
        root_doc(root=f"root:\n  keys:\n    - {block(P1, 6)}  treshold: 1\n"),
        ["root.yaml:12:3: root.treshold: unknown key (did you mean 'threshold'?)"],
    ),
    (
        "key table id mismatch",
        root_doc(extra=f"keys:\n  {K2}: {block(P1, 4)}"),
        [f'root.yaml:38:3: keys["{K2}"]: key id does not match its key (the key\'s id is {K1})'],
    ),
    (
        "image rule unknown key",
        root_doc(images="images:\n  keys: {}\n  rules:\n    - {repositories: ['**'], keys: [nobody]}\n"),
        [
            "root.yaml:27:3: images.keys: must not be empty (name the keys that sign images)",
            "root.yaml:29:37: images.rules[0].keys[0]: unknown key 'nobody' (define it under images.keys)",
        ],
    ),
    (
        "image rule attestation",
        root_doc(
            images='images:\n  keys:\n    team: {public_key: "'
            + P3.replace("\n", "\\n")
            + "\"}\n  rules:\n    - {repositories: ['**'], keys: [team], attestations: [sbom]}\n"
        ),
        [
            "root.yaml:30:59: images.rules[0].attestations[0]: unknown value 'sbom' "
            "(expected one of: slsaprovenance, spdx)"
        ],
    ),
    (
        "empty rules",
        root_doc(
            images='images:\n  keys:\n    team: {public_key: "'
            + P3.replace("\n", "\\n")
            + '"}\n  rules: []\n'
        ),
        ["root.yaml:29:3: images.rules: must not be empty (an empty policy allows nothing)"],
    ),
    (
        "missing releases",
        root_doc(releases=""),
        ["root.yaml:1:1: releases: missing required key"],
    ),
    (
        "bad channel glob",
        root_doc(
            releases=f"releases:\n  keys:\n    - {block(P2, 6)}  channels: ['prod/*']\n",
        ),
        ["root.yaml:20:14: releases.channels[0]: invalid channel glob 'prod/*' (channel names with * and ?)"],
    ),
]


@pytest.mark.parametrize(("data", "lines"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid(data: bytes, lines: list[str]) -> None:
    with pytest.raises(ManifestError) as info:
        parse(data)
    assert str(info.value).splitlines() == lines


def test_payload_must_be_canonical_and_known() -> None:
    data = parse(root_doc()).to_bytes()
    d = json.loads(data)
    d["releases"]["keys"].reverse()
    with pytest.raises(VerificationError, match="not in canonical form") as info:
        TrustRoot.from_payload(json.dumps(d, sort_keys=True, separators=(",", ":")).encode())
    assert info.value.reason == "parse"
    d = json.loads(data)
    d["mirrors"] = []
    with pytest.raises(VerificationError, match="mirrors: unknown key") as info:
        TrustRoot.from_payload(json.dumps(d, sort_keys=True, separators=(",", ":")).encode())
    assert info.value.reason == "parse"
    with pytest.raises(VerificationError, match="exceeds the 10-byte cap"):
        TrustRoot.from_payload(data, limit=10)
