"""Build orchestration: image manifest -> file tree -> layers -> OCI layout (or archive) on disk.

The output is written to a temporary directory beside ``output`` and renamed into place only when
everything succeeded: a failed build leaves nothing behind, and an existing output is replaced only
with ``force``. Layers are written and compressed in a thread pool (the compressors and sha256
release the GIL). With a cache, each layer's tar is first streamed through sha256 only; a cache hit
on its diff_id skips compression entirely.

Nothing in the output depends on the umask, TZ, host mtimes or ownership, the checkout path, or the
clock: modes and owners come from the manifest rules, every time from ``source_date_epoch``.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.bom import OwnerLookup, attestation_documents, collect_inputs
from builder.cache import BuildCache, CacheKey, StatEntry
from builder.compress import ANNOTATION, BackgroundSink, Compressor
from builder.errors import BuildError, SourceError
from builder.imageconfig import image_config, manifest_annotations
from builder.layers import LayerPlan, plan_layers
from builder.sources import Assembly, InputRecord, assemble
from builder.tarwriter import FileRecord, TarStats, check_epoch, tar_size, write_tar
from builder.tree import EntryKind
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import KilnError
from manifests.image import ImageManifest
from manifests.layout import OCILayout
from manifests.mediatypes import Compression, MediaType
from manifests.oci import Descriptor, OCIManifest
from manifests.version import VERSION

if TYPE_CHECKING:
    from builder.debian.prepare import PreparedDebian

__all__ = ["OutputFormat", "LayerInfo", "BuildResult", "build_image", "docker_repo_tag"]

Progress = Callable[[str], None]

_MAX_SMALL_BLOB = 64 << 20  # a config, manifest, SBOM or provenance kept in the cache

SBOM_ANNOTATION = "dev.kiln.sbom"
PROVENANCE_ANNOTATION = "dev.kiln.provenance"


class OutputFormat(enum.StrEnum):
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerInfo:
    digest: Digest
    diff_id: Digest
    size: int
    media_type: str
    files: int
    category: str
    cached: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildResult:
    name: str
    image_version: str
    digest: Digest
    config_digest: Digest
    size: int
    layers: tuple[LayerInfo, ...]
    output: Path
    format: OutputFormat
    compression: str
    files: tuple[FileRecord, ...]
    inputs: tuple[InputRecord, ...]


class _NullSink:
    def write(self, data: bytes, /) -> None:
        return None


def docker_repo_tag(name: str, version: str) -> str:
    """``name:version`` made acceptable to Docker (lowercase name, tag of ``[A-Za-z0-9_.-]``)."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", version)[:128] or "latest"
    return f"{name.lower()}:{tag}"


