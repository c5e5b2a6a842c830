"""Signed releases: signing, adding signatures, and every refusal the agent relies on."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.release import MAX_RELEASE_BYTES, ImagePin, Release, load_release
from manifests.trustroot import ImageKey, ImageRule, ImageRules, ReleaseRole, Role, TrustRoot
from signing.dsse import DsseSignature, Envelope, sign_envelope
from signing.errors import SigningError
from signing.release import (
    RELEASE_PAYLOAD_TYPE,
    add_signature,
    check_release,
    sign_release,
    verify_release,
)
from signing.root import MAX_SIGNATURES, ROOT_PAYLOAD_TYPE
from signing.signer import LocalSigner
from tests.signing.conftest import p256

DATA = Path(__file__).parent.parent / "data" / "release"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
R1, R2, R3, ROOTKEY, IMAGEKEY, MALLORY = (p256(n) for n in (0x1001, 0x1002, 0x1003, 0x2001, 0x3001, 0x6666))


def pem(s: LocalSigner) -> str:
    return s.public_key.to_pem().decode()


def make_root(
    *,
    version: int = 1,
    releases: tuple[LocalSigner, ...] = (R1, R2, R3),
    threshold: int = 2,
    channels: tuple[str, ...] = ("*",),
    expires: datetime = datetime(2030, 1, 1, tzinfo=UTC),
    repositories: tuple[str, ...] = ("registry.example/team/**",),
    root_keys: tuple[LocalSigner, ...] = (ROOTKEY,),
    root_threshold: int = 1,
) -> TrustRoot:
    keys = {s.public_key.key_id: pem(s) for s in (*releases, *root_keys)}
    return TrustRoot(
        version=version,
        expires=expires,
        root=Role(key_ids=tuple(sorted(s.public_key.key_id for s in root_keys)), threshold=root_threshold),
        releases=ReleaseRole(
            key_ids=tuple(sorted(s.public_key.key_id for s in releases)),
            threshold=threshold,
            channels=channels,
        ),
        images=ImageRules(
            keys=(ImageKey(name="team", public_key=pem(IMAGEKEY)),),
            rules=(ImageRule(repositories=repositories, keys=("team",)),),
        ),
        keys=tuple(sorted(keys.items())),
    )


ROOT = make_root()
RELEASE = load_release(DATA / "production-42.yaml")


def release(version: int = 42, **changes: object) -> Release:
    return replace(RELEASE, version=version, **changes)  # type: ignore[arg-type]


def signed(rel: Release | bytes, *signers: LocalSigner) -> bytes:
    payload = rel if isinstance(rel, bytes) else rel.to_bytes()
    return sign_envelope(list(signers), RELEASE_PAYLOAD_TYPE, payload).to_bytes()


def verify(data: bytes, *, root: TrustRoot = ROOT, **kw: object) -> Release:
    args: dict[str, object] = {
        "channel": "production",
        "now": NOW,
        "highest_accepted": None,
        "current_payload_digest": None,
    }
    args.update(kw)
    return verify_release(data, root=root, **args)  # type: ignore[arg-type]


def test_good_release_verifies() -> None:
    got = check_release(
        signed(RELEASE, R1, R2),
        root=ROOT,
        channel="production",
        now=NOW,
        highest_accepted=41,
        current_payload_digest=None,
    )
    assert got.release == RELEASE
    assert got.payload == RELEASE.to_bytes()
    assert got.payload_digest == Digest.of(RELEASE.to_bytes()) == RELEASE.digest
    assert got.key_ids == {R1.public_key.key_id, R2.public_key.key_id}


def test_signers_add_signatures_over_the_same_bytes() -> None:
    env = sign_release(RELEASE.to_bytes(), [R1])
    env2 = add_signature(env, R2)
    assert env2.payload is env.payload
    assert [s.keyid for s in env2.signatures] == [R1.public_key.dsse_key_id, R2.public_key.dsse_key_id]
    with pytest.raises(VerificationError) as info:
        verify(env.to_bytes())
    assert info.value.reason == "threshold"
    assert verify(env2.to_bytes()) == RELEASE
    with pytest.raises(SigningError, match="already signed by key"):
        add_signature(env2, R1)


def test_sign_release_refuses_what_is_not_a_release() -> None:
    with pytest.raises(SigningError, match="refusing to sign: release payload is not in canonical form"):
        sign_release(RELEASE.to_bytes() + b" ", [R1])
    with pytest.raises(SigningError, match="no signers"):
        sign_release(RELEASE.to_bytes(), [])


def _two_by_one_key() -> bytes:
    env = sign_envelope([R1, R1], RELEASE_PAYLOAD_TYPE, RELEASE.to_bytes())
    assert env.signatures[0].sig != env.signatures[1].sig  # ECDSA: two distinct signatures, one key
    return env.to_bytes()


def _tampered() -> bytes:
    env = json.loads(signed(RELEASE, R1, R2))
    payload = base64.b64decode(env["payload"]).replace(b'"replicas":2', b'"replicas":9')
    env["payload"] = base64.b64encode(payload).decode()
    return json.dumps(env).encode()


def _tampered_keyid_hint() -> bytes:
    env = json.loads(signed(RELEASE, MALLORY, MALLORY))
    env["signatures"][0]["keyid"] = R1.public_key.key_id
    env["signatures"][1]["keyid"] = R2.public_key.key_id
    return json.dumps(env).encode()


def _tag_pinned() -> bytes:
    d = json.loads(RELEASE.to_bytes())
    d["services"][0]["image"] = "registry.example/team/hello-web:v2"
    payload = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    return signed(payload, R1, R2)


def _oversized() -> bytes:
    return b"{" + b" " * (4 * MAX_RELEASE_BYTES) + b"}"


def _many_signatures() -> bytes:
    env = sign_envelope([R1, R2], RELEASE_PAYLOAD_TYPE, RELEASE.to_bytes())
    junk = tuple(DsseSignature(keyid="x", sig=b"\x30\x00") for _ in range(MAX_SIGNATURES))
    return Envelope(
        payload_type=env.payload_type, payload=env.payload, signatures=env.signatures + junk
    ).to_bytes()


ATTACKS: list[tuple[str, Callable[[], bytes], dict[str, object], str, str]] = [
    ("unsigned", lambda: signed(RELEASE), {}, "signature", "release is not signed"),
    (
        "untrusted key",
        lambda: signed(RELEASE, MALLORY),
        {},
        "signature",
        "no signature on release verifies with a trusted key",
    ),
    (
        "keyid hints lie",
        _tampered_keyid_hint,
        {},
        "signature",
        "no signature on release verifies with a trusted key",
    ),
    (
        "threshold 2 met by one key twice",
        _two_by_one_key,
        {},
        "threshold",
        "release is signed by 1 distinct trusted key(s), 2 required",
    ),
    (
        "one trusted plus one untrusted",
        lambda: signed(RELEASE, R1, MALLORY),
        {},
        "threshold",
        "release is signed by 1 distinct trusted key(s), 2 required",
    ),
    ("tampered payload", _tampered, {}, "signature", "no signature on release verifies with a trusted key"),
    (
        "expired release",
        lambda: signed(release(expires=datetime(2026, 5, 1, tzinfo=UTC)), R1, R2),
        {},
        "expired",
        "release v42 expired at 2026-05-01T00:00:00+00:00",
    ),
    (
        "replay of 41 after 42",
        lambda: signed(release(41), R1, R2),
        {"highest_accepted": 42, "current_payload_digest": release(42).digest},
        "rollback",
        "release v41 is older than the accepted v42",
    ),
    (
        "same version, other payload",
        lambda: signed(release(42, channel="production"), R1, R3),
        {"highest_accepted": 42, "current_payload_digest": "sha256:" + "0" * 64},
        "rollback",
        "release v42 differs from the accepted release of that version",
    ),
    (
        "tag instead of digest",
        _tag_pinned,
        {},
        "digest",
        "release payload: services[0].image: pins a tag, not a digest ('registry.example/team/hello-web:v2')",
    ),
    (
        "oversized document",
        _oversized,
        {},
        "parse",
        f"release envelope: {4 * MAX_RELEASE_BYTES + 2} bytes exceeds the",
    ),
    (
        "payload over the cap",
        lambda: signed(RELEASE, R1, R2),
        {"size_cap": 100},
        "parse",
        "release envelope: payload of",
    ),
    (
        "too many signatures",
        _many_signatures,
        {},
        "parse",
        f"release envelope: {MAX_SIGNATURES + 2} signatures",
    ),
    (
        "root envelope as release",
        lambda: sign_envelope([R1, R2], ROOT_PAYLOAD_TYPE, RELEASE.to_bytes()).to_bytes(),
        {},
        "parse",
        f"release envelope: payload type '{ROOT_PAYLOAD_TYPE}', expected '{RELEASE_PAYLOAD_TYPE}'",
    ),
    (
        "not an envelope",
        lambda: b"[1]",
        {},
        "parse",
        "release envelope: DSSE envelope: expected a JSON object",
    ),
    (
        "non-canonical payload",
        lambda: signed(RELEASE.to_bytes() + b"\n", R1, R2),
        {},
        "parse",
        "release payload is not in canonical form",
    ),
    (
        "other channel",
        lambda: signed(release(channel="staging"), R1, R2),
        {},
        "identity",
        "release is for channel 'staging', this host follows 'production'",
    ),
    (
        "expired root",
        lambda: signed(RELEASE, R1, R2),
        {"root": make_root(expires=datetime(2026, 1, 1, tzinfo=UTC))},
        "expired",
        "trust root v1 expired at 2026-01-01T00:00:00+00:00",
    ),
    (
        "channel not allowed by the root",
        lambda: signed(RELEASE, R1, R2),
        {"root": make_root(channels=("staging", "canary-*"))},
        "policy",
        "trust root v1 does not allow releases on channel 'production'",
    ),
    (
        "repository no image rule covers",
        lambda: signed(RELEASE, R1, R2),
        {"root": make_root(repositories=("registry.example/other/*",))},
        "policy",
        "service 'web': no image rule of the trust root covers 'registry.example/team/hello-web'",
    ),
]


@pytest.mark.parametrize(
    ("make", "kw", "reason", "start"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
def test_attacks_are_refused(
    make: Callable[[], bytes], kw: dict[str, object], reason: str, start: str
) -> None:
    with pytest.raises(VerificationError) as info:
        verify(make(), **kw)
    assert (info.value.reason, info.value.message[: len(start)]) == (reason, start)


def test_rollback_is_a_new_higher_release_pinning_old_digests() -> None:
    v41 = release(41)
    old_images = [ImagePin(repository=s.image.repository, digest=Digest("9" * 64)) for s in RELEASE.services]
    v41 = replace(
        v41, services=tuple(replace(s, image=i) for s, i in zip(v41.services, old_images, strict=True))
    )
    v43 = replace(v41, version=43)
    with pytest.raises(VerificationError) as info:
        verify(signed(v41, R1, R2), highest_accepted=42, current_payload_digest=RELEASE.digest)
    assert info.value.reason == "rollback"
    got = verify(signed(v43, R1, R2), highest_accepted=42, current_payload_digest=RELEASE.digest)
    assert got.images == tuple(old_images)


def test_rereading_the_current_release_is_allowed() -> None:
    data = signed(RELEASE, R1, R2)
    assert verify(data, highest_accepted=42, current_payload_digest=RELEASE.digest) == RELEASE
    assert verify(data, highest_accepted=42, current_payload_digest=str(RELEASE.digest)) == RELEASE


def test_channel_is_optional_and_root_globs_apply() -> None:
    data = signed(release(channel="canary-eu"), R1, R2)
    root = make_root(channels=("staging", "canary-*"))
    assert verify(data, root=root, channel=None).channel == "canary-eu"


def test_naive_time_is_a_bug() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(signed(RELEASE, R1, R2), now=datetime(2026, 1, 1))
