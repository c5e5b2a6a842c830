"""Trust root rotation (N -> N+1 only, threshold of the old AND the new root keys) and loading."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from manifests.errors import ManifestError, VerificationError
from manifests.trustroot import Role, TrustRoot
from signing.dsse import sign_envelope
from signing.release import RELEASE_PAYLOAD_TYPE, add_signature
from signing.root import (
    ROOT_PAYLOAD_TYPE,
    image_policy,
    load_root,
    role_keys,
    sign_root,
    verify_root,
    verify_root_update,
)
from signing.signer import LocalSigner
from tests.signing.conftest import p256
from tests.signing.test_release_verify import R1, R2, make_root

NOW = datetime(2026, 6, 1, tzinfo=UTC)
A, B, C, D, E = (p256(n) for n in (0x4001, 0x4002, 0x4003, 0x4004, 0x4005))
OLD = make_root(version=5, root_keys=(A, B, C), root_threshold=2)


def next_root(
    version: int = 6, *, keys: tuple[LocalSigner, ...] = (A, B, C), threshold: int = 2, **kw: object
) -> TrustRoot:
    return make_root(version=version, root_keys=keys, root_threshold=threshold, **kw)  # type: ignore[arg-type]


def env(root: TrustRoot | bytes, *signers: LocalSigner, payload_type: str = ROOT_PAYLOAD_TYPE) -> bytes:
    payload = root if isinstance(root, bytes) else root.to_bytes()
    return sign_envelope(list(signers), payload_type, payload).to_bytes()


def test_rotation_to_new_keys() -> None:
    new = next_root(keys=(C, D, E))
    data = env(new, A, B, D, E)  # two of the old root keys, two of the new (C counts for both)
    assert verify_root_update(OLD, data, now=NOW) == new
    # and then, the root after that trusts only the new keys
    newer = next_root(7, keys=(D, E), threshold=1)
    assert verify_root_update(new, env(newer, D, C), now=NOW).version == 7
    with pytest.raises(VerificationError) as info:
        verify_root_update(new, env(newer, A, B), now=NOW)
    assert info.value.reason == "signature"


def _tampered() -> bytes:
    e = json.loads(env(next_root(), A, B))
    payload = base64.b64decode(e["payload"]).replace(b'"threshold":2', b'"threshold":1', 1)
    e["payload"] = base64.b64encode(payload).decode()
    return json.dumps(e).encode()


ROTATIONS: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("skips a version", lambda: env(next_root(7), A, B), "policy", "trust root v7 skips v6"),
    (
        "same version",
        lambda: env(next_root(5), A, B),
        "rollback",
        "trust root v5 is not newer than the trusted v5",
    ),
    (
        "older version",
        lambda: env(next_root(4), A, B),
        "rollback",
        "trust root v4 is not newer than the trusted v5",
    ),
    (
        "signed only by the new keys",
        lambda: env(next_root(keys=(D, E)), D, E),
        "signature",
        "no signature on new trust root (keys of root v5) verifies with a trusted key",
    ),
    (
        "one old key of two",
        lambda: env(next_root(keys=(A, D, E)), A, D, E),
        "threshold",
        "new trust root (keys of root v5) is signed by 1 distinct trusted key(s), 2 required",
    ),
    (
        "one old key twice",
        lambda: env(next_root(), A, A),
        "threshold",
        "new trust root (keys of root v5) is signed by 1 distinct trusted key(s), 2 required",
    ),
    (
        "old keys but not the new root's own",
        lambda: env(next_root(keys=(D, E)), A, B),
        "signature",
        "no signature on trust root v6 (its own keys) verifies with a trusted key",
    ),
    (
        "below the new root's own threshold",
        lambda: env(next_root(keys=(A, D, E), threshold=3), A, B, D),
        "threshold",
        "trust root v6 (its own keys) is signed by 2 distinct trusted key(s), 3 required",
    ),
    (
        "expired new root",
        lambda: env(next_root(expires=datetime(2026, 1, 1, tzinfo=UTC)), A, B),
        "expired",
        "trust root v6 expired at 2026-01-01T00:00:00+00:00",
    ),
    ("tampered payload", _tampered, "signature", "no signature on new trust root (keys of root v5)"),
    (
        "a release envelope",
        lambda: env(next_root(), A, B, payload_type=RELEASE_PAYLOAD_TYPE),
        "parse",
        f"trust root envelope: payload type '{RELEASE_PAYLOAD_TYPE}'",
    ),
    (
        "non-canonical payload",
        lambda: env(next_root().to_bytes() + b" ", A, B),
        "parse",
        "trust root payload is not in canonical form",
    ),
    (
        "oversized",
        lambda: b"{" + b" " * (8 << 20) + b"}",
        "parse",
        "trust root envelope: 8388610 bytes exceeds",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason", "start"), [r[1:] for r in ROTATIONS], ids=[r[0] for r in ROTATIONS]
)
def test_bad_rotations_are_refused(make: Callable[[], bytes], reason: str, start: str) -> None:
    with pytest.raises(VerificationError) as info:
        verify_root_update(OLD, make(), now=NOW)
    assert (info.value.reason, info.value.message[: len(start)]) == (reason, start)


def test_an_expired_root_can_still_be_rotated() -> None:
    old = replace(OLD, expires=datetime(2026, 1, 1, tzinfo=UTC))
    assert verify_root_update(old, env(next_root(), A, B), now=NOW).version == 6


def test_self_signed_root_and_loading() -> None:
    envelope = sign_root(OLD, [A])
    with pytest.raises(VerificationError) as info:
        verify_root(envelope.to_bytes())
    assert info.value.reason == "threshold"
    data = add_signature(envelope, B).to_bytes()
    assert verify_root(data) == OLD
    assert load_root(data, source="root.dsse.json") == OLD
    assert load_root(OLD.to_yaml().encode(), source="root.yaml") == OLD
    with pytest.raises(ManifestError, match=r"root\.yaml:3:1: version: expected an integer"):
        load_root(OLD.to_yaml().replace("version: 5", "version: five").encode(), source="root.yaml")


def test_keys_and_policy_from_a_root() -> None:
    assert [k.key_id for k in role_keys(OLD, OLD.releases)] == list(OLD.releases.key_ids)
    policy = image_policy(OLD)
    assert policy.expires == OLD.expires
    assert policy.rules[0].matches("registry.example/team/a/b")
    assert not policy.rules[0].matches("registry.example/other")
    assert image_policy(replace(OLD, images=None)).rules == ()


def test_unsupported_key_type_is_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    from manifests.trustroot import pem_key_id

    kid = pem_key_id(pem)
    assert kid is not None
    root = replace(OLD, root=Role(key_ids=(kid,)), keys=(*OLD.keys, (kid, pem)))
    with pytest.raises(VerificationError) as info:
        role_keys(root, root.root)
    assert info.value.reason == "key"
    assert "unsupported public key type RSA-2048" in info.value.message
    assert R1.public_key.key_id in OLD.releases.key_ids
    assert R2.public_key.key_id in OLD.releases.key_ids