def build_image(
    manifest: ImageManifest,
    *,
    output: Path,
    fmt: OutputFormat | str = OutputFormat.OCI,
    cache: BuildCache | None = None,
    source_date_epoch: int = 0,
    force: bool = False,
    progress: Progress | None = None,
    debian: PreparedDebian | None = None,
) -> BuildResult:
    """Build ``manifest`` into ``output``; see the module docstring for the guarantees.

    ``debian``: the extracted packages of the manifest's ``debian`` source, from its lock
    (:func:`builder.debian.prepare.prepare`)."""
    fmt = OutputFormat(fmt)
    mtime = check_epoch(source_date_epoch)
    say = progress or (lambda _msg: None)
    output = Path(output)
    if (output.exists() or output.is_symlink()) and not force:
        raise BuildError(f"{output} already exists", hint="pass --force to replace it")
    if fmt is OutputFormat.DOCKER_ARCHIVE:
        comp = Compressor.create(Compression.NONE)
    else:
        comp = Compressor.create(manifest.compression, manifest.compression_level)
    if comp.compression is Compression.NONE:
        cache = None  # nothing to save: the tar is re-streamed faster than it is copied

    assembly = assemble(manifest, debian=debian)
    _check_machines(assembly, manifest)
    plans = plan_layers(assembly.tree.entries(), manifest.layers)
    say(f"{manifest.name} {manifest.version}: {len(assembly.tree)} paths in {len(plans)} layers")
    stat_keys = [_stat_key(plan, comp, mtime) if cache is not None else None for plan in plans]
    build_key = _build_key(manifest, fmt, comp, mtime, stat_keys) if cache is not None else None

    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.kiln-"))
    try:
        layout = OCILayout.create(stage / "layout")
        built = None
        if cache is not None and build_key is not None:
            built = _reuse_build(cache, build_key, layout, manifest.version)
        if built is None:
            built = _build_layout(
                manifest,
                assembly,
                plans,
                stat_keys,
                layout=layout,
                comp=comp,
                cache=cache,
                mtime=mtime,
                say=say,
                debian=debian,
            )
            if cache is not None and build_key is not None:
                _remember_build(cache, build_key, layout, built)
        else:
            say("unchanged since the last build: its result is reused from the cache")
        if fmt is OutputFormat.DOCKER_ARCHIVE:
            from builder.archive import docker_manifest  # archives only: kept off the common path

            (layout.root / "manifest.json").write_bytes(
                docker_manifest(
                    config=built.config_digest,
                    layers=[layer.digest for layer in built.layers],
                    repo_tag=docker_repo_tag(manifest.name, manifest.version),
                )
            )
        _install(layout.root, output, fmt=fmt, mtime=mtime, stage=stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    say(f"{manifest.name} {manifest.version}: {built.digest} -> {output}")
    return BuildResult(
        name=manifest.name,
        image_version=manifest.version,
        digest=built.digest,
        config_digest=built.config_digest,
        size=built.size,
        layers=built.layers,
        output=output,
        format=fmt,
        compression=comp.tag,
        files=built.files,
        inputs=assembly.inputs,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Built:
    """What a build put in its layout, apart from the layers' bytes."""

    digest: Digest
    config_digest: Digest
    size: int
    layers: tuple[LayerInfo, ...]
    files: tuple[FileRecord, ...]
    index_entry: Descriptor


def _build_layout(
    manifest: ImageManifest,
    assembly: Assembly,
    plans: tuple[LayerPlan, ...],
    stat_keys: list[str | None],
    *,
    layout: OCILayout,
    comp: Compressor,
    cache: BuildCache | None,
    mtime: int,
    say: Progress,
    debian: PreparedDebian | None = None,
) -> _Built:
    results = _write_layers(plans, stat_keys, layout=layout, comp=comp, cache=cache, mtime=mtime, say=say)
    layers = tuple(r[0] for r in results)
    config = image_config(
        manifest,
        diff_ids=[layer.diff_id for layer in layers],
        layer_labels=[layer.category for layer in layers],
        source_date_epoch=mtime,
    )
    config_bytes = canonical_json(config)
    config_digest = layout.write_blob(config_bytes)
    oci_manifest = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=config_digest, size=len(config_bytes)),
        layers=tuple(
            Descriptor(
                media_type=layer.media_type,
                digest=layer.digest,
                size=layer.size,
                annotations={ANNOTATION: comp.tag},
            )
            for layer in layers
        ),
        annotations=manifest_annotations(manifest, source_date_epoch=mtime, compression=comp.tag),
    )
    manifest_bytes = oci_manifest.to_bytes()
    digest = layout.write_blob(manifest_bytes)
    files = tuple(sorted((f for r in results for f in r[1].files), key=lambda f: f.path))
    inputs = collect_inputs(
        manifest,
        assembly.tree.entries(),
        files,
        OwnerLookup(cache.root if cache is not None else None),
    )
    sbom, provenance = attestation_documents(
        manifest, image_digest=digest, files=files, inputs=inputs, source_date_epoch=mtime
    )
    if debian is not None:
        from builder.debian.sbom import add_debian_packages

        sbom, provenance = add_debian_packages(
            sbom, provenance, debian, manifest.platform, assembly.tree.entries()
        )
    entry = Descriptor(
        media_type=MediaType.OCI_MANIFEST,
        digest=digest,
        size=len(manifest_bytes),
        platform=manifest.platform,
        # Unsigned build records, kept beside the image for `kiln attest` to sign.
        annotations={
            SBOM_ANNOTATION: str(layout.write_blob(sbom)),
            PROVENANCE_ANNOTATION: str(layout.write_blob(provenance)),
        },
    )
    layout.tag(entry, manifest.version)
    return _Built(
        digest=digest,
        config_digest=config_digest,
        size=len(manifest_bytes) + len(config_bytes) + sum(layer.size for layer in layers),
        layers=layers,
        files=files,
        index_entry=entry,
    )


def _check_machines(assembly: Assembly, manifest: ImageManifest) -> None:
    """Every ELF file must run on the image's platform (named when one does not)."""
    from builder.elf import check_platform_machines

    files = (
        (e.path, e.host_path)
        for e in assembly.tree.entries()
        if e.kind is EntryKind.FILE and e.host_path is not None and e.size >= 20
    )
    check_platform_machines(files, manifest.platform.architecture)


