"""Signed releases as OCI artifacts: pushed beside images, fetched by the host agents.

A release envelope (DSSE, :mod:`signing.release`) is stored as an OCI image manifest with

- ``artifactType: application/vnd.kiln.release.v1+json``,
- ``config``: the OCI empty descriptor (``application/vnd.oci.empty.v1+json``, the two bytes ``{}``),
- one layer: the envelope's exact bytes, ``application/vnd.dsse.envelope.v1+json``,
- annotations ``dev.kiln.release.channel`` and ``dev.kiln.release.version`` (informational only:
  the agent trusts nothing but the verified payload),

and named by two tags: ``<channel>-<version>`` (immutable: re-publishing other bytes under it is
refused, as for image version tags) and ``<channel>`` (moved to the newest version; moving it to a
LOWER version than it names is refused unless forced, since every agent would refuse it anyway).

:func:`fetch_release` is what the agent calls: the channel tag's manifest (capped like every
manifest), checked to be a release artifact, then the layer with a size cap checked BEFORE it is
read (an oversized envelope is refused with reason ``parse``, as
:func:`signing.release.open_release_envelope` does).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, BinaryIO

from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from manifests.release import MAX_RELEASE_BYTES
from manifests.vocabulary import Reason
from publisher.endpoint import Endpoint, LayoutLocation, parse_location
from publisher.errors import PublishError, RegistryError
from publisher.layoutstore import LayoutRepository
from publisher.publish import TagAction, TagChange, VersionConflict
from publisher.reference import validate_tag
from publisher.transfer import BlobSource, Manifest
from signing.release import open_release_envelope
from signing.root import envelope_cap

if TYPE_CHECKING:
    from publisher.session import Timeouts

__all__ = [
    "RELEASE_ARTIFACT_TYPE",
    "CHANNEL_ANNOTATION",
    "VERSION_ANNOTATION",
    "EMPTY_CONFIG",
    "ReleaseNotFound",
    "PublishedRelease",
    "release_manifest",
    "release_tags",
    "publish_release",
    "fetch_release",
    "poll_release",
    "open_release_endpoint",
]

RELEASE_ARTIFACT_TYPE = str(MediaType.KILN_RELEASE)
CHANNEL_ANNOTATION = "dev.kiln.release.channel"
VERSION_ANNOTATION = "dev.kiln.release.version"
EMPTY_CONFIG = b"{}"
_EMPTY_DESC = Descriptor(
    media_type=MediaType.OCI_EMPTY, digest=Digest.of(EMPTY_CONFIG), size=len(EMPTY_CONFIG)
)


class ReleaseNotFound(PublishError):
    """No release is published under the channel's tag."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedRelease:
    reference: str
    digest: Digest
    channel: str
    release_version: int
    payload_digest: Digest
    tags: tuple[TagChange, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "digest": str(self.digest),
            "channel": self.channel,
            "release_version": self.release_version,
            "payload_digest": str(self.payload_digest),
            "tags": [t.tag for t in self.tags],
            "tag_changes": [t.to_dict() for t in self.tags],
        }


def release_tags(channel: str, version: int) -> tuple[str, str]:
    """``(version tag, channel tag)``: ``production-42`` and ``production``."""
    return validate_tag(f"{channel}-{version}"), validate_tag(channel)


def release_manifest(envelope: bytes, *, channel: str, version: int) -> OCIManifest:
    """The artifact manifest holding ``envelope`` (canonical JSON: same inputs, same digest)."""
    layer = Descriptor(media_type=MediaType.DSSE_ENVELOPE, digest=Digest.of(envelope), size=len(envelope))
    return OCIManifest(
        config=_EMPTY_DESC,
        layers=(layer,),
        artifact_type=RELEASE_ARTIFACT_TYPE,
        annotations=MappingProxyType({CHANNEL_ANNOTATION: channel, VERSION_ANNOTATION: str(version)}),
    )


