"""``kiln build M --format vm``: the VM image directory.

The directory holds ``vm.json`` (:class:`manifests.vm.VMConfig`), ``kernel``, ``initrd`` and, for
the ``verity`` profile, ``disk.raw`` (default, :attr:`DiskLayout.GPT`) or ``rootfs.erofs`` and
``rootfs.verity`` (:attr:`DiskLayout.PARTS`). The same directory is also an OCI image layout
(``oci-layout``, ``index.json``, ``blobs/sha256``; the blobs are hard links to the part files):
one manifest with ``artifactType`` and config media type ``application/vnd.kiln.vm.v1+json``
(the config blob is ``vm.json``), one typed layer per part, tagged with the image version, so
``kiln sign``, ``publish``, ``copy`` and ``verify`` work on it unchanged.

Determinism: the tree is the one the OCI build assembles; every writer is pure Python and takes
its times from ``source_date_epoch``; the EROFS UUID comes from the tree digest, the verity salt
and superblock UUID from the EROFS image's digest, the GPT UUIDs from the root hash; the initrd
compressor's library, version and level are recorded in ``vm.json``.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from builder.attestations import timestamp
from builder.bytecode import ANNOTATION as BYTECODE_ANNOTATION
from builder.bytecode import bake
from builder.compress import Compressor
from builder.errors import BuildError, SourceError
from builder.imageconfig import DEFAULT_PATH, DEFAULT_USER
from builder.sources import assemble
from builder.tarwriter import FileRecord as BomFileRecord
from builder.tree import Category, Entry, EntryKind, FileTree
from builder.vm.cpio import write_cpio
from builder.vm.erofs import write_erofs
from builder.vm.gpt import ROOT_VERITY_X86_64, ROOT_X86_64, Partition, partition_uuids, write_gpt
from builder.vm.guest import MOUNT_POINTS, add_guest_tools
from builder.vm.modules import ENV_MODULES, kernel_release, select_modules, wanted_modules
from builder.vm.treedigest import tree_digest
from builder.vm.verity import build_verity, derive_salt, derive_uuid
from manifests.digest import Digest, sha256_file
from manifests.image import ImageManifest
from manifests.layout import OCILayout
from manifests.mediatypes import Compression, MediaType
from manifests.oci import Descriptor, OCIManifest
from manifests.vm import DiskLayout, PartName, VerityParams, VMConfig, VMImageConfig, VMPart, VMProfile

__all__ = ["BASE_CMDLINE", "INITRD_LEVEL", "VMBuildResult", "build_vm", "vm_image_config"]

Progress = Callable[[str], None]

# The spike: boots reliably and fast under TCG; the runner adds tsc_early_khz=<host kHz>.
BASE_CMDLINE = (
    "console=ttyS0",
    "quiet",
    "tsc=reliable",
    "cryptomgr.notests",
    "mitigations=off",
    "nokaslr",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.nopnp",
    "i8042.dumbkbd",
    "audit=0",
    "random.trust_cpu=on",
    "8250.nr_uarts=1",
    "panic=-1",
    "reboot=t",
    "rdinit=/kiln/init",
)
INITRD_LEVEL = 9  # zstd: the kernel decompresses it fast, and it builds at tens of MB/s


@dataclass(frozen=True, slots=True, kw_only=True)
class VMBuildResult:
    config: VMConfig
    digest: Digest  # the OCI manifest's
    output: Path
    size: int  # bytes of every part


def vm_image_config(m: ImageManifest) -> VMImageConfig:
    """What the guest init applies: the same run-time facts the OCI image config records."""
    env = dict(m.env)
    env.setdefault("PATH", DEFAULT_PATH)
    uid, gid = (m.accounts.uid, m.accounts.gid) if m.accounts else map(int, DEFAULT_USER.split(":"))
    return VMImageConfig(
        entrypoint=m.entrypoint,
        cmd=m.cmd,
        env=tuple(sorted(env.items())),
        workdir=m.workdir,
        uid=uid,
        gid=gid,
        writable=m.writable,
    )


def _host(m: ImageManifest, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else m.base_dir / p


def _version_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(x)) if x.isdigit() else (1, x) for x in re.split(r"(\d+)", path.name) if x)


def find_kernel(m: ImageManifest, pattern: str) -> Path:
    """``vm.kernel`` on this host: a path, or a glob (``/boot/vmlinuz-*-cloud-amd64``) whose newest
    match by version order is taken (the release it names is recorded in vm.json)."""
    if not glob.has_magic(pattern):
        return _host(m, pattern)
    found = sorted((Path(p) for p in glob.glob(str(_host(m, pattern)))), key=_version_key)
    if not found:
        raise SourceError(
            f"{m.source}: vm.kernel: nothing matches {pattern}",
            hint="install the kernel (e.g. Debian's linux-image-cloud-amd64) or name its path",
        )
    return found[-1]


def _copy_tree(entries: tuple[Entry, ...]) -> FileTree:
    tree = FileTree()
    for e in entries:
        tree.add(e)
    return tree


def _add_dirs(tree: FileTree, paths: tuple[str, ...]) -> None:
    for p in paths:
        if p not in tree:
            tree.add(
                Entry(
                    path=p,
                    kind=EntryKind.DIR,
                    mode=0o755,
                    origin="kiln vm mount point",
                    category=Category.SYSTEM,
                )
            )


def build_vm(
    manifest: ImageManifest,
    *,
    output: Path,
    source_date_epoch: int = 0,
    force: bool = False,
    progress: Progress | None = None,
    bytecode_cache: Path | None = None,
) -> VMBuildResult:
    """``kiln build M --format vm``: see the module docstring. ``bytecode_cache``: where compiled
    pycs are kept between builds (``python.bytecode``; :func:`builder.bytecode.add_bytecode`)."""
    say = progress or (lambda _msg: None)
    spec = manifest.vm
    if spec is None:
        raise BuildError(f"{manifest.source}: no vm: section", hint="add vm: {kernel: ..., modules: ...}")
    output = Path(output)
    if (output.exists() or output.is_symlink()) and not force:
        raise BuildError(f"{output} already exists", hint="pass --force to replace it")
    kernel = find_kernel(manifest, spec.kernel)
    release = kernel_release(kernel)
    verity = spec.profile is VMProfile.VERITY
    modules_dir = _host(manifest, spec.modules) if spec.modules else Path("/lib/modules") / release
    modules = select_modules(modules_dir, wanted_modules(verity=verity), release=release)
    env_modules = select_modules(modules_dir, ENV_MODULES, release=release)
    assembly = assemble(manifest)
    bytecode = bake(manifest, assembly.tree, cache_dir=bytecode_cache, say=say)
    entries = assembly.tree.entries()
    files = _file_records(entries)  # hashed once: for the tree digest and the SBOM
    tdigest = tree_digest(entries, {f.path: f.sha256 for f in files})
    cfg = vm_image_config(manifest)
    say(f"{manifest.name} {manifest.version}: {len(entries)} paths, {spec.profile} VM, kernel {release}")

    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.kiln-"))
    try:
        out = stage / "vm"
        out.mkdir()
        parts: list[VMPart] = []
        shutil.copyfile(kernel, out / PartName.KERNEL.file)
        parts.append(_part(out, PartName.KERNEL, MediaType.KILN_VM_KERNEL))

        verity_params: VerityParams | None = None
        layout: DiskLayout | None = None
        if verity:
            layout = spec.disk
            root_tree = _copy_tree(entries)
            _add_dirs(root_tree, (*MOUNT_POINTS, *cfg.writable))
            erofs_path = out / PartName.ROOTFS.file
            with open(erofs_path, "wb") as fh:
                size = write_erofs(
                    root_tree.entries(),
                    fh,
                    mtime=source_date_epoch,
                    uuid=derive_uuid(tdigest.hex.encode(), "erofs"),
                )
            erofs_digest, _ = sha256_file(str(erofs_path))
            seed = bytes.fromhex(erofs_digest.hex)
            with open(erofs_path, "rb") as fh:
                tree = build_verity(fh, size, salt=derive_salt(seed), uuid=derive_uuid(seed, "verity"))
            say(f"rootfs: EROFS {size} bytes, verity root hash {tree.root_hash.hex()}")
            root_uuid = verity_uuid = None
            if layout is DiskLayout.GPT:
                root_uuid, verity_uuid = partition_uuids(tree.root_hash)
                with open(erofs_path, "rb") as data, open(out / PartName.DISK.file, "wb") as disk:
                    write_gpt(
                        disk,
                        [
                            (
                                Partition(
                                    type_uuid=ROOT_X86_64, uuid=root_uuid, name="root-x86-64", size=size
                                ),
                                data,
                            ),
                            (
                                Partition(
                                    type_uuid=ROOT_VERITY_X86_64,
                                    uuid=verity_uuid,
                                    name="root-x86-64-verity",
                                    size=len(tree.hash_device),
                                ),
                                io.BytesIO(tree.hash_device),
                            ),
                        ],
                        disk_seed=tree.root_hash,
                    )
                erofs_path.unlink()
            else:
                (out / PartName.VERITY.file).write_bytes(tree.hash_device)
            verity_params = VerityParams(
                root_hash=tree.root_hash.hex(),
                salt=tree.salt.hex(),
                uuid=tree.uuid,
                data_blocks=tree.data_blocks,
                root_partition_uuid=root_uuid,
                verity_partition_uuid=verity_uuid,
            )
            initrd_tree = FileTree()
        else:
            initrd_tree = _copy_tree(entries)
            _add_dirs(initrd_tree, cfg.writable)
        add_guest_tools(initrd_tree, modules=modules, config=cfg, verity=verity, env_modules=env_modules)

        comp = Compressor.create(Compression.ZSTD, INITRD_LEVEL)
        with open(out / PartName.INITRD.file, "wb") as fh:
            frame = _OneZstdFrame(fh, INITRD_LEVEL)
            write_cpio(initrd_tree.entries(), frame, mtime=source_date_epoch)
            frame.finish()
        # One zstd frame, not the layers' block scheme: Linux's initramfs reader takes a single frame
        # (a second one is "junk at the end of compressed archive").
        tag = f"{comp.library}/zstd-{INITRD_LEVEL}"
        parts.append(_part(out, PartName.INITRD, MediaType.KILN_VM_INITRD_ZSTD, compression=tag))
        if verity:
            if layout is DiskLayout.GPT:
                parts.append(_part(out, PartName.DISK, MediaType.KILN_VM_DISK))
            else:
                parts.append(_part(out, PartName.ROOTFS, MediaType.KILN_VM_ROOTFS))
                parts.append(_part(out, PartName.VERITY, MediaType.KILN_VM_VERITY))

        config = VMConfig(
            name=manifest.name,
            version=manifest.version,
            profile=spec.profile,
            layout=layout,
            architecture=manifest.platform.architecture,
            kernel_release=release,
            parts=tuple(parts),
            verity=verity_params,
            cmdline=(*BASE_CMDLINE, *spec.cmdline),
            memory_mib=spec.memory_mib,
            cpus=spec.cpus,
            ports=tuple(str(p) for p in manifest.ports),
            health=manifest.health,
            config=cfg,
            tree_digest=tdigest,
            modules=modules.names,
            bytecode=bytecode,
        )
        vm_bytes = config.to_bytes()
        (out / "vm.json").write_bytes(vm_bytes)
        digest = _write_layout(
            out,
            config,
            vm_bytes,
            records=lambda d: vm_records(
                manifest,
                entries,
                files,
                d,
                guest=(kernel, *(m.path for m in (*modules.modules, *env_modules.modules))),
                source_date_epoch=source_date_epoch,
            ),
            created=timestamp(source_date_epoch),
        )
        for p in out.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(out, 0o755)  # noqa: S103 - an image directory is meant to be readable
        _install(out, output, stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    total = sum(p.size for p in config.parts)
    say(f"{manifest.name} {manifest.version}: VM {digest} ({total} bytes) -> {output}")
    return VMBuildResult(config=config, digest=digest, output=output, size=total)


class _OneZstdFrame:
    """A sink that writes everything it is given as one zstd frame (checksummed) into ``out``."""

    def __init__(self, out: BinaryIO, level: int) -> None:
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True, threads=0)
        self._obj = cctx.compressobj()
        self._out = out

    def write(self, data: bytes, /) -> None:
        chunk = self._obj.compress(data)
        if chunk:
            self._out.write(chunk)

    def finish(self) -> None:
        self._out.write(self._obj.flush())


def _part(out: Path, name: PartName, media_type: MediaType, *, compression: str | None = None) -> VMPart:
    digest, size = sha256_file(str(out / name.file))
    return VMPart(name=name, media_type=media_type, digest=digest, size=size, compression=compression)


def _file_records(entries: tuple[Entry, ...]) -> list[BomFileRecord]:
    """sha256, sha1 and size of every regular file (and hard link to one) of the tree."""
    records: dict[str, BomFileRecord] = {}
    for e in entries:
        if e.kind is EntryKind.FILE:
            sha256, sha1 = hashlib.sha256(), hashlib.sha1()  # noqa: S324 - SPDX 2.3 requires SHA1
            if e.data is not None:
                sha256.update(e.data)
                sha1.update(e.data)
            else:
                with open(str(e.host_path), "rb") as fh:
                    while block := fh.read(1 << 20):
                        sha256.update(block)
                        sha1.update(block)
            records[e.path] = BomFileRecord(
                path=e.path, sha256=Digest(sha256.hexdigest()), size=e.size, sha1=sha1.hexdigest()
            )
        elif e.kind is EntryKind.HARDLINK and e.target in records:
            records[e.path] = dataclasses.replace(records[e.target], path=e.path)
    return list(records.values())


def vm_records(
    manifest: ImageManifest,
    entries: tuple[Entry, ...],
    files: list[BomFileRecord],
    digest: Digest,
    *,
    guest: tuple[Path, ...],
    source_date_epoch: int,
) -> tuple[bytes, bytes]:
    """The VM image's SBOM (the tree: the same files as its OCI image's SBOM) and SLSA provenance
    (the tree's host inputs, plus the kernel and the module files the guest boots with)."""
    from builder.attestations import Input
    from builder.bom import OwnerLookup, collect_inputs, write_attestations
    from builder.build import image_reference

    inputs = list(collect_inputs(manifest, entries, files, OwnerLookup()))
    for path in guest:
        inputs.append(Input(kind="file", uri=path.as_posix(), sha256=sha256_file(str(path))[0].hex))
    sbom, provenance = io.BytesIO(), io.BytesIO()
    write_attestations(
        manifest,
        sbom,
        provenance,
        image_digest=digest,
        files=files,
        inputs=inputs,
        source_date_epoch=source_date_epoch,
        reference=image_reference(manifest.name, manifest.version),
    )
    return sbom.getvalue(), provenance.getvalue()


def _write_layout(
    out: Path,
    config: VMConfig,
    vm_bytes: bytes,
    *,
    records: Callable[[Digest], tuple[bytes, bytes]] | None = None,
    created: str = "1970-01-01T00:00:00Z",
) -> Digest:
    layout = OCILayout.create(out / ".layout")
    config_digest = layout.write_blob(vm_bytes)
    for p in config.parts:
        layout.link_blob(out / p.file, p.digest, size=p.size)
    manifest = OCIManifest(
        config=Descriptor(media_type=MediaType.KILN_VM, digest=config_digest, size=len(vm_bytes)),
        layers=tuple(
            Descriptor(
                media_type=str(p.media_type),
                digest=p.digest,
                size=p.size,
                annotations={"org.opencontainers.image.title": p.file},
            )
            for p in config.parts
        ),
        artifact_type=str(MediaType.KILN_VM),
        annotations={
            "org.opencontainers.image.title": config.name,
            "org.opencontainers.image.version": config.version,
            "dev.kiln.tree": str(config.tree_digest),
            **({BYTECODE_ANNOTATION: config.bytecode} if config.bytecode else {}),
        },
    )
    data = manifest.to_bytes()
    digest = layout.write_blob(data)
    layout.tag(
        Descriptor(
            media_type=MediaType.OCI_MANIFEST,
            digest=digest,
            size=len(data),
            artifact_type=str(MediaType.KILN_VM),
        ),
        config.version,
    )
    if records is not None:
        # The build records, as for an OCI image (ADR 0018): artifacts whose subject is the VM
        # image, listed untagged in index.json; `kiln attest` signs them, `kiln publish` pushes them.
        from builder.build import PROVENANCE_ARTIFACT_TYPE, SBOM_ARTIFACT_TYPE, record_artifact

        sbom, provenance = records(digest)
        subject = Descriptor(media_type=MediaType.OCI_MANIFEST, digest=digest, size=len(data))
        referrers = [
            record_artifact(layout, subject, blob, kind, created=created)
            for blob, kind in ((sbom, SBOM_ARTIFACT_TYPE), (provenance, PROVENANCE_ARTIFACT_TYPE))
        ]
        layout.add_referrers(referrers, digest)
    for name in ("oci-layout", "index.json", "blobs"):
        os.replace(out / ".layout" / name, out / name)
    (out / ".layout").rmdir()
    return digest


def _install(new: Path, output: Path, stage: Path) -> None:
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
