"""One repository of a registry, in the two shapes the rest of kiln asks for.

- :class:`RegistryRepository` is an :class:`~publisher.endpoint.Endpoint`: what publish, pull and
  copy read from and write to.
- :class:`RegistryArtifactStore` is a :class:`signing.store.ArtifactStore`: what ``sign_image``,
  ``verify_image`` and ``attest_image`` use, so signatures and attestations are read from and
  written to the registry directly (``sha256-<hex>.sig`` / ``.att`` tags, as cosign does).

Every byte read is checked against its digest by the client; blobs stream through temporary files
in a private staging directory, so memory stays flat whatever their size.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.oci import MAX_DOCUMENT_BYTES, Descriptor, OCIIndex, OCIManifest
from manifests.vocabulary import Reason
from publisher.client import RegistryClient
from publisher.errors import PublishError, RegistryError
from publisher.transfer import BlobResult, BlobSource, Manifest, Opener

__all__ = ["RegistryRepository", "RegistryArtifactStore"]

_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


def _not_found(exc: RegistryError) -> bool:
    return exc.status == 404


class _LazyBlob:
    """Opens a registry blob, downloading (and verifying) it into staging on first use only, so a
    blob the destination already has, or can mount, is never downloaded."""

    def __init__(self, repo: RegistryRepository, desc: Descriptor, staging: Path) -> None:
        self._repo = repo
        self._desc = desc
        self._path = staging / f"blob-{desc.digest.hex}"
        self._lock = threading.Lock()
        self._ready = False

    def __call__(self) -> BinaryIO:
        with self._lock:
            if not self._ready:
                self._repo.client.pull_blob(
                    self._repo.repository, self._desc.digest, self._path, expected_size=self._desc.size
                )
                self._ready = True
        return self._path.open("rb")


class RegistryRepository:
    """``host/repo`` as an :class:`~publisher.endpoint.Endpoint` (the client is the caller's)."""

    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client = client
        self.repository = repository

    @property
    def registry(self) -> str:
        return self.client.registry

    @property
    def display(self) -> str:
        return f"{self.client.registry}/{self.repository}"

    def pinned(self, digest: Digest) -> str:
        return f"{self.display}@{digest}"

    def locked(self) -> contextlib.AbstractContextManager[None]:
        # Distribution 2.8.2 has no conditional PUT: nothing to hold. See publisher.publish.
        return contextlib.nullcontext()

    def blob_size(self, digest: Digest) -> int | None:
        return self.client.blob_exists(self.repository, digest)

    def blob_source(self, desc: Descriptor, staging: Path) -> BlobSource:
        return BlobSource(digest=desc.digest, size=desc.size, opener=_LazyBlob(self, desc, staging))

    def read_blob(self, digest: Digest, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        with tempfile.TemporaryDirectory(prefix="kiln-blob-") as tmp:
            path = Path(tmp) / "blob"
            self.client.pull_blob(self.repository, digest, path, size_cap=limit)
            return path.read_bytes()

    def put_blobs(self, blobs: Sequence[BlobSource], *, jobs: int) -> list[BlobResult]:
        return self.client.push_blobs(self.repository, blobs, jobs=jobs)

    def get_manifest(self, ref: str | Digest) -> Manifest | None:
        try:
            return self.client.get_manifest(self.repository, ref)
        except RegistryError as exc:
            if _not_found(exc):
                return None
            raise

    def has_manifest(self, digest: Digest) -> bool:
        return self.client.head_manifest(self.repository, digest) is not None

    def put_manifest(self, manifest: Manifest) -> None:
        self.client.push_manifest(self.repository, manifest.digest, manifest.data, manifest.media_type)

    def tag_target(self, tag: str) -> Descriptor | None:
        try:
            return self.client.head_manifest(self.repository, tag)
        except RegistryError as exc:
            if _not_found(exc):
                return None
            raise

    def set_tag(self, tag: str, manifest: Manifest) -> None:
        self.client.push_manifest(self.repository, tag, manifest.data, manifest.media_type)

    def referrers(self, digest: Digest) -> tuple[Descriptor, ...]:
        try:
            return self.client.referrers(self.repository, digest).manifests
        except RegistryError as exc:
            if _not_found(exc):
                return ()
            raise

    def add_referrers(self, subject: Digest, descs: Sequence[Descriptor]) -> None:
        self.client.add_referrers(self.repository, subject, descs)


class RegistryArtifactStore:
    """:class:`signing.store.ArtifactStore` over one repository of a registry.

    ``write_blob`` only keeps the bytes; ``set_tag`` then pushes the manifest under the tag together
    with the blobs it references that were written here (signature payloads, DSSE envelopes, the
    cosign config), so nothing unreferenced is ever uploaded. Reads try the blob endpoint, then the
    manifest endpoint (a registry serves manifests only from the latter), and are digest-checked.
    """

    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client = client
        self.repository = repository
        self._pending: dict[Digest, bytes] = {}
        self._manifests: set[Digest] = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="kiln-store-")

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> RegistryArtifactStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resolve(self, ref: str | Digest) -> Descriptor:
        """The descriptor of the manifest under a tag or digest (its exact bytes' digest)."""
        man = self.client.get_manifest(self.repository, ref)
        self._manifests.add(man.digest)
        return man.descriptor

    def read_blob(self, digest: Digest, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        if digest in self._pending:
            return self._pending[digest]
        if digest not in self._manifests:
            path = Path(self._tmp.name) / f"read-{digest.hex}"
            try:
                self.client.pull_blob(self.repository, digest, path, size_cap=limit)
            except RegistryError as exc:
                if not _not_found(exc):
                    raise
            else:
                try:
                    return path.read_bytes()
                finally:
                    path.unlink()
        man = self.client.get_manifest(self.repository, digest, size_cap=limit)
        self._manifests.add(digest)
        return man.data

    def verify_blob(self, digest: Digest, *, size: int | None = None) -> None:
        path = Path(self._tmp.name) / f"verify-{digest.hex}"
        try:
            self.client.pull_blob(self.repository, digest, path, expected_size=size)
        except RegistryError as exc:
            if _not_found(exc):
                raise VerificationError(
                    f"{self.client.registry}/{self.repository}: blob {digest} is missing",
                    reason=Reason.DIGEST,
                ) from exc
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def write_blob(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        self._pending[digest] = data
        return digest

    def lookup_tag(self, tag: str) -> Descriptor | None:
        try:
            desc = self.client.head_manifest(self.repository, tag)
        except RegistryError as exc:
            if _not_found(exc):
                return None
            raise
        if desc is not None:
            self._manifests.add(desc.digest)
        return desc

    def set_tag(self, tag: str, descriptor: Descriptor) -> None:
        data = self.read_blob(descriptor.digest)
        try:
            if descriptor.media_type in _INDEX_TYPES:
                refs = tuple(OCIIndex.from_bytes(data).manifests)
            else:
                parsed = OCIManifest.from_bytes(data)
                refs = (parsed.config, *parsed.layers)
        except DocumentError as exc:
            raise PublishError(f"{tag}: not a manifest this store can push: {exc.message}") from exc
        blobs = [
            BlobSource(digest=d.digest, size=d.size, opener=_bytes_opener(self._pending[d.digest]))
            for d in refs
            if d.digest in self._pending
        ]
        if blobs:
            self.client.push_blobs(self.repository, blobs)
        self.client.push_manifest(self.repository, tag, data, descriptor.media_type)
        self._manifests.add(descriptor.digest)


def _bytes_opener(data: bytes) -> Opener:
    def opener() -> BinaryIO:
        return io.BytesIO(data)

    return opener
