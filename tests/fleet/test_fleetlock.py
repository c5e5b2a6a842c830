"""The FleetLock protocol served by `kiln fleet serve`, spoken by the test as Zincati would."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fleet.etcd import EtcdClient
from fleet.gate import FleetLockGate
from fleet.server import FleetServer
from fleet.state import FleetStore
from manifests.fleet import FleetConfig, GroupLimit
from tests.fleet.etcdkit import Etcd

pytestmark = pytest.mark.integration
HEADERS = {"fleet-lock-protocol": "true"}


@pytest.fixture
def server(etcd: Etcd) -> Iterator[FleetServer]:
    config = FleetConfig(name=etcd.fleet_name(), groups=(GroupLimit(name="workers", max=1),), default_max=2)
    with EtcdClient(etcd.url) as client:
        srv = FleetServer(FleetStore(client, config.name), config)
        srv.start()
        try:
            yield srv
        finally:
            srv.close()


def lock(url: str, path: str, ident: str, group: str = "workers") -> httpx.Response:
    body = {"client_params": {"id": ident, "group": group}}
    return httpx.post(f"{url}{path}", json=body, headers=HEADERS, timeout=10)


def test_lock_refuse_then_lock_after_steady_state(server: FleetServer) -> None:
    first = lock(server.url, "/v1/pre-reboot", "node-a")
    assert first.status_code == 200
    again = lock(server.url, "/v1/pre-reboot", "node-a")
    assert again.status_code == 200, "locking is recursive for the holder"
    refused = lock(server.url, "/v1/pre-reboot", "node-b")
    assert refused.status_code != 200
    doc = refused.json()
    assert doc["kind"] == "failed_lock"
    assert "node-a" in doc["value"]
    assert lock(server.url, "/v1/steady-state", "node-b").status_code == 200, "unlock if held: a no-op"
    assert lock(server.url, "/v1/pre-reboot", "node-b").status_code != 200
    assert lock(server.url, "/v1/steady-state", "node-a").status_code == 200
    assert lock(server.url, "/v1/pre-reboot", "node-b").status_code == 200
    # another group has its own slots (default_max 2)
    assert lock(server.url, "/v1/pre-reboot", "x1", "default").status_code == 200
    assert lock(server.url, "/v1/pre-reboot", "x2", "default").status_code == 200
    assert lock(server.url, "/v1/pre-reboot", "x3", "default").status_code != 200


def test_kiln_agents_and_zincati_share_the_slots(server: FleetServer) -> None:
    gate = FleetLockGate(server.url, host="kiln-host", group="workers")
    try:
        assert gate.before(7, None).allowed
        refused = lock(server.url, "/v1/pre-reboot", "zincati-host")
        assert refused.status_code != 200
        decision_b = FleetLockGate(server.url, host="other", group="workers").before(7, None)
        assert not decision_b.allowed
        assert "failed_lock" in decision_b.reason
        gate.after(7, ok=True)
        assert lock(server.url, "/v1/pre-reboot", "zincati-host").status_code == 200
    finally:
        gate.close()


@pytest.mark.parametrize(
    ("headers", "body", "kind"),
    [
        ({}, b'{"client_params": {"id": "a", "group": "g"}}', "bad_request"),
        (HEADERS, b"not json", "bad_request"),
        (HEADERS, b"[]", "bad_request"),
        (HEADERS, b'{"client_params": {"group": "g"}}', "bad_request"),
        (HEADERS, b'{"client_params": {"id": "a", "group": "no spaces"}}', "bad_request"),
        (HEADERS, b'{"client_params": {"id": "../../x", "group": "g"}}', "bad_request"),
        (HEADERS, b"[" * 200_000, "bad_request"),
    ],
)
def test_bad_requests_are_refused_with_kind_and_value(
    server: FleetServer, headers: dict[str, str], body: bytes, kind: str
) -> None:
    resp = httpx.post(f"{server.url}/v1/pre-reboot", content=body, headers=headers, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["kind"] == kind
    assert resp.json()["value"]
    assert httpx.get(f"{server.url}/api/status", timeout=10).status_code == 200, "the server still answers"


def test_an_oversized_body_is_refused(server: FleetServer) -> None:
    body = b'{"client_params": {"id": "a", "group": "g"}, "pad": "' + b"x" * 70_000 + b'"}'
    resp = httpx.post(f"{server.url}/v1/pre-reboot", content=body, headers=HEADERS, timeout=10)
    assert resp.status_code == 400
    assert "at most" in resp.json()["value"]
