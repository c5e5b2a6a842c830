"""Where signatures and attestations are kept: a small storage interface and its OCI-layout form.

The signing logic (:mod:`signing.image`) only needs to read and write blobs and to find and move
tags; the publisher implements the same :class:`ArtifactStore` over a registry. Every read is
digest-checked by the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.oci import MAX_DOCUMENT_BYTES, Descriptor

__all__ = ["ArtifactStore", "LayoutStore"]


class ArtifactStore(Protocol):
    def read_blob(self, digest: Digest, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        """The blob's bytes, checked against ``digest`` (VerificationError ``digest`` if not)."""
        ...

    def verify_blob(self, digest: Digest, *, size: int | None = None) -> None:
        """Stream a blob of any size through sha256 and check it (and its size)."""
        ...

    def write_blob(self, data: bytes) -> Digest: ...

    def lookup_tag(self, tag: str) -> Descriptor | None: ...

    def set_tag(self, tag: str, descriptor: Descriptor) -> None: ...


class LayoutStore:
    """:class:`ArtifactStore` over an OCI image layout directory (tags are ref.name annotations)."""

    def __init__(self, layout: OCILayout) -> None:
        self.layout = layout

    @classmethod
    def open(cls, root: Path) -> LayoutStore:
        return cls(OCILayout.open(root))

    def read_blob(self, digest: Digest, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        return self.layout.read_blob(digest, limit=limit)

    def verify_blob(self, digest: Digest, *, size: int | None = None) -> None:
        self.layout.verify_blob(digest, size=size)

    def write_blob(self, data: bytes) -> Digest:
        return self.layout.write_blob(data)

    def lookup_tag(self, tag: str) -> Descriptor | None:
        return self.layout.tags().get(tag)

    def set_tag(self, tag: str, descriptor: Descriptor) -> None:
        self.layout.tag(descriptor, tag)
