"""``oci:DIR``: an OCI image layout directory acting as one repository of a registry.

This is kiln's embedded default: publishing, pulling and deploying work on one machine with no
server. The directory is an ordinary OCI image layout (skopeo, umoci and oci-image-tool read it);
tags are ``org.opencontainers.image.ref.name`` annotations in ``index.json``, one entry per tag,
which is the convention ``skopeo copy ... oci:DIR:TAG`` uses. Referrers are untagged index entries.

Concurrency: blobs are content-addressed and each is written through a temporary file renamed to
its digest, so writers never need a lock for them. ``index.json`` is read, checked and rewritten
under an exclusive ``flock`` on ``DIR/.kiln-lock`` (:meth:`LayoutRepository.locked`), so two
publishers cannot lose each other's tags or both pass the version-immutability check. The lock is
advisory: tools that do not take it (skopeo) can still race kiln on the same directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from manifests.atomic import atomic_write, fsync_dir
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.files import check_regular, open_regular
from manifests.layout import INDEX_FILE, LAYOUT_FILE, REF_NAME, OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import MAX_DOCUMENT_BYTES, Descriptor, OCIIndex, OCIManifest, Platform, parse_json_object
from manifests.vocabulary import Reason
from publisher.errors import PublishError
from publisher.transfer import IO_BLOCK, BlobAction, BlobResult, BlobSource, Manifest

__all__ = ["LayoutRepository", "LOCK_FILE", "manifest_media_type"]

LOCK_FILE = ".kiln-lock"
_MAX_INDEX_ENTRIES = 100_000


def _make_dirs(root: Path) -> Path | None:
    """``mkdir -p root``; the topmost directory this call created (None: it existed)."""
    missing: list[Path] = []
    p = root
    while not os.path.lexists(p) and p.parent != p:
        missing.append(p)
        p = p.parent
    top = None
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to remove
        if top is None:
            top = d
    return top


def manifest_media_type(data: bytes, *, what: str) -> str:
    """The media type a manifest's own bytes declare (an index without one is an OCI index)."""
    doc = parse_json_object(data, what=what)
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    return str(MediaType.OCI_INDEX if "manifests" in doc else MediaType.OCI_MANIFEST)


