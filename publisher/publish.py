"""Publishing semantics: an immutable version tag, movable channel tags, signatures beside the image.

``publish`` pushes a built image (with its ``sha256-<hex>.sig``/``.att`` manifests and referrers)
to an endpoint, a registry repository or the embedded ``oci:DIR``, then names it:

- **the version tag** comes from the image's ``org.opencontainers.image.version`` annotation (the
  builder sets it from the image manifest's ``version``), else from the tag it has in the built
  layout. Semver build metadata is not allowed in a tag (``+`` is not a tag character), so ``+``
  becomes ``_`` as Helm does: ``1.2.0+build.7`` is published as ``1.2.0_build.7``. A version tag
  is immutable: if it already names another digest, publishing is refused (:class:`VersionConflict`,
  naming the digest that holds it) before a single byte is sent; if it already names this digest,
  publishing is a no-op.
- **channel tags** (``edge``, ``stable``) are names the publisher moves: they are pointed at the
  image last, after the version tag.

Signatures are in place before any tag names the image, so whoever resolves a tag finds them.

The immutability check and its race: for ``oci:DIR`` the check and the tag write happen under an
exclusive ``flock`` on the directory, so concurrent publishers are serialized and exactly one of
two different digests wins a version. A registry (distribution 2.8.2 here) has no conditional
``PUT`` (it ignores ``If-Match``/``If-None-Match``): kiln checks the tag with ``HEAD`` before the
upload and again immediately before its ``PUT``; two publishers racing inside that last window can
both pass, and the later ``PUT`` wins. The real guard is the registry's own immutable-tags setting
(Harbor's tag immutability rules, ECR's ``IMMUTABLE`` repositories, Artifact Registry's immutable
tags), which kiln's refusal complements, never replaces.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.layout import REF_NAME
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex, OCIManifest
from manifests.vocabulary import Reason
from publisher.copy import BlobCounts, Watch, collect_closure, copy_closure
from publisher.endpoint import Endpoint, is_cosign_tag
from publisher.errors import InvalidReference, PublishError
from publisher.layoutstore import LayoutRepository
from publisher.reference import validate_tag
from publisher.transfer import Manifest

__all__ = [
    "VERSION_ANNOTATION",
    "TagAction",
    "TagChange",
    "PublishResult",
    "VersionConflict",
    "version_tag",
    "image_version",
    "built_image",
    "check_channels",
    "publish",
]

VERSION_ANNOTATION = "org.opencontainers.image.version"
_INDEX_TYPES = (MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST_LIST)

Progress = Callable[[str], None]


class VersionConflict(PublishError):
    """The version tag already names another digest: versions are immutable."""

    def __init__(self, *, where: str, tag: str, holder: Digest, wanted: Digest) -> None:
        super().__init__(
            f"{where}:{tag} already holds {holder}; refusing to point it at {wanted}",
            hint="a version tag is immutable: bump the version in the image manifest "
            "(use --channel for names that move)",
        )
        self.tag = tag
        self.holder = holder
        self.wanted = wanted


class TagAction(enum.StrEnum):
    CREATED = "created"
    UNCHANGED = "unchanged"
    MOVED = "moved"


@dataclass(frozen=True, slots=True, kw_only=True)
class TagChange:
    tag: str
    channel: bool
    action: TagAction
    previous: Digest | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "kind": "channel" if self.channel else "version",
            "action": str(self.action),
            "previous": str(self.previous) if self.previous is not None else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishResult:
    reference: str
    digest: Digest
    version: str
    tags: tuple[TagChange, ...]
    blobs: BlobCounts
    manifests_written: int
    signatures: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(
            self.blobs.uploaded
            or self.blobs.mounted
            or self.manifests_written
            or any(t.action is not TagAction.UNCHANGED for t in self.tags)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": str(self.digest),
            "tags": [t.tag for t in self.tags],
            "blobs": self.blobs.to_dict(),
            "changed": self.changed,
            "tag_changes": [t.to_dict() for t in self.tags],
            "signatures": list(self.signatures),
            "image_version": self.version,
        }


def version_tag(version: str) -> str:
    """The tag for ``version``: ``+`` (semver build metadata) becomes ``_``; otherwise a valid tag."""
    tag = version.replace("+", "_")
    try:
        validate_tag(tag)
    except InvalidReference:
        raise InvalidReference(
            f"version {version!r} cannot be a tag",
            hint="a version tag is 1 to 128 of letters, digits, '_', '.', '-' ('+' becomes '_'), "
            "not starting with '.' or '-'",
        ) from None
    if is_cosign_tag(tag):
        raise InvalidReference(f"version {version!r} looks like a signature tag")
    return tag


def check_channels(channels: Sequence[str], version: str) -> tuple[str, ...]:
    """Valid, distinct channel names, none equal to the version tag or a cosign tag."""
    seen: list[str] = []
    for name in channels:
        validate_tag(name)
        if name == version:
            raise InvalidReference(
                f"channel {name!r} is the version tag",
                hint="a channel is a name that moves; the version tag never does",
            )
        if is_cosign_tag(name):
            raise InvalidReference(f"channel {name!r} is a signature tag", hint="choose another name")
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def image_version(src: Endpoint, root: Manifest, *, layout_tag: str | None = None) -> str:
    """The image's version: its ``org.opencontainers.image.version`` annotation, else its layout tag."""
    annotations: Mapping[str, str] = {}
    try:
        if root.media_type in _INDEX_TYPES:
            annotations = OCIIndex.from_bytes(root.data).annotations
        else:
            annotations = OCIManifest.from_bytes(root.data).annotations
    except DocumentError as exc:
        raise VerificationError(
            f"{src.display}@{root.digest}: {exc.message}", reason=Reason.MANIFEST
        ) from None
    version = annotations.get(VERSION_ANNOTATION) or layout_tag
    if not version:
        raise PublishError(
            f"{src.display}@{root.digest}: the image has no version",
            hint=f"build it with kiln (it sets {VERSION_ANNOTATION}), or tag it in the layout",
        )
    return version


