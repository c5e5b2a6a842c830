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
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from builder.attestations import SbomPackage, timestamp
from builder.bytecode import ANNOTATION as BYTECODE_ANNOTATION
from builder.bytecode import bake
from builder.cache import BuildCache, CacheKey, StatEntry
from builder.compress import ANNOTATION, Compressor
from builder.errors import BuildError, SourceError
from builder.imageconfig import image_config, manifest_annotations
from builder.layers import LayerPlan, plan_layers
from builder.sources import Assembly, InputRecord, assemble
from builder.tarwriter import FileRecord, Sink, TarStats, check_epoch, tar_size, write_tar
from builder.tree import EntryKind
from builder.vm.treedigest import ANNOTATION as TREE_ANNOTATION
from builder.vm.treedigest import tree_digest
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import KilnError
from manifests.image import DEBIAN_SYSROOT, ClosureSource, FilesSource, ImageManifest, TreeSource
from manifests.layout import REF_NAME, OCILayout
from manifests.mediatypes import Compression, MediaType
from manifests.oci import Descriptor, OCIManifest
from manifests.version import VERSION

if TYPE_CHECKING:
    from builder.debian.prepare import PreparedDebian

__all__ = [
    "OutputFormat",
    "LayerInfo",
    "BuildResult",
    "build_image",
    "docker_repo_tag",
    "image_reference",
    "name_annotations",
    "CONTAINERD_NAME",
    "SBOM_ARTIFACT_TYPE",
    "PROVENANCE_ARTIFACT_TYPE",
    "RECORD_ARTIFACT_TYPES",
    "record_artifact",
]

Progress = Callable[[str], None]
# A live view of bytes written: (key, description, bytes done, bytes in all); see kiln.progress.
Meter = Callable[[str, str, int, int], None]


# The image's name in an index entry, as Docker 25+ writes it: containerd (ctr, nerdctl) and podman
# read it on import; the full reference also goes into ref.name.
CONTAINERD_NAME = "io.containerd.image.name"

# The unsigned build records, stored as OCI 1.1 artifacts whose ``subject`` is the image and listed
# (untagged) in index.json: reachable, so `umoci gc` keeps them, found through the referrers of the
# image, and pushed as referrers by `kiln publish` (ADR 0018). `kiln attest` signs them.
SBOM_ARTIFACT_TYPE = str(MediaType.SPDX_JSON)
PROVENANCE_ARTIFACT_TYPE = str(MediaType.IN_TOTO)
RECORD_ARTIFACT_TYPES = (SBOM_ARTIFACT_TYPE, PROVENANCE_ARTIFACT_TYPE)
_EMPTY_CONFIG = b"{}"


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


class _MeteredSink:
    """Counts the tar bytes on their way to the compressor, for a live view (every 1 MiB)."""

    def __init__(self, inner: Sink, meter: Meter, key: str, label: str, total: int) -> None:
        self._inner = inner
        self._meter = meter
        self._key, self._label, self._total = key, label, total
        self._done = 0
        self._shown = 0

    def write(self, data: bytes, /) -> None:
        self._inner.write(data)
        self._done += len(data)
        if self._done - self._shown >= 1 << 20:
            self._shown = self._done
            self._meter(self._key, self._label, self._done, self._total)


class _NullSink:
    def write(self, data: bytes, /) -> None:
        return None


