"""Where images are published to and copied from: one repository of a registry, or ``oci:DIR``.

Both kinds offer the same small interface, :class:`Endpoint`, so publishing, pulling and copying are
written once. An endpoint is ONE repository: a registry's ``host/repo``, or an OCI image layout
directory whose ``index.json`` holds the tags as ``org.opencontainers.image.ref.name`` annotations
(the convention skopeo and umoci use for ``oci:DIR:TAG``).

Text forms, as the command line takes them (:func:`parse_location`):

- ``oci:DIR``, ``oci:DIR:NAME``, ``oci:DIR@sha256:HEX`` — a layout; NAME is a ref.name in its
  index, a bare tag or the full reference a build writes (``oci:out:python-web:1.0.0``);
- ``HOST[:PORT]/REPO[:TAG][@sha256:HEX]`` — a registry; the registry must be named explicitly
  (``docker.io/library/x``, never a bare ``x``), so that a directory name without ``oci:`` is not
  silently taken for a Docker Hub repository.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from manifests.digest import Digest
from manifests.errors import DocumentError
from manifests.layout import is_cosign_tag
from manifests.layoutref import parse_layout_reference
from manifests.oci import Descriptor
from publisher.errors import InvalidReference
from publisher.reference import Reference
from publisher.transfer import BlobResult, BlobSource, Manifest

__all__ = ["Endpoint", "Location", "LayoutLocation", "parse_location", "is_cosign_tag"]


class Endpoint(Protocol):
    """One repository that images are read from and written to."""

    @property
    def display(self) -> str:
        """``host/repo`` or ``oci:DIR``: how the repository is named to people."""
        ...

    def pinned(self, digest: Digest) -> str:
        """The reference that pins ``digest`` here (``host/repo@sha256:...``, ``oci:DIR@sha256:...``)."""
        ...

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the repository's tag lock (an exclusive ``flock`` for a layout; nothing for a registry)."""
        ...

    def blob_size(self, digest: Digest) -> int | None: ...

    def blob_source(self, desc: Descriptor, staging: Path) -> BlobSource:
        """Where a pusher can read the blob's bytes: a path, or an opener fetching it on first use."""
        ...

    def read_blob(self, digest: Digest, *, limit: int) -> bytes:
        """A small blob in memory, checked against its digest."""
        ...

    def put_blobs(self, blobs: Sequence[BlobSource], *, jobs: int) -> list[BlobResult]: ...

    def get_manifest(self, ref: str | Digest) -> Manifest | None:
        """The manifest under a tag or digest; ``None`` when there is none."""
        ...

    def has_manifest(self, digest: Digest) -> bool: ...

    def put_manifest(self, manifest: Manifest) -> None:
        """Store the exact bytes under their digest (no tag)."""
        ...

    def tag_target(self, tag: str) -> Descriptor | None:
        """What ``tag`` points at now, or ``None``."""
        ...

    def set_tag(self, tag: str, manifest: Manifest) -> None:
        """Point ``tag`` at ``manifest`` (moving it if it exists)."""
        ...

    def referrers(self, digest: Digest) -> tuple[Descriptor, ...]:
        """Manifests whose ``subject`` is ``digest`` (referrers API or the ``sha256-<hex>`` tag index)."""
        ...

    def add_referrers(self, subject: Digest, descs: Sequence[Descriptor]) -> None:
        """List ``descs`` (pushed manifests whose ``subject`` is ``subject``) as its referrers."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutLocation:
    """``oci:DIR[:TAG|@DIGEST]``."""

    directory: Path
    tag: str | None = None
    digest: Digest | None = None

    def __str__(self) -> str:
        text = f"oci:{self.directory}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


Location = LayoutLocation | Reference


def _parse_layout(text: str) -> LayoutLocation:
    """``oci:DIR[:NAME|@DIGEST]``, NAME the ref.name a build writes (manifests.layoutref)."""
    try:
        ref = parse_layout_reference(text)
    except DocumentError as exc:
        raise InvalidReference(exc.message, hint=exc.hint) from None
    return LayoutLocation(directory=ref.directory, tag=ref.name, digest=ref.digest)


def parse_location(text: str, *, bare_directory: bool = False) -> Location:
    """Parse ``oci:DIR[:TAG|@DIGEST]`` or ``HOST/REPO[:TAG][@DIGEST]``.

    With ``bare_directory``, text that names an existing directory is a layout even without ``oci:``
    (what ``kiln sign`` and ``kiln publish``'s SRC always accepted).
    """
    if text.startswith("oci:"):
        return _parse_layout(text)
    if bare_directory and text and Path(text).is_dir():
        return LayoutLocation(directory=Path(text))
    first, sep, _ = text.partition("/")
    explicit = sep and ("." in first or ":" in first or first == "localhost")
    if not explicit:
        raise InvalidReference(
            f"{text!r} names no registry",
            hint="write HOST[:PORT]/REPO (docker.io/library/NAME for Docker Hub), or oci:DIR for a layout",
        )
    return Reference.parse(text)
