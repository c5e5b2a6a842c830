"""Helpers for the agent core's tests: keys, trust roots, signed releases, signed images, a fake runtime.

The fake runtime (:class:`FakeRuntime`) runs each "instance" as a small HTTP server on a loopback
port in this process; its "network namespace path" is ``tcp:127.0.0.1:PORT`` and
:func:`loopback_connector` reaches it. An instance whose env has ``HEALTH=fail`` answers 500 on
``/healthz``. That is enough to drive the reconcile loop, the rollouts and the traffic switch
without root; the integration tests run the same agent on real runc.
"""

from __future__ import annotations

import http.server
import io
import json
import shutil
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import InstanceError
from agent.runtime import INSTANCE_PREFIX, InstanceHandle, InstanceSpec, InstanceState, InstanceStatus
from manifests.agentconfig import AgentConfig, ImageLocation
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor
from manifests.release import Release, parse_release
from manifests.trustroot import ImageKey, ImageRule, ImageRules, ReleaseRole, Role, TrustRoot
from publisher.layoutstore import LayoutRepository
from publisher.release_artifact import publish_release, release_manifest
from publisher.transfer import BlobSource, Manifest
from signing.attestation import STATEMENT_V1, PredicateKind
from signing.dsse import sign_envelope
from signing.image import attest_image, sign_image
from signing.release import RELEASE_PAYLOAD_TYPE
from signing.root import sign_root
from signing.signer import LocalSigner
from signing.store import LayoutStore
from tests.agent.imagekit import M, tar_bytes, write_image
from tests.signing.conftest import p256

NOW = datetime(2026, 6, 1, tzinfo=UTC)
FAR = "2099-01-01T00:00:00Z"
R1, R2, R3 = p256(0x1001), p256(0x1002), p256(0x1003)
ROOT_A, ROOT_B = p256(0x2001), p256(0x2002)
IMAGE_KEY = p256(0x3001)
MALLORY = p256(0x6666)
ATTESTED = "localhost/attested/**"


def pem(s: LocalSigner) -> str:
    return s.public_key.to_pem().decode()


def make_root(
    *,
    version: int = 1,
    releases: tuple[LocalSigner, ...] = (R1, R2, R3),
    threshold: int = 2,
    root_keys: tuple[LocalSigner, ...] = (ROOT_A,),
    expires: datetime = datetime(2099, 1, 1, tzinfo=UTC),
) -> TrustRoot:
    keys = {s.public_key.key_id: pem(s) for s in (*releases, *root_keys)}
    return TrustRoot(
        version=version,
        expires=expires,
        root=Role(key_ids=tuple(sorted(s.public_key.key_id for s in root_keys)), threshold=1),
        releases=ReleaseRole(
            key_ids=tuple(sorted(s.public_key.key_id for s in releases)), threshold=threshold, channels=("*",)
        ),
        images=ImageRules(
            keys=(ImageKey(name="team", public_key=pem(IMAGE_KEY)),),
            rules=(
                ImageRule(repositories=("localhost/**",), keys=("team",)),
                ImageRule(repositories=(ATTESTED,), keys=("team",), attestations=("slsaprovenance",)),
            ),
        ),
        keys=tuple(sorted(keys.items())),
    )


def service_yaml(
    name: str,
    image: str,
    *,
    replicas: int = 1,
    listen: str | None = None,
    strategy: str | None = None,
    health_path: str = "/healthz",
    grace: str = "0s",
    interval: str = "100ms",
    retries: int = 2,
    env: Mapping[str, str] | None = None,
    max_lifetime: str | None = None,
    port: int = 8080,
    timeout: str = "1s",
) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "name": name,
        "image": image,
        "replicas": replicas,
        "health": {
            "http": {"port": port, "path": health_path},
            "grace": grace,
            "interval": interval,
            "timeout": timeout,
            "retries": retries,
        },
    }
    if listen is not None:
        svc["listen"] = listen
    if strategy is not None:
        svc["strategy"] = strategy
    if env:
        svc["env"] = dict(env)
    if max_lifetime is not None:
        svc["max_lifetime"] = max_lifetime
    return svc


def make_release(
    version: int, services: Sequence[Mapping[str, Any]], *, channel: str = "stable", expires: str = FAR
) -> Release:
    doc = {
        "apiVersion": "kiln.dev/v1",
        "kind": "Release",
        "channel": channel,
        "version": version,
        "expires": expires,
        "services": list(services),
    }
    return parse_release(json.dumps(doc).encode(), source="test-release.yaml")


def sign_payload(payload: bytes, *signers: LocalSigner) -> bytes:
    return sign_envelope(list(signers), RELEASE_PAYLOAD_TYPE, payload).to_bytes()


