"""VM images on a host: check a VM image directory against its signed ``vm.json``; place a pulled one.

A VM artifact (``artifactType`` :attr:`MediaType.KILN_VM`) is pulled like any image by
:meth:`agent.store.ContentStore.pull_image` (every byte hashed against its descriptor). Its config
blob *is* ``vm.json`` (:class:`manifests.vm.VMConfig`), so once the release's signature over the
manifest digest verified, every digest in ``vm.json`` is signed too.

:func:`place_vm` is the VM's "unpack": ``ROOTS/<manifest-hex>/`` gets ``vm.json`` and every part
under its file name, copied out of the store and re-hashed while copying, with the same record
(``ROOTS/<hex>.json``: the root fingerprint) as an unpacked container root, so the agent's drift
check ("a part changed") and garbage collection treat both alike.

Every boot (the agent's qemu runtime and ``kiln boot``) checks the parts as it copies each into a
sealed memfd (:func:`sealed_parts`) and qemu boots those copies, so the bytes checked are the bytes
booted; :func:`check_vm_dir` runs the same checks on the files in place (when a placed image is
prepared for a release, :func:`prepared_vm`). Both check:

- every part's size and sha256 equal ``vm.json``'s (refusal ``reason="digest"``);
- the verity profile: the root hash on the kernel command line is the one ``vm.json`` signs, and it
  must be the hash of the tree's top block (``sha256(salt || block)``, dm-verity format 1; the top
  level is the first block after the superblock). For ``disk.raw`` the root-verity partition is
  found in the GPT by the partition UUID ``vm.json`` records. The kernel's dm-verity then checks
  every data block it reads against that tree and panics on a mismatch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from agent.errors import RuntimeFailure
from agent.rollout import Prepared, config_digest, health_spec_for
from agent.store import ContentStore, PulledImage
from agent.unpack import UnpackedRoot, remove_root, root_fingerprint
from manifests.atomic import atomic_write, fsync_dir
from manifests.bounded import JsonCaps, read_json_object
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError, ParseError, VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import OCIManifest
from manifests.release import Service
from manifests.vm import DiskLayout, PartName, VMConfig, VMPart
from manifests.vocabulary import Reason

__all__ = [
    "VM_FILE",
    "is_vm_manifest",
    "is_vm_image",
    "is_vm_config",
    "vm_config_of",
    "check_parts",
    "check_root_hash",
    "check_vm_dir",
    "sealed_parts",
    "place_vm",
    "prepared_vm",
]

VM_FILE = "vm.json"
_CHUNK = 1 << 20
_SECTOR = 512


def is_vm_manifest(manifest: OCIManifest) -> bool:
    return MediaType.KILN_VM in (manifest.artifact_type, manifest.config.media_type)


def is_vm_image(image: PulledImage) -> bool:
    return is_vm_manifest(image.manifest)


def is_vm_config(config: Mapping[str, Any]) -> bool:
    """A parsed config document that is a ``vm.json`` (what a runtime is handed)."""
    return config.get("mediaType") == MediaType.KILN_VM


def vm_config_of(config: Mapping[str, Any]) -> VMConfig:
    """The typed ``vm.json`` of a verified, parsed config document."""
    return VMConfig.from_dict(config)


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def check_parts(directory: Path, config: VMConfig) -> None:
    """Every part's bytes in ``directory`` hash to the digest (and size) ``vm.json`` signs."""
    for part in config.parts:
        path = Path(directory) / part.file
        try:
            got, size = _hash_file(path)
        except FileNotFoundError:
            raise VerificationError(
                f"{directory}: part {part.name} ({part.file}) is missing", reason=Reason.DIGEST
            ) from None
        if got != part.digest.hex or size != part.size:
            raise VerificationError(
                f"{path}: part {part.name} is sha256:{got} ({size} bytes); vm.json signs "
                f"{part.digest} ({part.size} bytes)",
                reason=Reason.DIGEST,
                hint="the part was altered: pull the image again",
            )


