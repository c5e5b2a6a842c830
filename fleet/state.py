"""The fleet's state in etcd: hosts, per-release progress, halts, and one consistent snapshot of it.

Layout under the fleet's prefix ``P`` = ``/kiln/fleet/NAME/``::

    P/hosts/ID                      {"id", "group", "version", "health", "seen"}   under the host's lease
    P/releases/V/rollout            the release's rollout block (as the signed release says)
    P/releases/V/hosts/ID           {"state": updating|done|rolled-back, "at", "group", "detail"}
    P/releases/V/halt               {"host", "reason", "at"}: no host starts release V any more
    P/slots/GROUP/...               rollout slots (:mod:`fleet.slots`)

A host's record lives under its lease: a host that stopped heartbeating leaves the live set after
the TTL. Progress and halts are plain keys: they are history, kept until the fleet is reset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.etcd import Compare, EtcdClient, KeyValue, Op
from fleet.slots import Holder, SlotSemaphore, holder_from
from fleet.waves import HostProgress, Progress, WaveStatus, evaluate
from manifests.errors import DocumentError
from manifests.fleet import FleetConfig, Rollout

__all__ = ["fleet_prefix", "HostRecord", "ReleaseRecord", "FleetSnapshot", "FleetStore", "status_document"]

SHOWN_RELEASES = 5


def fleet_prefix(name: str) -> str:
    return f"/kiln/fleet/{name}/"


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRecord:
    id: str
    group: str
    version: int | None
    health: str
    seen: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRecord:
    version: int
    rollout: Rollout | None = None
    progress: dict[str, HostProgress] = field(default_factory=dict)
    halt: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSnapshot:
    revision: int
    hosts: dict[str, HostRecord]
    releases: dict[int, ReleaseRecord]
    slots: dict[str, tuple[Holder, ...]]

    def groups(self) -> dict[str, str]:
        return {h.id: h.group for h in self.hosts.values()}

    def waves(self, version: int, now: float) -> tuple[WaveStatus, ...]:
        record = self.releases.get(version) or ReleaseRecord(version=version)
        return evaluate(
            record.rollout or Rollout(),
            self.groups(),
            record.progress,
            halted=record.halt is not None,
            now=now,
        )


def _json(kv: KeyValue) -> dict[str, Any] | None:
    try:
        return kv.json()  # type: ignore[no-any-return]
    except DocumentError:
        return None


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _parse(prefix: str, revision: int, kvs: tuple[KeyValue, ...]) -> FleetSnapshot:
    hosts: dict[str, HostRecord] = {}
    releases: dict[int, dict[str, Any]] = {}
    slots: dict[str, list[Holder]] = {}
    for kv in kvs:
        parts = kv.key[len(prefix) :].split("/")
        doc = _json(kv) if parts[0] != "slots" else None
        if parts[0] == "hosts" and len(parts) == 2 and doc is not None:
            version = doc.get("version")
            hosts[parts[1]] = HostRecord(
                id=parts[1],
                group=str(doc.get("group", "default")),
                version=version if isinstance(version, int) and not isinstance(version, bool) else None,
                health=str(doc.get("health", "unknown")),
                seen=_number(doc.get("seen")),
            )
        elif parts[0] == "releases" and len(parts) >= 3 and parts[1].isdigit() and doc is not None:
            rec = releases.setdefault(int(parts[1]), {"progress": {}})
            if parts[2] == "rollout" and len(parts) == 3:
                try:
                    rec["rollout"] = Rollout.from_dict(doc)
                except (KeyError, TypeError, ValueError):
                    rec["rollout"] = None
            elif parts[2] == "halt" and len(parts) == 3:
                rec["halt"] = doc
            elif parts[2] == "hosts" and len(parts) == 4:
                try:
                    state = Progress(str(doc.get("state")))
                except ValueError:
                    continue
                rec["progress"][parts[3]] = HostProgress(
                    state=state,
                    at=_number(doc.get("at")),
                    group=str(doc.get("group", "default")),
                    detail=str(doc.get("detail", ""))[:500],
                )
        elif parts[0] == "slots" and len(parts) == 4 and parts[2] == "holders":
            slots.setdefault(parts[1], []).append(holder_from(kv, parts[1]))
    return FleetSnapshot(
        revision=revision,
        hosts=hosts,
        releases={
            v: ReleaseRecord(version=v, rollout=r.get("rollout"), progress=r["progress"], halt=r.get("halt"))
            for v, r in releases.items()
        },
        slots={g: tuple(h) for g, h in slots.items()},
    )


class FleetStore:
    """One fleet's keys in etcd."""

    def __init__(self, etcd: EtcdClient, name: str, *, clock: Callable[[], float] = time.time) -> None:
        self.etcd = etcd
        self.name = name
        self.prefix = fleet_prefix(name)
        self.clock = clock
        self.slots = SlotSemaphore(etcd, self.prefix, clock=clock)

    def snapshot(self) -> FleetSnapshot:
        revision, kvs = self.etcd.range(self.prefix, prefix=True)
        return _parse(self.prefix, revision, kvs)

    def snapshot_at(self, revision: int) -> FleetSnapshot:
        _got, kvs = self.etcd.range(self.prefix, prefix=True, revision=revision)
        return _parse(self.prefix, revision, kvs)

    def heartbeat(self, host: str, *, group: str, version: int | None, health: str, lease: int) -> None:
        doc = {"id": host, "group": group, "version": version, "health": health, "seen": self.clock()}
        self.etcd.put(f"{self.prefix}hosts/{host}", _dump(doc), lease=lease)

    def announce(self, version: int, rollout: Rollout) -> None:
        """Record release ``version``'s rollout block once (the first host to see it writes it)."""
        key = f"{self.prefix}releases/{version}/rollout"
        self.etcd.txn([Compare.absent(key)], [Op.put(key, _dump(rollout.to_dict()))])

    def progress(self, version: int, host: str, state: Progress, *, group: str, detail: str = "") -> None:
        doc = {"state": state.value, "at": self.clock(), "group": group, "detail": detail[:500]}
        self.etcd.put(f"{self.prefix}releases/{version}/hosts/{host}", _dump(doc))

    def halt(self, version: int, host: str, reason: str) -> None:
        """Halt release ``version`` (the first halt's reason is kept)."""
        key = f"{self.prefix}releases/{version}/halt"
        doc = {"host": host, "reason": reason[:500], "at": self.clock()}
        self.etcd.txn([Compare.absent(key)], [Op.put(key, _dump(doc))])