def signed(release: Release, *signers: LocalSigner) -> bytes:
    return sign_payload(release.to_bytes(), *(signers or (R1, R2)))


def root_envelope(root: TrustRoot, *signers: LocalSigner) -> bytes:
    return sign_root(root, list(signers)).to_bytes()


# -- images -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    repository: str
    digest: Digest
    location: str

    @property
    def pin(self) -> str:
        return f"{self.repository}@{self.digest}"


def tiny_image(
    root: Path,
    *,
    marker: str,
    layers: Sequence[bytes] | None = None,
    user: str = "1000:1000",
    ports: Sequence[str] = ("8080/tcp",),
) -> tuple[OCILayout, Descriptor]:
    """A small image (never executed by the fake runtime); ``marker`` makes its digest unique."""
    tars = (
        list(layers)
        if layers is not None
        else [tar_bytes([M("app", "dir"), M("app/marker.txt", data=marker.encode())])]
    )
    built = write_image(
        root,
        tars,
        media_type=MediaType.OCI_LAYER_GZIP,
        user=user,
        labels={"dev.kiln.ports": json.dumps(list(ports))},
        tag="1.0.0",
    )
    return built.layout, built.layout.resolve("1.0.0")


def sign_and_attest(
    layout_dir: Path,
    desc: Descriptor,
    *,
    identity: str,
    signer: LocalSigner = IMAGE_KEY,
    attest: bool = False,
) -> None:
    store = LayoutStore.open(layout_dir)
    sign_image(store, desc, signer, reference=identity)
    if attest:
        statement = canonical_json(
            {
                "_type": STATEMENT_V1,
                "subject": [{"name": identity, "digest": {"sha256": desc.digest.hex}}],
                "predicateType": PredicateKind.SLSAPROVENANCE.predicate_type,
                "predicate": {"buildDefinition": {"buildType": "https://kiln.dev/test"}},
            }
        )
        attest_image(store, desc, [signer], statement)


