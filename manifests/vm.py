"""``vm.json``: kiln's VM image config, the one contract between the VM builder and its runners.

A VM image directory (``kiln build M --format vm``) holds ``vm.json`` and its parts: ``kernel``,
``initrd`` and, for the ``verity`` profile, either ``disk.raw`` (a GPT disk with a root partition
holding the EROFS image and a root-verity partition holding the dm-verity tree) or the two separate
parts ``rootfs.erofs`` and ``rootfs.verity``. Published, it is an OCI artifact whose
``artifactType`` and config media type are :attr:`MediaType.KILN_VM` with one typed layer per
part. The builder writes this document with :meth:`VMConfig.to_bytes`; the agent, ``kiln boot``
and ``kiln inspect`` read it with :meth:`VMConfig.from_bytes` (bounded, strict: an unknown key, a
wrong type or an inconsistent part list is a :class:`~manifests.errors.DocumentError`).

How a runner boots it (everything it needs is here, nothing is guessed):

- the parts to attach are :attr:`VMConfig.drives`, in that order, as read-only virtio-blk drives
  (``disk.raw`` alone, or ``rootfs.erofs`` then ``rootfs.verity``); the ``initramfs`` profile has
  none;
- the kernel command line is :meth:`VMConfig.boot_cmdline`: the recorded ``cmdline`` (the tuned
  base arguments and the manifest's extras), the runner's host arguments (``tsc_early_khz=``), and
  the ``kiln.*`` arguments the guest init reads, derived here from the verified fields (the root
  hash above all: the guest trusts the command line, the runner trusts this signed document);
- memory (MiB) and cpus; the guest listens on ``ports`` at :data:`GUEST_ADDRESS` (user-mode
  networking: the host forwards a loopback port to it); ``health`` as in the image manifest;
- when the entrypoint exits, the guest init prints ``kiln-exit: N`` (:data:`EXIT_LINE_PREFIX`) on
  the serial console and reboots, which with ``-no-reboot`` ends qemu. A setup failure or a guest
  panic (dm-verity corruption) reboots at once (``panic=-1 reboot=t``) without an exit line: a
  failure. (:data:`DEBUG_EXIT_PORT` is reserved for an ``isa-debug-exit`` device; Debian's cloud
  kernel has no ``/dev/port``, so the guest init does not write it.)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError
from manifests.image import ExecCheck, HealthCheck, HttpCheck, TcpCheck
from manifests.mediatypes import MediaType
from manifests.oci import parse_json_object
from manifests.vmspec import DiskLayout, VMProfile

__all__ = [
    "VM_SCHEMA_VERSION",
    "MAX_VM_JSON_BYTES",
    "GUEST_ADDRESS",
    "GUEST_GATEWAY",
    "EXIT_LINE_PREFIX",
    "DEBUG_EXIT_PORT",
    "VMProfile",
    "DiskLayout",
    "PartName",
    "VMPart",
    "VerityParams",
    "VMImageConfig",
    "VMConfig",
    "health_to_dict",
    "health_from_dict",
]

VM_SCHEMA_VERSION = 1
MAX_VM_JSON_BYTES = 1 << 20
GUEST_ADDRESS = "10.0.2.15"  # qemu user-mode networking's first guest address
GUEST_GATEWAY = "10.0.2.2"
EXIT_LINE_PREFIX = "kiln-exit: "
DEBUG_EXIT_PORT = 0xF4

_HEX = re.compile(r"[0-9a-f]*\Z")
_ARG = re.compile(r"[\x21\x23-\x7e]+\Z")  # one kernel argument: printable ASCII, no spaces or quotes
_RELEASE = re.compile(r"[0-9A-Za-z._+~-]{1,64}\Z")
_MAX_ITEMS = 4096


class PartName(enum.StrEnum):
    KERNEL = "kernel"
    INITRD = "initrd"
    DISK = "disk"
    ROOTFS = "rootfs"
    VERITY = "verity"

    @property
    def file(self) -> str:
        """The part's file name in a VM image directory."""
        return {
            PartName.KERNEL: "kernel",
            PartName.INITRD: "initrd",
            PartName.DISK: "disk.raw",
            PartName.ROOTFS: "rootfs.erofs",
            PartName.VERITY: "rootfs.verity",
        }[self]

    @property
    def media_types(self) -> tuple[MediaType, ...]:
        """The media types a part of this name may have (the first is the default)."""
        return {
            PartName.KERNEL: (MediaType.KILN_VM_KERNEL,),
            PartName.INITRD: (MediaType.KILN_VM_INITRD_ZSTD, MediaType.KILN_VM_INITRD_GZIP),
            PartName.DISK: (MediaType.KILN_VM_DISK,),
            PartName.ROOTFS: (MediaType.KILN_VM_ROOTFS,),
            PartName.VERITY: (MediaType.KILN_VM_VERITY,),
        }[self]