def _gpt_partition_start(fh: IO[bytes], want: str, what: str) -> int:
    """Byte offset of the GPT partition whose unique UUID is ``want``."""
    fh.seek(_SECTOR)
    header = fh.read(92)
    if len(header) < 92 or header[:8] != b"EFI PART":
        raise VerificationError(f"{what}: no GPT header", reason=Reason.DIGEST)
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if not 0 < count <= 1024 or not 128 <= entry_size <= 4096:
        raise VerificationError(f"{what}: implausible GPT partition table", reason=Reason.DIGEST)
    fh.seek(entries_lba * _SECTOR)
    table = fh.read(count * entry_size)
    for i in range(count):
        entry = table[i * entry_size : (i + 1) * entry_size]
        if len(entry) < 128:
            break
        if str(uuid.UUID(bytes_le=entry[16:32])) == want:
            (first,) = struct.unpack_from("<Q", entry, 32)
            return int(first) * _SECTOR
    raise VerificationError(f"{what}: no partition {want} (the root-verity partition)", reason=Reason.DIGEST)


def check_root_hash(directory: Path, config: VMConfig) -> None:
    """The root hash ``vm.json`` signs is the hash of the verity tree's top block."""
    if config.verity is None:
        return
    name = PartName.DISK if config.layout is DiskLayout.GPT else PartName.VERITY
    path = Path(directory) / name.file
    with open(path, "rb") as fh:
        _check_top_block(fh, config, str(path))


def _check_top_block(fh: IO[bytes], config: VMConfig, what: str) -> None:
    """``fh``: the GPT disk (layout ``gpt``) or the hash device (``parts``)."""
    v = config.verity
    if v is None:
        return
    start = 0
    if config.layout is DiskLayout.GPT:
        if v.verity_partition_uuid is None:
            raise VerificationError(f"{what}: vm.json names no root-verity partition", reason=Reason.DIGEST)
        start = _gpt_partition_start(fh, v.verity_partition_uuid, what)
    fh.seek(start + v.hash_block_size)  # block 0 is the superblock
    top = fh.read(v.hash_block_size)
    got = hashlib.sha256(bytes.fromhex(v.salt) + top).hexdigest()
    if len(top) != v.hash_block_size or got != v.root_hash:
        raise VerificationError(
            f"{what}: the verity tree's root is {got}, vm.json signs {v.root_hash}",
            reason=Reason.DIGEST,
            hint="the hash tree does not belong to this image",
        )


def check_vm_dir(directory: Path, config: VMConfig) -> None:
    """The boot's checks (module docstring) on the files in place, without sealing copies (a boot
    uses :func:`sealed_parts`); raises ``VerificationError``."""
    check_parts(directory, config)
    check_root_hash(directory, config)


_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def sealed_parts(directory: Path, config: VMConfig) -> dict[PartName, int]:
    """Every part copied into its own sealed memfd while it is hashed: the bytes checked are the
    bytes qemu boots (no time-of-check/time-of-use window: a part changed on disk after this, or
    while it is copied, cannot reach the guest). Checks as :func:`check_vm_dir`; returns the fds
    (close-on-exec; the caller passes them to qemu and closes them). ``VerificationError``
    (``digest``) on any difference, :class:`RuntimeFailure` when the host cannot make or fill a
    memfd (ENOMEM, EMFILE, a read error); nothing stays open then."""
    fds: dict[PartName, int] = {}
    try:
        for part in config.parts:
            fds[part.name] = _sealed_copy(Path(directory), part)
        name = PartName.DISK if config.layout is DiskLayout.GPT else PartName.VERITY
        if config.verity is not None:
            with os.fdopen(os.dup(fds[name]), "rb") as fh:
                _check_top_block(fh, config, f"{Path(directory) / name.file} (as booted)")
    except BaseException as exc:
        for fd in fds.values():
            os.close(fd)
        if isinstance(exc, OSError):  # memfd_create's ENOMEM/EMFILE, a read error: not the image's fault
            raise RuntimeFailure(
                f"{directory}: cannot copy the VM image's parts into sealed memory: {exc.strerror or exc}"
            ) from exc
        raise
    return fds