def docker_repo_tag(name: str, version: str) -> str:
    """``name:version`` made acceptable to Docker (lowercase name, tag of ``[A-Za-z0-9_.-]``)."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", version)[:128] or "latest"
    return f"{name.lower()}:{tag}"


_REFERENCE = re.compile(
    r"^(?P<name>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$"
)


def image_reference(name: str, version: str, override: str | None = None) -> str:
    """The image's full reference ``NAME:TAG`` written into archives and layouts.

    ``override`` (``kiln build --name``) replaces it; it must be ``NAME:TAG`` in Docker's grammar
    (a registry host with a port is allowed in the name, ``[A-Z]`` only in the tag).
    """
    if override is None:
        return docker_repo_tag(name, version)
    if _REFERENCE.match(override) is None:
        raise BuildError(
            f"--name {override!r} is not a NAME:TAG image reference",
            hint="e.g. registry.example:5000/team/app:1.2.0 (lowercase name, then a tag)",
        )
    return override


def name_annotations(reference: str) -> dict[str, str]:
    """The index-entry annotations that name an image as Docker 25+ does."""
    return {CONTAINERD_NAME: reference, REF_NAME: reference}


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
    name: str | None = None,
    meter: Meter | None = None,
    sbom_packages: Sequence[SbomPackage] = (),
) -> BuildResult:
    """Build ``manifest`` into ``output``; see the module docstring for the guarantees.

    ``debian``: the extracted packages of the manifest's ``debian`` source, from its lock
    (:func:`builder.debian.prepare.prepare`). The image is named ``name`` (a full ``NAME:TAG``
    reference) or, by default, the manifest's ``name:version``, in ``index.json`` and in a
    docker-archive's ``RepoTags``. ``sbom_packages`` are packages the SBOM lists beside those dpkg
    names (the hook for locked Debian packages).
    """
    fmt = OutputFormat(fmt)
    reference = image_reference(manifest.name, manifest.version, name)
    mtime = check_epoch(source_date_epoch)
    say = progress or (lambda _msg: None)
    if Path(output).name in ("", ".", ".."):  # "", ".", "/", "x/..": nothing to replace but a parent
        raise BuildError(
            f"output path {str(output)!r} names no file or directory", hint="give -o DIR or -o FILE"
        )
    output = Path(output)
    if (output.exists() or output.is_symlink()) and not force:
        raise BuildError(f"{output} already exists", hint="pass --force to replace it")
    _check_output_spares_inputs(output, manifest)
    if fmt is OutputFormat.DOCKER_ARCHIVE:
        comp = Compressor.create(Compression.NONE)
    else:
        comp = Compressor.create(manifest.compression, manifest.compression_level)
    if comp.compression is Compression.NONE:
        cache = None  # nothing to save: the tar is re-streamed faster than it is copied

    assembly = assemble(manifest, debian=debian)
    _check_machines(assembly, manifest)
    bytecode = bake(manifest, assembly.tree, cache_dir=cache.root / "bytecode" if cache else None, say=say)
    plans = plan_layers(assembly.tree.entries(), manifest.layers)
    say(f"{manifest.name} {manifest.version}: {len(assembly.tree)} paths in {len(plans)} layers")
    stat_keys: list[str | None] = [None] * len(plans)
    build_key = None
    if cache is not None:
        stat_keys, build_key = _cache_keys(
            manifest, plans, fmt=fmt, comp=comp, mtime=mtime, reference=reference, sbom_packages=sbom_packages
        )

    try:  # the staging directory is kiln's own: a failure to make it is the output's to name
        output.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.kiln-"))
    except OSError as exc:
        raise BuildError(f"cannot write {output}: {exc.strerror or exc}") from exc
    try:
        layout = OCILayout.create(stage / "layout")
        built = None
        if cache is not None and build_key is not None:
            built = _reuse_build(cache, build_key, layout, reference)
        if built is None:
            _prewarm_record_libraries()
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
                reference=reference,
                meter=meter,
                sbom_packages=sbom_packages,
                bytecode=bytecode,
            )
            if cache is not None and build_key is not None:
                _remember_build(cache, build_key, layout, built)
        else:
            say("unchanged since the last build: its result is reused from the cache")
        if fmt is not OutputFormat.OCI:
            _drop_referrers(layout, built)
        if fmt is OutputFormat.DOCKER_ARCHIVE:
            from builder.archive import docker_manifest  # archives only: kept off the common path

            (layout.root / "manifest.json").write_bytes(
                docker_manifest(
                    config=built.config_digest,
                    layers=[layer.digest for layer in built.layers],
                    repo_tag=reference,
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


def _own_inputs(manifest: ImageManifest) -> list[tuple[str, Path]]:
    """The host paths a build reads that the user owns: the manifest (and its Debian lockfile)
    and each content source, as (where the manifest names it, path)."""
    found: list[tuple[str, Path]] = []
    if manifest.source != "<memory>":
        path = Path(manifest.source)
        found += [("the manifest", path), ("its lockfile", path.with_suffix(".lock"))]
    for i, item in enumerate(manifest.contents):
        if isinstance(item, TreeSource) and item.sysroot is None:
            found.append((f"contents[{i}].tree.src", manifest.base_dir / item.src))
        elif isinstance(item, FilesSource):
            for j, spec in enumerate(item.files):
                found.append((f"contents[{i}].files[{j}].src", manifest.base_dir / spec.src))
        elif isinstance(item, ClosureSource) and item.sysroot not in {DEBIAN_SYSROOT, "/"}:
            found.append((f"contents[{i}].closure.sysroot", manifest.base_dir / item.sysroot))
    return found


def _check_output_spares_inputs(output: Path, manifest: ImageManifest) -> None:
    """Refuse an output that is, or holds, the manifest or a source: ``--force`` replaces the
    output whole, and the build's own inputs would be deleted with it."""
    out = os.path.realpath(output)
    inside = os.path.join(out, "")
    for where, path in _own_inputs(manifest):
        if not os.path.lexists(path):
            continue
        real = os.path.realpath(path)
        if real == out or real.startswith(inside):
            relation = "is" if real == out else "holds"
            raise BuildError(
                f"{output} {relation} {where} ({path}): writing the image there would delete it",
                hint="write the image to a path outside the manifest's sources (e.g. -o out/NAME)",
            )


