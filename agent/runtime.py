"""What every container runtime adapter offers the agent: the :class:`Runtime` Protocol and its types.

An *instance* is one running copy of a service's image. Its id is ``kiln-<service>-<short>``
(:func:`new_instance_id`); runtimes only ever list, stop or delete instances whose id has the
``kiln-`` prefix (runc: in kiln's own ``--root``; docker: also labelled ``dev.kiln.instance``), so
the agent never touches what someone else started.

Adapters: :mod:`agent.runc` (runc with a generated OCI bundle over the unpacked read-only root) and
:mod:`agent.docker_runtime` (a docker engine through the docker SDK). Tests and the rollout logic
can use any object with these methods.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from agent.errors import InstanceError
from manifests.digest import Digest
from manifests.release import Resources

__all__ = [
    "INSTANCE_PREFIX",
    "InstanceStatus",
    "ResourceLimits",
    "InstanceSpec",
    "InstanceHandle",
    "InstanceState",
    "Runtime",
    "new_instance_id",
    "check_instance_id",
    "check_service_name",
]

INSTANCE_PREFIX = "kiln-"
_SERVICE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_INSTANCE = re.compile(r"^kiln-([a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?)-([0-9a-f]{8,16})$")
_EMPTY: Mapping[str, str] = MappingProxyType({})


class InstanceStatus(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # created or exited, still known to the runtime
    MISSING = "missing"  # the runtime does not know the id

    @property
    def alive(self) -> bool:
        return self is InstanceStatus.RUNNING


def check_service_name(service: str) -> str:
    """A service name: lowercase letters, digits and inner dashes, at most 32 characters."""
    if not _SERVICE.match(service):
        raise InstanceError(
            f"invalid service name {service!r}",
            hint="use 1-32 lowercase letters, digits and inner dashes",
        )
    return service


def check_instance_id(instance_id: str) -> str:
    """``kiln-<service>-<8 to 16 hex digits>``; anything else is refused."""
    if not _INSTANCE.match(instance_id):
        raise InstanceError(
            f"invalid instance id {instance_id!r}", hint="instance ids look like kiln-<service>-<hex>"
        )
    return instance_id


def new_instance_id(service: str, short: str | None = None) -> str:
    """A fresh instance id for ``service`` (random 8 hex digits unless ``short`` is given)."""
    check_service_name(service)
    return check_instance_id(f"{INSTANCE_PREFIX}{service}-{short or secrets.token_hex(4)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceLimits:
    """Per-instance caps applied by every runtime."""

    tmpfs_bytes: int = 64 << 20  # each dev.kiln.writable tmpfs
    nofile: int = 1024  # RLIMIT_NOFILE soft and hard
    pids: int | None = 512
    memory_bytes: int | None = None
    cpu_millis: int | None = None  # thousandths of a CPU (CFS quota); None: no CPU cap

    def with_release(self, resources: Resources | None) -> ResourceLimits:
        """These limits with whatever a release's ``resources:`` sets for the service."""
        if resources is None:
            return self
        return ResourceLimits(
            tmpfs_bytes=self.tmpfs_bytes,
            nofile=self.nofile,
            pids=resources.pids if resources.pids is not None else self.pids,
            memory_bytes=resources.memory if resources.memory is not None else self.memory_bytes,
            cpu_millis=resources.cpu_millis if resources.cpu_millis is not None else self.cpu_millis,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceSpec:
    """Everything a runtime needs to start one instance of a service.

    ``image_config`` is the verified OCI image config document (its ``dev.kiln.*`` labels carry the
    run-time policy). ``rootfs`` is the unpacked read-only root (runc); the docker runtime loads
    the layers from the content store instead. ``netns`` is the path of a network namespace the
    agent created; ``None`` lets the runtime create (and later delete) one named after the id.
    ``user_namespace`` runs the instance in a user namespace of its own (runc; see
    :func:`agent.bundle.userns_base`).
    """

    instance_id: str
    service: str
    image_digest: Digest
    image_config: Mapping[str, Any]
    rootfs: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    netns: str | None = None
    allow_root: bool = False
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    user_namespace: bool = False
    # Volumes of its own (STATE/volumes/<service>/<instance id>/) instead of the service's.
    volume_per_instance: bool = False

    @property
    def volume_owner(self) -> str:
        """Whose volumes the instance mounts: ``STATE/volumes/<volume_owner>/<slug>``."""
        return f"{self.service}/{self.instance_id}" if self.volume_per_instance else self.service

    def __post_init__(self) -> None:
        check_instance_id(self.instance_id)
        check_service_name(self.service)
        if not self.instance_id.startswith(f"{INSTANCE_PREFIX}{self.service}-"):
            raise InstanceError(
                f"instance id {self.instance_id!r} does not belong to service {self.service!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceHandle:
    """A started instance: where to reach it (``netns_path``) and its init process."""

    instance_id: str
    runtime: str
    pid: int
    netns_path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceState:
    instance_id: str
    status: InstanceStatus
    pid: int | None = None
    started_at: dt.datetime | None = None


class Runtime(Protocol):
    """A container runtime adapter. Every method is safe to call again (idempotent stop/delete)."""

    name: str

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        """Create and start the instance; on failure nothing of it is left behind."""
        ...

    def stop(self, instance_id: str, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, SIGKILL, then remove it (a missing id is fine)."""
        ...

    def state(self, instance_id: str) -> InstanceState: ...

    def list(self) -> tuple[str, ...]:
        """Ids of the instances kiln created on this runtime (and only those)."""
        ...

    def netns_path(self, instance_id: str) -> str:
        """The network namespace to pass to :func:`agent.netns.connect_in_netns`."""
        ...
