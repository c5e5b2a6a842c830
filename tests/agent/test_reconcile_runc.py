"""The agent on real runc, with python-web published to a real registry (and on a private dockerd).

Acceptance flows: v1 -> v2 blue-green while a client polls the service address (no failed
request); v2 -> v3 whose health check fails (``/nope`` answers 404) -> automatic return to v2,
v3 recorded as failed; ``kiln agent rollback`` back to v1 with the registry stopped. Drift: an
instance killed from outside and one whose root was modified are replaced within one reconcile;
an instance past ``max_lifetime`` is replaced while a client keeps getting answers.
"""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from agent.netns import list_netns
from agent.reconcile import Agent
from agent.runtime import InstanceStatus
from kiln.cli import main
from manifests.agentconfig import AgentConfig, ImageLocation, RuntimeKind
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor
from publisher.client import RegistryClient
from publisher.registrystore import RegistryRepository
from publisher.release_artifact import publish_release
from tests.agent.agentkit import (
    NOW,
    free_port,
    http_get,
    make_release,
    make_root,
    service_yaml,
    sign_and_attest,
    signed,
)
from tests.agent.conftest import WebImage
from tests.agent.snapkit import layer_file
from tests.agent.test_reconcile import Clock, Poller
from tests.kit.services import PrivateDockerd, private_registry
from tests.support import require_root, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = "localhost/python-web"


def _signed_layout(python_web: WebImage, dest: Path) -> Descriptor:
    import shutil

    shutil.copytree(python_web.layout, dest)
    raw = python_web.store.read(python_web.image.digest)
    desc = Descriptor(media_type=MediaType.OCI_MANIFEST, digest=python_web.image.digest, size=len(raw))
    sign_and_attest(dest, desc, identity=REPO)
    return desc


def _svc(port: int, **kw: object) -> dict[str, object]:
    image = f"{REPO}@{kw.pop('digest')}"
    return service_yaml(
        "web",
        image,
        listen=f"127.0.0.1:{port}",
        grace="300ms",
        interval="200ms",
        retries=2,
        **kw,  # type: ignore[arg-type]
    )


def _agent(config: AgentConfig, clock: Clock | None = None) -> Agent:
    agent = Agent(config, wall=clock or Clock(NOW), health_deadline=6.0, drain_timeout=2.0, stop_grace=1.0)
    agent.start()
    return agent


def _runc_ids(state: Path) -> list[str]:
    from agent.runc import RuncRuntime

    return list(RuncRuntime(state).list())


@pytest.fixture
def needs_runc() -> None:
    require_root("runc and network namespaces need root")
    require_tool("runc", "runc")
    require_tool("ip", "iproute2")


def test_rollouts_failed_health_and_rollback_on_runc_with_a_registry(
    needs_runc: None, python_web: WebImage, tmp_path: Path
) -> None:
    require_tool("docker-registry", "docker-registry")
    netns_before = set(list_netns())
    desc = _signed_layout(python_web, tmp_path / "layout")
    root_path = tmp_path / "root.yaml"
    root_path.write_text(make_root().to_yaml())
    port = free_port()
    with private_registry(tmp_path / "registry") as host:
        assert (
            main(
                [
                    "copy",
                    f"oci:{tmp_path / 'layout'}@{desc.digest}",
                    f"{host}/team/python-web:1.0.0",
                    "--insecure",
                    "-q",
                ]
            )
            == 0
        )
        config = AgentConfig(
            source=f"{host}/team/releases",
            channel="stable",
            trust_root=root_path,
            state=tmp_path / "state",
            insecure=True,
            max_attempts=1,
            images=(ImageLocation(repository=REPO, location=f"{host}/team/python-web"),),
        )

        def publish(version: int, **kw: object) -> None:
            envelope = signed(make_release(version, [_svc(port, digest=desc.digest, **kw)]))
            with RegistryClient(host, insecure=True) as client:
                publish_release(RegistryRepository(client, "team/releases"), envelope)

        agent = _agent(config)
        try:
            publish(1)
            first = agent.reconcile_once()
            assert first.outcome == "rolled-out", first
            assert agent.metrics.verify_bytes_per_second > 0
            v1 = sorted(r.id for r in agent.journal.state.instances)

            publish(2, env={"GREETING": "two"})
            with Poller(port, limit=60) as poller:
                result = agent.reconcile_once()
            assert result.outcome == "rolled-out", result
            assert poller.failures == [], poller.failures[:5]
            assert poller.ok > 10
            v2 = sorted(r.id for r in agent.journal.state.instances)
            assert not set(v1) & set(v2)
            assert _runc_ids(config.state) == v2

            publish(3, health_path="/nope")
            with Poller(port, limit=60) as poller:
                result = agent.reconcile_once()
            assert result.outcome == "failed", result
            assert "404" in result.detail
            assert poller.failures == []
            st = agent.journal.state
            assert st.good.version == 2
            assert sorted(r.id for r in st.instances) == v2
            assert st.failure(3) is not None
            assert _runc_ids(config.state) == v2
        finally:
            agent.close()
    # The registry is gone: rollback works from the local store.
    agent = _agent(config)
    try:
        assert agent.reconcile_once().outcome == "unavailable"
        target = agent.rollback()
        assert target.version == 1
        st = agent.journal.state
        assert all(r.release == 1 for r in st.instances)
        assert len(st.instances) == 1
        assert _runc_ids(config.state) == [st.instances[0].id]
        assert http_get("127.0.0.1", port)[0] == 200
    finally:
        agent.close(stop_instances=True)
    assert _runc_ids(config.state) == []
    assert not [n for n in set(list_netns()) - netns_before if n.startswith("kiln-web-")]