def _sealed_copy(directory: Path, part: VMPart) -> int:
    """A sealed memfd holding the part's bytes, once they hashed to the digest vm.json signs."""
    path = directory / part.file
    fd = os.memfd_create(f"kiln-{part.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        h = hashlib.sha256()
        n = 0
        with open(path, "rb") as src:
            while (block := src.read(_CHUNK)) and n <= part.size:
                h.update(block)
                n += len(block)
                _write_all(fd, block)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except FileNotFoundError:
        os.close(fd)
        raise VerificationError(
            f"{directory}: part {part.name} ({part.file}) is missing", reason=Reason.DIGEST
        ) from None
    except BaseException:
        os.close(fd)
        raise
    if h.hexdigest() != part.digest.hex or n != part.size:
        os.close(fd)
        raise VerificationError(
            f"{path}: part {part.name} is sha256:{h.hexdigest()} ({n} bytes) at boot; vm.json "
            f"signs {part.digest} ({part.size} bytes)",
            reason=Reason.DIGEST,
            hint="the part was altered: pull or build the image again (the agent places it again itself)",
        )
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- placing a pulled VM artifact -------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _copy_hashed(store: ContentStore, digest: Digest, size: int, dest: Path) -> None:
    h = hashlib.sha256()
    n = 0
    with store.open(digest) as src, open(dest, "xb") as out:
        while block := src.read(_CHUNK):
            h.update(block)
            n += len(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if h.hexdigest() != digest.hex or n != size:
        store.verify(digest, size=size)  # removes the altered blob from the store and raises
        raise VerificationError(f"stored blob {digest} changed while it was copied", reason=Reason.DIGEST)
    os.chmod(dest, 0o444)


def place_vm(store: ContentStore, image: PulledImage, roots_dir: Path) -> UnpackedRoot:
    """``ROOTS/<manifest-hex>/`` with ``vm.json`` and every part (once; see the module docstring)."""
    roots_dir = Path(roots_dir)
    roots_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    hexd = image.manifest_digest.hex
    final = roots_dir / hexd
    meta = roots_dir / f"{hexd}.json"
    if final.is_dir() and meta.is_file():
        try:
            doc = read_json_object(meta.read_bytes()[:4096], what=str(meta), caps=JsonCaps(max_depth=4))
        except ParseError as exc:  # bounded: a record nested deep raised RecursionError
            raise DocumentError(f"unreadable root record: {exc.message}") from None
        fingerprint = doc.get("fingerprint")
        if not isinstance(fingerprint, str):
            got = "missing" if "fingerprint" not in doc else "not a string"
            raise DocumentError(f"{meta}: unreadable root record: fingerprint: {got}")
        return UnpackedRoot(path=final, manifest_digest=image.manifest_digest, fingerprint=fingerprint)
    raw = store.read(image.config_digest)
    config = VMConfig.from_bytes(raw)
    layers = {(d.digest, d.size) for d in image.layers}
    for part in config.parts:
        if (part.digest, part.size) not in layers:
            raise VerificationError(
                f"VM image {image.digest}: vm.json's part {part.name} ({part.digest}) is not a layer "
                "of the artifact",
                reason=Reason.DIGEST,
            )
    tmp = roots_dir / f"{hexd}.tmp"
    _remove(tmp)
    _remove(final)
    tmp.mkdir(mode=0o755)
    try:
        (tmp / VM_FILE).write_bytes(raw)
        os.chmod(tmp / VM_FILE, 0o444)
        for part in config.parts:
            _copy_hashed(store, part.digest, part.size, tmp / part.file)
        check_root_hash(tmp, config)
        fingerprint = root_fingerprint(tmp)
        os.replace(tmp, final)
        atomic_write(
            meta, canonical_json({"manifest": str(image.manifest_digest), "fingerprint": fingerprint})
        )
        fsync_dir(roots_dir)
    except BaseException:
        _remove(tmp)
        raise
    return UnpackedRoot(path=final, manifest_digest=image.manifest_digest, fingerprint=fingerprint)


def prepared_vm(
    store: ContentStore, image: PulledImage, roots_dir: Path, *, service: Service, release: int, pin: Digest
) -> Prepared:
    """The :class:`agent.rollout.Prepared` of a VM service: its parts placed (:func:`place_vm`) and
    checked (a placed part that changed is placed again from the store, re-hashed; a store blob
    that changed is refused, ``digest``), the port and health from the release (first) or
    ``vm.json``."""
    from agent.qemu import guest_ports  # the runtime imports this module

    config = vm_config_of(image.config)
    root = place_vm(store, image, roots_dir)
    try:
        check_vm_dir(root.path, config)
    except VerificationError:  # a placed part changed on disk: place it again from the store
        remove_root(roots_dir, image.manifest_digest)
        root = place_vm(store, image, roots_dir)
    ports = guest_ports(config)
    port = ports[0] if ports else (service.health.check.port if service.health is not None else None)
    health, grace = health_spec_for(service, config.health)
    return Prepared(
        service=service,
        release=release,
        image_digest=pin,
        manifest_digest=image.manifest_digest,
        image_config=image.config,
        rootfs=root.path,
        fingerprint=root.fingerprint,
        port=port,
        health=health,
        grace=grace,
        config=config_digest(service, pin, image.manifest_digest, port),
    )
