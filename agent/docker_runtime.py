"""The docker-engine runtime: the same instances, through the docker SDK on a configured engine.

The image reaches the engine the honest way: a docker-archive written from the agent's verified
content store (``manifest.json`` + the config and layer blobs exactly as stored) and ``docker
load``-ed; the engine recomputes every layer's diff_id against the config, and the loaded image's
id must equal the config digest, so what runs is what was verified. Containers run with a
read-only root, ``cap_drop=ALL``, ``no-new-privileges``, kiln's seccomp profile (the same as on
runc, :mod:`agent.seccomp`, never ``unconfined``), a private cgroup namespace, the memory (swap
included), CPU and pids caps of the spec's limits, the image's numeric user (uid 0 refused unless
allowed), tmpfs for ``dev.kiln.writable``, bind mounts for ``dev.kiln.volumes``,
``network_mode="none"`` (their own namespace with only loopback; the agent reaches it through
``/proc/<pid>/ns/net`` with :func:`agent.netns.connect_in_netns`) and the labels
``dev.kiln.instance``, ``dev.kiln.service`` and ``dev.kiln.image``. Only containers carrying
``dev.kiln.instance`` equal to their name are ever listed, stopped or removed.

A spec's ``netns`` is not used here: the engine cannot join a named namespace by path. Nor can it give
one container a user namespace (``userns-remap`` is engine-wide): a spec with ``user_namespace`` is
refused.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Ulimit

from agent.bundle import ImagePolicy, check_user, image_env, prepare_volumes
from agent.errors import InstanceError, RuntimeFailure
from agent.runc import parse_runc_time
from agent.runtime import (
    INSTANCE_PREFIX,
    InstanceHandle,
    InstanceSpec,
    InstanceState,
    InstanceStatus,
    check_instance_id,
)
from agent.seccomp import seccomp_profile
from agent.store import ContentStore, PulledImage
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.vocabulary import Reason

__all__ = ["DockerRuntime", "write_docker_archive", "LABEL"]

LABEL = "dev.kiln.instance"
_ENGINE_ERRORS = (docker.errors.DockerException, OSError)


def seccomp_json() -> str:
    """kiln's seccomp profile as the engine takes it in ``security_opt`` (the document, not a path)."""
    return canonical_json(seccomp_profile()).decode()


def _add(tar: tarfile.TarFile, name: str, size: int, fh: IO[bytes]) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    tar.addfile(info, fh)


def write_docker_archive(
    store: ContentStore, image: PulledImage, out: IO[bytes], *, repo_tag: str | None = None
) -> None:
    """Write ``image`` from the store as a docker-archive tarball (``docker load`` input)."""
    doc = [
        {
            "Config": f"blobs/sha256/{image.config_digest.hex}",
            "RepoTags": [repo_tag] if repo_tag else [],
            "Layers": [f"blobs/sha256/{layer.digest.hex}" for layer in image.layers],
        }
    ]
    manifest = canonical_json(doc)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "manifest.json", len(manifest), io.BytesIO(manifest))
        done: set[Digest] = set()
        for digest in (image.config_digest, *(layer.digest for layer in image.layers)):
            if digest in done:
                continue
            done.add(digest)
            with store.open(digest) as fh:
                _add(tar, f"blobs/sha256/{digest.hex}", os.fstat(fh.fileno()).st_size, fh)


