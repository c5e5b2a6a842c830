"""The docker-engine runtime on the private dockerd fixture, with the real python-web image."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator

import pytest

from agent.docker_runtime import LABEL, DockerRuntime, seccomp_json, write_docker_archive
from agent.errors import InstanceError
from agent.runtime import InstanceSpec, InstanceStatus, new_instance_id
from agent.store import ContentStore, LayoutSource
from manifests.errors import VerificationError
from tests.agent.conftest import WebImage
from tests.agent.imagekit import http_in_netns
from tests.kit.services import PrivateDockerd, free_port


def test_docker_archive_lists_the_stored_blobs(python_web: WebImage) -> None:
    buf = io.BytesIO()
    write_docker_archive(python_web.store, python_web.image, buf, repo_tag="kiln/web:1")
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = tar.getnames()
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.loads(member.read())
    image = python_web.image
    assert manifest == [
        {
            "Config": f"blobs/sha256/{image.config_digest.hex}",
            "Layers": [f"blobs/sha256/{d.digest.hex}" for d in image.layers],
            "RepoTags": ["kiln/web:1"],
        }
    ]
    assert names == [
        "manifest.json",
        *(f"blobs/sha256/{d.hex}" for d in (image.config_digest, *(x.digest for x in image.layers))),
    ]


@pytest.fixture
def docker_rt(dockerd: PrivateDockerd, python_web: WebImage) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(python_web.store, python_web.state, base_url=dockerd.host)
    yield runtime
    for iid in runtime.list():
        runtime.stop(iid, grace=1)
    runtime.close()


@pytest.mark.integration
def test_python_web_runs_confined_on_the_engine(
    docker_rt: DockerRuntime, dockerd: PrivateDockerd, python_web: WebImage
) -> None:
    image_id = docker_rt.ensure_image(python_web.image.manifest_digest)
    assert image_id == f"sha256:{python_web.image.config_digest.hex}"
    assert docker_rt.ensure_image(python_web.image.manifest_digest) == image_id  # already loaded

    port = free_port()
    iid = new_instance_id("web")
    spec = InstanceSpec(
        instance_id=iid,
        service="web",
        image_digest=python_web.image.manifest_digest,
        image_config=python_web.image.config,
        env={"PORT": str(port)},
    )
    # Someone else's container on the same engine is never listed or touched.
    dockerd.cli("create", "--name", "kiln-web-ffffffff", image_id)
    try:
        handle = docker_rt.start(spec)
        assert handle.netns_path == f"/proc/{handle.pid}/ns/net"
        assert docker_rt.list() == (iid,)
        state = docker_rt.state(iid)
        assert state.status is InstanceStatus.RUNNING
        assert state.pid == handle.pid
        assert state.started_at is not None
        assert docker_rt.netns_path(iid) == handle.netns_path

        reply = http_in_netns(handle.netns_path, port, "/healthz")
        assert reply.startswith(b"HTTP/1.0 200"), reply[:200]

        info = json.loads(dockerd.cli("inspect", iid).stdout)[0]
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges", f"seccomp={seccomp_json()}"]
        assert host["CgroupnsMode"] == "private"
        assert host["NetworkMode"] == "none"
        assert "/tmp" in host["Tmpfs"]
        assert info["Config"]["User"] == "65532:65532"
        assert info["Config"]["Labels"][LABEL] == iid

        probe = (
            "import os\n"
            "st = open('/proc/self/status').read()\n"
            "print([l.split()[1] for l in st.splitlines() if l.startswith('CapEff')][0], os.getuid())\n"
            "for p in ('/app/x', '/tmp/x'):\n"
            "    try:\n"
            "        open(p, 'w').write('x'); print(p, 'ok')\n"
            "    except OSError as e:\n"
            "        print(p, e.strerror)\n"
        )
        out = dockerd.cli("exec", iid, "/usr/bin/python3", "-c", probe).stdout.splitlines()
        assert out == ["0000000000000000 65532", "/app/x Read-only file system", "/tmp/x ok"]

        with pytest.raises(InstanceError, match="was not created by kiln"):
            docker_rt.stop("kiln-web-ffffffff")
        with pytest.raises(InstanceError, match="already exists"):
            docker_rt.start(spec)
    finally:
        docker_rt.stop(iid, grace=5)
        dockerd.cli("rm", "-f", "kiln-web-ffffffff", check=False)
    assert docker_rt.state(iid).status is InstanceStatus.MISSING
    assert docker_rt.list() == ()
    docker_rt.stop(iid)  # idempotent


@pytest.mark.integration
def test_a_store_blob_altered_before_loading_is_refused(
    docker_rt: DockerRuntime,
    dockerd: PrivateDockerd,
    python_web: WebImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A private copy of the store, so the shared one stays intact.
    state = tmp_path_factory.mktemp("altered")
    store = ContentStore(state)
    image = store.pull_image(LayoutSource.open(python_web.layout), python_web.image.digest)
    layer = store.path(image.layers[-1].digest)
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.chmod(0o644)
    layer.write_bytes(bytes(data))
    runtime = DockerRuntime(store, state, base_url=dockerd.host)
    try:
        dockerd.cli("rmi", "-f", f"sha256:{image.config_digest.hex}", check=False)
        with pytest.raises(VerificationError, match="was altered on disk"):
            runtime.ensure_image(image.manifest_digest)
    finally:
        runtime.close()