def _cache_keys(
    manifest: ImageManifest,
    plans: Sequence[LayerPlan],
    *,
    fmt: OutputFormat,
    comp: Compressor,
    mtime: int,
    reference: str,
    sbom_packages: Sequence[SbomPackage],
) -> tuple[list[str | None], str | None]:
    """What identifies this build in the cache: each layer's stat key, and the whole build's key
    over them, the output's name, the SBOM's extra packages and dpkg's state (the SBOM names each
    file's Debian owner, so dpkg's state is an input too). A build key of None: not cacheable."""
    stat_keys: list[str | None] = [_stat_key(plan, comp, mtime) for plan in plans]
    extra: list[object] = [
        reference,
        [[p.name, p.version, p.purl, p.download_location, p.sha256] for p in sbom_packages],
        _dpkg_identity(manifest),
    ]
    return stat_keys, _build_key(manifest, fmt, comp, mtime, stat_keys, extra=extra)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Built:
    """What a build put in its layout, apart from the layers' bytes."""

    digest: Digest
    config_digest: Digest
    size: int
    layers: tuple[LayerInfo, ...]
    files: tuple[FileRecord, ...]
    index_entry: Descriptor
    referrers: tuple[Descriptor, ...]  # the build records (SBOM, provenance) as artifacts


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
    reference: str,
    meter: Meter | None = None,
    sbom_packages: Sequence[SbomPackage] = (),
    bytecode: str | None = None,
) -> _Built:
    results = _write_layers(
        plans, stat_keys, layout=layout, comp=comp, cache=cache, mtime=mtime, say=say, meter=meter
    )
    layers = tuple(r[0] for r in results)
    config = image_config(
        manifest,
        diff_ids=[layer.diff_id for layer in layers],
        layer_labels=[layer.category for layer in layers],
        source_date_epoch=mtime,
    )
    config_bytes = config.to_bytes()
    config_digest = layout.write_blob(config_bytes)
    files = tuple(sorted((f for r in results for f in r[1].files), key=lambda f: f.path))
    # The tree's own digest, equal to vm.json's treeDigest for a VM image of the same manifest.
    tree = tree_digest(assembly.tree.entries(), {f.path: f.sha256 for f in files})
    annotations = manifest_annotations(manifest, source_date_epoch=mtime, compression=comp.tag)
    annotations[TREE_ANNOTATION] = str(tree)
    if bytecode is not None:
        annotations[BYTECODE_ANNOTATION] = bytecode
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
        annotations=annotations,
    )
    manifest_bytes = oci_manifest.to_bytes()
    digest = layout.write_blob(manifest_bytes)
    subject = Descriptor(media_type=MediaType.OCI_MANIFEST, digest=digest, size=len(manifest_bytes))
    records = _write_records(
        manifest,
        assembly,
        files,
        layout=layout,
        image_digest=digest,
        mtime=mtime,
        debian=debian,
        reference=reference,
        sbom_packages=sbom_packages,
    )
    entry = Descriptor(
        media_type=MediaType.OCI_MANIFEST,
        digest=digest,
        size=len(manifest_bytes),
        platform=manifest.platform,
    )
    referrers = tuple(
        _record_manifest(layout, subject, blob, artifact_type, created=timestamp(mtime))
        for blob, artifact_type in zip(records, (SBOM_ARTIFACT_TYPE, PROVENANCE_ARTIFACT_TYPE), strict=True)
    )
    layout.add_referrers(referrers, digest)
    _tag_named(layout, entry, reference)
    return _Built(
        digest=digest,
        config_digest=config_digest,
        size=len(manifest_bytes) + len(config_bytes) + sum(layer.size for layer in layers),
        layers=layers,
        files=files,
        index_entry=entry,
        referrers=referrers,
    )


