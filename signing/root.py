"""Trust roots: signing them, loading them, and rotating them TUF-style.

A trust root (:class:`manifests.trustroot.TrustRoot`) is signed as a DSSE envelope of payload type
:data:`ROOT_PAYLOAD_TYPE` over its canonical JSON. Rotation (:func:`verify_root_update`) accepts
root N+1 only when

1. the envelope parses (size cap before parsing, payload type, signature count): else ``parse``;
2. a threshold of root N's ``root`` keys signed it: ``signature`` / ``threshold``;
3. its payload parses strictly and canonically: ``parse``;
4. a threshold of its OWN ``root`` keys signed it too (so a new key set proves it holds its keys):
   ``signature`` / ``threshold``;
5. its version is exactly N+1: a lower or equal one is ``rollback``, a skipped one ``policy``;
6. it has not expired: ``expired``.

Root N itself may have expired: rotating is how an expired root is replaced (as TUF does). An
expired root refuses everything else (see :func:`signing.release.verify_release`).

Thresholds count distinct key ids (sha256 of the SubjectPublicKeyInfo), whatever ``keyid`` hint an
envelope carries, so one key signing twice counts once. Everything here is pure: bytes, roots and
the time in; a root or a :class:`~manifests.errors.VerificationError` out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from manifests.errors import KilnError, VerificationError
from manifests.trustroot import MAX_ROOT_BYTES, Role, TrustRoot, parse_trust_root
from manifests.vocabulary import Reason
from signing.dsse import MAX_SIGNATURES as DSSE_MAX_SIGNATURES
from signing.dsse import Envelope, sign_envelope
from signing.keys import PublicKey
from signing.policy import TrustPolicy, load_policy
from signing.signer import Signer

__all__ = [
    "ROOT_PAYLOAD_TYPE",
    "MAX_SIGNATURES",
    "envelope_cap",
    "open_envelope",
    "count_signatures",
    "role_keys",
    "image_policy",
    "check_root_keys",
    "sign_root",
    "verify_root",
    "verify_root_update",
    "load_root",
]

ROOT_PAYLOAD_TYPE = "application/vnd.kiln.root.v1+json"
MAX_SIGNATURES = DSSE_MAX_SIGNATURES
_SIGNATURE_ALLOWANCE = 1024  # bytes of envelope JSON per signature (DER ECDSA or Ed25519 + key id)


def envelope_cap(payload_cap: int) -> int:
    """The largest envelope that can carry a ``payload_cap``-byte payload and the signatures."""
    return (payload_cap + 2) // 3 * 4 + MAX_SIGNATURES * _SIGNATURE_ALLOWANCE + 1024


def open_envelope(data: bytes, *, payload_type: str, payload_cap: int, what: str) -> Envelope:
    """Parse an envelope of ``payload_type``; every refusal is reason ``parse``.

    The size cap is checked before any parsing.
    """
    cap = envelope_cap(payload_cap)
    if len(data) > cap:
        raise VerificationError(
            f"{what}: {len(data)} bytes exceeds the {cap}-byte cap",
            reason=Reason.PARSE,
            hint="refusing to parse it",
        )
    try:
        env = Envelope.from_bytes(data, max_signatures=None)  # bounded by the size cap; counted below
    except VerificationError as exc:
        raise VerificationError(f"{what}: {exc.message}", reason=Reason.PARSE) from None
    if env.payload_type != payload_type:
        raise VerificationError(
            f"{what}: payload type {env.payload_type!r}, expected {payload_type!r}", reason=Reason.PARSE
        )
    if len(env.payload) > payload_cap:
        raise VerificationError(
            f"{what}: payload of {len(env.payload)} bytes exceeds the {payload_cap}-byte cap",
            reason=Reason.PARSE,
        )
    if len(env.signatures) > MAX_SIGNATURES:
        raise VerificationError(
            f"{what}: {len(env.signatures)} signatures, at most {MAX_SIGNATURES} are read",
            reason=Reason.PARSE,
        )
    return env


def count_signatures(
    env: Envelope, keys: Sequence[PublicKey], threshold: int, *, what: str
) -> frozenset[str]:
    """The distinct trusted key ids that signed ``env``; raise unless there are ``threshold``."""
    if not env.signatures:
        raise VerificationError(f"{what} is not signed", reason=Reason.SIGNATURE)
    found = env.verified_key_ids(keys)
    if not found:
        raise VerificationError(
            f"no signature on {what} verifies with a trusted key", reason=Reason.SIGNATURE
        )
    if len(found) < threshold:
        raise VerificationError(
            f"{what} is signed by {len(found)} distinct trusted key(s), {threshold} required",
            reason=Reason.THRESHOLD,
        )
    return found


def role_keys(root: TrustRoot, role: Role) -> tuple[PublicKey, ...]:
    """The public keys of ``role``; an unreadable or unsupported key is refused (``key``)."""
    out = []
    for kid in role.key_ids:
        try:
            key = PublicKey.from_pem(root.pem(kid).encode("ascii"), what=f"key {kid[:16]}")
        except KilnError as exc:
            raise VerificationError(exc.message, reason=Reason.KEY, hint=exc.hint) from None
        out.append(key)
    return tuple(out)


def image_policy(root: TrustRoot) -> TrustPolicy:
    """The image rules as a :class:`TrustPolicy` (expiring with the root). No rules: an empty
    policy, which refuses every image."""
    if root.images is None:
        return TrustPolicy(expires=root.expires)
    return load_policy(root.images, expires=root.expires)


def check_root_keys(root: TrustRoot) -> None:
    """Load every key of ``root`` once, so a bad key is reported when the root is written."""
    role_keys(root, root.root)
    role_keys(root, root.releases)
    image_policy(root)


def sign_root(root: TrustRoot, signers: Sequence[Signer]) -> Envelope:
    """A DSSE envelope over ``root``'s canonical JSON, one signature per signer."""
    check_root_keys(root)
    return sign_envelope(signers, ROOT_PAYLOAD_TYPE, root.to_bytes())


