"""The agent's fleet gate on a real etcd: waves open in order, slots cap each group, a rollback halts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet.etcd import EtcdClient
from fleet.gate import EtcdGate, read_config, store_config
from fleet.state import FleetStore, status_document
from manifests.fleet import FleetConfig, GroupLimit, Rollout, Wave
from tests.fleet.etcdkit import Etcd

pytestmark = pytest.mark.integration

GROUPS = {"c1": "canary", "c2": "canary", "w1": "web", "w2": "web", "d1": "db"}
ROLLOUT = Rollout(waves=(Wave(group="canary", hosts=1), Wave(group="canary"), Wave(group="*")))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fleet(etcd: Etcd) -> Iterator[tuple[dict[str, EtcdGate], FleetStore, Clock]]:
    clock = Clock()
    name = etcd.fleet_name()
    clients = []
    gates = {}
    admin = EtcdClient(etcd.url)
    store = FleetStore(admin, name, clock=clock)
    store_config(store, FleetConfig(name=name, default_max=1, groups=(GroupLimit(name="web", max=1),)))
    for host, group in GROUPS.items():
        client = EtcdClient(etcd.url)
        clients.append(client)
        gates[host] = EtcdGate(client, name, host=host, group=group, lease_ttl=5, clock=clock)
        gates[host].heartbeat(1, "healthy")
    try:
        yield gates, store, clock
    finally:
        for gate in gates.values():
            gate.close()
        for client in clients:
            client.close()
        admin.close()


def test_stored_config_round_trips(fleet: tuple[dict[str, EtcdGate], FleetStore, Clock]) -> None:
    _gates, store, _clock = fleet
    config = read_config(store)
    assert config.max_for("web") == 1
    assert config.max_for("db") == 1
    assert config.lease_ttl == 15


def test_waves_in_order_one_per_group(fleet: tuple[dict[str, EtcdGate], FleetStore, Clock]) -> None:
    gates, store, _clock = fleet
    order = ["c1", "c2", "w1", "w2", "d1"]
    assert [h for h in order if gates[h].before(2, ROLLOUT).allowed] == ["c1"]
    gates["c1"].after(2, ok=True)
    assert [h for h in order[1:] if gates[h].before(2, ROLLOUT).allowed] == ["c2"]
    gates["c2"].after(2, ok=True)
    # wave 3 is everyone else; web allows one host at a time
    started = [h for h in ["w1", "w2", "d1"] if gates[h].before(2, ROLLOUT).allowed]
    assert started == ["w1", "d1"]
    refused = gates["w2"].before(2, ROLLOUT)
    assert not refused.allowed
    assert "no free slot in group 'web'" in refused.reason
    gates["w1"].after(2, ok=True)
    assert gates["w2"].before(2, ROLLOUT).allowed
    doc = status_document(store.snapshot(), read_config(store), now=2000)
    release = doc["releases"][0]
    assert release["version"] == 2
    assert not release["halted"]
    assert [w["state"] for w in release["waves"]] == ["done", "done", "open"]


def test_a_rollback_in_the_canary_wave_halts_the_release(
    fleet: tuple[dict[str, EtcdGate], FleetStore, Clock],
) -> None:
    gates, store, _clock = fleet
    assert gates["c1"].before(3, ROLLOUT).allowed
    gates["c1"].after(3, ok=False, detail="health: /healthz answered 500 three times")
    for host in ["c2", "w1", "w2", "d1"]:
        decision = gates[host].before(3, ROLLOUT)
        assert not decision.allowed
        assert "halted" in decision.reason
    assert not gates["c1"].before(3, ROLLOUT).allowed
    doc = status_document(store.snapshot(), read_config(store), now=2000)
    release = doc["releases"][0]
    assert release["halted"]
    assert release["halt"]["host"] == "c1"
    assert "500 three times" in release["halt"]["reason"]
    assert all(w["state"] == "halted" for w in release["waves"])
    assert doc["groups"]["canary"]["slots"] == [], "the halted host gave its slot back"


def test_soak_holds_the_next_wave(fleet: tuple[dict[str, EtcdGate], FleetStore, Clock]) -> None:
    gates, _store, clock = fleet
    rollout = Rollout(waves=(Wave(group="canary", soak=600), Wave(group="*")))
    for h in ["c1", "c2"]:
        assert gates[h].before(4, rollout).allowed
        gates[h].after(4, ok=True)
    assert "pending" in gates["w1"].before(4, rollout).reason
    clock.now += 601
    assert gates["w1"].before(4, rollout).allowed