def _write_records(
    manifest: ImageManifest,
    assembly: Assembly,
    files: tuple[FileRecord, ...],
    *,
    layout: OCILayout,
    image_digest: Digest,
    mtime: int,
    debian: PreparedDebian | None,
    reference: str,
    sbom_packages: Sequence[SbomPackage],
) -> tuple[Descriptor, Descriptor]:
    """The SBOM and the provenance as blobs of ``layout``: streamed straight into their blobs
    (ADR 0024), or, with Debian packages to add, made in memory and amended first."""
    # The records' machinery is loaded by builds that write layers only, not by unchanged rebuilds.
    from builder.bom import OwnerLookup, collect_inputs, write_attestations

    inputs = collect_inputs(
        manifest,
        assembly.tree.entries(),
        files,
        OwnerLookup(),  # dpkg's lists indexed once per machine (builder.dpkg)
    )

    def write(sbom: Sink, provenance: Sink) -> None:
        write_attestations(
            manifest,
            sbom,
            provenance,
            image_digest=image_digest,
            files=files,
            inputs=inputs,
            source_date_epoch=mtime,
            reference=reference,
            packages=sbom_packages,
        )

    if debian is None:
        # Not fsynced, like the layers: the staging layout is renamed into place when complete.
        with layout.blob_writer(durable=False) as sbom, layout.blob_writer(durable=False) as provenance:
            write(sbom, provenance)
        return _blob(SBOM_ARTIFACT_TYPE, sbom.digest, sbom.size), _blob(
            PROVENANCE_ARTIFACT_TYPE, provenance.digest, provenance.size
        )
    import io

    from builder.debian.sbom import add_debian_packages

    sbom_io, provenance_io = io.BytesIO(), io.BytesIO()
    write(sbom_io, provenance_io)
    sbom_bytes, provenance_bytes = add_debian_packages(
        sbom_io.getvalue(), provenance_io.getvalue(), debian, manifest.platform, assembly.tree.entries()
    )
    return (
        _blob(SBOM_ARTIFACT_TYPE, layout.write_blob(sbom_bytes), len(sbom_bytes)),
        _blob(PROVENANCE_ARTIFACT_TYPE, layout.write_blob(provenance_bytes), len(provenance_bytes)),
    )


def _blob(media_type: str, digest: Digest, size: int) -> Descriptor:
    return Descriptor(media_type=media_type, digest=digest, size=size)


def _check_machines(assembly: Assembly, manifest: ImageManifest) -> None:
    """Every ELF file must run on the image's platform (named when one does not)."""
    from builder.elf import check_platform_machines

    files = (
        (e.path, e.host_path)
        for e in assembly.tree.entries()
        if e.kind is EntryKind.FILE and e.host_path is not None and e.size >= 20
    )
    check_platform_machines(files, manifest.platform.architecture)


def record_artifact(
    layout: OCILayout, subject: Descriptor, data: bytes, artifact_type: str, *, created: str
) -> Descriptor:
    """Store ``data`` as an OCI 1.1 artifact about ``subject``; returns its index descriptor.

    The manifest is an image manifest with ``artifactType``, the empty config, one layer holding
    the bytes, and ``subject``: what the image-spec recommends, what registries without artifact
    support still accept, and what `oras discover`/`cosign tree` list.
    """
    blob = _blob(artifact_type, layout.write_blob(data), len(data))
    return _record_manifest(layout, subject, blob, artifact_type, created=created)


def _record_manifest(
    layout: OCILayout, subject: Descriptor, blob: Descriptor, artifact_type: str, *, created: str
) -> Descriptor:
    """The artifact manifest of :func:`record_artifact` for a blob already in ``layout``."""
    empty = layout.write_blob(_EMPTY_CONFIG)
    man = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_EMPTY, digest=empty, size=len(_EMPTY_CONFIG)),
        layers=(blob,),
        subject=subject,
        artifact_type=artifact_type,
        annotations={"org.opencontainers.image.created": created},
    )
    raw = man.to_bytes()
    return Descriptor(
        media_type=MediaType.OCI_MANIFEST,
        digest=layout.write_blob(raw),
        size=len(raw),
        artifact_type=artifact_type,
        annotations={"org.opencontainers.image.created": created},
    )


