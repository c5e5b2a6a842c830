"""The OCI image layout: a directory holding ``oci-layout``, ``index.json`` and ``blobs/sha256/``.

kiln writes its builds as layouts, and an ``oci:DIR`` layout is also the embedded registry that the
publisher and the agent use when no server is involved. Everything here works only on the root path
it is handed; nothing prints.

Blobs are content-addressed and always written through a temporary file in the blob directory that
is renamed to its digest only after the bytes were hashed, so a blob file's name is its content.
``index.json`` is rewritten atomically and canonically. Tags are the
``org.opencontainers.image.ref.name`` annotation on index entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from manifests.atomic import atomic_write, fsync_dir, naming
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.files import open_regular, read_regular
from manifests.mediatypes import MediaType
from manifests.oci import MAX_DOCUMENT_BYTES, Descriptor, OCIIndex, OCIManifest, parse_json_object
from manifests.vocabulary import Reason

__all__ = [
    "OCILayout",
    "BlobSink",
    "REF_NAME",
    "LAYOUT_FILE",
    "INDEX_FILE",
    "is_cosign_tag",
    "select_manifest",
]

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
_CHUNK = 1 << 20


class BlobSink:
    """A blob being written: hashes and counts every byte; becomes a blob on :meth:`commit`."""

    def __init__(self, fh: BinaryIO, tmp: Path, *, limit: int | None) -> None:
        self._fh = fh
        self._tmp = tmp
        self._h = hashlib.sha256()
        self._limit = limit
        self.size = 0
        self._digest: Digest | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.size += n
        if self._limit is not None and self.size > self._limit:
            raise VerificationError(f"blob exceeds its size cap of {self._limit} bytes", reason=Reason.SIZE)
        self._h.update(data)
        self._fh.write(data)
        return n

    @property
    def digest(self) -> Digest:
        if self._digest is None:
            raise RuntimeError("blob not committed yet")
        return self._digest


def is_cosign_tag(tag: str) -> bool:
    """``sha256-<hex>``, ``sha256-<hex>.sig`` or ``.att``: tags that belong to an image, not names."""
    head, _, suffix = tag.partition(".")
    if suffix not in ("", "sig", "att") or not head.startswith("sha256-"):
        return False
    try:
        Digest(head[len("sha256-") :])
    except DocumentError:
        return False
    return True


class OCILayout:
    """An OCI image layout directory. Use :meth:`create` or :meth:`open`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path) -> OCILayout:
        """Make ``root`` a layout (an existing layout is opened; other content is refused)."""
        root = Path(root)
        if (root / LAYOUT_FILE).exists():
            return cls.open(root)
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise DocumentError(
                f"{root}: not empty and not an OCI layout", hint="choose an empty or new directory"
            )
        (root / "blobs" / "sha256").mkdir(parents=True)
        atomic_write(root / LAYOUT_FILE, canonical_json({"imageLayoutVersion": "1.0.0"}))
        layout = cls(root)
        layout.write_index(OCIIndex(manifests=()))
        return layout

    @classmethod
    def open(cls, root: Path) -> OCILayout:
        """Open an existing layout, checking its ``oci-layout`` file."""
        root = Path(root)
        marker = root / LAYOUT_FILE
        try:
            data = _read_capped(marker, 4096)
        except FileNotFoundError:
            raise DocumentError(
                f"{root}: not an OCI image layout (no {LAYOUT_FILE} file)",
                hint="create one with a build, or check the path",
            ) from None
        doc = parse_json_object(data, what=f"{marker}")
        version = doc.get("imageLayoutVersion")
        if version != MediaType.OCI_LAYOUT_VERSION:
            raise DocumentError(
                f"{marker}: unsupported imageLayoutVersion {version!r}", hint="expected 1.0.0"
            )
        return cls(root)

    # -- blobs -----------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / "sha256" / digest.hex

    def has_blob(self, digest: Digest) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: Digest, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        """Read a whole blob (at most ``limit`` bytes) and verify it hashes to ``digest``."""
        path = self.blob_path(digest)
        try:
            data = _read_capped(path, limit)
        except FileNotFoundError:
            raise DocumentError(f"{self.root}: blob {digest} is missing") from None
        digest.check(data, what=f"{self.root}: blob {digest}")
        return data

    def verify_blob(self, digest: Digest, *, size: int | None = None) -> None:
        """Stream a blob of any size through sha256; raise unless it matches (and ``size`` if given)."""
        path = self.blob_path(digest)
        h = hashlib.sha256()
        n = 0
        try:
            with open_regular(path) as fh:
                while block := fh.read(_CHUNK):
                    h.update(block)
                    n += len(block)
        except FileNotFoundError:
            raise DocumentError(f"{self.root}: blob {digest} is missing") from None
        if h.hexdigest() != digest.hex:
            raise VerificationError(
                f"{self.root}: blob {digest}: digest mismatch (got sha256:{h.hexdigest()})",
                reason=Reason.DIGEST,
            )
        if size is not None and n != size:
            raise VerificationError(
                f"{self.root}: blob {digest}: size {n} differs from the expected {size}", reason=Reason.DIGEST
            )

    def write_blob(self, data: bytes) -> Digest:
        with self.blob_writer() as sink:
            sink.write(data)
        return sink.digest

    @contextlib.contextmanager
    def blob_writer(
        self, *, expected: Digest | None = None, limit: int | None = None, durable: bool = True
    ) -> Iterator[BlobSink]:
        """Yield a :class:`BlobSink`; on clean exit it becomes the blob named by its hash.

        With ``expected``, a different hash raises :class:`VerificationError` and nothing is kept.
        ``durable=False`` skips the fsyncs (for a staging directory renamed into place later).
        """
        blobdir = self.root / "blobs" / "sha256"
        blobdir.mkdir(parents=True, exist_ok=True)
        with naming(blobdir):
            fd, tmpname = tempfile.mkstemp(dir=blobdir, prefix=".ingest-", suffix=".tmp")
        tmp = Path(tmpname)
        try:
            with os.fdopen(fd, "wb") as fh:
                sink = BlobSink(fh, tmp, limit=limit)
                yield sink
                with naming(blobdir):
                    fh.flush()
                    if durable:
                        os.fsync(fh.fileno())
            digest = Digest(sink._h.hexdigest())
            _check_expected(digest, expected)
            with naming(self.blob_path(digest)):
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.blob_path(digest))
            sink._digest = digest
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        if durable:
            fsync_dir(blobdir)

    def link_blob(self, source: Path, digest: Digest, *, size: int | None = None) -> None:
        """Add ``source`` (claimed to be ``digest``) by hard link or copy, then verify it in place.

        On a mismatch the blob is removed again and :class:`VerificationError` is raised.
        """
        dest = self.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            self.verify_blob(digest, size=size)
            return
        tmp = dest.with_name(f".link-{digest.hex[:16]}-{os.getpid()}-{id(self):x}.tmp")
        try:
            try:
                os.link(source, tmp)
            except OSError:
                with open(source, "rb") as src, open(tmp, "wb") as out:
                    while block := src.read(_CHUNK):
                        out.write(block)
            os.replace(tmp, dest)
            self.verify_blob(digest, size=size)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise

    def ingest_file(self, path: Path, *, move: bool = False) -> tuple[Digest, int]:
        """Add a host file as a blob: hashed while copied (or, with ``move``, hashed then renamed)."""
        path = Path(path)
        if move:
            h = hashlib.sha256()
            size = 0
            with open(path, "rb") as fh:
                while block := fh.read(_CHUNK):
                    h.update(block)
                    size += len(block)
            digest = Digest(h.hexdigest())
            blobdir = self.root / "blobs" / "sha256"
            blobdir.mkdir(parents=True, exist_ok=True)
            try:
                os.chmod(path, 0o644)
                os.replace(path, self.blob_path(digest))
            except OSError as exc:
                if exc.errno != 18:  # EXDEV: another filesystem; fall back to copying
                    raise
            else:
                fsync_dir(blobdir)
                return digest, size
        with self.blob_writer() as sink, open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                sink.write(block)
        if move:
            path.unlink()
        return sink.digest, sink.size

    # -- index and tags --------------------------------------------------------------------

    def index(self) -> OCIIndex:
        path = self.root / INDEX_FILE
        try:
            data = _read_capped(path, MAX_DOCUMENT_BYTES)
        except FileNotFoundError:
            raise DocumentError(f"{self.root}: {INDEX_FILE} is missing") from None
        return OCIIndex.from_bytes(data, what=str(path))

    def write_index(self, index: OCIIndex) -> None:
        """Replace ``index.json`` atomically with the canonical form of ``index``."""
        atomic_write(self.root / INDEX_FILE, canonical_json(index.to_dict()))

    def tags(self) -> Mapping[str, Descriptor]:
        """Tag name -> descriptor, for every index entry carrying a ref.name annotation."""
        out: dict[str, Descriptor] = {}
        for desc in self.index().manifests:
            name = desc.annotations.get(REF_NAME)
            if name is not None:
                out[name] = desc
        return MappingProxyType(out)

    def resolve(self, ref: str | None) -> Descriptor:
        """Find a manifest by tag, by ``sha256:`` digest, or (``None``) the only image in the index.

        With ``None``, signatures and attestations stored beside an image (cosign's
        ``sha256-<hex>.sig``/``.att`` tags, artifacts whose subject is the image) do not count: a
        signed layout still has one image.
        """
        return select_manifest(self.index().manifests, ref, where=str(self.root))

    def tag(self, descriptor: Descriptor, name: str) -> None:
        """Point ``name`` at ``descriptor`` (an existing tag of that name is moved)."""
        _check_tag(name)
        ann = dict(descriptor.annotations)
        ann[REF_NAME] = name
        tagged = replace(descriptor, annotations=MappingProxyType(ann))
        index = self.index()
        kept = [d for d in index.manifests if d.annotations.get(REF_NAME) != name]
        kept.append(tagged)
        self.write_index(replace(index, manifests=tuple(kept), raw=None))

    def add(self, descriptor: Descriptor) -> None:
        """Record an untagged manifest in the index (once)."""
        index = self.index()
        if any(d.digest == descriptor.digest and REF_NAME not in d.annotations for d in index.manifests):
            return
        self.write_index(replace(index, manifests=(*index.manifests, descriptor), raw=None))

    def add_referrers(self, descriptors: Sequence[Descriptor], subject: Digest) -> None:
        """Record artifacts about ``subject`` (their manifests name it as ``subject``) twice over:
        as untagged index entries (OCI 1.1 layouts; `umoci gc` keeps what the index lists) and in
        the referrers tag schema's ``sha256-<hex>`` index (what `skopeo copy --all` can carry)."""
        for desc in descriptors:
            self.add(desc)
        tag = f"sha256-{subject.hex}"
        current = self.tags().get(tag)
        listed: tuple[Descriptor, ...] = ()
        if current is not None:
            listed = OCIIndex.from_bytes(self.read_blob(current.digest)).manifests
        new = [d for d in descriptors if all(x.digest != d.digest for x in listed)]
        if not new:
            return
        fallback = OCIIndex(manifests=(*listed, *new)).to_bytes()
        digest = self.write_blob(fallback)
        self.tag(Descriptor(media_type=MediaType.OCI_INDEX, digest=digest, size=len(fallback)), tag)
        if current is not None and all(d.digest != current.digest for d in self.index().manifests):
            # The superseded referrers index is garbage now: remove it as `umoci gc` would.
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(current.digest).unlink()

    def referrers(self, subject: Digest) -> tuple[Descriptor, ...]:
        """Artifacts about ``subject``: untagged index entries whose manifest names it, and the
        entries of its ``sha256-<hex>`` referrers index (one layout may hold either or both)."""
        found: dict[Digest, Descriptor] = {}
        index = self.index().manifests
        for desc in index:
            if desc.artifact_type is None or REF_NAME in desc.annotations:
                continue
            if desc.media_type != MediaType.OCI_MANIFEST or desc.digest in found:
                continue
            try:
                man = OCIManifest.from_bytes(self.read_blob(desc.digest))
            except DocumentError:
                continue
            if man.subject is not None and man.subject.digest == subject:
                found[desc.digest] = desc
        tag = f"sha256-{subject.hex}"
        for desc in index:
            if desc.annotations.get(REF_NAME) == tag and desc.media_type == MediaType.OCI_INDEX:
                for listed in OCIIndex.from_bytes(self.read_blob(desc.digest)).manifests:
                    found.setdefault(listed.digest, listed)
        return tuple(found.values())

    def untag(self, name: str) -> None:
        index = self.index()
        kept = tuple(d for d in index.manifests if d.annotations.get(REF_NAME) != name)
        if len(kept) == len(index.manifests):
            raise DocumentError(f"{self.root}: no tag {name!r}")
        self.write_index(replace(index, manifests=kept, raw=None))