class LayoutRepository:
    """An OCI layout directory as one repository (:class:`~publisher.endpoint.Endpoint`).

    ``create=True`` makes the directory a layout if it does not exist or is empty.
    """

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = Path(root)
        self._thread_lock = threading.RLock()
        self._depth = 0
        # What _create made, for discard_created(): the topmost directory it created, or True
        # when it made an existing empty directory a layout.
        self._made_dir: Path | None = None
        self._filled_empty = False
        self._indexed: set[Digest] = set()  # what this object listed in index.json
        try:
            if create:
                self._create()
            self.layout = OCILayout.open(self.root)
        except BaseException:
            self.discard_created()
            raise

    # -- identity and locking -------------------------------------------------------------------

    @property
    def display(self) -> str:
        return f"oci:{self.root}"

    def pinned(self, digest: Digest) -> str:
        return f"oci:{self.root}@{digest}"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive ``flock`` on ``DIR/.kiln-lock`` (re-entrant within this object)."""
        with self._thread_lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            fd = self._open_lock()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    def _open_lock(self) -> int:
        try:
            return os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PublishError(
                f"{self.display}: cannot open the lock file: {exc.strerror}",
                hint="check that the directory exists and is writable",
            ) from exc

    def _create(self) -> None:
        if (self.root / LAYOUT_FILE).exists():
            return
        if not os.path.lexists(self.root / LOCK_FILE):
            # Nothing, not even the lock file, goes into a directory that is not ours. With a lock
            # file, another kiln may be making it a layout right now: decide under the lock.
            self._refuse_foreign()
        try:
            self._made_dir = _make_dirs(self.root)
        except OSError as exc:
            raise PublishError(f"{self.display}: cannot create it: {exc.strerror}") from exc
        if not self.root.is_dir():
            raise PublishError(f"{self.display}: not a directory", hint="name a directory for the layout")
        with self.locked():
            if (self.root / LAYOUT_FILE).exists():
                self._made_dir = None  # another publisher made it a layout: its, not ours to remove
                return  # another publisher made it while we waited for the lock
            self._refuse_foreign()
            self._filled_empty = self._made_dir is None
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            empty = OCIIndex(manifests=(), media_type=MediaType.OCI_INDEX)
            atomic_write(self.root / INDEX_FILE, canonical_json(empty.to_dict()))
            # The marker last: a layout is complete once it has its oci-layout file.
            atomic_write(self.root / LAYOUT_FILE, canonical_json({"imageLayoutVersion": "1.0.0"}))

    def _refuse_foreign(self) -> None:
        """Refuse a directory holding anything but a lock file (it is not ours to write into)."""
        try:
            others = [p.name for p in self.root.iterdir() if p.name != LOCK_FILE]
        except (FileNotFoundError, NotADirectoryError):
            return  # missing (made next), or a file (mkdir says so)
        except OSError as exc:
            raise PublishError(f"{self.display}: cannot list it: {exc.strerror}") from exc
        if others:
            raise DocumentError(
                f"{self.root}: not empty and not an OCI layout",
                hint="name a new or empty directory, or an existing OCI layout",
            )

    def discard_created(self) -> None:
        """Undo what ``create=True`` made, for a run that failed: a directory it created is removed
        whole; a directory that was empty before is emptied again. A layout that existed before is
        left alone (its new blobs are content-addressed and harmless), and so is one whose index
        lists anything this object did not put there: another kiln shares it. Never raises."""
        made, self._made_dir = self._made_dir, None
        filled, self._filled_empty = self._filled_empty, False
        if made is None and not filled:
            return
        try:
            with self.locked():
                if not self._only_ours():
                    return
                if made is not None:
                    shutil.rmtree(made, ignore_errors=True)
                    return
                shutil.rmtree(self.root / "blobs", ignore_errors=True)
                for name in (LAYOUT_FILE, INDEX_FILE, LOCK_FILE):
                    with contextlib.suppress(OSError):
                        (self.root / name).unlink()
        except Exception:  # noqa: BLE001 - best effort: the caller re-raises the real failure
            return

    def _only_ours(self) -> bool:
        if not os.path.lexists(self.root / INDEX_FILE):
            return True  # _create failed before writing it
        return all(d.digest in self._indexed for d in OCILayout(self.root).index().manifests)

    @contextlib.contextmanager
    def discarded_on_failure(self) -> Iterator[LayoutRepository]:
        """This repository; :meth:`discard_created` if the block raises anything (Ctrl-C too)."""
        try:
            yield self
        except BaseException:
            self.discard_created()
            raise

    # -- blobs ------------------------------------------------------------------------------------

    def blob_size(self, digest: Digest) -> int | None:
        try:
            st = self.layout.blob_path(digest).stat()
        except FileNotFoundError:
            return None
        return st.st_size

    def blob_source(self, desc: Descriptor, staging: Path) -> BlobSource:
        del staging  # the blob is already a file here
        path = self.layout.blob_path(desc.digest)
        try:
            check_regular(path)
        except FileNotFoundError:
            raise DocumentError(f"{self.root}: blob {desc.digest} is missing") from None
        return BlobSource(digest=desc.digest, size=desc.size, path=path)

    def read_blob(self, digest: Digest, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        return self.layout.read_blob(digest, limit=limit)

    def put_blobs(self, blobs: Sequence[BlobSource], *, jobs: int) -> list[BlobResult]:
        unique = {b.digest: b for b in blobs}
        workers = max(1, min(jobs, len(unique) or 1))
        if workers == 1:
            done = {d: self._put_blob(b) for d, b in unique.items()}
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-layout") as pool:
                done = dict(zip(unique, pool.map(self._put_blob, unique.values()), strict=True))
        return [done[b.digest] for b in blobs]

    def _put_blob(self, src: BlobSource) -> BlobResult:
        """Add one blob: skip it if present, hard-link it from another layout on the same
        filesystem (counted as ``mounted``), else stream it in; every new byte is hashed."""
        existing = self.blob_size(src.digest)
        if existing is not None:
            if existing != src.size:
                raise VerificationError(
                    f"{self.root}: blob {src.digest} holds {existing} bytes, expected {src.size}",
                    reason=Reason.DIGEST,
                    hint="the layout is damaged: remove that blob file and publish again",
                )
            return BlobResult(digest=src.digest, size=src.size, action=BlobAction.EXISTED)
        if src.path is not None and self._link(src):
            return BlobResult(digest=src.digest, size=src.size, action=BlobAction.MOUNTED)
        with self.layout.blob_writer(expected=src.digest, limit=src.size) as sink, src.open() as fh:
            while block := fh.read(IO_BLOCK):
                sink.write(block)
        if sink.size != src.size:
            with contextlib.suppress(FileNotFoundError):
                self.layout.blob_path(src.digest).unlink()
            raise VerificationError(
                f"{self.root}: blob {src.digest}: got {sink.size} bytes, expected {src.size}",
                reason=Reason.SIZE,
            )
        return BlobResult(digest=src.digest, size=src.size, action=BlobAction.UPLOADED)

    def _link(self, src: BlobSource) -> bool:
        """Hard-link ``src.path`` in under a temporary name, hash it there, then rename it into
        place. ``False`` when linking is impossible (another filesystem, permissions)."""
        assert src.path is not None  # noqa: S101 - checked by the caller
        blobdir = self.layout.blob_path(src.digest).parent
        tmp = blobdir / f".link-{src.digest.hex[:16]}-{os.getpid()}-{threading.get_ident()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left over from a crashed run of this very process id and thread
        try:
            os.link(src.path, tmp)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                return False
            raise
        try:
            _check_file(tmp, src)
            os.replace(tmp, self.layout.blob_path(src.digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(blobdir)
        return True

    # -- manifests and tags -----------------------------------------------------------------------

    def _index_descriptor(self, digest: Digest) -> Descriptor | None:
        for desc in self.layout.index().manifests:
            if desc.digest == digest:
                return desc
        return None

    def get_manifest(self, ref: str | Digest) -> Manifest | None:
        if isinstance(ref, str) and not ref.startswith("sha256:"):
            desc = self.tag_target(ref)
            if desc is None:
                return None
            return self._load(desc.digest, desc.media_type)
        digest = ref if isinstance(ref, Digest) else Digest.parse(ref)
        if self.blob_size(digest) is None:
            return None
        known = self._index_descriptor(digest)
        return self._load(digest, known.media_type if known is not None else None)

    def _load(self, digest: Digest, media_type: str | None) -> Manifest:
        data = self.layout.read_blob(digest, limit=MAX_DOCUMENT_BYTES)
        mt = media_type or manifest_media_type(data, what=f"{self.root}: manifest {digest}")
        return Manifest(data=data, media_type=mt, digest=digest)

    def has_manifest(self, digest: Digest) -> bool:
        return self.blob_size(digest) is not None

    def put_manifest(self, manifest: Manifest) -> None:
        if self.has_manifest(manifest.digest):
            return
        self.layout.write_blob(manifest.data)

    def tag_target(self, tag: str) -> Descriptor | None:
        return self.layout.tags().get(tag)

    def set_tag(self, tag: str, manifest: Manifest) -> None:
        with self.locked():
            current = self.tag_target(tag)
            if current is not None and current.digest == manifest.digest:
                return
            self.put_manifest(manifest)
            self._indexed.add(manifest.digest)
            self.layout.tag(self._descriptor_for(manifest), tag)

    def add_untagged(self, desc: Descriptor) -> None:
        """List ``desc`` in index.json without a name (a layout's image with no tag)."""
        with self.locked():
            self._indexed.add(desc.digest)
            self.layout.add(desc)

    def _descriptor_for(self, manifest: Manifest) -> Descriptor:
        platform = None
        if manifest.media_type in (MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST):
            platform = self._platform_of(manifest)
        return Descriptor(
            media_type=manifest.media_type,
            digest=manifest.digest,
            size=len(manifest.data),
            platform=platform,
        )

    def _platform_of(self, manifest: Manifest) -> Platform | None:
        """An image's platform from its config, as skopeo records it in index.json (best effort)."""
        try:
            parsed = OCIManifest.from_bytes(manifest.data)
            if parsed.config.media_type not in (MediaType.OCI_CONFIG, MediaType.DOCKER_CONFIG):
                return None
            doc = parse_json_object(
                self.layout.read_blob(parsed.config.digest, limit=MAX_DOCUMENT_BYTES), what="image config"
            )
        except DocumentError:
            return None
        os_name, arch = doc.get("os"), doc.get("architecture")
        if not (isinstance(os_name, str) and os_name and isinstance(arch, str) and arch):
            return None
        variant = doc.get("variant")
        return Platform(os=os_name, architecture=arch, variant=variant if isinstance(variant, str) else None)

    def referrers(self, digest: Digest) -> tuple[Descriptor, ...]:
        """Untagged index entries whose manifest names ``digest`` as its subject."""
        found: list[Descriptor] = []
        entries = self.layout.index().manifests
        if len(entries) > _MAX_INDEX_ENTRIES:
            raise DocumentError(f"{self.root}: index.json lists {len(entries)} manifests")
        for desc in entries:
            if REF_NAME in desc.annotations or desc.media_type != MediaType.OCI_MANIFEST:
                continue
            try:
                parsed = OCIManifest.from_bytes(self.layout.read_blob(desc.digest))
            except DocumentError:
                continue
            if parsed.subject is not None and parsed.subject.digest == digest:
                found.append(desc)
        return tuple(found)

    def add_referrers(self, subject: Digest, descs: Sequence[Descriptor]) -> None:
        del subject  # the referrer's own manifest names it
        with self.locked():
            index = self.layout.index()
            listed = {d.digest for d in index.manifests if REF_NAME not in d.annotations}
            new = []
            for desc in descs:
                if desc.digest not in listed:
                    listed.add(desc.digest)
                    new.append(replace(desc, annotations=MappingProxyType(dict(desc.annotations))))
            if new:
                self._indexed.update(d.digest for d in new)
                self.layout.write_index(replace(index, manifests=(*index.manifests, *new), raw=None))


def _check_file(path: Path, src: BlobSource) -> None:
    h = hashlib.sha256()
    n = 0
    with open_regular(path) as fh:
        while block := fh.read(IO_BLOCK):
            h.update(block)
            n += len(block)
    if h.hexdigest() != src.digest.hex or n != src.size:
        raise VerificationError(
            f"{src.path}: holds {n} bytes hashing to sha256:{h.hexdigest()}, "
            f"not blob {src.digest} ({src.size} bytes)",
            reason=Reason.DIGEST,
            hint="the source layout is damaged",
        )