def _build_key(
    manifest: ImageManifest, fmt: OutputFormat, comp: Compressor, mtime: int, stat_keys: list[str | None]
) -> str | None:
    """Everything that decides a build's output: the manifest as written, every layer's inputs (by
    stat identity), the format, compressor, timestamp and kiln's version. ``None``: not cacheable."""
    if not all(stat_keys):
        return None
    try:
        manifest_bytes = Path(manifest.source).read_bytes()
    except OSError:
        return None  # a manifest that is not a file (built in memory): nothing stable to key on
    material = [VERSION, hashlib.sha256(manifest_bytes).hexdigest(), str(fmt), comp.tag, mtime, stat_keys]
    if manifest.platforms:  # one manifest, several platforms: each build is its own
        material.append(str(manifest.platform))
    return hashlib.sha256(canonical_json(material)).hexdigest()


def _remember_build(cache: BuildCache, build_key: str, layout: OCILayout, built: _Built) -> None:
    """Keep the small blobs and the record of a finished build (a cache that cannot be written
    only costs time)."""
    entry = built.index_entry
    small = [built.config_digest, built.digest]
    small += [Digest.parse(entry.annotations[a]) for a in (SBOM_ANNOTATION, PROVENANCE_ANNOTATION)]
    record = {
        "index_entry": entry.to_dict(),
        "config": str(built.config_digest),
        "size": built.size,
        "small_blobs": [str(d) for d in small],
        "layers": [
            {
                "digest": str(x.digest),
                "diff_id": str(x.diff_id),
                "size": x.size,
                "media_type": x.media_type,
                "files": x.files,
                "category": x.category,
            }
            for x in built.layers
        ],
        "files": [[f.path, str(f.sha256), f.size] for f in built.files],
    }
    with contextlib.suppress(OSError, KilnError):
        for d in small:
            cache.store_blob(layout.read_blob(d, limit=_MAX_SMALL_BLOB))
        cache.store_build(build_key, record)


def _reuse_build(cache: BuildCache, build_key: str, layout: OCILayout, tag: str) -> _Built | None:
    """Put a recorded build's blobs (re-hashed while linked) and index entry into ``layout``;
    ``None`` if there is no usable record, and the caller builds normally."""
    record = cache.lookup_build(build_key)
    if record is None:
        return None
    try:
        layers = tuple(
            LayerInfo(
                digest=Digest.parse(x["digest"]),
                diff_id=Digest.parse(x["diff_id"]),
                size=int(x["size"]),
                media_type=str(x["media_type"]),
                files=int(x["files"]),
                category=str(x["category"]),
                cached=True,
            )
            for x in record["layers"]
        )
        for layer in layers:
            layout.link_blob(cache.blob_path(layer.digest), layer.digest, size=layer.size)
        for text in record["small_blobs"]:
            d = Digest.parse(text)
            layout.link_blob(cache.blob_path(d), d)
        entry = Descriptor.from_dict(record["index_entry"])
        files = tuple(FileRecord(path=p, sha256=Digest.parse(h), size=int(n)) for p, h, n in record["files"])
        built = _Built(
            digest=entry.digest,
            config_digest=Digest.parse(record["config"]),
            size=int(record["size"]),
            layers=layers,
            files=files,
            index_entry=entry,
        )
    except (OSError, KilnError, KeyError, TypeError, ValueError):
        cache.forget_build(build_key)
        return None
    layout.tag(built.index_entry, tag)
    return built


def _write_layers(
    plans: tuple[LayerPlan, ...],
    stat_keys: list[str | None],
    *,
    layout: OCILayout,
    comp: Compressor,
    cache: BuildCache | None,
    mtime: int,
    say: Progress,
) -> list[tuple[LayerInfo, TarStats]]:
    def one(item: tuple[LayerPlan, str | None]) -> tuple[LayerInfo, TarStats]:
        return _write_layer(item[0], item[1], layout=layout, comp=comp, cache=cache, mtime=mtime)

    workers = max(1, min(len(plans), os.cpu_count() or 1, 4))
    items = list(zip(plans, stat_keys, strict=True))
    if workers == 1:
        results = [one(item) for item in items]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-layer") as pool:
            results = list(pool.map(one, items))
    for i, (info, _stats) in enumerate(results, start=1):
        how = "cached" if info.cached else comp.tag
        say(f"layer {i}/{len(results)} {info.category}: {info.files} files, {info.size} bytes ({how})")
    return results