_RECORD_LIBRARIES = (
    "google.protobuf.json_format",
    "in_toto_attestation.v1.statement",
    "in_toto_attestation.predicates.provenance.v1.provenance_pb2",
    "in_toto_attestation.v1.resource_descriptor_pb2",
)


def _prewarm_record_libraries() -> None:
    """Import the provenance's libraries on a side thread while the layers are written.

    Loading in-toto-attestation (protobuf) is tens of ms of Python work (the SBOM no longer loads
    spdx-tools: builder.records writes it); the layers' compressors and hashes release the GIL,
    so on a second core that time is hidden behind them. The records are made after the layers;
    their imports then find the modules loaded (or wait for the import in progress). A failure
    here is ignored: the import where the records are made reports it."""
    import importlib
    import threading

    def load() -> None:
        for name in _RECORD_LIBRARIES:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    threading.Thread(target=load, name="kiln-prewarm", daemon=True).start()


def _build_key(
    manifest: ImageManifest,
    fmt: OutputFormat,
    comp: Compressor,
    mtime: int,
    stat_keys: list[str | None],
    *,
    extra: list[object],
) -> str | None:
    """Everything that decides a build's output: the manifest as written, every layer's inputs (by
    stat identity), the format, compressor, timestamp and kiln's version, and what the records
    say beyond the manifest (the image's reference, extra SBOM packages). ``None``: not cacheable."""
    if not all(stat_keys):
        return None
    try:
        manifest_bytes = Path(manifest.source).read_bytes()
    except OSError:
        return None  # a manifest that is not a file (built in memory): nothing stable to key on
    material = [
        VERSION,
        hashlib.sha256(manifest_bytes).hexdigest(),
        str(fmt),
        comp.tag,
        mtime,
        stat_keys,
        extra,
    ]
    if manifest.platforms:  # one manifest, several platforms: each build is its own
        material.append(str(manifest.platform))
    return hashlib.sha256(canonical_json(material)).hexdigest()