def copy_layout(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@dataclass
class Workspace:
    """Directories of one test agent: releases (oci:DIR), image locations, the state dir."""

    base: Path
    images: list[ImageLocation] = field(default_factory=list)

    @property
    def releases(self) -> Path:
        return self.base / "releases"

    @property
    def state(self) -> Path:
        return self.base / "state"

    def write_root(self, root: TrustRoot) -> Path:
        path = self.base / "root.yaml"
        path.write_text(root.to_yaml())
        return path

    def config(self, **kw: Any) -> AgentConfig:
        args: dict[str, Any] = {
            "source": f"oci:{self.releases}",
            "channel": "stable",
            "trust_root": self.base / "root.yaml",
            "state": self.state,
            "poll_interval": 0.2,
            "images": tuple(self.images),
            "max_attempts": 2,
        }
        args.update(kw)
        return AgentConfig(**args)

    def publish(self, envelope: bytes, *, force: bool = True) -> None:
        publish_release(LayoutRepository(self.releases, create=True), envelope, force=force)

    def publish_raw(self, envelope: bytes, *, channel: str = "stable") -> None:
        """Tag ``envelope`` as the channel's release without looking inside it (hostile input)."""
        repo = LayoutRepository(self.releases, create=True)
        man = release_manifest(envelope, channel=channel, version=0)
        empty = man.config
        repo.put_blobs(
            [
                BlobSource(digest=empty.digest, size=empty.size, opener=lambda: io.BytesIO(b"{}")),
                BlobSource(
                    digest=Digest.of(envelope), size=len(envelope), opener=lambda: io.BytesIO(envelope)
                ),
            ],
            jobs=1,
        )
        raw = man.to_bytes()
        manifest = Manifest(data=raw, media_type=MediaType.OCI_MANIFEST, digest=Digest.of(raw))
        repo.put_manifest(manifest)
        repo.set_tag(channel, manifest)

    def add_image(
        self,
        repository: str,
        src: Path,
        desc: Descriptor,
        *,
        sign: bool = True,
        identity: str | None = None,
        attest: bool = False,
        name: str | None = None,
    ) -> Published:
        dest = self.base / "registry" / (name or repository.replace("/", "_"))
        if not dest.exists():
            copy_layout(src, dest)
        if sign:
            sign_and_attest(dest, desc, identity=identity or repository, attest=attest)
        loc = f"oci:{dest}"
        if all(i.repository != repository for i in self.images):
            self.images.append(ImageLocation(repository=repository, location=loc))
        return Published(repository=repository, digest=desc.digest, location=loc)


# -- the fake runtime ---------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.server.frozen.is_set():  # "SIGSTOPped": never answers
            self.server.closing.wait(60)
            self.close_connection = True
            return
        if self.path == "/healthz":
            status = 500 if self.server.fail_health.is_set() else 200
            body = b"ok\n" if status == 200 else b"failing\n"
        elif self.path == "/":
            status, body = 200, json.dumps({"instance": self.server.instance_id}).encode()
        else:
            status, body = 404, b"not found\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, instance_id: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.instance_id = instance_id
        self.fail_health = threading.Event()
        self.frozen = threading.Event()
        self.closing = threading.Event()


class FakeRuntime:
    """:class:`agent.runtime.Runtime` whose instances are HTTP servers in this process."""

    name = "fake"

    def __init__(self) -> None:
        self.servers: dict[str, _Server] = {}
        self.stopped: dict[str, _Server] = {}
        self.specs: dict[str, InstanceSpec] = {}
        self.started: list[str] = []
        self.fail_start = False
        self._lock = threading.Lock()

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        if self.fail_start:
            raise InstanceError(f"instance {spec.instance_id} refused to start (test)")
        srv = _Server(spec.instance_id)
        if dict(spec.env).get("HEALTH") == "fail":
            srv.fail_health.set()
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        with self._lock:
            self.servers[spec.instance_id] = srv
            self.specs[spec.instance_id] = spec
            self.started.append(spec.instance_id)
        return InstanceHandle(
            instance_id=spec.instance_id, runtime=self.name, pid=1, netns_path=self._path(srv)
        )

    @staticmethod
    def _path(srv: _Server) -> str:
        return f"tcp:127.0.0.1:{srv.server_address[1]}"

    def freeze(self, instance_id: str) -> None:
        """As SIGSTOP: the instance accepts connections but never answers (until stopped)."""
        self.servers[instance_id].frozen.set()

    def kill(self, instance_id: str) -> None:
        """Make the instance die from outside (it stays known, STOPPED)."""
        with self._lock:
            srv = self.servers.pop(instance_id)
            self.stopped[instance_id] = srv
        srv.shutdown()
        srv.server_close()

    def stop(self, instance_id: str, grace: float = 10.0) -> None:
        with self._lock:
            srv = self.servers.pop(instance_id, None)
            self.stopped.pop(instance_id, None)
            self.specs.pop(instance_id, None)
        if srv is not None:
            srv.closing.set()
            srv.shutdown()
            srv.server_close()

    def state(self, instance_id: str) -> InstanceState:
        if instance_id in self.servers:
            return InstanceState(instance_id=instance_id, status=InstanceStatus.RUNNING, pid=1)
        if instance_id in self.stopped:
            return InstanceState(instance_id=instance_id, status=InstanceStatus.STOPPED)
        return InstanceState(instance_id=instance_id, status=InstanceStatus.MISSING)

    def list(self) -> tuple[str, ...]:
        return tuple(sorted(i for i in (*self.servers, *self.stopped) if i.startswith(INSTANCE_PREFIX)))

    def netns_path(self, instance_id: str) -> str:
        srv = self.servers.get(instance_id)
        if srv is None:
            raise InstanceError(f"instance {instance_id} is not running")
        return self._path(srv)

    def running(self) -> tuple[str, ...]:
        return tuple(sorted(self.servers))

    def close_all(self) -> None:
        for iid in list(self.servers):
            self.stop(iid)


def loopback_connector(path: str, port: int) -> Callable[[float], socket.socket]:
    """Connector for :class:`FakeRuntime` paths (``tcp:HOST:PORT``; the service port is ignored)."""
    del port
    _, host, real = path.split(":")

    def connect(timeout: float) -> socket.socket:
        return socket.create_connection((host, int(real)), timeout=timeout)

    return connect


def http_get(host: str, port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a release source with faults on demand ---------------------------------------------------------------


class FaultySource:
    """:class:`agent.releasesource.ReleaseSource` over a workspace's oci:DIR source, with faults:
    ``fetch_error`` / ``images_error`` are raised (as given) instead of answering."""

    def __init__(self, config: AgentConfig) -> None:
        from agent.releasesource import ConfigReleaseSource

        self.real = ConfigReleaseSource(config, staging=Path(config.state) / "tmp")
        self.fetch_error: BaseException | None = None
        self.images_error: BaseException | None = None
        self.fetches = 0

    @property
    def display(self) -> str:
        return "fake:" + self.real.display

    def fetch_release(self, channel: str) -> bytes:
        self.fetches += 1
        if self.fetch_error is not None:
            raise self.fetch_error
        return self.real.fetch_release(channel)

    def open_images(self, repository: str) -> Any:
        if self.images_error is not None:
            raise self.images_error
        return self.real.open_images(repository)
