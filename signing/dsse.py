"""DSSE envelopes (Dead Simple Signing Envelope, v1).

Signatures are over the pre-authentication encoding::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

where LEN is the ASCII decimal byte length. The JSON envelope is
``{"payload": B64, "payloadType": TYPE, "signatures": [{"keyid": ID, "sig": B64}]}``.

securesystemslib's ``dsse`` does the PAE and builds what kiln signs (ADR 0019); each ``keyid`` is
the id securesystemslib computes for the key, so its ``Envelope.verify`` with keys it builds
itself finds kiln's signatures. kiln keeps its own code for three things the library does not do:

- parsing untrusted envelopes strictly (a size cap, no duplicate or unknown keys, standard base64);
  ``securesystemslib.dsse.Envelope.from_dict`` accepts any dict and mutates its input;
- verifying without trusting the ``keyid`` hint (every signature is tried against every trusted
  key, as the DSSE spec asks; securesystemslib only pairs signatures and keys by keyid, its issue
  #416), so envelopes signed by other tools (cosign writes an empty keyid) still verify;
- keeping every signature when signing and serializing (securesystemslib holds one per keyid).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from manifests.canonical import canonical_json
from manifests.errors import DocumentError, VerificationError
from manifests.oci import parse_json_object
from manifests.vocabulary import Reason
from signing.keys import PublicKey
from signing.signer import Signer

__all__ = [
    "pae",
    "sslib_pae",
    "DsseSignature",
    "Envelope",
    "sign_envelope",
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
]

MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
# Every signature is tried against every trusted key, so their number is CPU: 100,000 junk
# signatures in a 12 MB envelope took 30 s against two keys. Thresholds need a handful.
MAX_SIGNATURES = 64


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding of (payload_type, payload).

    Verification (the agent, `kiln verify-attestation`, `kiln release verify`) computes it here:
    loading securesystemslib's signer stack for one line of formatting cost 70-90 ms per command.
    Signing uses securesystemslib's (:func:`sslib_pae`); a property test keeps the two identical.
    """
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sslib_pae(payload_type: str, payload: bytes) -> bytes:
    """securesystemslib's PAE of (payload_type, payload): what kiln signs."""
    from securesystemslib.dsse import Envelope as SslibEnvelope

    message: bytes = SslibEnvelope(payload, payload_type, {}).pae()
    return message


@dataclass(frozen=True, slots=True, kw_only=True)
class DsseSignature:
    keyid: str
    sig: bytes


def _refuse(message: str) -> VerificationError:
    return VerificationError(f"DSSE envelope: {message}", reason=Reason.ATTESTATION)


def _b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise _refuse(f"{where} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(f"{where} is not valid base64") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[DsseSignature, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")} for s in self.signatures
            ],
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, *, max_signatures: int | None = MAX_SIGNATURES) -> Envelope:
        """Parse an envelope strictly; more than ``max_signatures`` signatures are refused before
        any is decoded (``None``: the caller bounds them itself, as :mod:`signing.root` does)."""
        try:
            d = parse_json_object(data, what="DSSE envelope", limit=MAX_ENVELOPE_BYTES)
        except DocumentError as exc:
            raise VerificationError(exc.message, reason=Reason.ATTESTATION) from None
        extra = sorted(set(d) - {"payload", "payloadType", "signatures"})
        if extra:
            raise _refuse(f"unknown key {extra[0]!r}")
        ptype = d.get("payloadType")
        if not isinstance(ptype, str):
            raise _refuse("payloadType must be a string")
        payload = _b64(d.get("payload"), "payload")
        sigs = d.get("signatures")
        if not isinstance(sigs, list):
            raise _refuse("signatures must be a list")
        if max_signatures is not None and len(sigs) > max_signatures:
            raise _refuse(f"{len(sigs)} signatures, at most {max_signatures} are read")
        out: list[DsseSignature] = []
        for i, s in enumerate(sigs):
            if not isinstance(s, dict):
                raise _refuse(f"signatures[{i}] must be an object")
            unknown = sorted(set(s) - {"keyid", "sig"})
            if unknown:
                raise _refuse(f"signatures[{i}]: unknown key {unknown[0]!r}")
            keyid = s.get("keyid", "")
            if not isinstance(keyid, str):
                raise _refuse(f"signatures[{i}].keyid must be a string")
            out.append(DsseSignature(keyid=keyid, sig=_b64(s.get("sig"), f"signatures[{i}].sig")))
        return cls(payload_type=ptype, payload=payload, signatures=tuple(out))

    def verified_key_ids(self, keys: Sequence[PublicKey]) -> frozenset[str]:
        """Key ids of ``keys`` that made a valid signature over this envelope's PAE.

        The ``keyid`` hint in the envelope is not trusted: every signature is tried against every key.
        """
        message = pae(self.payload_type, self.payload)
        found: set[str] = set()
        for s in self.signatures:
            for key in keys:
                if key.key_id in found:
                    continue
                try:
                    key.verify(s.sig, message)
                except VerificationError:
                    continue
                found.add(key.key_id)
        return frozenset(found)

    def verify(self, keys: Sequence[PublicKey], *, threshold: int = 1) -> bytes:
        """Return the payload if at least ``threshold`` distinct trusted keys signed it."""
        if threshold < 1:
            raise VerificationError("DSSE threshold must be at least 1", reason=Reason.POLICY)
        if not self.signatures:
            raise VerificationError("DSSE envelope has no signatures", reason=Reason.SIGNATURE)
        found = self.verified_key_ids(keys)
        if not found:
            raise VerificationError("no DSSE signature verifies with a trusted key", reason=Reason.SIGNATURE)
        if len(found) < threshold:
            raise VerificationError(
                f"DSSE envelope signed by {len(found)} distinct trusted key(s), {threshold} required",
                reason=Reason.THRESHOLD,
            )
        return self.payload


def sign_envelope(signers: Sequence[Signer], payload_type: str, payload: bytes) -> Envelope:
    """Sign ``payload`` with each signer, over securesystemslib's PAE; each keyid is
    securesystemslib's id for the signer's key. One signature per signer, in order (the library's
    envelope would keep one per keyid; the refusal tests sign with one key twice on purpose)."""
    message = sslib_pae(payload_type, payload)
    sigs = tuple(DsseSignature(keyid=s.public_key.dsse_key_id, sig=s.sign(message)) for s in signers)
    return Envelope(payload_type=payload_type, payload=payload, signatures=sigs)
