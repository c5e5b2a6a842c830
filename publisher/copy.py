"""Copy an image, byte for byte, between endpoints: registries and ``oci:DIR`` layouts alike.

What travels with an image (its *closure*):

- the root manifest or index, and each manifest an index lists (one level, as images use);
- every config and layer blob they reference, as the exact bytes: never decompressed, recompressed
  or re-serialized, so every digest is the same on both sides;
- cosign's ``sha256-<hex>.sig`` and ``sha256-<hex>.att`` manifests of the root and of each platform
  manifest, with their blobs;
- referrers (manifests whose ``subject`` is the root), from the referrers API or its tag fallback.

Order: blobs first (``jobs`` at once), then platform manifests, the root, signatures and
attestations, referrers. Tags naming the image are the caller's business (:mod:`publisher.publish`
moves them only after everything they would point at is in place).

When the destination already holds a different ``.sig``/``.att`` manifest for the same digest
(someone else signed it too), the layers are merged as cosign does when it appends a signature:
the destination's layers first, then each source layer it lacks. Nothing already there is lost.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex, OCIManifest
from manifests.vocabulary import Reason
from publisher.endpoint import Endpoint
from publisher.errors import PublishError
from publisher.transfer import BlobAction, BlobResult, BlobSource, Manifest

__all__ = [
    "ImageClosure",
    "BlobCounts",
    "CopyResult",
    "collect_closure",
    "copy_closure",
    "copy_image",
    "MAX_CHILD_MANIFESTS",
    "MAX_BLOBS",
]

MAX_CHILD_MANIFESTS = 256
MAX_BLOBS = 10_000
_INDEX_TYPES = (MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST_LIST)
_MANIFEST_TYPES = (MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST)

Progress = Callable[[str], None]


def _cosign_tags(digest: Digest) -> tuple[str, str]:
    """cosign's signature and attestation tags of ``digest`` (``signing.cosign.signature_tag`` and
    ``attestation_tag``), spelled here so that copying an unsigned image never loads the signing
    package: it is imported only to merge signatures (:func:`_merge_cosign`)."""
    return f"{digest.tag_form}.sig", f"{digest.tag_form}.att"


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageClosure:
    """Everything that travels with one image, read from its source."""

    root: Manifest
    children: tuple[Manifest, ...]
    blobs: tuple[Descriptor, ...]
    cosign: tuple[tuple[str, Manifest], ...]
    referrers: tuple[Manifest, ...]

    @property
    def digest(self) -> Digest:
        return self.root.digest

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobCounts:
    uploaded: int = 0
    existed: int = 0
    mounted: int = 0

    @classmethod
    def of(cls, results: Sequence[BlobResult]) -> BlobCounts:
        unique = {r.digest: r.action for r in results}
        actions = list(unique.values())
        return cls(
            uploaded=actions.count(BlobAction.UPLOADED),
            existed=actions.count(BlobAction.EXISTED),
            mounted=actions.count(BlobAction.MOUNTED),
        )

    def to_dict(self) -> dict[str, int]:
        return {"uploaded": self.uploaded, "existed": self.existed, "mounted": self.mounted}


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyResult:
    digest: Digest
    blobs: BlobCounts
    manifests_written: int
    cosign_tags: tuple[str, ...] = field(default=())
    referrers: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.blobs.uploaded or self.blobs.mounted or self.manifests_written)


def _parse_manifest(man: Manifest, *, what: str) -> OCIManifest:
    try:
        return OCIManifest.from_bytes(man.data)
    except DocumentError as exc:
        raise VerificationError(f"{what}: {exc.message}", reason=Reason.MANIFEST) from None


def _parse_index(man: Manifest, *, what: str) -> OCIIndex:
    try:
        return OCIIndex.from_bytes(man.data)
    except DocumentError as exc:
        raise VerificationError(f"{what}: {exc.message}", reason=Reason.MANIFEST) from None


Watch = Callable[[Digest, int, int], None]


class _CountingReader:
    """A blob file whose reads are reported to a :data:`Watch` (offset-aware: a resumed or chunked
    upload reports where it is, not a running sum)."""

    def __init__(self, fh: BinaryIO, digest: Digest, size: int, watch: Watch) -> None:
        self._fh, self._digest, self._size, self._watch = fh, digest, size, watch

    def read(self, n: int = -1, /) -> bytes:
        data = self._fh.read(n)
        self._watch(self._digest, self._fh.tell(), self._size)
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Watched:
    """An opener for a BlobSource whose reads are watched."""

    def __init__(self, source: BlobSource, watch: Watch) -> None:
        self._source, self._watch = source, watch

    def __call__(self) -> BinaryIO:
        source = self._source
        return _CountingReader(source.open(), source.digest, source.size, self._watch)  # type: ignore[return-value]


def _referrer_descriptor(man: Manifest) -> Descriptor:
    """A referrer's descriptor with its ``artifactType`` (the manifest's, else its config's media
    type, as the distribution spec lists referrers), so the fallback index says what each one is."""
    try:
        parsed = OCIManifest.from_bytes(man.data)
    except DocumentError:
        return man.descriptor
    kind = parsed.artifact_type or parsed.config.media_type
    return dataclasses.replace(man.descriptor, artifact_type=kind)


def _manifest_blobs(man: Manifest, *, what: str) -> tuple[Descriptor, ...]:
    parsed = _parse_manifest(man, what=what)
    return (parsed.config, *parsed.layers)


def _get(src: Endpoint, digest: Digest, media_type: str, *, what: str) -> Manifest:
    man = src.get_manifest(digest)
    if man is None:
        raise PublishError(f"{src.display}: {what} {digest} is missing", hint="the source is incomplete")
    if man.digest != digest:  # pragma: no cover - both endpoints verify by digest already
        raise VerificationError(
            f"{src.display}: {what} {digest} hashes to {man.digest}", reason=Reason.DIGEST
        )
    if media_type and man.media_type != media_type:
        man = Manifest(data=man.data, media_type=media_type, digest=man.digest)
    return man


def collect_closure(src: Endpoint, root: Manifest) -> ImageClosure:
    """Read what travels with ``root`` from ``src`` (manifests and cosign/referrer manifests; blobs
    are only listed here, and streamed when copied)."""
    what = f"{src.display}@{root.digest}"
    children: list[Manifest] = []
    blobs: dict[Digest, Descriptor] = {}

    def add_blobs(descs: Sequence[Descriptor]) -> None:
        for d in descs:
            blobs.setdefault(d.digest, d)
        if len(blobs) > MAX_BLOBS:
            raise VerificationError(f"{what}: references more than {MAX_BLOBS} blobs", reason=Reason.MANIFEST)

    nodes = [root]
    if root.media_type in _INDEX_TYPES:
        index = _parse_index(root, what=what)
        if len(index.manifests) > MAX_CHILD_MANIFESTS:
            raise VerificationError(
                f"{what}: lists {len(index.manifests)} manifests (cap {MAX_CHILD_MANIFESTS})",
                reason=Reason.MANIFEST,
            )
        for child in index.manifests:
            if child.media_type not in _MANIFEST_TYPES:
                raise PublishError(
                    f"{what}: lists a {child.media_type} ({child.digest})",
                    hint="nested indexes and non-image entries are not supported",
                )
            man = _get(src, child.digest, child.media_type, what="platform manifest")
            add_blobs(_manifest_blobs(man, what=f"{src.display}@{child.digest}"))
            children.append(man)
            nodes.append(man)
    elif root.media_type in _MANIFEST_TYPES:
        add_blobs(_manifest_blobs(root, what=what))
    else:
        raise PublishError(f"{what}: unsupported media type {root.media_type!r}")

    cosign: list[tuple[str, Manifest]] = []
    for node in nodes:
        for tag in _cosign_tags(node.digest):
            found = src.get_manifest(tag)
            if found is None:
                continue
            add_blobs(_manifest_blobs(found, what=f"{src.display}:{tag}"))
            cosign.append((tag, found))

    referrers: list[Manifest] = []
    for desc in src.referrers(root.digest):
        if desc.media_type not in _MANIFEST_TYPES:
            continue
        man = _get(src, desc.digest, desc.media_type, what="referrer")
        add_blobs(_manifest_blobs(man, what=f"{src.display}@{desc.digest}"))
        referrers.append(man)

    return ImageClosure(
        root=root,
        children=tuple(children),
        blobs=tuple(blobs.values()),
        cosign=tuple(cosign),
        referrers=tuple(referrers),
    )


def _put_manifest(dest: Endpoint, man: Manifest, *, new: bool = False) -> bool:
    """Store ``man`` at ``dest`` unless it is there already; ``True`` if it was written.

    ``new`` says it cannot be there, so the ``HEAD`` that would tell is not sent: a blob it
    references was just uploaded (a ``HEAD`` found it missing moments ago) or a manifest it lists
    was just written, and a registry accepts a manifest only once everything it references is in
    the repository. Storing it again would be harmless anyway: the same bytes, the same digest.
    """
    if not new and dest.has_manifest(man.digest):
        return False
    dest.put_manifest(man)
    return True


def _merge_cosign(
    src: Endpoint, dest: Endpoint, tag: str, ours: Manifest, theirs: Descriptor, *, jobs: int
) -> Manifest | None:
    """The manifest ``tag`` should hold at ``dest``: theirs plus our layers (``None``: keep theirs)."""
    from signing.cosign import MAX_LAYER_BYTES, append_layer, build_artifact, read_layers

    current = dest.get_manifest(theirs.digest)
    if current is None:  # moved away meanwhile: ours is as good as any
        return ours
    layers = read_layers(
        current.data, lambda d: dest.read_blob(d.digest, limit=MAX_LAYER_BYTES), what=f"{dest.display}:{tag}"
    )
    mine = read_layers(
        ours.data, lambda d: src.read_blob(d.digest, limit=MAX_LAYER_BYTES), what=f"{src.display}:{tag}"
    )
    merged = list(layers)
    for layer in mine:
        merged = list(append_layer(merged, layer).layers)
    if len(merged) == len(layers):
        return None
    artifact = build_artifact(merged)
    with tempfile.TemporaryDirectory(prefix="kiln-merge-") as tmp:
        sources = []
        for digest, data in artifact.blobs.items():
            path = Path(tmp) / digest.hex
            path.write_bytes(data)
            sources.append(BlobSource(digest=digest, size=len(data), path=path))
        dest.put_blobs(sources, jobs=jobs)
    raw = artifact.manifest.to_bytes()
    return Manifest(data=raw, media_type=MediaType.OCI_MANIFEST, digest=Digest.of(raw))


def _held_manifests(dest: Endpoint, closure: ImageClosure, present: Collection[Digest]) -> frozenset[Digest]:
    """The closure's manifests known to be complete at ``dest`` (see :func:`copy_closure`): none
    for a layout (checking it is a few ``stat`` calls, and it holds no such guarantee) or an index
    root (only a platform manifest's blobs are vouched for by the registry)."""
    if getattr(dest, "layout", None) is not None or closure.root.media_type in _INDEX_TYPES:
        return frozenset()
    held = {closure.root.digest} & set(present)
    if not held:
        return frozenset()
    for tag, man in closure.cosign:  # a .sig/.att tag naming our manifest: nothing to merge
        theirs = dest.tag_target(tag)
        if theirs is not None and theirs.digest == man.digest:
            held.add(man.digest)
    if closure.referrers:
        listed = {d.digest for d in dest.referrers(closure.digest)}
        held.update(m.digest for m in closure.referrers if m.digest in listed)
    return frozenset(held)


def _blobs_of_held(closure: ImageClosure, held: frozenset[Digest], *, what: str) -> frozenset[Digest]:
    """Blobs referenced only by manifests in ``held``."""
    if not held:
        return frozenset()
    nodes = [closure.root, *closure.children, *(m for _, m in closure.cosign), *closure.referrers]
    vouched: set[Digest] = set()
    needed: set[Digest] = set()
    for man in nodes:
        digests = {d.digest for d in _manifest_blobs(man, what=f"{what}@{man.digest}")}
        (vouched if man.digest in held else needed).update(digests)
    return frozenset(vouched - needed)


def _put_blobs(
    src: Endpoint,
    dest: Endpoint,
    closure: ImageClosure,
    known: frozenset[Digest],
    *,
    jobs: int,
    mount_from: str | None,
    say: Progress,
    watch: Watch | None,
) -> list[BlobResult]:
    """Upload (or mount, or find) every blob of the closure not in ``known``; ``known`` ones count
    as found."""
    with tempfile.TemporaryDirectory(prefix="kiln-copy-") as staging:
        sources = []
        for desc in closure.blobs:
            if desc.digest in known:
                continue
            s = src.blob_source(desc, Path(staging))
            if mount_from is not None:
                s = dataclasses.replace(s, mount_from=mount_from)
            if watch is not None and (s.path is None or getattr(dest, "layout", None) is None):
                s = BlobSource(
                    digest=s.digest, size=s.size, opener=_Watched(s, watch), mount_from=s.mount_from
                )
            sources.append(s)
        say(f"{dest.display}: {len(sources)} blobs, {closure.size} bytes, {jobs} at a time")
        results = dest.put_blobs(sources, jobs=jobs) if sources else []
    results += [
        BlobResult(digest=d.digest, size=d.size, action=BlobAction.EXISTED)
        for d in closure.blobs
        if d.digest in known
    ]
    return results


def _tag_cosign(
    src: Endpoint, dest: Endpoint, closure: ImageClosure, held: frozenset[Digest], *, jobs: int, say: Progress
) -> int:
    """Point each ``.sig``/``.att`` tag at our manifest, merged with theirs; how many were written."""
    written = 0
    with dest.locked():
        for tag, man in closure.cosign:
            if man.digest in held:
                continue  # the tag names it already (asked by _held_manifests)
            theirs = dest.tag_target(tag)
            target: Manifest | None = man
            if theirs is not None and theirs.digest != man.digest:
                target = _merge_cosign(src, dest, tag, man, theirs, jobs=jobs)
            elif theirs is not None:
                target = None
            if target is not None:
                dest.set_tag(tag, target)
                written += 1
                say(f"{dest.display}:{tag} -> {target.digest}")
    return written


def copy_closure(
    src: Endpoint,
    dest: Endpoint,
    closure: ImageClosure,
    *,
    jobs: int = 4,
    mount_from: str | None = None,
    progress: Progress | None = None,
    watch: Watch | None = None,
    present: Collection[Digest] = (),
) -> CopyResult:
    """Make ``dest`` hold everything in ``closure`` (no tags naming the image: the caller's job).

    ``watch(digest, bytes sent, size)`` follows each blob's bytes as they are read for upload (a
    live view; for a destination layout, which links what it can, only for the bytes it copies).
    ``present``: manifests the caller saw at ``dest`` (a version tag already naming the root).
    A registry stores a manifest only once every blob it references is in the repository, so
    neither a present manifest nor its blobs are asked about again, and the same holds for
    referrers ``dest`` already lists: a no-change republish sends no ``HEAD`` per blob."""
    say = progress or (lambda _m: None)
    held = _held_manifests(dest, closure, present)
    known = _blobs_of_held(closure, held, what=dest.display)
    results = _put_blobs(src, dest, closure, known, jobs=jobs, mount_from=mount_from, say=say, watch=watch)
    counts = BlobCounts.of(results)
    say(
        f"{dest.display}: blobs uploaded {counts.uploaded}, existed {counts.existed}, "
        f"mounted {counts.mounted}"
    )
    uploaded = {r.digest for r in results if r.action is BlobAction.UPLOADED}

    def has_new_blob(man: Manifest) -> bool:
        if not uploaded:
            return False
        return any(d.digest in uploaded for d in _manifest_blobs(man, what=f"{dest.display}@{man.digest}"))

    written = 0
    for man in closure.children:
        written += _put_manifest(dest, man, new=has_new_blob(man))
    root_new = bool(written) if closure.root.media_type in _INDEX_TYPES else has_new_blob(closure.root)
    if closure.root.digest not in held:
        written += _put_manifest(dest, closure.root, new=root_new)
    written += _tag_cosign(src, dest, closure, held, jobs=jobs, say=say)
    listing = []
    for man in closure.referrers:
        if man.digest in held:
            continue  # pushed and listed already
        written += _put_manifest(dest, man, new=has_new_blob(man))
        listing.append(_referrer_descriptor(man))
    if listing:
        dest.add_referrers(closure.digest, listing)  # one update of the index for all of them
    return CopyResult(
        digest=closure.digest,
        blobs=counts,
        manifests_written=written,
        cosign_tags=tuple(tag for tag, _ in closure.cosign),
        referrers=len(closure.referrers),
    )


def copy_image(
    src: Endpoint,
    dest: Endpoint,
    ref: str | Digest,
    *,
    jobs: int = 4,
    mount_from: str | None = None,
    progress: Progress | None = None,
    watch: Watch | None = None,
) -> tuple[ImageClosure, CopyResult]:
    """Resolve ``ref`` at ``src`` and copy its closure to ``dest`` (without naming tags)."""
    root = src.get_manifest(ref)
    if root is None:
        raise PublishError(f"{src.display}: no image {ref}", hint="check the tag or digest")
    closure = collect_closure(src, root)
    return closure, copy_closure(
        src, dest, closure, jobs=jobs, mount_from=mount_from, progress=progress, watch=watch
    )
