"""Rollout slots on a real etcd: limits, ownership, recursion, races, and leases that expire."""

from __future__ import annotations

import threading
import time

import pytest

from fleet.etcd import EtcdClient
from fleet.slots import SlotSemaphore
from fleet.state import FleetStore, fleet_prefix
from tests.fleet.etcdkit import Etcd

pytestmark = pytest.mark.integration


def test_limit_ownership_and_recursion(etcd: Etcd) -> None:
    with EtcdClient(etcd.url) as client:
        slots = SlotSemaphore(client, fleet_prefix(etcd.fleet_name()))
        assert slots.acquire("web", "h1", limit=1)
        assert slots.acquire("web", "h1", limit=1), "a holder locking again keeps its slot (recursive)"
        assert not slots.acquire("web", "h2", limit=1)
        assert slots.acquire("db", "h2", limit=1), "groups have separate slots"
        assert not slots.release("web", "h2"), "h2 holds nothing in web: nothing to free"
        assert [h.id for h in slots.holders("web")] == ["h1"]
        assert slots.release("web", "h1")
        assert slots.acquire("web", "h2", limit=1)
        assert slots.acquire("web", "h3", limit=2)
        assert not slots.acquire("web", "h4", limit=2)


def test_racing_hosts_never_exceed_the_limit(etcd: Etcd) -> None:
    name = etcd.fleet_name()
    won: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def contend(host: str) -> None:
        with EtcdClient(etcd.url) as client:
            slots = SlotSemaphore(client, fleet_prefix(name))
            start.wait()
            if slots.acquire("web", host, limit=2):
                with lock:
                    won.append(host)

    threads = [threading.Thread(target=contend, args=(f"h{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(won) == 2
    with EtcdClient(etcd.url) as client:
        store = FleetStore(client, name)
        assert sorted(h.id for h in store.slots.holders("web")) == sorted(won)
        # and at no revision of etcd's history did more than two hosts hold a slot of web
        latest = store.snapshot().revision
        for revision in range(1, latest + 1):
            snap = store.snapshot_at(revision)
            assert len(snap.slots.get("web", ())) <= 2, f"revision {revision}: {snap.slots}"


def test_a_dead_holder_frees_its_slot_when_its_lease_expires(etcd: Etcd) -> None:
    with EtcdClient(etcd.url) as client:
        slots = SlotSemaphore(client, fleet_prefix(etcd.fleet_name()))
        lease = client.grant(2)
        assert slots.acquire("web", "dying", limit=1, lease=lease)
        assert not slots.acquire("web", "next", limit=1)
        # the holder "dies": nobody keeps the lease alive
        deadline = time.monotonic() + 15
        while slots.holders("web") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert slots.holders("web") == ()
        assert slots.acquire("web", "next", limit=1)
