"""A representative part of the attack table on real components: runc, and a real registry.

``test_attacks.py`` runs every attack against a fake runtime and ``oci:DIR`` sources. Here the
agent pulls from Debian's ``docker-registry`` (:class:`tests.publisher.registry.RegistryProcess`,
the registry behind ``tests/publisher/conftest.py``'s fixtures) and runs two replicas of an echo
image (python-web whose ``/`` names its release and instance) on runc. Release v5 serves; each
test publishes one hostile release to the registry and runs one reconcile:

- an image whose layer blob was altered in the registry's storage (``digest``);
- an unsigned release (``signature``);
- the replay of an older, validly signed version (``rollback``);
- an image signed for its repository whose layer has ``../`` paths (``unpack``).

Each is refused with its reason, and v5 keeps serving: the same instances run under runc and the
service address answers from them with ``VERSION=v5``.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.events import read_events
from agent.reconcile import Agent
from kiln.cli import main
from manifests.agentconfig import AgentConfig, ImageLocation
from manifests.digest import Digest
from manifests.oci import Descriptor
from manifests.release import Release
from publisher.client import RegistryClient
from publisher.registrystore import RegistryRepository
from publisher.release_artifact import publish_release
from signing.dsse import Envelope
from signing.release import RELEASE_PAYLOAD_TYPE
from tests.agent.agentkit import (
    free_port,
    make_release,
    make_root,
    service_yaml,
    sign_and_attest,
    signed,
    tiny_image,
)
from tests.agent.conftest import WebImage
from tests.agent.crashkit import ask, cleanup, echo_image, last_layer, runc_list
from tests.publisher.registry import RegistryProcess
from tests.support import require_root, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = "localhost/python-web"
ATTACKS = Path(__file__).resolve().parents[1] / "data" / "attacks"
SERVING = 5


@dataclass
class Real:
    registry: RegistryProcess
    agent: Agent
    service: str
    port: int
    layout: Path
    serving: Descriptor
    ids: list[str]
    base: Path

    def release(self, version: int, image: Descriptor | None = None) -> Release:
        """Release ``version`` of the service, pinning ``image`` (v5's image by default)."""
        digest = (image or self.serving).digest
        svc = service_yaml(
            self.service,
            f"{REPO}@{digest}",
            replicas=2,
            listen=f"127.0.0.1:{self.port}",
            grace="300ms",
            interval="200ms",
            retries=2,
            env={"VERSION": f"v{version}"},
        )
        return make_release(version, [svc])

    def publish(self, envelope: bytes) -> None:
        with RegistryClient(self.registry.host, insecure=True) as client:
            publish_release(RegistryRepository(client, "team/releases"), envelope, force=True)

    def push(self, layout: Path, desc: Descriptor, tag: str) -> None:
        """Sign ``desc`` for REPO in ``layout`` and copy it, signature included, to the registry."""
        sign_and_attest(layout, desc, identity=REPO)
        source = f"oci:{layout}@{desc.digest}"
        dest = f"{self.registry.host}/team/python-web:{tag}"
        assert main(["copy", source, dest, "--insecure", "-q"]) == 0

    def blob_in_storage(self, digest: Digest) -> Path:
        path = (
            self.registry.storage / "docker/registry/v2/blobs/sha256" / digest.hex[:2] / digest.hex / "data"
        )
        assert path.is_file(), path
        return path

    def refused(self, reason: str) -> str:
        """One reconcile refuses with ``reason``; v5's instances still run on runc and answer."""
        result = self.agent.reconcile_once()
        assert (result.outcome, result.reason) == ("refused", reason), result
        st = self.agent.journal.state
        assert st.good is not None
        assert st.good.version == SERVING
        assert sorted(r.id for r in st.instances) == self.ids
        assert list(runc_list(self.agent.state_dir)) == self.ids
        for _ in range(4):
            answer = ask(self.port)
            assert answer["version"] == f"v{SERVING}"
            assert answer["instance"] in self.ids
        assert st.last_refusal is not None
        assert st.last_refusal.reason == reason
        events = [e for e in read_events(self.agent.state_dir) if e["event"] == "refused"]
        assert events[-1]["reason"] == reason
        return result.detail


@pytest.fixture(scope="module")
def real(python_web: WebImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    require_root("runc and network namespaces need root")
    for tool, package in (("runc", "runc"), ("ip", "iproute2"), ("docker-registry", "docker-registry")):
        require_tool(tool, package)
    base = tmp_path_factory.mktemp("attacks-real")
    layout = base / "images"
    serving = echo_image(python_web, layout, flavour="serving")
    root = base / "root.yaml"
    root.write_text(make_root().to_yaml())
    service = f"atk-{secrets.token_hex(3)}"
    state = base / "state"
    with RegistryProcess(root=base / "registry") as registry:
        config = AgentConfig(
            source=f"{registry.host}/team/releases",
            channel="stable",
            trust_root=root,
            state=state,
            insecure=True,
            images=(ImageLocation(repository=REPO, location=f"{registry.host}/team/python-web"),),
        )
        agent = Agent(config, health_deadline=6.0, drain_timeout=2.0, stop_grace=1.0)
        r = Real(
            registry=registry,
            agent=agent,
            service=service,
            port=free_port(),
            layout=layout,
            serving=serving,
            ids=[],
            base=base,
        )
        try:
            agent.start()
            r.push(layout, serving, "serving")
            r.publish(signed(r.release(SERVING)))
            assert agent.reconcile_once().outcome == "rolled-out"
            r.ids = sorted(i.id for i in agent.journal.state.instances)
            assert len(r.ids) == 2
            assert ask(r.port)["version"] == f"v{SERVING}"
            yield r
        finally:
            agent.close(stop_instances=True)
            cleanup(state, service)
            shutil.rmtree(state / "roots", ignore_errors=True)


def test_image_whose_layer_blob_was_altered_in_the_registry(real: Real, python_web: WebImage) -> None:
    altered = echo_image(python_web, real.layout, flavour="altered")
    real.push(real.layout, altered, "altered")
    layer = last_layer(real.layout, altered)
    blob = real.blob_in_storage(layer)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    blob.write_bytes(bytes(data))
    real.publish(signed(real.release(11, altered)))
    detail = real.refused("digest")
    assert f"pull blob {layer}: digest mismatch" in detail
    assert not real.agent.store.has(layer)  # discarded, never stored


def test_unsigned_release(real: Real) -> None:
    env = Envelope(payload_type=RELEASE_PAYLOAD_TYPE, payload=real.release(10).to_bytes(), signatures=())
    real.publish(env.to_bytes())
    assert real.refused("signature") == "release is not signed"


def test_replay_of_an_older_version(real: Real) -> None:
    real.publish(signed(real.release(SERVING - 1)))
    assert real.refused("rollback") == f"release v{SERVING - 1} is older than the accepted v{SERVING}"


def test_signed_image_with_a_dotdot_layer(real: Real) -> None:
    layout, desc = tiny_image(
        real.base / "src-dotdot", marker="dotdot", layers=[(ATTACKS / "dotdot-path.tar").read_bytes()]
    )
    real.push(layout.root, desc, "dotdot")
    real.publish(signed(real.release(12, desc)))
    detail = real.refused("unpack")
    assert "member '../../../../../../tmp/kiln-attack-planted': member name has a '..' component" in detail
    assert not Path("/tmp/kiln-attack-planted").exists()
    assert not [p.name for p in real.agent.roots_dir.iterdir() if p.name.endswith(".tmp")]