def _opener(data: bytes) -> BinaryIO:
    return io.BytesIO(data)


def _version_of(endpoint: Endpoint, desc: Descriptor) -> int | None:
    """The release version the artifact under ``desc`` names in its annotation (None: unknown)."""
    man = endpoint.get_manifest(desc.digest)
    if man is None:
        return None
    try:
        text = OCIManifest.from_bytes(man.data).annotations.get(VERSION_ANNOTATION, "")
    except DocumentError:
        return None
    # ASCII digits, int64-sized: the annotation is the registry's bytes ('²' and 5,000 digits
    # both pass str.isdigit and make int() raise).
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def publish_release(endpoint: Endpoint, envelope: bytes, *, force: bool = False) -> PublishedRelease:
    """Push a signed release envelope and tag it (see the module docstring).

    The envelope is opened (caps, payload type) and its payload parsed for the channel and
    version; its signatures are NOT judged here: the agents do that against their trust root.
    """
    from manifests.release import Release

    env = open_release_envelope(envelope)
    release = Release.from_payload(env.payload)
    vtag, ctag = release_tags(release.channel, release.version)
    man = release_manifest(envelope, channel=release.channel, version=release.version)
    raw = man.to_bytes()
    manifest = Manifest(data=raw, media_type=MediaType.OCI_MANIFEST, digest=Digest.of(raw))
    current = endpoint.tag_target(vtag)
    if current is not None and current.digest != manifest.digest:
        raise VersionConflict(where=endpoint.display, tag=vtag, holder=current.digest, wanted=manifest.digest)
    endpoint.put_blobs(
        [
            BlobSource(
                digest=_EMPTY_DESC.digest, size=_EMPTY_DESC.size, opener=lambda: _opener(EMPTY_CONFIG)
            ),
            BlobSource(digest=Digest.of(envelope), size=len(envelope), opener=lambda: _opener(envelope)),
        ],
        jobs=1,
    )
    endpoint.put_manifest(manifest)
    changes: list[TagChange] = []
    with endpoint.locked():
        current = endpoint.tag_target(vtag)
        if current is None:
            endpoint.set_tag(vtag, manifest)
            changes.append(TagChange(tag=vtag, channel=False, action=TagAction.CREATED))
        elif current.digest != manifest.digest:
            raise VersionConflict(
                where=endpoint.display, tag=vtag, holder=current.digest, wanted=manifest.digest
            )
        else:
            changes.append(TagChange(tag=vtag, channel=False, action=TagAction.UNCHANGED))
        before = endpoint.tag_target(ctag)
        if before is not None and before.digest == manifest.digest:
            changes.append(TagChange(tag=ctag, channel=True, action=TagAction.UNCHANGED))
        else:
            if before is not None and not force:
                named = _version_of(endpoint, before)
                if named is not None and named > release.version:
                    raise PublishError(
                        f"{endpoint.display}:{ctag} names release v{named}; refusing to move it back "
                        f"to v{release.version}",
                        hint="agents refuse older versions: sign a new, higher release that pins the "
                        "older digests (or pass --force)",
                    )
            endpoint.set_tag(ctag, manifest)
            action = TagAction.CREATED if before is None else TagAction.MOVED
            changes.append(
                TagChange(
                    tag=ctag,
                    channel=True,
                    action=action,
                    previous=before.digest if before is not None else None,
                )
            )
    return PublishedRelease(
        reference=endpoint.pinned(manifest.digest),
        digest=manifest.digest,
        channel=release.channel,
        release_version=release.version,
        payload_digest=Digest.of(env.payload),
        tags=tuple(changes),
    )


def fetch_release(endpoint: Endpoint, channel: str, *, size_cap: int = MAX_RELEASE_BYTES) -> bytes:
    """The envelope bytes the channel tag names now (unverified: the caller verifies them).

    Refusals are :class:`~manifests.errors.VerificationError` with reason ``parse`` (not a
    release artifact, or an envelope over its cap, checked before a byte of it is read).
    """
    tag = validate_tag(channel)
    return _envelope(endpoint, tag, tag, size_cap)


