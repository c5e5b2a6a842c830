"""The attack table: each attack is refused with its reason, and the current release keeps serving.

A fresh agent serves release v42 of ``localhost/web`` (fake runtime, real verification, real
release artifacts in an oci:DIR, real content store and unpacker). Each test then publishes one
hostile release (or image, or root) and runs one reconcile.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.events import read_events
from agent.reconcile import Agent
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from manifests.release import MAX_RELEASE_BYTES
from publisher.layoutstore import LayoutRepository
from publisher.release_artifact import RELEASE_ARTIFACT_TYPE
from publisher.transfer import BlobSource, Manifest
from signing.dsse import Envelope
from signing.release import RELEASE_PAYLOAD_TYPE
from signing.root import envelope_cap
from tests.agent.agentkit import (
    MALLORY,
    NOW,
    R1,
    R2,
    ROOT_A,
    FakeRuntime,
    Published,
    Workspace,
    free_port,
    http_get,
    loopback_connector,
    make_release,
    make_root,
    root_envelope,
    service_yaml,
    sign_payload,
    signed,
    tiny_image,
)

ATTACKS = Path(__file__).resolve().parents[1] / "data" / "attacks"


@dataclass
class Serving:
    ws: Workspace
    agent: Agent
    runtime: FakeRuntime
    web: Published
    port: int
    ids: list[str]
    tmp: Path

    def release(self, version: int, image: str | None = None, **kw: object) -> bytes:
        svc = service_yaml("web", image or self.web.pin, listen=f"127.0.0.1:{self.port}", **kw)  # type: ignore[arg-type]
        return signed(make_release(version, [svc]))

    def payload(self, version: int, image: str | None = None, **kw: object) -> bytes:
        svc = service_yaml("web", image or self.web.pin, listen=f"127.0.0.1:{self.port}", **kw)  # type: ignore[arg-type]
        return make_release(version, [svc]).to_bytes()

    def refused(self, reason: str) -> None:
        """One reconcile refuses with ``reason``; v42's instances still serve."""
        result = self.agent.reconcile_once()
        assert (result.outcome, result.reason) == ("refused", reason), result
        self.still_serving(reason)

    def still_serving(self, reason: str) -> None:
        st = self.agent.journal.state
        assert st.good is not None
        assert st.good.version == 42
        assert sorted(r.id for r in st.instances) == self.ids
        assert self.runtime.running() == tuple(self.ids)
        assert http_get("127.0.0.1", self.port)[0] == 200
        assert st.last_refusal is not None
        assert st.last_refusal.reason == reason
        events = [e for e in read_events(self.ws.state) if e["event"] == "refused"]
        assert events[-1]["reason"] == reason
        assert self.agent.metrics.refusals[reason] >= 1

    def hostile_image(
        self,
        name: str,
        layers: list[bytes] | None = None,
        *,
        identity: str | None = None,
        attest: bool = False,
    ) -> Published:
        layout, desc = tiny_image(self.tmp / f"src-{name}", marker=name, layers=layers)
        return self.ws.add_image(f"localhost/{name}", layout.root, desc, identity=identity, attest=attest)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    layout, desc = tiny_image(tmp_path / "src-web", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc)
    port = free_port()
    svc = service_yaml("web", web.pin, listen=f"127.0.0.1:{port}")
    ws.publish(signed(make_release(42, [svc])))
    runtime = FakeRuntime()
    agent = Agent(
        ws.config(),
        runtime=runtime,
        connector=loopback_connector,
        wall=lambda: NOW,
        health_deadline=5.0,
        drain_timeout=1.0,
        stop_grace=0.1,
    )
    agent.start()
    assert agent.reconcile_once().outcome == "rolled-out"
    s = Serving(
        ws=ws,
        agent=agent,
        runtime=runtime,
        web=web,
        port=port,
        ids=sorted(r.id for r in agent.journal.state.instances),
        tmp=tmp_path,
    )
    # Later images are found through the agent's (shared) image map.
    agent.config = ws.config()
    yield s
    agent.close(stop_instances=True)
    runtime.close_all()


def _refresh(s: Serving) -> None:
    s.agent.config = s.ws.config()


def test_unsigned_release(serving: Serving) -> None:
    env = Envelope(payload_type=RELEASE_PAYLOAD_TYPE, payload=serving.payload(43), signatures=())
    serving.ws.publish(env.to_bytes())
    serving.refused("signature")


def test_release_signed_by_an_untrusted_key(serving: Serving) -> None:
    serving.ws.publish(sign_payload(serving.payload(43), MALLORY))
    serving.refused("signature")


def test_threshold_two_met_by_one_key_twice(serving: Serving) -> None:
    serving.ws.publish(sign_payload(serving.payload(43), R1, R1))
    serving.refused("threshold")


def test_tampered_payload(serving: Serving) -> None:
    doc = json.loads(serving.release(43))
    evil = serving.payload(43, env={"EVIL": "1"})
    doc["payload"] = base64.b64encode(evil).decode()
    serving.ws.publish(json.dumps(doc).encode())
    serving.refused("signature")