def _open_root(data: bytes) -> Envelope:
    return open_envelope(
        data, payload_type=ROOT_PAYLOAD_TYPE, payload_cap=MAX_ROOT_BYTES, what="trust root envelope"
    )


def verify_root(envelope_bytes: bytes) -> TrustRoot:
    """A root trusted on first use: it must carry a threshold of its own ``root`` keys.

    Expiry is not checked here (rotation replaces expired roots); every use of the root checks it.
    """
    env = _open_root(envelope_bytes)
    root = TrustRoot.from_payload(env.payload)
    count_signatures(env, role_keys(root, root.root), root.root.threshold, what=f"trust root v{root.version}")
    return root


def verify_root_update(old: TrustRoot, new_envelope_bytes: bytes, *, now: datetime) -> TrustRoot:
    """Accept root ``old.version + 1`` (see the module docstring for every check, in order)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    env = _open_root(new_envelope_bytes)
    count_signatures(
        env,
        role_keys(old, old.root),
        old.root.threshold,
        what=f"new trust root (keys of root v{old.version})",
    )
    new = TrustRoot.from_payload(env.payload)
    count_signatures(
        env, role_keys(new, new.root), new.root.threshold, what=f"trust root v{new.version} (its own keys)"
    )
    if new.version <= old.version:
        raise VerificationError(
            f"trust root v{new.version} is not newer than the trusted v{old.version}", reason=Reason.ROLLBACK
        )
    if new.version != old.version + 1:
        raise VerificationError(
            f"trust root v{new.version} skips v{old.version + 1}",
            reason=Reason.POLICY,
            hint="rotate one version at a time: apply every root in between, in order",
        )
    if new.expired(now):
        raise VerificationError(
            f"trust root v{new.version} expired at {new.expires.isoformat()}",
            reason=Reason.EXPIRED,
            hint="sign a root with a later expires",
        )
    return new


def load_root(data: bytes, *, source: str) -> TrustRoot:
    """A trust root file: a signed envelope (self-verified, :func:`verify_root`) or YAML people
    wrote and installed out of band. Keys are checked either way."""
    if data.lstrip()[:1] == b"{" and b'"payloadType"' in data:
        root = verify_root(data)
    else:
        root = parse_trust_root(data, source=source)
    check_root_keys(root)
    return root
