"""Signing and verifying release manifests (DSSE, threshold of release keys).

A release is signed as a DSSE envelope of payload type :data:`RELEASE_PAYLOAD_TYPE` whose payload
is the release's canonical JSON (:meth:`manifests.release.Release.to_bytes`). Each signer adds a
signature over the SAME payload bytes (:func:`add_signature`); the payload is never re-serialized.

:func:`verify_release` is pure (envelope bytes, trust root, time and the agent's memory in; a
:class:`~manifests.release.Release` or a :class:`~manifests.errors.VerificationError` out) and
checks, in this order, each refusal with the reason the agent logs:

===========  ====================================================================================
reason       refused when
===========  ====================================================================================
parse        the envelope is larger than its cap (checked before parsing), malformed, of another
             payload type, carries too many signatures; or the payload is not a canonical release
expired      the trust root has expired
signature    no signature, or none verifies with a release key of the root
threshold    fewer distinct release keys than the root's threshold signed (a key twice is once)
digest       a service image is not pinned by ``@sha256:<hex>``
identity     the release is for another channel than the host follows
policy       the root does not allow the channel, or no image rule covers a service's repository
rollback     version < highest accepted; or == highest with another payload digest
expired      the release's ``expires`` has passed
===========  ====================================================================================

Signatures are checked before the payload is parsed: nothing unsigned is interpreted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from manifests.bounded import JsonCaps, read_json
from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.release import MAX_RELEASE_BYTES, Release
from manifests.trustroot import TrustRoot
from manifests.vocabulary import Reason
from signing.dsse import DsseSignature, Envelope, sign_envelope, sslib_pae
from signing.errors import SigningError
from signing.policy import repository_glob
from signing.root import count_signatures, image_policy, open_envelope, role_keys
from signing.signer import Signer

__all__ = [
    "RELEASE_PAYLOAD_TYPE",
    "VerifiedRelease",
    "sign_release",
    "add_signature",
    "open_release_envelope",
    "verify_release",
    "check_release",
    "claimed_version",
]

RELEASE_PAYLOAD_TYPE = "application/vnd.kiln.release.v1+json"


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedRelease:
    """What verification established: the release, its exact payload bytes and who signed it."""

    release: Release
    payload: bytes
    payload_digest: Digest
    key_ids: frozenset[str]


def sign_release(release_payload: bytes, signers: Sequence[Signer]) -> Envelope:
    """Sign a release's canonical JSON; the payload is checked first so no one signs garbage."""
    if not signers:
        raise SigningError("no signers given")
    try:
        Release.from_payload(release_payload)
    except VerificationError as exc:
        raise SigningError(f"refusing to sign: {exc.message}", hint=exc.hint) from None
    return sign_envelope(signers, RELEASE_PAYLOAD_TYPE, release_payload)


def add_signature(envelope: Envelope, signer: Signer) -> Envelope:
    """``envelope`` with one more signature over the same payload bytes (any payload type).

    A key that already signed is refused: signing twice adds nothing towards a threshold.
    """
    message = sslib_pae(envelope.payload_type, envelope.payload)
    key = signer.public_key
    if key.key_id in envelope.verified_key_ids([key]):
        raise SigningError(
            f"the envelope is already signed by key {key.key_id}",
            hint="a threshold counts distinct keys: another signer must sign",
        )
    signature = DsseSignature(keyid=key.dsse_key_id, sig=signer.sign(message))
    return Envelope(
        payload_type=envelope.payload_type,
        payload=envelope.payload,
        signatures=(*envelope.signatures, signature),
    )


def open_release_envelope(data: bytes, *, size_cap: int = MAX_RELEASE_BYTES) -> Envelope:
    """Parse a release envelope (caps, payload type); reason ``parse`` for any refusal."""
    return open_envelope(
        data, payload_type=RELEASE_PAYLOAD_TYPE, payload_cap=size_cap, what="release envelope"
    )


