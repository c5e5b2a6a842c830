"""Where the agent reads images, signatures and attestations: an ``oci:DIR`` or a registry repository.

:func:`open_image_location` gives, for one location, the two views the agent needs:

- a :class:`agent.store.BlobSource` for :meth:`agent.store.ContentStore.pull_image` (manifests by
  digest, blobs as streams; the store hashes and size-checks every byte and keeps nothing that
  does not match), and
- a :class:`signing.store.ArtifactStore` for the ``sha256-<hex>.sig`` / ``.att`` manifests that
  :meth:`signing.policy.TrustPolicy.evaluate` judges.

A registry blob is downloaded (hashed by the client) into a private temporary file that is unlinked
as soon as it is opened, then streamed into the content store, which hashes it again as it stores it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from agent.errors import StoreError
from agent.store import BlobSource, LayoutSource
from manifests.digest import Digest
from manifests.errors import DocumentError
from publisher.endpoint import LayoutLocation, parse_location
from signing.store import ArtifactStore, LayoutStore

if TYPE_CHECKING:
    from publisher.session import Timeouts

__all__ = ["ImageLocation", "RegistryBlobSource", "open_image_location"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageLocation:
    display: str
    blobs: BlobSource
    artifacts: ArtifactStore


class RegistryBlobSource:
    """:class:`agent.store.BlobSource` over one repository of a registry."""

    def __init__(self, client: object, repository: str, staging: Path) -> None:
        from publisher.client import RegistryClient

        if not isinstance(client, RegistryClient):
            raise TypeError("client must be a RegistryClient")
        self.client = client
        self.repository = repository
        self.staging = staging

    def get_manifest(self, digest: Digest) -> bytes:
        return self.client.get_manifest(self.repository, digest).data

    def open_blob(self, digest: Digest) -> IO[bytes]:
        fd, name = tempfile.mkstemp(dir=self.staging, prefix="blob-", suffix=".part")
        os.close(fd)
        path = Path(name)
        try:
            self.client.pull_blob(self.repository, digest, path)
            fh = path.open("rb")
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return fh


@contextlib.contextmanager
def open_image_location(
    location: str, *, staging: Path, insecure: bool = False, timeouts: Timeouts | None = None
) -> Iterator[ImageLocation]:
    """Open ``oci:DIR`` or ``HOST[:PORT]/REPO`` for reading images and their signatures."""
    loc = parse_location(location)
    if isinstance(loc, LayoutLocation):
        try:
            blobs = LayoutSource.open(loc.directory)
            artifacts = LayoutStore.open(loc.directory)
        except (DocumentError, OSError) as exc:
            raise StoreError(f"{location}: cannot open the image layout: {exc}") from exc
        yield ImageLocation(display=f"oci:{loc.directory}", blobs=blobs, artifacts=artifacts)
        return
    from publisher.auth import resolve_credentials
    from publisher.client import RegistryClient
    from publisher.registrystore import RegistryArtifactStore

    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (
        RegistryClient(
            loc.api_host, insecure=insecure, credentials=resolve_credentials(loc.registry), timeouts=timeouts
        ) as client,
        RegistryArtifactStore(client, loc.repository) as artifacts_store,
    ):
        yield ImageLocation(
            display=f"{loc.registry}/{loc.repository}",
            blobs=RegistryBlobSource(client, loc.repository, staging),
            artifacts=artifacts_store,
        )