def test_expired_release(serving: Serving) -> None:
    svc = service_yaml("web", serving.web.pin, listen=f"127.0.0.1:{serving.port}")
    serving.ws.publish(signed(make_release(43, [svc], expires="2026-05-01T00:00:00Z")))
    serving.refused("expired")


def test_replay_of_an_older_version_and_a_signed_rollback(serving: Serving) -> None:
    serving.ws.publish(serving.release(41))
    serving.refused("rollback")
    # A new, higher version that pins the same (older) digests is how a rollback is signed.
    serving.ws.publish(serving.release(43))
    result = serving.agent.reconcile_once()
    assert (result.outcome, result.version) == ("rolled-out", 43)
    assert serving.agent.journal.state.good.version == 43  # type: ignore[union-attr]
    # Same spec: the instances were kept, only relabelled.
    assert sorted(r.id for r in serving.agent.journal.state.instances) == serving.ids


def test_release_pinning_a_tag(serving: Serving) -> None:
    doc = json.loads(serving.payload(43))
    doc["services"][0]["image"] = "localhost/web:1.0.0"
    serving.ws.publish_raw(sign_payload(canonical_json(doc), R1, R2))
    serving.refused("digest")


def test_image_whose_blobs_were_altered_in_the_registry(serving: Serving) -> None:
    img = serving.hostile_image("altered", layers=[b"x" * 10240])
    _refresh(serving)
    directory = Path(img.location[4:])
    man = OCIManifest.from_bytes((directory / "blobs" / "sha256" / img.digest.hex).read_bytes())
    layer = man.layers[0].digest
    blob = directory / "blobs" / "sha256" / layer.hex
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    serving.ws.publish(serving.release(43, image=img.pin))
    serving.refused("digest")
    assert not serving.agent.store.has(layer)  # discarded, never stored


def test_image_signed_for_another_repository(serving: Serving) -> None:
    img = serving.hostile_image("evil", identity="localhost/other")
    _refresh(serving)
    serving.ws.publish(serving.release(43, image=img.pin))
    serving.refused("identity")


def test_missing_required_attestation(serving: Serving) -> None:
    layout, desc = tiny_image(serving.tmp / "src-attested", marker="attested")
    img = serving.ws.add_image("localhost/attested/web", layout.root, desc, attest=False)
    _refresh(serving)
    serving.ws.publish(serving.release(43, image=img.pin))
    serving.refused("policy")
    # The same image with its provenance attested passes.
    other = serving.ws.add_image("localhost/attested/web2", layout.root, desc, attest=True)
    _refresh(serving)
    serving.ws.publish(serving.release(44, image=other.pin))
    assert serving.agent.reconcile_once().outcome == "rolled-out"


@pytest.mark.parametrize(
    "attack", ["dotdot-path.tar", "absolute-symlink-write-through.tar", "device-node.tar"]
)
def test_hostile_layer(serving: Serving, attack: str) -> None:
    img = serving.hostile_image(attack.removesuffix(".tar"), layers=[(ATTACKS / attack).read_bytes()])
    _refresh(serving)
    serving.ws.publish(serving.release(43, image=img.pin))
    serving.refused("unpack")
    assert not any(p.name.endswith(".tmp") for p in serving.agent.roots_dir.iterdir())


def test_oversized_release_document(serving: Serving) -> None:
    repo = LayoutRepository(serving.ws.releases)
    big = b"{" + b" " * (envelope_cap(MAX_RELEASE_BYTES) + 10) + b"}"
    layer = Descriptor(media_type=MediaType.DSSE_ENVELOPE, digest=Digest.of(big), size=len(big))
    empty = Descriptor(media_type=MediaType.OCI_EMPTY, digest=Digest.of(b"{}"), size=2)
    repo.put_blobs(
        [
            BlobSource(digest=layer.digest, size=layer.size, path=_write(serving.tmp / "big", big)),
            BlobSource(digest=empty.digest, size=2, path=_write(serving.tmp / "empty", b"{}")),
        ],
        jobs=1,
    )
    raw = OCIManifest(config=empty, layers=(layer,), artifact_type=RELEASE_ARTIFACT_TYPE).to_bytes()
    man = Manifest(data=raw, media_type=MediaType.OCI_MANIFEST, digest=Digest.of(raw))
    repo.put_manifest(man)
    repo.set_tag("stable", man)
    serving.refused("parse")
    assert "exceeds" in serving.agent.journal.state.last_refusal.detail  # type: ignore[union-attr]


def test_root_rotation_skipping_a_version(serving: Serving) -> None:
    v3 = root_envelope(make_root(version=3), ROOT_A)
    with pytest.raises(VerificationError) as info:
        serving.agent.trust_update(v3)
    assert info.value.reason == "policy"
    assert serving.agent.root.version == 1
    serving.still_serving("policy")
    # v2 then v3, in order, are accepted.
    serving.agent.trust_update(root_envelope(make_root(version=2), ROOT_A))
    assert serving.agent.trust_update(v3).version == 3
    assert serving.agent.journal.state.root_version == 3


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