def built_image(layout: LayoutRepository, tag: str | None = None) -> tuple[Manifest, str | None]:
    """The image a build left in ``layout``: the one under ``tag``, else the only image there.

    Cosign tags (``sha256-<hex>.sig``/``.att``) and untagged referrers are not images. Returns the
    manifest and the tag it was found under.
    """
    if tag is not None:
        man = layout.get_manifest(tag)
        if man is None:
            known = sorted(t for t in layout.layout.tags() if not is_cosign_tag(t))
            raise PublishError(
                f"{layout.display}: no tag {tag!r}",
                hint=f"tags: {', '.join(known)}" if known else "the layout has no tags",
            )
        return man, tag
    tagged: dict[Digest, tuple[Descriptor, str | None]] = {}
    untagged: dict[Digest, tuple[Descriptor, str | None]] = {}
    for desc in layout.layout.index().manifests:
        name = desc.annotations.get(REF_NAME)
        if name is None:
            # Untagged entries are images only in a layout without tags (referrers are untagged too).
            if desc.artifact_type is None and "dev.kiln.subject" not in desc.annotations:
                untagged.setdefault(desc.digest, (desc, None))
        elif not is_cosign_tag(name):
            tagged.setdefault(desc.digest, (desc, name))
    images = tagged or untagged
    if len(images) != 1:
        names = sorted(n for _, n in images.values() if n is not None)
        raise PublishError(
            f"{layout.display}: holds {len(images)} images; name one",
            hint=f"use oci:DIR:TAG ({', '.join(names)})" if names else "use oci:DIR@sha256:HEX",
        )
    desc, name = next(iter(images.values()))
    man = layout.get_manifest(desc.digest)
    if man is None:
        raise PublishError(f"{layout.display}: manifest {desc.digest} is missing")
    return Manifest(data=man.data, media_type=desc.media_type, digest=man.digest), name


def _check_version(dest: Endpoint, tag: str, digest: Digest) -> Digest | None:
    current = dest.tag_target(tag)
    if current is None:
        return None
    if current.digest != digest:
        raise VersionConflict(where=dest.display, tag=tag, holder=current.digest, wanted=digest)
    return current.digest


def publish(
    src: Endpoint,
    root: Manifest,
    dest: Endpoint,
    *,
    version: str,
    channels: Sequence[str] = (),
    jobs: int = 4,
    mount_from: str | None = None,
    progress: Progress | None = None,
    watch: Watch | None = None,
) -> PublishResult:
    """Push ``root`` and its closure from ``src`` to ``dest``, then tag it (see the module docstring)."""
    say = progress or (lambda _m: None)
    vtag = version_tag(version)
    names = check_channels(channels, vtag)
    already = _check_version(dest, vtag, root.digest)  # fail before sending anything
    closure = collect_closure(src, root)
    copied = copy_closure(
        src,
        dest,
        closure,
        jobs=jobs,
        mount_from=mount_from,
        progress=say,
        watch=watch,
        present=() if already is None else (root.digest,),
    )
    changes: list[TagChange] = []
    with dest.locked():
        # A version tag that already named this image is not asked about again: it never moves.
        if already is None and _check_version(dest, vtag, root.digest) is None:
            dest.set_tag(vtag, root)
            changes.append(TagChange(tag=vtag, channel=False, action=TagAction.CREATED))
            say(f"{dest.display}:{vtag} -> {root.digest} (new version)")
        else:
            changes.append(TagChange(tag=vtag, channel=False, action=TagAction.UNCHANGED))
            say(f"{dest.display}:{vtag} already names {root.digest}")
        for name in names:
            before = dest.tag_target(name)
            if before is not None and before.digest == root.digest:
                changes.append(TagChange(tag=name, channel=True, action=TagAction.UNCHANGED))
                continue
            dest.set_tag(name, root)
            action = TagAction.CREATED if before is None else TagAction.MOVED
            prev = before.digest if before is not None else None
            changes.append(TagChange(tag=name, channel=True, action=action, previous=prev))
            say(f"{dest.display}:{name} -> {root.digest} ({action})")
    return PublishResult(
        reference=dest.pinned(root.digest),
        digest=root.digest,
        version=version,
        tags=tuple(changes),
        blobs=copied.blobs,
        manifests_written=copied.manifests_written,
        signatures=copied.cosign_tags,
    )