class DockerRuntime:
    """:class:`agent.runtime.Runtime` over a docker engine (``base_url`` like ``unix:///...``)."""

    name = "docker"

    def __init__(
        self,
        store: ContentStore,
        state_dir: Path,
        *,
        base_url: str | None = None,
        client: docker.DockerClient | None = None,
        timeout: int = 120,
    ) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        if client is None:
            if base_url is None:
                raise RuntimeFailure("the docker runtime needs an engine address", hint="set base_url")
            client = docker.DockerClient(base_url=base_url, timeout=timeout)
        self.client = client
        self.tmp = self.state_dir / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._loading = threading.Lock()  # the instances of a step start in parallel threads

    def close(self) -> None:
        self.client.close()

    # -- images ----------------------------------------------------------------------------

    def ensure_image(self, image_digest: Digest) -> str:
        """Load the image into the engine unless it is there; returns the engine's image id."""
        with self._loading:  # one load of an image, however many instances start together
            return self._ensure_image(image_digest)

    def _ensure_image(self, image_digest: Digest) -> str:
        image = self.store.image(image_digest)
        image_id = f"sha256:{image.config_digest.hex}"
        try:
            self.client.images.get(image_id)
        except docker.errors.ImageNotFound:
            pass
        except _ENGINE_ERRORS as exc:
            raise RuntimeFailure(f"docker engine: cannot look up {image_id}: {exc}") from exc
        else:
            return image_id
        for layer in image.layers:
            self.store.verify(layer.digest, size=layer.size)
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="load-", suffix=".tar")
        try:
            with os.fdopen(fd, "w+b") as fh:
                write_docker_archive(self.store, image, fh)
                fh.seek(0)
                try:
                    loaded = self.client.images.load(fh)
                except _ENGINE_ERRORS as exc:
                    raise RuntimeFailure(f"docker load of {image_digest} failed: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        ids = {str(img.id) for img in loaded}
        if image_id not in ids:
            raise VerificationError(
                f"docker load of {image_digest} produced {sorted(ids)}, not {image_id}", reason=Reason.DIGEST
            )
        return image_id

    # -- Runtime ---------------------------------------------------------------------------

    def _get(self, instance_id: str) -> Container | None:
        iid = check_instance_id(instance_id)
        try:
            c = self.client.containers.get(iid)
        except docker.errors.NotFound:
            return None
        except _ENGINE_ERRORS as exc:
            raise RuntimeFailure(f"docker engine: cannot look up {iid}: {exc}") from exc
        if (c.labels or {}).get(LABEL) != iid:
            raise InstanceError(f"container {iid} was not created by kiln; not touching it")
        return c

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        iid = spec.instance_id
        if self._get(iid) is not None:
            raise InstanceError(f"instance {iid} already exists", hint="stop it first or use a new id")
        policy = ImagePolicy.from_config(spec.image_config)
        check_user(policy, allow_root=spec.allow_root)
        if spec.user_namespace:
            raise InstanceError(
                f"{spec.instance_id}: the docker runtime cannot give one instance a user namespace",
                hint="run the service on runc, or configure the engine's userns-remap for all containers",
            )
        image_id = self.ensure_image(spec.image_digest)
        volumes = prepare_volumes(self.state_dir, spec.volume_owner, policy)
        limits = spec.limits
        tmpfs = {}
        for p in policy.writable:
            mode = "mode=1777" if p == "/tmp" else f"mode=0755,uid={policy.uid},gid={policy.gid}"  # noqa: S108
            tmpfs[p] = f"rw,nosuid,nodev,size={limits.tmpfs_bytes},{mode}"
        kwargs: dict[str, Any] = {
            "name": iid,
            "detach": True,
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges", f"seccomp={seccomp_json()}"],
            "cgroupns": "private",
            "tmpfs": tmpfs,
            "user": f"{policy.uid}:{policy.gid}",
            "volumes": {str(host): {"bind": p, "mode": "rw"} for p, host in volumes.items()},
            "network_mode": "none",
            "environment": image_env(spec.image_config, spec.env),
            "labels": {
                LABEL: iid,
                "dev.kiln.service": spec.service,
                "dev.kiln.image": str(spec.image_digest),
            },
            "ulimits": [Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile)],
            "hostname": iid[:63],
        }
        if limits.pids is not None:
            kwargs["pids_limit"] = limits.pids
        if limits.memory_bytes is not None:
            kwargs["mem_limit"] = limits.memory_bytes
            kwargs["memswap_limit"] = limits.memory_bytes  # memory + swap: no swap beyond the cap
        if limits.cpu_millis is not None:
            kwargs["nano_cpus"] = limits.cpu_millis * 1_000_000
        try:
            container = self.client.containers.run(image_id, **kwargs)
            pid = self._wait_pid(container)
        except BaseException as exc:
            with contextlib.suppress(*_ENGINE_ERRORS):
                self.client.containers.get(iid).remove(force=True)
            if isinstance(exc, _ENGINE_ERRORS):
                raise RuntimeFailure(f"docker run {iid} failed: {exc}") from exc
            raise
        return InstanceHandle(instance_id=iid, runtime=self.name, pid=pid, netns_path=f"/proc/{pid}/ns/net")

    def _wait_pid(self, container: Container, seconds: float = 10.0) -> int:
        deadline = time.monotonic() + seconds
        while True:
            container.reload()
            state = container.attrs.get("State", {})
            pid = state.get("Pid")
            if state.get("Running") and isinstance(pid, int) and pid > 0:
                return pid
            if state.get("Status") in ("exited", "dead") or time.monotonic() > deadline:
                logs = container.logs(tail=20).decode("utf-8", "replace").strip()
                status, code = state.get("Status"), state.get("ExitCode")
                raise RuntimeFailure(f"container {container.name} is {status} (exit {code}): {logs}")
            time.sleep(0.05)

    def stop(self, instance_id: str, grace: float = 10.0) -> None:
        c = self._get(instance_id)
        if c is None:
            return
        try:
            c.reload()
            if c.attrs.get("State", {}).get("Running"):
                c.stop(timeout=max(0, math.ceil(grace)))
            c.remove(force=True)
        except docker.errors.NotFound:
            return
        except _ENGINE_ERRORS as exc:
            raise RuntimeFailure(f"docker: cannot stop {instance_id}: {exc}") from exc

    def state(self, instance_id: str) -> InstanceState:
        iid = check_instance_id(instance_id)
        c = self._get(iid)
        if c is None:
            return InstanceState(instance_id=iid, status=InstanceStatus.MISSING)
        st = c.attrs.get("State", {})
        pid = st.get("Pid")
        running = bool(st.get("Running"))
        return InstanceState(
            instance_id=iid,
            status=InstanceStatus.RUNNING if running else InstanceStatus.STOPPED,
            pid=pid if running and isinstance(pid, int) and pid > 0 else None,
            started_at=parse_runc_time(st.get("StartedAt", "")),
        )

    def list(self) -> tuple[str, ...]:
        try:
            containers = self.client.containers.list(all=True, filters={"label": LABEL})
        except _ENGINE_ERRORS as exc:
            raise RuntimeFailure(f"docker engine: cannot list containers: {exc}") from exc
        return tuple(
            sorted(
                c.name
                for c in containers
                if c.name and c.name.startswith(INSTANCE_PREFIX) and (c.labels or {}).get(LABEL) == c.name
            )
        )

    def netns_path(self, instance_id: str) -> str:
        st = self.state(instance_id)
        if st.pid is None:
            raise InstanceError(f"instance {instance_id} is not running", hint="start it first")
        return f"/proc/{st.pid}/ns/net"
