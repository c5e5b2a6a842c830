"""in-toto attestations in DSSE envelopes, stored as cosign stores them (``sha256-<hex>.att``).

A statement is in-toto Statement v1::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": NAME, "digest": {"sha256": HEX}}],
     "predicateType": URI, "predicate": {...}}

wrapped in a DSSE envelope with payloadType ``application/vnd.in-toto+json``. Verification checks
the envelope signatures (distinct trusted key ids, threshold), the statement type, that a subject
names the image digest, and the predicate type; it returns the verified statements.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import parse_json_object
from manifests.vocabulary import Reason
from signing.cosign import CosignLayer, attestation_layer
from signing.dsse import Envelope, sign_envelope
from signing.keys import PublicKey
from signing.signer import Signer
from signing.verify import none_matched

__all__ = [
    "STATEMENT_V1",
    "ACCEPTED_STATEMENT_TYPES",
    "PredicateKind",
    "VerifiedAttestation",
    "make_attestation_layer",
    "verify_attestation_layers",
    "parse_statement",
]

STATEMENT_V1 = "https://in-toto.io/Statement/v1"
ACCEPTED_STATEMENT_TYPES = frozenset({STATEMENT_V1, "https://in-toto.io/Statement/v0.1"})


class PredicateKind(enum.StrEnum):
    """The attestation kinds kiln produces, by their short CLI names."""

    SLSAPROVENANCE = "slsaprovenance"
    SPDX = "spdx"

    @property
    def predicate_type(self) -> str:
        return {
            PredicateKind.SLSAPROVENANCE: "https://slsa.dev/provenance/v1",
            PredicateKind.SPDX: "https://spdx.dev/Document",
        }[self]


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedAttestation:
    predicate_type: str
    statement: Mapping[str, Any]
    key_ids: frozenset[str]

    @property
    def predicate(self) -> Any:
        return self.statement.get("predicate")


def make_attestation_layer(signers: Sequence[Signer], statement: bytes) -> CosignLayer:
    """Sign statement bytes into a DSSE envelope layer (predicateType annotation from the statement)."""
    parsed = parse_statement(statement)
    envelope = sign_envelope(signers, MediaType.IN_TOTO, statement)
    return attestation_layer(envelope.to_bytes(), parsed["predicateType"])


def parse_statement(data: bytes) -> dict[str, Any]:
    """Parse and shape-check an in-toto statement (reason ``attestation`` on failure)."""
    try:
        st = parse_json_object(data, what="in-toto statement")
    except DocumentError as exc:
        raise VerificationError(exc.message, reason=Reason.ATTESTATION) from None
    if st.get("_type") not in ACCEPTED_STATEMENT_TYPES:
        raise VerificationError(
            f"in-toto statement: unknown _type {st.get('_type')!r}", reason=Reason.ATTESTATION
        )
    if not isinstance(st.get("predicateType"), str):
        raise VerificationError(
            "in-toto statement: predicateType must be a string", reason=Reason.ATTESTATION
        )
    subjects = st.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise VerificationError(
            "in-toto statement: subject must be a non-empty list", reason=Reason.ATTESTATION
        )
    for i, s in enumerate(subjects):
        if not isinstance(s, dict) or not isinstance(s.get("digest"), dict):
            raise VerificationError(
                f"in-toto statement: subject[{i}] has no digest map", reason=Reason.ATTESTATION
            )
    return st


def _names_digest(statement: Mapping[str, Any], digest: Digest) -> bool:
    return any(s["digest"].get("sha256") == digest.hex for s in statement["subject"])


def _open_layer(
    index: int, layer: CosignLayer, keys: Sequence[PublicKey]
) -> tuple[frozenset[str], dict[str, Any]]:
    envelope = Envelope.from_bytes(layer.blob)
    if envelope.payload_type != MediaType.IN_TOTO:
        raise VerificationError(
            f"attestation layer {index}: payloadType {envelope.payload_type!r} is not in-toto",
            reason=Reason.ATTESTATION,
        )
    found = envelope.verified_key_ids(keys)
    if not found:
        raise VerificationError(
            f"attestation layer {index}: no signature verifies with a trusted key", reason=Reason.SIGNATURE
        )
    return found, parse_statement(envelope.payload)


def verify_attestation_layers(
    layers: Sequence[CosignLayer],
    *,
    image_digest: Digest,
    keys: Sequence[PublicKey],
    predicate_type: str,
    threshold: int = 1,
) -> tuple[VerifiedAttestation, ...]:
    """Every statement of ``predicate_type`` about ``image_digest`` signed by trusted keys.

    The threshold counts distinct key ids over all layers carrying such a statement. Refused with
    reason ``attestation`` when none is found, ``threshold`` when too few keys signed.
    """
    if threshold < 1:
        raise VerificationError("threshold must be at least 1", reason=Reason.POLICY)
    results: list[VerifiedAttestation] = []
    errors: list[VerificationError] = []
    for i, layer in enumerate(layers):
        if layer.media_type != MediaType.DSSE_ENVELOPE:
            continue
        try:
            found, statement = _open_layer(i, layer, keys)
        except VerificationError as exc:
            errors.append(exc)
            continue
        if statement["predicateType"] != predicate_type:
            continue
        if not _names_digest(statement, image_digest):
            errors.append(
                VerificationError(
                    f"attestation layer {i}: statement subject does not name {image_digest}",
                    reason=Reason.DIGEST,
                )
            )
            continue
        results.append(VerifiedAttestation(predicate_type=predicate_type, statement=statement, key_ids=found))
    if not results:
        if errors:
            raise none_matched(image_digest, errors, what="attestations")
        raise VerificationError(
            f"no {predicate_type} attestation for {image_digest}", reason=Reason.ATTESTATION
        )
    distinct = frozenset().union(*(r.key_ids for r in results))
    if len(distinct) < threshold:
        raise VerificationError(
            f"{predicate_type}: {len(distinct)} distinct trusted key(s) attested, {threshold} required",
            reason=Reason.THRESHOLD,
        )
    return tuple(results)