def _stat_key(plan: LayerPlan, comp: Compressor, mtime: int) -> str | None:
    """A key over everything that decides the layer's bytes, with host files identified by stat
    (device, inode, size, mtime, ctime) instead of content; ``None`` if a file cannot be stat'ed."""
    h = hashlib.sha256()
    h.update(canonical_json([comp.tag, mtime]))
    for e in plan.entries:
        ident: list[object] = [e.path, str(e.kind), e.mode, e.uid, e.gid, e.size, e.target]
        if e.data is not None:
            ident.append(hashlib.sha256(e.data).hexdigest())
        elif e.host_path is not None:
            try:
                st = os.stat(e.host_path)
            except OSError:
                return None
            ident += [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        h.update(canonical_json(ident))
    return h.hexdigest()


def _write_layer(
    plan: LayerPlan,
    stat_key: str | None,
    *,
    layout: OCILayout,
    comp: Compressor,
    cache: BuildCache | None,
    mtime: int,
) -> tuple[LayerInfo, TarStats]:
    first: TarStats | None = None
    key: CacheKey | None = None
    if cache is not None:
        # 1. Unchanged inputs (same stat identity): nothing is read, the blob is linked out.
        known = cache.lookup_stat(stat_key) if stat_key is not None else None
        if known is not None:
            hit = cache.fetch(_cache_key(known.diff_id, comp), layout)
            if hit is not None:
                stats = TarStats(
                    diff_id=known.diff_id,
                    size=known.tar_size,
                    entries=known.entries,
                    files=tuple(FileRecord(path=p, sha256=d, size=n) for p, d, n in known.files),
                )
                return _info(plan, comp, hit.digest, hit.size, stats, cached=True), stats
        # 2. Same content under another identity (a new checkout, a touched file): hash the tar
        #    first and skip compressing it. Pointless, and skipped, while the cache holds no layer.
        if cache.has_layers():
            first = write_tar(plan.entries, _NullSink(), mtime=mtime)
            key = _cache_key(first.diff_id, comp)
            hit = cache.fetch(key, layout)
            if hit is not None:
                _remember(cache, stat_key, first)
                return _info(plan, comp, hit.digest, hit.size, first, cached=True), first
    # 3. Write it: tar on this thread, compression and the blob's hash on a second one.
    with layout.blob_writer(durable=False) as blob:
        sink = BackgroundSink(comp.sink(blob, size=tar_size(plan.entries, mtime=mtime)))
        try:
            stats = write_tar(plan.entries, sink, mtime=mtime)
        except BaseException:
            sink.abort()
            raise
        sink.finish()
    if first is not None and first.diff_id != stats.diff_id:
        raise SourceError(
            f"the {plan.category} layer's inputs changed while the image was being built",
            hint="do not modify inputs during a build",
        )
    if cache is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs speed
            cache.store(
                _cache_key(stats.diff_id, comp),
                layout.blob_path(blob.digest),
                digest=blob.digest,
                size=blob.size,
            )
            _remember(cache, stat_key, stats)
    return _info(plan, comp, blob.digest, blob.size, stats, cached=False), stats


def _cache_key(diff_id: Digest, comp: Compressor) -> CacheKey:
    return CacheKey(
        diff_id=diff_id, compression=str(comp.compression), library=comp.library, level=comp.level
    )


def _remember(cache: BuildCache, stat_key: str | None, stats: TarStats) -> None:
    if stat_key is None:
        return
    with contextlib.suppress(OSError):
        cache.store_stat(
            stat_key,
            StatEntry(
                diff_id=stats.diff_id,
                tar_size=stats.size,
                entries=stats.entries,
                files=tuple((f.path, f.sha256, f.size) for f in stats.files),
            ),
        )


def _info(
    plan: LayerPlan, comp: Compressor, digest: Digest, size: int, stats: TarStats, *, cached: bool
) -> LayerInfo:
    return LayerInfo(
        digest=digest,
        diff_id=stats.diff_id,
        size=size,
        media_type=str(comp.media_type),
        files=plan.file_count,
        category=plan.category,
        cached=cached,
    )


def _install(layout_dir: Path, output: Path, *, fmt: OutputFormat, mtime: int, stage: Path) -> None:
    """Move the finished result to ``output`` (replacing what is there; ``force`` was checked)."""
    if fmt is OutputFormat.OCI:
        os.chmod(layout_dir, 0o755)  # noqa: S103 - a layout is meant to be readable, like mkdir's
        new = layout_dir
    else:
        new = stage / "archive.tar"
        with open(new, "wb") as fh:
            from builder.archive import write_layout_tar  # archives only: kept off the common path

            write_layout_tar(layout_dir, fh, mtime=mtime)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(new, 0o644)
    old: Path | None = None
    if output.exists() or output.is_symlink():
        old = stage / "previous"
        os.replace(output, old)
    try:
        os.replace(new, output)
    except OSError as exc:
        if old is not None:
            os.replace(old, output)
        raise BuildError(f"cannot write {output}: {exc.strerror}") from exc
