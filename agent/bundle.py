"""OCI runtime bundles: an image's run-time policy (``dev.kiln.*`` labels) and runc's ``config.json``.

:class:`ImagePolicy` is the policy the builder records, read through the one image config type
(:class:`manifests.imageconfig.ImageConfig`, which checks every value of the received document and
raises :class:`~manifests.errors.DocumentError` naming the label or field), with the numeric ids the
image runs as: ``dev.kiln.user``, else ``config.User``, else root.

:func:`runtime_config` is pure: instance spec + volume directories in, the ``config.json`` dict
out. The container gets a read-only root, the image's non-root user (uid 0 is a policy refusal
unless the spec allows it), ``noNewPrivileges``, five EMPTY capability sets, an RLIMIT_NOFILE, tmpfs
(nosuid, nodev, size-capped) on each writable path, bind mounts for volumes, ``/proc``, a tmpfs
``/dev`` with ``/dev/pts`` and ``/dev/shm``, a read-only ``/sys``, runc's masked and read-only paths,
its own pid/ipc/uts/mount/cgroup namespaces, the network namespace it was given, kiln's seccomp
allowlist (:mod:`agent.seccomp`), all devices denied in the device cgroup, a cgroup under ``/kiln``
with the pids, memory and CPU caps of :class:`~agent.runtime.ResourceLimits` (a release's
``resources:``), and ``/sys/fs/cgroup`` read-only, rooted at the instance's own cgroup. A spec with
``user_namespace`` also gets a user namespace mapping ids 0-65535 to the service's slot of host ids
(:func:`userns_base`).

:func:`prepare_volumes` is the I/O half: ``STATE/volumes/<service>/<slug>`` directories, mode 0700,
owned by the image user; :func:`write_bundle` writes ``BUNDLE/config.json`` atomically.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import BundleError
from agent.runtime import InstanceSpec, ResourceLimits
from agent.seccomp import seccomp_profile
from manifests.atomic import atomic_write
from manifests.canonical import canonical_json
from manifests.errors import VerificationError
from manifests.image import HealthCheck
from manifests.imageconfig import SYSTEM_MOUNTS, ImageConfig
from manifests.vocabulary import Reason

__all__ = [
    "ImagePolicy",
    "image_env",
    "image_args",
    "check_user",
    "env_pairs",
    "volume_slug",
    "prepare_volumes",
    "runtime_config",
    "write_bundle",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "SYSTEM_MOUNTPOINTS",
    "CGROUP_PARENT",
    "CPU_PERIOD_US",
    "USERNS_BASE",
    "USERNS_SIZE",
    "USERNS_SLOTS",
    "cgroup_resources",
    "userns_base",
    "host_ids",
    "userns_mappings",
]

CGROUP_PARENT = "/kiln"
CPU_PERIOD_US = 100_000  # the CFS period the CPU quota is a share of (the kernel's default)
# User namespaces: each service's 65536 ids map to one slot of systemd's range for container ids
# (0x00080000-0x6fffffff); kiln takes its upper part, 0x40000000-0x6fffffff: 12288 slots.
USERNS_BASE = 0x40000000
USERNS_SIZE = 0x10000
USERNS_SLOTS = 0x3000
SYSTEM_MOUNTPOINTS = SYSTEM_MOUNTS
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def _image(config: Mapping[str, Any] | ImageConfig) -> ImageConfig:
    return config if isinstance(config, ImageConfig) else ImageConfig.from_dict(config)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePolicy:
    """The run-time policy an image carries in its config (:class:`~manifests.imageconfig.RunPolicy`),
    with the numeric ids it runs as."""

    uid: int
    gid: int
    read_only: bool
    writable: tuple[str, ...]
    volumes: tuple[str, ...]
    ports: tuple[str, ...]
    health: HealthCheck | None
    allow_setuid: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ImageConfig) -> ImagePolicy:
        run = _image(config).config
        uid, gid = run.ids()
        p = run.policy
        return cls(
            uid=uid,
            gid=gid,
            read_only=p.read_only,
            writable=p.writable,
            volumes=p.volumes,
            ports=p.ports,
            health=p.health,
            allow_setuid=p.allow_setuid,
        )

    def mountpoints(self) -> tuple[str, ...]:
        """Directories the root must already have so the runtime need not create them in it."""
        return (*SYSTEM_MOUNTPOINTS, *self.writable, *self.volumes)


def image_env(config: Mapping[str, Any] | ImageConfig, overrides: Mapping[str, str]) -> list[str]:
    """The image's ``Env`` with ``overrides`` replacing or adding variables (order kept)."""
    env = _image(config).config.env
    for key, value in overrides.items():
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            raise BundleError(f"invalid environment variable name {key!r}")
    out = dict(env)
    out.update(overrides)
    return [f"{k}={v}" for k, v in out.items()]


