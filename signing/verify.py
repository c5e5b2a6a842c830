"""Verifying cosign image signatures: pure functions, ``None`` out or a VerificationError.

For each signature layer the checks run in this order, on the exact bytes read (nothing is
re-serialized):

1. the layer blob matches its descriptor (``digest``), done by :func:`signing.cosign.read_layers`;
2. the signature annotation is standard base64 and verifies over the payload bytes with one of
   the trusted keys (``signature``; a wrong-type key is ``key``);
3. the payload parses strictly (``payload``);
4. the payload names the image digest being verified (``digest``);
5. the payload's docker-reference names the expected repository, and tag when one is expected
   (``identity``).

A layer passing every check counts its key id once; the threshold counts distinct key ids
(``threshold``). When no layer passes, the error says that none matched and why, layer by layer
(a lone signature's error is that message itself, so it is reported by what is wrong with it).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.mediatypes import MediaType
from manifests.vocabulary import Reason
from signing.cosign import SIGNATURE_ANNOTATION, BlobFetcher, CosignLayer, read_layers
from signing.keys import PublicKey
from signing.payload import SimpleSigningPayload, split_reference

__all__ = [
    "Identity",
    "verify_signature_layers",
    "verify_signature_manifest",
    "signature_key_ids",
    "none_matched",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """The expected identity: a repository, and a tag when the verifier names one."""

    repository: str
    tag: str | None = None

    @classmethod
    def parse(cls, reference: str) -> Identity:
        repo, tag = split_reference(reference)
        return cls(repository=repo, tag=tag)

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}" if self.tag else self.repository

    def check(self, docker_reference: str) -> None:
        repo, tag = split_reference(docker_reference)
        if repo != self.repository:
            raise VerificationError(
                f"signature is for repository {repo!r}, expected {self.repository!r}", reason=Reason.IDENTITY
            )
        if self.tag is not None and tag != self.tag:
            raise VerificationError(
                f"signature is for tag {tag!r} of {repo!r}, expected tag {self.tag!r}", reason=Reason.IDENTITY
            )


def _dedupe(keys: Sequence[PublicKey]) -> tuple[PublicKey, ...]:
    return tuple({k.key_id: k for k in keys}.values())


def _check_layer(
    layer: CosignLayer, index: int, *, image_digest: Digest, identity: Identity, keys: Sequence[PublicKey]
) -> str:
    where = f"signature layer {index}"
    if layer.media_type != MediaType.COSIGN_SIMPLESIGNING:
        raise VerificationError(
            f"{where}: media type {layer.media_type!r} is not a simple-signing payload",
            reason=Reason.MANIFEST,
        )
    encoded = layer.annotations.get(SIGNATURE_ANNOTATION)
    if not encoded:
        raise VerificationError(f"{where}: no {SIGNATURE_ANNOTATION} annotation", reason=Reason.SIGNATURE)
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(
            f"{where}: signature annotation is not standard base64", reason=Reason.SIGNATURE
        ) from None
    first: VerificationError | None = None
    signer: PublicKey | None = None
    for key in keys:
        try:
            key.verify(signature, layer.blob)
        except VerificationError as exc:
            first = first or exc
            continue
        signer = key
        break
    if signer is None:
        detail = f" ({first.message})" if first is not None and len(keys) == 1 else ""
        raise VerificationError(
            f"{where}: signature does not verify with any of {len(keys)} trusted key(s){detail}",
            reason=Reason.SIGNATURE,
            hint=first.hint if first is not None else None,
        )
    payload = SimpleSigningPayload.from_bytes(layer.blob)
    if payload.manifest_digest != image_digest:
        raise VerificationError(
            f"{where}: payload is for image {payload.manifest_digest}, not {image_digest}",
            reason=Reason.DIGEST,
        )
    identity.check(payload.docker_reference)
    return signer.key_id


def _check_all(
    layers: Sequence[CosignLayer], *, image_digest: Digest, identity: Identity, keys: Sequence[PublicKey]
) -> tuple[frozenset[str], list[VerificationError]]:
    trusted = _dedupe(keys)
    found: set[str] = set()
    errors: list[VerificationError] = []
    for i, layer in enumerate(layers):
        try:
            found.add(_check_layer(layer, i, image_digest=image_digest, identity=identity, keys=trusted))
        except VerificationError as exc:
            errors.append(exc)
    return frozenset(found), errors


def signature_key_ids(
    layers: Sequence[CosignLayer], *, image_digest: Digest, identity: Identity, keys: Sequence[PublicKey]
) -> tuple[frozenset[str], VerificationError | None]:
    """Distinct key ids with a fully valid signature, and the first layer's error (if any failed)."""
    found, errors = _check_all(layers, image_digest=image_digest, identity=identity, keys=keys)
    return found, errors[0] if errors else None


_MAX_LISTED = 5


def none_matched(
    image_digest: Digest, errors: Sequence[VerificationError], *, what: str = "signatures"
) -> VerificationError:
    """One error for "no signature matched": why, briefly, for each (the first few)."""
    if len(errors) == 1:
        return errors[0]
    reasons = "; ".join(e.message for e in errors[:_MAX_LISTED])
    more = f"; and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
    return VerificationError(
        f"none of the {len(errors)} {what} on {image_digest} matched: {reasons}{more}",
        reason=errors[0].reason,
        hint=next((e.hint for e in errors if e.hint), None),
    )


def verify_signature_layers(
    layers: Sequence[CosignLayer],
    *,
    image_digest: Digest,
    identity: Identity,
    keys: Sequence[PublicKey],
    threshold: int = 1,
) -> None:
    if threshold < 1:
        raise VerificationError("threshold must be at least 1", reason=Reason.POLICY)
    if not keys:
        raise VerificationError("no trusted keys given", reason=Reason.POLICY)
    if not layers:
        raise VerificationError(f"no signatures for {image_digest}", reason=Reason.SIGNATURE)
    found, errors = _check_all(layers, image_digest=image_digest, identity=identity, keys=keys)
    if not found:
        if errors:
            raise none_matched(image_digest, errors)
        raise VerificationError(
            f"no valid signature for {image_digest}", reason=Reason.SIGNATURE
        )  # pragma: no cover
    if len(found) < threshold:
        raise VerificationError(
            f"{image_digest}: {len(found)} distinct trusted key(s) signed, {threshold} required",
            reason=Reason.THRESHOLD,
        )


def verify_signature_manifest(
    manifest_bytes: bytes,
    fetch: BlobFetcher,
    *,
    image_digest: Digest,
    identity: Identity,
    keys: Sequence[PublicKey],
    threshold: int = 1,
) -> None:
    """Verify a stored ``sha256-<hex>.sig`` manifest (exact bytes) and its payload blobs."""
    layers = read_layers(manifest_bytes, fetch)
    verify_signature_layers(
        layers, image_digest=image_digest, identity=identity, keys=keys, threshold=threshold
    )