def status_document(snapshot: FleetSnapshot, config: FleetConfig | None, *, now: float) -> dict[str, Any]:
    """What ``kiln fleet status --json`` prints and the dashboard draws."""
    groups: dict[str, dict[str, Any]] = {}
    for host in sorted(snapshot.hosts.values(), key=lambda h: h.id):
        g = groups.setdefault(host.group, {"hosts": [], "slots": []})
        g["hosts"].append(
            {"id": host.id, "version": host.version, "health": host.health, "seen": round(now - host.seen, 1)}
        )
    for group, holders in snapshot.slots.items():
        g = groups.setdefault(group, {"hosts": [], "slots": []})
        g["slots"] = [{"id": h.id, "kind": h.kind, "since": h.since} for h in holders]
    for name, g in groups.items():
        g["max"] = config.max_for(name) if config is not None else None
    releases = []
    for version in sorted(snapshot.releases, reverse=True)[:SHOWN_RELEASES]:
        record = snapshot.releases[version]
        waves = []
        for status in snapshot.waves(version, now):
            waves.append(
                {
                    "index": status.index + 1,
                    "group": status.wave.group,
                    "state": status.state.value,
                    "parallel": status.parallel,
                    "soak": status.wave.soak,
                    "hosts": [
                        {
                            "id": h,
                            "progress": record.progress[h].state.value if h in record.progress else "waiting",
                        }
                        for h in status.hosts
                    ],
                }
            )
        releases.append(
            {
                "version": version,
                "halted": record.halt is not None,
                "halt": record.halt,
                "waves": waves,
                "progress": {
                    h: {"state": p.state.value, "detail": p.detail}
                    for h, p in sorted(record.progress.items())
                },
            }
        )
    return {
        "version": 1,
        "fleet": config.name if config is not None else None,
        "revision": snapshot.revision,
        "groups": {k: groups[k] for k in sorted(groups)},
        "releases": releases,
    }