def verify_release(
    envelope_bytes: bytes,
    *,
    root: TrustRoot,
    channel: str | None,
    now: datetime,
    highest_accepted: int | None,
    current_payload_digest: Digest | str | None,
    size_cap: int = MAX_RELEASE_BYTES,
) -> Release:
    """Verify a signed release against ``root`` (see the module docstring); return the release.

    ``highest_accepted`` is the highest version this host accepted on ``channel`` (None: none yet),
    ``current_payload_digest`` the payload digest of that release: re-reading it is allowed.
    """
    return check_release(
        envelope_bytes,
        root=root,
        channel=channel,
        now=now,
        highest_accepted=highest_accepted,
        current_payload_digest=current_payload_digest,
        size_cap=size_cap,
    ).release


def check_release(
    envelope_bytes: bytes,
    *,
    root: TrustRoot,
    channel: str | None,
    now: datetime,
    highest_accepted: int | None,
    current_payload_digest: Digest | str | None,
    size_cap: int = MAX_RELEASE_BYTES,
) -> VerifiedRelease:
    """:func:`verify_release`, returning the payload bytes, their digest and the signing key ids."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    env = open_release_envelope(envelope_bytes, size_cap=size_cap)
    if root.expired(now):
        raise VerificationError(
            f"trust root v{root.version} expired at {root.expires.isoformat()}",
            reason=Reason.EXPIRED,
            hint="install the next trust root (kiln root verify, then rotate)",
        )
    found = count_signatures(env, role_keys(root, root.releases), root.releases.threshold, what="release")
    payload = env.payload
    release = Release.from_payload(payload, limit=size_cap)
    if channel is not None and release.channel != channel:
        raise VerificationError(
            f"release is for channel {release.channel!r}, this host follows {channel!r}",
            reason=Reason.IDENTITY,
        )
    if not any(repository_glob(g).match(release.channel) for g in root.releases.channels):
        raise VerificationError(
            f"trust root v{root.version} does not allow releases on channel {release.channel!r}",
            reason=Reason.POLICY,
        )
    policy = image_policy(root)
    for service in release.services:
        if not any(rule.matches(service.image.repository) for rule in policy.rules):
            raise VerificationError(
                f"service {service.name!r}: no image rule of the trust root covers "
                f"{service.image.repository!r}",
                reason=Reason.POLICY,
                hint="add a rule for the repository to the trust root's images",
            )
    digest = Digest.of(payload)
    if highest_accepted is not None:
        if release.version < highest_accepted:
            raise VerificationError(
                f"release v{release.version} is older than the accepted v{highest_accepted}",
                reason=Reason.ROLLBACK,
                hint="to roll back, sign a new, higher release that pins the older digests",
            )
        if release.version == highest_accepted and str(digest) != str(current_payload_digest):
            if current_payload_digest is None:  # nothing to compare with: say so, not "differs"
                raise VerificationError(
                    f"release v{release.version} is the version already accepted, and no digest of "
                    "the accepted release was given to compare it with",
                    reason=Reason.ROLLBACK,
                    hint="give the accepted release's payload digest to accept the same release again",
                )
            raise VerificationError(
                f"release v{release.version} differs from the accepted release of that version",
                reason=Reason.ROLLBACK,
                hint="a version is signed once: publish changes under a higher version",
            )
    if release.expired(now):
        raise VerificationError(
            f"release v{release.version} expired at {release.expires.isoformat()}",
            reason=Reason.EXPIRED,
            hint="sign a new release with a later expires",
        )
    return VerifiedRelease(release=release, payload=payload, payload_digest=digest, key_ids=found)


def claimed_version(envelope_bytes: bytes, *, size_cap: int = MAX_RELEASE_BYTES) -> int | None:
    """The version a (possibly refused) envelope's payload claims, for logs only: never trusted.

    Read through the same bounded reader as everything else; anything unreadable is ``None``.
    """
    try:
        env = open_release_envelope(envelope_bytes, size_cap=size_cap)
        doc = read_json(env.payload, what="release payload", caps=JsonCaps(max_bytes=size_cap))
    except VerificationError:
        return None
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None