def test_drift_and_lifetime_on_runc(needs_runc: None, python_web: WebImage, tmp_path: Path) -> None:
    desc = _signed_layout(python_web, tmp_path / "layout")
    root_path = tmp_path / "root.yaml"
    root_path.write_text(make_root().to_yaml())
    from publisher.layoutstore import LayoutRepository

    port = free_port()
    config = AgentConfig(
        source=f"oci:{tmp_path / 'releases'}",
        channel="stable",
        trust_root=root_path,
        state=tmp_path / "state",
        images=(ImageLocation(repository=REPO, location=f"oci:{tmp_path / 'layout'}"),),
    )
    envelope = signed(make_release(1, [_svc(port, digest=desc.digest, replicas=2, max_lifetime="1h")]))
    publish_release(LayoutRepository(tmp_path / "releases", create=True), envelope)
    clock = Clock(NOW)
    agent = _agent(config, clock)
    try:
        assert agent.reconcile_once().outcome == "rolled-out"
        ids = sorted(r.id for r in agent.journal.state.instances)
        # Killed from outside.
        subprocess.run(["runc", "--root", str(config.state / "runc"), "kill", ids[0], "KILL"], check=True)
        # `runc kill` returns once the signal is sent: a request the dying server accepted would be
        # lost with it (no data plane can save that one). Poll once it is gone.
        deadline = time.monotonic() + 30
        while agent.runtime.state(ids[0]).status is InstanceStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        with Poller(port, limit=60) as poller:
            result = agent.reconcile_once()
        assert result.replaced == 1
        assert poller.failures == []
        now_ids = sorted(r.id for r in agent.journal.state.instances)
        assert ids[0] not in now_ids
        assert ids[1] in now_ids
        # The root modified (as root, from outside the container).
        rec = agent.journal.state.instances[0]
        server = agent.roots_dir / rec.manifest.split(":")[1] / "app" / "server.py"
        original = server.read_bytes()
        layer_file(config.state, rec.manifest, "app/server.py").write_bytes(original + b"\n# tampered\n")
        assert server.read_bytes() != original  # seen through the composed root
        result = agent.reconcile_once()
        assert result.replaced == 2  # both instances share the root
        assert server.read_bytes() == original
        assert http_get("127.0.0.1", port)[0] == 200
        # Past max_lifetime.
        before = sorted(r.id for r in agent.journal.state.instances)
        clock.now = NOW + timedelta(hours=1, minutes=1)
        with Poller(port, limit=60) as poller:
            result = agent.reconcile_once()
        assert result.replaced == 2
        assert poller.failures == []
        assert not set(before) & {r.id for r in agent.journal.state.instances}
        assert _runc_ids(config.state) == sorted(r.id for r in agent.journal.state.instances)
    finally:
        agent.close(stop_instances=True)
    assert _runc_ids(config.state) == []


def test_docker_runtime_rolls_out_and_replaces_a_dead_instance(
    dockerd: PrivateDockerd, python_web: WebImage, tmp_path: Path
) -> None:
    from publisher.layoutstore import LayoutRepository

    desc = _signed_layout(python_web, tmp_path / "layout")
    root_path = tmp_path / "root.yaml"
    root_path.write_text(make_root().to_yaml())
    port = free_port()
    config = AgentConfig(
        source=f"oci:{tmp_path / 'releases'}",
        channel="stable",
        trust_root=root_path,
        state=tmp_path / "state",
        runtime=RuntimeKind.DOCKER,
        docker_host=dockerd.host,
        images=(ImageLocation(repository=REPO, location=f"oci:{tmp_path / 'layout'}"),),
    )
    releases = LayoutRepository(tmp_path / "releases", create=True)
    publish_release(releases, signed(make_release(1, [_svc(port, digest=desc.digest)])))
    agent = _agent(config)
    try:
        assert agent.reconcile_once().outcome == "rolled-out"
        assert http_get("127.0.0.1", port)[0] == 200
        first = agent.journal.state.instances[0].id
        publish_release(releases, signed(make_release(2, [_svc(port, digest=desc.digest, env={"V": "2"})])))
        with Poller(port, limit=60) as poller:
            assert agent.reconcile_once().outcome == "rolled-out"
        assert poller.failures == []
        second = agent.journal.state.instances[0].id
        assert second != first
        dockerd.cli("kill", second)
        assert agent.reconcile_once().replaced == 1
        assert http_get("127.0.0.1", port)[0] == 200
        assert agent.runtime.list() == (agent.journal.state.instances[0].id,)
    finally:
        agent.close(stop_instances=True)
