"""Signing, verifying and attesting images held in an :class:`~signing.store.ArtifactStore`.

An image is a manifest or an index; for an index, the index and every per-platform manifest it
lists are signed (and verified) each under their own ``sha256-<hex>.sig`` tag, so a verifier that
resolves a platform first finds a signature too. Verification also re-hashes the image's config
and layer blobs, so a flipped byte anywhere in the image is caught.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex, OCIManifest, parse_json_object
from manifests.vocabulary import Reason
from signing.attestation import VerifiedAttestation, make_attestation_layer, verify_attestation_layers
from signing.cosign import (
    MAX_LAYER_BYTES,
    CosignLayer,
    append_layer,
    attestation_tag,
    read_layers,
    signature_layer,
    signature_tag,
)
from signing.keys import PublicKey
from signing.payload import SimpleSigningPayload
from signing.policy import Policy, SignedBy, SignedImage
from signing.signer import Signer
from signing.store import ArtifactStore
from signing.verify import Identity

__all__ = [
    "ImageNode",
    "image_nodes",
    "stored_layers",
    "sign_image",
    "verify_image",
    "pinned_root",
    "attest_image",
    "verify_image_attestations",
]

_INDEX_TYPES = (MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST_LIST)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageNode:
    """One signed object: its digest and the exact manifest/index bytes."""

    digest: Digest
    raw: bytes
    manifest: OCIManifest | None
    index: OCIIndex | None


def _load(store: ArtifactStore, desc: Descriptor) -> ImageNode:
    raw = store.read_blob(desc.digest)
    if len(raw) != desc.size:
        raise VerificationError(
            f"manifest {desc.digest}: size {len(raw)} differs from descriptor size {desc.size}",
            reason=Reason.DIGEST,
        )
    try:
        if desc.media_type in _INDEX_TYPES:
            return ImageNode(digest=desc.digest, raw=raw, manifest=None, index=OCIIndex.from_bytes(raw))
        return ImageNode(digest=desc.digest, raw=raw, manifest=OCIManifest.from_bytes(raw), index=None)
    except DocumentError as exc:
        raise VerificationError(f"manifest {desc.digest}: {exc.message}", reason=Reason.MANIFEST) from None


def image_nodes(store: ArtifactStore, root: Descriptor) -> tuple[ImageNode, ...]:
    """The root and, for an index, each manifest it lists (one level, as OCI images use)."""
    top = _load(store, root)
    if top.index is None:
        return (top,)
    children = []
    for child in top.index.manifests:
        if child.media_type in _INDEX_TYPES:
            raise VerificationError(
                f"index {root.digest}: nested indexes are not supported", reason=Reason.MANIFEST
            )
        children.append(_load(store, child))
    return (top, *children)


def stored_layers(store: ArtifactStore, tag: str) -> tuple[CosignLayer, ...]:
    """The layers of the cosign manifest under ``tag``; empty when there is none."""
    desc = store.lookup_tag(tag)
    if desc is None:
        return ()
    raw = store.read_blob(desc.digest)
    return read_layers(raw, lambda d: store.read_blob(d.digest, limit=MAX_LAYER_BYTES), what=f"{tag}")


def _store_layer(store: ArtifactStore, tag: str, layer: CosignLayer, subject: Digest) -> Digest:
    artifact = append_layer(stored_layers(store, tag), layer)
    for blob in artifact.blobs.values():
        store.write_blob(blob)
    raw = artifact.manifest.to_bytes()
    digest = store.write_blob(raw)
    ann = {"dev.kiln.subject": str(subject)}
    store.set_tag(
        tag,
        Descriptor(
            media_type=MediaType.OCI_MANIFEST, digest=digest, size=len(raw), annotations=MappingProxyType(ann)
        ),
    )
    return digest


def sign_image(
    store: ArtifactStore,
    root: Descriptor,
    signer: Signer,
    *,
    reference: str,
    optional: Mapping[str, Any] | None = None,
) -> tuple[Digest, ...]:
    """Sign the image (and each platform manifest of an index); returns the digests signed."""
    signed = []
    for node in image_nodes(store, root):
        payload = SimpleSigningPayload(
            docker_reference=reference, manifest_digest=node.digest, optional=optional
        ).to_bytes()
        layer = signature_layer(payload, signer.sign(payload))
        _store_layer(store, signature_tag(node.digest), layer, node.digest)
        signed.append(node.digest)
    return tuple(signed)


def _verify_blobs(store: ArtifactStore, manifest: OCIManifest) -> None:
    for desc in (manifest.config, *manifest.layers):
        store.verify_blob(desc.digest, size=desc.size)


def verify_image(
    store: ArtifactStore,
    root: Descriptor,
    *,
    identity: Identity,
    policy: Policy | None = None,
    keys: Sequence[PublicKey] = (),
    threshold: int = 1,
    now: datetime | None = None,
    check_blobs: bool = True,
) -> tuple[Digest, ...]:
    """Verify the image (the index and every platform manifest it lists) under ``policy`` and, by
    default, re-hash every blob it references. Returns the digests verified; raises
    VerificationError on any failure.

    Every manifest must be signed; attestations are those of the image as a whole (the root's, as
    ``kiln attest`` writes them). Without ``policy``, ``keys`` and ``threshold`` make a
    :class:`~signing.policy.SignedBy`. This is the one image verification: ``kiln verify`` and the
    agent both call it.
    """
    judge: Policy = policy if policy is not None else SignedBy(keys=tuple(keys), threshold=threshold)
    when = now if now is not None else datetime.now(UTC)
    verified = []
    nodes = image_nodes(store, root)
    attestations = stored_layers(store, attestation_tag(root.digest)) if policy is not None else ()
    for node in nodes:
        image = SignedImage(
            identity=identity,
            digest=node.digest,
            signatures=stored_layers(store, signature_tag(node.digest)),
            attestations=attestations,
            attested=root.digest,
        )
        judge.verify(image, now=when)
        if check_blobs and node.manifest is not None:
            _verify_blobs(store, node.manifest)
        verified.append(node.digest)
    return tuple(verified)


def pinned_root(store: ArtifactStore, digest: Digest) -> Descriptor:
    """The descriptor of the manifest or index ``digest`` names (a release pins only the digest)."""
    raw = store.read_blob(digest)
    try:
        doc = parse_json_object(raw, what=f"manifest {digest}")
    except DocumentError as exc:
        raise VerificationError(exc.message, reason=Reason.MANIFEST) from None
    index = doc.get("mediaType") in _INDEX_TYPES or "manifests" in doc
    media_type = MediaType.OCI_INDEX if index else MediaType.OCI_MANIFEST
    return Descriptor(media_type=media_type, digest=digest, size=len(raw))


def attest_image(
    store: ArtifactStore, root: Descriptor, signers: Sequence[Signer], statement: bytes
) -> Digest:
    """Sign an in-toto statement into a DSSE envelope and append it under ``sha256-<hex>.att``."""
    layer = make_attestation_layer(signers, statement)
    return _store_layer(store, attestation_tag(root.digest), layer, root.digest)


def verify_image_attestations(
    store: ArtifactStore,
    root: Descriptor,
    *,
    keys: Sequence[PublicKey],
    predicate_type: str,
    threshold: int = 1,
) -> tuple[VerifiedAttestation, ...]:
    _load(store, root)  # the root manifest itself must be intact
    layers = stored_layers(store, attestation_tag(root.digest))
    return verify_attestation_layers(
        layers, image_digest=root.digest, keys=keys, predicate_type=predicate_type, threshold=threshold
    )