def image_args(config: Mapping[str, Any] | ImageConfig) -> list[str]:
    """``Entrypoint`` + ``Cmd``; an image with neither cannot be run."""
    args = list(_image(config).config.args())
    if not args:
        raise BundleError("image config has neither Entrypoint nor Cmd", hint="nothing to run")
    return args


def volume_slug(path: str) -> str:
    """The directory name of a volume under ``STATE/volumes/<service>/``: unambiguous, one level."""
    return urllib.parse.quote(path.strip("/"), safe="")


def check_user(policy: ImagePolicy, *, allow_root: bool, user_namespace: bool = False) -> None:
    if user_namespace and (policy.uid == 0 or policy.gid == 0):
        raise VerificationError(
            f"image runs as {policy.uid}:{policy.gid}; a user namespace maps only non-root ids",
            reason=Reason.POLICY,
            hint="give the image a non-root user and group (accounts: in the manifest)",
        )
    if policy.uid == 0 and not allow_root:
        raise VerificationError(
            "image runs as uid 0 (root); refused",
            reason=Reason.POLICY,
            hint="give the image a non-root user (accounts: in the manifest) or allow root explicitly",
        )


def prepare_volumes(
    state_dir: Path, service: str, policy: ImagePolicy, *, owner: tuple[int, int] | None = None
) -> dict[str, Path]:
    """Create (or reuse) each volume's host directory, 0700, owned by the image user (or by
    ``owner``, the host ids a user namespace maps it to)."""
    out: dict[str, Path] = {}
    if not policy.volumes:
        return out
    base = Path(state_dir) / "volumes" / service
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in policy.volumes:
        host = base / volume_slug(path)
        if host.is_symlink():
            raise BundleError(f"volume directory {host} is a symlink; refusing to use it")
        host.mkdir(mode=0o700, exist_ok=True)
        os.chmod(host, 0o700)
        if os.geteuid() == 0:
            os.chown(host, *(owner or (policy.uid, policy.gid)))
        out[path] = host
    return out


def _tmpfs(path: str, policy: ImagePolicy, size: int) -> dict[str, Any]:
    opts = ["nosuid", "nodev", f"size={size}"]
    if path == "/tmp":  # noqa: S108 - the container's /tmp, a tmpfs of its own
        opts.append("mode=1777")
    else:
        opts += ["mode=0755", f"uid={policy.uid}", f"gid={policy.gid}"]
    return {"destination": path, "type": "tmpfs", "source": "tmpfs", "options": opts}