def _parts_for(profile: VMProfile, layout: DiskLayout | None) -> tuple[PartName, ...]:
    if profile is VMProfile.INITRAMFS:
        return (PartName.KERNEL, PartName.INITRD)
    if layout is DiskLayout.GPT:
        return (PartName.KERNEL, PartName.INITRD, PartName.DISK)
    return (PartName.KERNEL, PartName.INITRD, PartName.ROOTFS, PartName.VERITY)


# --------------------------------------------------------------------------------------------
# Strict readers for a machine-written document


def _obj(v: object, what: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise DocumentError(f"{what}: expected an object")
    return v


def _keys(d: Mapping[str, Any], what: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    missing = [k for k in required if k not in d]
    if missing:
        raise DocumentError(f"{what}: missing {missing[0]!r}")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        raise DocumentError(f"{what}: unknown key {unknown[0]!r}")


def _s(d: Mapping[str, Any], key: str, what: str) -> str:
    v = d[key]
    if not isinstance(v, str):
        raise DocumentError(f"{what}: {key!r} must be a string")
    return v


def _opt_s(d: Mapping[str, Any], key: str, what: str) -> str | None:
    return None if d.get(key) is None else _s(d, key, what)


def _i(d: Mapping[str, Any], key: str, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    v = d[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise DocumentError(f"{what}: {key!r} must be an integer from {lo} to {hi}")
    return v


def _strs(d: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    v = d.get(key, [])
    if not isinstance(v, list) or len(v) > _MAX_ITEMS or not all(isinstance(x, str) for x in v):
        raise DocumentError(f"{what}: {key!r} must be a list of strings")
    return tuple(v)


def _hex(d: Mapping[str, Any], key: str, what: str, *, length: int | None = None, most: int = 512) -> str:
    v = _s(d, key, what)
    if not _HEX.match(v) or len(v) % 2 or len(v) > most or (length is not None and len(v) != length):
        raise DocumentError(
            f"{what}: {key!r} must be lowercase hex" + (f" of {length} digits" if length else "")
        )
    return v


def _enum(cls: type[enum.StrEnum], d: Mapping[str, Any], key: str, what: str) -> Any:
    v = _s(d, key, what)
    try:
        return cls(v)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise DocumentError(f"{what}: {key!r} is {v!r}, expected one of: {allowed}") from None


# --------------------------------------------------------------------------------------------
# Health (the image manifest's check, as vm.json and the dev.kiln.health label spell it)


def health_to_dict(health: HealthCheck) -> dict[str, Any]:
    check = health.check
    out: dict[str, Any]
    if isinstance(check, HttpCheck):
        out = {"type": "http", "port": check.port, "path": check.path}
    elif isinstance(check, TcpCheck):
        out = {"type": "tcp", "port": check.port}
    else:
        out = {"type": "exec", "command": list(check.command)}
    out.update(interval=health.interval, timeout=health.timeout, retries=health.retries)
    return out


def health_from_dict(d: Mapping[str, Any], *, what: str = "health") -> HealthCheck:
    d = _obj(d, what)
    kind = d.get("type")
    check: HttpCheck | TcpCheck | ExecCheck
    common = ("type", "interval", "timeout", "retries")
    if kind == "http":
        _keys(d, what, (*common, "port", "path"))
        check = HttpCheck(port=_i(d, "port", what, 1, 65535), path=_s(d, "path", what))
    elif kind == "tcp":
        _keys(d, what, (*common, "port"))
        check = TcpCheck(port=_i(d, "port", what, 1, 65535))
    elif kind == "exec":
        _keys(d, what, (*common, "command"))
        check = ExecCheck(command=_strs(d, "command", what))
    else:
        raise DocumentError(f"{what}: 'type' must be http, tcp or exec")
    times = []
    for key in ("interval", "timeout"):
        v = d[key]
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v <= 86400:
            raise DocumentError(f"{what}: {key!r} must be a number of seconds")
        times.append(float(v))
    return HealthCheck(
        check=check, interval=times[0], timeout=times[1], retries=_i(d, "retries", what, 1, 1000)
    )


# --------------------------------------------------------------------------------------------
# The document


@dataclass(frozen=True, slots=True, kw_only=True)
class VMPart:
    """One file of a VM image: its name (which decides its file name), media type, digest, size.

    ``compression`` records how an initrd was compressed (``zstd/zstandard-0.22.0/19``, the same
    ``codec/library-version/level`` spelling as layers' ``dev.kiln.compression``); ``tool`` records
    a tool that wrote the part when one did (``mkfs.erofs 1.5``), so an upgrade is a visible change.
    """

    name: PartName
    media_type: MediaType
    digest: Digest
    size: int
    compression: str | None = None
    tool: str | None = None

    @property
    def file(self) -> str:
        return self.name.file

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": str(self.media_type), "digest": str(self.digest), "size": self.size}
        if self.compression is not None:
            d["compression"] = self.compression
        if self.tool is not None:
            d["tool"] = self.tool
        return d

    @classmethod
    def from_dict(cls, name: PartName, d: Mapping[str, Any]) -> VMPart:
        what = f"vm.json parts.{name}"
        d = _obj(d, what)
        _keys(d, what, ("mediaType", "digest", "size"), ("compression", "tool"))
        mt = _s(d, "mediaType", what)
        if mt not in name.media_types:
            raise DocumentError(f"{what}: unexpected mediaType {mt!r}")
        return cls(
            name=name,
            media_type=MediaType(mt),
            digest=Digest.parse(_s(d, "digest", what)),
            size=_i(d, "size", what),
            compression=_opt_s(d, "compression", what),
            tool=_opt_s(d, "tool", what),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VerityParams:
    """The dm-verity parameters of a ``verity`` image (``veritysetup format`` format version 1).

    The hash device (``rootfs.verity``, or the root-verity partition) starts with a verity
    superblock (one hash block, ``uuid`` inside) followed by the hash tree, so the table's hash
    start block is 1. ``data_blocks`` counts data blocks of the EROFS image. With the GPT layout,
    ``root_partition_uuid`` and ``verity_partition_uuid`` are the first and last 128 bits of the
    root hash (Discoverable Partitions Specification).
    """

    root_hash: str  # hex
    salt: str  # hex
    uuid: str  # the verity superblock's UUID (derived from content)
    data_blocks: int
    hash_algorithm: str = "sha256"
    data_block_size: int = 4096
    hash_block_size: int = 4096
    format_version: int = 1
    root_partition_uuid: str | None = None
    verity_partition_uuid: str | None = None

    HASH_START_BLOCK = 1  # after the superblock

    @property
    def data_sectors(self) -> int:
        return self.data_blocks * self.data_block_size // 512

    def table(self, data_dev: str, hash_dev: str) -> str:
        """The device-mapper table line for ``dmsetup create`` (panics on corruption)."""
        return (
            f"0 {self.data_sectors} verity {self.format_version} {data_dev} {hash_dev} "
            f"{self.data_block_size} {self.hash_block_size} {self.data_blocks} {self.HASH_START_BLOCK} "
            f"{self.hash_algorithm} {self.root_hash} {self.salt or '-'} 1 panic_on_corruption"
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "rootHash": self.root_hash,
            "salt": self.salt,
            "uuid": self.uuid,
            "dataBlocks": self.data_blocks,
            "hashAlgorithm": self.hash_algorithm,
            "dataBlockSize": self.data_block_size,
            "hashBlockSize": self.hash_block_size,
            "formatVersion": self.format_version,
        }
        if self.root_partition_uuid is not None:
            d["rootPartitionUuid"] = self.root_partition_uuid
        if self.verity_partition_uuid is not None:
            d["verityPartitionUuid"] = self.verity_partition_uuid
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VerityParams:
        what = "vm.json verity"
        d = _obj(d, what)
        _keys(
            d,
            what,
            (
                "rootHash",
                "salt",
                "uuid",
                "dataBlocks",
                "hashAlgorithm",
                "dataBlockSize",
                "hashBlockSize",
                "formatVersion",
            ),
            ("rootPartitionUuid", "verityPartitionUuid"),
        )
        if d["hashAlgorithm"] != "sha256":
            raise DocumentError(f"{what}: 'hashAlgorithm' must be sha256")
        if d["formatVersion"] != 1:
            raise DocumentError(f"{what}: 'formatVersion' must be 1")
        sizes = []
        for key in ("dataBlockSize", "hashBlockSize"):
            size = _i(d, key, what, 512, 65536)
            if size & (size - 1):
                raise DocumentError(f"{what}: {key!r} must be a power of two")
            sizes.append(size)
        uuids = []
        for key in ("uuid", "rootPartitionUuid", "verityPartitionUuid"):
            text = _opt_s(d, key, what)
            if text is not None and not _UUID.match(text):
                raise DocumentError(f"{what}: {key!r} must be a lowercase UUID")
            uuids.append(text)
        return cls(
            root_hash=_hex(d, "rootHash", what, length=64),
            salt=_hex(d, "salt", what),
            uuid=uuids[0] or "",
            data_blocks=_i(d, "dataBlocks", what, 1, 2**40),
            data_block_size=sizes[0],
            hash_block_size=sizes[1],
            root_partition_uuid=uuids[1],
            verity_partition_uuid=uuids[2],
        )


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class VMImageConfig:
    """What the guest init applies before it runs the entrypoint (from the image manifest)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # sorted by key; PATH included
    workdir: str | None = None
    uid: int = 65532
    gid: int = 65532
    writable: tuple[str, ...] = ()  # tmpfs mounts

    @property
    def argv(self) -> tuple[str, ...]:
        return self.entrypoint + self.cmd

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "env": dict(self.env),
            "uid": self.uid,
            "gid": self.gid,
            "writable": list(self.writable),
        }
        if self.workdir is not None:
            d["workdir"] = self.workdir
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VMImageConfig:
        what = "vm.json config"
        d = _obj(d, what)
        _keys(d, what, ("entrypoint", "cmd", "env", "uid", "gid", "writable"), ("workdir",))
        env = _obj(d["env"], f"{what} env")
        if len(env) > _MAX_ITEMS or not all(isinstance(v, str) for v in env.values()):
            raise DocumentError(f"{what}: 'env' must map names to strings")
        return cls(
            entrypoint=_strs(d, "entrypoint", what),
            cmd=_strs(d, "cmd", what),
            env=tuple(sorted(env.items())),
            workdir=_opt_s(d, "workdir", what),
            uid=_i(d, "uid", what, 0, 2**31 - 1),
            gid=_i(d, "gid", what, 0, 2**31 - 1),
            writable=_strs(d, "writable", what),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VMConfig:
    """``vm.json``. ``raw`` keeps the exact bytes a parsed document came from (its digest is over them)."""

    name: str
    version: str
    profile: VMProfile
    layout: DiskLayout | None  # None for the initramfs profile
    architecture: str
    kernel_release: str
    parts: tuple[VMPart, ...]
    verity: VerityParams | None
    cmdline: tuple[str, ...]
    memory_mib: int
    cpus: int
    ports: tuple[str, ...]  # "8080/tcp"
    health: HealthCheck | None
    config: VMImageConfig
    tree_digest: Digest
    modules: tuple[str, ...]  # module names in load order, e.g. "virtio_ring"
    # How the tree's CPython bytecode was compiled (``cpython-3.11.2/magic-3495/unchecked-hash/opt-0``,
    # the OCI manifest's ``dev.kiln.bytecode``), or None: no bytecode was baked.
    bytecode: str | None = None
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        want = _parts_for(self.profile, self.layout)
        got = tuple(p.name for p in self.parts)
        if got != want:
            raise DocumentError(
                f"vm.json: a {self.profile} image ({self.layout or 'no disk'}) has the parts "
                f"{', '.join(want)}, not {', '.join(got) or 'none'}"
            )
        if (self.profile is VMProfile.VERITY) != (self.verity is not None):
            raise DocumentError("vm.json: 'verity' is required by the verity profile and only there")
        if (self.profile is VMProfile.VERITY) != (self.layout is not None):
            raise DocumentError("vm.json: 'layout' is required by the verity profile and only there")
        for arg in self.cmdline:
            if arg.startswith("kiln."):
                raise DocumentError(
                    f"vm.json: kernel argument {arg!r}: kiln.* arguments are derived, not recorded"
                )
            if not _ARG.match(arg):
                raise DocumentError(
                    f"vm.json: kernel argument {arg!r} is empty or has spaces or control characters"
                )

    # -- what runners use

    def part(self, name: PartName | str) -> VMPart:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def drives(self) -> tuple[VMPart, ...]:
        """The parts to attach as read-only virtio-blk drives, in order."""
        return tuple(p for p in self.parts if p.name not in (PartName.KERNEL, PartName.INITRD))

    def kiln_args(self) -> tuple[str, ...]:
        """The ``kiln.*`` kernel arguments the guest init reads, derived from this document."""
        args = [f"kiln.profile={self.profile}"]
        if self.verity is not None and self.layout is not None:
            v = self.verity
            args += [
                f"kiln.layout={self.layout}",
                f"kiln.roothash={v.root_hash}",
                f"kiln.salt={v.salt or '-'}",
                f"kiln.datablocks={v.data_blocks}",
            ]
        return tuple(args)

    def boot_cmdline(self, host_args: Sequence[str] = (), *, env: bool = False) -> str:
        """The whole kernel command line: recorded ``cmdline``, the runner's ``host_args``
        (e.g. ``tsc_early_khz=2400000``), then :meth:`kiln_args` (last, so they win); ``env``:
        the runner passes a run-time environment through qemu's fw_cfg (``kiln.env=fw_cfg``)."""
        for arg in host_args:
            if not _ARG.match(arg) or arg.startswith("kiln."):
                raise ValueError(f"invalid host kernel argument {arg!r}")
        return " ".join((*self.cmdline, *host_args, *self.kiln_args(), *(["kiln.env=fw_cfg"] if env else [])))

    # -- serialization

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schemaVersion": VM_SCHEMA_VERSION,
            "mediaType": str(MediaType.KILN_VM),
            "name": self.name,
            "version": self.version,
            "profile": str(self.profile),
            "architecture": self.architecture,
            "kernelRelease": self.kernel_release,
            "parts": {str(p.name): p.to_dict() for p in self.parts},
            "cmdline": list(self.cmdline),
            "memoryMiB": self.memory_mib,
            "cpus": self.cpus,
            "ports": list(self.ports),
            "config": self.config.to_dict(),
            "treeDigest": str(self.tree_digest),
            "modules": list(self.modules),
        }
        if self.layout is not None:
            d["layout"] = str(self.layout)
        if self.verity is not None:
            d["verity"] = self.verity.to_dict()
        if self.health is not None:
            d["health"] = health_to_dict(self.health)
        if self.bytecode is not None:
            d["bytecode"] = self.bytecode
        return d

    def to_bytes(self) -> bytes:
        """The exact bytes: those parsed, or the canonical serialization of a new document."""
        return self.raw if self.raw is not None else canonical_json(self.to_dict())

    @property
    def digest(self) -> Digest:
        return Digest.of(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> VMConfig:
        return cls.from_dict(parse_json_object(data, what="vm.json", limit=MAX_VM_JSON_BYTES), raw=data)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, raw: bytes | None = None) -> VMConfig:
        what = "vm.json"
        d = _obj(d, what)
        _keys(
            d,
            what,
            (
                "schemaVersion",
                "mediaType",
                "name",
                "version",
                "profile",
                "architecture",
                "kernelRelease",
                "parts",
                "cmdline",
                "memoryMiB",
                "cpus",
                "ports",
                "config",
                "treeDigest",
                "modules",
            ),
            ("layout", "verity", "health", "bytecode"),
        )
        if d["schemaVersion"] != VM_SCHEMA_VERSION:
            raise DocumentError(f"{what}: schemaVersion must be {VM_SCHEMA_VERSION}")
        if d["mediaType"] != MediaType.KILN_VM:
            raise DocumentError(f"{what}: mediaType must be {MediaType.KILN_VM}")
        profile = _enum(VMProfile, d, "profile", what)
        layout = _enum(DiskLayout, d, "layout", what) if "layout" in d else None
        release = _s(d, "kernelRelease", what)
        if not _RELEASE.match(release):
            raise DocumentError(f"{what}: invalid kernelRelease {release!r}")
        parts_d = _obj(d["parts"], f"{what} parts")
        names = []
        for key in parts_d:
            try:
                names.append(PartName(key))
            except ValueError:
                raise DocumentError(f"{what}: unknown part {key!r}") from None
        order = list(PartName)
        names.sort(key=order.index)
        return cls(
            name=_s(d, "name", what),
            version=_s(d, "version", what),
            profile=profile,
            layout=layout,
            architecture=_s(d, "architecture", what),
            kernel_release=release,
            parts=tuple(VMPart.from_dict(n, parts_d[str(n)]) for n in names),
            verity=VerityParams.from_dict(d["verity"]) if "verity" in d else None,
            cmdline=_strs(d, "cmdline", what),
            memory_mib=_i(d, "memoryMiB", what, 16, 1 << 20),
            cpus=_i(d, "cpus", what, 1, 256),
            ports=_strs(d, "ports", what),
            health=health_from_dict(d["health"], what=f"{what} health") if "health" in d else None,
            config=VMImageConfig.from_dict(d["config"]),
            tree_digest=Digest.parse(_s(d, "treeDigest", what)),
            modules=_strs(d, "modules", what),
            bytecode=_opt_s(d, "bytecode", what),
            raw=raw,
        )