def _dpkg_identity(manifest: ImageManifest) -> list[list[object]]:
    """The stat identity of what the SBOM's owner lookup reads (:class:`builder.dpkg.OwnerIndex`) in
    every sysroot it may ask: dpkg's ``status`` file, which dpkg rewrites on every install or
    removal, and the ``info`` directory, whose identity changes when a ``.list`` file is added,
    removed or replaced (dpkg writes them by rename). Each path is also reported as a
    ``kiln.input`` so the warm-run record (:mod:`kiln.buildrecord`) watches it even when this build
    was itself reused from the cache and never read dpkg's files."""
    sysroots = {"/"}  # tree sources are looked up in the host's dpkg (builder.bom.collect_inputs)
    for item in manifest.contents:
        if isinstance(item, ClosureSource) and item.sysroot != DEBIAN_SYSROOT:
            sysroots.add(item.sysroot)
    identity: list[list[object]] = []
    for root in sorted({os.path.realpath(r) for r in sysroots}):
        for rel in ("var/lib/dpkg/status", "var/lib/dpkg/info"):
            path = os.path.join(root, rel)
            sys.audit("kiln.input", path, True)
            try:
                st = os.stat(path)
            except OSError:
                identity.append([path, None])
            else:
                ident = [st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
                identity.append([path, *ident])
    return identity


def _remember_build(cache: BuildCache, build_key: str, layout: OCILayout, built: _Built) -> None:
    """Keep the small blobs and the record of a finished build (a cache that cannot be written
    only costs time)."""
    entry = built.index_entry
    small = [built.config_digest, built.digest]
    for ref in built.referrers:
        small.append(ref.digest)
        small += [d.digest for d in _artifact_blobs(layout, ref)]
    record = {
        "index_entry": entry.to_dict(),
        "referrers": [r.to_dict() for r in built.referrers],
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
    }
    with contextlib.suppress(OSError, KilnError):
        for d in small:  # verified as written; copied, not read into memory
            path = layout.blob_path(d)
            cache.store_blob_file(path, digest=d, size=path.stat().st_size, link=False)
        cache.store_build(build_key, record, files=built.files)


def _reuse_build(cache: BuildCache, build_key: str, layout: OCILayout, reference: str) -> _Built | None:
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
        referrers = tuple(Descriptor.from_dict(r) for r in record["referrers"])
        files = tuple(
            FileRecord(path=p, sha256=Digest.parse(h), size=int(n), sha1=str(s1))
            for p, h, n, s1 in record["files"]
        )
        built = _Built(
            digest=entry.digest,
            config_digest=Digest.parse(record["config"]),
            size=int(record["size"]),
            layers=layers,
            files=files,
            index_entry=entry,
            referrers=referrers,
        )
    except (OSError, KilnError, KeyError, TypeError, ValueError):
        cache.forget_build(build_key)
        return None
    layout.add_referrers(built.referrers, built.digest)
    _tag_named(layout, built.index_entry, reference)
    return built


def _drop_referrers(layout: OCILayout, built: _Built) -> None:
    """An archive is for engines: ``podman load`` refuses an oci-archive whose index lists more
    than one manifest, so archives carry the image alone (the records stay in the cache and in
    the ``oci`` format, ADR 0018)."""
    keep = {built.digest, built.config_digest, *(layer.digest for layer in built.layers)}
    for ref in built.referrers:
        for d in (ref, *_artifact_blobs(layout, ref)):
            if d.digest not in keep:
                with contextlib.suppress(FileNotFoundError):
                    layout.blob_path(d.digest).unlink()
    index = layout.index()
    fallback = f"sha256-{built.digest.hex}"
    for d in index.manifests:
        if d.annotations.get(REF_NAME) == fallback:
            with contextlib.suppress(FileNotFoundError):
                layout.blob_path(d.digest).unlink()
    kept = tuple(
        d for d in index.manifests if d.artifact_type is None and d.annotations.get(REF_NAME) != fallback
    )
    layout.write_index(replace(index, manifests=kept, raw=None))


def _artifact_blobs(layout: OCILayout, ref: Descriptor) -> tuple[Descriptor, ...]:
    man = OCIManifest.from_bytes(layout.read_blob(ref.digest))
    return (man.config, *man.layers)


def _tag_named(layout: OCILayout, entry: Descriptor, reference: str) -> None:
    ann = {k: v for k, v in entry.annotations.items() if k not in (CONTAINERD_NAME, REF_NAME)}
    ann.update(name_annotations(reference))
    layout.tag(replace(entry, annotations=MappingProxyType(ann)), reference)


def _write_layers(
    plans: tuple[LayerPlan, ...],
    stat_keys: list[str | None],
    *,
    layout: OCILayout,
    comp: Compressor,
    cache: BuildCache | None,
    mtime: int,
    say: Progress,
    meter: Meter | None = None,
) -> list[tuple[LayerInfo, TarStats]]:
    def one(item: tuple[LayerPlan, str | None]) -> tuple[LayerInfo, TarStats]:
        return _write_layer(item[0], item[1], layout=layout, comp=comp, cache=cache, mtime=mtime, meter=meter)

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
    meter: Meter | None = None,
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
                    files=tuple(known.files),
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
    # 3. Write it: the tar framed on this thread, fixed blocks compressed on every core, the tar
    #    and the blob hashed and the blob written on one more (builder.compress).
    with layout.blob_writer(durable=False) as blob:
        sink = comp.sink(blob, hash_input=True, big_buffers=_big_files(plan))
        try:
            if meter is None:
                stats = write_tar(plan.entries, sink, mtime=mtime, finish_hashed=sink.finish_hashed)
            else:  # a live view needs the total: one more pass over the headers, on a terminal only
                total = tar_size(plan.entries, mtime=mtime)
                label = f"layer {plan.category}: {plan.file_count} files"
                bar = f"layer-{id(plan)}"
                metered = _MeteredSink(sink, meter, bar, label, total)
                stats = write_tar(plan.entries, metered, mtime=mtime, finish_hashed=sink.finish_hashed)
                meter(bar, label, total, total)
        except BaseException:
            sink.abort()
            raise
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


def _big_files(plan: LayerPlan) -> bool:
    """Whether a layer is mostly big files (at least 64 MiB, 256 KiB a file on average): the
    compressor then tunes the allocator for the 1 MiB chunks it churns through. Not for many small
    files, where the memory a tuned allocator keeps would only add to the per-file records."""
    size, count = plan.size, plan.file_count
    return size >= 64 << 20 and size >= count * (256 << 10)


def _cache_key(diff_id: Digest, comp: Compressor) -> CacheKey:
    return CacheKey(
        diff_id=diff_id,
        compression=str(comp.compression),
        library=f"{comp.library}/{comp.scheme}",  # a new block scheme must not reuse old blobs
        level=comp.level,
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
                files=stats.files,
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