def cgroup_resources(limits: ResourceLimits) -> dict[str, Any]:
    """``linux.resources``: no devices; the pids, memory (swap included: none beyond it) and CPU caps."""
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if limits.pids is not None:
        resources["pids"] = {"limit": limits.pids}
    if limits.memory_bytes is not None:
        resources["memory"] = {"limit": limits.memory_bytes, "swap": limits.memory_bytes}
    if limits.cpu_millis is not None:
        resources["cpu"] = {"quota": limits.cpu_millis * CPU_PERIOD_US // 1000, "period": CPU_PERIOD_US}
    return resources


def userns_base(service: str) -> int:
    """The first host id of ``service``'s user namespace: ``USERNS_BASE + slot * USERNS_SIZE``.

    The slot is derived from the service name (sha256, modulo ``USERNS_SLOTS``), so every instance
    of a service, in every release and after every restart, maps ids the same way and finds its
    volumes owned by the same host ids. Two services may share a slot (1 in 12288 per pair): they
    then share host ids, as every service does without a user namespace.
    """
    digest = hashlib.sha256(service.encode()).digest()
    return USERNS_BASE + int.from_bytes(digest[:4], "big") % USERNS_SLOTS * USERNS_SIZE


def userns_mappings(service: str) -> list[dict[str, int]]:
    """Ids 1-65535 to the service's slot; 0 (runc's own setup, never the service) to host root.

    runc 1.1 prepares the root from inside the user namespace, so the namespace's root must be
    able to reach the root's path under the agent's 0700 state directory; it has no idmapped
    mounts either. Mapping 0 to 0 keeps that working; :func:`check_user` refuses root images
    with a user namespace, so the service itself always runs as an unprivileged host id.
    """
    base = userns_base(service)
    return [
        {"containerID": 0, "hostID": 0, "size": 1},
        {"containerID": 1, "hostID": base + 1, "size": USERNS_SIZE - 1},
    ]


def host_ids(spec: InstanceSpec, uid: int, gid: int) -> tuple[int, int]:
    """The host ids behind the image's ``uid:gid`` (themselves unless the spec has a user namespace)."""
    if not spec.user_namespace:
        return uid, gid
    if uid >= USERNS_SIZE or gid >= USERNS_SIZE:
        raise BundleError(
            f"{spec.instance_id}: image user {uid}:{gid} is outside the user namespace's {USERNS_SIZE} ids",
            hint="give the image a uid and gid below 65536, or drop user_namespace",
        )
    base = userns_base(spec.service)
    return base + uid, base + gid


def runtime_config(
    spec: InstanceSpec,
    *,
    volumes: Mapping[str, Path],
    netns_path: str | None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The OCI runtime-spec ``config.json`` for ``spec`` (pure: nothing is created)."""
    if spec.rootfs is None:
        raise BundleError(f"{spec.instance_id}: no unpacked root to run", hint="unpack the image first")
    image = ImageConfig.from_dict(spec.image_config)
    policy = ImagePolicy.from_config(image)
    check_user(policy, allow_root=spec.allow_root, user_namespace=spec.user_namespace)
    missing = [v for v in policy.volumes if v not in volumes]
    if missing:
        raise BundleError(f"{spec.instance_id}: no host directory for volume {missing[0]}")
    limits = spec.limits
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",  # noqa: S108 - the container's own shm tmpfs
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
    ]
    mounts += [_tmpfs(p, policy, limits.tmpfs_bytes) for p in policy.writable]
    mounts += [
        {
            "destination": p,
            "type": "bind",
            "source": str(volumes[p]),
            "options": ["rbind", "rprivate", "nosuid", "nodev", "rw"],
        }
        for p in policy.volumes
    ]
    mounts.append(
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        }
    )
    network: dict[str, Any] = {"type": "network"}
    if netns_path is not None:
        network["path"] = netns_path
    namespaces: list[dict[str, Any]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "cgroup"},
        network,
    ]
    linux: dict[str, Any] = {"namespaces": namespaces}
    if spec.user_namespace:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = userns_mappings(spec.service)
        linux["gidMappings"] = userns_mappings(spec.service)
    linux.update(
        {
            "resources": cgroup_resources(limits),
            "cgroupsPath": f"{CGROUP_PARENT}/{spec.instance_id}",
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": seccomp_profile(),
        }
    )
    caps: dict[str, list[str]] = {
        k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
    }
    ann = {
        "dev.kiln.instance": spec.instance_id,
        "dev.kiln.service": spec.service,
        "dev.kiln.image": str(spec.image_digest),
    }
    ann.update(annotations or {})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": policy.uid, "gid": policy.gid, "additionalGids": []},
            "args": image_args(image),
            "env": image_env(image, spec.env),
            "cwd": image.config.working_dir or "/",
            "capabilities": caps,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": limits.nofile, "soft": limits.nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(spec.rootfs), "readonly": True},
        "hostname": spec.instance_id[:63],
        "mounts": mounts,
        "annotations": ann,
        "linux": linux,
    }


def write_bundle(bundle_dir: Path, config: Mapping[str, Any]) -> Path:
    """Write ``BUNDLE/config.json`` (0600, atomically); returns its path."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = bundle_dir / "config.json"
    atomic_write(path, canonical_json(dict(config)), mode=0o600)
    return path


def env_pairs(env: Sequence[str]) -> dict[str, str]:
    """``["K=V", ...]`` as a dict (the last one wins)."""
    out: dict[str, str] = {}
    for e in env:
        k, _, v = e.partition("=")
        out[k] = v
    return out