def poll_release(
    endpoint: Endpoint, channel: str, *, known: Digest | None, size_cap: int = MAX_RELEASE_BYTES
) -> tuple[Digest | None, bytes | None]:
    """A conditional :func:`fetch_release`: what the channel tag points at (a ``HEAD`` of the tag's
    manifest on a registry, a look into ``index.json`` in a layout), and the envelope only when
    that digest is not ``known`` (``None`` then). The manifest is fetched by the digest the tag
    named, so what is parsed is exactly what was compared. A server that does not implement
    ``HEAD`` (405, 501) gets a plain fetch, and no digest is returned."""
    tag = validate_tag(channel)
    try:
        desc = endpoint.tag_target(tag)
    except RegistryError as exc:
        if exc.status not in (405, 501):
            raise
        return None, _envelope(endpoint, tag, tag, size_cap)
    if desc is None:
        raise ReleaseNotFound(
            f"{endpoint.display}: no release under tag {tag!r}", hint="publish one with kiln release publish"
        )
    if known is not None and desc.digest == known:
        return desc.digest, None
    return desc.digest, _envelope(endpoint, tag, desc.digest, size_cap)


def _envelope(endpoint: Endpoint, tag: str, ref: str | Digest, size_cap: int) -> bytes:
    man = endpoint.get_manifest(ref)
    if man is None:
        raise ReleaseNotFound(
            f"{endpoint.display}: no release under tag {tag!r}", hint="publish one with kiln release publish"
        )
    try:
        parsed = OCIManifest.from_bytes(man.data)
    except DocumentError as exc:
        raise VerificationError(f"{endpoint.display}:{tag}: {exc.message}", reason=Reason.PARSE) from None
    if parsed.artifact_type != RELEASE_ARTIFACT_TYPE or len(parsed.layers) != 1:
        raise VerificationError(
            f"{endpoint.display}:{tag} is not a release artifact (artifactType {parsed.artifact_type!r})",
            reason=Reason.PARSE,
        )
    layer = parsed.layers[0]
    cap = envelope_cap(size_cap)
    if layer.media_type != MediaType.DSSE_ENVELOPE:
        raise VerificationError(
            f"{endpoint.display}:{tag}: layer media type {layer.media_type!r} is not a DSSE envelope",
            reason=Reason.PARSE,
        )
    if layer.size > cap:
        raise VerificationError(
            f"release envelope: {layer.size} bytes exceeds the {cap}-byte cap",
            reason=Reason.PARSE,
            hint="refusing to download it",
        )
    try:
        data = endpoint.read_blob(layer.digest, limit=cap)
    except VerificationError as exc:
        if exc.reason == "size":
            raise VerificationError(f"release envelope: {exc.message}", reason=Reason.PARSE) from None
        raise
    if len(data) != layer.size:
        raise VerificationError(
            f"release envelope: {len(data)} bytes, not the {layer.size} announced", reason=Reason.DIGEST
        )
    return data


@contextlib.contextmanager
def open_release_endpoint(
    location: str, *, insecure: bool = False, create: bool = False, timeouts: Timeouts | None = None
) -> Iterator[Endpoint]:
    """``oci:DIR`` or ``HOST/REPO`` as an endpoint (a registry client is closed on exit). A layout
    directory that ``create`` made is removed again if the block fails."""
    loc = parse_location(location)
    if isinstance(loc, LayoutLocation):
        with LayoutRepository(loc.directory, create=create).discarded_on_failure() as layout:
            yield layout
        return
    from publisher.auth import resolve_credentials
    from publisher.client import RegistryClient
    from publisher.registrystore import RegistryRepository

    with RegistryClient(
        loc.api_host, insecure=insecure, credentials=resolve_credentials(loc.registry), timeouts=timeouts
    ) as c:
        yield RegistryRepository(c, loc.repository)
