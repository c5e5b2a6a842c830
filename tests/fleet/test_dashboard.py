"""The dashboard in headless Chromium: hosts' versions, wave states and a halt, read from the page."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fleet.etcd import EtcdClient
from fleet.gate import EtcdGate
from fleet.server import FleetServer
from fleet.state import FleetStore
from manifests.fleet import FleetConfig, Rollout, Wave
from tests.fleet.dashboardkit import elements, rendered_dom
from tests.fleet.etcdkit import Etcd

pytestmark = pytest.mark.integration

ROLLOUT = Rollout(waves=(Wave(group="canary", hosts=1), Wave(group="*")))
HOSTS = {"canary-1": "canary", "canary-2": "canary", "web-1": "web"}


@pytest.fixture
def served(etcd: Etcd) -> Iterator[tuple[FleetServer, dict[str, EtcdGate]]]:
    name = etcd.fleet_name()
    client = EtcdClient(etcd.url)
    server = FleetServer(FleetStore(client, name), FleetConfig(name=name, default_max=2))
    server.start()
    clients = {h: EtcdClient(etcd.url) for h in HOSTS}
    gates = {h: EtcdGate(clients[h], name, host=h, group=g, lease_ttl=10) for h, g in HOSTS.items()}
    try:
        yield server, gates
    finally:
        for h, gate in gates.items():
            gate.close()
            clients[h].close()
        server.close()
        client.close()


def test_the_page_shows_versions_waves_and_a_halt(served: tuple[FleetServer, dict[str, EtcdGate]]) -> None:
    server, gates = served
    for gate in gates.values():
        gate.heartbeat(1, "healthy")
    assert gates["canary-1"].before(2, ROLLOUT).allowed
    gates["canary-1"].after(2, ok=True)
    gates["canary-1"].heartbeat(2, "healthy")
    assert gates["canary-2"].before(2, ROLLOUT).allowed  # wave 2, updating now
    assert gates["canary-1"].before(3, ROLLOUT).allowed
    gates["canary-1"].after(3, ok=False, detail="health: /healthz answered 500")
    page = elements(rendered_dom(server.url + "/"))
    versions = {a["data-host"]: a["data-version"] for a, _t in page.with_attr("data-host")}
    assert versions == {"canary-1": "2", "canary-2": "1", "web-1": "1"}
    halts = {a["data-halt"]: text for a, text in page.with_attr("data-halt")}
    assert list(halts) == ["3"]
    assert "canary-1" in halts["3"]
    assert "answered 500" in halts["3"]
    progress = {a["data-wave-host"]: a["data-progress"] for a, _t in page.with_attr("data-wave-host")}
    # v3's waves come first (newest release first), then v2's; the dict keeps the last seen: v2
    assert progress == {"canary-1": "done", "canary-2": "updating", "web-1": "waiting"}
    waves = [text for a, text in page.with_attr("data-wave")]
    assert any("halted" in w for w in waves)


def test_static_files_and_unknown_paths(served: tuple[FleetServer, dict[str, EtcdGate]]) -> None:
    server, _gates = served
    assert "text/javascript" in httpx.get(server.url + "/dashboard.js", timeout=10).headers["content-type"]
    assert httpx.get(server.url + "/dashboard.css", timeout=10).status_code == 200
    missing = httpx.get(server.url + "/../etc/passwd", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["kind"] == "not_found"
    assert httpx.post(server.url + "/api/status", timeout=10).status_code == 404