def select_manifest(manifests: tuple[Descriptor, ...], ref: str | None, *, where: str) -> Descriptor:
    """The index entry ``ref`` names (see :meth:`OCILayout.resolve`); an archive's index too."""
    if ref is None:
        # Artifacts about an image (its SBOM and provenance: ``artifactType`` set, stored untagged
        # beside it) are not images; a tagged artifact is one (a VM image: its artifactType names it).
        images = [
            d
            for d in manifests
            if not is_cosign_tag(d.annotations.get(REF_NAME, ""))
            and (d.artifact_type is None or REF_NAME in d.annotations)
        ]
        if len(images) != 1:
            raise DocumentError(
                f"{where}: holds {len(images)} images; name one", hint="give a tag or a sha256: digest"
            )
        return images[0]
    if ref.startswith("sha256:"):
        digest = Digest.parse(ref)
        for desc in manifests:
            if desc.digest == digest:
                return desc
        raise DocumentError(f"{where}: no manifest {ref} in the index")
    return _select_by_name(manifests, ref, where=where)


def _select_by_name(manifests: tuple[Descriptor, ...], ref: str, *, where: str) -> Descriptor:
    """The entry whose ref.name is ``ref``, else the one whose full reference has ``ref`` as tag."""
    exact = {d.digest: d for d in manifests if d.annotations.get(REF_NAME) == ref}
    if len(exact) > 1:
        raise DocumentError(
            f"{where}: the name {ref!r} is on {len(exact)} different manifests in the index",
            hint=f"name one by digest: {', '.join(sorted(str(d) for d in exact))}",
        )
    if exact:
        return next(iter(exact.values()))
    # A build names its image with a full reference (``name:1.0.0``, as Docker 25+ does): its
    # tag alone finds it too, when only one reference has that tag.
    named = {d.digest: d for d in manifests if _reference_tag(d.annotations.get(REF_NAME, "")) == ref}
    if len(named) == 1:
        return next(iter(named.values()))
    if named:
        names = sorted(
            name
            for d in manifests
            if _reference_tag(name := d.annotations.get(REF_NAME, "")) == ref and d.digest in named
        )
        raise DocumentError(
            f"{where}: the tag {ref!r} is ambiguous: {', '.join(names)}", hint="give the full name"
        )
    known = sorted(n for d in manifests if (n := d.annotations.get(REF_NAME)) is not None)
    raise DocumentError(
        f"{where}: no tag {ref!r}",
        hint=f"tags: {', '.join(known)}" if known else "the index has no tags",
    )


def _reference_tag(name: str) -> str | None:
    """The tag of a full ``NAME:TAG`` reference in ref.name (``None`` for a bare tag)."""
    head, sep, tag = name.rpartition(":")
    if not sep or not head or "/" in tag:
        return None
    return tag


def _check_expected(digest: Digest, expected: Digest | None) -> None:
    if expected is not None and digest != expected:
        raise VerificationError(
            f"blob digest mismatch: expected {expected}, got {digest}", reason=Reason.DIGEST
        )


def _check_tag(name: str) -> None:
    # The image-spec ref.name grammar is wide; kiln keeps to registry-tag-safe names plus '/' and ':'.
    if not name or len(name) > 255 or any(c in name for c in "\x00\n\r\t ") or not name.isprintable():
        raise DocumentError(f"invalid tag {name!r}", hint="use printable characters without spaces")


def _read_capped(path: Path, limit: int) -> bytes:
    # A layout is a directory anyone may have written: a FIFO, a device or a link where a file
    # belongs is refused (reading one would hang, never end, or read a host file).
    return read_regular(path, limit)
