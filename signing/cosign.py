"""cosign's storage format for signatures and attestations: an OCI image manifest per signed
digest, tagged ``sha256-<hex>.sig`` (signatures) or ``sha256-<hex>.att`` (attestations).

Each signature is one layer: the payload blob, media type
``application/vnd.dev.cosign.simplesigning.v1+json``, with annotation
``dev.cosignproject.cosign/signature`` = standard base64 of the signature. Attestation layers are
DSSE envelopes (``application/vnd.dsse.envelope.v1+json``) with an empty signature annotation
and a ``predicateType`` annotation, as cosign writes them. The config blob is the minimal image
config cosign's go-containerregistry writes: zero timestamps and the layers' digests as diff_ids.

Everything here is pure: manifests and blobs in, manifests and blobs out.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from manifests.vocabulary import Reason

__all__ = [
    "SIGNATURE_ANNOTATION",
    "PREDICATE_TYPE_ANNOTATION",
    "signature_tag",
    "attestation_tag",
    "CosignLayer",
    "CosignArtifact",
    "signature_layer",
    "attestation_layer",
    "build_artifact",
    "append_layer",
    "read_layers",
    "BlobFetcher",
    "MAX_LAYERS",
    "MAX_LAYER_BYTES",
    "MAX_ARTIFACT_BYTES",
]

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_TYPE_ANNOTATION = "predicateType"
MAX_LAYERS = 1000
MAX_LAYER_BYTES = 16 * 1024 * 1024
# All the layers of one signature or attestation manifest are held in memory at once: without a
# total, 1,000 layers of 16 MiB each asked for 16 GiB.
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024
_ZERO_TIME = "0001-01-01T00:00:00Z"

BlobFetcher = Callable[[Descriptor], bytes]


def signature_tag(digest: Digest) -> str:
    return f"{digest.tag_form}.sig"


def attestation_tag(digest: Digest) -> str:
    return f"{digest.tag_form}.att"


@dataclass(frozen=True, slots=True, kw_only=True)
class CosignLayer:
    media_type: str
    blob: bytes
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(
            media_type=self.media_type,
            digest=Digest.of(self.blob),
            size=len(self.blob),
            annotations=MappingProxyType(dict(self.annotations)),
        )


def signature_layer(payload: bytes, signature: bytes) -> CosignLayer:
    return CosignLayer(
        media_type=MediaType.COSIGN_SIMPLESIGNING,
        blob=payload,
        annotations=MappingProxyType({SIGNATURE_ANNOTATION: base64.b64encode(signature).decode("ascii")}),
    )


def attestation_layer(envelope: bytes, predicate_type: str) -> CosignLayer:
    return CosignLayer(
        media_type=MediaType.DSSE_ENVELOPE,
        blob=envelope,
        annotations=MappingProxyType({SIGNATURE_ANNOTATION: "", PREDICATE_TYPE_ANNOTATION: predicate_type}),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CosignArtifact:
    """A signature (or attestation) manifest with every blob it references."""

    manifest: OCIManifest
    config: bytes
    layers: tuple[CosignLayer, ...]

    @property
    def blobs(self) -> dict[Digest, bytes]:
        out = {Digest.of(self.config): self.config}
        for layer in self.layers:
            out[Digest.of(layer.blob)] = layer.blob
        return out


def _config(layers: Sequence[CosignLayer]) -> bytes:
    # The shape go-containerregistry writes for empty.Image + AppendLayers (cosign's signature image).
    doc = {
        "architecture": "",
        "created": _ZERO_TIME,
        "history": [{"created": _ZERO_TIME} for _ in layers],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(x.blob)) for x in layers]},
        "config": {},
    }
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def build_artifact(layers: Sequence[CosignLayer]) -> CosignArtifact:
    if not layers:
        raise ValueError("a cosign artifact needs at least one layer")
    config = _config(layers)
    manifest = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=Digest.of(config), size=len(config)),
        layers=tuple(x.descriptor for x in layers),
        media_type=MediaType.OCI_MANIFEST,
    )
    return CosignArtifact(manifest=manifest, config=config, layers=tuple(layers))


def append_layer(existing: Sequence[CosignLayer], layer: CosignLayer) -> CosignArtifact:
    """A new artifact with ``layer`` appended; an identical layer already present is not repeated."""
    if any(x.descriptor == layer.descriptor for x in existing):
        return build_artifact(existing)
    return build_artifact([*existing, layer])


def read_layers(
    manifest_bytes: bytes, fetch: BlobFetcher, *, what: str = "signature manifest"
) -> tuple[CosignLayer, ...]:
    """Parse a stored cosign manifest and fetch each layer, checking size and digest.

    A malformed manifest is refused (reason ``manifest``); a blob whose bytes do not match its
    descriptor is refused (reason ``digest``).
    """
    try:
        manifest = OCIManifest.from_bytes(manifest_bytes)
    except DocumentError as exc:
        raise VerificationError(f"{what}: {exc.message}", reason=Reason.MANIFEST) from None
    if len(manifest.layers) > MAX_LAYERS:
        raise VerificationError(
            f"{what}: {len(manifest.layers)} layers exceeds {MAX_LAYERS}", reason=Reason.MANIFEST
        )
    total = sum(desc.size for desc in manifest.layers)
    if total > MAX_ARTIFACT_BYTES:
        raise VerificationError(
            f"{what}: its layers add up to {total} bytes, cap {MAX_ARTIFACT_BYTES}", reason=Reason.MANIFEST
        )
    out: list[CosignLayer] = []
    for i, desc in enumerate(manifest.layers):
        if desc.size > MAX_LAYER_BYTES:
            raise VerificationError(
                f"{what}: layer {i} is {desc.size} bytes, cap {MAX_LAYER_BYTES}", reason=Reason.MANIFEST
            )
        blob = fetch(desc)
        if len(blob) != desc.size:
            raise VerificationError(
                f"{what}: layer {i}: size {len(blob)} does not match descriptor size {desc.size}",
                reason=Reason.DIGEST,
            )
        desc.digest.check(blob, what=f"{what} layer {i}")
        out.append(CosignLayer(media_type=desc.media_type, blob=blob, annotations=desc.annotations))
    return tuple(out)
