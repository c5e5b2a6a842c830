"""The agent's local content-addressed store: ``STATE/blobs/sha256/<hex>``.

Nothing unverified ever sits under a blob's name. :meth:`ContentStore.ingest` streams a blob into a
temporary file in the blob directory, hashing and counting every byte, refuses anything longer
than the size it was announced with (or the store's cap), and renames the file to its digest only
when the hash matches; otherwise the temporary file is removed and
:class:`~manifests.errors.VerificationError` (``reason="digest"`` or ``"size"``) is raised.

:meth:`ContentStore.pull_image` fetches an image BY DIGEST from a :class:`BlobSource` (an OCI
layout directory here, a registry through the publisher later): the manifest (or an index, then
its ``linux/amd64`` manifest), the config and every layer. Blobs already present are not fetched
again, but their presence is checked (a file of the announced size; ``verify=True`` re-hashes).

:meth:`ContentStore.gc` removes every blob that is neither kept nor referenced by a kept manifest
or index, plus stale temporary files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from agent.errors import StoreError
from manifests.atomic import fsync_dir
from manifests.bounded import JsonCaps, read_json_object
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.files import open_regular
from manifests.layout import OCILayout
from manifests.limits import AgentLimits
from manifests.mediatypes import MediaType
from manifests.oci import MAX_DOCUMENT_BYTES, Descriptor, OCIIndex, OCIManifest, Platform
from manifests.vocabulary import Reason

__all__ = [
    "BlobSource",
    "LayoutSource",
    "StoreLimits",
    "PulledImage",
    "ContentStore",
    "DEFAULT_PLATFORM",
]

_CHUNK = 1 << 20
_TMP_PREFIX = ".ingest-"
DEFAULT_PLATFORM = Platform(os="linux", architecture="amd64")


class BlobSource(Protocol):
    """Where :meth:`ContentStore.pull_image` fetches from. Nothing it returns is trusted."""

    def get_manifest(self, digest: Digest) -> bytes:
        """The bytes of the manifest or index stored under ``digest`` (checked by the caller)."""
        ...

    def open_blob(self, digest: Digest) -> IO[bytes]:
        """A readable stream of the blob ``digest`` (hashed and size-checked by the caller)."""
        ...


class LayoutSource:
    """:class:`BlobSource` over an OCI image layout directory (the embedded default)."""

    def __init__(self, layout: OCILayout, *, limit: int = MAX_DOCUMENT_BYTES) -> None:
        self.layout = layout
        self._limit = limit

    @classmethod
    def open(cls, root: Path) -> LayoutSource:
        return cls(OCILayout.open(root))

    def get_manifest(self, digest: Digest) -> bytes:
        path = self.layout.blob_path(digest)
        try:
            with open_regular(path) as fh:
                data = fh.read(self._limit + 1)
        except FileNotFoundError:
            raise StoreError(f"{self.layout.root}: no manifest {digest}") from None
        if len(data) > self._limit:
            raise VerificationError(
                f"{self.layout.root}: manifest {digest} exceeds the {self._limit}-byte cap",
                reason=Reason.SIZE,
            )
        return data

    def open_blob(self, digest: Digest) -> IO[bytes]:
        try:
            return open_regular(self.layout.blob_path(digest))
        except FileNotFoundError:
            raise StoreError(f"{self.layout.root}: no blob {digest}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreLimits:
    """Caps on what the store accepts: sizes in bytes, and the bounded reader's caps for the
    manifests, indexes and configs it parses (defaults: :class:`~manifests.limits.AgentLimits`')."""

    max_manifest: int = MAX_DOCUMENT_BYTES
    max_config: int = MAX_DOCUMENT_BYTES
    max_blob: int = AgentLimits().blob_bytes
    max_image: int = AgentLimits().image_bytes  # the sum of an image's layers
    json_depth: int = AgentLimits().json_depth
    number_chars: int = AgentLimits().number_chars

    @classmethod
    def from_agent(cls, limits: AgentLimits) -> StoreLimits:
        return cls(
            max_manifest=limits.document_bytes,
            max_config=limits.document_bytes,
            max_blob=limits.blob_bytes,
            max_image=limits.image_bytes,
            json_depth=limits.json_depth,
            number_chars=limits.number_chars,
        )

    def json(self, max_bytes: int) -> JsonCaps:
        return JsonCaps(max_bytes=max_bytes, max_depth=self.json_depth, max_number=self.number_chars)


@dataclass(frozen=True, slots=True, kw_only=True)
class PulledImage:
    """An image whose manifest, config and layers are all in the store, verified."""

    digest: Digest  # what was asked for: a manifest or an index
    manifest_digest: Digest  # the platform manifest actually used
    manifest: OCIManifest
    config_digest: Digest
    config: Mapping[str, Any]
    layers: tuple[Descriptor, ...]
    fetched: tuple[Digest, ...]  # blobs that were not present and were fetched now


class ContentStore:
    """Blobs by digest under ``STATE/blobs/sha256``."""

    def __init__(self, state_dir: Path, *, limits: StoreLimits | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.blob_dir = self.state_dir / "blobs" / "sha256"
        self.limits = limits or StoreLimits()
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.blob_dir, 0o700)

    # -- single blobs ----------------------------------------------------------------------

    def path(self, digest: Digest) -> Path:
        return self.blob_dir / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: Digest) -> IO[bytes]:
        try:
            return open_regular(self.path(digest))
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is not in the store", hint="pull the image first") from None

    def read(self, digest: Digest, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        """A whole (small) blob, re-hashed: a blob altered on disk raises ``VerificationError``."""
        with self.open(digest) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise VerificationError(f"blob {digest} exceeds the {limit}-byte cap", reason=Reason.SIZE)
        digest.check(data, what=f"stored blob {digest}")
        return data

    def verify(self, digest: Digest, *, size: int | None = None) -> None:
        """Re-hash a stored blob; a blob that no longer matches is removed and refused."""
        h = hashlib.sha256()
        n = 0
        with self.open(digest) as fh:
            while block := fh.read(_CHUNK):
                h.update(block)
                n += len(block)
        if h.hexdigest() != digest.hex or (size is not None and n != size):
            self._discard(digest)
            raise VerificationError(
                f"stored blob {digest} was altered on disk (now sha256:{h.hexdigest()}, {n} bytes); removed",
                reason=Reason.DIGEST,
                hint="pull the image again",
            )

    def ingest(self, digest: Digest, size: int | None, open_stream: Callable[[], IO[bytes]]) -> Path:
        """Stream a blob into the store; it gets its name only if it hashes to ``digest``.

        ``size`` is the size announced by a descriptor (more or fewer bytes are refused);
        ``None`` means unknown (then only the store's cap applies). A blob already present is
        not fetched again.
        """
        cap = self.limits.max_blob
        if size is not None and size > cap:
            raise VerificationError(
                f"blob {digest}: announced size {size} exceeds the store's {cap}-byte cap", reason=Reason.SIZE
            )
        dest = self.path(digest)
        if dest.is_file():
            return dest
        limit = size if size is not None else cap
        fd, tmpname = tempfile.mkstemp(dir=self.blob_dir, prefix=_TMP_PREFIX, suffix=".tmp")
        tmp = Path(tmpname)
        try:
            with os.fdopen(fd, "wb") as out, contextlib.closing(open_stream()) as src:
                got, n = _copy_hashed(src, out, limit=limit, digest=digest)
            _check_ingested(digest, size, got, n)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(self.blob_dir)
        return dest

    def ingest_bytes(self, digest: Digest, data: bytes) -> Path:
        """Store bytes already in memory (a manifest), checked like any other blob."""
        digest.check(data, what=f"blob {digest}")
        return self.ingest(digest, len(data), lambda: io.BytesIO(data))

    def _discard(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def digests(self) -> tuple[Digest, ...]:
        """Every blob in the store (temporary files are not blobs)."""
        out: list[Digest] = []
        for entry in os.scandir(self.blob_dir):
            if entry.name.startswith("."):
                continue
            try:
                out.append(Digest(entry.name))
            except DocumentError:
                continue
        return tuple(sorted(out))

    # -- images ----------------------------------------------------------------------------

    def pull_image(
        self,
        source: BlobSource,
        digest: Digest,
        *,
        platform: Platform = DEFAULT_PLATFORM,
        verify: bool = False,
    ) -> PulledImage:
        """Fetch the image ``digest`` and everything it references into the store.

        ``digest`` names a manifest or an index (then the ``platform`` manifest is used).
        Present blobs are checked for their size, or re-hashed with ``verify=True``.
        """
        fetched: list[Digest] = []
        raw = self._document(source, digest, fetched)
        top = read_json_object(
            raw, what=f"manifest {digest}", caps=self.limits.json(self.limits.max_manifest)
        )
        manifest_digest = digest
        if _is_index(top):
            index = OCIIndex.from_bytes(raw)
            desc = _pick_platform(index, platform, digest)
            manifest_digest = desc.digest
            raw = self._document(source, manifest_digest, fetched, size=desc.size)
        manifest = OCIManifest.from_bytes(raw)
        cfg = manifest.config
        if cfg.size > self.limits.max_config:
            raise VerificationError(
                f"image {digest}: config of {cfg.size} bytes exceeds the cap", reason=Reason.SIZE
            )
        total = sum(layer.size for layer in manifest.layers)
        if total > self.limits.max_image:
            raise VerificationError(
                f"image {digest}: {total} bytes of layers exceed the {self.limits.max_image}-byte cap",
                reason=Reason.SIZE,
            )
        for desc in (cfg, *manifest.layers):
            if desc is not cfg and desc.media_type not in _LAYER_TYPES and not _vm_part(manifest, desc):
                raise DocumentError(
                    f"image {digest}: layer {desc.digest} has unsupported media type {desc.media_type!r}"
                )
            self._blob(source, desc, fetched, verify=verify)
        config = read_json_object(
            self.read(cfg.digest, limit=self.limits.max_config),
            what=f"image config {cfg.digest}",
            caps=self.limits.json(self.limits.max_config),
        )
        return PulledImage(
            digest=digest,
            manifest_digest=manifest_digest,
            manifest=manifest,
            config_digest=cfg.digest,
            config=config,
            layers=manifest.layers,
            fetched=tuple(fetched),
        )

    def image(self, digest: Digest, *, platform: Platform = DEFAULT_PLATFORM) -> PulledImage:
        """An image already in the store (nothing is fetched; a missing blob is a StoreError)."""
        return self.pull_image(_NoSource(), digest, platform=platform)

    def _document(
        self,
        source: BlobSource,
        digest: Digest,
        fetched: list[Digest],
        *,
        size: int | None = None,
    ) -> bytes:
        if self.has(digest):
            data = self.read(digest, limit=self.limits.max_manifest)  # small: always re-hashed
        else:
            data = source.get_manifest(digest)
            if len(data) > self.limits.max_manifest:
                raise VerificationError(
                    f"manifest {digest}: {len(data)} bytes exceeds the cap", reason=Reason.SIZE
                )
            self.ingest_bytes(digest, data)
            fetched.append(digest)
        if size is not None and len(data) != size:
            raise VerificationError(
                f"manifest {digest}: {len(data)} bytes, not the {size} the index announced",
                reason=Reason.SIZE,
            )
        return data

    def _blob(self, source: BlobSource, desc: Descriptor, fetched: list[Digest], *, verify: bool) -> None:
        path = self.path(desc.digest)
        if path.is_file():
            if verify:
                self.verify(desc.digest, size=desc.size)
                return
            actual = path.stat().st_size
            if actual != desc.size:
                self._discard(desc.digest)
                raise VerificationError(
                    f"stored blob {desc.digest} has {actual} bytes, not {desc.size}; removed",
                    reason=Reason.DIGEST,
                    hint="pull the image again",
                )
            return
        self.ingest(desc.digest, desc.size, lambda: source.open_blob(desc.digest))
        fetched.append(desc.digest)

    # -- garbage collection ----------------------------------------------------------------

    def gc(self, keep: Iterable[Digest]) -> tuple[Digest, ...]:
        """Remove every blob not in ``keep`` and not referenced by a kept manifest or index.

        Returns the removed digests. Stale temporary files from interrupted ingests go too.
        """
        live: set[Digest] = set()
        todo = list(keep)
        while todo:
            d = todo.pop()
            if d in live:
                continue
            live.add(d)
            todo.extend(self._references(d))
        removed: list[Digest] = []
        for d in self.digests():
            if d not in live:
                self._discard(d)
                removed.append(d)
        for entry in os.scandir(self.blob_dir):
            if entry.name.startswith(_TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        if removed:
            fsync_dir(self.blob_dir)
        return tuple(removed)

    def _references(self, digest: Digest) -> list[Digest]:
        """The blobs a stored manifest or index references ([] for anything else)."""
        path = self.path(digest)
        try:
            if path.stat().st_size > self.limits.max_manifest:
                return []
            data = self.read(digest, limit=self.limits.max_manifest)
            doc = read_json_object(
                data, what=f"blob {digest}", caps=self.limits.json(self.limits.max_manifest)
            )
        except (OSError, StoreError, DocumentError, VerificationError):
            return []
        try:
            if _is_index(doc):
                return [d.digest for d in OCIIndex.from_bytes(data).manifests]
            if "config" in doc and "layers" in doc:
                man = OCIManifest.from_bytes(data)
                refs = [man.config.digest, *(layer.digest for layer in man.layers)]
                if man.subject is not None:
                    refs.append(man.subject.digest)
                return refs
        except DocumentError:
            return []
        return []


_LAYER_TYPES = frozenset(
    {
        MediaType.OCI_LAYER_TAR,
        MediaType.OCI_LAYER_GZIP,
        MediaType.OCI_LAYER_ZSTD,
        MediaType.DOCKER_LAYER_GZIP,
    }
)


def _vm_part(manifest: OCIManifest, desc: Descriptor) -> bool:
    """A part (kernel, initrd, disk) of a VM artifact: a layer type only such an artifact may have."""
    return manifest.artifact_type == MediaType.KILN_VM and desc.media_type in {
        m.value for m in MediaType if m.is_vm_part
    }


def _copy_hashed(src: IO[bytes], out: IO[bytes], *, limit: int, digest: Digest) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while block := src.read(_CHUNK):
        n += len(block)
        if n > limit:
            raise VerificationError(
                f"blob {digest}: more than the {limit} bytes announced", reason=Reason.SIZE
            )
        h.update(block)
        out.write(block)
    out.flush()
    os.fsync(out.fileno())
    return h.hexdigest(), n


def _check_ingested(digest: Digest, size: int | None, got: str, n: int) -> None:
    if got != digest.hex:
        raise VerificationError(
            f"blob {digest}: digest mismatch (got sha256:{got}); discarded",
            reason=Reason.DIGEST,
            hint="the source served other content than its descriptor names",
        )
    if size is not None and n != size:
        raise VerificationError(f"blob {digest}: {n} bytes, not the {size} announced", reason=Reason.SIZE)


class _NoSource:
    def get_manifest(self, digest: Digest) -> bytes:
        raise StoreError(f"manifest {digest} is not in the store", hint="pull the image first")

    def open_blob(self, digest: Digest) -> IO[bytes]:
        raise StoreError(f"blob {digest} is not in the store", hint="pull the image first")


def _is_index(doc: Mapping[str, Any]) -> bool:
    mt = doc.get("mediaType")
    if mt in (MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST_LIST):
        return True
    return mt is None and "manifests" in doc and "layers" not in doc


def _pick_platform(index: OCIIndex, platform: Platform, digest: Digest) -> Descriptor:
    for desc in index.manifests:
        p = desc.platform
        if (
            p is not None
            and p.os == platform.os
            and p.architecture == platform.architecture
            and (platform.variant is None or p.variant == platform.variant)
            and desc.media_type in (MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST)
        ):
            return desc
    have = ", ".join(str(d.platform) for d in index.manifests if d.platform is not None) or "none"
    raise DocumentError(f"index {digest}: no manifest for {platform}", hint=f"platforms in the index: {have}")
